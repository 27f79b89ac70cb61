// Reading TRL-format preference pairs and collating them into rpo batches.
#include "medllm/train/pair_data.h"

#include <algorithm>
#include <fstream>

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include "medllm/core/error.h"

namespace fs = std::filesystem;

namespace medllm::train {

nlohmann::json PrefDataStats::to_json() const {
    return {{"lines", lines},
            {"pairs", examples},
            {"invalid_skipped", invalid_skipped},
            {"truncated", truncated},
            {"dropped_empty_completion", dropped_empty},
            {"guard_flagged", guard_flagged},
            {"guard_dropped", guard_dropped},
            {"chat_rows", chat_rows},
            {"boundary_merged", boundary_merged},
            {"pair_types", pair_types}};
}

// ---------------------------------------------------------------- truncation (TRL v0.12-v0.28)

namespace {

// Nothing but ASCII whitespace and the ideographic space U+3000 (what Japanese text pads with).
bool blank(const std::string& text) {
    for (size_t i = 0; i < text.size();) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
            ++i;
        } else if (text.compare(i, 3, "\xE3\x80\x80") == 0) {
            i += 3;
        } else {
            return false;
        }
    }
    return true;
}

// A message list whose contents are all blank (or no message at all).
bool blank_messages(const nlohmann::json& messages) {
    for (const auto& m : messages)
        if (m.is_object() && m.contains("content") && m["content"].is_string() &&
            !blank(m["content"].get<std::string>()))
            return false;
    return true;
}

// One row: prompt + completion, cut to max_length as the collator's flush/truncate does per row.
PrefSequence make_row(const std::vector<int32_t>& prompt, const std::vector<int32_t>& completion,
                      const PrefDataOptions& o, bool& truncated) {
    PrefSequence s;
    s.ids = prompt;
    s.ids.insert(s.ids.end(), completion.begin(), completion.end());
    s.prompt_len    = static_cast<int64_t>(prompt.size());
    const int64_t n = static_cast<int64_t>(s.ids.size());
    if (o.max_length > 0 && n > o.max_length) {
        truncated = true;
        if (o.truncation_mode == "keep_start") {
            s.ids.resize(static_cast<size_t>(o.max_length));
            s.prompt_len = std::min(s.prompt_len, o.max_length);
        } else {  // keep_end: the last max_length tokens
            const int64_t cut = n - o.max_length;
            s.ids.erase(s.ids.begin(), s.ids.begin() + cut);
            s.prompt_len = std::max<int64_t>(0, s.prompt_len - cut);
        }
    }
    return s;
}

}  // namespace

PrefExample truncate_pair(std::vector<int32_t> prompt, std::vector<int32_t> chosen, std::vector<int32_t> rejected,
                          bool is_chat, int32_t eos_id, const PrefDataOptions& o) {
    PrefExample ex;
    if (!is_chat) {
        chosen.push_back(eos_id);
        rejected.push_back(eos_id);
    }
    if (o.max_prompt_length > 0 && static_cast<int64_t>(prompt.size()) > o.max_prompt_length) {
        prompt.erase(prompt.begin(), prompt.end() - o.max_prompt_length);
        ex.truncated = true;
    }
    if (o.max_completion_length > 0) {
        for (auto* c : {&chosen, &rejected})
            if (static_cast<int64_t>(c->size()) > o.max_completion_length) {
                c->resize(static_cast<size_t>(o.max_completion_length));
                ex.truncated = true;
            }
    }
    ex.chosen   = make_row(prompt, chosen, o, ex.truncated);
    ex.rejected = make_row(prompt, rejected, o, ex.truncated);
    return ex;
}

// ---------------------------------------------------------------- reading

namespace {

struct RowError {
    std::string message;
};

std::vector<text::ChatMessage> messages_of(const nlohmann::json& v, const char* field) {
    std::vector<text::ChatMessage> out;
    for (size_t i = 0; i < v.size(); ++i) {
        const auto& m = v[i];
        if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
            !m["content"].is_string())
            throw RowError{std::string("field '") + field + "'[" + std::to_string(i) +
                           "] must be a message {\"role\": ..., \"content\": \"...\"}"};
        const std::string role = m["role"].get<std::string>();
        if (role != "system" && role != "user" && role != "assistant")
            throw RowError{std::string("field '") + field + "'[" + std::to_string(i) + "] has role '" + role +
                           "' (expected system, user or assistant)"};
        out.push_back({role, m["content"].get<std::string>()});
    }
    return out;
}

// The common prefix of two strings, backed off to a UTF-8 character boundary (TRL compares characters).
size_t common_prefix(const std::string& a, const std::string& b) {
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
    while (n > 0 && n < a.size() && (static_cast<unsigned char>(a[n]) & 0xC0) == 0x80) --n;
    return n;
}

std::vector<int32_t> encode(const text::Tokenizer& tok, const std::string& s) {
    const auto ids = tok.encode(s, /*add_special_tokens=*/false);
    return std::vector<int32_t>(ids.begin(), ids.end());
}

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
    size_t n = 0;
    while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
    return n;
}

// TRL >= v0.29's split: the prompt's tokens up to where they and both whole sequences' tokens stop agreeing, each
// completion the rest of its whole sequence. (TRL tokenizes with add_special_tokens at its default; no Qwen2.5
// tokenizer adds a token there, so plain encode is the same.)
struct JointSplit {
    std::vector<int32_t> prompt, chosen, rejected;
    bool merged = false;  // the prompt lost tokens at its end
};
JointSplit split_joint(const text::Tokenizer& tok, const std::string& prompt, const std::string& prompt_chosen,
                       const std::string& prompt_rejected) {
    JointSplit s;
    s.prompt        = encode(tok, prompt);
    auto pc         = encode(tok, prompt_chosen);
    auto pr         = encode(tok, prompt_rejected);
    const size_t at = std::min(common_prefix(s.prompt, pc), common_prefix(s.prompt, pr));
    s.merged        = at < s.prompt.size();
    s.prompt.resize(at);
    s.chosen.assign(pc.begin() + static_cast<std::ptrdiff_t>(at), pc.end());
    s.rejected.assign(pr.begin() + static_cast<std::ptrdiff_t>(at), pr.end());
    return s;
}

// The text the guard checks: the prompt string, or every message's content.
std::string guard_text(const nlohmann::json& prompt) {
    if (prompt.is_string()) return prompt.get<std::string>();
    std::string out;
    for (const auto& m : prompt) out += m["content"].get<std::string>() + "\n";
    return out;
}

}  // namespace

PrefDataset load_pref_dataset(const fs::path& path, const text::Tokenizer& tok, const PrefDataOptions& o) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw UsageError("data.path: cannot open " + path.string());
    const auto eos = o.eos_id ? o.eos_id : tok.eos_id();
    if (!eos)
        throw UsageError("the tokenizer names no EOS token (TRL appends it to every completion): set data.eos_token");
    const std::string system =
        o.default_system_prompt == "auto" ? tok.default_system_prompt() : o.default_system_prompt;
    if (o.tokenization != "separate" && o.tokenization != "joint")
        throw UsageError("data.tokenization must be separate (TRL v0.12-v0.28) or joint (TRL >= v0.29), got '" +
                         o.tokenization + "'");
    const bool joint           = o.tokenization == "joint";
    const std::string eos_text = tok.id_to_token(*eos).value_or("");
    if (joint && eos_text.empty())
        throw UsageError("data.tokenization joint appends the EOS token's text, but token " + std::to_string(*eos) +
                         " has none");
    PrefDataset ds;
    std::string line;
    int64_t lineno = 0;
    while (std::getline(in, line)) {
        ++lineno;
        ++ds.stats.lines;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        const std::string where = path.string() + ":" + std::to_string(lineno);
        try {
            nlohmann::json j;
            try {
                j = nlohmann::json::parse(line);
            } catch (const nlohmann::json::exception& e) {
                throw RowError{std::string("not valid JSON (") + e.what() + ")"};
            }
            if (!j.is_object()) throw RowError{"expected a JSON object with prompt, chosen and rejected"};
            for (const char* f : {"prompt", "chosen", "rejected"}) {
                if (!j.contains(f))
                    throw RowError{std::string("missing field '") + f +
                                   "' (TRL's explicit-prompt preference format: prompt, chosen, rejected)"};
                if (!j[f].is_string() && !j[f].is_array())
                    throw RowError{std::string("field '") + f + "' must be a string or a list of messages"};
            }
            const bool chat = j["prompt"].is_array();
            if (j["chosen"].is_array() != chat || j["rejected"].is_array() != chat)
                throw RowError{"prompt, chosen and rejected must all be strings or all be message lists"};
            std::string pair_type;
            if (j.contains("pair_type")) {
                if (!j["pair_type"].is_string()) throw RowError{"field 'pair_type' must be a string"};
                pair_type = j["pair_type"].get<std::string>();
            }
            std::string prompt_text, chosen_text, rejected_text;
            // tokenization joint: the prompt as rendered alone, and prompt + completion as one text
            std::string prompt_alone, whole_chosen, whole_rejected;
            if (!chat) {
                prompt_text   = j["prompt"].get<std::string>();
                chosen_text   = j["chosen"].get<std::string>();
                rejected_text = j["rejected"].get<std::string>();
                prompt_alone  = prompt_text;
                if (joint) {
                    // TRL >= v0.29 appends the EOS text to a completion that does not end in it, then tokenizes.
                    auto with_eos = [&](const std::string& c) {
                        const bool has = c.size() >= eos_text.size() &&
                                         c.compare(c.size() - eos_text.size(), eos_text.size(), eos_text) == 0;
                        return prompt_text + c + (has ? "" : eos_text);
                    };
                    whole_chosen   = with_eos(chosen_text);
                    whole_rejected = with_eos(rejected_text);
                }
            } else {
                // TRL's maybe_apply_chat_template: the prompt with a generation prompt when it ends on a user
                // turn; each completion = render(prompt + completion) after the common prefix with the prompt.
                const auto p = messages_of(j["prompt"], "prompt");
                const auto c = messages_of(j["chosen"], "chosen");
                const auto r = messages_of(j["rejected"], "rejected");
                if (p.empty()) throw RowError{"field 'prompt' is an empty message list"};
                const bool gen = p.back().role == "user";
                prompt_text    = text::render_chatml(p, gen, system);
                auto full      = [&](const std::vector<text::ChatMessage>& comp) {
                    auto all = p;
                    all.insert(all.end(), comp.begin(), comp.end());
                    return text::render_chatml(all, false, system);
                };
                const std::string pc = full(c), pr = full(r);
                // TRL >= v0.29 tokenizes the prompt alone with a generation prompt whatever its last role.
                prompt_alone   = gen ? prompt_text : text::render_chatml(p, true, system);
                whole_chosen   = pc;
                whole_rejected = pr;
                prompt_text.resize(common_prefix(prompt_text, pc));
                chosen_text = pc.substr(prompt_text.size());
                prompt_text.resize(common_prefix(prompt_text, pr));
                rejected_text = pr.substr(prompt_text.size());
                ++ds.stats.chat_rows;
            }
            // A completion of nothing but whitespace (spaces, newlines, U+3000) teaches nothing but to stop: refused
            // as an empty one.
            if (chat ? blank_messages(j["chosen"]) : blank(chosen_text))
                throw RowError{"empty chosen completion (nothing but whitespace)"};
            if (chat ? blank_messages(j["rejected"]) : blank(rejected_text))
                throw RowError{"empty rejected completion (nothing but whitespace)"};
            if (o.guard) {
                const auto hits = o.guard->check(guard_text(j["prompt"]));
                if (!hits.empty()) {
                    ++ds.stats.guard_flagged;
                    const std::string msg = where + ": the prompt contains evaluation question " +
                                            hits.front().problem_id + " (overlap " +
                                            std::to_string(hits.front().overlap) + ")";
                    if (o.guard_action == "refuse")
                        throw UsageError(msg + "; remove it from the pairs, or set eval_guard.action: drop / warn");
                    if (o.guard_action == "drop") {
                        ++ds.stats.guard_dropped;
                        continue;
                    }
                    spdlog::warn("{} (eval_guard.action: warn, kept)", msg);
                }
            }
            PrefExample ex;
            if (joint) {
                auto split = split_joint(tok, prompt_alone, whole_chosen, whole_rejected);
                ds.stats.boundary_merged += split.merged;
                // EOS is already in the whole sequences (the EOS text, or the chat template's end of turn).
                ex = truncate_pair(std::move(split.prompt), std::move(split.chosen), std::move(split.rejected),
                                   /*is_chat (no EOS appended)=*/true, *eos, o);
            } else {
                ex = truncate_pair(encode(tok, prompt_text), encode(tok, chosen_text), encode(tok, rejected_text), chat,
                                   *eos, o);
            }
            ex.line      = lineno;
            ex.pair_type = pair_type;
            if (ex.truncated) ++ds.stats.truncated;
            if (ex.chosen.completion_len() <= 0 || ex.rejected.completion_len() <= 0) {
                ++ds.stats.dropped_empty;
                continue;
            }
            if (!pair_type.empty()) ++ds.stats.pair_types[pair_type];
            ds.examples.push_back(std::move(ex));
        } catch (const RowError& e) {
            if (o.on_invalid == "error")
                throw UsageError(where + ": " + e.message + " (data.on_invalid: skip skips such rows)");
            ++ds.stats.invalid_skipped;
        }
    }
    if (in.bad()) throw Error("data.path: read error in " + path.string());
    ds.stats.examples = static_cast<int64_t>(ds.examples.size());
    if (ds.examples.empty())
        throw UsageError("data.path: " + path.string() + " holds no usable preference pair (" +
                         std::to_string(ds.stats.lines) + " lines, " + std::to_string(ds.stats.invalid_skipped) +
                         " invalid, " + std::to_string(ds.stats.dropped_empty) + " without completion tokens, " +
                         std::to_string(ds.stats.guard_dropped) + " dropped by the guard)");
    if (ds.stats.boundary_merged > 0)
        spdlog::warn(
            "{}: in {} of {} pairs the prompt's last tokens merge with the completion's first (data.tokenization: "
            "joint, as TRL >= 0.29): the completion starts with the merged token and the prompt is trained without "
            "them; data.tokenization: separate keeps the prompt whole",
            path.string(), ds.stats.boundary_merged, ds.stats.examples);
    if (ds.stats.dropped_empty > 0)
        spdlog::warn(
            "{}: {} pairs have no completion token left after truncation (data.max_length {}, "
            "max_prompt_length {}) and are not trained on",
            path.string(), ds.stats.dropped_empty, o.max_length, o.max_prompt_length);
    return ds;
}

// ---------------------------------------------------------------- collation

namespace {

// One row per pair: chosen's tokens, then rejected's tokens after the longest prefix the two share (causal
// attention makes that prefix's hidden states the same in both rows, whatever the truncation did to them).
PrefBatch collate_shared_prompt(const std::vector<const PrefExample*>& pairs, int32_t pad_id, at::Device device) {
    PrefBatch b;
    b.pairs         = static_cast<int64_t>(pairs.size());
    const int64_t B = b.pairs;
    std::vector<int64_t> shared(static_cast<size_t>(B));
    int64_t S = 1;
    for (int64_t i = 0; i < B; ++i) {
        const auto& c = pairs[static_cast<size_t>(i)]->chosen.ids;
        const auto& r = pairs[static_cast<size_t>(i)]->rejected.ids;
        size_t k      = 0;
        while (k < c.size() && k < r.size() && c[k] == r[k]) ++k;
        shared[static_cast<size_t>(i)] = static_cast<int64_t>(k);
        S                              = std::max<int64_t>(S, static_cast<int64_t>(c.size() + r.size() - k));
    }
    b.seq_len = S;
    auto ids  = at::full({B, S}, pad_id, at::kLong);
    auto posi = at::zeros({B, S}, at::kLong);
    auto mask = at::zeros({B, 1, S, S}, at::kBool);
    auto lens = at::zeros({2 * B}, at::kFloat);
    auto* idp = ids.data_ptr<int64_t>();
    auto* pp  = posi.data_ptr<int64_t>();
    auto* mp  = mask.data_ptr<bool>();
    for (int64_t i = 0; i < B; ++i) {
        const auto& c   = pairs[static_cast<size_t>(i)]->chosen.ids;
        const auto& r   = pairs[static_cast<size_t>(i)]->rejected.ids;
        const int64_t C = static_cast<int64_t>(c.size()), k = shared[static_cast<size_t>(i)];
        const int64_t L = C + static_cast<int64_t>(r.size()) - k;
        bool* m         = mp + i * S * S;
        for (int64_t q = 0; q < S; ++q) {
            bool* row = m + q * S;
            if (q < C) {
                idp[i * S + q] = c[static_cast<size_t>(q)];
                pp[i * S + q]  = q;
                std::fill(row, row + q + 1, true);
            } else if (q < L) {
                idp[i * S + q] = r[static_cast<size_t>(k + q - C)];
                pp[i * S + q]  = k + q - C;
                std::fill(row, row + k, true);
                std::fill(row + C, row + q + 1, true);
            } else {
                std::fill(row, row + q + 1, true);  // padding: plain causal, never attended to, never read
            }
        }
    }
    // Chosen sequences first, then rejected, each in token order: the layout of collate_pairs' separate rows.
    std::vector<int64_t> pos, tgt, row;
    for (int64_t s = 0; s < 2 * B; ++s) {
        const int64_t i = s % B;
        const PrefSequence& sq =
            s < B ? pairs[static_cast<size_t>(i)]->chosen : pairs[static_cast<size_t>(i)]->rejected;
        const int64_t n = static_cast<int64_t>(sq.ids.size()), k = shared[static_cast<size_t>(i)];
        const int64_t C = static_cast<int64_t>(pairs[static_cast<size_t>(i)]->chosen.ids.size());
        int64_t count   = 0;
        for (int64_t t = std::max<int64_t>(1, sq.prompt_len); t < n; ++t) {
            const int64_t from = t - 1;  // the position whose logits predict token t
            pos.push_back(i * S + (s < B || from < k ? from : C + from - k));
            tgt.push_back(sq.ids[static_cast<size_t>(t)]);
            row.push_back(s);
            ++count;
        }
        lens[s] = static_cast<float>(count);
        (s < B ? b.chosen_tokens : b.rejected_tokens) += count;
        b.real_tokens += n;
    }
    for (const auto* p : pairs) b.pair_types.push_back(p->pair_type);
    const auto opts     = at::TensorOptions().dtype(at::kLong);
    const int64_t M     = static_cast<int64_t>(pos.size());
    b.input_ids         = ids.to(device);
    b.position_ids      = posi.to(device);
    b.attention_mask_4d = mask.to(device);
    b.predict_position  = at::from_blob(pos.data(), {M}, opts).clone().to(device);
    b.targets           = at::from_blob(tgt.data(), {M}, opts).clone().to(device);
    b.row_of            = at::from_blob(row.data(), {M}, opts).clone().to(device);
    b.completion_len    = lens.to(device);
    return b;
}

}  // namespace

PrefBatch collate_pairs(const std::vector<const PrefExample*>& pairs, int32_t pad_id, at::Device device,
                        bool share_prompt) {
    if (share_prompt) return collate_shared_prompt(pairs, pad_id, device);
    PrefBatch b;
    b.pairs         = static_cast<int64_t>(pairs.size());
    const int64_t R = 2 * b.pairs;
    int64_t S       = 1;
    for (const auto* p : pairs)
        S = std::max<int64_t>(
            {S, static_cast<int64_t>(p->chosen.ids.size()), static_cast<int64_t>(p->rejected.ids.size())});
    b.seq_len = S;
    auto ids  = at::full({R, S}, pad_id, at::kLong);
    auto lens = at::zeros({R}, at::kFloat);
    std::vector<int64_t> pos, tgt, row;
    auto* idp = ids.data_ptr<int64_t>();
    for (int64_t r = 0; r < R; ++r) {
        const PrefExample* p   = pairs[static_cast<size_t>(r % b.pairs)];
        const PrefSequence& sq = r < b.pairs ? p->chosen : p->rejected;
        const int64_t n        = static_cast<int64_t>(sq.ids.size());
        for (int64_t t = 0; t < n; ++t) idp[r * S + t] = sq.ids[static_cast<size_t>(t)];
        // A completion token at position 0 (its prompt cut away by keep_end) has no logits predicting it.
        int64_t count = 0;
        for (int64_t t = std::max<int64_t>(1, sq.prompt_len); t < n; ++t) {
            pos.push_back(r * S + t - 1);
            tgt.push_back(sq.ids[static_cast<size_t>(t)]);
            row.push_back(r);
            ++count;
        }
        lens[r] = static_cast<float>(count);
        (r < b.pairs ? b.chosen_tokens : b.rejected_tokens) += count;
        b.real_tokens += n;
    }
    for (const auto* p : pairs) b.pair_types.push_back(p->pair_type);
    const auto opts    = at::TensorOptions().dtype(at::kLong);
    const int64_t M    = static_cast<int64_t>(pos.size());
    b.input_ids        = ids.to(device);
    b.predict_position = at::from_blob(pos.data(), {M}, opts).clone().to(device);
    b.targets          = at::from_blob(tgt.data(), {M}, opts).clone().to(device);
    b.row_of           = at::from_blob(row.data(), {M}, opts).clone().to(device);
    b.completion_len   = lens.to(device);
    return b;
}

}  // namespace medllm::train
