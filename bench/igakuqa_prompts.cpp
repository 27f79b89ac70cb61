// Real IgakuQA prompts for the benchmarks (scripts/bench_setup.py): the questions `medllm eval igakuqa --limit`
// takes, rendered and tokenized exactly as it renders them (eval::render_prompt, the model folder's tokenizer), so
// the benchmarks feed both stacks medllm's own prompts instead of a second rendering in Python.
//   bench_igakuqa_prompts DATA_DIR MODEL_DIR standard|explanation base|chat YEARS LIMIT OUT_JSONL
// Writes one {"id", "prompt", "prompt_ids"} line per question, in the order eval igakuqa runs them.
#include <cstdio>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "medllm/eval/igakuqa_data.h"
#include "medllm/eval/igakuqa_prompt.h"
#include "medllm/text/tokenizer.h"

using namespace medllm;

int main(int argc, char** argv) {
    if (argc != 8) {
        std::fprintf(stderr,
                     "usage: bench_igakuqa_prompts DATA_DIR MODEL_DIR standard|explanation base|chat YEARS LIMIT "
                     "OUT_JSONL\n");
        return 2;
    }
    try {
        const std::string data_dir = argv[1];
        const auto tokenizer       = text::Tokenizer::from_dir(argv[2]);
        const auto mode            = eval::parse_prompt_mode(argv[3]);
        const std::string format   = argv[4];
        if (format != "base" && format != "chat") throw std::runtime_error("format must be base or chat");
        const auto questions = eval::first_questions_per_section(
            eval::load_questions(data_dir, eval::parse_years(argv[5])), std::stoll(argv[6]));
        const auto examples = eval::load_few_shot_examples(eval::default_prompt_file(data_dir));
        std::ofstream out(argv[7]);
        for (const auto& q : questions) {
            const std::string prompt = eval::render_prompt(
                q, examples, mode, format == "chat" ? eval::PromptFormat::chat : eval::PromptFormat::base);
            out << nlohmann::json{{"id", q.problem_id}, {"prompt", prompt}, {"prompt_ids", tokenizer->encode(prompt)}}
                       .dump()
                << "\n";
        }
        if (!out.flush()) throw std::runtime_error(std::string("cannot write ") + argv[7]);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_igakuqa_prompts: %s\n", e.what());
        return 1;
    }
    return 0;
}
