// `medllm info`: prints a model's config, parameter counts, memory estimates and its checkpoint's check.
#include "medllm/model/info_command.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "medllm/core/error.h"
#include "medllm/io/safetensors.h"
#include "medllm/model/checkpoint_check.h"
#include "medllm/model/config.h"
#include "medllm/model/memory.h"

namespace fs = std::filesystem;

namespace medllm::model {
namespace {

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

// Prints the checkpoint section; returns the shared check's summary of its problems ("" if it matches).
std::string describe_checkpoint(const io::CheckpointReader& reader, const Qwen2Config& config, std::ostream& out) {
    const CheckpointCheck check = check_checkpoint(reader, config);
    out << "checkpoint\n";
    out << "  files                    " << reader.files().size() << (reader.sharded() ? " (sharded)" : "") << "\n";
    out << "  tensors                  " << reader.names().size() << "\n";
    out << "  parameters               " << grouped(check.parameters) << "\n";
    out << "  tensor bytes            ";
    for (const auto& [dtype, bytes] : check.dtype_bytes) out << " " << dtype << " " << gib(bytes);
    out << "\n";
    out << "  matches config           " << (check.ok() ? "yes" : "NO") << "\n";
    for (size_t i = 0; i < check.problems.size() && i < 10; ++i) out << "    " << check.problems[i] << "\n";
    return check.summary();
}

// The estimates are uint64 byte counts; an upper bound of the largest one, in floating point, says whether the
// exact integer arithmetic of estimate_memory() could wrap (it would print a small, wrong number).
void check_estimate_fits(const Qwen2Config& c, const InfoConfig& o) {
    const double tokens    = static_cast<double>(o.batch) * static_cast<double>(o.seq_len);
    const double per_token = 2.0 * (6.0 * c.hidden_size + 3.0 * c.q_dim() + 3.0 * c.kv_dim() +
                                    4.0 * c.intermediate_size + 7.0 * o.lora_rank) +
                             4.0 * (2.0 + c.num_attention_heads) + 6.0 * c.vocab_size;
    const double bytes = tokens * (static_cast<double>(c.num_hidden_layers) + 2.0) * per_token;
    if (bytes > 0x1p62)
        throw UsageError("--batch " + std::to_string(o.batch) + " x --seq-len " + std::to_string(o.seq_len) +
                         ": the activation estimate for this model exceeds 2^62 bytes; use smaller values");
}

void print_config(std::ostream& out, const Qwen2Config& config) {
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
}

void print_parameters(std::ostream& out, const Qwen2Config& config, const ParameterCount& count) {
    out << "parameters\n";
    out << "  total                    " << grouped(count.total()) << " (" << billions(count.total()) << ")\n";
    out << "  non-embedding            " << grouped(count.non_embedding()) << " (" << billions(count.non_embedding())
        << ")\n";
    out << "  embedding / lm_head      " << grouped(count.embedding) << " / "
        << (config.tie_word_embeddings ? std::string("tied") : grouped(count.lm_head)) << "\n";
    out << "  per decoder layer        " << grouped(count.per_layer) << "\n";
    out << "  checkpoint tensors       " << count.tensors << "\n";
}

void print_memory(std::ostream& out, const InfoConfig& opts, const MemoryEstimate& mem) {
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
}

}  // namespace

void run_info(const InfoConfig& opts) {
    const fs::path dir(opts.model);
    std::error_code ec;
    if (!fs::exists(dir, ec)) throw UsageError("--model " + opts.model + ": no such file or directory");
    const fs::path model_dir = fs::is_directory(dir, ec) ? dir : dir.parent_path();
    const auto config        = Qwen2Config::from_file(dir);
    MemoryOptions mem_opts;
    mem_opts.batch                    = opts.batch;
    mem_opts.seq_len                  = opts.seq_len;
    mem_opts.lora_rank                = opts.lora_rank;
    mem_opts.activation_checkpointing = !opts.no_checkpointing;
    check_estimate_fits(config, opts);
    const auto count = count_parameters(config);
    const auto mem   = estimate_memory(config, mem_opts);

    std::ostream& out = std::cout;
    out << "model " << config.source << "\n";
    print_config(out, config);
    print_parameters(out, config, count);
    print_memory(out, opts, mem);

    if (has_checkpoint(model_dir)) {
        const io::CheckpointReader reader(model_dir);
        const std::string problem = describe_checkpoint(reader, config, out);
        out.flush();
        if (!problem.empty())
            throw Error(model_dir.string() + ": checkpoint does not match " + config.source + ": " + problem);
    } else {
        out << "checkpoint                 none (config only)\n";
    }
}

}  // namespace medllm::model
