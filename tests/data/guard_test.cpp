// The contamination guard: planted IgakuQA questions in every disguise the issue lists are caught -- in one document,
// written over several lines of a `format: lines` corpus, and in IgakuQA's English translation; ordinary medical
// text written for this test (same topics, not exam wording, Japanese and English) is not.
#include <unistd.h>
#include <filesystem>
#include <fstream>
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

bool has(const std::vector<medllm::data::GuardHit>& hits, const std::string& id, const std::string& language = "") {
    for (const auto& h : hits)
        if (h.problem_id == id && (language.empty() || h.language == language)) return true;
    return false;
}

// A question as a `format: lines` corpus holds it: the stem on one line, each labelled choice on a line of its own.
std::vector<std::string> as_lines(const medllm::eval::Question& q) {
    std::vector<std::string> out{q.problem_id + "　" + q.problem_text};
    const char* labels[] = {"a", "b", "c", "d", "e", "f", "g", "h"};
    for (size_t i = 0; i < q.choices.size(); ++i) out.push_back(std::string(labels[i % 8]) + "　" + q.choices[i]);
    return out;
}

// IgakuQA's English translation of a question, as the folder ships it.
struct English {
    std::string text;
    std::vector<std::string> choices;
};
English english(const std::string& id) {
    const auto year = std::to_string(std::stoi(id.substr(0, 3)) + 1906);
    const auto file = igakuqa_dir() / "data" / year / (id.substr(0, 3) + "-" + id.substr(3, 1) + "_translate.jsonl");
    for (const auto& r : medllm::eval::read_jsonl(file))
        if (r["problem_id"] == id) return {r["problem_text_en"], r["choices_en"].get<std::vector<std::string>>()};
    throw std::runtime_error("no translation of " + id);
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

// Every question of 2018 written over lines (stem, then one line per choice) between lines of ordinary text, as one
// `format: lines` file: each line alone is a document, so checking lines one by one lets the questions whose stem
// is short through (the issue counted 32 of 400 in the cache); runs of lines catch all of them and flag their stem
// and choice lines, never the ordinary lines around them.
TEST(GuardLines, CatchesEveryQuestionOf2018WrittenOverLines) {
    std::vector<std::string> lines;
    std::vector<std::pair<size_t, size_t>> span;  // per question: its first line and one past its last
    std::vector<std::string> ids;
    const std::vector<std::string> filler = {
        "急性虫垂炎は若年者に多い腹部救急疾患であり、心窩部から右下腹部へ移動する痛みが典型的とされる。",
        "診察では圧痛の部位と腹膜刺激徴候を確かめ、血液検査と画像検査を組み合わせて重症度を判断する。"};
    for (const auto& q : questions()) {
        if (q.year != 2018) continue;
        lines.push_back(filler[ids.size() % 2]);
        const size_t first = lines.size();
        for (auto& l : as_lines(q)) lines.push_back(l);
        span.emplace_back(first, lines.size());
        ids.push_back(q.problem_id);
    }
    lines.push_back(filler[0]);
    ASSERT_EQ(ids.size(), 400u);
    const auto hits = guard().check_lines(lines);
    ASSERT_EQ(hits.size(), lines.size());
    int caught_alone = 0, caught_lines = 0;
    for (size_t k = 0; k < ids.size(); ++k) {
        const auto [first, end] = span[k];
        bool alone              = false;
        for (size_t i = first; i < end; ++i) alone = alone || caught(lines[i], ids[k]);
        caught_alone += alone;
        caught_lines += has(hits[first], ids[k]);
        // Each of its lines that holds a full n-gram of its own text (a choice shorter than n characters, with
        // its label, holds none and is evidence of nothing on its own) is flagged, under this question.
        for (size_t i = first; i < end; ++i)
            if (medllm::data::normalize_for_guard(lines[i]).size() >= 12)
                EXPECT_TRUE(has(hits[i], ids[k])) << ids[k] << " line " << i - first << ": " << lines[i];
    }
    EXPECT_EQ(caught_lines, 400);
    EXPECT_LT(caught_alone, 400) << "checked line by line some questions pass (the issue's 32 of 400)";
    for (size_t i = 0; i < lines.size(); ++i)
        if (lines[i] == filler[0] || lines[i] == filler[1]) EXPECT_TRUE(hits[i].empty()) << "ordinary line " << i;
}

TEST(GuardLines, CatchesAQuestionReWrappedOverManyShortLines) {
    // The stem cut every 11 characters: most of its n-grams span a line break, so the lines are joined before the
    // n-grams are taken.
    const auto& q = question("114D30");
    std::vector<std::string> lines{kFiller};
    const auto cs = chars(q.problem_text);
    for (size_t i = 0; i < cs.size(); i += 11) {
        std::string l;
        for (size_t j = i; j < std::min(cs.size(), i + 11); ++j) l += cs[j];
        lines.push_back(l);
    }
    for (size_t i = 0; i < q.choices.size(); ++i) lines.push_back(std::string(1, char('a' + i)) + ". " + q.choices[i]);
    lines.push_back(kFiller);
    const auto hits = guard().check_lines(lines);
    EXPECT_TRUE(hits.front().empty());
    EXPECT_TRUE(hits.back().empty());
    for (size_t i = 1; i + 1 < lines.size(); ++i) EXPECT_TRUE(has(hits[i], q.problem_id)) << i << ": " << lines[i];
}

TEST(GuardLines, AQuestionIsNotAssembledFromScatteredLines) {
    // 112A1's stem and its choices, each far from the others in ordinary text: no run of lines holds the question
    // with a short interior, so nothing is flagged, although the file holds all its n-grams.
    const auto& q = question("112A1");
    std::vector<std::string> lines;
    for (const auto& l : as_lines(q)) {
        for (int k = 0; k < 12; ++k) lines.push_back(kFiller);
        lines.push_back(l);
    }
    for (const auto& h : guard().check_lines(lines)) EXPECT_FALSE(has(h, q.problem_id));
    // The same lines next to each other are the question.
    EXPECT_TRUE(has(guard().check_lines(as_lines(q))[0], q.problem_id));
}

TEST(GuardLines, OrdinaryMedicalTextAsLinesIsNotFlagged) {
    std::vector<std::string> lines;
    for (const char* l : {"高アンモニア血症は尿素サイクル異常症や重症肝不全で生じ、意識障害や嘔吐を伴うことがある。",
                          "オルニチントランスカルバミラーゼ欠損症はX連鎖性の遺伝形式をとる。",
                          "女性保因者でも発症しうる。", "メープルシロップ尿症では分枝鎖アミノ酸の代謝が障害される。",
                          "血液培養は抗菌薬を投与する前に、異なる部位から2セット採取する。",
                          "インシデントレポートは医療安全の向上を目的とし、個人の責任追及には用いない。",
                          "糖尿病の診断にはHbA1cと血糖値を用いる。", "合併症として網膜症、腎症、神経障害がある。"})
        lines.push_back(l);
    for (const auto& h : guard().check_lines(lines)) EXPECT_TRUE(h.empty());
}

TEST(GuardEnglish, CatchesIgakuQAsEnglishTranslations) {
    EXPECT_EQ(guard().num_translations(), 2000u);
    for (const char* id : {"112A1", "113C20", "114D30", "115F5", "116A10"}) {
        const auto en    = english(id);
        std::string text = std::string(id) + " " + en.text + "\n";
        for (size_t i = 0; i < en.choices.size(); ++i)
            text += std::string(1, char('a' + i)) + ") " + en.choices[i] + "\n";
        EXPECT_TRUE(has(guard().check(kFiller + "\n" + text), id, "en")) << id << " in a document";
        EXPECT_TRUE(has(guard().check(every(text, 13, "\n")), id, "en")) << id << " re-wrapped";
        std::vector<std::string> lines{en.text};
        for (const auto& c : en.choices) lines.push_back("- " + c);
        EXPECT_TRUE(has(guard().check_lines(lines)[0], id, "en")) << id << " over lines";
    }
}

TEST(GuardEnglish, OrdinaryEnglishMedicalTextIsNotFlagged) {
    // Written for this test on the topics of the exam questions above (hyperammonaemia, appendicitis, cultures).
    const std::vector<std::string> texts = {
        // The English counterpart of the Japanese text in OrdinaryMedicalTextIsNotFlagged.
        "Hyperammonemia arises in urea cycle disorders and in severe liver failure and may cause disturbed "
        "consciousness and vomiting. Ornithine transcarbamylase deficiency is inherited in an X-linked manner and "
        "can also affect female carriers.",
        "Acute appendicitis typically begins with periumbilical pain that migrates to the right lower quadrant. "
        "Which of the following findings is most useful depends on the stage; imaging confirms the diagnosis.",
        "Blood cultures should be drawn from two different sites before antibiotics are started. The patient's "
        "temperature, pulse and blood pressure are recorded, and the laboratory is informed promptly.",
    };
    for (const auto& t : texts) EXPECT_TRUE(guard().check(t).empty()) << t;
}

TEST(GuardEnglish, ABrokenTranslationFileIsNamedWithItsLine) {
    const auto dir = fs::temp_directory_path() / ("medllm_guard_en_" + std::to_string(::getpid()));
    fs::create_directories(dir / "data" / "2018");
    std::ofstream(dir / "data" / "2018" / "112-A_translate.jsonl")
        << R"({"problem_id": "112A1", "problem_text_en": "What?", "choices_en": ["x"]})"
        << "\n"
        << R"({"problem_id": "112A2", "choices_en": ["x"]})"
        << "\n";
    size_t missing = 0;
    try {
        medllm::data::load_igakuqa_translations(dir, {2018}, &missing);
        ADD_FAILURE() << "no error";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("112-A_translate.jsonl:2"), std::string::npos) << e.what();
    }
    std::ofstream(dir / "data" / "2018" / "112-A_translate.jsonl")
        << R"({"problem_id": "112A1", "problem_text_en": "What?", "choices_en": ["x"]})"
        << "\n";
    EXPECT_EQ(medllm::data::load_igakuqa_translations(dir, {2018}, &missing).size(), 1u);
    EXPECT_EQ(missing, 5u);  // sections B-F have none
    fs::remove_all(dir);
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
