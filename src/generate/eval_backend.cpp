// The IgakuQA evaluator's completion backend on top of the generation engine.
#include "medllm/generate/eval_backend.h"

#include <c10/core/ScalarType.h>

#include "medllm/core/error.h"
#include "medllm/io/model_files.h"

namespace medllm::generate {

nlohmann::json engine_identity(const std::filesystem::path& model_dir, const LoadOptions& load,
                               const LoadedModel& model, const GenerateOptions& base) {
    nlohmann::json j;
    j["model"]   = io::model_dir_identity(model_dir);
    j["adapter"] = load.adapter.empty() ? nlohmann::json(nullptr) : io::model_dir_identity(load.adapter);
    // The dtype actually used ("auto" resolves by device), read from lm_head, which is never quantized.
    j["dtype"]         = c10::toString(model.model->lm_head_weight().scalar_type());
    j["load_in_4bit"]  = load.quantize_base;
    j["eos_token_ids"] = model.eos_token_ids;
    j["engine"]        = {{"repetition_penalty", base.sampling.repetition_penalty},
                          {"seed", base.seed},
                          {"stop_token_ids", base.stop_token_ids},
                          {"skip_special_tokens", base.skip_special_tokens}};
    return j;
}

EngineBackend::EngineBackend(const std::filesystem::path& model_dir, const LoadOptions& load, GenerateOptions base)
    : model_(load_model(model_dir, load)),
      base_(std::move(base)),
      generator_(model_.model, model_.tokenizer, model_.eos_token_ids) {
    if (!model_.tokenizer) throw Error(model_.name + ": evaluation needs the model's tokenizer files");
    identity_ = engine_identity(model_dir, load, model_, base_);
}

std::vector<std::string> complete_prompts(Generator& generator, const text::Tokenizer& tokenizer, GenerateOptions base,
                                          const std::vector<std::string>& prompts,
                                          const eval::GenerationParams& params) {
    base.max_new_tokens     = params.max_new_tokens;
    base.stop_strings       = params.stop;
    base.num_samples        = 1;
    base.sampling.do_sample = params.temperature > 0.0;
    if (base.sampling.do_sample) base.sampling.temperature = params.temperature;
    const auto ids         = tokenizer.encode_batch(prompts, /*add_special_tokens=*/false);
    const auto completions = generator.generate(ids, base);
    std::vector<std::string> texts;
    texts.reserve(completions.size());
    for (const auto& c : completions) texts.push_back(c.text);
    return texts;
}

std::vector<std::string> EngineBackend::complete(const std::vector<std::string>& prompts,
                                                 const eval::GenerationParams& params) {
    return complete_prompts(generator_, *model_.tokenizer, base_, prompts, params);
}

}  // namespace medllm::generate
