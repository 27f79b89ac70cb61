// LoRA on the tiny Qwen2 model: apply_lora, PEFT adapters (logits recorded by PEFT), disable_adapters,
// merge/unmerge, adapter save/load round trips and bad adapter files.
#include <gtest/gtest.h>

#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/peft/adapter.h"
#include "medllm/quant/nf4_serialize.h"
#include "peft/peft_test_util.h"

using namespace medllm;
using peft_test::expect_error;
using peft_test::fixture_tensor;
using peft_test::logits_of;
using peft_test::TempDir;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<model::Qwen2ForCausalLM> base_model() {
    return model::Qwen2ForCausalLM::from_pretrained(peft_test::tiny_model().string(), at::kFloat);
}

std::shared_ptr<model::Qwen2ForCausalLM> adapted(const fs::path& adapter, bool quantize = false) {
    return peft::load_model_with_adapter(peft_test::tiny_model().string(), adapter, at::kFloat, at::kCPU, quantize);
}

void copy_adapter(const fs::path& from, const fs::path& to) {
    fs::create_directories(to);
    for (const char* f : {peft::kAdapterConfigFile, peft::kAdapterWeightsFile})
        fs::copy_file(from / f, to / f, fs::copy_options::overwrite_existing);
}

void edit_config(const fs::path& dir, const std::function<void(nlohmann::json&)>& edit) {
    std::ifstream in(dir / peft::kAdapterConfigFile);
    auto j = nlohmann::json::parse(in);
    edit(j);
    std::ofstream(dir / peft::kAdapterConfigFile) << j.dump(2);
}

}  // namespace

TEST(ApplyLora, ReplacesTheSevenProjectionsKeepingNamesAndFreezesTheBase) {
    auto m    = base_model();
    auto ids  = peft_test::tiny_input_ids();
    auto base = logits_of(*m, ids);
    peft::LoraConfig cfg;
    cfg.r       = 4;
    cfg.seed    = 1;
    auto layers = peft::apply_lora(*m, cfg);
    EXPECT_EQ(layers.size(), 14u);  // 2 layers x 7
    EXPECT_EQ(layers.front().name, "model.layers.0.self_attn.q_proj");
    std::set<std::string> trainable;
    bool saw_base_weight = false;
    for (const auto& p : m->named_parameters()) {
        if (p.value().requires_grad()) trainable.insert(p.key());
        if (p.key() == "model.layers.1.mlp.down_proj.weight") saw_base_weight = true;
    }
    EXPECT_TRUE(saw_base_weight);
    EXPECT_EQ(trainable.size(), 28u);
    EXPECT_TRUE(trainable.count("model.layers.0.self_attn.q_proj.lora_A.weight"));
    EXPECT_TRUE(trainable.count("model.layers.1.mlp.down_proj.lora_B.weight"));
    EXPECT_EQ(peft::adapter_parameters(*m).size(), 28u);
    // B = 0 at init: the adapted model is the base model.
    EXPECT_CLOSE(logits_of(*m, ids), base, 1e-6);
    EXPECT_THROW(peft::apply_lora(*m, cfg), Error);  // already adapted
}

TEST(ApplyLora, TargetsAreConfigurable) {
    auto m = base_model();
    peft::LoraConfig cfg;
    cfg.target_modules = {"q_proj", "v_proj"};
    auto layers        = peft::apply_lora(*m, cfg);
    ASSERT_EQ(layers.size(), 4u);
    EXPECT_EQ(layers[1].name, "model.layers.0.self_attn.v_proj");
    EXPECT_TRUE(std::dynamic_pointer_cast<model::DenseLinear>(m->model->layers[0]->self_attn->k_proj) != nullptr);
}

TEST(PeftAdapter, LoadsAndGivesPeftLogits) {
    auto ids = peft_test::tiny_input_ids();
    auto m   = adapted(peft_test::tiny_adapter());
    EXPECT_CLOSE(logits_of(*m, ids), fixture_tensor("tiny_logits.safetensors", "tiny-adapter.logits"), 1e-4);
    auto p = adapted(peft_test::pattern_adapter());
    EXPECT_EQ(peft::lora_layers(*p).size(), 6u);  // q, v, down in 2 layers
    EXPECT_CLOSE(logits_of(*p, ids), fixture_tensor("tiny_logits.safetensors", "tiny-adapter-pattern.logits"), 1e-4);
    for (const auto& [name, layer] : peft::lora_layers(*p)) {
        if (name.find("down_proj") != std::string::npos) {
            EXPECT_EQ(layer->rank(), 2);
            EXPECT_DOUBLE_EQ(layer->scaling(), 8.0 / std::sqrt(2.0));  // rsLoRA with the rank pattern
        } else if (name.find("v_proj") != std::string::npos) {
            EXPECT_DOUBLE_EQ(layer->scaling(), 3.0 / 2.0);  // alpha pattern 3 / sqrt(4)
        }
    }
}

TEST(PeftAdapter, DisableAdaptersGivesTheBaseModel) {
    auto ids  = peft_test::tiny_input_ids();
    auto m    = adapted(peft_test::tiny_adapter());
    auto with = logits_of(*m, ids);
    auto base = fixture_tensor("tiny_logits.safetensors", "base.logits");
    EXPECT_GT(peft_test::max_abs_diff(with, base), 1e-2);  // the adapter matters
    {
        auto scope = peft::disable_adapters(*m);
        EXPECT_CLOSE(logits_of(*m, ids), base, 1e-5);
    }
    EXPECT_CLOSE(logits_of(*m, ids), with, 1e-6);
    // Merged adapters are taken out for the scope and put back after it.
    peft::merge_adapters(*m);
    {
        auto scope = peft::disable_adapters(*m);
        EXPECT_CLOSE(logits_of(*m, ids), base, 1e-5);
    }
    EXPECT_TRUE(peft::lora_layers(*m).front().layer->merged());
    EXPECT_CLOSE(logits_of(*m, ids), with, 1e-4);
}

TEST(PeftAdapter, MergeMatchesPeftMergeAndUnmergeRestores) {
    auto ids = peft_test::tiny_input_ids();
    auto m   = adapted(peft_test::tiny_adapter());
    auto w0  = m->named_parameters()["model.layers.0.mlp.up_proj.weight"].clone();
    peft::merge_adapters(*m);
    EXPECT_GT(peft_test::max_abs_diff(m->named_parameters()["model.layers.0.mlp.up_proj.weight"], w0), 1e-4);
    EXPECT_CLOSE(logits_of(*m, ids), fixture_tensor("tiny_logits.safetensors", "tiny-adapter.merged_logits"), 1e-4);
    peft::unmerge_adapters(*m);
    EXPECT_CLOSE(m->named_parameters()["model.layers.0.mlp.up_proj.weight"], w0, 1e-6);
    EXPECT_CLOSE(logits_of(*m, ids), fixture_tensor("tiny_logits.safetensors", "tiny-adapter.logits"), 1e-4);
}

TEST(PeftAdapter, QuantizedBaseEqualsDenseModelOnTheDequantizedWeights) {
    auto ids = peft_test::tiny_input_ids();
    auto q   = adapted(peft_test::tiny_adapter(), /*quantize=*/true);
    auto d   = adapted(peft_test::tiny_adapter());
    {
        at::NoGradGuard no_grad;
        for (const auto& [name, layer] : peft::lora_layers(*q)) {
            auto ql = std::dynamic_pointer_cast<peft::QLoraLinear>(layer);
            ASSERT_TRUE(ql) << name;
            EXPECT_EQ(ql->base.blocksize, 64);
            EXPECT_TRUE(ql->base.nested);
            d->named_parameters()[name + ".weight"].copy_(ql->dequantized_weight(at::kFloat));
        }
    }
    auto lq = logits_of(*q, ids);
    EXPECT_CLOSE(lq, logits_of(*d, ids), 1e-4);
    // The NF4 model is close to, but not equal to, the dense one.
    auto exact = fixture_tensor("tiny_logits.safetensors", "tiny-adapter.logits");
    EXPECT_GT(peft_test::max_abs_diff(lq, exact), 1e-4);
    // Training step through the whole quantized model: gradients reach every adapter and nothing else.
    model::ForwardInputs in;
    in.input_ids = ids;
    auto loss    = q->forward(in).logsumexp(-1).mean();
    loss.backward();
    for (const auto& p : q->named_parameters()) {
        bool lora = p.key().find("lora_") != std::string::npos;
        EXPECT_EQ(p.value().grad().defined(), lora) << p.key();
    }
    {
        auto scope  = peft::disable_adapters(*q);
        auto base_q = logits_of(*q, ids);
        EXPECT_GT(peft_test::max_abs_diff(base_q, lq), 1e-2);
    }
}

TEST(PeftAdapter, SaveLoadRoundTripWithPeftKeys) {
    auto ids = peft_test::tiny_input_ids();
    auto m   = adapted(peft_test::tiny_adapter());
    {
        at::NoGradGuard no_grad;
        for (auto& [name, p] : peft::adapter_parameters(*m)) p.mul_(1.5).add_(0.01);
    }
    auto logits = logits_of(*m, ids);
    TempDir tmp;
    auto cfg                    = peft::read_adapter_config(peft_test::tiny_adapter()).lora;
    cfg.base_model_name_or_path = "tiny";
    peft::save_adapter(*m, cfg, tmp.path);

    io::SafetensorsFile saved(tmp.path / peft::kAdapterWeightsFile);
    io::SafetensorsFile peft_file(peft_test::tiny_adapter() / peft::kAdapterWeightsFile);
    EXPECT_EQ(saved.names().size(), 28u);
    auto sorted = [](std::vector<std::string> v) {
        std::sort(v.begin(), v.end());
        return v;
    };
    EXPECT_EQ(sorted(saved.names()), sorted(peft_file.names()));  // exactly PEFT's key names
    EXPECT_EQ(saved.metadata().at("format"), "pt");
    EXPECT_EQ(saved.info("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").shape,
              peft_file.info("base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight").shape);
    std::ifstream in(tmp.path / peft::kAdapterConfigFile);
    auto j = nlohmann::json::parse(in);
    EXPECT_EQ(j["peft_type"], "LORA");
    EXPECT_EQ(j["r"], 4);
    EXPECT_EQ(j["lora_alpha"], 8);
    EXPECT_EQ(j["task_type"], "CAUSAL_LM");
    EXPECT_EQ(j["target_modules"].size(), 7u);

    auto fresh = adapted(peft_test::tiny_adapter());
    EXPECT_GT(peft_test::max_abs_diff(logits_of(*fresh, ids), logits), 1e-3);
    peft::load_adapter(*fresh, tmp.path);
    EXPECT_CLOSE(logits_of(*fresh, ids), logits, 1e-6);
    auto reloaded = adapted(tmp.path);
    EXPECT_CLOSE(logits_of(*reloaded, ids), logits, 1e-6);
}

TEST(PeftAdapter, PatternAdapterRoundTripKeepsRanksAndScalings) {
    auto ids = peft_test::tiny_input_ids();
    auto p   = adapted(peft_test::pattern_adapter());
    TempDir tmp;
    peft::save_adapter(*p, peft::read_adapter_config(peft_test::pattern_adapter()).lora, tmp.path);
    auto again = adapted(tmp.path);
    EXPECT_CLOSE(logits_of(*again, ids), fixture_tensor("tiny_logits.safetensors", "tiny-adapter-pattern.logits"),
                 1e-4);
}

TEST(PeftAdapterErrors, NameTheFileAndKey) {
    TempDir tmp;
    const fs::path dir         = tmp.path / "a";
    const std::string cfg_file = (dir / peft::kAdapterConfigFile).string();
    const std::string st_file  = (dir / peft::kAdapterWeightsFile).string();

    // Not an adapter directory.
    expect_error<Error>([&] { peft::read_adapter_config(tmp.path / "nope"); }, {"adapter_config.json", "not found"});

    // Malformed JSON.
    copy_adapter(peft_test::tiny_adapter(), dir);
    std::ofstream(dir / peft::kAdapterConfigFile) << "{\"peft_type\": \"LORA\", \"r\": ";
    expect_error<Error>([&] { peft::read_adapter_config(dir); }, {cfg_file, "invalid JSON"});

    // Wrong types, missing and unsupported keys.
    copy_adapter(peft_test::tiny_adapter(), dir);
    edit_config(dir, [](auto& j) { j["r"] = "four"; });
    expect_error<UsageError>([&] { peft::read_adapter_config(dir); }, {cfg_file, "'r'"});
    copy_adapter(peft_test::tiny_adapter(), dir);
    edit_config(dir, [](auto& j) { j.erase("peft_type"); });
    expect_error<UsageError>([&] { peft::read_adapter_config(dir); }, {cfg_file, "'peft_type'", "missing"});
    copy_adapter(peft_test::tiny_adapter(), dir);
    edit_config(dir, [](auto& j) { j["use_dora"] = true; });
    expect_error<UsageError>([&] { peft::read_adapter_config(dir); }, {cfg_file, "use_dora"});
    copy_adapter(peft_test::tiny_adapter(), dir);
    edit_config(dir, [](auto& j) { j["peft_type"] = "IA3"; });
    expect_error<UsageError>([&] { peft::read_adapter_config(dir); }, {cfg_file, "IA3"});

    // Wrong rank in the config.
    copy_adapter(peft_test::tiny_adapter(), dir);
    edit_config(dir, [](auto& j) { j["r"] = 8; });
    expect_error<Error>([&] { adapted(dir); }, {st_file, "lora_A.weight", "r=8"});

    // Missing key.
    copy_adapter(peft_test::tiny_adapter(), dir);
    {
        io::SafetensorsFile f(peft_test::tiny_adapter() / peft::kAdapterWeightsFile);
        std::vector<std::pair<std::string, at::Tensor>> keep;
        for (const auto& n : f.names())
            if (n != "base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight")
                keep.emplace_back(n, f.tensor(n).clone());
        io::save_file(dir / peft::kAdapterWeightsFile, keep);
    }
    expect_error<Error>([&] { adapted(dir); },
                        {st_file, "missing tensor", "model.layers.1.self_attn.o_proj.lora_B.weight"});

    // A model adapted with a different rank refuses the file, naming the tensor and both shapes.
    copy_adapter(peft_test::tiny_adapter(), dir);
    auto m = base_model();
    peft::LoraConfig other;
    other.r = 2;
    peft::apply_lora(*m, other);
    expect_error<Error>([&] { peft::load_adapter(*m, dir); }, {st_file, "q_proj.lora_A.weight", "[4, 64]", "[2, 64]"});

    // A model adapting more modules than the file holds.
    auto qv = base_model();
    peft::LoraConfig qv_cfg;
    qv_cfg.r              = 4;
    qv_cfg.target_modules = {"q_proj", "v_proj"};
    peft::apply_lora(*qv, qv_cfg);
    expect_error<Error>([&] { peft::load_adapter(*qv, dir); }, {st_file, "names a module the model does not adapt"});
    auto full = adapted(peft_test::tiny_adapter());
    expect_error<Error>([&] { peft::load_adapter(*full, peft_test::pattern_adapter()); }, {"missing tensor", "k_proj"});

    // Unknown key and a truncated file.
    {
        io::SafetensorsFile f(peft_test::tiny_adapter() / peft::kAdapterWeightsFile);
        std::vector<std::pair<std::string, at::Tensor>> all;
        for (const auto& n : f.names()) all.emplace_back(n, f.tensor(n).clone());
        all.emplace_back("base_model.model.model.layers.0.self_attn.q_proj.weight", at::zeros({64, 64}));
        io::save_file(dir / peft::kAdapterWeightsFile, all);
    }
    expect_error<Error>([&] { adapted(dir); }, {st_file, "q_proj.weight'", "not a LoRA weight"});
    // A diverged run's adapter (NaN in one lora_B) is refused, not merged into garbage.
    {
        io::SafetensorsFile f(peft_test::tiny_adapter() / peft::kAdapterWeightsFile);
        std::vector<std::pair<std::string, at::Tensor>> all;
        for (const auto& n : f.names()) {
            at::Tensor t = f.tensor(n).clone();
            if (n == "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight") {
                t.view(-1)[0] = std::numeric_limits<float>::quiet_NaN();
                t.view(-1)[1] = std::numeric_limits<float>::infinity();
            }
            all.emplace_back(n, t);
        }
        io::save_file(dir / peft::kAdapterWeightsFile, all);
    }
    expect_error<Error>([&] { adapted(dir); },
                        {st_file, "layers.1.mlp.down_proj.lora_B.weight'", "2 NaN or Inf values"});
    { std::ofstream(dir / peft::kAdapterWeightsFile, std::ios::binary) << "\x10\0\0\0"; }
    expect_error<Error>([&] { adapted(dir); }, {st_file});
    // Only a pickle adapter.
    fs::remove(dir / peft::kAdapterWeightsFile);
    std::ofstream(dir / "adapter_model.bin") << "x";
    expect_error<UsageError>([&] { adapted(dir); }, {"adapter_model.bin", "safe_serialization"});
}

// Writes an adapter saved by medllm, medllm's logits and a `medllm merge` output for
// `scripts/make_peft_fixtures.py --check DIR` (DIR = $MEDLLM_PEFT_CHECK_DIR, else a temporary directory).
TEST(PeftCheck, WritesPeftCheckDirectory) {
    TempDir tmp;
    const char* env    = std::getenv("MEDLLM_PEFT_CHECK_DIR");
    const fs::path dir = env ? fs::path(env) : tmp.path;
    fs::create_directories(dir);
    auto ids = peft_test::tiny_input_ids();
    auto m   = adapted(peft_test::tiny_adapter());
    {
        at::NoGradGuard no_grad;
        auto gen = at::make_generator<at::CPUGeneratorImpl>(99);
        for (auto& [name, p] : peft::adapter_parameters(*m)) p.add_(at::randn(p.sizes(), gen) * 0.02);
    }
    auto cfg = peft::read_adapter_config(peft_test::tiny_adapter()).lora;
    peft::save_adapter(*m, cfg, dir / "adapter");
    auto stats = peft::merge_adapter_checkpoint(peft_test::tiny_model(), dir / "adapter", dir / "merged");
    EXPECT_EQ(stats.merged_modules, 14);
    auto merged        = model::Qwen2ForCausalLM::from_pretrained((dir / "merged").string(), at::kFloat);
    auto merged_logits = logits_of(*merged, ids);
    auto logits        = logits_of(*m, ids);
    EXPECT_LE(peft_test::max_abs_diff(merged_logits, logits), 5e-2);  // bf16 weights
    io::save_file(dir / "medllm.safetensors",
                  {{"input_ids", ids}, {"logits", logits}, {"merged_logits", merged_logits}});
}

// Activation checkpointing recomputes each layer in backward; with LoRA dropout active the recomputation must draw
// the forward's masks again, or the gradients belong to a different network than the loss. Dense and NF4 bases.
TEST(LoraTraining, CheckpointingReplaysDropoutMasks) {
    for (bool quantize : {false, true}) {
        peft::LoraConfig cfg;
        cfg.r             = 4;
        cfg.alpha         = 8;
        cfg.dropout       = 0.3;
        cfg.quantize_base = quantize;
        cfg.seed          = 5;
        auto m            = peft::load_model_for_lora(peft_test::tiny_model().string(), cfg, at::kFloat);
        {
            at::NoGradGuard no_grad;
            for (auto& item : peft::lora_layers(*m)) item.layer->lora_B->weight.normal_(0, 0.05);
        }
        m->train();
        const at::Tensor ids = peft_test::tiny_input_ids();
        auto run             = [&](bool checkpoint) {
            m->zero_grad();
            m->model->gradient_checkpointing = checkpoint;
            at::manual_seed(1234);
            model::ForwardInputs in;
            in.input_ids    = ids;
            const auto loss = model::causal_lm_loss(m->forward_hidden(in).hidden, m->lm_head_weight(), ids);
            loss.backward();
            const at::Tensor after = at::rand({4});  // where the generator stands once backward is done
            std::map<std::string, at::Tensor> grads;
            for (const auto& [name, p] : peft::adapter_parameters(*m)) grads[name] = p.grad().clone();
            return std::make_tuple(loss.item<double>(), grads, after);
        };
        const auto [plain_loss, plain, plain_after] = run(false);
        const auto [ckpt_loss, ckpt, ckpt_after]    = run(true);
        EXPECT_DOUBLE_EQ(plain_loss, ckpt_loss);
        ASSERT_FALSE(plain.empty());
        for (const auto& [name, g] : plain) {
            EXPECT_GT(g.abs().sum().item<double>(), 0.0) << name;
            EXPECT_LE(peft_test::max_abs_diff(ckpt.at(name), g), 1e-6) << name << (quantize ? " (nf4)" : "");
        }
        EXPECT_TRUE(at::equal(plain_after, ckpt_after)) << "the replay must leave the generator where forward left it";
    }
}
