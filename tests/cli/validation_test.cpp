// Input validation and bounds (config values, flag ranges, malformed files), through the binary as a user runs it.
// Numeric flags refuse nan/inf/negatives with short messages; absurd config.json sizes and missing keys are named;
// every command that reads a checkpoint (info, generate, quantize, merge) refuses the same damaged checkpoints;
// merge's missing input folders are usage errors; token ids and vocabularies are checked; quantize shards and
// resumes. The damaged checkpoints are built here from the tiny fixture without LibTorch (safetensors is a
// little-endian length, a JSON header and the data).
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include "support/run_medllm.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const fs::path kTiny    = fs::path(MEDLLM_FIXTURES_DIR) / "model" / "qwen2-tiny-untied";
const fs::path kAdapter = fs::path(MEDLLM_FIXTURES_DIR) / "peft" / "tiny-adapter";

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_file(const fs::path& p, const std::string& text) {
    std::ofstream(p, std::ios::binary) << text;
}

// The error line main() prints; the rest of the output is log lines.
std::string error_line(const std::string& output) {
    std::istringstream in(output);
    std::string line, found;
    while (std::getline(in, line))
        if (line.rfind("error: ", 0) == 0) found = line;
    return found;
}

class TempDir {
public:
    TempDir()
        : path_(fs::temp_directory_path() /
                ("medllm_validation_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++))) {
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~TempDir() { fs::remove_all(path_); }
    const fs::path& path() const { return path_; }
    fs::path operator/(const std::string& name) const { return path_ / name; }

private:
    static inline int counter_ = 0;
    fs::path path_;
};

// A safetensors file as header entries plus per-tensor bytes, so tests can drop, add or relabel tensors.
struct Safetensors {
    json metadata = json::object();
    std::map<std::string, std::pair<json, std::string>> tensors;  // name -> ({dtype, shape}, bytes)

    static Safetensors read(const fs::path& p) {
        const std::string file = read_file(p);
        uint64_t n             = 0;
        std::memcpy(&n, file.data(), 8);
        const json header = json::parse(file.substr(8, n));
        Safetensors st;
        for (auto it = header.begin(); it != header.end(); ++it) {
            if (it.key() == "__metadata__") {
                st.metadata = it.value();
                continue;
            }
            const auto begin     = it.value()["data_offsets"][0].get<uint64_t>();
            const auto end       = it.value()["data_offsets"][1].get<uint64_t>();
            st.tensors[it.key()] = {{{"dtype", it.value()["dtype"]}, {"shape", it.value()["shape"]}},
                                    file.substr(8 + n + begin, end - begin)};
        }
        return st;
    }

    void write(const fs::path& p) const {
        json header = {{"__metadata__", metadata}};
        std::string data;
        for (const auto& [name, entry] : tensors) {
            json e            = entry.first;
            e["data_offsets"] = {data.size(), data.size() + entry.second.size()};
            header[name]      = e;
            data += entry.second;
        }
        std::string text = header.dump();
        while (text.size() % 8) text += ' ';
        const uint64_t n = text.size();
        std::string out(8, '\0');
        std::memcpy(out.data(), &n, 8);
        write_file(p, out + text + data);
    }
};

// A copy of the tiny untied model (config + weights) to damage.
fs::path copy_tiny(const TempDir& dir, const std::string& name = "model") {
    const fs::path model = dir / name;
    fs::create_directories(model);
    fs::copy_file(kTiny / "config.json", model / "config.json");
    fs::copy_file(kTiny / "model.safetensors", model / "model.safetensors");
    return model;
}

void edit_config(const fs::path& model, const std::function<void(json&)>& edit) {
    json config = json::parse(read_file(model / "config.json"));
    edit(config);
    write_file(model / "config.json", config.dump(2));
}

void edit_weights(const fs::path& model, const std::function<void(Safetensors&)>& edit) {
    Safetensors st = Safetensors::read(model / "model.safetensors");
    edit(st);
    st.write(model / "model.safetensors");
}

// ---------------------------------------------------------------- numeric flags (finding 8)

TEST(Validation, NumericFlagsRefuseNanInfNegativeAndOutOfRangeWithShortMessages) {
    const std::string m = " --model /nonexistent-model";
    struct Case {
        std::string args, flag;
    };
    const std::vector<Case> cases = {
        {"info" + m + " --batch 0", "--batch"},
        {"info" + m + " --batch nan", "--batch"},
        {"info" + m + " --seq-len -5", "--seq-len"},
        {"info" + m + " --seq-len 1e3", "--seq-len"},
        {"info" + m + " --lora-r -1", "--lora-r"},
        {"info" + m + " --lora-rank -1", "--lora-r"},
        {"info" + m + " --batch 99999999999999999999", "--batch"},
        {"generate" + m + " --prompt x --temperature nan", "--temperature"},
        {"generate" + m + " --prompt x --temperature inf", "--temperature"},
        {"generate" + m + " --prompt x --temperature -0.5", "--temperature"},
        {"generate" + m + " --prompt x --top-p nan", "--top-p"},
        {"generate" + m + " --prompt x --top-p 0", "--top-p"},
        {"generate" + m + " --prompt x --top-p 1.5", "--top-p"},
        {"generate" + m + " --prompt x --min-p nan", "--min-p"},
        {"generate" + m + " --prompt x --min-p -0.1", "--min-p"},
        {"generate" + m + " --prompt x --repetition-penalty nan", "--repetition-penalty"},
        {"generate" + m + " --prompt x --repetition-penalty 0", "--repetition-penalty"},
        {"generate" + m + " --prompt x --repetition-penalty inf", "--repetition-penalty"},
        {"generate" + m + " --prompt x --seed -1", "--seed"},
        {"generate" + m + " --prompt x --seed 1.5", "--seed"},
        {"generate" + m + " --prompt x --stop-token-id -7", "--stop-token-id"},
        {"generate" + m + " --prompt x --stop-token-id 4294967296", "--stop-token-id"},
        {"generate" + m + " --prompt x --top-k -1", "--top-k"},
        {"generate" + m + " --prompt x --max-new-tokens 0", "--max-new-tokens"},
        {"generate" + m + " --prompt x --max-new-tokens nan", "--max-new-tokens"},
        {"generate" + m + " --prompt x -n 0", "--num-samples"},
        {"generate" + m + " --prompt x --batch-size -3", "--batch-size"},
        {"tokenize --model " + kTiny.string() + " --jobs -1", "--jobs"},
        {"tokenize --model " + kTiny.string() + " --jobs 100000", "--jobs"},
        {"tokenize --model " + kTiny.string() + " --batch 0", "--batch"},
        {"quantize --model " + kTiny.string() + " --output /tmp/x --blocksize nan", "--blocksize"},
        {"quantize --model " + kTiny.string() + " --output /tmp/x --max-shard-bytes 0", "--max-shard-bytes"},
        {"quantize --model " + kTiny.string() + " --output /tmp/x --max-shard-bytes -1", "--max-shard-bytes"},
        {"merge --model " + kTiny.string() + " --adapter " + kAdapter.string() + " --output /tmp/x --max-shard-bytes 0",
         "--max-shard-bytes"},
    };
    const std::regex long_number("[0-9]{25,}");
    for (const auto& c : cases) {
        SCOPED_TRACE(c.args);
        const CliRun r = run_medllm(c.args);
        EXPECT_EQ(r.exit_code, 2) << r.output;
        EXPECT_NE(r.output.find(c.flag + ": must be "), std::string::npos) << r.output;
        // CLI::PositiveNumber printed the double's limit, a 300-digit number, as the upper bound.
        EXPECT_FALSE(std::regex_search(r.output, long_number)) << r.output;
    }
    // The ranges are in --help.
    const CliRun help = run_medllm("generate --help");
    EXPECT_NE(help.output.find("--top-p FLOAT:(0, 1]"), std::string::npos) << help.output;
    EXPECT_NE(help.output.find("--seed UINT:NONNEGATIVE"), std::string::npos) << help.output;
}

TEST(Validation, ValidNumericFlagsStillParse) {
    // Values at the edges of the ranges reach the command (which then fails on the missing model, not the flag).
    const CliRun r = run_medllm(
        "generate --model /nonexistent-model --prompt x --temperature 0 --top-p 1 --min-p 0 --repetition-penalty 1.2 "
        "--seed 18 --stop-token-id 0 --top-k 0 -n 1");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(error_line(r.output).find("--model /nonexistent-model"), std::string::npos) << r.output;
}

// ---------------------------------------------------------------- merge's missing inputs (finding 8)

TEST(Validation, MergeMissingInputFoldersAreUsageErrors) {
    TempDir tmp;
    CliRun r = run_medllm("merge --model /nonexistent-model --adapter " + kAdapter.string() + " --output " +
                          (tmp / "out").string());
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("/nonexistent-model"), std::string::npos) << r.output;
    r = run_medllm("merge --model " + kTiny.string() + " --adapter /nonexistent-adapter --output " +
                   (tmp / "out").string());
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("/nonexistent-adapter"), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(tmp / "out"));
}

// ---------------------------------------------------------------- config.json bounds (finding 4)

TEST(Validation, AbsurdConfigSizesAreUsageErrorsNamingFileKeyAndRange) {
    TempDir tmp;
    const fs::path model = tmp / "cfg";
    fs::create_directories(model);
    struct Case {
        std::string key;
        json value;
    };
    const std::vector<Case> cases = {
        {"num_hidden_layers", int64_t{1000000000000}},  // grew memory until the kernel killed `info`
        {"num_hidden_layers", json::parse("1e12")},
        {"hidden_size", int64_t{1} << 40},
        {"intermediate_size", int64_t{1} << 40},
        {"vocab_size", int64_t{1} << 40},
        {"num_attention_heads", int64_t{1} << 40},
        {"max_position_embeddings", int64_t{1} << 40},
        {"num_key_value_heads", 3.5},
        {"hidden_size", -64},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.key + " = " + c.value.dump());
        fs::copy_file(kTiny / "config.json", model / "config.json", fs::copy_options::overwrite_existing);
        edit_config(model, [&](json& j) {
            j[c.key] = c.value;
            j.erase("layer_types");
        });
        const auto start = std::chrono::steady_clock::now();
        const CliRun r   = run_medllm("info --model " + model.string());
        EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
        EXPECT_EQ(r.exit_code, 2) << r.output;
        const std::string e = error_line(r.output);
        EXPECT_NE(e.find((model / "config.json").string()), std::string::npos) << r.output;
        EXPECT_NE(e.find("'" + c.key + "'"), std::string::npos) << r.output;
        EXPECT_NE(e.find("must be an integer in ["), std::string::npos) << r.output;
    }
}

TEST(Validation, MissingRequiredConfigKeyIsNamedAsMissing) {
    TempDir tmp;
    const fs::path model = copy_tiny(tmp);
    edit_config(model, [](json& j) { j.erase("hidden_size"); });
    for (const std::string cmd : {"info --model " + model.string(),
                                  "quantize --model " + model.string() + " --output " + (tmp / "q").string()}) {
        SCOPED_TRACE(cmd);
        const CliRun r = run_medllm(cmd);
        EXPECT_EQ(r.exit_code, 2) << r.output;
        EXPECT_NE(error_line(r.output).find("'hidden_size': is missing"), std::string::npos) << r.output;
        EXPECT_EQ(error_line(r.output).find("num_attention_heads"), std::string::npos) << r.output;
    }
}

// ---------------------------------------------------------------- one checkpoint check for every reader (finding 5)

struct Damage {
    std::string what;
    std::function<void(const fs::path&)> apply;
    int exit_code;
    std::string named;  // the tensor or key the message must name
};

std::vector<Damage> damages() {
    return {
        {"missing tensor",
         [](const fs::path& m) {
             edit_weights(m, [](Safetensors& st) { st.tensors.erase("model.layers.1.mlp.up_proj.weight"); });
         },
         1, "missing tensor 'model.layers.1.mlp.up_proj.weight'"},
        {"extra tensor",
         [](const fs::path& m) {
             edit_weights(m, [](Safetensors& st) {
                 st.tensors["model.layers.0.mlp.extra_proj.weight"] = {{{"dtype", "F32"}, {"shape", {2}}},
                                                                       std::string(8, '\0')};
             });
         },
         1, "unexpected tensor 'model.layers.0.mlp.extra_proj.weight'"},
        {"wrong shape",
         [](const fs::path& m) {
             edit_weights(m, [](Safetensors& st) {
                 st.tensors["model.layers.0.self_attn.o_proj.weight"].first["shape"] = {32, 128};
             });
         },
         1, "'model.layers.0.self_attn.o_proj.weight' has shape [32,128], config implies [64,64]"},
        {"integer weights",
         [](const fs::path& m) {
             edit_weights(m, [](Safetensors& st) { st.tensors["model.norm.weight"].first["dtype"] = "I32"; });
         },
         1, "'model.norm.weight' has dtype I32"},
        {"hidden_size 70 with 3 heads",
         [](const fs::path& m) {
             edit_config(m, [](json& j) {
                 j["hidden_size"]         = 70;
                 j["num_attention_heads"] = 3;
                 j["num_key_value_heads"] = 3;
             });
         },
         2, "'num_attention_heads': 3 does not divide hidden_size 70"},
        {"no hidden_size", [](const fs::path& m) { edit_config(m, [](json& j) { j.erase("hidden_size"); }); }, 2,
         "'hidden_size': is missing"},
        {"more layers than the checkpoint",
         [](const fs::path& m) {
             edit_config(m, [](json& j) {
                 j["num_hidden_layers"] = 3;
                 j.erase("layer_types");
             });
         },
         1, "missing tensor 'model.layers.2."},
    };
}

TEST(Validation, EveryCommandThatReadsACheckpointRefusesTheSameDamage) {
    for (const auto& d : damages()) {
        SCOPED_TRACE(d.what);
        TempDir tmp;
        const fs::path model = copy_tiny(tmp);
        d.apply(model);
        const std::string m                     = " --model " + model.string();
        const std::vector<std::string> commands = {
            "quantize" + m + " --output " + (tmp / "q").string(),
            "info" + m,
            "generate" + m + " --prompt hello --max-new-tokens 1",  // refused before it looks for a tokenizer
            "merge" + m + " --adapter " + kAdapter.string() + " --output " + (tmp / "merged").string(),
        };
        for (const auto& cmd : commands) {
            SCOPED_TRACE(cmd);
            const CliRun r = run_medllm(cmd);
            EXPECT_EQ(r.exit_code, d.exit_code) << r.output;
            EXPECT_NE(error_line(r.output).find(d.named), std::string::npos) << r.output;
        }
        // Nothing was written: the check comes before any output.
        EXPECT_FALSE(fs::exists(tmp / "q" / "config.json"));
        EXPECT_FALSE(fs::exists(tmp / "merged" / "config.json"));
    }
}

TEST(Validation, QuantizeAcceptsTheUndamagedCheckpoint) {
    TempDir tmp;
    const fs::path model = copy_tiny(tmp);
    const CliRun r       = run_medllm("quantize --model " + model.string() + " --output " + (tmp / "q").string());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(fs::exists(tmp / "q" / "config.json"));
    // ... and its 4-bit output passes the same check.
    const CliRun info = run_medllm("info --model " + (tmp / "q").string());
    EXPECT_EQ(info.exit_code, 0) << info.output;
    EXPECT_NE(info.output.find("matches config           yes"), std::string::npos) << info.output;
}

// ---------------------------------------------------------------- quantize --max-shard-bytes and resume (finding 8)

TEST(Validation, QuantizeMaxShardBytesShardsAndAnInterruptedRunResumes) {
    TempDir tmp;
    const fs::path model   = copy_tiny(tmp);
    const std::string opts = " --max-shard-bytes 20000";
    CliRun r = run_medllm("quantize --model " + model.string() + " --output " + (tmp / "whole").string() + opts);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    ASSERT_TRUE(fs::exists(tmp / "whole" / "model.safetensors.index.json")) << r.output;
    int shards = 0;
    for (const auto& e : fs::directory_iterator(tmp / "whole"))
        shards += std::regex_match(e.path().filename().string(), std::regex(R"(model-\d{5}-of-\d{5}\.safetensors)"));
    EXPECT_GE(shards, 5);

    // Interrupt a run part-way: a NaN in a late weight stops it after several shards are written. The damaged file
    // has the original's size and modification time, so the rerun over the repaired file is the same run (its
    // resume key is the input's names, sizes and mtimes) and keeps the finished shards.
    const std::string good = read_file(model / "model.safetensors");
    const auto mtime       = fs::last_write_time(model / "model.safetensors");
    edit_weights(model, [](Safetensors& st) {
        auto& bytes        = st.tensors["model.layers.1.self_attn.v_proj.weight"].second;
        const uint32_t nan = 0x7fc00000u;
        std::memcpy(bytes.data() + 4 * 5, &nan, 4);
    });
    ASSERT_EQ(read_file(model / "model.safetensors").size(), good.size());
    fs::last_write_time(model / "model.safetensors", mtime);
    const fs::path out = tmp / "resumed";
    r                  = run_medllm("quantize --model " + model.string() + " --output " + out.string() + opts);
    ASSERT_EQ(r.exit_code, 1) << r.output;
    ASSERT_TRUE(fs::exists(out / ".model-shards.json")) << r.output;

    write_file(model / "model.safetensors", good);
    fs::last_write_time(model / "model.safetensors", mtime);
    r = run_medllm("quantize --model " + model.string() + " --output " + out.string() + opts);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("quantize: resuming;"), std::string::npos) << r.output;
    for (const auto& e : fs::directory_iterator(tmp / "whole")) {
        SCOPED_TRACE(e.path().filename().string());
        EXPECT_EQ(read_file(out / e.path().filename()), read_file(e.path()));
    }
    EXPECT_FALSE(fs::exists(out / ".model-shards.json"));
}

// ---------------------------------------------------------------- token ids and vocabularies (finding 8)

fs::path tiny_tokenizer(const TempDir& tmp, const json& vocab) {
    const fs::path dir = tmp / "tok";
    fs::create_directories(dir);
    write_file(dir / "vocab.json", vocab.dump());
    write_file(dir / "merges.txt", "#version: 0.2\na b\n");
    return dir;
}

TEST(Validation, DecodeRefusesNegativeAndOutOfRangeIdsNamingTheLine) {
    TempDir tmp;
    const fs::path tok = tiny_tokenizer(tmp, {{"a", 0}, {"b", 1}, {"ab", 2}});
    for (const std::string bad : {"-7", "4294967297", "2147483648"}) {
        SCOPED_TRACE(bad);
        write_file(tmp / "ids.jsonl", "[0, 1]\n[2, " + bad + ", 1]\n");
        const CliRun r = run_medllm("tokenize --model " + tok.string() + " --decode -i " +
                                    (tmp / "ids.jsonl").string() + " -o " + (tmp / "out.jsonl").string());
        EXPECT_EQ(r.exit_code, 1) << r.output;
        const std::string e = error_line(r.output);
        EXPECT_NE(e.find((tmp / "ids.jsonl").string() + ":2"), std::string::npos) << r.output;
        EXPECT_NE(e.find(bad), std::string::npos) << r.output;
    }
    write_file(tmp / "ids.jsonl", "[0, 1, 2]\n");
    const CliRun ok = run_medllm("tokenize --model " + tok.string() + " --decode -i " + (tmp / "ids.jsonl").string());
    EXPECT_EQ(ok.exit_code, 0) << ok.output;
    EXPECT_NE(ok.output.find("{\"text\":\"abab\"}"), std::string::npos) << ok.output;
}

TEST(Validation, VocabularyWithDuplicateOrAbsurdIdsIsRefused) {
    struct Case {
        json vocab;
        std::vector<std::string> named;
    };
    const std::vector<Case> cases = {
        {{{"a", 0}, {"b", 1}, {"ab", 1}}, {"'ab'", "'b'", "both have id 1"}},
        {{{"a", 0}, {"b", 1}, {"ab", 2147483647}}, {"'ab'", "2147483647"}},  // would allocate ~100 GB of tables
        {{{"a", 0}, {"b", 1}, {"ab", 4294967298}}, {"'ab'", "4294967298"}},  // used to wrap to id 2
        {{{"a", 0}, {"b", 1}, {"ab", 2.5}}, {"'ab'", "2.5"}},
        {{{"a", 0}, {"b", -1}, {"ab", 2}}, {"'b'", "-1"}},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.vocab.dump());
        TempDir tmp;
        const fs::path tok = tiny_tokenizer(tmp, c.vocab);
        write_file(tmp / "in.txt", "ab\n");
        const CliRun r = run_medllm("tokenize --model " + tok.string() + " -i " + (tmp / "in.txt").string());
        EXPECT_EQ(r.exit_code, 1) << r.output;
        const std::string e = error_line(r.output);
        EXPECT_NE(e.find((tok / "vocab.json").string()), std::string::npos) << r.output;
        for (const auto& n : c.named) EXPECT_NE(e.find(n), std::string::npos) << n << " in " << r.output;
    }
}

}  // namespace
