#include "medllm/generate/eval_backend.h"

#include "medllm/core/error.h"

namespace medllm::generate {

EngineBackend::EngineBackend(LoadedModel model, GenerateOptions base)
    : model_(std::move(model)),
      base_(std::move(base)),
      generator_(model_.model, model_.tokenizer, model_.eos_token_ids) {
    if (!model_.tokenizer) throw Error(model_.name + ": evaluation needs the model's tokenizer files");
}

std::vector<std::string> EngineBackend::complete(const std::vector<std::string>& prompts,
                                                 const eval::GenerationParams& params) {
    GenerateOptions options    = base_;
    options.max_new_tokens     = params.max_new_tokens;
    options.stop_strings       = params.stop;
    options.num_samples        = 1;
    options.sampling.do_sample = params.temperature > 0.0;
    if (options.sampling.do_sample) options.sampling.temperature = params.temperature;
    // The prompts are fully rendered text (chat markup included): encode them with special tokens recognized and
    // nothing added.
    const auto ids         = model_.tokenizer->encode_batch(prompts, /*add_special_tokens=*/false);
    const auto completions = generator_.generate(ids, options);
    std::vector<std::string> texts;
    texts.reserve(completions.size());
    for (const auto& c : completions) texts.push_back(c.text);
    return texts;
}

}  // namespace medllm::generate
