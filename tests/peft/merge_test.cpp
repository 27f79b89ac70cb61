// `medllm merge` end to end on the tiny model, from a dense base and from a bitsandbytes 4-bit base.
#include <gtest/gtest.h>

#include <array>
#include <fstream>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/peft/adapter.h"
#include "medllm/quant/nf4_serialize.h"
#include "peft/peft_test_util.h"
#include "support/run_medllm.h"

using namespace medllm;
using peft_test::fixture_tensor;
using peft_test::logits_of;
using peft_test::TempDir;
namespace fs = std::filesystem;

namespace {

nlohmann::json read_json(const fs::path& p) {
    std::ifstream in(p);
    return nlohmann::json::parse(in);
}

// bf16(W + scaling·B·A) for one module of the fixture adapter, W given.
at::Tensor expected_merge(const at::Tensor& w, const std::string& module) {
    const std::string prefix = std::string(peft::kPeftKeyPrefix) + module;
    io::SafetensorsFile f(peft_test::tiny_adapter() / peft::kAdapterWeightsFile);
    auto A = f.tensor(prefix + ".lora_A.weight").to(at::kFloat);
    auto B = f.tensor(prefix + ".lora_B.weight").to(at::kFloat);
    return (w.to(at::kFloat) + 2.0 * at::matmul(B, A)).to(at::kBFloat16);  // alpha 8 / r 4
}

// The tiny model as a bitsandbytes 4-bit checkpoint (projections NF4 + double quantization).
void write_4bit_tiny(const fs::path& dir) {
    fs::create_directories(dir);
    io::CheckpointReader reader(peft_test::tiny_model());
    io::CheckpointWriter writer(dir);
    for (const auto& name : reader.names()) {
        auto t = reader.load(name);
        if (name.find("_proj.weight") != std::string::npos) {
            for (auto& [k, v] : quant::nf4_to_state_dict(quant::nf4_quantize(t, 64, true), name)) writer.add(k, v);
        } else {
            writer.add(name, t);
        }
    }
    writer.finish();
    auto cfg                   = read_json(peft_test::tiny_model() / "config.json");
    cfg["quantization_config"] = {{"quant_method", "bitsandbytes"},
                                  {"load_in_4bit", true},
                                  {"bnb_4bit_quant_type", "nf4"},
                                  {"bnb_4bit_use_double_quant", true}};
    std::ofstream(dir / "config.json") << cfg.dump(2);
}

}  // namespace

TEST(MergeCli, MergesIntoABf16CheckpointThatLoads) {
    TempDir tmp;
    const fs::path out = tmp.path / "merged";
    // A tokenizer file beside the base is copied.
    const fs::path base = tmp.path / "base";
    fs::create_directories(base);
    for (const auto& e : fs::directory_iterator(peft_test::tiny_model()))
        fs::copy_file(e.path(), base / e.path().filename());
    std::ofstream(base / "tokenizer_config.json") << "{\"model_max_length\": 256}\n";

    auto r = run_medllm("merge --model " + base.string() + " --adapter " + peft_test::tiny_adapter().string() +
                        " --output " + out.string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(fs::exists(out / "model.safetensors"));
    EXPECT_TRUE(fs::exists(out / "tokenizer_config.json"));
    auto cfg = read_json(out / "config.json");
    EXPECT_EQ(cfg["dtype"], "bfloat16");
    EXPECT_EQ(cfg["hidden_size"], 64);

    io::CheckpointReader merged(out);
    io::CheckpointReader orig(peft_test::tiny_model());
    EXPECT_EQ(merged.names(), orig.names());
    for (const auto& name : merged.names()) {
        auto t = merged.load(name);
        EXPECT_EQ(t.scalar_type(), at::kBFloat16) << name;
        bool adapted = name.find("_proj.weight") != std::string::npos;
        auto expect  = adapted ? expected_merge(orig.load(name), name.substr(0, name.size() - 7))
                               : orig.load(name).to(at::kBFloat16);
        EXPECT_TRUE(at::equal(t, expect)) << name;
    }
    // medllm loads it and gives PEFT's merged logits up to bf16 weight rounding.
    auto m   = model::Qwen2ForCausalLM::from_pretrained(out.string(), at::kFloat);
    auto l   = logits_of(*m, peft_test::tiny_input_ids());
    auto ref = fixture_tensor("tiny_logits.safetensors", "tiny-adapter.merged_logits");
    EXPECT_LE(peft_test::max_abs_diff(l, ref), 0.02 * ref.abs().max().item<double>());
}

TEST(MergeCli, ShardsWhenAsked) {
    TempDir tmp;
    auto r = run_medllm("merge --model " + peft_test::tiny_model().string() + " --adapter " +
                        peft_test::pattern_adapter().string() + " --output " + tmp.path.string() +
                        " --max-shard-bytes 100000");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(fs::exists(tmp.path / "model.safetensors.index.json"));
    io::CheckpointReader merged(tmp.path);
    EXPECT_GT(merged.files().size(), 1u);
    auto m   = model::Qwen2ForCausalLM::from_pretrained(tmp.path.string(), at::kFloat);
    auto l   = logits_of(*m, peft_test::tiny_input_ids());
    auto ref = fixture_tensor("tiny_logits.safetensors", "tiny-adapter-pattern.merged_logits");
    EXPECT_LE(peft_test::max_abs_diff(l, ref), 0.02 * ref.abs().max().item<double>());
}

TEST(MergeCli, DequantizesA4BitBase) {
    TempDir tmp;
    write_4bit_tiny(tmp.path / "base4");
    auto r = run_medllm("merge --model " + (tmp.path / "base4").string() + " --adapter " +
                        peft_test::tiny_adapter().string() + " --output " + (tmp.path / "out").string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto cfg = read_json(tmp.path / "out" / "config.json");
    EXPECT_FALSE(cfg.contains("quantization_config"));
    io::CheckpointReader merged(tmp.path / "out");
    io::CheckpointReader orig(peft_test::tiny_model());
    EXPECT_EQ(merged.names(), orig.names());  // no 4-bit statistics left
    const std::string name = "model.layers.1.mlp.gate_proj.weight";
    auto dq                = quant::nf4_dequantize(quant::nf4_quantize(orig.load(name), 64, true));
    EXPECT_TRUE(at::equal(merged.load(name), expected_merge(dq, "model.layers.1.mlp.gate_proj")));

    // The same 4-bit checkpoint loads for QLoRA training with the fixture adapter, and merging at runtime agrees
    // with the merged checkpoint.
    auto q = peft::load_model_with_adapter((tmp.path / "base4").string(), peft_test::tiny_adapter(), at::kFloat);
    EXPECT_TRUE(std::dynamic_pointer_cast<peft::QLoraLinear>(peft::lora_layers(*q).front().layer) != nullptr);
    auto ids = peft_test::tiny_input_ids();
    auto lq  = logits_of(*q, ids);
    auto mm  = model::Qwen2ForCausalLM::from_pretrained((tmp.path / "out").string(), at::kFloat);
    EXPECT_LE(peft_test::max_abs_diff(logits_of(*mm, ids), lq), 0.02 * lq.abs().max().item<double>());
    // A dense base quantized while streaming gives the same NF4 bytes, hence the same logits.
    auto s = peft::load_model_with_adapter(peft_test::tiny_model().string(), peft_test::tiny_adapter(), at::kFloat,
                                           at::kCPU, /*quantize_base=*/true);
    EXPECT_CLOSE(logits_of(*s, ids), lq, 1e-6);
}

TEST(MergeCli, ErrorsAreOneLineWithExitCodes) {
    TempDir tmp;
    auto missing = run_medllm("merge --model " + peft_test::tiny_model().string() + " --output " + tmp.path.string());
    EXPECT_EQ(missing.exit_code, 2) << missing.output;
    auto no_adapter = run_medllm("merge --model " + peft_test::tiny_model().string() + " --adapter " +
                                 (tmp.path / "none").string() + " --output " + (tmp.path / "o").string());
    // A missing input folder is a usage error, as in every other subcommand.
    EXPECT_EQ(no_adapter.exit_code, 2) << no_adapter.output;
    EXPECT_NE(no_adapter.output.find((tmp.path / "none").string()), std::string::npos) << no_adapter.output;
    // An adapter folder without adapter_config.json is a runtime error naming the file.
    fs::create_directories(tmp.path / "empty");
    auto empty = run_medllm("merge --model " + peft_test::tiny_model().string() + " --adapter " +
                            (tmp.path / "empty").string() + " --output " + (tmp.path / "o").string());
    EXPECT_EQ(empty.exit_code, 1) << empty.output;
    EXPECT_NE(empty.output.find("adapter_config.json"), std::string::npos) << empty.output;
    auto same = run_medllm("merge --model " + peft_test::tiny_model().string() + " --adapter " +
                           peft_test::tiny_adapter().string() + " --output " + peft_test::tiny_model().string());
    EXPECT_EQ(same.exit_code, 2) << same.output;
    // An adapter for another architecture size: the shapes do not fit the base.
    fs::create_directories(tmp.path / "bad");
    fs::copy_file(peft_test::tiny_adapter() / peft::kAdapterConfigFile, tmp.path / "bad" / peft::kAdapterConfigFile);
    io::save_file(tmp.path / "bad" / peft::kAdapterWeightsFile,
                  {{"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", at::zeros({4, 32})},
                   {"base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", at::zeros({64, 4})}});
    auto bad = run_medllm("merge --model " + peft_test::tiny_model().string() + " --adapter " +
                          (tmp.path / "bad").string() + " --output " + (tmp.path / "o2").string());
    EXPECT_EQ(bad.exit_code, 1) << bad.output;
    EXPECT_NE(bad.output.find("q_proj"), std::string::npos) << bad.output;
}

// An interrupted merge keeps its finished shards; rerunning it computes the rest and writes the same checkpoint.
TEST(MergeCli, ResumesAnInterruptedMerge) {
    TempDir tmp;
    const uint64_t shard = 20'000;
    auto whole =
        peft::merge_adapter_checkpoint(peft_test::tiny_model(), peft_test::tiny_adapter(), tmp.path / "whole", shard);
    const fs::path out = tmp.path / "resumed";
    EXPECT_THROW(peft::merge_adapter_checkpoint(peft_test::tiny_model(), peft_test::tiny_adapter(), out, shard,
                                                [](int64_t done, int64_t total, uint64_t) {
                                                    if (done == total * 2 / 3) throw std::runtime_error("interrupted");
                                                }),
                 std::runtime_error);
    int64_t computed = 0;
    auto again       = peft::merge_adapter_checkpoint(peft_test::tiny_model(), peft_test::tiny_adapter(), out, shard,
                                                      [&](int64_t, int64_t, uint64_t bytes) { computed += bytes > 0; });
    EXPECT_LT(computed, again.tensors);
    EXPECT_EQ(again.merged_modules, whole.merged_modules);
    EXPECT_EQ(again.tensors, whole.tensors);
    io::CheckpointReader a(tmp.path / "whole"), b(out);
    ASSERT_EQ(a.names(), b.names());
    for (const auto& name : a.names()) EXPECT_TRUE(at::equal(a.load(name), b.load(name))) << name;
    EXPECT_FALSE(fs::exists(out / ".model-shards.json"));
}
