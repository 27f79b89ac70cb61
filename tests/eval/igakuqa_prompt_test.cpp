// Prompt rendering against the original chatgpt.py message format and the Qwen2.5 chat template
// (tests/fixtures/eval/prompts_reference.json from scripts/igakuqa_prompt_fixtures.py), character by character.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/eval/igakuqa_prompt.h"
#include "support/shared_data.h"

namespace medllm::eval {
namespace {

std::string igakuqa_dir() {
    return shared_path("igakuqa_data").string();
}

class PromptTest : public testing::Test {
protected:
    static void SetUpTestSuite() {
        questions_ = new std::vector<Question>(load_questions(igakuqa_dir(), parse_years("2018-2022")));
        examples_  = new std::vector<FewShotExample>(load_few_shot_examples(default_prompt_file(igakuqa_dir())));
    }
    static void TearDownTestSuite() {
        delete questions_;
        delete examples_;
    }
    static const Question& find(const std::string& id) {
        for (const auto& q : *questions_)
            if (q.problem_id == id) return q;
        throw std::runtime_error("no question " + id);
    }
    static std::vector<Question>* questions_;
    static std::vector<FewShotExample>* examples_;
};
std::vector<Question>* PromptTest::questions_      = nullptr;
std::vector<FewShotExample>* PromptTest::examples_ = nullptr;

TEST_F(PromptTest, StandardModeMatchesTheOriginalCharacterByCharacter) {
    std::ifstream in(std::string(MEDLLM_FIXTURES_DIR) + "/eval/prompts_reference.json");
    ASSERT_TRUE(in) << "missing fixture; run scripts/igakuqa_prompt_fixtures.py";
    const auto cases = nlohmann::json::parse(in);
    ASSERT_GE(cases.size(), 5u);
    for (const auto& c : cases) {
        const std::string id = c["problem_id"];
        SCOPED_TRACE(id);
        const auto messages = build_messages(find(id), *examples_, PromptMode::standard);
        ASSERT_EQ(messages.size(), c["messages"].size());
        for (size_t i = 0; i < messages.size(); ++i) {
            EXPECT_EQ(messages[i].role, c["messages"][i]["role"].get<std::string>());
            EXPECT_EQ(messages[i].content, c["messages"][i]["content"].get<std::string>());
        }
        EXPECT_EQ(render_chatml(messages), c["qwen_chat"].get<std::string>());
        EXPECT_EQ(render_prompt(find(id), *examples_, PromptMode::standard, PromptFormat::chat),
                  c["qwen_chat"].get<std::string>());
    }
}

TEST_F(PromptTest, StandardFinalTurnForOneQuestion) {
    // Spelled out from the spec (§6.2) as a second, human-readable check.
    const auto messages = build_messages(find("112A1"), *examples_, PromptMode::standard);
    EXPECT_EQ(messages.back().content,
              "問題: 高アンモニア血症をきたす疾患はどれか。\n"
              "a: Gaucher病\nb: von Gierke病\nc: Hurler症候群\nd: メープルシロップ尿症\n"
              "e: オルニチントランスカルバミラーゼ欠損症\n"
              "必ずa,b,c,d,eの中からちょうど1個選んでください。\n答え:");
    EXPECT_EQ(messages[2].content, "e");
    EXPECT_EQ(messages[4].content, "a,b");
    EXPECT_EQ(messages[6].content, "c");
}

TEST_F(PromptTest, ExplanationModeCarriesTheExampleExplanations) {
    const auto messages = build_messages(find("112C57"), *examples_, PromptMode::explanation);
    ASSERT_EQ(messages.size(), 8u);
    EXPECT_EQ(messages[0].content, kSystemMessage);
    EXPECT_EQ(messages[4].content, "解説: " + (*examples_)[1].explanation + "\n答え:a,b");
    const std::string& final_turn = messages.back().content;
    EXPECT_NE(final_turn.find("ちょうど2個選んでください。\nまず解説を書き"), std::string::npos) << final_turn;
    EXPECT_EQ(final_turn.find("\n答え:"), std::string::npos);  // the answer marker comes from the model
    // Without explanations in the prompt file explanation mode cannot be built.
    auto bare = *examples_;
    bare[0].explanation.clear();
    EXPECT_THROW(build_messages(find("112C57"), bare, PromptMode::explanation), Error);
}

TEST_F(PromptTest, BaseRenderingIsPlainText) {
    const std::string prompt = render_prompt(find("112A1"), *examples_, PromptMode::standard, PromptFormat::base);
    EXPECT_EQ(prompt.rfind("医師国家試験を解きます。\n\n問題: ヒトゲノム", 0), 0u) << prompt.substr(0, 80);
    EXPECT_NE(prompt.find("ちょうど1個選んでください。\n答え:e\n\n問題: 57歳"), std::string::npos);
    EXPECT_NE(prompt.find("答え:a,b\n\n問題: 28歳"), std::string::npos);
    EXPECT_EQ(prompt.substr(prompt.size() - std::string("1個選んでください。\n答え:").size()),
              "1個選んでください。\n答え:");
    EXPECT_EQ(prompt.find("<|im_start|>"), std::string::npos);
    // A numeric question gets an answer marker in base form (the chat form keeps the original bare stem).
    const std::string numeric = render_prompt(find("112C66"), *examples_, PromptMode::standard, PromptFormat::base);
    EXPECT_EQ(numeric.substr(numeric.size() - 8), "\n答え:");
    const std::string cot = render_prompt(find("112A1"), *examples_, PromptMode::explanation, PromptFormat::base);
    EXPECT_NE(cot.find("書いてください。\n解説: "), std::string::npos);
    EXPECT_EQ(cot.back(), '\n');
}

TEST_F(PromptTest, AnswerSpecFollowsTheQuestion) {
    const auto spec = answer_spec(find("113F83"));
    EXPECT_EQ(spec.num_choices, 8);
    EXPECT_FALSE(spec.numeric);
    EXPECT_TRUE(answer_spec(find("113F84")).numeric);
    EXPECT_EQ(answer_spec(find("112C57")).expected_count, 2);
}

}  // namespace
}  // namespace medllm::eval
