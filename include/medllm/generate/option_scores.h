// The model side of IgakuQA's option-text scores (include/medllm/eval/igakuqa_option_scores.h): each choice's
// text after the question's answer marker, scored by its mean log-probability per token, all choices of a question
// in one right-padded forward pass.
#pragma once

#include <filesystem>
#include <string>

#include "medllm/eval/igakuqa_option_scores.h"

namespace medllm::generate {

// Loads `model_dir` in fp32 on `device` (the tokenizer from `tokenizer_dir`, "" = the model folder's) and returns
// the scorer eval::score_options calls; the scorer keeps the model alive. Throws medllm::Error for an unreadable
// model, UsageError for a bad device.
eval::OptionTextScorer load_option_text_scorer(const std::filesystem::path& model_dir, const std::string& device,
                                               const std::filesystem::path& tokenizer_dir = {});

}  // namespace medllm::generate
