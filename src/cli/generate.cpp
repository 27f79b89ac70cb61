// `medllm generate`: text from a model with the batched generation engine (KV cache, continuous batching).
//
//   medllm generate --model DIR --prompt "Once upon a time"                 streams the completion to stdout
//   medllm generate --model DIR --chat --prompt "こんにちは"                   the prompt as a chat user turn
//   medllm generate --model DIR --input prompts.jsonl --output out.jsonl -n 4 --temperature 0.7 --top-p 0.9
//   torchrun --nproc-per-node 4 --no-python medllm generate --model DIR --input p.jsonl --output out.jsonl
//
// The body is generate::run_generate (include/medllm/generate/generate_command.h); this file declares the flags.
#include <limits>

#include "cli/commands.h"
#include "cli/common.h"
#include "cli/distributed_flags.h"
#include "medllm/generate/generate_command.h"

namespace medllm::cli {

void add_generate_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("generate", "Generate text from a model (batched, KV cache, sampling, stops)");
    struct State {
        generate::GenerateConfig config;
        bool overwrite = false;
        DistributedFlags dist;
    };
    auto st   = std::make_shared<State>();
    auto* opt = &st->config;
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
    cmd->add_flag("--overwrite", st->overwrite, "Start --output over instead of resuming it");
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
    add_distributed_options(cmd, st->dist, /*training=*/false);
    cmd->callback([st] {
        dist::RunOptions run;
        run.overwrite = st->overwrite;
        run.launch    = launch_flags(st->dist);
        generate::run_generate(st->config, run);
    });
}

}  // namespace medllm::cli
