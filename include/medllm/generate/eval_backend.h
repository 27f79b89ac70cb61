// The evaluator's CompletionBackend over the generation engine: `medllm eval igakuqa --model DIR`.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "medllm/eval/backend.h"
#include "medllm/generate/engine.h"

namespace medllm::generate {

class EngineBackend : public eval::CompletionBackend {
public:
    // `base` supplies batch size, seed and the other engine settings; complete() overrides max_new_tokens,
    // temperature (0 = greedy) and stop strings from the evaluator's GenerationParams.
    EngineBackend(LoadedModel model, GenerateOptions base = {});

    std::vector<std::string> complete(const std::vector<std::string>& prompts,
                                      const eval::GenerationParams& params) override;
    bool has_chat_template() const override { return model_.has_chat_template; }
    std::string model_name() const override { return model_.name; }

    const GenerationStats& last_stats() const { return generator_.last_stats(); }

private:
    LoadedModel model_;
    GenerateOptions base_;
    Generator generator_;
};

}  // namespace medllm::generate
