// `medllm generate`: text from a model with the batched generation engine (KV cache, continuous batching).
//
//   medllm generate --model DIR --prompt "Once upon a time"                 streams the completion to stdout
//   medllm generate --model DIR --chat --prompt "こんにちは"                   the prompt as a chat user turn
//   medllm generate --model DIR --input prompts.jsonl --output out.jsonl -n 4 --temperature 0.7 --top-p 0.9
//   torchrun --nproc-per-node 4 --no-python medllm generate --model DIR --input p.jsonl --output out.jsonl
//
// The file run (prompt records -> resumable JSONL, run identity in <output>.run.json) is the library's
// generate_to_file (include/medllm/generate/generate_file.h); this file parses flags and builds the identity.
#include <algorithm>
#include <filesystem>
#include <string>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/distributed_flags.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/generate/engine.h"
#include "medllm/generate/generate_file.h"
#include "medllm/generate/load.h"
#include "medllm/io/model_files.h"

namespace medllm::cli {
namespace {

namespace fs = std::filesystem;
using generate::Completion;

struct GenerateCliOptions {
    std::string model, adapter, prompt, input, output, system, dtype = "auto", device = "auto";
    bool load_in_4bit = false, chat = false, overwrite = false;
    generate::GenerateOptions gen;
    double temperature = 0.0;
    std::vector<int64_t> stop_token_ids;
    DistributedFlags dist;
};

// What produced an output file besides the decoding options: a resume with any of it changed is refused.
nlohmann::json run_identity(const GenerateCliOptions& opt, const generate::LoadedModel& loaded,
                            const std::vector<generate::PromptRecord>& records) {
    nlohmann::json input;
    if (!opt.input.empty()) {
        input = {{"xxh3", hash_file(opt.input)}};  // content only: a renamed input still resumes
    } else {
        input = {{"prompt_xxh3", hash_bytes(records.at(0).text)}};  // as rendered (--chat, --system)
    }
    const at::Tensor& weight = loaded.model->lm_head_weight();
    return {{"command", "medllm generate"},
            {"input", input},
            {"model", io::model_dir_identity(opt.model)},
            {"adapter", opt.adapter.empty() ? nlohmann::json(nullptr) : io::model_dir_identity(opt.adapter)},
            {"load_in_4bit", opt.load_in_4bit},
            {"dtype", c10::toString(weight.scalar_type())},
            {"device", c10::DeviceTypeName(weight.device().type(), /*lower_case=*/true)}};
}

void run_generate_in(const GenerateCliOptions& opt, const dist::Parallel& parallel);

void run_generate(GenerateCliOptions opt) {
    if (opt.prompt.empty() == opt.input.empty())
        throw UsageError("generate: give exactly one of --prompt TEXT or --input FILE");
    if (!opt.input.empty() && opt.output.empty()) throw UsageError("generate: --input needs --output FILE");
    if (!opt.input.empty() && !fs::exists(opt.input)) throw UsageError("--input " + opt.input + ": no such file");
    if (opt.temperature < 0) throw UsageError("--temperature must be >= 0 (0 = greedy)");
    if (!opt.output.empty()) check_output_not_input(opt.output, {opt.input, opt.model, opt.adapter});
    opt.gen.sampling.do_sample = opt.temperature > 0;
    if (opt.gen.sampling.do_sample) opt.gen.sampling.temperature = opt.temperature;
    opt.gen.stop_token_ids = opt.stop_token_ids;
    opt.gen.validate();
    generate::parse_device(opt.device);  // a bad --device is named before any rendezvous
    // Several processes share the prompts of a file run; --prompt streams one prompt to stdout.
    if (const int64_t world = launch_world_size(opt.dist); world > 1 && !opt.prompt.empty())
        throw UsageError("generate: " + std::to_string(world) +
                         " processes share the prompts of --input FILE into --output FILE; --prompt runs in one "
                         "process");
    const auto parallel = join_process_group(opt.dist, opt.device);
    run_reporting_failure(parallel, [&] { run_generate_in(opt, parallel); });
}

void run_generate_in(const GenerateCliOptions& opt, const dist::Parallel& parallel) {
    generate::LoadOptions lo;
    lo.dtype         = opt.dtype;
    lo.device        = parallel.world_size > 1 ? parallel.group->device().str() : opt.device;  // cuda:LOCAL_RANK
    lo.adapter       = opt.adapter;
    lo.quantize_base = opt.load_in_4bit;
    auto loaded      = generate::load_model(opt.model, lo);
    generate::Generator generator(loaded.model, loaded.tokenizer, loaded.eos_token_ids);
    const auto& tok = *loaded.tokenizer;

    std::vector<generate::PromptRecord> records;
    generate::GenerateFileOptions file;
    file.output    = opt.output;
    file.overwrite = opt.overwrite;
    file.place     = shard_place(parallel);
    if (!opt.prompt.empty()) {
        generate::PromptRecord r;
        r.text = opt.prompt;
        if (opt.chat) {
            std::vector<text::ChatMessage> messages;
            if (!opt.system.empty()) messages.push_back({"system", opt.system});
            messages.push_back({"user", opt.prompt});
            r.text = tok.apply_chat_template(messages, true);
        }
        records.push_back(r);
        file.source       = "--prompt";
        file.log_progress = false;
    } else {
        records     = generate::read_prompt_records(opt.input, tok);
        file.source = opt.input;
    }
    if (!opt.output.empty()) file.identity = run_identity(opt, loaded, records);

    // Text goes out as it is made, each piece checked: a full or closed stdout stops the run at once.
    const bool stream = !opt.prompt.empty() && opt.gen.num_samples == 1;
    if (stream) {
        file.on_text = [](const Completion&, const std::string& piece) {
            write_stdout(piece);
            check_stdout();
        };
    } else if (!opt.prompt.empty()) {
        file.on_record = [](const generate::PromptRecord&, const std::vector<Completion>& samples) {
            for (const auto& s : samples)
                write_stdout("--- sample " + std::to_string(s.sample_index) + " ---\n" + s.text + "\n");
            check_stdout();
        };
    }
    const auto result = generate::generate_to_file(generator, records, opt.gen, file);
    if (result.generated == 0 || result.completions.empty()) return;
    if (stream) {
        write_stdout("\n");
        check_stdout();
        const auto& c = result.completions.at(0);
        spdlog::info("finish reason: {}{}", generate::to_string(c.finish_reason),
                     c.stop.empty() ? "" : " (" + c.stop + ")");
    }
    const auto& st = result.stats;
    spdlog::info("{} prompts | prefill: {} tokens, {:.3f} s, {:.1f} tok/s | decode: {} tokens, {:.3f} s, {:.1f} tok/s",
                 result.completions.size() / static_cast<std::size_t>(opt.gen.num_samples), st.prompt_tokens,
                 st.prefill_seconds, st.prompt_tokens / std::max(st.prefill_seconds, 1e-9), st.decode_tokens,
                 st.decode_seconds, st.decode_tokens / std::max(st.decode_seconds, 1e-9));
}

}  // namespace

void add_generate_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("generate", "Generate text from a model (batched, KV cache, sampling, stops)");
    auto opt  = std::make_shared<GenerateCliOptions>();
    auto& g   = opt->gen;
    cmd->add_option("--model", opt->model, "Model directory (config.json, safetensors, tokenizer)")->required();
    cmd->add_option("--adapter", opt->adapter, "PEFT LoRA adapter directory applied to the model");
    cmd->add_flag(
        "--load-in-4bit", opt->load_in_4bit,
        "Quantize the base to NF4 as it loads (QLoRA); a 4-bit checkpoint (medllm quantize) loads as NF4 without it");
    cmd->add_option("--prompt", opt->prompt, "One prompt; the completion streams to stdout");
    cmd->add_flag("--chat", opt->chat, "Render --prompt as a user turn with the chat template");
    cmd->add_option("--system", opt->system, "System message for --chat (default: the template's)");
    cmd->add_option("--input", opt->input,
                    "JSONL prompts: {\"prompt\": TEXT} or {\"messages\": [...]}, optional \"id\"");
    cmd->add_option("--output", opt->output, "JSONL output (resumed when it exists; see below)");
    cmd->add_flag("--overwrite", opt->overwrite, "Start --output over instead of resuming it");
    cmd->footer(
        "--output is written one record per prompt as it finishes, and a rerun resumes it: finished prompts are "
        "kept, the rest run. The run's identity is kept in <output>.run.json: the input's content hash (or the "
        "rendered --prompt), the model and adapter (config and tokenizer file hashes, weight file names, sizes and "
        "mtimes), --load-in-4bit, the resolved dtype and device, and every decoding option that changes the "
        "samples (--max-new-tokens, --temperature, --top-k, --top-p, --min-p, --repetition-penalty, -n, --seed, "
        "--stop, --stop-token-id, EOS ids, --ignore-eos, --logprobs). A rerun with any of them changed is refused, "
        "naming the key that differs; --overwrite starts the file over. --batch-size may change between runs.\n" +
        distributed_generation_help("generate --input FILE", "--output FILE") +
        " The output then holds one process's records in input order (one process writes them as they finish)."
        " Each rank loads the model on its own device (cuda:LOCAL_RANK with --device auto or cuda) and logs its "
        "share; --prompt runs in one process.");
    cmd->add_option("--max-new-tokens", g.max_new_tokens, "Tokens to generate at most per completion")
        ->capture_default_str()
        ->check(integer_in(1));
    // Numeric flags refuse nan, inf and out-of-range text before conversion (common.h): `--temperature nan` used to
    // run greedy and `--seed -1` to wrap around.
    cmd->add_option("--temperature", opt->temperature, "Sampling temperature; 0 = greedy")
        ->capture_default_str()
        ->check(number_in(0));
    cmd->add_option("--top-k", g.sampling.top_k, "Keep the k most likely tokens (0 = off)")
        ->capture_default_str()
        ->check(integer_in(0));
    cmd->add_option("--top-p", g.sampling.top_p, "Nucleus sampling mass (1 = off)")
        ->capture_default_str()
        ->check(number_in(0, 1, /*min_exclusive=*/true));
    cmd->add_option("--min-p", g.sampling.min_p, "Drop tokens below min-p x top probability (0 = off)")
        ->capture_default_str()
        ->check(number_in(0, 1));
    cmd->add_option("--repetition-penalty", g.sampling.repetition_penalty, "HF repetition penalty (1 = off)")
        ->capture_default_str()
        ->check(number_in(0, std::numeric_limits<double>::infinity(), /*min_exclusive=*/true));
    cmd->add_option("-n,--num-samples", g.num_samples, "Completions per prompt (sharing the prefill)")
        ->capture_default_str()
        ->check(integer_in(1));
    cmd->add_option("--seed", g.seed, "Random seed (each completion has its own stream)")
        ->capture_default_str()
        ->check(integer_in(0));
    cmd->add_option("--stop", g.stop_strings, "Stop string (repeatable); not included in the output");
    cmd->add_option("--stop-token-id", opt->stop_token_ids, "Extra stop token id (repeatable), besides EOS")
        ->check(integer_in(0, std::numeric_limits<int32_t>::max()));
    cmd->add_flag("--ignore-eos", g.ignore_eos, "Do not stop at EOS");
    cmd->add_flag("--logprobs", g.logprobs, "Record the log-probability of each generated token");
    cmd->add_option("--batch-size", g.max_batch_size, "Sequences decoded together")
        ->capture_default_str()
        ->check(integer_in(1));
    cmd->add_option("--dtype", opt->dtype, "auto (config dtype on GPU, fp32 on CPU) | fp32 | bf16 | fp16")
        ->capture_default_str();
    cmd->add_option("--device", opt->device, "auto | cpu | cuda | cuda:N")->capture_default_str();
    add_distributed_options(cmd, opt->dist, /*training=*/false);
    cmd->callback([opt] { run_generate(*opt); });
}

}  // namespace medllm::cli
