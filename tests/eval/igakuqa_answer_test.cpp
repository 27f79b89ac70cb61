// Answer normalisation (vs mojimoji) and lenient extraction.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>

#include "medllm/eval/igakuqa_answer.h"

namespace medllm::eval {
namespace {

std::string utf8(char32_t cp) {
    std::string out;
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return out;
}

// Every BMP code point: zen_to_han must change exactly the ones mojimoji changes, to the same output.
TEST(ZenToHan, MatchesMojimojiOnEveryBmpCodePoint) {
    std::ifstream in(std::string(MEDLLM_FIXTURES_DIR) + "/eval/zen_to_han_mojimoji.tsv");
    ASSERT_TRUE(in) << "missing fixture; run scripts/igakuqa_prompt_fixtures.py";
    std::map<char32_t, std::string> expected;
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') continue;
        std::istringstream fields(line);
        std::string cp_hex, out_hex;
        fields >> cp_hex;
        std::string out;
        while (fields >> out_hex) out += utf8(static_cast<char32_t>(std::stoul(out_hex, nullptr, 16)));
        expected[static_cast<char32_t>(std::stoul(cp_hex, nullptr, 16))] = out;
    }
    ASSERT_GT(expected.size(), 150u);
    int mismatches = 0;
    for (char32_t cp = 1; cp < 0x10000; ++cp) {
        if (cp >= 0xD800 && cp < 0xE000) continue;
        const std::string in_text = utf8(cp);
        auto it                   = expected.find(cp);
        const std::string want    = it == expected.end() ? in_text : it->second;
        if (zen_to_han(in_text) != want && ++mismatches < 10) ADD_FAILURE() << "code point U+" << std::hex << cp;
    }
    EXPECT_EQ(mismatches, 0);
}

TEST(ZenToHan, InvalidUtf8PassesThrough) {
    const std::string bad = std::string("a\xff") + "ｂ";
    EXPECT_EQ(zen_to_han(bad), std::string("a\xff") + "b");
}

TEST(OfficialPrediction, ConvertsAndLowercasesWithoutStripping) {
    EXPECT_EQ(official_prediction("Ａ，Ｃ"), "a,c");
    EXPECT_EQ(official_prediction(" B\n"), " b\n");
    EXPECT_EQ(official_prediction("答え：ｅ"), "答え:e");
    EXPECT_EQ(official_prediction("ガ"), "ｶﾞ");
}

AnswerSpec choices(int expected_count, int num_choices = 5) {
    AnswerSpec spec;
    spec.expected_count = expected_count;
    spec.num_choices    = num_choices;
    return spec;
}

std::string lenient(const std::string& raw, AnswerSpec spec = choices(1)) {
    const auto answer = extract_answer(raw, spec);
    return answer.parsed ? answer.as_prediction() : "<unparseable>";
}

TEST(ExtractAnswer, AcceptsTheSeparatorsPeopleWrite) {
    const auto two = choices(2);
    EXPECT_EQ(lenient("a,c", two), "a,c");
    EXPECT_EQ(lenient("c, a", two), "a,c");
    EXPECT_EQ(lenient("ac", two), "a,c");
    EXPECT_EQ(lenient("a と c", two), "a,c");
    EXPECT_EQ(lenient("a・c", two), "a,c");
    EXPECT_EQ(lenient("ａ、ｃ", two), "a,c");
    EXPECT_EQ(lenient("a c", two), "a,c");
    EXPECT_EQ(lenient("a and d", two), "a,d");
    EXPECT_EQ(lenient("a/c/e", choices(3)), "a,c,e");
    EXPECT_EQ(lenient("A,B", two), "a,b");
}

TEST(ExtractAnswer, StripsDecorationsAndReadsFirstLine) {
    EXPECT_EQ(lenient(" e\n\n解説: eは…"), "e");
    EXPECT_EQ(lenient("**(b)**。"), "b");
    EXPECT_EQ(lenient("「ｄ」です。"), "d");
    EXPECT_EQ(lenient("e: オルニチントランスカルバミラーゼ欠損症"), "e");
    EXPECT_EQ(lenient("a: 酸素欠乏症\nb: 硫化水素中毒", choices(2)), "a,b");
    EXPECT_EQ(lenient("a: 酸素欠乏症\nb: 硫化水素中毒", choices(1)), "a");
}

TEST(ExtractAnswer, TakesTheLastAnswerMarker) {
    const std::string cot = "解説: 羊水過少から答え: aは否定的。腎低形成を考える。\n答え：ｃ";
    const auto answer     = extract_answer(cot, choices(1));
    EXPECT_TRUE(answer.marker_found);
    EXPECT_EQ(answer.as_prediction(), "c");
    EXPECT_EQ(lenient("…よって正解はbです。"), "b");
    EXPECT_EQ(lenient("Answer: D"), "d");
    EXPECT_EQ(lenient("考察の結果、解答: a,b", choices(2)), "a,b");
}

TEST(ExtractAnswer, RecordsUnparseableOutput) {
    EXPECT_EQ(lenient(""), "<unparseable>");
    EXPECT_EQ(lenient("わかりません"), "<unparseable>");
    EXPECT_EQ(lenient("答え:"), "<unparseable>");
    EXPECT_EQ(lenient("a or d"), "<unparseable>");
    EXPECT_EQ(lenient("bed rest"), "<unparseable>");
    // A letter beyond the question's choices is not an answer.
    EXPECT_EQ(lenient("f", choices(1, 5)), "<unparseable>");
    EXPECT_EQ(lenient("f", choices(1, 6)), "f");
    // Reasoning without any marker is not read as an answer.
    EXPECT_EQ(lenient("羊水過少であり腎低形成が考えられる。"), "<unparseable>");
}

TEST(ExtractAnswer, NumericEntry) {
    AnswerSpec numeric;
    numeric.numeric = true;
    EXPECT_EQ(lenient("7.20", numeric), "7.20");
    EXPECT_EQ(lenient("答え：２６", numeric), "26");
    EXPECT_EQ(lenient("計算すると…\n答え: 約 1.2 g/日", numeric), "1.2");
    EXPECT_EQ(lenient("不明", numeric), "<unparseable>");
}

}  // namespace
}  // namespace medllm::eval
