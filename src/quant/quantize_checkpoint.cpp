// `medllm quantize`: a HF checkpoint streamed tensor by tensor into a bitsandbytes-compatible NF4 checkpoint.
#include "medllm/quant/quantize_checkpoint.h"

#include <algorithm>
#include <filesystem>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/progress.h"
#include "medllm/io/model_files.h"
#include "medllm/io/safetensors.h"
#include "medllm/model/checkpoint_check.h"
#include "medllm/model/config.h"
#include "medllm/quant/nf4.h"
#include "medllm/quant/nf4_serialize.h"

namespace fs = std::filesystem;

namespace medllm::quant {

bool is_quantizable_weight(const std::string& name) {
    static const char* kProjections[] = {".q_proj.weight",    ".k_proj.weight",  ".v_proj.weight",   ".o_proj.weight",
                                         ".gate_proj.weight", ".up_proj.weight", ".down_proj.weight"};
    for (const char* suffix : kProjections) {
        std::string s(suffix);
        if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) return true;
    }
    return false;
}

QuantizeReport quantize_checkpoint(const std::string& model_dir, const std::string& output_dir,
                                   const QuantizeOptions& options, const CheckpointProgress& progress) {
    if (!is_valid_nf4_blocksize(options.blocksize))
        throw UsageError("--blocksize " + std::to_string(options.blocksize) +
                         " is not a power of two between 32 and 4096");
    fs::path in(model_dir), out(output_dir);
    fs::path config_path  = in / "config.json";
    nlohmann::json config = read_json_file(config_path);
    if (config.contains("quantization_config"))
        throw UsageError(model_dir + " is already quantized (its config.json has quantization_config)");
    check_output_not_input(out, {in});  // also through a symlink, before anything is written

    io::CheckpointReader reader(model_dir);
    fs::create_directories(out);
    // Resumable: a rerun of the same command over the same input keeps the shards an interrupted run finished.
    const std::string resume_key = "medllm quantize v1|blocksize=" + std::to_string(options.blocksize) +
                                   "|double_quant=" + std::to_string(options.double_quant) + "|" +
                                   io::directory_fingerprint(in);
    io::CheckpointWriter writer(out, options.max_shard_bytes, {{"format", "pt"}}, "model", resume_key);
    if (writer.resumed_shards() > 0) {
        spdlog::info("quantize: resuming; {} shards ({} tensors) of an interrupted run are kept",
                     writer.resumed_shards(), writer.resumed_tensors());
    }
    QuantizeReport report;
    report.resumed_tensors    = static_cast<int64_t>(writer.resumed_tensors());
    report.bytes_out          = writer.resumed_bytes();
    auto names                = reader.names();
    int64_t done              = 0;
    std::string compute_dtype = "bfloat16";
    for (const auto& name : names) {
        const io::TensorInfo& info = reader.info(name);
        const bool quantize        = is_quantizable_weight(name) && at::isFloatingType(io::to_scalar_type(info.dtype));
        if (quantize && info.dtype == io::DType::F32) compute_dtype = "float32";
        std::vector<std::string> keys = {name};
        if (quantize) keys = nf4_state_dict_keys(name, options.double_quant);
        report.bytes_in += info.nbytes();
        ++(quantize ? report.quantized_tensors : report.kept_tensors);
        if (std::all_of(keys.begin(), keys.end(), [&](const std::string& k) { return writer.completed(k); })) {
            if (progress) progress(++done, static_cast<int64_t>(names.size()), 0);  // in a resumed shard
            continue;
        }
        at::Tensor t = reader.load(name);
        if (quantize) {
            Nf4Tensor q = nf4_quantize(t, options.blocksize, options.double_quant,
                                       name + "' in '" + reader.file_of(name).string());
            for (const auto& [k, v] : nf4_to_state_dict(q, name)) {
                if (writer.completed(k)) continue;  // a shard boundary fell inside this weight's entries
                writer.add(k, v);
                report.bytes_out += v.nbytes();
            }
        } else {
            writer.add(name, t);
            report.bytes_out += t.nbytes();
        }
        if (progress) progress(++done, static_cast<int64_t>(names.size()), t.nbytes());
    }
    writer.finish();

    // What transformers writes for BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", ...).
    config["quantization_config"] = {
        {"quant_method", "bitsandbytes"},
        {"load_in_4bit", true},
        {"load_in_8bit", false},
        {"_load_in_4bit", true},
        {"_load_in_8bit", false},
        {"bnb_4bit_quant_type", "nf4"},
        {"bnb_4bit_use_double_quant", options.double_quant},
        {"bnb_4bit_compute_dtype", compute_dtype},
        {"bnb_4bit_quant_storage", "uint8"},
        {"llm_int8_enable_fp32_cpu_offload", false},
        {"llm_int8_has_fp16_weight", false},
        {"llm_int8_skip_modules", nullptr},
        {"llm_int8_threshold", 6.0},
    };
    write_file_atomic(out / "config.json", config.dump(2) + "\n");
    io::copy_model_side_files(in, out);  // tokenizer, chat template, generation config
    return report;
}

void run_quantize(const QuantizeConfig& config) {
    // The same check info and generate make, before anything is read or written.
    const auto model_config = model::Qwen2Config::from_file(config.model);
    model::validate_checkpoint(io::CheckpointReader(config.model), model_config, config.model);
    const auto report =
        quantize_checkpoint(config.model, config.output, config.options, progress_callback("quantize", "tensors"));
    spdlog::info("wrote {}: {} tensors in NF4, {} kept; {:.2f} GiB -> {:.2f} GiB", config.output,
                 report.quantized_tensors, report.kept_tensors, report.bytes_in / double(1ull << 30),
                 report.bytes_out / double(1ull << 30));
}

}  // namespace medllm::quant
