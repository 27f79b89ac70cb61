// `medllm generate`: checks its flags, then streams one prompt to stdout or runs a prompt file into resumable JSONL.
#include "medllm/generate/generate_command.h"

#include <algorithm>
#include <filesystem>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/generate/generate_file.h"
#include "medllm/generate/load.h"
#include "medllm/io/model_files.h"

namespace medllm::generate {
namespace {

namespace fs = std::filesystem;

// What produced an output file besides the decoding options: a resume with any of it changed is refused.
nlohmann::json run_identity(const GenerateConfig& opt, const LoadedModel& loaded,
                            const std::vector<PromptRecord>& records) {
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

// The prompts to run: --prompt (rendered with the chat template for --chat) or the records of --input.
std::vector<PromptRecord> prompt_records(const GenerateConfig& opt, const text::Tokenizer& tok) {
    if (opt.prompt.empty()) return read_prompt_records(opt.input, tok);
    PromptRecord r;
    r.text = opt.prompt;
    if (opt.chat) {
        std::vector<text::ChatMessage> messages;
        if (!opt.system.empty()) messages.push_back({"system", opt.system});
        messages.push_back({"user", opt.prompt});
        r.text = tok.apply_chat_template(messages, true);
    }
    return {r};
}

void log_stats(const GenerateFileResult& result, int64_t num_samples) {
    const auto& st = result.stats;
    spdlog::info("{} prompts | prefill: {} tokens, {:.3f} s, {:.1f} tok/s | decode: {} tokens, {:.3f} s, {:.1f} tok/s",
                 result.completions.size() / static_cast<std::size_t>(num_samples), st.prompt_tokens,
                 st.prefill_seconds, st.prompt_tokens / std::max(st.prefill_seconds, 1e-9), st.decode_tokens,
                 st.decode_seconds, st.decode_tokens / std::max(st.decode_seconds, 1e-9));
}

void generate_in(const GenerateConfig& opt, bool overwrite, const dist::Parallel& parallel) {
    LoadOptions lo;
    lo.dtype         = opt.dtype;
    lo.device        = parallel.world_size > 1 ? parallel.group->device().str() : opt.device;  // cuda:LOCAL_RANK
    lo.adapter       = opt.adapter;
    lo.quantize_base = opt.load_in_4bit;
    auto loaded      = load_model(opt.model, lo);
    Generator generator(loaded.model, loaded.tokenizer, loaded.eos_token_ids);

    const auto records = prompt_records(opt, *loaded.tokenizer);
    GenerateFileOptions file;
    file.output    = opt.output;
    file.overwrite = overwrite;
    file.place     = dist::shard_place(parallel);
    if (!opt.prompt.empty()) {
        file.source       = "--prompt";
        file.log_progress = false;
    } else {
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
        file.on_record = [](const PromptRecord&, const std::vector<Completion>& samples) {
            for (const auto& s : samples)
                write_stdout("--- sample " + std::to_string(s.sample_index) + " ---\n" + s.text + "\n");
            check_stdout();
        };
    }
    const auto result = generate_to_file(generator, records, opt.gen, file);
    if (result.generated == 0 || result.completions.empty()) return;
    if (stream) {
        write_stdout("\n");
        check_stdout();
        const auto& c = result.completions.at(0);
        spdlog::info("finish reason: {}{}", to_string(c.finish_reason), c.stop.empty() ? "" : " (" + c.stop + ")");
    }
    log_stats(result, opt.gen.num_samples);
}

}  // namespace

void run_generate(GenerateConfig opt, const dist::RunOptions& run) {
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
    parse_device(opt.device);  // a bad --device is named before any rendezvous
    // Several processes share the prompts of a file run; --prompt streams one prompt to stdout.
    if (const int64_t world = dist::resolve_launch(run.launch).world_size; world > 1 && !opt.prompt.empty())
        throw UsageError("generate: " + std::to_string(world) +
                         " processes share the prompts of --input FILE into --output FILE; --prompt runs in one "
                         "process");
    const auto parallel = dist::join_process_group(run.launch, opt.device);
    dist::run_reporting_failure(parallel, [&] { generate_in(opt, run.overwrite, parallel); });
}

}  // namespace medllm::generate
