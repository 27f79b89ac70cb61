// NF4 against bitsandbytes 0.50 (CPU backend): golden data from scripts/make_nf4_fixtures.py.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "fixture_reader.h"
#include "medllm/quant/nf4.h"
#include "medllm/quant/nf4_serialize.h"

namespace medllm::quant {
namespace {

const testing::FixtureFile& fixtures() {
    static const testing::FixtureFile file =
        testing::read_fixture(std::string(MEDLLM_FIXTURES_DIR) + "/quant/nf4_bnb.safetensors");
    return file;
}

struct Case {
    std::string name;
    std::vector<int64_t> shape;
    std::string dtype;
    int64_t blocksize;
    bool double_quant;
};

std::vector<Case> cases() {
    std::vector<Case> out;
    for (const auto& entry : nlohmann::json::parse(fixtures().metadata.at("cases"))) {
        out.push_back({entry.at("name"), entry.at("shape").get<std::vector<int64_t>>(), entry.at("dtype"),
                       entry.at("blocksize"), entry.at("double_quant")});
    }
    return out;
}

// Bitwise equality (treats -0.0 and 0.0 as different, which value comparison would hide).
void expect_same_bits(const at::Tensor& actual, const at::Tensor& expected, const std::string& what) {
    ASSERT_EQ(actual.scalar_type(), expected.scalar_type()) << what;
    ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
    const at::Tensor a = actual.contiguous(), e = expected.contiguous();
    ASSERT_EQ(std::memcmp(a.data_ptr(), e.data_ptr(), a.nbytes()), 0) << what << ": bytes differ";
}

TEST(Nf4Fixtures, TablesMatchBitsandbytes) {
    const at::Tensor code = fixtures().at("nf4_code");
    for (int i = 0; i < 16; ++i) EXPECT_EQ(code[i].item<float>(), nf4_code()[i]) << "nf4 code " << i;
    const at::Tensor map = fixtures().at("dynamic_map");
    for (int i = 0; i < 256; ++i) EXPECT_EQ(map[i].item<float>(), dynamic_map()[i]) << "dynamic map " << i;
}

TEST(Nf4Fixtures, CasesCoverTheEdgeCases) {
    const auto all = cases();
    EXPECT_GE(all.size(), 10u);
    bool odd = false, tail = false, zero = false;
    for (const auto& c : all) {
        int64_t n = 1;
        for (int64_t d : c.shape) n *= d;
        odd |= n % 2 == 1;
        tail |= n % c.blocksize != 0;
        zero |= c.name.rfind("zeros", 0) == 0;
    }
    EXPECT_TRUE(odd && tail && zero);
}

TEST(Nf4Fixtures, QuantizeMatchesBitsandbytesBytes) {
    for (const auto& c : cases()) {
        SCOPED_TRACE(c.name);
        const std::string p    = c.name + "/";
        const at::Tensor input = fixtures().at(p + "input");
        const Nf4Tensor w      = nf4_quantize(input, c.blocksize, c.double_quant);
        EXPECT_EQ(w.shape, c.shape);
        EXPECT_EQ(w.dtype, input.scalar_type());
        EXPECT_EQ(w.nested, c.double_quant);
        expect_same_bits(w.packed, fixtures().at(p + "packed"), "packed");
        expect_same_bits(w.absmax, fixtures().at(p + "absmax"), "absmax");
        if (c.double_quant) {
            expect_same_bits(w.nested_absmax, fixtures().at(p + "nested_absmax"), "nested_absmax");
            expect_same_bits(w.nested_quant_map, fixtures().at(p + "nested_quant_map"), "nested_quant_map");
            EXPECT_EQ(w.offset, fixtures().at(p + "offset")[0].item<float>());
        }
        expect_same_bits(nf4_absmax(w), fixtures().at(p + "absmax_f32"), "rebuilt absmax");
    }
}

TEST(Nf4Fixtures, DequantizeMatchesBitsandbytesValues) {
    for (const auto& c : cases()) {
        SCOPED_TRACE(c.name);
        const std::string p = c.name + "/";
        // Dequantize bitsandbytes' own state (not ours), so this checks the loader path independently.
        const Nf4Tensor w = nf4_from_state_dict(
            [&] {
                std::map<std::string, at::Tensor> sd;
                sd["w"] = fixtures().at(p + "packed");
                for (const auto& [key, t] : fixtures().tensors) {
                    const std::string prefix = p + "state.";
                    if (key.rfind(prefix, 0) == 0) sd["w." + key.substr(prefix.size())] = t;
                }
                return sd;
            }(),
            "w");
        expect_same_bits(nf4_dequantize(w), fixtures().at(p + "dequant"), "dequantized (original dtype)");
        expect_same_bits(nf4_dequantize(w, at::kFloat), fixtures().at(p + "dequant_f32"), "dequantized fp32");
    }
}

TEST(Nf4Fixtures, SerializedStateMatchesBitsandbytes) {
    for (const auto& c : cases()) {
        SCOPED_TRACE(c.name);
        const std::string p  = c.name + "/";
        const Nf4Tensor w    = nf4_quantize(fixtures().at(p + "input"), c.blocksize, c.double_quant);
        const auto sd        = nf4_to_state_dict(w, "w");
        size_t expected_keys = 0;
        for (const auto& [key, t] : fixtures().tensors) {
            const std::string prefix = p + "state.";
            if (key.rfind(prefix, 0) != 0) continue;
            ++expected_keys;
            const std::string ours = "w." + key.substr(prefix.size());
            ASSERT_TRUE(sd.count(ours)) << ours;
            expect_same_bits(sd.at(ours), t, ours);  // includes the quant_state JSON, byte for byte
        }
        EXPECT_EQ(sd.size(), expected_keys + 1);  // + the packed weight itself
        expect_same_bits(sd.at("w"), fixtures().at(p + "packed"), "packed weight");
    }
}

TEST(Nf4Fixtures, Linear4bitStateDictLoadsAndMatchesForward) {
    std::map<std::string, at::Tensor> sd;
    for (const auto& [key, t] : fixtures().tensors) {
        if (key.rfind("linear/sd.", 0) == 0) sd[key.substr(10)] = t;
    }
    ASSERT_TRUE(has_nf4_state(sd, "weight"));
    const Nf4Tensor w = nf4_from_state_dict(sd, "weight");
    EXPECT_TRUE(w.nested);
    EXPECT_EQ(w.shape, (std::vector<int64_t>{24, 192}));
    const at::Tensor y = nf4_linear(fixtures().at("linear/x"), w, sd.at("bias"));
    EXPECT_TRUE(at::allclose(y, fixtures().at("linear/y"), 1e-5, 1e-5))
        << (y - fixtures().at("linear/y")).abs().max().item<float>();
    // Round trip: our state dict for the same weight is identical to the one bitsandbytes wrote.
    const auto ours = nf4_to_state_dict(w, "weight");
    for (const auto& [key, t] : ours) expect_same_bits(t, sd.at(key), key);
}

TEST(Nf4Fixtures, TransformersCheckpointLoadsAndIsReproducedByteForByte) {
    std::map<std::string, at::Tensor> hf;
    for (const auto& [key, t] : fixtures().tensors) {
        if (key.rfind("hf/", 0) == 0) hf[key.substr(3)] = t;
    }
    int weights = 0;
    for (const auto& [key, t] : fixtures().tensors) {
        if (key.rfind("hf_orig/", 0) != 0) continue;
        const std::string weight_key = key.substr(8);
        SCOPED_TRACE(weight_key);
        ++weights;
        ASSERT_TRUE(has_nf4_state(hf, weight_key));
        // Load what transformers saved and dequantize it ...
        const Nf4Tensor loaded = nf4_from_state_dict(hf, weight_key);
        EXPECT_EQ(loaded.dtype, at::kBFloat16);
        EXPECT_EQ(loaded.shape, t.sizes().vec());
        const at::Tensor restored = nf4_dequantize(loaded);
        EXPECT_LT((restored.to(at::kFloat) - t.to(at::kFloat)).abs().max().item<float>(),
                  t.to(at::kFloat).abs().max().item<float>() * 0.3f);
        // ... and quantize the original bf16 weight ourselves: every checkpoint entry is identical.
        const auto ours = nf4_to_state_dict(nf4_quantize(t, 64, true), weight_key);
        for (const auto& [entry, value] : ours) {
            ASSERT_TRUE(hf.count(entry)) << entry;
            expect_same_bits(value, hf.at(entry), entry);
        }
    }
    EXPECT_EQ(weights, 7);  // q, k, v, o, gate, up, down of the one layer
    const auto config = nlohmann::json::parse(fixtures().metadata.at("hf_quantization_config"));
    EXPECT_EQ(config.at("bnb_4bit_quant_type"), "nf4");
    EXPECT_EQ(config.at("quant_method"), "bitsandbytes");
}

}  // namespace
}  // namespace medllm::quant
