// `medllm tokenize`: encode text to ids (JSONL) or decode ids back to text, with a model's tokenizer.
//
//   medllm tokenize --model DIR [-i FILE] [-o FILE]            one document per input line -> {"ids": [...]}
//   medllm tokenize --model DIR --field text -i docs.jsonl     JSONL input, encode the "text" field
//   medllm tokenize --model DIR --decode -i ids.jsonl          [..] or {"ids": [..]} per line -> {"text": "..."}
//   medllm tokenize --model DIR --stats -o /dev/null           + documents, tokens, tokens/char, throughput
//
// The body is text::run_tokenize (include/medllm/text/tokenize_command.h); this file declares the flags.
#include "cli/commands.h"
#include "cli/common.h"
#include "medllm/text/tokenize_command.h"

namespace medllm::cli {

void add_tokenize_command(CLI::App& app) {
    auto opt  = std::make_shared<text::TokenizeConfig>();
    auto* cmd = app.add_subcommand("tokenize", "Encode text to token ids (JSONL) or decode ids back to text");
    cmd->add_option("--model,-m", opt->model,
                    "Model or tokenizer directory (tokenizer.json, vocab.json + merges.txt, or tokenizer.model)")
        ->required()
        ->check(CLI::ExistingDirectory);
    cmd->add_option("--input,-i", opt->input, "Input file, '-' for stdin: one document per line")
        ->capture_default_str();
    cmd->add_option("--output,-o", opt->output, "Output JSONL file, '-' for stdout")->capture_default_str();
    cmd->add_option("--field", opt->field, "Read JSONL input and encode this string field of each object");
    cmd->add_flag("--decode", opt->decode, "Decode: each line is [ids] or {\"ids\": [...]}; writes {\"text\": ...}");
    cmd->add_flag("--stats", opt->stats, "Print documents, tokens, tokens per character and throughput to stderr");
    cmd->add_flag("--add-special-tokens", opt->add_special_tokens,
                  "Add BOS/EOS where the tokenizer config asks for them (Qwen2.5 adds none)");
    cmd->add_flag("--skip-special-tokens", opt->skip_special_tokens, "Decode: drop special tokens");
    cmd->add_option("--jobs,-j", opt->jobs, "Encoding threads (0 = all cores)")
        ->capture_default_str()
        ->check(integer_in(0, 1024));
    cmd->add_option("--batch", opt->batch, "Documents encoded per parallel batch")
        ->capture_default_str()
        ->check(integer_in(1, int64_t{1} << 24));
    cmd->callback([opt] { text::run_tokenize(*opt); });
}

}  // namespace medllm::cli
