// The model-running side of the evaluator, as a small interface. The generation engine (area `generate`)
// implements it; eval itself never loads a model, so everything here can be tested with a scripted backend.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace medllm::eval {

struct GenerationParams {
    int max_new_tokens = 64;
    double temperature = 0.0;       // 0 = greedy (the evaluator always asks for greedy decoding)
    std::vector<std::string> stop;  // stop strings; the text of the stop string is not part of the completion
};

class CompletionBackend {
public:
    virtual ~CompletionBackend() = default;

    // One completion per prompt, in the same order. Prompts are fully rendered text (chat markup included);
    // the backend must not add a chat template or BOS text of its own. The end-of-turn / end-of-text token and
    // any stop string are not part of the returned completion. Throw medllm::Error on failure.
    virtual std::vector<std::string> complete(const std::vector<std::string>& prompts,
                                              const GenerationParams& params) = 0;

    // Whether the loaded model has a chat template (decides --prompt-format auto).
    virtual bool has_chat_template() const = 0;

    // A label for reports, e.g. the model directory name plus adapter.
    virtual std::string model_name() const = 0;

    // What decides the completions besides the prompt and GenerationParams: the model's and adapter's files
    // (content hashes of config and tokenizer, name/size/mtime of weights), how they were loaded (dtype, 4-bit),
    // engine settings. Saved with predictions.jsonl; a rerun whose identity differs is refused, so predictions of
    // two models are never mixed. Not the label: two folders of the same name are different models.
    virtual nlohmann::json identity() const = 0;
};

}  // namespace medllm::eval
