// The `medllm rpo` recipe: preference optimization with (Q)LoRA on TRL-format preference pairs — DPO and RPO
// (DPO + alpha · NLL of the chosen completion) as TRL's DPOTrainer computes them (docs/reference/
// preference-losses.md), data-parallel over ranks, exact resume. Same shape as the cpt recipe (cpt.h): setup -> load
// checkpoint -> train -> save, in src/train/rpo.cpp; the pieces around the loop are shared (recipe.h). The reference
// model is the policy with its trainable adapter disabled (peft::disable_adapters, no second copy), or log-probs
// precomputed once and cached on disk.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/train/recipe.h"
#include "medllm/train/rpo_config.h"

namespace medllm::train {

TrainResult run_rpo(const RpoConfig& config, const TrainOptions& options);

}  // namespace medllm::train
