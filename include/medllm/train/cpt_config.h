// The `medllm cpt` config: its keys and schema (the corpus keys included) and the keys a resume must agree on. The
// recipe itself is cpt.h; the pipeline reads this header to check a cpt stage section.
#pragma once

#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"
#include "medllm/data/corpus_config.h"
#include "medllm/train/recipe_config.h"

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

}  // namespace medllm::train
