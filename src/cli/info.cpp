// `medllm info --model DIR`: a model's config, parameter count and memory estimates (bf16, NF4 + LoRA, activations
// at batch x seq-len). Works on config-only directories (configs/models/*) and on full checkpoints, whose tensors
// are then checked against the config (names, shapes) without reading any weight data.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "cli/commands.h"
#include "medllm/core/error.h"
#include "medllm/io/safetensors.h"
#include "medllm/model/config.h"
#include "medllm/model/memory.h"

namespace fs = std::filesystem;

namespace medllm::cli {

namespace {

struct InfoOptions {
    std::string model;
    int64_t batch         = 1;
    int64_t seq_len       = 2048;
    int64_t lora_rank     = 64;
    bool no_checkpointing = false;
};

std::string grouped(uint64_t n) {
    std::string s = std::to_string(n);
    for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
    return s;
}

std::string gib(uint64_t bytes) {  // binary units, scaled so tiny test models still show a number
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v            = static_cast<double>(bytes);
    int u               = 0;
    while (v >= 1024.0 && u < 4) v /= 1024.0, ++u;
    char buf[32];
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.2f %s", v, units[u]);
    return buf;
}

std::string billions(int64_t n) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3fB", static_cast<double>(n) / 1e9);
    return buf;
}

bool has_checkpoint(const fs::path& dir) {
    std::error_code ec;
    return fs::exists(dir / "model.safetensors.index.json", ec) || fs::exists(dir / "model.safetensors", ec);
}

// Compares checkpoint tensors with the config; returns a description of the first problems ("" if they match).
std::string check_checkpoint(const io::CheckpointReader& reader, const model::Qwen2Config& config, std::ostream& out) {
    std::map<std::string, std::vector<int64_t>> expected;
    for (auto& [name, shape] : model::expected_tensors(config)) expected.emplace(name, shape);
    const auto all_expected = expected;  // `expected` shrinks as tensors are found
    std::vector<std::string> problems;
    std::map<std::string, uint64_t> dtype_bytes;
    uint64_t params = 0;
    for (const auto& name : reader.names()) {
        const io::TensorInfo& info = reader.info(name);
        dtype_bytes[std::string(io::dtype_name(info.dtype))] += info.nbytes();
        // 4-bit (bitsandbytes NF4) checkpoints: the weight holds packed codes [(numel+1)/2, 1] and its
        // statistics sit beside it under the weight's name plus a suffix.
        const std::string nf4_state = ".quant_state.bitsandbytes__nf4";
        bool is_nf4_stat            = false;
        for (const std::string suffix :
             {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", nf4_state.c_str()}) {
            if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0 &&
                all_expected.count(name.substr(0, name.size() - suffix.size())) &&
                reader.contains(name.substr(0, name.size() - suffix.size()) + nf4_state))
                is_nf4_stat = true;
        }
        if (is_nf4_stat) continue;
        auto it = expected.find(name);
        if (it != expected.end() && reader.contains(name + nf4_state)) {
            int64_t numel = 1;
            for (int64_t d : it->second) numel *= d;
            params += static_cast<uint64_t>(numel);
            if (info.shape != std::vector<int64_t>{(numel + 1) / 2, 1})
                problems.push_back("4-bit tensor '" + name + "' does not hold " + std::to_string(numel) +
                                   " packed NF4 values");
            expected.erase(it);
            continue;
        }
        if (it == expected.end()) {
            // Old checkpoints carry rotary inv_freq buffers; they are recomputed, not loaded.
            const std::string inv_freq = ".rotary_emb.inv_freq";
            if (name.size() < inv_freq.size() ||
                name.compare(name.size() - inv_freq.size(), inv_freq.size(), inv_freq) != 0)
                problems.push_back("unexpected tensor '" + name + "'");
            continue;
        }
        params += info.numel();
        if (info.shape != it->second) {
            std::ostringstream s;
            s << "tensor '" << name << "' has shape [";
            for (size_t i = 0; i < info.shape.size(); ++i) s << (i ? "," : "") << info.shape[i];
            s << "], config implies [";
            for (size_t i = 0; i < it->second.size(); ++i) s << (i ? "," : "") << it->second[i];
            s << "]";
            problems.push_back(s.str());
        }
        expected.erase(it);
    }
    for (const auto& [name, shape] : expected) problems.push_back("missing tensor '" + name + "'");

    out << "checkpoint\n";
    out << "  files                    " << reader.files().size() << (reader.sharded() ? " (sharded)" : "") << "\n";
    out << "  tensors                  " << reader.names().size() << "\n";
    out << "  parameters               " << grouped(params) << "\n";
    out << "  tensor bytes            ";
    for (const auto& [dtype, bytes] : dtype_bytes) out << " " << dtype << " " << gib(bytes);
    out << "\n";
    out << "  matches config           " << (problems.empty() ? "yes" : "NO") << "\n";
    if (problems.empty()) return "";
    std::string summary = std::to_string(problems.size()) + " problem(s), first: " + problems.front();
    for (size_t i = 0; i < problems.size() && i < 10; ++i) out << "    " << problems[i] << "\n";
    return summary;
}

void run_info(const InfoOptions& opts) {
    const fs::path dir(opts.model);
    std::error_code ec;
    if (!fs::exists(dir, ec)) throw UsageError("--model " + opts.model + ": no such file or directory");
    const fs::path model_dir = fs::is_directory(dir, ec) ? dir : dir.parent_path();
    const auto config        = model::Qwen2Config::from_file(dir);
    model::MemoryOptions mem_opts;
    mem_opts.batch                    = opts.batch;
    mem_opts.seq_len                  = opts.seq_len;
    mem_opts.lora_rank                = opts.lora_rank;
    mem_opts.activation_checkpointing = !opts.no_checkpointing;
    const auto count                  = model::count_parameters(config);
    const auto mem                    = model::estimate_memory(config, mem_opts);

    std::ostream& out = std::cout;
    out << "model " << config.source << "\n";
    out << "config\n";
    out << "  vocab_size               " << config.vocab_size << "\n";
    out << "  hidden_size              " << config.hidden_size << "\n";
    out << "  intermediate_size        " << config.intermediate_size << "\n";
    out << "  num_hidden_layers        " << config.num_hidden_layers << "\n";
    out << "  attention heads (q/kv)   " << config.num_attention_heads << " / " << config.num_key_value_heads
        << " (head_dim " << config.head_dim << ", GQA groups " << config.num_key_value_groups() << ")\n";
    out << "  hidden_act               " << config.hidden_act << "\n";
    out << "  rms_norm_eps             " << config.rms_norm_eps << "\n";
    out << "  rope_theta               " << config.rope_theta << " (" << config.rope_type << ")\n";
    out << "  max_position_embeddings  " << config.max_position_embeddings << "\n";
    out << "  tie_word_embeddings      " << (config.tie_word_embeddings ? "true" : "false") << "\n";
    out << "  torch_dtype              " << (config.torch_dtype.empty() ? "(unset)" : config.torch_dtype) << "\n";
    out << "  bos / eos token ids      " << (config.bos_token_id ? std::to_string(*config.bos_token_id) : "none")
        << " / ";
    for (size_t i = 0; i < config.eos_token_ids.size(); ++i) out << (i ? "," : "") << config.eos_token_ids[i];
    if (config.eos_token_ids.empty()) out << "none";
    out << "\n";
    out << "parameters\n";
    out << "  total                    " << grouped(count.total()) << " (" << billions(count.total()) << ")\n";
    out << "  non-embedding            " << grouped(count.non_embedding()) << " (" << billions(count.non_embedding())
        << ")\n";
    out << "  embedding / lm_head      " << grouped(count.embedding) << " / "
        << (config.tie_word_embeddings ? std::string("tied") : grouped(count.lm_head)) << "\n";
    out << "  per decoder layer        " << grouped(count.per_layer) << "\n";
    out << "  checkpoint tensors       " << count.tensors << "\n";
    out << "memory (estimates)\n";
    out << "  weights bf16             " << gib(mem.bf16_weights) << "\n";
    out << "  weights NF4 + DQ         " << gib(mem.nf4_weights) << " (linears " << gib(mem.nf4_linear_bytes)
        << ", embeddings/norms/biases bf16)\n";
    std::string lora_label = "  LoRA r=" + std::to_string(opts.lora_rank);
    lora_label.resize(std::max<size_t>(lora_label.size() + 1, 27), ' ');
    out << lora_label << grouped(mem.lora_parameters) << " params, fp32 " << gib(mem.lora_weights) << " + grads/AdamW "
        << gib(mem.lora_training_state) << "\n";
    out << "  activations              " << gib(mem.activations) << " (batch " << opts.batch << " x seq "
        << opts.seq_len << ", checkpointing " << (opts.no_checkpointing ? "off" : "per layer") << ", logits "
        << gib(mem.logits) << ")\n";
    out << "  KV cache bf16            " << gib(mem.kv_cache) << " (batch " << opts.batch << " x " << opts.seq_len
        << " tokens)\n";
    out << "  dequant workspace        " << gib(mem.dequant_workspace) << " (largest projection, bf16)\n";
    out << "  QLoRA training total     " << gib(mem.qlora_training_total()) << "\n";
    out << "  bf16 inference total     " << gib(mem.bf16_inference_total()) << "\n";
    out << "  NF4 inference total      " << gib(mem.nf4_inference_total()) << "\n";

    if (has_checkpoint(model_dir)) {
        const io::CheckpointReader reader(model_dir);
        const std::string problem = check_checkpoint(reader, config, out);
        out.flush();
        if (!problem.empty())
            throw Error(model_dir.string() + ": checkpoint does not match " + config.source + ": " + problem);
    } else {
        out << "checkpoint                 none (config only)\n";
    }
}

}  // namespace

void add_info_command(CLI::App& app) {
    auto opts = std::make_shared<InfoOptions>();
    auto* cmd = app.add_subcommand("info", "Show a model's config, parameter count and memory estimates");
    cmd->add_option("--model", opts->model, "Model directory (config.json, optionally safetensors) or a config.json")
        ->required();
    cmd->add_option("--batch", opts->batch, "Batch size for the activation and KV-cache estimates")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--seq-len", opts->seq_len, "Sequence length for the activation and KV-cache estimates")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    cmd->add_option("--lora-rank", opts->lora_rank, "LoRA rank r (adapters on all seven linears of every layer)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    cmd->add_flag("--no-activation-checkpointing", opts->no_checkpointing,
                  "Estimate activations without per-layer checkpointing");
    cmd->callback([opts] { run_info(*opts); });
}

}  // namespace medllm::cli
