// The `medllm cpt` recipe: continued pretraining with (Q)LoRA on a packed corpus, data-parallel over ranks, with
// exact resume. Shape as torchtune's recipes: setup -> load checkpoint -> train -> save (src/train/cpt.cpp), the
// pieces around the loop shared with rpo (recipe.h).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/train/cpt_config.h"
#include "medllm/train/recipe.h"

namespace medllm::train {

TrainResult run_cpt(const CptConfig& config, const TrainOptions& options);

}  // namespace medllm::train
