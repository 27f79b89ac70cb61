// `medllm rpo`: the losses against the worked vectors of docs/reference/preference-losses.md §9 and TRL's own
// dpo_loss; the data path (TRL v0.28 tokenization/truncation, collation, bad rows); one full DPO and one full RPO
// step on the tiny fixture model against TRL 0.28 (rpo_alpha) and TRL 1.16 (loss_type [sigmoid, sft]) — loss,
// every metric, the gradients and the adapter after the step (fixtures: scripts/make_rpo_fixtures.py); a toy run
// whose margins rise; exact resume with and without the precomputed reference; bad inputs.
#include <cmath>
#include <fstream>
#include <map>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/io/safetensors.h"
#include "medllm/peft/adapter.h"
#include "medllm/peft/lora.h"
#include "medllm/text/tokenizer.h"
#include "medllm/train/checkpoint.h"
#include "medllm/train/optimizer.h"
#include "medllm/train/pair_data.h"
#include "medllm/train/preference_loss.h"
#include "medllm/train/rpo.h"
#include "support/shared_data.h"
#include "train_test_util.h"

using namespace medllm;
using namespace medllm::train;
namespace fs = std::filesystem;

namespace {

at::Tensor vec(std::vector<double> v) {
    return at::tensor(v, at::kDouble);
}

PreferenceLossSpec spec_of(nlohmann::json type = nullptr, nlohmann::json weights = nullptr, double alpha = 0,
                           double eps = 0, std::string norm = "pooled", bool ignore0 = false) {
    return parse_loss_spec(type, weights, 0.1, eps, alpha, norm, ignore0);
}

fs::path rpo_fixtures() {
    return test::fixtures() / "train" / "rpo";
}

// The fixture's 6 pairs, tokenized as TRL does with the byte tokenizer (EOS 256).
PrefDataset fixture_pairs() {
    auto tok = text::Tokenizer::from_dir(test::fixtures() / "train" / "byte-tokenizer");
    PrefDataOptions po;
    po.eos_id = 256;
    return load_pref_dataset(rpo_fixtures() / "pairs.jsonl", *tok, po);
}

// Vector B of the reference: hidden rows = the logits, lm_head = identity (V = H = 4).
struct VectorB {
    at::Tensor policy_rows, ref_rows, targets, row_of;
    VectorB() {
        // chosen row 0: pos 1 -> token 3, pos 2 -> token 0 (a real token with id 0); rejected row 1: pos 1 -> 2
        policy_rows =
            at::tensor({0.2, -0.3, 0.1, 0.9, 1.5, 0.0, -1.0, 0.3, 0.2, -0.3, 0.1, 0.9}, at::kDouble).reshape({3, 4});
        ref_rows =
            at::tensor({0.0, 0.0, 0.0, 0.5, 1.0, 0.2, -0.2, 0.0, 0.0, 0.0, 0.0, 0.5}, at::kDouble).reshape({3, 4});
        targets = at::tensor({3, 0, 2}, at::kLong);
        row_of  = at::tensor({0, 0, 1}, at::kLong);
    }
};

}  // namespace

// ---------------------------------------------------------------- worked vectors (fp64: ~1e-15 relative)

TEST(PreferenceLoss, VectorASigmoidHingeCdpo) {
    const auto pc = vec({410.0, 0.1}), pr = vec({810.5, 0.2}), rc = vec({-610.0, -0.1}), rr = vec({110.6, 0.5});
    auto out = preference_loss(spec_of(), pc, pr, rc, rr, {});
    EXPECT_NEAR(out.losses[0].item<double>(), 1.2538154996452487e-14, 1e-20);
    EXPECT_NEAR(out.losses[1].item<double>(), 0.6684596480132863, 1e-14);
    EXPECT_NEAR(out.loss.item<double>(), 0.3342298240066494, 1e-14);
    EXPECT_NEAR(out.chosen_rewards[0].item<double>(), 102.0, 1e-12);
    EXPECT_NEAR(out.rejected_rewards[0].item<double>(), 69.99, 1e-12);
    EXPECT_NEAR(out.chosen_rewards[1].item<double>(), 0.02, 1e-15);
    EXPECT_NEAR(out.rejected_rewards[1].item<double>(), -0.03, 1e-15);
    out = preference_loss(spec_of(nullptr, nullptr, 0, 0.1), pc, pr, rc, rr, {});
    EXPECT_NEAR(out.losses[0].item<double>(), 3.2010000000000134, 1e-12);
    EXPECT_NEAR(out.loss.item<double>(), 1.93722982400665, 1e-12);
    out = preference_loss(spec_of("hinge"), pc, pr, rc, rr, {});
    EXPECT_EQ(out.losses[0].item<double>(), 0.0);
    EXPECT_NEAR(out.loss.item<double>(), 0.475, 1e-14);
}

TEST(PreferenceLoss, VectorBEndToEndToy) {
    const VectorB v;
    const auto eye = at::eye(4, at::kDouble);
    const auto pol = selected_token_logps(v.policy_rows, eye, v.targets);
    const auto ref = selected_token_logps(v.ref_rows, eye, v.targets);
    EXPECT_NEAR(pol.logps[0].item<double>(), -0.809644269661734, 1e-15);
    EXPECT_NEAR(pol.logps[1].item<double>(), -0.4740014838427131, 1e-15);
    const auto ps = sequence_logps(pol.logps, v.row_of, 2), rs = sequence_logps(ref.logps, v.row_of, 2);
    EXPECT_NEAR(ps[0].item<double>(), -1.2836457535044472, 1e-15);
    EXPECT_NEAR(ps[1].item<double>(), -1.609644269661734, 1e-15);
    EXPECT_NEAR(rs[0].item<double>(), -1.787254508453619, 1e-15);
    EXPECT_NEAR(rs[1].item<double>(), -1.5365921862326963, 1e-15);
    const auto c = ps.narrow(0, 0, 1), r = ps.narrow(0, 1, 1), c0 = rs.narrow(0, 0, 1), r0 = rs.narrow(0, 1, 1);

    auto out = preference_loss(spec_of(), c, r, c0, r0, {});
    EXPECT_NEAR(out.loss.item<double>(), 0.6647297532125024, 1e-15);
    // RPO, alpha 1: mask-based NLL (TRL >= 0.29 and medllm's default) and the v0.12-v0.28 id-0 quirk.
    auto s   = spec_of(nullptr, nullptr, 1.0);
    auto nll = chosen_nll(s, pol.logps, v.row_of, v.targets, 1);
    EXPECT_NEAR(nll.item<double>(), 0.6418228767522236, 1e-15);
    EXPECT_NEAR(preference_loss(s, c, r, c0, r0, nll).loss.item<double>(), 1.306552629964726, 1e-14);
    s   = spec_of(nullptr, nullptr, 1.0, 0, "pooled", true);
    nll = chosen_nll(s, pol.logps, v.row_of, v.targets, 1);
    EXPECT_NEAR(nll.item<double>(), 0.809644269661734, 1e-15);
    EXPECT_NEAR(preference_loss(s, c, r, c0, r0, nll).loss.item<double>(), 1.4743740228742364, 1e-14);
    // The same RPO in TRL >= 1.0's spelling.
    s   = spec_of(nlohmann::json::array({"sigmoid", "sft"}), nlohmann::json::array({1, 1}));
    nll = chosen_nll(s, pol.logps, v.row_of, v.targets, 1);
    EXPECT_NEAR(preference_loss(s, c, r, c0, r0, nll).loss.item<double>(), 1.306552629964726, 1e-14);

    const auto m = make_micro_metrics(out, c, r, {}, 0, 0);
    EXPECT_NEAR(m.rewards_chosen, 0.05036087549491719, 1e-15);
    EXPECT_NEAR(m.rewards_rejected, -0.007305208342903758, 1e-15);
    EXPECT_NEAR(m.rewards_margins, 0.057666083837820944, 1e-15);
    EXPECT_EQ(m.rewards_accuracies, 1.0);

    // IPO: log-probs divided by the completion lengths (2 and 1 tokens) first, as TRL v0.28 does.
    out = preference_loss(spec_of("ipo"), c / 2, r, c0 / 2, r0, {});
    EXPECT_NEAR(out.loss.item<double>(), 21.856967111154596, 1e-12);
    out = preference_loss(spec_of("hinge"), c, r, c0, r0, {});
    EXPECT_NEAR(out.loss.item<double>(), 0.9423339161621791, 1e-15);
}

TEST(PreferenceLoss, VectorCPooledVersusPerSequence) {
    // Chosen token NLLs (1, 2, 3) and (4): TRL pools (2.5), the Iterative RPO paper averages per sequence (3.0).
    const auto lp = vec({-1, -2, -3, -4}), rows = at::tensor({0, 0, 0, 1}, at::kLong), t = at::ones({4}, at::kLong);
    EXPECT_DOUBLE_EQ(chosen_nll(spec_of(nullptr, nullptr, 1), lp, rows, t, 2).item<double>(), 2.5);
    EXPECT_DOUBLE_EQ(chosen_nll(spec_of(nullptr, nullptr, 1, 0, "per_sequence"), lp, rows, t, 2).item<double>(), 3.0);
    // Rejected rows (>= num_pairs) never enter the NLL; an empty pooled set is NaN as in TRL.
    EXPECT_TRUE(std::isnan(chosen_nll(spec_of(nullptr, nullptr, 1), lp, rows + 2, t, 2).item<double>()));
}

TEST(PreferenceLoss, GradientOfSelectedLogpsMatchesAutogradOfLogSoftmax) {
    // The chunked function's hand-written backward against autograd through at::log_softmax (fp64).
    auto h  = at::randn({7, 5}, at::kDouble).requires_grad_(true);
    auto w  = at::randn({11, 5}, at::kDouble).requires_grad_(true);
    auto t  = at::randint(0, 11, {7}, at::kLong);
    auto g  = at::randn({7}, at::kDouble);
    auto tl = selected_token_logps(h, w, t, /*chunk=*/3);
    (tl.logps * g).sum().backward();
    auto h2 = h.detach().clone().requires_grad_(true), w2 = w.detach().clone().requires_grad_(true);
    auto lp = at::log_softmax(at::linear(h2, w2), -1).gather(1, t.unsqueeze(1)).squeeze(1);
    (lp * g).sum().backward();
    EXPECT_TRUE(at::allclose(tl.logps, lp, 1e-12, 1e-12));
    EXPECT_TRUE(at::allclose(h.grad(), h2.grad(), 1e-12, 1e-12));
    EXPECT_TRUE(at::allclose(w.grad(), w2.grad(), 1e-12, 1e-12));
    EXPECT_TRUE(at::allclose(tl.logit_sums, at::linear(h2, w2).sum(-1), 1e-12, 1e-12));
}

TEST(PreferenceLoss, MatchesTrlDpoLossOnFixedLogps) {
    // scripts/make_rpo_fixtures.py: TRL 0.28's DPOTrainer.dpo_loss in fp32; here fp64 on the fp32-rounded inputs,
    // so the tolerance is fp32's (1e-5 relative).
    const auto ref = read_json_file(rpo_fixtures() / "loss_vectors.json");
    for (const auto& c : ref["cases"]) {
        auto f32 = [&](const char* k) {
            return at::tensor(c[k].get<std::vector<double>>(), at::kFloat).to(at::kDouble);
        };
        const auto pc = f32("policy_chosen"), pr = f32("policy_rejected"), rc = f32("ref_chosen"),
                   rr = f32("ref_rejected");
        for (const char* name : {"sigmoid", "cdpo", "hinge", "ipo"}) {
            const auto& e   = c[name];
            const char* t   = std::string(name) == "cdpo" ? "sigmoid" : name;
            const auto spec = spec_of(t, nullptr, 0, e["label_smoothing"].get<double>());
            const auto out  = preference_loss(spec, pc, pr, rc, rr, {});
            for (size_t i = 0; i < e["losses"].size(); ++i) {
                const double want = e["losses"][i].get<double>();
                EXPECT_NEAR(out.losses[static_cast<int64_t>(i)].item<double>(), want, 1e-5 * std::fabs(want) + 1e-6)
                    << c["name"] << " " << name << " pair " << i;
                EXPECT_NEAR(out.chosen_rewards[static_cast<int64_t>(i)].item<double>(),
                            e["chosen_rewards"][i].get<double>(), 1e-4)
                    << c["name"] << " " << name;
            }
        }
    }
}

TEST(PreferenceLoss, SpecFromConfigKeys) {
    EXPECT_EQ(spec_of().describe(), "sigmoid, beta 0.1");
    EXPECT_EQ(spec_of(nullptr, nullptr, 10).nll_weight(), 10.0);
    const auto trl1 = spec_of(nlohmann::json::array({"sigmoid", "sft"}), nlohmann::json::array({1, 10}));
    EXPECT_EQ(trl1.nll_weight(), 10.0);
    EXPECT_TRUE(spec_of("ipo").length_normalized());
    auto msg = [](auto f) {
        try {
            f();
        } catch (const UsageError& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_NE(msg([] { spec_of("kto"); }).find("loss.loss_type: unknown loss 'kto'"), std::string::npos);
    EXPECT_NE(msg([] {
                  spec_of(nlohmann::json::array({"sigmoid", "sft"}), nlohmann::json::array({1}));
              }).find("loss.loss_weights"),
              std::string::npos);
    EXPECT_NE(msg([] { spec_of("sft"); }).find("sft' alone"), std::string::npos);
    EXPECT_NE(msg([] { spec_of("hinge", nullptr, 0, 0.1); }).find("loss.label_smoothing"), std::string::npos);
    EXPECT_NE(msg([] { spec_of(nullptr, nullptr, 0, 0, "mean"); }).find("loss.nll_normalization"), std::string::npos);
}

// ---------------------------------------------------------------- data (TRL v0.12-v0.28 §5)

TEST(PrefData, CollatorVector) {
    PrefDataOptions o;
    o.max_length = o.max_prompt_length = 0;
    const auto a                       = truncate_pair({1, 2, 3}, {4, 5}, {6}, /*is_chat=*/true, 99, o);
    const auto b                       = truncate_pair({7, 8}, {9, 10}, {11, 12, 13}, true, 99, o);
    const auto batch                   = collate_pairs({&a, &b}, 0, at::kCPU);
    const auto want =
        at::tensor({1, 2, 3, 4, 5, 7, 8, 9, 10, 0, 1, 2, 3, 6, 0, 7, 8, 11, 12, 13}, at::kLong).reshape({4, 5});
    EXPECT_TRUE(at::equal(batch.input_ids, want)) << batch.input_ids;
    // Completion tokens and the positions whose logits predict them (row * S + t - 1).
    EXPECT_TRUE(at::equal(batch.targets, at::tensor({4, 5, 9, 10, 6, 11, 12, 13}, at::kLong)));
    EXPECT_TRUE(at::equal(batch.predict_position, at::tensor({2, 3, 6, 7, 12, 16, 17, 18}, at::kLong)));
    EXPECT_TRUE(at::equal(batch.row_of, at::tensor({0, 0, 1, 1, 2, 3, 3, 3}, at::kLong)));
    EXPECT_EQ(batch.chosen_tokens, 4);
    EXPECT_EQ(batch.rejected_tokens, 4);
}

TEST(PrefData, SharedPromptCollatorVector) {
    // One row per pair: chosen, then rejected after the prefix both share; rejected keeps its own positions.
    PrefDataOptions o;
    o.max_length = o.max_prompt_length = 0;
    const auto a                       = truncate_pair({1, 2, 3}, {4, 5}, {6}, /*is_chat=*/true, 99, o);
    const auto b                       = truncate_pair({7, 8}, {9, 10}, {11, 12, 13}, true, 99, o);
    const auto batch                   = collate_pairs({&a, &b}, 0, at::kCPU, /*share_prompt=*/true);
    EXPECT_TRUE(at::equal(batch.input_ids,
                          at::tensor({1, 2, 3, 4, 5, 6, 0, 7, 8, 9, 10, 11, 12, 13}, at::kLong).reshape({2, 7})))
        << batch.input_ids;
    EXPECT_TRUE(at::equal(batch.position_ids,
                          at::tensor({0, 1, 2, 3, 4, 3, 0, 0, 1, 2, 3, 2, 3, 4}, at::kLong).reshape({2, 7})))
        << batch.position_ids;
    EXPECT_TRUE(at::equal(batch.targets, at::tensor({4, 5, 9, 10, 6, 11, 12, 13}, at::kLong)));
    // Rejected's first token is predicted by the shared prompt's last position (2 and 7 + 1).
    EXPECT_TRUE(at::equal(batch.predict_position, at::tensor({2, 3, 8, 9, 2, 8, 11, 12}, at::kLong)))
        << batch.predict_position;
    EXPECT_TRUE(at::equal(batch.row_of, at::tensor({0, 0, 1, 1, 2, 3, 3, 3}, at::kLong)));
    // Pair b's rejected token 12 (position 11 of the row) sees the prompt 7 8 and 11, not chosen's 9 10.
    const auto m = batch.attention_mask_4d[1][0][5].to(at::kLong);
    EXPECT_TRUE(at::equal(m, at::tensor({1, 1, 0, 0, 1, 1, 0}, at::kLong))) << m;
    EXPECT_EQ(batch.chosen_tokens, 4);
    EXPECT_EQ(batch.rejected_tokens, 4);
    EXPECT_EQ(batch.real_tokens, 5 + 4 + 4 + 5);
}

TEST(PrefData, TruncationAsTrl028) {
    PrefDataOptions o;
    o.max_prompt_length = 3;
    o.max_length        = 6;
    // Strings get EOS (9) on both completions; the prompt keeps its last 3 tokens.
    auto ex = truncate_pair({1, 2, 3, 4, 5}, {6, 7}, {8}, false, 9, o);
    EXPECT_EQ(ex.chosen.ids, (std::vector<int32_t>{3, 4, 5, 6, 7, 9}));
    EXPECT_EQ(ex.chosen.prompt_len, 3);
    EXPECT_EQ(ex.rejected.ids, (std::vector<int32_t>{3, 4, 5, 8, 9}));
    EXPECT_TRUE(ex.truncated);
    // keep_end: a row over max_length loses its first tokens (the prompt's), per row.
    o.max_prompt_length = 0;
    o.max_length        = 4;
    ex                  = truncate_pair({1, 2, 3}, {4, 5}, {6}, true, 9, o);
    EXPECT_EQ(ex.chosen.ids, (std::vector<int32_t>{2, 3, 4, 5}));
    EXPECT_EQ(ex.chosen.prompt_len, 2);
    EXPECT_EQ(ex.rejected.ids, (std::vector<int32_t>{1, 2, 3, 6}));
    // keep_start: the row keeps its first tokens; a prompt that fills max_length leaves no completion.
    o.truncation_mode = "keep_start";
    ex                = truncate_pair({1, 2, 3}, {4, 5}, {6}, true, 9, o);
    EXPECT_EQ(ex.chosen.ids, (std::vector<int32_t>{1, 2, 3, 4}));
    EXPECT_EQ(ex.chosen.completion_len(), 1);
    o.max_length = 3;
    EXPECT_EQ(truncate_pair({1, 2, 3}, {4}, {5}, true, 9, o).chosen.completion_len(), 0);
    // max_completion_length keeps the first tokens of each completion (after the EOS is appended).
    o                       = PrefDataOptions{};
    o.max_completion_length = 2;
    ex                      = truncate_pair({1}, {4, 5, 6}, {7}, false, 9, o);
    EXPECT_EQ(ex.chosen.ids, (std::vector<int32_t>{1, 4, 5}));
    EXPECT_EQ(ex.rejected.ids, (std::vector<int32_t>{1, 7, 9}));
}

class PrefDataFile : public test::TrainTempDir {
protected:
    std::unique_ptr<text::Tokenizer> tok = text::Tokenizer::from_dir(test::fixtures() / "train" / "byte-tokenizer");
    PrefDataOptions opts() {
        PrefDataOptions o;
        o.eos_id = *tok->token_to_id("<|endoftext|>");
        return o;
    }
    fs::path write(const std::string& name, const std::vector<std::string>& lines) {
        const auto p = dir / name;
        std::ofstream out(p);
        for (const auto& l : lines) out << l << "\n";
        return p;
    }
    std::string error_of(const fs::path& p, PrefDataOptions o) {
        try {
            load_pref_dataset(p, *tok, o);
        } catch (const UsageError& e) {
            return e.what();
        }
        return "no error";
    }
};

TEST_F(PrefDataFile, StringsAndChatRows) {
    const auto p = write(
        "pairs.jsonl", {R"({"prompt": "Q:", "chosen": " a", "rejected": " bb", "pair_type": "gt_chosen", "x": 1})", "",
                        R"({"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", )"
                        R"("content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}]})"});
    const auto ds = load_pref_dataset(p, *tok, opts());
    ASSERT_EQ(ds.examples.size(), 2u);
    const auto& s = ds.examples[0];
    EXPECT_EQ(s.line, 1);
    EXPECT_EQ(s.pair_type, "gt_chosen");
    EXPECT_EQ(s.chosen.ids, (std::vector<int32_t>{*tok->token_to_id("Q"), *tok->token_to_id(":"),
                                                  *tok->token_to_id("Ġ"), *tok->token_to_id("a"), 256}));
    EXPECT_EQ(s.chosen.prompt_len, 2);
    // Chat: the prompt rendered with the generation prompt, the completion = the assistant turn's rest.
    const auto& c             = ds.examples[1];
    const std::string prompt  = text::render_chatml({{"user", "Q?"}}, true, tok->default_system_prompt());
    const auto prompt_ids     = tok->encode(prompt);
    const auto completion_ids = tok->encode("yes<|im_end|>\n");
    EXPECT_EQ(c.chosen.prompt_len, static_cast<int64_t>(prompt_ids.size()));
    EXPECT_EQ(std::vector<int32_t>(c.chosen.ids.begin() + c.chosen.prompt_len, c.chosen.ids.end()),
              std::vector<int32_t>(completion_ids.begin(), completion_ids.end()));
    EXPECT_EQ(ds.stats.chat_rows, 1);
    EXPECT_EQ(ds.stats.pair_types.at("gt_chosen"), 1);
}

TEST_F(PrefDataFile, MalformedRowsNameFileAndLine) {
    const std::string good = R"({"prompt": "Q:", "chosen": " a", "rejected": " b"})";
    auto check             = [&](const std::string& bad, const std::string& what) {
        const auto p        = write("bad.jsonl", {good, good, bad});
        const std::string m = error_of(p, opts());
        EXPECT_NE(m.find("bad.jsonl:3: "), std::string::npos) << m;
        EXPECT_NE(m.find(what), std::string::npos) << m;
    };
    check("{\"prompt\": \"Q\", ", "not valid JSON");
    check(R"({"prompt": "Q", "chosen": "a"})", "missing field 'rejected'");
    check(R"({"prompt": "Q", "chosen": 3, "rejected": "b"})", "field 'chosen' must be a string");
    check(R"({"prompt": [{"role": "user", "content": "Q"}], "chosen": "a", "rejected": "b"})", "all be strings");
    check(R"({"prompt": [{"role": "robot", "content": "Q"}], "chosen": [], "rejected": []})", "role 'robot'");
    check(R"({"prompt": "Q", "chosen": "", "rejected": "b"})", "empty chosen");
    check(R"({"prompt": "Q", "chosen": " \n\t ", "rejected": "b"})", "empty chosen");              // whitespace only
    check("{\"prompt\": \"Q\", \"chosen\": \"a\", \"rejected\": \"\u3000 \"}", "empty rejected");  // U+3000
    check(R"({"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "  "}], )"
          R"("rejected": [{"role": "assistant", "content": "b"}]})",
          "empty chosen");
    check(R"([1, 2])", "expected a JSON object");
    // on_invalid: skip counts them instead.
    auto o       = opts();
    o.on_invalid = "skip";
    const auto p = write("skip.jsonl", {good, "nonsense", good});
    EXPECT_EQ(load_pref_dataset(p, *tok, o).stats.invalid_skipped, 1);
    EXPECT_NE(error_of(dir / "missing.jsonl", opts()).find("cannot open"), std::string::npos);
    EXPECT_NE(error_of(write("empty.jsonl", {""}), opts()).find("no usable preference pair"), std::string::npos);
}

TEST_F(PrefDataFile, GuardRefusesPromptsHoldingAnExamQuestion) {
    data::GuardQuestion q{"118A1", "次のうち鉄欠乏性貧血の治療で最初に増加する検査値はどれか。網赤血球数を選べ。", {}};
    const data::ContaminationGuard guard({q}, {});
    const std::string leak = R"({"prompt": "問題: 次のうち鉄欠乏性貧血の治療で最初に増加する検査値はどれか。)"
                             R"(網赤血球数を選べ。", "chosen": " a", "rejected": " b"})";
    const std::string good = R"({"prompt": "Q:", "chosen": " a", "rejected": " b"})";
    const auto p           = write("leak.jsonl", {good, leak});
    auto o                 = opts();
    o.guard                = &guard;
    const std::string m    = error_of(p, o);
    EXPECT_NE(m.find("leak.jsonl:2: the prompt contains evaluation question 118A1"), std::string::npos) << m;
    o.guard_action = "drop";
    const auto ds  = load_pref_dataset(p, *tok, o);
    EXPECT_EQ(ds.examples.size(), 1u);
    EXPECT_EQ(ds.stats.guard_dropped, 1);
}

TEST(PrefDataTrl, BuildPrefsFilesTokenizeAsTrl028) {
    // scripts/make_rpo_fixtures.py: TRL 0.28's maybe_apply_chat_template + tokenize_row on build-prefs' pairs files
    // (strings and message lists) with the Qwen2.5 tokenizer and instruct template, max_prompt_length 16.
    const auto ref = read_json_file(rpo_fixtures() / "trl028_tokenized.json");
    const auto tok = text::Tokenizer::from_dir(shared_path("qwen_tokenizer"));
    PrefDataOptions o;
    o.max_prompt_length = 16;
    o.max_length        = 0;
    o.eos_id            = *tok->token_to_id("<|endoftext|>");
    for (const auto& [name, rows] : ref["files"].items()) {
        const auto ds = load_pref_dataset(test::fixtures() / "train" / name, *tok, o);
        ASSERT_GE(ds.examples.size(), rows.size()) << name;
        for (size_t i = 0; i < rows.size(); ++i) {
            auto prompt = rows[i]["prompt_input_ids"].get<std::vector<int32_t>>();
            for (const char* side : {"chosen", "rejected"}) {
                auto want = prompt;
                for (int32_t id : rows[i][std::string(side) + "_input_ids"].get<std::vector<int32_t>>())
                    want.push_back(id);
                const auto& got = std::string(side) == "chosen" ? ds.examples[i].chosen : ds.examples[i].rejected;
                EXPECT_EQ(got.ids, want) << name << " row " << i << " " << side;
                EXPECT_EQ(got.prompt_len, static_cast<int64_t>(prompt.size())) << name << " row " << i;
            }
        }
    }
}

TEST(PrefDataTrl, TokenizationMatchesEachTrlEra) {
    // scripts/make_pair_tokenization_fixtures.py: TRL 0.28's tokenize_row (data.tokenization: separate) and TRL
    // 1.16's whole-sequence tokenization split where the tokens diverge (joint), with the Qwen2.5 tokenizer and
    // instruct template, no truncation, on pairs whose prompt ends where tokens merge ("答え:" + "e", "\n Answer:" +
    // "c", a trailing space) or do not, message lists, and build-prefs' own pairs files. Exact ids.
    const auto tok = text::Tokenizer::from_dir(shared_path("qwen_tokenizer"));
    std::map<std::string, nlohmann::json> by_mode;
    for (const char* era : {"028", "1x"}) {
        const auto ref = read_json_file(rpo_fixtures() / (std::string("tokenization_trl") + era + ".json"));
        PrefDataOptions o;
        o.max_prompt_length     = 0;
        o.max_length            = 0;
        o.tokenization          = ref["tokenization"];
        o.eos_id                = *tok->token_to_id("<|endoftext|>");
        by_mode[o.tokenization] = ref;
        for (const auto& [name, rows] : ref["files"].items()) {
            const auto ds = load_pref_dataset(test::fixtures() / "train" / name, *tok, o);
            ASSERT_GE(ds.examples.size(), rows.size()) << name;
            for (size_t i = 0; i < rows.size(); ++i) {
                const auto prompt = rows[i]["prompt_ids"].get<std::vector<int32_t>>();
                for (const char* side : {"chosen", "rejected"}) {
                    auto want = prompt;
                    for (int32_t id : rows[i][std::string(side) + "_ids"].get<std::vector<int32_t>>())
                        want.push_back(id);
                    const auto& got = std::string(side) == "chosen" ? ds.examples[i].chosen : ds.examples[i].rejected;
                    EXPECT_EQ(got.ids, want) << era << " " << name << " row " << i << " " << side;
                    EXPECT_EQ(got.prompt_len, static_cast<int64_t>(prompt.size())) << era << " " << name << " " << i;
                }
            }
            if (name == "rpo/tokenization_pairs_base.jsonl") {  // rows 0, 1, 2 and 4 merge across the boundary
                EXPECT_EQ(ds.stats.boundary_merged, o.tokenization == "joint" ? 4 : 0) << era;
            }
        }
    }
    // The eras really differ where tokens merge: "答え:" + "e" is [..., 答え, :] + [e] apart, [..., 答え] + [:e] whole.
    const auto& sep   = by_mode.at("separate")["files"]["rpo/tokenization_pairs_base.jsonl"][0];
    const auto& joint = by_mode.at("joint")["files"]["rpo/tokenization_pairs_base.jsonl"][0];
    EXPECT_EQ(sep["prompt_ids"].size(), joint["prompt_ids"].size() + 1);
    EXPECT_NE(sep["chosen_ids"], joint["chosen_ids"]);
    EXPECT_EQ(tok->decode({joint["chosen_ids"][0].get<int32_t>()}), ":e");
    // An unknown mode is refused naming the key.
    PrefDataOptions bad;
    bad.tokenization = "together";
    EXPECT_THROW(load_pref_dataset(rpo_fixtures() / "tokenization_pairs_base.jsonl", *tok, bad), UsageError);
}

// ---------------------------------------------------------------- full steps against TRL

class RpoRun : public test::TrainTempDir {
protected:
    std::vector<std::string> base_overrides(const fs::path& out) {
        return {"model.path=" + (test::fixtures() / "model" / "qwen2-tiny-tied").string(),
                "model.tokenizer=" + (test::fixtures() / "train" / "byte-tokenizer").string(),
                "output=" + out.string(),
                "data.path=" + (rpo_fixtures() / "pairs.jsonl").string(),
                "data.eos_token=<|endoftext|>",
                "data.shuffle=false",
                "eval_guard.enabled=false",
                "lora.quantize_base=false",
                "training.device=cpu",
                "training.activation_checkpointing=false",
                "training.logging_steps=1"};
    }
    // TRL's step: all 6 pairs in one micro-batch, lr 1e-3 constant, max_grad_norm 1, the fixed initial adapter.
    std::vector<std::string> trl_step(const fs::path& out) {
        auto o = base_overrides(out);
        for (const char* s : {"training.batch_size=6", "training.max_steps=1", "optim.lr=0.001",
                              "schedule.name=constant", "optim.max_grad_norm=1.0"})
            o.push_back(s);
        o.push_back("lora.resume_adapter=" + (rpo_fixtures() / "init_adapter").string());
        return o;
    }
    static RpoConfig load(const std::vector<std::string>& overrides, std::vector<ResolvedEntry>* resolved) {
        ConfigSchema<RpoConfig> s;
        add_rpo_fields(s);
        return s.load(ConfigSource{"", overrides}, resolved);
    }
    TrainResult run(const std::vector<std::string>& overrides, std::vector<nlohmann::json>* records = nullptr,
                    std::function<void(int64_t)> after_step = {}, const std::string& resume = "auto") {
        TrainOptions o;
        const auto cfg = load(overrides, &o.resolved);
        o.resume       = resume;
        o.overwrite    = resume == "never";  // a fresh run in a used folder replaces the earlier run
        o.on_step      = [&](int64_t step, const nlohmann::json& rec) {
            if (records) records->push_back(rec);
            if (after_step) after_step(step);
        };
        return run_rpo(cfg, o);
    }
    static std::map<std::string, at::Tensor> adapter(const fs::path& d) {
        io::SafetensorsFile f(d / "adapter_model.safetensors");
        std::map<std::string, at::Tensor> out;
        for (const auto& n : f.names()) out[n] = f.tensor(n).clone();
        return out;
    }

    // One TRL step (fixture folder `name`) reproduced with extra config keys: loss, every metric, the adapter.
    void expect_trl_step(const std::string& name, const std::vector<std::string>& loss_keys) {
        const auto fx  = rpo_fixtures() / name;
        const auto ref = read_json_file(fx / "reference.json");
        const auto& lg = ref["log"];
        auto o         = trl_step(dir / name);
        o.insert(o.end(), loss_keys.begin(), loss_keys.end());
        std::vector<nlohmann::json> recs;
        const auto res = run(o, &recs);
        ASSERT_EQ(recs.size(), 1u);
        const auto& got = recs[0];
        // fp32 both sides; GEMM shapes differ (TRL's lm_head runs over every position, medllm's over completion
        // positions only), so values agree to fp32 rounding of sums of ~100 terms: 2e-5 relative.
        for (const char* k :
             {"loss", "grad_norm", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
              "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "nll_loss"}) {
            if (!lg.contains(k)) continue;
            ASSERT_TRUE(got.contains(k)) << name << " " << k;
            const double want = lg[k].get<double>();
            EXPECT_NEAR(got[k].get<double>(), want, 2e-5 * std::fabs(want) + 1e-6) << name << " " << k;
        }
        EXPECT_EQ(got["lr"].get<double>(), 1e-3);
        // The adapter after AdamW's first step moves each element by lr * g / (|g| + eps): a sign test for large |g|,
        // while elements with |g| near eps (1e-8) amplify fp32 noise in g. So: every element within 1 % of the step
        // (1e-5), and on average within 1e-4 of it (1e-7).
        const auto want = adapter(fx / "final_adapter"), have = adapter(res.adapter_dir);
        ASSERT_EQ(want.size(), have.size());
        for (const auto& [k, t] : want) {
            ASSERT_TRUE(have.count(k)) << k;
            const auto diff = (have.at(k) - t).abs();
            EXPECT_LT(diff.max().item<double>(), 1e-5) << name << " " << k;
            EXPECT_LT(diff.mean().item<double>(), 1e-7) << name << " " << k;
        }
    }
};

TEST_F(RpoRun, DpoStepMatchesTrl028) {
    expect_trl_step("trl028_dpo", {});
}
TEST_F(RpoRun, RpoStepMatchesTrl028RpoAlpha) {
    // TRL v0.12-v0.28: rpo_alpha and F.cross_entropy(ignore_index=0): the '!' (id 0) of a chosen completion is
    // dropped from the NLL.
    expect_trl_step("trl028_rpo", {"loss.rpo_alpha=10", "loss.nll_ignore_token_zero=true"});
}
TEST_F(RpoRun, DpoStepMatchesTrl1x) {
    expect_trl_step("trl1x_dpo", {"loss.loss_type=[sigmoid]"});
}
TEST_F(RpoRun, RpoStepMatchesTrl1xSigmoidPlusSft) {
    expect_trl_step("trl1x_rpo", {"loss.loss_type=[sigmoid, sft]", "loss.loss_weights=[1, 10]"});
}
TEST_F(RpoRun, RpoAlphaIsTheSameLossAsTrl1xSpelling) {
    expect_trl_step("trl1x_rpo", {"loss.rpo_alpha=10"});
}

TEST_F(RpoRun, GradientsMatchTrl) {
    // The gradients of the step (TRL's are after clip_grad_norm_, so ours are scaled by the same factor).
    for (const char* name : {"trl028_rpo", "trl1x_dpo"}) {
        const auto fx  = rpo_fixtures() / name;
        const auto ref = read_json_file(fx / "reference.json");
        auto model     = peft::load_model_with_adapter((test::fixtures() / "model" / "qwen2-tiny-tied").string(),
                                                       rpo_fixtures() / "init_adapter", at::kFloat);
        model->eval();
        const auto ds = fixture_pairs();
        std::vector<const PrefExample*> pairs;
        for (const auto& e : ds.examples) pairs.push_back(&e);
        const auto batch    = collate_pairs(pairs, 256, at::kCPU);
        const bool rpo      = std::string(name) == "trl028_rpo";
        const auto spec     = spec_of(nullptr, nullptr, rpo ? 10 : 0, 0, "pooled", rpo);
        const auto [rc, rr] = reference_logps(*model, batch, spec, 5);  // a small chunk: several lm_head chunks
        const auto pol      = pair_logps(*model, batch, spec, 5, rpo);
        preference_loss(spec, pol.chosen, pol.rejected, rc, rr, pol.nll).loss.backward();
        const auto params = peft::adapter_parameters(*model);
        const double norm = clip_grad_norm(params, 1.0);
        EXPECT_NEAR(norm, ref["log"]["grad_norm"].get<double>(), 2e-5 * norm) << name;
        io::SafetensorsFile g(fx / "grads.safetensors");
        ASSERT_EQ(g.names().size(), params.size());
        for (const auto& [n, p] : params) {
            const auto want = g.tensor(n);
            // fp32: 1e-6 absolute on gradients of magnitude ~1e-2..1 (after clipping to norm 1).
            EXPECT_LT((p.grad() - want).abs().max().item<double>(), 2e-6) << name << " " << n;
        }
    }
}

TEST_F(RpoRun, SharedPromptGivesTheSameLogpsAndGradients) {
    // The fixture pairs in one packed row each (training.share_prompt) against separate rows: the same
    // log-probs, NLL and adapter gradients up to fp32 rounding.
    const auto ds = fixture_pairs();
    std::vector<const PrefExample*> pairs;
    for (const auto& e : ds.examples) pairs.push_back(&e);
    const auto spec = spec_of(nullptr, nullptr, 10, 0, "pooled", false);
    std::vector<PairLogps> got;
    std::vector<at::Tensor> ref;
    std::vector<std::vector<at::Tensor>> grads;
    for (bool share : {false, true}) {
        auto model = peft::load_model_with_adapter((test::fixtures() / "model" / "qwen2-tiny-tied").string(),
                                                   rpo_fixtures() / "init_adapter", at::kFloat);
        model->eval();
        const auto batch = collate_pairs(pairs, 256, at::kCPU, share);
        if (share) {
            EXPECT_EQ(batch.input_ids.size(0), batch.pairs);
        }
        const auto [rc, rr] = reference_logps(*model, batch, spec, 5);
        ref.push_back(at::cat({rc, rr}));
        got.push_back(pair_logps(*model, batch, spec, 5, true));
        const auto& p = got.back();
        preference_loss(spec, p.chosen, p.rejected, rc, rr, p.nll).loss.backward();
        grads.emplace_back();
        for (const auto& [n, w] : peft::adapter_parameters(*model)) grads.back().push_back(w.grad().clone());
    }
    EXPECT_TRUE(at::allclose(ref[0], ref[1], 0, 1e-4)) << ref[0] << ref[1];
    EXPECT_TRUE(at::allclose(got[0].chosen, got[1].chosen, 0, 1e-4)) << got[0].chosen << got[1].chosen;
    EXPECT_TRUE(at::allclose(got[0].rejected, got[1].rejected, 0, 1e-4)) << got[0].rejected << got[1].rejected;
    EXPECT_NEAR(got[0].nll.item<double>(), got[1].nll.item<double>(), 1e-5);
    EXPECT_NEAR(got[0].logits_chosen, got[1].logits_chosen, 1e-5);
    EXPECT_NEAR(got[0].logits_rejected, got[1].logits_rejected, 1e-5);
    ASSERT_EQ(grads[0].size(), grads[1].size());
    for (size_t i = 0; i < grads[0].size(); ++i)
        EXPECT_LT((grads[0][i] - grads[1][i]).abs().max().item<double>(),
                  1e-5 * (1 + grads[0][i].abs().max().item<double>()));
}

// ---------------------------------------------------------------- a toy run, resume, bad input

TEST_F(RpoRun, ToyRunRaisesAccuracyAndMargins) {
    // 12 pairs where the chosen answer is always "yes" and the rejected "no": a fresh LoRA learns to prefer it.
    const auto data = dir / "toy.jsonl";
    {
        std::ofstream out(data);
        for (int i = 0; i < 12; ++i)
            out << "{\"prompt\": \"case " << i << ": is it fine?\", \"chosen\": \" yes\", \"rejected\": \" no\", "
                << "\"pair_type\": \"" << (i % 2 ? "gt_chosen" : "chosen_rejected") << "\"}\n";
    }
    auto o = base_overrides(dir / "toy");
    o.push_back("data.path=" + data.string());
    for (const char* s : {"training.batch_size=4", "training.epochs=4", "optim.lr=0.01", "lora.r=4", "lora.alpha=8",
                          "loss.rpo_alpha=1", "schedule.name=constant"})
        o.push_back(s);
    std::vector<nlohmann::json> recs;
    const auto res = run(o, &recs);
    ASSERT_EQ(recs.size(), 12u);
    // Step 1: policy = reference (B = 0), so every margin is 0 and accuracy 0 (strict >).
    EXPECT_EQ(recs.front()["rewards/margins"].get<double>(), 0.0);
    EXPECT_EQ(recs.front()["rewards/accuracies"].get<double>(), 0.0);
    EXPECT_NEAR(recs.front()["loss"].get<double>() - recs.front()["nll_loss"].get<double>(), std::log(2.0), 1e-6);
    EXPECT_GT(recs.back()["rewards/margins"].get<double>(), 0.05);
    EXPECT_EQ(recs.back()["rewards/accuracies"].get<double>(), 1.0);
    EXPECT_EQ(recs.back()["rewards/accuracies/gt_chosen"].get<double>(), 1.0);
    EXPECT_GT(recs.back()["rewards/margins/chosen_rejected"].get<double>(), 0.05);
    EXPECT_LT(recs.back()["loss"].get<double>(), recs.front()["loss"].get<double>());
    // metrics.jsonl carries TRL's names; summary.json the data counts.
    const auto summary = read_json_file(dir / "toy" / "summary.json");
    EXPECT_EQ(summary["data"]["pairs"].get<int64_t>(), 12);
    EXPECT_EQ(summary["data"]["pair_types"]["gt_chosen"].get<int64_t>(), 6);
    std::ifstream m(dir / "toy" / "metrics.jsonl");
    std::string first;
    std::getline(m, first);
    EXPECT_NE(first.find("\"rewards/margins\""), std::string::npos);
    EXPECT_NE(first.find("\"nll_loss\""), std::string::npos);
    EXPECT_TRUE(fs::exists(res.adapter_dir / "adapter_config.json"));
}

TEST_F(RpoRun, ExactResumeWithAndWithoutPrecomputedReference) {
    for (const bool precompute : {false, true}) {
        auto o = base_overrides(dir / "unused");
        for (const char* s :
             {"training.batch_size=2", "training.grad_accum=2", "training.max_steps=4", "training.save_steps=2",
              "optim.lr=0.01", "lora.r=4", "loss.rpo_alpha=10", "schedule.name=cosine", "schedule.warmup_steps=1",
              "data.shuffle=true", "lora.dropout=0.1", "training.disable_dropout=false"})
            o.push_back(s);
        o.push_back(std::string("reference.precompute=") + (precompute ? "true" : "false"));
        auto with_out = [&](const fs::path& out) {
            auto v = o;
            v.push_back("output=" + out.string());
            return v;
        };
        const fs::path a = dir / ("straight" + std::to_string(precompute)),
                       b = dir / ("resumed" + std::to_string(precompute));
        std::vector<nlohmann::json> straight, resumed;
        run(with_out(a), &straight);
        const auto first = run(with_out(b), &resumed, [](int64_t step) {
            if (step == 3) request_stop();  // stops after step 3: the checkpoint is written then
        });
        EXPECT_TRUE(first.interrupted);
        EXPECT_EQ(first.steps, 3);
        const auto cache_files = [&](const fs::path& out) {
            std::vector<fs::path> v;
            if (fs::exists(out / "ref_cache"))
                for (const auto& e : fs::directory_iterator(out / "ref_cache")) v.push_back(e.path());
            return v;
        };
        const auto before = cache_files(b);
        const auto mtime  = before.empty() ? fs::file_time_type{} : fs::last_write_time(before.front());
        const auto res    = run(with_out(b), &resumed);
        EXPECT_EQ(res.steps, 4);
        ASSERT_EQ(resumed.size(), 4u);
        for (size_t i = 0; i < 4; ++i) EXPECT_EQ(resumed[i].dump(), straight[i].dump()) << "step " << i + 1;
        const auto want = adapter(a / "adapter"), have = adapter(res.adapter_dir);
        for (const auto& [k, t] : want) EXPECT_TRUE(at::equal(have.at(k), t)) << k << " precompute " << precompute;
        if (precompute) {
            ASSERT_EQ(before.size(), 1u);  // one cache file, reused (not rewritten) by the resume
            EXPECT_EQ(cache_files(b).size(), 1u);
            EXPECT_EQ(fs::last_write_time(before.front()), mtime);
        }
    }
}

TEST_F(RpoRun, MergedInitAdapterIsThePolicyStartAndTheReference) {
    // lora.init_adapter + merge_init_adapter: the CPT adapter is merged into the base (<output>/init_merged) and a
    // fresh LoRA (B = 0) starts on top, so at step 1 policy = reference = the merged model: margins 0, loss ln 2.
    auto o = base_overrides(dir / "merged");
    for (const char* s : {"training.batch_size=6", "training.max_steps=1", "lora.r=4"}) o.push_back(s);
    o.push_back("lora.init_adapter=" + (rpo_fixtures() / "init_adapter").string());
    std::vector<nlohmann::json> recs;
    run(o, &recs);
    EXPECT_TRUE(fs::exists(dir / "merged" / "init_merged" / "config.json"));
    // (Not exactly 0: with a merged bf16 base the adapted and the disabled forward round differently, ~1e-6.)
    EXPECT_NEAR(recs[0]["loss"].get<double>(), std::log(2.0), 1e-5);
    EXPECT_NEAR(recs[0]["rewards/margins"].get<double>(), 0.0, 1e-4);
    EXPECT_TRUE(std::isfinite(recs[0]["logps/chosen"].get<double>()));
    const auto marker = fs::last_write_time(dir / "merged" / "init_merged" / "medllm_merge.json");
    run(o, nullptr, {}, "never");  // a second run reuses the merged folder
    EXPECT_EQ(fs::last_write_time(dir / "merged" / "init_merged" / "medllm_merge.json"), marker);
}

// lora.merge_init_adapter: false: the CPT adapter stays frozen (unmerged, not re-quantized) under a fresh trainable
// adapter. The reference log-probs (precomputed, so they can be read) are those of the CPT model computed apart: the
// fp32 base with the CPT adapter merged in fp32 — no bf16 init_merged folder, no re-quantization; the output is the
// stack, and training.merge folds all of it.
TEST_F(RpoRun, StackedInitAdapterIsFrozenUnderTheNewOneAndIsTheReference) {
    const fs::path out = dir / "stacked";
    const auto tiny    = (test::fixtures() / "model" / "qwen2-tiny-tied").string();
    const auto cpt     = rpo_fixtures() / "init_adapter";
    auto o             = base_overrides(out);
    for (const char* s : {"training.batch_size=6", "training.max_steps=2", "lora.r=4", "optim.lr=0.01",
                          "reference.precompute=true", "lora.merge_init_adapter=false", "training.merge=true"})
        o.push_back(s);
    o.push_back("lora.init_adapter=" + cpt.string());
    std::vector<nlohmann::json> recs;
    const auto res = run(o, &recs);
    ASSERT_EQ(recs.size(), 2u);
    EXPECT_FALSE(fs::exists(out / "init_merged"));  // nothing merged or re-quantized
    // Step 1: the trainable adapter starts at B = 0, so policy = reference = base + CPT adapter.
    EXPECT_NEAR(recs[0]["loss"].get<double>(), std::log(2.0), 1e-6);
    EXPECT_NEAR(recs[0]["rewards/margins"].get<double>(), 0.0, 1e-6);
    EXPECT_GT(recs[1]["rewards/margins"].get<double>(), 0.0);  // and then it trains

    // The reference cache against the CPT model computed apart.
    std::vector<fs::path> caches;
    for (const auto& e : fs::directory_iterator(out / "ref_cache")) caches.push_back(e.path());
    ASSERT_EQ(caches.size(), 1u);
    io::SafetensorsFile cache(caches[0]);
    const auto ref_c = cache.tensor("chosen"), ref_r = cache.tensor("rejected");
    const auto ds = fixture_pairs();
    std::vector<const PrefExample*> pairs;
    for (const auto& e : ds.examples) pairs.push_back(&e);
    const auto batch = collate_pairs(pairs, 256, at::kCPU);
    const auto spec  = spec_of();
    auto logps_of    = [&](model::Qwen2ForCausalLM& m) {
        at::NoGradGuard no_grad;
        m.eval();
        const auto l = pair_logps(m, batch, spec, 1024, false);
        return at::cat({l.chosen, l.rejected}).to(at::kDouble);
    };
    auto merged = peft::load_model_with_adapter(tiny, cpt, at::kFloat);
    peft::merge_adapters(*merged);  // W + s·B·A in fp32, in place
    const auto want = logps_of(*merged), have = at::cat({ref_c, ref_r}).to(at::kDouble);
    // fp32, the same model in two associations (W·x + s·B·A·x vs (W + s·B·A)·x): sums of ~100 token log-probs of
    // magnitude ~5, so 1e-6 relative (observed below 1e-6).
    EXPECT_LE((want - have).abs().max().item<double>(), 1e-6 * want.abs().max().item<double>());
    auto base = model::Qwen2ForCausalLM::from_pretrained(tiny, at::kFloat);
    EXPECT_GT((logps_of(*base) - have).abs().max().item<double>(), 1e-2);  // the CPT adapter matters

    // The output is the stack: the CPT adapter unchanged as "default", the trained one as "rpo".
    EXPECT_EQ(read_json_file(res.adapter_dir / peft::kAdapterStackFile)["adapters"],
              nlohmann::json::array({"default", "rpo"}));
    const auto frozen = adapter(res.adapter_dir), original = adapter(cpt);
    ASSERT_EQ(frozen.size(), original.size());
    for (const auto& [k, t] : original) EXPECT_TRUE(at::equal(frozen.at(k), t)) << k;
    double trained_b = 0;
    for (const auto& [k, t] : adapter(res.adapter_dir / "rpo"))
        if (k.find("lora_B") != std::string::npos) trained_b = std::max(trained_b, t.abs().max().item<double>());
    EXPECT_GT(trained_b, 0.0);
    const auto summary = read_json_file(out / "summary.json");
    EXPECT_EQ(summary["adapter_stack"], nlohmann::json::array({"default", "rpo"}));
    // training.merge folds the whole stack into the base: the stacked model's logits up to bf16 weights.
    auto stacked_model = peft::load_model_with_adapter(tiny, res.adapter_dir, at::kFloat);
    auto merged_out    = model::Qwen2ForCausalLM::from_pretrained((out / "merged").string(), at::kFloat);
    const auto a = logps_of(*stacked_model), b = logps_of(*merged_out);
    EXPECT_LE((a - b).abs().max().item<double>(), 0.02 * a.abs().max().item<double>());
    peft::unmerge_adapters(*merged);
    EXPECT_GT((a - logps_of(*merged)).abs().max().item<double>(), 1e-3);  // the trained adapter is in it
}

// A stacked run stopped and resumed gives the steps and the stack of a straight run (the checkpoints hold the
// stack; the resume loads it into the same stack).
TEST_F(RpoRun, StackedRunResumesExactly) {
    auto o = base_overrides(dir / "unused");
    for (const char* s : {"training.batch_size=2", "training.max_steps=3", "training.save_steps=1", "optim.lr=0.01",
                          "lora.r=4", "loss.rpo_alpha=10", "lora.merge_init_adapter=false"})
        o.push_back(s);
    o.push_back("lora.init_adapter=" + (rpo_fixtures() / "init_adapter").string());
    auto with_out = [&](const fs::path& out) {
        auto v = o;
        v.push_back("output=" + out.string());
        return v;
    };
    std::vector<nlohmann::json> straight, resumed;
    const auto a     = run(with_out(dir / "a"), &straight);
    const auto first = run(with_out(dir / "b"), &resumed, [](int64_t step) {
        if (step == 2) request_stop();
    });
    EXPECT_TRUE(first.interrupted);
    EXPECT_TRUE(fs::exists(first.last_checkpoint / "adapter" / peft::kAdapterStackFile));
    const auto b = run(with_out(dir / "b"), &resumed);
    ASSERT_EQ(resumed.size(), 3u);
    for (size_t i = 0; i < 3; ++i) EXPECT_EQ(resumed[i].dump(), straight[i].dump()) << "step " << i + 1;
    for (const char* sub : {"", "rpo"}) {
        const auto want = adapter(a.adapter_dir / sub), have = adapter(b.adapter_dir / sub);
        for (const auto& [k, t] : want) EXPECT_TRUE(at::equal(have.at(k), t)) << sub << " " << k;
    }
}

TEST_F(RpoRun, PrecomputedReferenceGivesTheSameStep) {
    auto o = trl_step(dir / "pre");
    o.push_back("reference.precompute=true");
    o.push_back("reference.batch_size=4");  // another batching than training: per-pair values do not depend on it
    std::vector<nlohmann::json> recs;
    run(o, &recs);
    const auto ref = read_json_file(rpo_fixtures() / "trl028_dpo" / "reference.json");
    EXPECT_NEAR(recs[0]["loss"].get<double>(), ref["log"]["loss"].get<double>(), 2e-5);
    EXPECT_NEAR(recs[0]["rewards/margins"].get<double>(), ref["log"]["rewards/margins"].get<double>(), 2e-6);
}

TEST_F(RpoRun, BadInputsAreOneClearLine) {
    auto msg = [&](std::vector<std::string> extra) {
        auto o = base_overrides(dir / "bad");
        o.insert(o.end(), extra.begin(), extra.end());
        try {
            run(o);
        } catch (const UsageError& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_NE(msg({"data.path=" + (dir / "none.jsonl").string()}).find("data.path: no such file"), std::string::npos);
    EXPECT_NE(msg({"loss.loss_type=dpo"}).find("loss.loss_type: unknown loss 'dpo'"), std::string::npos);
    EXPECT_NE(msg({"loss.loss_type=[sigmoid, sft]", "loss.loss_weights=[1]"}).find("loss.loss_weights"),
              std::string::npos);
    EXPECT_NE(msg({"eval_guard.enabled=true"}).find("eval_guard.igakuqa_dir is required"), std::string::npos);
    EXPECT_NE(msg({"model.tokenizer=" + (dir / "nope").string()}).find("tokenizer folder"), std::string::npos);
    // A resume with other loss settings is refused naming the key.
    auto o = trl_step(dir / "resume");
    run(o);
    o.push_back("loss.beta=0.5");
    o.push_back("training.max_steps=2");
    try {
        run(o);
        ADD_FAILURE() << "resume with another beta was accepted";
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("loss.beta"), std::string::npos) << e.what();
    }
}

TEST_F(RpoRun, ADamagedReferenceCacheIsComputedAgainNotReused) {
    auto o = trl_step(dir / "pre");
    o.push_back("reference.precompute=true");
    std::vector<nlohmann::json> first, second;
    run(o, &first);
    fs::path cache;
    for (const auto& e : fs::directory_iterator(dir / "pre" / "ref_cache")) cache = e.path();
    ASSERT_FALSE(cache.empty());
    const std::string intact = read_bytes(cache);
    // One log-prob changed to another plausible value: a valid file, a wrong number.
    std::string bytes = intact;
    bytes[bytes.size() - 2] ^= 0x04;
    write_file_atomic(cache, bytes);
    run(o, &second, {}, "never");
    EXPECT_EQ(read_bytes(cache), intact);  // computed again, the same numbers
    ASSERT_EQ(first.size(), second.size());
    EXPECT_EQ(first[0]["loss"], second[0]["loss"]);
}
