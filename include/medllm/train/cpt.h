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

#include "medllm/core/config.h"
#include "medllm/data/corpus_config.h"
#include "medllm/train/recipe.h"

namespace medllm::train {

struct CptConfig : data::CorpusConfig {
    LoraSettings lora;  // lora.init_adapter: continue from a PEFT adapter (its rank, alpha and targets are used)
    OptimSettings optim;
    ScheduleSettings schedule{"cosine", 0, 0.03, 0.0};
    TrainingSettings training = [] {
        TrainingSettings t;
        t.epochs     = 2;
        t.grad_accum = 16;
        return t;
    }();
    int64_t eval_steps = 0;  // training.eval_steps: 0 = only at the start and the end
    bool eval_on_start = true;
};

// Adds every cpt key (the corpus keys included) to a schema.
void add_cpt_fields(ConfigSchema<CptConfig>& schema);

// The resolved keys a resume must agree on (everything except output, logging and checkpoint cadence).
nlohmann::json math_identity(const std::vector<ResolvedEntry>& resolved);

TrainResult run_cpt(const CptConfig& config, const TrainOptions& options);

}  // namespace medllm::train
