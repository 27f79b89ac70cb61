// `medllm generate`: text from a model with the batched generation engine (KV cache, continuous batching).
//
//   medllm generate --model DIR --prompt "Once upon a time"                 streams the completion to stdout
//   medllm generate --model DIR --chat --prompt "こんにちは"                   the prompt as a chat user turn
//   medllm generate --model DIR --input prompts.jsonl --output out.jsonl -n 4 --temperature 0.7 --top-p 0.9
//
// Input JSONL: one object per line with "prompt" (raw text, used as is), "messages" ([{role, content}],
// rendered with the chat template and a generation prompt) or "prompt_ids" (token ids, used as is), and
// optionally "id" (copied to the output).
// Output JSONL: one line per prompt as soon as all its samples are done (so not in input order):
//   {"index": <0-based input record>, "id": ..., "prompt_tokens": N,
//    "completions": [{"text", "token_ids", "finish_reason": "stop"|"eos"|"length", "stop", "generated_tokens",
//                     "logprobs" (with --logprobs)}]}
// An existing output file is resumed: its complete records are kept and only the missing prompts run.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>

#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "medllm/core/error.h"
#include "medllm/generate/engine.h"

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
};

struct PromptRecord {
    std::size_t index = 0;                          // 0-based record number in the input
    std::size_t line  = 0;                          // 1-based line in the file
    nlohmann::json id;                              // null when absent
    std::string text;                               // rendered prompt
    std::optional<std::vector<text::TokenId>> ids;  // "prompt_ids": pre-tokenized, used as is
};

std::string dump(const nlohmann::json& j) {
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::vector<PromptRecord> read_prompts(const std::string& path, const text::Tokenizer& tokenizer) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw UsageError("--input " + path + ": cannot open the file");
    std::vector<PromptRecord> records;
    std::string line;
    for (std::size_t line_no = 1; std::getline(in, line); ++line_no) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        const std::string where = path + ":" + std::to_string(line_no);
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(line);
        } catch (const std::exception& e) {
            throw Error(where + ": not valid JSON (" + std::string(e.what()) + ")");
        }
        if (!j.is_object()) throw Error(where + ": expected a JSON object with \"prompt\" or \"messages\"");
        PromptRecord r;
        r.index = records.size();
        r.line  = line_no;
        if (j.contains("id")) r.id = j["id"];
        if (j.contains("prompt_ids")) {
            const auto& p = j["prompt_ids"];
            if (!p.is_array()) throw Error(where + ": \"prompt_ids\" must be a list of token ids");
            std::vector<text::TokenId> ids;
            for (const auto& v : p) {
                if (!v.is_number_integer() || v.get<int64_t>() < 0)
                    throw Error(where + ": \"prompt_ids\" holds " + v.dump() + ", not a token id");
                ids.push_back(v.get<text::TokenId>());
            }
            r.ids = std::move(ids);
        } else if (j.contains("prompt")) {
            if (!j["prompt"].is_string()) throw Error(where + ": \"prompt\" must be a string");
            r.text = j["prompt"].get<std::string>();
        } else if (j.contains("messages")) {
            const auto& m = j["messages"];
            if (!m.is_array() || m.empty()) throw Error(where + ": \"messages\" must be a non-empty list");
            std::vector<text::ChatMessage> messages;
            for (const auto& msg : m) {
                if (!msg.is_object() || !msg.contains("role") || !msg.contains("content") || !msg["role"].is_string() ||
                    !msg["content"].is_string())
                    throw Error(where + ": each message needs string \"role\" and \"content\"");
                messages.push_back({msg["role"].get<std::string>(), msg["content"].get<std::string>()});
            }
            r.text = tokenizer.apply_chat_template(messages, /*add_generation_prompt=*/true);
        } else {
            throw Error(where + ": needs a \"prompt\" string, a \"messages\" list or \"prompt_ids\"");
        }
        records.push_back(std::move(r));
    }
    return records;
}

// Indices already in the output file; a torn last line (a run killed mid-write) is cut off.
std::set<std::size_t> resume_output(const std::string& path, std::size_t num_prompts) {
    std::set<std::size_t> done;
    std::ifstream in(path, std::ios::binary);
    if (!in) return done;
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    in.close();
    std::size_t pos = 0, good_end = 0, line_no = 0;
    while (pos < content.size()) {
        std::size_t nl = content.find('\n', pos);
        ++line_no;
        if (nl == std::string::npos) break;  // no newline: torn
        const std::string line = content.substr(pos, nl - pos);
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(line);
        } catch (const std::exception&) {
            throw Error(path + ":" + std::to_string(line_no) +
                        ": not a generate output record; pass --overwrite to start over or choose another --output");
        }
        if (!j.is_object() || !j.contains("index") || !j["index"].is_number_unsigned())
            throw Error(path + ":" + std::to_string(line_no) +
                        ": record has no \"index\"; not a generate output file?");
        const auto index = j["index"].get<std::size_t>();
        if (index >= num_prompts)
            throw Error(path + ":" + std::to_string(line_no) + ": record index " + std::to_string(index) +
                        " but the input has " + std::to_string(num_prompts) + " prompts (another input's output?)");
        done.insert(index);
        pos = good_end = nl + 1;
    }
    if (good_end < content.size()) {
        spdlog::warn("{}: dropping an incomplete last line (the previous run stopped mid-write)", path);
        fs::resize_file(path, good_end);
    }
    return done;
}

nlohmann::json completion_json(const Completion& c, bool logprobs) {
    nlohmann::json j;
    j["text"]             = c.text;
    j["token_ids"]        = c.ids;
    j["finish_reason"]    = generate::to_string(c.finish_reason);
    j["stop"]             = c.stop;
    j["generated_tokens"] = c.generated_tokens;
    if (logprobs) j["logprobs"] = c.logprobs;
    return j;
}

void run_generate(GenerateCliOptions opt) {
    if (opt.prompt.empty() == opt.input.empty())
        throw UsageError("generate: give exactly one of --prompt TEXT or --input FILE");
    if (!opt.input.empty() && opt.output.empty()) throw UsageError("generate: --input needs --output FILE");
    if (opt.temperature < 0) throw UsageError("--temperature must be >= 0 (0 = greedy)");
    opt.gen.sampling.do_sample = opt.temperature > 0;
    if (opt.gen.sampling.do_sample) opt.gen.sampling.temperature = opt.temperature;
    opt.gen.stop_token_ids = opt.stop_token_ids;
    opt.gen.validate();

    generate::LoadOptions lo;
    lo.dtype         = opt.dtype;
    lo.device        = opt.device;
    lo.adapter       = opt.adapter;
    lo.quantize_base = opt.load_in_4bit;
    auto loaded      = generate::load_model(opt.model, lo);
    generate::Generator generator(loaded.model, loaded.tokenizer, loaded.eos_token_ids);
    const auto& tok = *loaded.tokenizer;

    std::vector<PromptRecord> records;
    std::string source;
    if (!opt.prompt.empty()) {
        PromptRecord r;
        r.text = opt.prompt;
        if (opt.chat) {
            std::vector<text::ChatMessage> messages;
            if (!opt.system.empty()) messages.push_back({"system", opt.system});
            messages.push_back({"user", opt.prompt});
            r.text = tok.apply_chat_template(messages, true);
        }
        records.push_back(r);
        source = "--prompt";
    } else {
        records = read_prompts(opt.input, tok);
        source  = opt.input;
        if (records.empty()) throw Error(opt.input + ": no prompts");
    }

    std::set<std::size_t> done;
    if (!opt.output.empty()) {
        if (opt.overwrite) fs::remove(opt.output);
        done = resume_output(opt.output, records.size());
        if (!done.empty())
            spdlog::info("{}: resuming, {} of {} prompts already done", opt.output, done.size(), records.size());
    }
    std::vector<const PromptRecord*> todo;
    std::vector<std::string> texts;
    for (const auto& r : records) {
        if (done.count(r.index)) continue;
        todo.push_back(&r);
        texts.push_back(r.text);
    }
    if (todo.empty()) {
        spdlog::info("{}: all {} prompts are done", opt.output, records.size());
        return;
    }
    auto ids          = tok.encode_batch(texts);
    const int64_t ctx = generator.context_length();
    for (std::size_t i = 0; i < todo.size(); ++i) {
        if (todo[i]->ids) ids[i] = *todo[i]->ids;
        const std::string where_ids = source + ":" + std::to_string(todo[i]->line);
        for (auto id : ids[i])
            if (id >= loaded.model->config.vocab_size)
                throw Error(where_ids + ": token id " + std::to_string(id) + " is outside the model's vocabulary of " +
                            std::to_string(loaded.model->config.vocab_size));
        const std::string where = opt.prompt.empty() ? source + ":" + std::to_string(todo[i]->line) : source;
        if (ids[i].empty()) throw Error(where + ": the prompt is empty");
        if (static_cast<int64_t>(ids[i].size()) >= ctx)
            throw Error(where + ": the prompt has " + std::to_string(ids[i].size()) +
                        " tokens, which leaves no room in the model's context of " + std::to_string(ctx) + " tokens");
    }

    std::ofstream out;
    if (!opt.output.empty()) {
        if (fs::path(opt.output).has_parent_path()) fs::create_directories(fs::path(opt.output).parent_path());
        out.open(opt.output, std::ios::app | std::ios::binary);
        if (!out) throw Error(opt.output + ": cannot open for writing");
    }

    const bool stream = !opt.prompt.empty() && opt.gen.num_samples == 1;
    const int64_t n   = opt.gen.num_samples;
    std::map<std::size_t, std::vector<Completion>> partial;  // prompt -> finished samples
    std::size_t prompts_done = 0;
    int64_t tokens_done      = 0;
    const auto t0            = std::chrono::steady_clock::now();
    auto last_log            = t0;
    auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };

    generate::GenerateCallbacks cb;
    if (stream) {
        cb.on_text = [](const Completion&, const std::string& piece) {
            std::fwrite(piece.data(), 1, piece.size(), stdout);
            std::fflush(stdout);
        };
    }
    cb.on_complete = [&](const Completion& c) {
        tokens_done += c.generated_tokens;
        auto& samples = partial[c.prompt_index];
        samples.push_back(c);
        if (static_cast<int64_t>(samples.size()) < n) return;
        std::sort(samples.begin(), samples.end(),
                  [](const Completion& a, const Completion& b) { return a.sample_index < b.sample_index; });
        const PromptRecord& r = *todo[c.prompt_index];
        if (out.is_open()) {
            nlohmann::json j;
            j["index"] = r.index;
            if (!r.id.is_null()) j["id"] = r.id;
            j["prompt_tokens"] = c.prompt_tokens;
            j["completions"]   = nlohmann::json::array();
            for (const auto& s : samples) j["completions"].push_back(completion_json(s, opt.gen.logprobs));
            out << dump(j) << '\n';
            out.flush();
        }
        if (!opt.prompt.empty() && !stream) {
            for (const auto& s : samples)
                std::printf("--- sample %lld ---\n%s\n", static_cast<long long>(s.sample_index), s.text.c_str());
        }
        partial.erase(c.prompt_index);
        ++prompts_done;
        auto now = std::chrono::steady_clock::now();
        if (opt.prompt.empty() &&
            (std::chrono::duration<double>(now - last_log).count() >= 5.0 || prompts_done == todo.size())) {
            last_log       = now;
            const double s = elapsed();
            spdlog::info("{}/{} prompts, {} tokens generated, {:.1f} tok/s, ETA {:.0f} s", prompts_done, todo.size(),
                         tokens_done, tokens_done / std::max(s, 1e-9),
                         prompts_done ? s / prompts_done * (todo.size() - prompts_done) : 0.0);
        }
    };
    for (const auto* r : todo) opt.gen.prompt_keys.push_back(r->index);  // a resumed run draws the same samples
    const auto completions = generator.generate(ids, opt.gen, cb);
    if (stream) {
        std::printf("\n");
        std::fflush(stdout);
        spdlog::info("finish reason: {}{}", generate::to_string(completions[0].finish_reason),
                     completions[0].stop.empty() ? "" : " (" + completions[0].stop + ")");
    }
    const auto& st = generator.last_stats();
    spdlog::info("{} prompts | prefill: {} tokens, {:.3f} s, {:.1f} tok/s | decode: {} tokens, {:.3f} s, {:.1f} tok/s",
                 todo.size(), st.prompt_tokens, st.prefill_seconds,
                 st.prompt_tokens / std::max(st.prefill_seconds, 1e-9), st.decode_tokens, st.decode_seconds,
                 st.decode_tokens / std::max(st.decode_seconds, 1e-9));
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
    cmd->add_option("--output", opt->output, "JSONL output (resumed when it exists)");
    cmd->add_flag("--overwrite", opt->overwrite, "Start --output over instead of resuming it");
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
    cmd->callback([opt] { run_generate(*opt); });
}

}  // namespace medllm::cli
