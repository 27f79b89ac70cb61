// The contamination guard: planted IgakuQA questions in every disguise the issue lists are caught; ordinary
// medical text written for this test (same topics, not exam wording) is not.
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "medllm/core/error.h"
#include "medllm/data/guard.h"
#include "medllm/eval/igakuqa_data.h"
#include "support/shared_data.h"

namespace {

using medllm::data::ContaminationGuard;
using medllm::data::GuardOptions;
namespace fs = std::filesystem;

fs::path igakuqa_dir() {
    return shared_path("igakuqa_data");
}

const std::vector<medllm::eval::Question>& questions() {
    static const auto qs = medllm::eval::load_questions(igakuqa_dir(), {2018, 2019, 2020, 2021, 2022});
    return qs;
}

const ContaminationGuard& guard() {
    static const auto g = ContaminationGuard::from_igakuqa(igakuqa_dir(), {2018, 2019, 2020, 2021, 2022}, {});
    return g;
}

const medllm::eval::Question& question(const std::string& id) {
    for (const auto& q : questions())
        if (q.problem_id == id) return q;
    throw std::runtime_error("no question " + id);
}

// Problem text and choices as a question bank would print them.
std::string as_printed(const medllm::eval::Question& q) {
    std::string s        = q.problem_id + "　" + q.problem_text + "\n";
    const char* labels[] = {"a", "b", "c", "d", "e", "f", "g", "h"};
    for (size_t i = 0; i < q.choices.size(); ++i) s += std::string(labels[i % 8]) + "　" + q.choices[i] + "\n";
    return s;
}

// UTF-8 code points of s, so the disguises below never cut a character.
std::vector<std::string> chars(const std::string& s) {
    std::vector<std::string> out;
    for (size_t i = 0; i < s.size();) {
        size_t n              = 1;
        const unsigned char c = s[i];
        if (c >= 0xF0)
            n = 4;
        else if (c >= 0xE0)
            n = 3;
        else if (c >= 0xC0)
            n = 2;
        out.push_back(s.substr(i, n));
        i += n;
    }
    return out;
}

std::string every(const std::string& s, size_t k, const std::string& insert) {
    std::string out;
    auto cs = chars(s);
    for (size_t i = 0; i < cs.size(); ++i) {
        out += cs[i];
        if ((i + 1) % k == 0) out += insert;
    }
    return out;
}

std::string full_width(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c >= 0x21 && c <= 0x7E) {  // U+FF01..U+FF5E
            const char32_t u = 0xFEE0 + c;
            out += static_cast<char>(0xE0 | (u >> 12));
            out += static_cast<char>(0x80 | ((u >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (u & 0x3F));
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

const std::string kFiller =
    "急性虫垂炎は若年者に多い腹部救急疾患であり、心窩部から右下腹部へ移動する痛みが典型的とされる。"
    "診察では圧痛の部位と腹膜刺激徴候を確かめ、血液検査と画像検査を組み合わせて重症度を判断する。";

bool caught(const std::string& text, const std::string& id) {
    for (const auto& h : guard().check(text))
        if (h.problem_id == id) return true;
    return false;
}

TEST(GuardNormalize, FoldsWidthCaseAndDropsSpacePunctuation) {
    using medllm::data::normalize_for_guard;
    EXPECT_EQ(normalize_for_guard("ＡＢＣ１２３"), normalize_for_guard("abc123"));
    EXPECT_EQ(normalize_for_guard("ｶﾀｶﾅ"), normalize_for_guard("カタカナ"));
    EXPECT_EQ(normalize_for_guard("血圧 118/62mmHg。\n脈拍、整。"), normalize_for_guard("血圧118/62mmHg脈拍整"));
    EXPECT_EQ(normalize_for_guard("「正しいのはどれか」・（２つ選べ）"),
              normalize_for_guard("正しいのはどれか2つ選べ"));
}

TEST(Guard, CatchesPlantedQuestionsInEveryDisguise) {
    const auto& q   = question("116A10");
    const auto text = as_printed(q);
    EXPECT_TRUE(caught(text, q.problem_id)) << "verbatim";
    EXPECT_TRUE(caught(kFiller + "\n" + text + "\n" + kFiller, q.problem_id)) << "inside a longer document";
    EXPECT_TRUE(caught(every(text, 17, "\n"), q.problem_id)) << "re-wrapped lines";
    EXPECT_TRUE(caught(full_width(text), q.problem_id)) << "full-width digits and letters";
    EXPECT_TRUE(caught(every(text, 3, " "), q.problem_id)) << "spaces inserted";
    const auto cs  = chars(text);
    const auto mid = cs.size() / 2;
    std::string first, second;
    for (size_t i = 0; i < cs.size(); ++i) (i < mid ? first : second) += cs[i];
    EXPECT_TRUE(caught(first + "\n\n" + kFiller + "\n\n" + second, q.problem_id)) << "split across two paragraphs";
}

TEST(Guard, CatchesTheCaseStemOfALinkedQuestionAlone) {
    // 112B40 leads a linked set: "次の文を読み、40、41の問いに答えよ。" + the case + its own question. Only the
    // case (no lead-in, no question sentence, no choices) is planted.
    const auto& q   = question("112B40");
    std::string t   = q.problem_text;
    const auto lead = t.find("答えよ。");
    ASSERT_NE(lead, std::string::npos);
    t              = t.substr(lead + std::string("答えよ。").size());
    const auto ask = t.rfind("インシデントレポート");
    ASSERT_NE(ask, std::string::npos);
    const std::string stem = t.substr(0, ask);
    ASSERT_GT(stem.size(), 600u);
    EXPECT_TRUE(caught("症例検討会の資料より。\n" + stem + "\n（以下略）", q.problem_id));
}

TEST(Guard, CatchesPlantedQuestionsOfEveryYear) {
    for (const char* id : {"112A1", "113C20", "114D30", "115F5", "116B45"}) {
        EXPECT_TRUE(caught(every(full_width(as_printed(question(id))), 9, "\n"), id)) << id;
    }
}

TEST(Guard, OrdinaryMedicalTextIsNotFlagged) {
    // Written for this test on exam topics (hyperammonaemia, appendicitis, blood cultures, incident reports).
    const std::vector<std::string> texts = {
        "高アンモニア血症は尿素サイクル異常症や重症肝不全で生じ、意識障害や嘔吐を伴うことがある。"
        "オルニチントランスカルバミラーゼ欠損症はX連鎖性の遺伝形式をとり、女性保因者でも発症しうる。",
        kFiller,
        "血液培養は抗菌薬を投与する前に、異なる部位から2セット採取することが推奨される。"
        "皮膚消毒を十分に行い、採取した検体は速やかに検査室へ提出する。",
        "インシデントレポートは医療安全の向上を目的とし、個人の責任追及には用いない。"
        "患者に影響が及ばなかった事例も報告の対象であり、組織として再発防止策を検討する。",
        "糖尿病の診断にはHbA1cと血糖値を用いる。空腹時血糖126mg/dL以上、随時血糖200mg/dL以上が目安となる。"
        "合併症として網膜症、腎症、神経障害があり、定期的な眼科受診が勧められる。",
    };
    for (const auto& t : texts) EXPECT_TRUE(guard().check(t).empty()) << t;
}

TEST(Guard, ReportsOverlapAndRejectsBadOptions) {
    const auto hits = guard().check(as_printed(question("115A3")));
    ASSERT_FALSE(hits.empty());
    EXPECT_EQ(hits[0].problem_id, "115A3");
    EXPECT_NEAR(hits[0].overlap, 1.0, 1e-9);
    GuardOptions bad;
    bad.threshold = 0;
    EXPECT_THROW(ContaminationGuard({}, bad), medllm::UsageError);
}

}  // namespace
