// The IgakuQA 3-shot prompt (docs/reference/igakuqa.md §6), in two modes and two renderings.
//
// standard:    the original chatgpt.py messages, character for character: system "医師国家試験を解きます。",
//              user turns "問題: …\na: …\n必ずa,b,c,d,eの中からちょうどN個選んでください。\n答え:" (numeric questions:
//              "問題: …" only), assistant turns ",".join(answer).
// explanation: the same questions, but the final instruction line asks for an explanation first and the answer
//              after "答え:" at the end; the few-shot assistant turns are "解説: <explanation>\n答え:<answer>"
//              with the explanations from the prompt file. Not part of the original; compare it only with itself.
//
// chat rendering: ChatML as the Qwen2.5 chat template renders these messages with add_generation_prompt.
// base rendering (no chat template): the system line, then each user turn directly followed by its answer,
//              turns separated by a blank line. A user turn that does not end in "答え:" (numeric questions in
//              standard mode, every turn in explanation mode) gets "\n" before the answer, and a final numeric
//              question in standard mode gets "\n答え:" so a base model knows where to answer.
#pragma once

#include <string>
#include <vector>

#include "medllm/eval/igakuqa_answer.h"
#include "medllm/eval/igakuqa_data.h"

namespace medllm::eval {

enum class PromptMode { standard, explanation };
enum class PromptFormat { base, chat };

const char* to_string(PromptMode mode);
const char* to_string(PromptFormat format);
PromptMode parse_prompt_mode(const std::string& text);  // throws UsageError

inline constexpr char kSystemMessage[] = "医師国家試験を解きます。";
inline constexpr char kAnswerMarker[]  = "答え:";

struct ChatMessage {
    std::string role;  // "system", "user", "assistant"
    std::string content;
};

// The user turn for one question; `answer_count` is N of "ちょうどN個" (the original uses len(gold answer)).
std::string render_user_turn(const std::string& problem_text, const std::vector<std::string>& choices,
                             size_t answer_count, PromptMode mode);

// system, (user, assistant) per example, final user turn. Throws medllm::Error when explanation mode
// needs an example explanation that the prompt file lacks.
std::vector<ChatMessage> build_messages(const Question& question, const std::vector<FewShotExample>& examples,
                                        PromptMode mode);

std::string render_chatml(const std::vector<ChatMessage>& messages);  // ends with "<|im_start|>assistant\n"
std::string render_base(const std::vector<ChatMessage>& messages, bool final_is_numeric, PromptMode mode);

std::string render_prompt(const Question& question, const std::vector<FewShotExample>& examples, PromptMode mode,
                          PromptFormat format);

// Stop strings that end an answer in the base rendering (the chat rendering stops at the end-of-turn token).
std::vector<std::string> base_stop_strings(PromptMode mode);

// The extraction spec of a question (numeric, number of choices, N).
AnswerSpec answer_spec(const Question& question);

}  // namespace medllm::eval
