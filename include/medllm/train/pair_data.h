// Preference pairs for `medllm rpo`: TRL's preference JSONL (`prompt`, `chosen`, `rejected`, each a string or a
// list of {role, content} messages; other fields such as `pair_type` kept), tokenized and truncated as TRL
// v0.12-v0.28's DPOTrainer does (docs/reference/preference-losses.md §5), and collated into one
// [chosen rows; rejected rows] batch per micro-batch.
//
// Tokenization (data.tokenization):
//   separate  TRL v0.12-v0.28 (tokenize_row): prompt, chosen and rejected tokenized on their own (for message
//             lists: the texts maybe_apply_chat_template renders), EOS appended to string completions.
//   joint     TRL >= v0.29 / 1.x: prompt, prompt + chosen and prompt + rejected tokenized whole (string
//             completions get the EOS text unless they end in it; message lists are rendered whole), and the
//             completions start where the prompt's tokens and each whole sequence's tokens first differ (the smaller
//             of the two, so both sides share one prompt). Differs from `separate` when tokens merge across the
//             boundary ("答え:" + "a"): the merged token then belongs to the completion and the prompt loses it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

#include "medllm/data/guard.h"
#include "medllm/text/tokenizer.h"

namespace medllm::train {

struct PrefDataOptions {
    int64_t max_length                = 1024;        // 0 = none (TRL v0.14-v0.28 default 1024)
    int64_t max_prompt_length         = 512;         // 0 = none (the prompt keeps its last tokens)
    int64_t max_completion_length     = 0;           // 0 = none (completions keep their first tokens)
    std::string truncation_mode       = "keep_end";  // keep_end | keep_start (prompt + completion > max_length)
    std::string tokenization          = "separate";  // separate (TRL v0.12-v0.28) | joint (TRL >= v0.29)
    std::string on_invalid            = "error";     // error | skip
    std::string default_system_prompt = "auto";      // chat rows without a system turn; auto = the tokenizer's
    std::optional<int32_t> eos_id;                   // appended to string completions (default: the tokenizer's)
    // Contamination guard on the prompt text (null = off): refuse | drop | warn.
    const data::ContaminationGuard* guard = nullptr;
    std::string guard_action              = "refuse";
};

// One side of a pair after truncation: prompt tokens then completion tokens.
struct PrefSequence {
    std::vector<int32_t> ids;
    int64_t prompt_len = 0;
    int64_t completion_len() const { return static_cast<int64_t>(ids.size()) - prompt_len; }
};

struct PrefExample {
    int64_t line = 0;       // 1-based line in the file
    std::string pair_type;  // "" when the row has none
    PrefSequence chosen, rejected;
    bool truncated = false;
};

struct PrefDataStats {
    int64_t lines = 0, examples = 0;
    int64_t invalid_skipped = 0;  // malformed rows skipped (data.on_invalid: skip)
    int64_t truncated       = 0;  // pairs that lost tokens to max_prompt_length / max_completion_length / max_length
    int64_t dropped_empty   = 0;  // pairs with no completion token left on a side (not trained on)
    int64_t guard_flagged   = 0;  // prompts holding an evaluation question
    int64_t guard_dropped   = 0;
    int64_t chat_rows       = 0;  // message-list rows (chat template), the others are strings
    int64_t boundary_merged =
        0;  // tokenization joint: rows whose prompt lost end tokens to a merge with the completion
    std::map<std::string, int64_t> pair_types;
    nlohmann::json to_json() const;
};

struct PrefDataset {
    std::vector<PrefExample> examples;
    PrefDataStats stats;
};

// TRL v0.12-v0.28 on already tokenized parts: EOS appended to both completions unless `is_chat`; the prompt keeps
// its last max_prompt_length tokens, the completions their first max_completion_length; then each row
// (prompt + completion) longer than max_length keeps its last (keep_end) or first (keep_start) max_length tokens.
PrefExample truncate_pair(std::vector<int32_t> prompt, std::vector<int32_t> chosen, std::vector<int32_t> rejected,
                          bool is_chat, int32_t eos_id, const PrefDataOptions& options);

// Reads and tokenizes a preference JSONL. Malformed rows (bad JSON, a missing or mistyped field, an empty
// completion) are a UsageError naming file:line, or skipped and counted (on_invalid: skip). A guard hit with
// action refuse is a UsageError naming file:line and the question.
PrefDataset load_pref_dataset(const std::filesystem::path& path, const text::Tokenizer& tokenizer,
                              const PrefDataOptions& options);

// One micro-batch: rows [chosen_0..B-1, rejected_0..B-1], right-padded with `pad_id` to the longest row; the
// completion positions flattened for the log-prob gather.
struct PrefBatch {
    int64_t pairs = 0, seq_len = 0;
    at::Tensor input_ids;         // [2B, S] int64 ([B, S] with share_prompt)
    at::Tensor predict_position;  // [M] int64: row * S + t - 1, the position whose logits predict completion token t
    at::Tensor targets;           // [M] int64: the completion token
    at::Tensor row_of;            // [M] int64: its row (< B: chosen)
    at::Tensor completion_len;    // [2B] fp32: completion tokens per row (IPO's length normalization)
    int64_t chosen_tokens = 0, rejected_tokens = 0, real_tokens = 0;
    std::vector<std::string> pair_types;
    std::vector<int64_t> indices;  // dataset indices of the pairs
    // share_prompt: one row per pair, [chosen, rejected after the prefix it shares with chosen]; the rejected
    // tokens attend to that prefix and to themselves (not to chosen) at their own positions, so every log-prob
    // is the one of separate rows while the shared prompt runs once. Undefined otherwise.
    at::Tensor position_ids;       // [B, S] int64
    at::Tensor attention_mask_4d;  // [B, 1, S, S] bool
};
// Rows [2B, S] (chosen 0..B-1, rejected B..2B-1), or with share_prompt one packed row per pair [B, S]; row_of
// numbers the sequences the same way in both layouts.
PrefBatch collate_pairs(const std::vector<const PrefExample*>& pairs, int32_t pad_id, at::Device device,
                        bool share_prompt = false);

}  // namespace medllm::train
