// `medllm quantize` on the tiny HF fixture: every projection becomes bitsandbytes' NF4 state, the rest is kept,
// and the 4-bit tensors are exactly what nf4_quantize gives (itself checked byte-for-byte against bitsandbytes).
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include "support/run_medllm.h"

#include "medllm/io/safetensors.h"
#include "medllm/quant/nf4.h"
#include "medllm/quant/nf4_serialize.h"
#include "medllm/quant/quantize_checkpoint.h"

namespace fs = std::filesystem;
using namespace medllm;

namespace {

int run(const std::string& args, std::string* out = nullptr) {
    CliRun r = run_medllm(args);
    if (out) *out = r.output;
    return r.exit_code;
}

const fs::path kModel = fs::path(MEDLLM_FIXTURES_DIR) / "model" / "qwen2-tiny-untied";

TEST(QuantizeCheckpoint, WritesBitsandbytesNf4StateForProjectionsOnly) {
    auto out = fs::temp_directory_path() / ("medllm_quantize_" + std::to_string(::getpid()));
    std::string log;
    ASSERT_EQ(run("quantize --model " + kModel.string() + " --output " + out.string(), &log), 0) << log;

    io::CheckpointReader original(kModel.string()), quantized(out.string());
    std::map<std::string, at::Tensor> tensors;
    for (const auto& name : quantized.names()) tensors[name] = quantized.load(name);
    int64_t projections = 0;
    for (const auto& name : original.names()) {
        at::Tensor w = original.load(name);
        if (quant::is_quantizable_weight(name)) {
            ++projections;
            ASSERT_TRUE(quant::has_nf4_state(tensors, name)) << name;
            auto q      = quant::nf4_from_state_dict(tensors, name);
            auto expect = quant::nf4_quantize(w, 64, true);
            EXPECT_TRUE(at::equal(q.packed.reshape(-1), expect.packed.reshape(-1))) << name;
            EXPECT_TRUE(at::equal(q.absmax, expect.absmax)) << name;
            EXPECT_TRUE(q.nested);
            auto back = quant::nf4_dequantize(q, at::kFloat);
            EXPECT_EQ(back.sizes(), w.sizes());
            // NF4's largest gap between codes is ~0.28 of absmax, so no value moves by more than ~0.14·absmax.
            EXPECT_LE((back - w).abs().max().item<double>(), 0.15 * w.abs().max().item<double>()) << name;
        } else {
            ASSERT_TRUE(tensors.count(name)) << name;
            EXPECT_TRUE(at::equal(tensors[name], w)) << name;  // embeddings, norms, biases, lm_head kept as is
        }
    }
    EXPECT_EQ(projections, 2 * 7);
    nlohmann::json cfg = nlohmann::json::parse(std::ifstream(out / "config.json"));
    EXPECT_EQ(cfg["quantization_config"]["quant_method"], "bitsandbytes");
    EXPECT_EQ(cfg["quantization_config"]["bnb_4bit_quant_type"], "nf4");
    EXPECT_EQ(cfg["quantization_config"]["bnb_4bit_use_double_quant"], true);

    // `medllm info` reads the 4-bit checkpoint: logical parameter count, no shape complaints.
    std::string info_dense, info_nf4;
    ASSERT_EQ(run("info --model " + kModel.string(), &info_dense), 0) << info_dense;
    ASSERT_EQ(run("info --model " + out.string(), &info_nf4), 0) << info_nf4;
    auto params_line = [](const std::string& text) {
        auto at = text.find("  parameters");
        return at == std::string::npos ? std::string() : text.substr(at, text.find('\n', at) - at);
    };
    EXPECT_FALSE(params_line(info_dense).empty()) << info_dense;
    EXPECT_EQ(params_line(info_nf4), params_line(info_dense));

    // Quantizing twice is refused; so are bad block sizes and a missing model.
    EXPECT_EQ(run("quantize --model " + out.string() + " --output " + out.string() + "-again", &log), 2) << log;
    EXPECT_NE(log.find("already quantized"), std::string::npos) << log;
    EXPECT_EQ(run("quantize --model " + kModel.string() + " --output " + out.string() + "-b --blocksize 48", &log), 2);
    EXPECT_NE(log.find("--blocksize 48"), std::string::npos) << log;
    EXPECT_EQ(run("quantize --model /nonexistent --output " + out.string() + "-c", &log), 2);
    std::system(("rm -rf " + out.string() + " " + out.string() + "-b").c_str());
}

TEST(QuantizeCheckpoint, NoDoubleQuantKeepsFp32Absmax) {
    auto out = fs::temp_directory_path() / ("medllm_quantize_nodq_" + std::to_string(::getpid()));
    std::string log;
    ASSERT_EQ(run("quantize --no-double-quant --blocksize 128 --model " + kModel.string() + " --output " + out.string(),
                  &log),
              0)
        << log;
    io::CheckpointReader quantized(out.string());
    const std::string key = "model.layers.0.mlp.down_proj.weight";
    std::map<std::string, at::Tensor> tensors;
    for (const auto& name : quantized.names()) tensors[name] = quantized.load(name);
    auto q = quant::nf4_from_state_dict(tensors, key);
    EXPECT_FALSE(q.nested);
    EXPECT_EQ(q.blocksize, 128);
    EXPECT_EQ(q.absmax.scalar_type(), at::kFloat);
    std::system(("rm -rf " + out.string()).c_str());
}

}  // namespace

namespace {

std::map<std::string, std::string> files_of(const fs::path& dir) {
    std::map<std::string, std::string> files;
    for (const auto& entry : fs::directory_iterator(dir)) {
        std::ifstream in(entry.path(), std::ios::binary);
        files[entry.path().filename().string()] = std::string(std::istreambuf_iterator<char>(in), {});
    }
    return files;
}

}  // namespace

// An interrupted quantization keeps its finished shards; the rerun loads and quantizes only what they lack and
// writes exactly the files an uninterrupted run writes.
TEST(QuantizeCheckpoint, ResumesAnInterruptedRunAndWritesTheSameFiles) {
    const fs::path root = fs::temp_directory_path() / ("medllm_quantize_resume_" + std::to_string(::getpid()));
    fs::remove_all(root);
    quant::QuantizeOptions options;
    options.max_shard_bytes = 20'000;  // several shards on the tiny model
    quant::quantize_checkpoint(kModel.string(), (root / "whole").string(), options);

    const fs::path out = root / "resumed";
    int64_t total      = 0;
    EXPECT_THROW(quant::quantize_checkpoint(kModel.string(), out.string(), options,
                                            [&](int64_t done, int64_t n, uint64_t) {
                                                total = n;
                                                if (done == n * 2 / 3) throw std::runtime_error("interrupted");
                                            }),
                 std::runtime_error);
    EXPECT_TRUE(fs::exists(out / ".model-shards.json"));
    int64_t loaded    = 0;
    const auto report = quant::quantize_checkpoint(kModel.string(), out.string(), options,
                                                   [&](int64_t, int64_t, uint64_t bytes) { loaded += bytes > 0; });
    EXPECT_GT(report.resumed_tensors, 0);
    EXPECT_LT(loaded, total);  // tensors in the kept shards were not read again
    EXPECT_EQ(files_of(out), files_of(root / "whole"));

    // Other options are another run: nothing is taken over.
    options.blocksize = 128;
    EXPECT_THROW(quant::quantize_checkpoint(kModel.string(), out.string(), options,
                                            [](int64_t done, int64_t n, uint64_t) {
                                                if (done == n / 2) throw std::runtime_error("interrupted");
                                            }),
                 std::runtime_error);
    options.blocksize = 64;
    EXPECT_EQ(quant::quantize_checkpoint(kModel.string(), out.string(), options).resumed_tensors, 0);
    EXPECT_EQ(files_of(out), files_of(root / "whole"));
    fs::remove_all(root);
}

// A weight with a NaN is refused with the tensor and file named, not quantized into garbage.
TEST(QuantizeCheckpoint, NonFiniteWeightIsNamedInTheError) {
    const fs::path root = fs::temp_directory_path() / ("medllm_quantize_nan_" + std::to_string(::getpid()));
    fs::remove_all(root);
    fs::create_directories(root / "model");
    fs::copy_file(kModel / "config.json", root / "model" / "config.json");
    io::CheckpointReader original(kModel.string());
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    const std::string bad = "model.layers.1.mlp.up_proj.weight";
    for (const auto& name : original.names()) {
        at::Tensor t = original.load(name).clone();
        if (name == bad) t.view(-1)[7] = std::numeric_limits<float>::quiet_NaN();
        tensors.emplace_back(name, t);
    }
    io::save_file(root / "model" / "model.safetensors", tensors);
    std::string log;
    EXPECT_EQ(run("quantize --model " + (root / "model").string() + " --output " + (root / "out").string(), &log), 1);
    EXPECT_NE(log.find("'" + bad + "'"), std::string::npos) << log;
    EXPECT_NE(log.find("model.safetensors"), std::string::npos) << log;
    EXPECT_NE(log.find("1 NaN or Inf value"), std::string::npos) << log;
    fs::remove_all(root);
}
