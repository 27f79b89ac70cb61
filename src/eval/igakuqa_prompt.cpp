// Rendering the IgakuQA 3-shot prompt in both modes, as text or chat.
#include "medllm/eval/igakuqa_prompt.h"

#include "medllm/core/error.h"

namespace medllm::eval {
namespace {

constexpr char kChoiceLetters[] = "abcdefgh";

// Explanation-mode instruction lines (ours; the original has no explanation mode).
constexpr char kExplainChoices[] = "まず解説を書き、最後に「答え:」に続けて選んだ選択肢の記号を書いてください。";
constexpr char kExplainNumeric[] = "まず解説を書き、最後に「答え:」に続けて数値を書いてください。";
constexpr char kExplanationLead[] = "解説: ";

std::string join_answer(const std::vector<std::string>& answer) {
    std::string out;
    for (size_t i = 0; i < answer.size(); ++i) {
        if (i) out += ',';
        out += answer[i];
    }
    return out;
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

const char* to_string(PromptMode mode) {
    return mode == PromptMode::standard ? "standard" : "explanation";
}
const char* to_string(PromptFormat format) {
    return format == PromptFormat::base ? "base" : "chat";
}

PromptMode parse_prompt_mode(const std::string& text) {
    if (text == "standard") return PromptMode::standard;
    if (text == "explanation") return PromptMode::explanation;
    throw UsageError("mode '" + text + "': expected standard or explanation");
}

std::string render_user_turn(const std::string& problem_text, const std::vector<std::string>& choices,
                             size_t answer_count, PromptMode mode) {
    std::string turn = "問題: " + problem_text;
    if (choices.empty()) {
        // The original sends numeric-entry questions with no instruction and no answer marker.
        if (mode == PromptMode::explanation) turn += std::string("\n") + kExplainNumeric;
        return turn;
    }
    for (size_t i = 0; i < choices.size(); ++i) {
        turn += "\n";
        turn += kChoiceLetters[i];
        turn += ": " + choices[i];
    }
    // Always "a,b,c,d,e", even with 6 or 8 choices: verbatim from the original.
    turn += "\n必ずa,b,c,d,eの中からちょうど" + std::to_string(answer_count) + "個選んでください。";
    if (mode == PromptMode::standard) {
        turn += std::string("\n") + kAnswerMarker;
    } else {
        turn += std::string("\n") + kExplainChoices;
    }
    return turn;
}

std::vector<ChatMessage> build_messages(const Question& question, const std::vector<FewShotExample>& examples,
                                        PromptMode mode) {
    std::vector<ChatMessage> messages{{"system", kSystemMessage}};
    for (const auto& ex : examples) {
        messages.push_back({"user", render_user_turn(ex.problem_text, ex.choices, ex.answer.size(), mode)});
        if (mode == PromptMode::standard) {
            messages.push_back({"assistant", join_answer(ex.answer)});
        } else {
            if (ex.explanation.empty())
                throw Error("few-shot example " + ex.problem_id + " has no 'explanation' (needed by explanation mode)");
            messages.push_back(
                {"assistant", kExplanationLead + ex.explanation + "\n" + kAnswerMarker + join_answer(ex.answer)});
        }
    }
    messages.push_back(
        {"user", render_user_turn(question.problem_text, question.choices, question.answer.size(), mode)});
    return messages;
}

std::string render_chatml(const std::vector<ChatMessage>& messages) {
    std::string out;
    for (const auto& m : messages) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    out += "<|im_start|>assistant\n";
    return out;
}

std::string render_base(const std::vector<ChatMessage>& messages, bool final_is_numeric, PromptMode mode) {
    std::string out;
    for (size_t i = 0; i < messages.size(); ++i) {
        const auto& m = messages[i];
        if (m.role == "system") {
            out += m.content;
        } else if (m.role == "user") {
            out += "\n\n" + m.content;
            if (!ends_with(m.content, kAnswerMarker)) {
                const bool is_final = i + 1 == messages.size();
                if (is_final && final_is_numeric && mode == PromptMode::standard)
                    out += std::string("\n") + kAnswerMarker;
                else
                    out += "\n";
            }
        } else {
            out += m.content;
        }
    }
    return out;
}

std::string render_prompt(const Question& question, const std::vector<FewShotExample>& examples, PromptMode mode,
                          PromptFormat format) {
    const auto messages = build_messages(question, examples, mode);
    return format == PromptFormat::chat ? render_chatml(messages) : render_base(messages, question.is_numeric(), mode);
}

std::vector<std::string> base_stop_strings(PromptMode mode) {
    // A base model keeps writing the next "問題:" after its answer; standard answers are one line.
    if (mode == PromptMode::standard) return {"\n\n", "\n問題:"};
    return {"\n問題:"};
}

AnswerSpec answer_spec(const Question& question) {
    AnswerSpec spec;
    spec.numeric        = question.is_numeric();
    spec.num_choices    = static_cast<int>(question.choices.size());
    spec.expected_count = static_cast<int>(question.answer.size());
    return spec;
}

}  // namespace medllm::eval
