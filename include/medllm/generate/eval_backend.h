// The evaluator's CompletionBackend over the generation engine: `medllm eval igakuqa --model DIR`.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/eval/backend.h"
#include "medllm/generate/engine.h"

namespace medllm::generate {

class EngineBackend : public eval::CompletionBackend {
public:
    // Loads `model_dir` (and load.adapter) with load_model. `base` supplies batch size, seed and the other engine
    // settings; complete() overrides max_new_tokens, temperature (0 = greedy) and stop strings from the evaluator's
    // GenerationParams.
    EngineBackend(const std::filesystem::path& model_dir, const LoadOptions& load, GenerateOptions base = {});

    std::vector<std::string> complete(const std::vector<std::string>& prompts,
                                      const eval::GenerationParams& params) override;
    bool has_chat_template() const override { return model_.has_chat_template; }
    std::string model_name() const override { return model_.name; }
    nlohmann::json identity() const override { return identity_; }

    const GenerationStats& last_stats() const { return generator_.last_stats(); }

private:
    LoadedModel model_;
    GenerateOptions base_;
    Generator generator_;
    nlohmann::json identity_;
};

// The evaluator's completion request on the engine (shared by the igakuqa and mcqa backends): `base` with the
// request's max_new_tokens, stop strings and temperature (0 = greedy), one sample per prompt; the prompts are fully
// rendered text (chat markup included), encoded with special tokens recognized and nothing added.
std::vector<std::string> complete_prompts(Generator& generator, const text::Tokenizer& tokenizer, GenerateOptions base,
                                          const std::vector<std::string>& prompts,
                                          const eval::GenerationParams& params);

// The identity of a loaded model for the evaluator's resume check (eval::CompletionBackend::identity): the model
// and adapter folders' io::model_dir_identity (content hashes of config, tokenizer and chat template files; name,
// size and mtime of every weight file; not the folder's path or name), the dtype the weights were loaded in, whether
// the base was quantized to NF4 as it loaded, the end-of-sequence ids and the engine settings that change a
// completion.
nlohmann::json engine_identity(const std::filesystem::path& model_dir, const LoadOptions& load,
                               const LoadedModel& model, const GenerateOptions& base);

}  // namespace medllm::generate
