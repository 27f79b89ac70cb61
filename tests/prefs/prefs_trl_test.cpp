// The TRL round trip, checked without Python: scripts/prefs_trl_roundtrip.py loaded the committed pairs files
// (tests/fixtures/train/prefs_trl_pairs_{base,chat}.jsonl) with TRL's DPOTrainer and ran one DPO step on the tiny
// model; its report (prefs_trl_roundtrip.json) records each file's XXH3, rows and step-0 loss. This test rebuilds
// the pairs files from the committed crafted samples (prefs_trl_samples.jsonl) with the builder's own code path and
// requires the same bytes, so the format TRL accepted is the format build-prefs writes today.
// Regenerate: MEDLLM_UPDATE_FIXTURES=1 build/tests/test_train --gtest_filter='PrefsTrl*', then
// .venv/bin/python scripts/prefs_trl_roundtrip.py (scripts/make-prefs-trl-fixture.sh does both).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "medllm/core/files.h"
#include "medllm/prefs/build_prefs.h"

namespace {

namespace fs = std::filesystem;
using namespace medllm::prefs;
using nlohmann::json;

const fs::path kDir = fs::path(MEDLLM_FIXTURES_DIR) / "train";

std::string build_pairs_file(bool chat) {
    const auto qs = load_pref_questions({kDir / "prefs_questions.jsonl"}, {});
    const PrefPrompt prompt(template_preset(chat ? "ja" : "paper"));
    std::vector<json> prompts;
    for (const auto& q : qs) {
        const auto ex = draw_few_shot(qs, q, 3, 0);
        prompts.push_back(chat ? prompt.chat_messages(q, ex) : json(prompt.base_prompt(q, ex)));
    }
    // The crafted samples use the paper's marker; the ja preset's checks read "Answer:" too (the evaluator's list).
    const auto samples = read_checked_samples(kDir / "prefs_trl_samples.jsonl", qs,
                                              with_template_marker({}, PrefPrompt(template_preset("paper"))));
    PairOptions options;
    options.max_per_type = 1;  // keeps the committed files small; every type still appears
    const auto out       = make_pairs_output(qs, prompts, samples, prompt, options);
    std::string text;
    for (const auto& r : out.records) text += medllm::dump_json(r) + "\n";
    return text;
}

TEST(PrefsTrl, PairsFilesTrlReadAreWhatTheBuilderWrites) {
    const char* update = std::getenv("MEDLLM_UPDATE_FIXTURES");
    if (update && std::string(update) == "1")
        for (const bool chat : {false, true})
            medllm::write_file_atomic(kDir / (std::string("prefs_trl_pairs_") + (chat ? "chat" : "base") + ".jsonl"),
                                      build_pairs_file(chat));
    const json report = medllm::read_json_file(kDir / "prefs_trl_roundtrip.json");
    for (const bool chat : {false, true}) {
        const std::string name = chat ? "chat" : "base";
        const fs::path path    = kDir / ("prefs_trl_pairs_" + name + ".jsonl");
        const std::string now  = build_pairs_file(chat);
        std::ifstream in(path, std::ios::binary);
        std::stringstream committed;
        committed << in.rdbuf();
        EXPECT_EQ(now, committed.str()) << path << " differs from what the builder writes now";

        // What TRL saw: the same file, every row, all three pair types, and a finite step-0 loss.
        const json& r = report.at(name);
        EXPECT_EQ(r.at("xxh3"), medllm::hash_bytes(now))
            << name << ": the report is about another file; rerun the script";
        EXPECT_EQ(r.at("rows").get<std::size_t>(), static_cast<std::size_t>(std::count(now.begin(), now.end(), '\n')));
        EXPECT_EQ(r.at("pair_types"), json::array({"chosen_rejected", "gt_chosen", "gt_rejected"}));
        EXPECT_EQ(r.at("conversational"), chat);
        // Policy = reference at the first step, so TRL's DPO loss is ln 2 (sigmoid loss of a zero margin).
        EXPECT_NEAR(r.at("loss_step1").get<double>(), std::log(2.0), 1e-4);
        EXPECT_TRUE(std::isfinite(r.at("grad_norm_step1").get<double>()));
        EXPECT_GT(r.at("grad_norm_step1").get<double>(), 0.0);
    }
}

}  // namespace
