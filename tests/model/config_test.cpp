// Qwen2Config: the published Qwen2.5 configs (values from docs/reference/qwen2.md §2), the transformers 5
// spellings (the fixture config.json was written by transformers 5.17 save_pretrained), and clear rejections.
#include <unistd.h>

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "medllm/core/error.h"
#include "medllm/model/config.h"

namespace fs = std::filesystem;
using medllm::model::Qwen2Config;

namespace {

const fs::path kModels = fs::path(MEDLLM_FIXTURES_DIR).parent_path().parent_path() / "configs" / "models";

nlohmann::json base() {
    return nlohmann::json::parse(R"({"model_type":"qwen2","vocab_size":128,"hidden_size":32,"intermediate_size":64,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-6,
        "rope_theta":1000000.0,"tie_word_embeddings":true,"torch_dtype":"bfloat16"})");
}

template <typename Fn>
void expect_usage_error(Fn&& fn, const std::vector<std::string>& fragments) {
    try {
        fn();
        ADD_FAILURE() << "no UsageError; wanted one mentioning " << fragments.front();
    } catch (const medllm::UsageError& e) {
        const std::string what = e.what();
        EXPECT_EQ(what.find('\n'), std::string::npos);
        for (const auto& f : fragments) EXPECT_NE(what.find(f), std::string::npos) << "'" << f << "' not in: " << what;
    }
}

}  // namespace

TEST(Qwen2Config, PublishedSizesMatchTheReference) {
    struct Row {
        const char* size;
        int64_t H, L, nh, nkv, hd, I, vocab;
        bool tied;
        double eps;
        int64_t max_pos;
    };
    const Row rows[] = {
        {"0.5b", 896, 24, 14, 2, 64, 4864, 151936, true, 1e-6, 32768},
        {"1.5b", 1536, 28, 12, 2, 128, 8960, 151936, true, 1e-6, 131072},
        {"3b", 2048, 36, 16, 2, 128, 11008, 151936, true, 1e-6, 32768},
        {"7b", 3584, 28, 28, 4, 128, 18944, 152064, false, 1e-6, 131072},
        {"14b", 5120, 48, 40, 8, 128, 13824, 152064, false, 1e-5, 131072},
        {"32b", 5120, 64, 40, 8, 128, 27648, 152064, false, 1e-5, 131072},
        {"72b", 8192, 80, 64, 8, 128, 29568, 152064, false, 1e-5, 131072},
    };
    for (const auto& r : rows) {
        SCOPED_TRACE(r.size);
        const auto c = Qwen2Config::from_file(kModels / (std::string("qwen2.5-") + r.size));
        EXPECT_EQ(c.hidden_size, r.H);
        EXPECT_EQ(c.num_hidden_layers, r.L);
        EXPECT_EQ(c.num_attention_heads, r.nh);
        EXPECT_EQ(c.num_key_value_heads, r.nkv);
        EXPECT_EQ(c.head_dim, r.hd);
        EXPECT_EQ(c.intermediate_size, r.I);
        EXPECT_EQ(c.vocab_size, r.vocab);
        EXPECT_EQ(c.tie_word_embeddings, r.tied);
        EXPECT_EQ(c.rms_norm_eps, r.eps);
        EXPECT_EQ(c.max_position_embeddings, r.max_pos);
        EXPECT_EQ(c.rope_theta, 1e6);
        EXPECT_EQ(c.rope_type, "default");
        EXPECT_EQ(c.hidden_act, "silu");
        EXPECT_EQ(c.attention_dropout, 0.0);
        EXPECT_FALSE(c.use_sliding_window);
        EXPECT_EQ(c.bos_token_id, 151643);
        EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{151643});
        EXPECT_EQ(c.torch_dtype, "bfloat16");
        EXPECT_EQ(c.num_key_value_groups(), r.nh / r.nkv);
    }
}

TEST(Qwen2Config, ReadsTransformers5Spellings) {
    // dtype, rope_parameters, layer_types, pad_token_id null, sliding_window null.
    const auto c = Qwen2Config::from_file(fs::path(MEDLLM_FIXTURES_DIR) / "io" / "sharded" / "config.json");
    EXPECT_EQ(c.torch_dtype, "bfloat16");
    EXPECT_EQ(c.rope_theta, 1e6);
    EXPECT_EQ(c.head_dim, 8);
    EXPECT_EQ(c.num_key_value_heads, 2);
    EXPECT_FALSE(c.tie_word_embeddings);
    EXPECT_FALSE(c.sliding_window.has_value());
    EXPECT_FALSE(c.pad_token_id.has_value());
    EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
}

TEST(Qwen2Config, DefaultsAndOptionalForms) {
    auto j                   = base();
    j["num_key_value_heads"] = nullptr;  // null -> num_attention_heads
    j["eos_token_id"]        = {151645, 151643};
    j["rope_scaling"]        = nullptr;
    j["head_dim"]            = 16;  // explicit head_dim wins over hidden / heads
    j.erase("rms_norm_eps");
    auto c = Qwen2Config::from_json(j, "x.json");
    EXPECT_EQ(c.num_key_value_heads, 4);
    EXPECT_EQ(c.head_dim, 16);
    EXPECT_EQ(c.q_dim(), 64);
    EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{151645, 151643}));
    EXPECT_EQ(c.rms_norm_eps, 1e-6);  // the HF class default when the key is absent

    j                    = base();
    j["rope_scaling"]    = {{"type", "default"}};
    j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000000.0}};
    j["dtype"]           = "bfloat16";
    EXPECT_EQ(Qwen2Config::from_json(j).rope_theta, 1e6);

    // to_json -> from_json keeps every field.
    auto original = Qwen2Config::from_file(kModels / "qwen2.5-72b");
    auto again    = Qwen2Config::from_json(original.to_json());
    EXPECT_EQ(again.to_json(), original.to_json());
    EXPECT_EQ(again.rms_norm_eps, 1e-5);
    EXPECT_EQ(again.sliding_window, 131072);
    EXPECT_EQ(again.max_window_layers, 80);
}

TEST(Qwen2Config, RejectsUnimplementedFeaturesAndBadValuesNamingFileAndKey) {
    struct Case {
        std::function<void(nlohmann::json&)> edit;
        std::vector<std::string> fragments;
    };
    const std::vector<Case> cases = {
        {[](auto& j) { j["use_sliding_window"] = true; }, {"cfg.json", "'use_sliding_window'", "not implemented"}},
        {[](auto& j) {
             j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};
         },
         {"'rope_scaling'", "'yarn'"}},
        {[](auto& j) {
             j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 2.0}};
         },
         {"'rope_scaling'", "'linear'"}},
        {[](auto& j) {
             j["rope_parameters"] = {{"rope_type", "yarn"}};
         },
         {"'rope_parameters'", "'yarn'"}},
        {[](auto& j) {
             j["rope_parameters"] = {{"rope_theta", 10000.0}};
         },
         {"'rope_parameters'", "disagrees"}},
        {[](auto& j) {
             j["layer_types"] = {"full_attention", "sliding_attention"};
         },
         {"'layer_types'", "layer 1"}},
        {[](auto& j) { j["layer_types"] = {"full_attention"}; }, {"'layer_types'", "1 entries for 2"}},
        {[](auto& j) { j["hidden_act"] = "gelu"; }, {"'hidden_act'", "'gelu'"}},
        {[](auto& j) { j["model_type"] = "llama"; }, {"'model_type'", "'llama'"}},
        {[](auto& j) { j["num_key_value_heads"] = 3; }, {"'num_key_value_heads'", "does not divide"}},
        {[](auto& j) {
             j["num_attention_heads"] = 5;
             j["num_key_value_heads"] = 5;
         },
         {"'num_attention_heads'"}},
        {[](auto& j) { j["hidden_size"] = 32.0; }, {"'hidden_size'", "integer"}},
        {[](auto& j) { j["hidden_size"] = "32"; }, {"'hidden_size'", "integer"}},
        {[](auto& j) { j["num_hidden_layers"] = 0; }, {"'num_hidden_layers'", "[1, 1024]", "got 0"}},
        {[](auto& j) { j["vocab_size"] = -5; }, {"'vocab_size'"}},
        {[](auto& j) { j["rms_norm_eps"] = 0; }, {"'rms_norm_eps'"}},
        {[](auto& j) { j["rms_norm_eps"] = "1e-6"; }, {"'rms_norm_eps'", "number"}},
        {[](auto& j) { j["tie_word_embeddings"] = 1; }, {"'tie_word_embeddings'", "true or false"}},
        {[](auto& j) { j["dtype"] = "float16"; }, {"'dtype'", "disagrees"}},
        {[](auto& j) { j["torch_dtype"] = "int8"; }, {"'torch_dtype'", "'int8'"}},
        {[](auto& j) {
             j["eos_token_id"] = {1, "x"};
         },
         {"'eos_token_id'"}},
        {[](auto& j) { j["head_dim"] = 7; }, {"'head_dim'", "even"}},
        {[](auto& j) { j["attention_dropout"] = 1.5; }, {"'attention_dropout'"}},
    };
    for (size_t i = 0; i < cases.size(); ++i) {
        SCOPED_TRACE(i);
        auto j = base();
        cases[i].edit(j);
        expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); }, cases[i].fragments);
    }
    expect_usage_error([&] { Qwen2Config::from_json(nlohmann::json::array(), "cfg.json"); }, {"cfg.json", "object"});
}

// `num_hidden_layers: 1e12` (and other absurd sizes) used to be accepted or to grow memory until
// the process was killed. Every size-like key is bounded; the error names the file, the key and the range.
TEST(Qwen2Config, SizeLikeKeysAreBoundedNamingKeyAndRange) {
    const char* keys[] = {"vocab_size",          "hidden_size",         "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_key_value_heads", "head_dim",          "max_position_embeddings",
                          "sliding_window",      "max_window_layers",   "bos_token_id",      "pad_token_id",
                          "eos_token_id"};
    const std::vector<nlohmann::json> values = {
        nlohmann::json::parse("1e12"),
        nlohmann::json(int64_t{1000000000000}),
        nlohmann::json(3.5),
        nlohmann::json(-1),
        nlohmann::json::parse("18446744073709551615"),
        nlohmann::json(true),
        nlohmann::json::array({1, 2}),
    };
    for (const char* key : keys) {
        for (const auto& v : values) {
            if (std::string(key) == "eos_token_id" && v.is_array()) continue;  // a list of ids is allowed there
            SCOPED_TRACE(std::string(key) + " = " + v.dump());
            auto j = base();
            j[key] = v;
            expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); },
                               {"cfg.json", std::string("'") + key + "'", "integer", "got " + v.dump()});
        }
    }
    // The limits are far above the largest published model and the range is in the message.
    auto j                 = base();
    j["num_hidden_layers"] = 1025;
    expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); }, {"'num_hidden_layers'", "[1, 1024]"});
    j                = base();
    j["hidden_size"] = 65536 * 2;
    expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); }, {"'hidden_size'", "[1, 65536]"});
    j                        = base();
    j["num_key_value_heads"] = 8;  // more KV heads than query heads
    expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); }, {"'num_key_value_heads'", "[1, 4]"});
    j               = base();
    j["rope_theta"] = 1e-300;  // inv_freq would overflow to inf
    expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); }, {"'rope_theta'", ">= 1"});
    j                 = base();
    j["eos_token_id"] = {2, -3};
    expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); }, {"'eos_token_id'", "got -3"});
}

// Finding 5: a config without hidden_size used to default it to 4096 and blame num_attention_heads.
TEST(Qwen2Config, MissingRequiredSizeKeysAreNamedAsMissing) {
    for (const char* key :
         {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"}) {
        SCOPED_TRACE(key);
        auto j = base();
        j.erase(key);
        expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); },
                           {"cfg.json", std::string("'") + key + "'", "missing"});
        j      = base();
        j[key] = nullptr;
        expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); }, {std::string("'") + key + "'", "missing"});
    }
}

TEST(Qwen2Config, InconsistentHeadLayoutsAreRefused) {
    auto j                   = base();
    j["hidden_size"]         = 70;
    j["num_attention_heads"] = 3;
    j["num_key_value_heads"] = 3;
    expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); },
                       {"'num_attention_heads'", "does not divide hidden_size 70"});
    j                = base();
    j["hidden_size"] = 36;  // 36 / 4 heads = head_dim 9: odd, RoPE rotates halves
    expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); }, {"'head_dim'", "even"});
    j             = base();
    j["head_dim"] = 0;
    expect_usage_error([&] { Qwen2Config::from_json(j, "cfg.json"); }, {"'head_dim'", "got 0"});
}

TEST(Qwen2Config, UnreadableFilesAreRuntimeErrors) {
    const fs::path dir = fs::temp_directory_path() / ("medllm_config_test_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::ofstream(dir / "config.json") << "{\"hidden_size\": 32,";
    try {
        Qwen2Config::from_file(dir);
        ADD_FAILURE() << "no error";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find((dir / "config.json").string()), std::string::npos) << e.what();
    }
    EXPECT_THROW(Qwen2Config::from_file(dir / "missing.json"), medllm::Error);
    fs::remove_all(dir);
}
