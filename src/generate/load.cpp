// Loading a model folder (bf16, NF4, adapters) for generation, evaluation and training.
#include "medllm/generate/load.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/peft/adapter.h"

namespace medllm::generate {
namespace {

// A bitsandbytes/`medllm quantize` 4-bit checkpoint: its config.json carries transformers' quantization_config.
bool is_4bit_checkpoint(const std::filesystem::path& dir) {
    const auto cfg = read_json_file(dir / "config.json");  // Qwen2Config::from_file read it already
    return cfg.is_object() && cfg.contains("quantization_config");
}

}  // namespace

std::vector<int64_t> load_eos_token_ids(const std::filesystem::path& model_dir, const model::Qwen2Config& config) {
    const auto path = model_dir / "generation_config.json";
    if (std::filesystem::exists(path)) {
        const nlohmann::json j = read_json_file(path);
        if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
            const auto& e = j["eos_token_id"];
            std::vector<int64_t> ids;
            if (e.is_number_integer()) {
                ids.push_back(e.get<int64_t>());
            } else if (e.is_array()) {
                for (const auto& x : e) {
                    if (!x.is_number_integer()) throw Error(path.string() + ": eos_token_id must hold integers");
                    ids.push_back(x.get<int64_t>());
                }
            } else {
                throw Error(path.string() + ": eos_token_id must be an integer or a list of integers");
            }
            return ids;
        }
    }
    return config.eos_token_ids;
}

at::Device parse_device(const std::string& name) {
    if (name == "auto") return torch::cuda::is_available() ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
    at::Device device = at::kCPU;
    try {
        device = at::Device(name);
    } catch (const std::exception&) {
        throw UsageError("--device " + name + ": expected auto, cpu, cuda or cuda:N");
    }
    if (device.is_cuda() && !torch::cuda::is_available())
        throw UsageError("--device " + name + ": no CUDA device is available");
    return device;
}

at::ScalarType parse_dtype(const std::string& dtype, at::Device device, const model::Qwen2Config& config) {
    if (dtype == "auto") return device.is_cuda() && config.torch_dtype != "float32" ? at::kBFloat16 : at::kFloat;
    if (dtype == "fp32" || dtype == "float32") return at::kFloat;
    if (dtype == "bf16" || dtype == "bfloat16") return at::kBFloat16;
    if (dtype == "fp16" || dtype == "float16") return at::kHalf;
    throw UsageError("--dtype " + dtype + ": expected auto, fp32, bf16 or fp16");
}

LoadedModel load_model(const std::filesystem::path& dir, const LoadOptions& options) {
    namespace fs = std::filesystem;
    if (!fs::is_directory(dir)) throw UsageError("--model " + dir.string() + ": no such model directory");
    const at::Device device    = parse_device(options.device);
    const auto cfg             = model::Qwen2Config::from_file(dir);
    const at::ScalarType dtype = parse_dtype(options.dtype, device, cfg);

    LoadedModel loaded;
    loaded.name = dir.filename().empty() ? dir.parent_path().filename().string() : dir.filename().string();
    if (!options.adapter.empty()) {
        // LoRA / QLoRA: peft builds the model with its projections wrapped (NF4 base when quantize_base).
        if (!fs::is_directory(options.adapter))
            throw UsageError("--adapter " + options.adapter + ": no such adapter directory");
        loaded.model =
            peft::load_model_with_adapter(dir.string(), options.adapter, dtype, device, options.quantize_base);
        const fs::path adapter(options.adapter);
        loaded.name +=
            "+" + (adapter.filename().empty() ? adapter.parent_path().filename() : adapter.filename()).string();
    } else if (options.quantize_base || is_4bit_checkpoint(dir)) {
        // An NF4 base without an adapter: every projection a QLoRA layer without an adapter (no modules adapted).
        peft::LoraConfig lora;
        lora.quantize_base = options.quantize_base;
        const peft::ModuleRanks none;
        loaded.model = peft::load_model_for_lora(dir.string(), lora, dtype, device, &none);
    } else {
        loaded.model = model::Qwen2ForCausalLM::from_pretrained(dir.string(), dtype, device);
    }
    loaded.model->eval();
    loaded.eos_token_ids = load_eos_token_ids(dir, cfg);
    const bool has_tokenizer =
        fs::exists(dir / "tokenizer.json") || fs::exists(dir / "vocab.json") || fs::exists(dir / "tokenizer.model");
    if (has_tokenizer) {
        loaded.tokenizer = text::Tokenizer::from_dir(dir);
    } else if (options.require_tokenizer) {
        throw Error(dir.string() + ": no tokenizer files (tokenizer.json, vocab.json + merges.txt or tokenizer.model)");
    }
    if (fs::exists(dir / "chat_template.jinja")) loaded.has_chat_template = true;
    const auto tc = dir / "tokenizer_config.json";
    if (fs::exists(tc)) {
        const auto j             = read_json_file(tc);
        loaded.has_chat_template = loaded.has_chat_template || j.contains("chat_template");
    }
    spdlog::info("loaded {} ({}, {}), eos {}", dir.string(), c10::toString(dtype), device.str(),
                 loaded.eos_token_ids.empty() ? std::string("none") : std::to_string(loaded.eos_token_ids[0]));
    return loaded;
}

}  // namespace medllm::generate
