// `eval mcqa` data side: the three loaders (files written here, malformed rows included), the CSV parser, task
// definitions from YAML and the tasks config.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/eval/mcqa_data.h"
#include "medllm/eval/mcqa_evaluator.h"

namespace {

namespace fs = std::filesystem;
using namespace medllm;
using namespace medllm::eval;

class McqaData : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("medllm_mcqa_data_" + std::to_string(getpid()));
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }
    fs::path write(const std::string& name, const std::string& text) {
        std::ofstream(dir_ / name, std::ios::binary) << text;
        return dir_ / name;
    }
    fs::path dir_;
};

TEST_F(McqaData, JsonlShapesAndSkippedRowsByLine) {
    const auto file =
        write("q.jsonl",
              "{\"id\": \"a\", \"question\": \"Q1\", \"options\": [\"x\", \"y\", \"z\"], \"answer\": \"B\"}\n"
              "{\"question\": \"Q2\", \"A\": \"x\", \"B\": \"y\", \"answer\": 0}\n"
              "\n"
              "{\"question\": \"Q3\", \"options\": [\"x\", \"y\"], \"answer\": \"y\"}\n"
              "{\"question\": \"Q4\", \"options\": [\"x\", \"y\"], \"answer\": \"c\"}\n"
              "not json\n"
              "{\"question\": \"Q6\", \"options\": [\"x\", \"y\"], \"answer\": 5}\n"
              "{\"options\": [\"x\", \"y\"], \"answer\": 0}\n"
              "{\"question\": \"Q8\", \"options\": \"x\", \"answer\": 0}\n"
              "{\"question\": \"Q9\", \"options\": [\"1\",\"2\",\"3\",\"4\",\"5\",\"6\"], \"answer\": 0}\n"
              "{\"question\": \"Q10\", \"options\": [\"x\", \"y\"], \"answer\": \"b\"}");  // no final \n
    const auto d = load_mcqa_dataset(builtin_mcqa_task("medqa-jp"), file);
    ASSERT_EQ(d.questions.size(), 4u);
    EXPECT_EQ(d.questions[0].id, "a");
    EXPECT_EQ(d.questions[0].answer, 1);
    EXPECT_EQ(d.questions[1].options, (std::vector<std::string>{"x", "y"}));  // A.. fields
    EXPECT_EQ(d.questions[1].answer, 0);
    EXPECT_EQ(d.questions[1].id, "q.jsonl:2");
    EXPECT_EQ(d.questions[2].answer, 1);  // the option's text
    EXPECT_EQ(d.questions[3].answer, 1);  // lower-case label
    ASSERT_EQ(d.skipped.size(), 6u);
    EXPECT_EQ(d.skipped[0].rfind("q.jsonl:5: answer 'c' is not a label", 0), 0u) << d.skipped[0];
    EXPECT_EQ(d.skipped[1].rfind("q.jsonl:6: not valid JSON", 0), 0u) << d.skipped[1];
    EXPECT_EQ(d.skipped[2].rfind("q.jsonl:7: answer index 5 is outside 0..1", 0), 0u) << d.skipped[2];
    EXPECT_EQ(d.skipped[3].rfind("q.jsonl:8: no 'question' text", 0), 0u) << d.skipped[3];
    EXPECT_EQ(d.skipped[4].rfind("q.jsonl:9: 'options' is not a list", 0), 0u) << d.skipped[4];
    EXPECT_EQ(d.skipped[5].rfind("q.jsonl:10: 6 options but the task has 5 labels", 0), 0u) << d.skipped[5];
    EXPECT_EQ(d.identity.size(), 1u);
}

TEST_F(McqaData, FileWithoutUsableRowsIsAnError) {
    const auto file = write("bad.jsonl", "{\"question\": \"Q\"}\n[1, 2]\n");
    try {
        load_mcqa_dataset(builtin_mcqa_task("medqa-jp"), file);
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("no usable question (2 rows skipped; first: bad.jsonl:1:"),
                  std::string::npos)
            << e.what();
    }
    EXPECT_THROW(load_mcqa_dataset(builtin_mcqa_task("medqa-jp"), dir_ / "missing.jsonl"), UsageError);
    fs::create_directories(dir_ / "empty");
    EXPECT_THROW(load_mcqa_dataset(builtin_mcqa_task("medqa-jp"), dir_ / "empty"), UsageError);
}

TEST_F(McqaData, ADuplicateQuestionIdIsRefusedNamingTheFileBothLinesAndTheId) {
    // Scored twice before: two rows, one id. Also across the files of a folder.
    fs::create_directories(dir_ / "set");
    write("set/a.jsonl",
          "{\"id\": \"q1\", \"question\": \"Q1\", \"options\": [\"x\", \"y\"], \"answer\": 0}\n"
          "{\"id\": \"q2\", \"question\": \"Q2\", \"options\": [\"x\", \"y\"], \"answer\": 1}\n"
          "{\"id\": \"q1\", \"question\": \"Q1 again\", \"options\": [\"x\", \"y\"], \"answer\": 1}\n");
    try {
        load_mcqa_dataset(builtin_mcqa_task("medqa-jp"), dir_ / "set" / "a.jsonl");
        FAIL() << "a duplicate id was accepted";
    } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find((dir_ / "set" / "a.jsonl").string()), std::string::npos) << m;
        EXPECT_NE(m.find("question id 'q1' at a.jsonl:1 and again at a.jsonl:3"), std::string::npos) << m;
    }
    fs::remove(dir_ / "set" / "a.jsonl");
    write("set/a.jsonl", "{\"id\": \"q1\", \"question\": \"Q1\", \"options\": [\"x\", \"y\"], \"answer\": 0}\n");
    write("set/b.jsonl", "{\"id\": \"q1\", \"question\": \"Q1\", \"options\": [\"x\", \"y\"], \"answer\": 0}\n");
    try {
        load_mcqa_dataset(builtin_mcqa_task("medqa-jp"), dir_ / "set");
        FAIL() << "a duplicate id across files was accepted";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("'q1' at a.jsonl:1 and again at b.jsonl:1"), std::string::npos)
            << e.what();
    }
    // Rows without ids are told apart by file:line, so they never collide.
    write("noid.jsonl",
          "{\"question\": \"Q\", \"options\": [\"x\", \"y\"], \"answer\": 0}\n"
          "{\"question\": \"Q\", \"options\": [\"x\", \"y\"], \"answer\": 0}\n");
    EXPECT_EQ(load_mcqa_dataset(builtin_mcqa_task("medqa-jp"), dir_ / "noid.jsonl").questions.size(), 2u);
}

TEST_F(McqaData, CsvQuotedFieldsAndLines) {
    const auto t = parse_csv(
        "\xEF\xBB\xBF"
        "a,b,c\r\n\"x, y\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n,,\nlast,row,\"\"",
        "t.csv");
    ASSERT_EQ(t.records.size(), 4u);
    EXPECT_EQ(t.records[0], (std::vector<std::string>{"a", "b", "c"}));
    EXPECT_EQ(t.records[1], (std::vector<std::string>{"x, y", "say \"hi\"", "two\nlines"}));
    EXPECT_EQ(t.records[2], (std::vector<std::string>{"", "", ""}));
    EXPECT_EQ(t.records[3], (std::vector<std::string>{"last", "row", ""}));
    EXPECT_EQ(t.lines, (std::vector<size_t>{1, 2, 4, 5}));
    try {
        parse_csv("a,b\n1,\"open\n2,3\n", "t.csv");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("t.csv:2: unterminated quoted field"), std::string::npos) << e.what();
    }
    EXPECT_THROW(parse_csv("a,b\n\"x\"y,2\n", "t.csv"), Error);
}

TEST_F(McqaData, MmmluCsvFilteredBySubject) {
    write("mmmlu_JA.csv",
          ",Question,A,B,C,D,Answer,Subject\n"
          "0,\"骨は、何本？\",1,2,3,4,B,anatomy\n"
          "1,\"A question, with a comma\nand a newline\",\"x, y\",b,c,d,D,clinical_knowledge\n"
          "2,天文,1,2,3,4,A,astronomy\n"
          "3,broken,1,2,3,B,anatomy\n"
          "4,bad answer,1,2,3,4,E,anatomy\n");
    const auto d = load_mcqa_dataset(builtin_mcqa_task("mmmlu-medical"), dir_);  // a folder: every *.csv
    ASSERT_EQ(d.questions.size(), 2u);
    EXPECT_EQ(d.questions[0].answer, 1);
    EXPECT_EQ(d.questions[0].subject, "anatomy");
    EXPECT_EQ(d.questions[0].id, "0");
    EXPECT_EQ(d.questions[1].question, "A question, with a comma\nand a newline");
    EXPECT_EQ(d.questions[1].options[0], "x, y");
    EXPECT_EQ(d.questions[1].answer, 3);
    ASSERT_EQ(d.skipped.size(), 2u);
    EXPECT_EQ(d.skipped[0], "mmmlu_JA.csv:6: 7 fields, the header has 8");
    EXPECT_EQ(d.skipped[1].rfind("mmmlu_JA.csv:7: answer 'E' is not a label", 0), 0u) << d.skipped[1];

    write("other.csv", "Question,Answer\nq,A\n");
    try {
        load_mcqa_dataset(builtin_mcqa_task("mmmlu-medical"), dir_ / "other.csv");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("other.csv:1: header must name"), std::string::npos) << e.what();
    }
}

TEST_F(McqaData, PubmedqaJsonlAndOriginalLayout) {
    write("p.jsonl",
          "{\"question\": \"Q1\", \"context\": [\"c1\", \"c2\"], \"answer\": \"Yes\"}\n"
          "{\"question\": \"Q2\", \"context\": \"c\", \"answer\": \"perhaps\"}\n"
          "{\"question\": \"Q3\", \"answer\": \"no\"}\n");
    const auto task = builtin_mcqa_task("pubmedqa-jp");
    const auto d    = load_mcqa_dataset(task, dir_ / "p.jsonl");
    ASSERT_EQ(d.questions.size(), 1u);
    EXPECT_EQ(d.questions[0].context, "c1\nc2");
    EXPECT_EQ(d.questions[0].options, (std::vector<std::string>{"yes", "no", "maybe"}));
    EXPECT_EQ(d.questions[0].answer, 0);
    ASSERT_EQ(d.skipped.size(), 2u);
    EXPECT_EQ(d.skipped[0].rfind("p.jsonl:2: answer 'perhaps'", 0), 0u) << d.skipped[0];
    EXPECT_EQ(d.skipped[1].rfind("p.jsonl:3: no 'context'", 0), 0u) << d.skipped[1];
    EXPECT_EQ(render_mcqa_prompt(task, d.questions[0]), "要旨：c1\nc2\n質問：Q1\n答え：");

    // {"<pmid>": {QUESTION, CONTEXTS, final_decision}} with the field names mapped in the task.
    write("ori.json",
          "{\n \"111\": {\"QUESTION\": \"Q\", \"CONTEXTS\": [\"a\"], \"final_decision\": \"maybe\"},\n"
          " \"222\": {\"QUESTION\": \"Q\", \"CONTEXTS\": [\"a\"], \"final_decision\": \"nope\"}\n}\n");
    auto ori            = task;
    ori.fields.question = "QUESTION";
    ori.fields.context  = "CONTEXTS";
    ori.fields.answer   = "final_decision";
    const auto o        = load_mcqa_dataset(ori, dir_ / "ori.json");
    ASSERT_EQ(o.questions.size(), 1u);
    EXPECT_EQ(o.questions[0].id, "111");
    EXPECT_EQ(o.questions[0].answer, 2);
    ASSERT_EQ(o.skipped.size(), 1u);
    EXPECT_EQ(o.skipped[0].rfind("ori.json:3:", 0), 0u) << o.skipped[0];
}

TEST_F(McqaData, TaskYamlNeedsNoCode) {
    const auto file = write("exam.yaml",
                            "name: my-exam\n"
                            "prompt: \"Q: {question}\\n{options}\\nAnswer ({labels}):\"\n"
                            "option_format: \"({label}) {option}\"\n"
                            "labels: [a, b, c]\n"
                            "choice: option\n"
                            "fields: {question: text, options: choices, answer: gold}\n");
    const auto t    = resolve_mcqa_task(file.string());
    EXPECT_EQ(t.name, "my-exam");
    EXPECT_EQ(t.fields.question, "text");
    write("exam.jsonl", "{\"text\": \"2+2?\", \"choices\": [\"3\", \"4\"], \"gold\": \"b\"}\n");
    const auto d = load_mcqa_dataset(t, dir_ / "exam.jsonl");
    ASSERT_EQ(d.questions.size(), 1u);
    EXPECT_EQ(d.questions[0].answer, 1);
    EXPECT_EQ(render_mcqa_prompt(t, d.questions[0]), "Q: 2+2?\n(a) 3\n(b) 4\nAnswer (a, b):");
    EXPECT_EQ(mcqa_continuation(t, d.questions[0], 1, PromptFormat::base), " 4");

    // Mistakes name the file and the key.
    auto expect_usage = [&](const std::string& text, const std::string& needle) {
        const auto f = write("bad.yaml", text);
        try {
            resolve_mcqa_task(f.string());
            ADD_FAILURE() << "accepted: " << text;
        } catch (const UsageError& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    expect_usage("name: x\nprompt: \"{question} {optons}\"\n", "unknown placeholder {optons}");
    expect_usage("name: x\nchoise: label\n", "unknown key 'choise'; did you mean 'choice'?");
    expect_usage("name: x\nloader: parquet\n", "key 'loader' is 'parquet'");
    expect_usage("prompt: \"{question}\"\n", "key 'name' is required");
    expect_usage("base: medqa-jp\nlabels: [A, a]\n", "lists 'a' twice");
    expect_usage("base: medqa-jp\nname: ../escape\n", "key 'name' is '../escape'");
    EXPECT_THROW(resolve_mcqa_task("nosuch"), UsageError);
}

TEST_F(McqaData, TasksConfigResolvesDataRelativeToTheFile) {
    write("medqa.jsonl", "{\"question\": \"Q\", \"options\": [\"x\", \"y\"], \"answer\": 0}\n");
    const auto cfg     = write("table3.yaml",
                               "tasks:\n"
                                   "  - {task: medqa-jp, data: medqa.jsonl}\n"
                                   "  - task: mmmlu-medical\n"
                                   "    name: mmmlu-anatomy\n"
                                   "    subjects: [anatomy]\n"
                                   "    data: /abs/mmmlu\n");
    const auto entries = load_mcqa_tasks_config(cfg);
    ASSERT_EQ(entries.size(), 2u);
    EXPECT_EQ(entries[0].task.name, "medqa-jp");
    EXPECT_EQ(entries[0].data, dir_ / "medqa.jsonl");
    EXPECT_EQ(entries[1].task.name, "mmmlu-anatomy");
    EXPECT_EQ(entries[1].task.loader, "mmmlu_csv");
    EXPECT_EQ(entries[1].task.subjects, (std::vector<std::string>{"anatomy"}));
    EXPECT_EQ(entries[1].data, fs::path("/abs/mmmlu"));

    auto expect_usage = [&](const std::string& text, const std::string& needle) {
        const auto f = write("bad_tasks.yaml", text);
        try {
            load_mcqa_tasks_config(f);
            ADD_FAILURE() << "accepted: " << text;
        } catch (const UsageError& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    expect_usage("tasks:\n  - {task: medqa-jp}\n", "tasks[0]: key 'data' is required");
    expect_usage("tasks:\n  - {task: medqa-jp, data: a}\n  - {task: medqa-jp, data: b}\n", "used twice");
    expect_usage("tasks:\n  - {task: medqa-jp, data: a, prompt_x: 1}\n", "tasks[0]: unknown key 'prompt_x'");
    expect_usage("model: x\ntasks: []\n", "unknown key 'model'");
}

// Every committed task file and tasks config under configs/mcqa parses.
TEST(McqaConfigs, CommittedConfigsParse) {
    const fs::path dir = fs::path(MEDLLM_SOURCE_DIR) / "configs" / "mcqa";
    int n              = 0;
    for (const auto& e : fs::directory_iterator(dir)) {
        if (e.path().extension() != ".yaml") continue;
        SCOPED_TRACE(e.path().string());
        const std::string text = read_text_file(e.path());
        if (text.find("\ntasks:") != std::string::npos || text.rfind("tasks:", 0) == 0) {
            EXPECT_GE(load_mcqa_tasks_config(e.path()).size(), 1u);
        } else {
            EXPECT_NO_THROW(resolve_mcqa_task(e.path().string()));
        }
        ++n;
    }
    EXPECT_GE(n, 2);
}

}  // namespace
