// Config machinery: YAML/JSON parsing, --set precedence, unknown keys with suggestions, types, ranges.
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "medllm/core/config.h"

namespace fs = std::filesystem;
using medllm::ConfigSchema;
using medllm::ConfigSource;
using medllm::UsageError;

namespace {

struct TrainConfig {
    std::string model;
    int64_t lora_r                   = 16;
    double lr                        = 2e-4;
    bool bf16                        = true;
    std::string schedule             = "cosine";
    std::vector<std::string> targets = {"q_proj", "v_proj"};
};

ConfigSchema<TrainConfig> schema() {
    ConfigSchema<TrainConfig> s;
    s.field("model", &TrainConfig::model, "checkpoint dir").required();
    s.field("lora.r", &TrainConfig::lora_r, "adapter rank").range(1, 1024);
    s.field("lora.target_modules", &TrainConfig::targets, "projections to adapt");
    s.field("optim.lr", &TrainConfig::lr, "peak learning rate").range(0, 1);
    s.field("optim.schedule", &TrainConfig::schedule, "lr schedule").one_of({"cosine", "linear", "constant"});
    s.field("bf16", &TrainConfig::bf16, "train in bf16");
    return s;
}

class ConfigTest : public ::testing::Test {
protected:
    fs::path dir = fs::temp_directory_path() / ("medllm_config_test_" + std::to_string(::getpid()));
    void SetUp() override { fs::create_directories(dir); }
    void TearDown() override { fs::remove_all(dir); }
    std::string write(const std::string& name, const std::string& text) {
        auto p = dir / name;
        std::ofstream(p) << text;
        return p.string();
    }
    std::string error_of(const ConfigSource& src) {
        try {
            schema().load(src);
        } catch (const UsageError& e) {
            return e.what();
        }
        return "";
    }
};

TEST_F(ConfigTest, YamlAndJsonGiveTheSameConfig) {
    auto y = write("c.yaml",
                   "model: /m\nlora:\n  r: 64\n  target_modules: [q_proj, k_proj]\noptim:\n  lr: 1.5e-5\n"
                   "  schedule: linear\nbf16: false\n");
    auto j = write("c.json", R"({"model": "/m", "lora": {"r": 64, "target_modules": ["q_proj", "k_proj"]},)"
                             R"( "optim": {"lr": 1.5e-5, "schedule": "linear"}, "bf16": false})");
    for (const auto& path : {y, j}) {
        auto c = schema().load({path, {}});
        EXPECT_EQ(c.model, "/m");
        EXPECT_EQ(c.lora_r, 64);
        EXPECT_DOUBLE_EQ(c.lr, 1.5e-5);
        EXPECT_EQ(c.schedule, "linear");
        EXPECT_FALSE(c.bf16);
        EXPECT_EQ(c.targets, (std::vector<std::string>{"q_proj", "k_proj"}));
    }
}

TEST_F(ConfigTest, DefaultsApplyWhenKeysAreAbsent) {
    auto c = schema().load({write("c.yaml", "model: x\n"), {}});
    EXPECT_EQ(c.lora_r, 16);
    EXPECT_DOUBLE_EQ(c.lr, 2e-4);
    EXPECT_TRUE(c.bf16);
}

TEST_F(ConfigTest, OverridesWinOverTheFileInOrder) {
    auto path = write("c.yaml", "model: x\nlora:\n  r: 8\n");
    std::vector<medllm::ResolvedEntry> resolved;
    auto c =
        schema().load({path, {"lora.r=32", "optim.lr=3e-4", "lora.r=48", "lora.target_modules=[o_proj]"}}, &resolved);
    EXPECT_EQ(c.lora_r, 48);
    EXPECT_DOUBLE_EQ(c.lr, 3e-4);
    EXPECT_EQ(c.targets, (std::vector<std::string>{"o_proj"}));
    bool saw = false;
    for (const auto& e : resolved) {
        if (e.key == "lora.r") {
            EXPECT_EQ(e.value, "48");
            EXPECT_EQ(e.origin, "--set");
            saw = true;
        }
        if (e.key == "model") {
            EXPECT_EQ(e.origin, "c.yaml");
        }
        if (e.key == "bf16") {
            EXPECT_EQ(e.origin, "default");
        }
    }
    EXPECT_TRUE(saw);
}

TEST_F(ConfigTest, UnknownKeyNamesFileAndClosestKey) {
    auto msg = error_of({write("cpt.yaml", "model: x\nlora:\n  rnak: 8\n"), {}});
    EXPECT_EQ(msg, "unknown key 'lora.rnak' in " + (dir / "cpt.yaml").string() + "; did you mean 'lora.r'?");
    msg = error_of({write("c.yaml", "model: x\n"), {"optim.learning_rate=1"}});
    EXPECT_NE(msg.find("unknown key 'optim.learning_rate' in --set"), std::string::npos) << msg;
    msg = error_of({write("c.yaml", "model: x\ncompletely_unrelated_thing: 1\n"), {}});
    EXPECT_EQ(msg.find("did you mean"), std::string::npos) << msg;
}

TEST_F(ConfigTest, WrongTypesNameKeyAndValue) {
    auto msg = error_of({write("c.yaml", "model: x\nlora:\n  r: sixteen\n"), {}});
    EXPECT_NE(msg.find("key 'lora.r'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("must be an integer"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'sixteen'"), std::string::npos) << msg;
    msg = error_of({write("c.yaml", "model: x\nbf16: 1\n"), {}});
    EXPECT_NE(msg.find("must be true or false"), std::string::npos) << msg;
    msg = error_of({write("c.yaml", "model: x\nlora:\n  r: 2.5\n"), {}});
    EXPECT_NE(msg.find("must be an integer"), std::string::npos) << msg;
    msg = error_of({write("c.yaml", "model: x\nlora:\n  target_modules: q_proj\n"), {}});
    EXPECT_NE(msg.find("a list of strings"), std::string::npos) << msg;
    // Quoted scalars stay strings even when they look like numbers.
    msg = error_of({write("c.yaml", "model: x\nlora:\n  r: \"16\"\n"), {}});
    EXPECT_NE(msg.find("must be an integer"), std::string::npos) << msg;
}

TEST_F(ConfigTest, OutOfRangeValuesNameTheAllowedRange) {
    auto msg = error_of({write("c.yaml", "model: x\nlora:\n  r: 0\n"), {}});
    EXPECT_NE(msg.find("key 'lora.r' = 0"), std::string::npos) << msg;
    EXPECT_NE(msg.find("between 1 and 1024"), std::string::npos) << msg;
    msg = error_of({write("c.yaml", "model: x\noptim:\n  schedule: cosin\n"), {}});
    EXPECT_NE(msg.find("one of cosine, linear, constant"), std::string::npos) << msg;
}

TEST_F(ConfigTest, MissingRequiredKeyAndMalformedFiles) {
    EXPECT_NE(error_of({write("c.yaml", "lora:\n  r: 4\n"), {}}).find("missing required key 'model'"),
              std::string::npos);
    auto msg = error_of({write("bad.yaml", "model: x\nlora: [1, 2\n"), {}});
    EXPECT_NE(msg.find("malformed YAML in"), std::string::npos) << msg;
    EXPECT_NE(msg.find("bad.yaml"), std::string::npos) << msg;
    msg = error_of({write("bad.json", "{\"model\": }"), {}});
    EXPECT_NE(msg.find("malformed JSON in"), std::string::npos) << msg;
    EXPECT_NE(error_of({(dir / "absent.yaml").string(), {}}).find("cannot read config file"), std::string::npos);
    EXPECT_NE(error_of({write("c.yaml", "- a\n- b\n"), {}}).find("mapping"), std::string::npos);
    EXPECT_NE(error_of({"", {"model"}}).find("--set expects key=value"), std::string::npos);
}

TEST_F(ConfigTest, ResolvedYamlReloadsToTheSameConfig) {
    std::vector<medllm::ResolvedEntry> resolved;
    auto first = schema().load({write("c.yaml", "model: /ckpt\noptim:\n  lr: 1e-5\n"), {"lora.r=7"}}, &resolved);
    auto out   = (dir / "config.resolved.yaml").string();
    medllm::write_resolved_yaml(resolved, out);
    auto again = schema().load({out, {}});
    EXPECT_EQ(again.model, first.model);
    EXPECT_EQ(again.lora_r, 7);
    EXPECT_DOUBLE_EQ(again.lr, first.lr);
    EXPECT_EQ(again.targets, first.targets);
    EXPECT_EQ(again.bf16, first.bf16);
    auto table = medllm::format_resolved_table(resolved);
    EXPECT_NE(table.find("lora.r"), std::string::npos);
    EXPECT_NE(table.find("(--set)"), std::string::npos);
}

// ---------------------------------------------------------------- lists of mappings, shared files

struct Source {
    std::string path;
    double weight      = 1.0;
    std::string format = "auto";
};
struct CorpusConfig {
    std::vector<Source> sources;
    int64_t seq_len = 2048;
};

ConfigSchema<CorpusConfig> corpus_schema() {
    auto item = std::make_shared<ConfigSchema<Source>>();
    item->field("path", &Source::path, "file, folder or glob").required();
    item->field("weight", &Source::weight, "sampling weight").range(0, 100);
    item->field("format", &Source::format, "file format").one_of({"auto", "jsonl", "text"});
    ConfigSchema<CorpusConfig> s;
    s.list_field("data.sources", &CorpusConfig::sources, std::shared_ptr<const ConfigSchema<Source>>(item),
                 "corpus inputs")
        .required();
    s.field("data.seq_len", &CorpusConfig::seq_len, "row length").range(1, 1 << 20);
    s.strict_sections({"data"});
    return s;
}

std::string corpus_error(const ConfigSource& src) {
    try {
        corpus_schema().load(src);
    } catch (const UsageError& e) {
        return e.what();
    }
    return "";
}

TEST_F(ConfigTest, ListOfMappingsIsParsedItemByItemWithDefaults) {
    auto c = corpus_schema().load({write("c.yaml",
                                         "data:\n  sources:\n    - path: a.jsonl\n      weight: 2.5\n"
                                         "    - {path: notes/, format: text}\n"),
                                   {}});
    ASSERT_EQ(c.sources.size(), 2u);
    EXPECT_EQ(c.sources[0].path, "a.jsonl");
    EXPECT_DOUBLE_EQ(c.sources[0].weight, 2.5);
    EXPECT_EQ(c.sources[0].format, "auto");
    EXPECT_EQ(c.sources[1].path, "notes/");
    EXPECT_DOUBLE_EQ(c.sources[1].weight, 1.0);
    EXPECT_EQ(c.sources[1].format, "text");
}

TEST_F(ConfigTest, ListItemErrorsNameTheItemAndKey) {
    auto path = [&](const std::string& items) { return write("c.yaml", "data:\n  sources:\n" + items); };
    EXPECT_NE(corpus_error({path("    - {path: a, wieght: 2}\n"), {}}).find("unknown key 'data.sources[0].wieght'"),
              std::string::npos);
    EXPECT_NE(corpus_error({path("    - {path: a, wieght: 2}\n"), {}}).find("did you mean 'data.sources[0].weight'"),
              std::string::npos);
    EXPECT_NE(corpus_error({path("    - {path: a}\n    - {weight: 2}\n"), {}})
                  .find("missing required key 'data.sources[1].path'"),
              std::string::npos);
    EXPECT_NE(corpus_error({path("    - {path: a, weight: 500}\n"), {}}).find("'data.sources[0].weight' = 500"),
              std::string::npos);
    EXPECT_NE(corpus_error({path("    - {path: a, format: csv}\n"), {}}).find("one of auto, jsonl, text"),
              std::string::npos);
    EXPECT_NE(corpus_error({path("    - a.jsonl\n"), {}}).find("'data.sources[0]' (from c.yaml) must be a mapping"),
              std::string::npos);
    EXPECT_NE(corpus_error({write("c.yaml", "data:\n  sources: a.jsonl\n"), {}}).find("must be a list of mappings"),
              std::string::npos);
    EXPECT_NE(corpus_error({write("c.yaml", "data:\n  sources: []\n"), {}}).find("must list at least one item"),
              std::string::npos);
}

// Every key the command does not read is an error, in any section and from --set: a misspelt section would
// otherwise train with the defaults.
TEST_F(ConfigTest, UnknownSectionsAreErrorsEvenWhereOtherCommandsShareTheFile) {
    EXPECT_NE(corpus_error({write("c.yaml", "data:\n  sources: [{path: a}]\ntrain:\n  lr: 1e-4\n"), {}})
                  .find("unknown key 'train.lr'"),
              std::string::npos);
    EXPECT_NE(corpus_error({write("c.yaml", "data:\n  sources: [{path: a}]\n  seq_lne: 8\n"), {}})
                  .find("unknown key 'data.seq_lne'"),
              std::string::npos);
    EXPECT_NE(corpus_error({write("c.yaml", "data:\n  sources: [{path: a}]\n"), {"dta.seq_len=8"}})
                  .find("unknown key 'dta.seq_len' in --set; did you mean 'data.seq_len'?"),
              std::string::npos);
    EXPECT_NE(
        error_of({write("c.yaml", "model: x\nlora:\n  r: 4\nlorra:\n  r: 8\n"), {}}).find("unknown key 'lorra.r'"),
        std::string::npos);
}

// A file that two commands read: the other command's keys are accepted when named, and nothing else is.
TEST_F(ConfigTest, AnotherCommandsKeysAreAcceptedOnlyWhenNamed) {
    auto s = corpus_schema();
    s.accept_keys({"train.lr", "lora.r", "seed"});
    auto ok = write("c.yaml", "data:\n  sources: [{path: a}]\ntrain:\n  lr: 1e-4\nlora: {r: 8}\nseed: 3\n");
    EXPECT_EQ(s.load({ok, {}}).sources.size(), 1u);
    try {
        s.load({write("c.yaml", "data:\n  sources: [{path: a}]\ntrain:\n  lrr: 1e-4\n"), {}});
        FAIL() << "an unknown key of the other command's section was accepted";
    } catch (const UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("unknown key 'train.lrr'"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("did you mean 'train.lr'"), std::string::npos) << e.what();
    }
}

// YAML keeps the last of two equal keys: a second `lora:` section replaced the first one whole. Refused, naming
// both lines, in every form a key can be written twice.
TEST_F(ConfigTest, DuplicateKeysAreRefusedNamingBothLines) {
    auto error = [&](const std::string& text) { return error_of({write("d.yaml", text), {}}); };
    EXPECT_NE(error("model: x\nlora:\n  r: 4\nbf16: true\nlora:\n  target_modules: [q_proj]\n")
                  .find("duplicate key 'lora' in " + (dir / "d.yaml").string() + " at lines 2 and 5"),
              std::string::npos);
    EXPECT_NE(error("model: x\nlora:\n  r: 4\n  r: 8\n").find("duplicate key 'lora.r'"), std::string::npos);
    EXPECT_NE(error("model: x\nlora:\n  r: 4\nlora.r: 8\n").find("at lines 3 and 4"), std::string::npos);
    EXPECT_NE(error("model: x\nmodel: y\n").find("duplicate key 'model'"), std::string::npos);
    EXPECT_NE(corpus_error({write("d.yaml", "data:\n  sources:\n    - {path: a, weight: 1, weight: 2}\n"), {}})
                  .find("duplicate key 'data.sources[0].weight'"),
              std::string::npos);
    EXPECT_NE(error_of({write("d.json", R"({"model": "x", "lora": {"r": 4}, "lora": {"r": 8}})"), {}})
                  .find("duplicate key 'lora'"),
              std::string::npos);
    // The same key in two list items, or in two different mappings, is no duplicate.
    EXPECT_EQ(corpus_error({write("d.yaml", "data:\n  sources:\n    - {path: a}\n    - {path: b}\n"), {}}), "");
    EXPECT_EQ(error("model: x\nlora:\n  r: 4\noptim:\n  lr: 0.1\n"), "");
    // --set replacing the file's value is what --set is for.
    EXPECT_EQ(error_of({write("d.yaml", "model: x\nlora:\n  r: 4\n"), {"lora.r=8", "lora.r=9"}}), "");
}

TEST_F(ConfigTest, ListOfMappingsComesFromSetAndSurvivesTheResolvedYaml) {
    std::vector<medllm::ResolvedEntry> resolved;
    auto c = corpus_schema().load({"", {"data.sources=[{path: 'x y.jsonl', weight: 3}, {path: b}]"}}, &resolved);
    ASSERT_EQ(c.sources.size(), 2u);
    EXPECT_EQ(c.sources[0].path, "x y.jsonl");
    auto out = (dir / "config.resolved.yaml").string();
    medllm::write_resolved_yaml(resolved, out);
    auto again = corpus_schema().load({out, {}});
    ASSERT_EQ(again.sources.size(), 2u);
    EXPECT_EQ(again.sources[0].path, "x y.jsonl");
    EXPECT_DOUBLE_EQ(again.sources[0].weight, 3.0);
    EXPECT_EQ(again.sources[1].format, "auto");
    EXPECT_NE(corpus_schema().describe().find("each item:"), std::string::npos);
}

}  // namespace
