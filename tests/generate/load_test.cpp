// Model loading for generation (medllm/generate/load.h): `--load-in-4bit` against transformers + bitsandbytes +
// PEFT (tests/fixtures/peft/qlora_logits.safetensors, from scripts/make_qlora_fixtures.py), the NF4 base without an
// adapter, and adapters that do not fit the model.
#include <unistd.h>

#include <fstream>
#include <memory>
#include <mutex>

#include <gtest/gtest.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "generate/generate_test_util.h"
#include "medllm/core/error.h"
#include "medllm/generate/load.h"
#include "medllm/io/safetensors.h"
#include "medllm/peft/adapter.h"
#include "medllm/quant/quantize_checkpoint.h"

using namespace medllm;
namespace fs = std::filesystem;

namespace {

fs::path tiny_model() {
    return generate::testing::model_fixture("qwen2-tiny-untied");
}
fs::path peft_fixtures() {
    return fs::path(MEDLLM_FIXTURES_DIR) / "peft";
}

at::Tensor reference(const std::string& name) {
    return io::SafetensorsFile(peft_fixtures() / "qlora_logits.safetensors").tensor(name).clone();
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
    return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

at::Tensor logits_of(model::Qwen2ForCausalLM& m, const at::Tensor& ids) {
    at::NoGradGuard no_grad;
    model::ForwardInputs in;
    in.input_ids = ids;
    return m.forward(in).to(at::kFloat);
}

generate::LoadOptions cpu_fp32() {
    generate::LoadOptions lo;
    lo.device            = "cpu";
    lo.dtype             = "fp32";
    lo.require_tokenizer = false;
    return lo;
}

// Collects what spdlog logs while it lives.
class LogCapture {
public:
    LogCapture() : sink_(std::make_shared<Sink>()), previous_(spdlog::default_logger()) {
        spdlog::set_default_logger(std::make_shared<spdlog::logger>("capture", sink_));
    }
    ~LogCapture() { spdlog::set_default_logger(previous_); }
    std::string text() const { return sink_->text; }

private:
    struct Sink : spdlog::sinks::base_sink<std::mutex> {
        std::string text;
        void sink_it_(const spdlog::details::log_msg& msg) override {
            text.append(msg.payload.data(), msg.payload.size());
            text += '\n';
        }
        void flush_() override {}
    };
    std::shared_ptr<Sink> sink_;
    std::shared_ptr<spdlog::logger> previous_;
};

template <typename Fn>
std::string error_of(Fn fn) {
    try {
        fn();
    } catch (const Error& e) {
        return e.what();
    }
    return "(no error)";
}

}  // namespace

// transformers + bitsandbytes load every nn.Linear but lm_head in NF4, whatever the adapter covers; a QLoRA
// adapter on 3 of the 14 projections (target_modules q/v/up, layers_to_transform [1]) must see the other 11 in NF4
// too. Before the fix they stayed dense and the logits were off by the NF4 error (~0.76 here).
TEST(LoadModel, FourBitWithAPartialAdapterMatchesBitsandbytesAndPeft) {
    const auto ids   = reference("input_ids");
    const auto want  = reference("partial.nf4_logits");
    const auto dense = reference("partial.dense_logits");
    auto lo          = cpu_fp32();
    lo.adapter       = (peft_fixtures() / "tiny-adapter-partial").string();
    lo.quantize_base = true;
    auto loaded      = generate::load_model(tiny_model(), lo);
    int adapted = 0, nf4 = 0;
    for (const auto& [name, layer] : peft::lora_layers(*loaded.model)) {
        nf4 += std::dynamic_pointer_cast<peft::QLoraLinear>(layer) != nullptr;
        adapted += layer->has_adapter();
    }
    EXPECT_EQ(nf4, 14);  // 2 layers x 7 projections
    EXPECT_EQ(adapted, 3);
    const auto got = logits_of(*loaded.model, ids);
    ASSERT_EQ(got.sizes(), want.sizes());
    // Tolerance 1e-4 (logits of magnitude ~1): medllm's NF4 bytes and dequantized values equal bitsandbytes'
    // (tests/quant/nf4_fixture_test.cpp), so only fp32 summation order differs. The NF4 error itself is ~0.76,
    // which the second assertion checks the reference really contains.
    EXPECT_LE(max_abs_diff(got, want), 1e-4) << "medllm --load-in-4bit vs bitsandbytes + PEFT";
    EXPECT_GT(max_abs_diff(dense, want), 100 * 1e-4);

    // The same adapter on a pre-quantized checkpoint (`medllm quantize` writes bitsandbytes' bytes) gives the same.
    const fs::path q4 = fs::path(::testing::TempDir()) / ("load_test_tiny_nf4_" + std::to_string(::getpid()));
    fs::remove_all(q4);
    quant::quantize_checkpoint(tiny_model().string(), q4.string(), quant::QuantizeOptions{});
    auto pre         = cpu_fp32();
    pre.adapter      = lo.adapter;
    const auto again = logits_of(*generate::load_model(q4, pre).model, ids);
    EXPECT_LE(max_abs_diff(again, want), 1e-4);
    fs::remove_all(q4);
}

// Loading an NF4 base without an adapter adds no LoRA layers and says so (it used to log "LoRA r=8 alpha=8 on 14
// modules" for freshly initialized, all-zero adapters).
TEST(LoadModel, FourBitWithoutAnAdapterHasNoLora) {
    LogCapture log;
    auto lo          = cpu_fp32();
    lo.quantize_base = true;
    auto loaded      = generate::load_model(tiny_model(), lo);
    EXPECT_TRUE(peft::adapter_parameters(*loaded.model).empty());
    EXPECT_EQ(peft::lora_layers(*loaded.model).size(), 14u);  // every projection NF4, none adapted
    EXPECT_EQ(log.text().find("LoRA r="), std::string::npos) << log.text();
    EXPECT_NE(log.text().find("NF4 base in 14 of 14 projections, no LoRA adapter"), std::string::npos) << log.text();
}

// An adapter made for another model names the adapter's file and tensor, not the (correct) model folder.
TEST(LoadModel, AnAdapterForAnotherModelNamesTheAdapterAndTensor) {
    const fs::path dir = fs::path(::testing::TempDir()) / ("load_test_bad_adapter_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::copy_file(peft_fixtures() / "tiny-adapter-partial" / peft::kAdapterConfigFile, dir / peft::kAdapterConfigFile);
    const auto write = [&](const std::string& module, int64_t in, int64_t out) {
        io::save_file(dir / peft::kAdapterWeightsFile,
                      {{std::string(peft::kPeftKeyPrefix) + module + ".lora_A.weight", at::zeros({4, in})},
                       {std::string(peft::kPeftKeyPrefix) + module + ".lora_B.weight", at::zeros({out, 4})}},
                      {{"format", "pt"}});
    };
    auto lo                = cpu_fp32();
    lo.adapter             = dir.string();
    const std::string file = (dir / peft::kAdapterWeightsFile).string();
    for (bool quantize : {false, true}) {
        lo.quantize_base = quantize;
        write("model.layers.5.self_attn.q_proj", 64, 64);  // the tiny model has 2 layers
        auto msg = error_of([&] { generate::load_model(tiny_model(), lo); });
        EXPECT_NE(msg.find(file), std::string::npos) << msg;
        EXPECT_NE(msg.find("base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight"), std::string::npos) << msg;
        EXPECT_NE(msg.find("2 layers"), std::string::npos) << msg;
        write("model.layers.1.mlp.up_proj", 128, 160);  // hidden_size 128 instead of 64
        msg = error_of([&] { generate::load_model(tiny_model(), lo); });
        EXPECT_NE(msg.find(file), std::string::npos) << msg;
        EXPECT_NE(msg.find("base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"), std::string::npos) << msg;
        EXPECT_NE(msg.find("takes 64 inputs"), std::string::npos) << msg;
        write("model.layers.1.mlp.down_proj", 160, 128);
        msg = error_of([&] { generate::load_model(tiny_model(), lo); });
        EXPECT_NE(msg.find("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"), std::string::npos) << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
    fs::remove_all(dir);
}
