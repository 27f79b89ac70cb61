// Adapter stacks: several named LoRA adapters per layer (frozen ones under a trainable one), against PEFT (a stack
// PEFT saved, and its logits: scripts/make_peft_stack_fixtures.py), against merging (the stacked forward equals the
// merged forward; `medllm merge` folds a whole stack), the reference pass (trainable off, frozen on), saving and
// loading in PEFT's multi-adapter layout, and bad stack files.
#include <gtest/gtest.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/peft/adapter.h"
#include "peft/peft_test_util.h"
#include "support/run_medllm.h"

using namespace medllm;
using peft_test::expect_error;
using peft_test::logits_of;
using peft_test::max_abs_diff;
using peft_test::TempDir;
namespace fs = std::filesystem;

namespace {

fs::path stack_fixture() {
    return peft_test::fixtures() / "tiny-stack";
}

at::Tensor stack_tensor(const std::string& name) {
    return peft_test::fixture_tensor("tiny_stack_logits.safetensors", name);
}

std::shared_ptr<model::Qwen2ForCausalLM> load_stack(const fs::path& dir, at::ScalarType dtype = at::kFloat,
                                                    bool quantize = false) {
    return peft::load_model_with_adapter(peft_test::tiny_model().string(), dir, dtype, at::kCPU, quantize);
}

nlohmann::json read_json(const fs::path& p) {
    std::ifstream in(p);
    return nlohmann::json::parse(in);
}

std::map<std::string, at::Tensor> read_tensors(const fs::path& file) {
    io::SafetensorsFile f(file);
    std::map<std::string, at::Tensor> out;
    for (const auto& n : f.names()) out[n] = f.tensor(n).clone();
    return out;
}

void copy_tree(const fs::path& from, const fs::path& to) {
    fs::create_directories(to);
    fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
}

void randomize_trainable(model::Qwen2ForCausalLM& m, uint64_t seed, double scale) {
    at::NoGradGuard no_grad;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    for (auto& [name, p] : peft::adapter_parameters(m)) p.add_(at::randn(p.sizes(), gen) * scale);
}

}  // namespace

TEST(AdapterStack, APeftStackLoadsAndGivesPeftLogits) {
    const auto ids = stack_tensor("input_ids");
    auto m         = load_stack(stack_fixture());
    EXPECT_EQ(peft::adapter_names(*m), (std::vector<std::string>{"default", "rpo"}));
    EXPECT_EQ(peft::trainable_adapter_name(*m), "rpo");  // the top of the stack
    // fp32 both sides, the same sums in the same order (PEFT: base, then each active adapter): ~1e-6 observed.
    EXPECT_LE(max_abs_diff(logits_of(*m, ids), stack_tensor("stack.logits")), 1e-4);
    // The modules only the frozen adapter adapts (k, o) and only the top one adapts (gate, down) are LoRA layers.
    int frozen_only = 0, trainable_only = 0;
    for (const auto& [name, layer] : peft::lora_layers(*m)) {
        frozen_only += layer->has_frozen() && !layer->has_adapter();
        trainable_only += !layer->has_frozen() && layer->has_adapter();
    }
    EXPECT_EQ(frozen_only, 4);     // k, o in 2 layers
    EXPECT_EQ(trainable_only, 4);  // gate, down in 2 layers
    // Only the trainable adapter's weights train.
    EXPECT_EQ(peft::adapter_parameters(*m).size(), 16u);  // q, v, gate, down x 2 layers x (A, B)
    for (const auto& p : m->named_parameters())
        EXPECT_EQ(p.value().requires_grad(), p.key().find(".lora_") != std::string::npos) << p.key();
}

TEST(AdapterStack, TheReferencePassIsTheFrozenStackAndDisableAllIsTheBase) {
    const auto ids  = stack_tensor("input_ids");
    auto m          = load_stack(stack_fixture());
    const auto full = logits_of(*m, ids);
    {
        auto off = peft::disable_adapters(*m);  // DPO/RPO's reference: the trainable adapter off, the frozen on
        EXPECT_LE(max_abs_diff(logits_of(*m, ids), stack_tensor("default.logits")), 1e-4);
    }
    {
        auto off = peft::disable_adapters(*m, peft::Disable::all);
        EXPECT_LE(max_abs_diff(logits_of(*m, ids), stack_tensor("base.logits")), 1e-4);
    }
    EXPECT_TRUE(at::equal(logits_of(*m, ids), full));  // the scopes restore every flag
    // The three differ, so the checks above could fail.
    EXPECT_GT(max_abs_diff(stack_tensor("stack.logits"), stack_tensor("default.logits")), 1e-2);
    EXPECT_GT(max_abs_diff(stack_tensor("default.logits"), stack_tensor("base.logits")), 1e-2);
}

// The stacked forward equals the merged forward (every adapter folded into the weight), in fp32 and in bf16.
TEST(AdapterStack, StackedForwardEqualsTheMergedForward) {
    const auto ids = stack_tensor("input_ids");
    {
        auto m             = load_stack(stack_fixture());
        const auto stacked = logits_of(*m, ids);
        peft::merge_adapters(*m);
        const auto merged = logits_of(*m, ids);
        // fp32: W·x + Σ s·B·A·x against (W + Σ s·B·A)·x, rounding only (logits ~1): observed ~1e-6.
        EXPECT_LE(max_abs_diff(stacked, merged), 1e-5);
        // and PEFT's merge_and_unload with both adapters active
        EXPECT_LE(max_abs_diff(merged, stack_tensor("stack.merged_logits")), 1e-4);
        {
            auto off = peft::disable_adapters(*m);  // a merged stack unmerges for the reference pass
            EXPECT_LE(max_abs_diff(logits_of(*m, ids), stack_tensor("default.logits")), 1e-4);
        }
        EXPECT_LE(max_abs_diff(logits_of(*m, ids), merged), 1e-5);
        peft::unmerge_adapters(*m);
        EXPECT_LE(max_abs_diff(logits_of(*m, ids), stacked), 1e-5);
    }
    {
        // bf16 base: the stacked forward adds the fp32 adapters' outputs to the bf16 base output (PEFT's
        // lora.Linear); merged, the sum is rounded into the bf16 weight. Both are within bf16 rounding of the fp32
        // stack: the tolerance is 2 % of the largest logit, as for the single-adapter merge (merge_test.cpp).
        auto m             = load_stack(stack_fixture(), at::kBFloat16);
        const auto stacked = logits_of(*m, ids);
        peft::merge_adapters(*m);
        const auto merged = logits_of(*m, ids);
        const auto ref    = stack_tensor("stack.logits");
        const double tol  = 0.02 * ref.abs().max().item<double>();
        EXPECT_LE(max_abs_diff(stacked, ref), tol);
        EXPECT_LE(max_abs_diff(merged, ref), tol);
        EXPECT_LE(max_abs_diff(stacked, merged), tol);
    }
}

// On an NF4 base the stacked forward equals the merged one (dequant(W) + Σ s·B·A, what QLoraLinear::merge keeps):
// the frozen adapters sit on the same quantized base they were trained on, nothing is re-quantized.
TEST(AdapterStack, QloraStackEqualsItsDequantizedMerge) {
    const auto ids     = stack_tensor("input_ids");
    auto m             = load_stack(stack_fixture(), at::kFloat, /*quantize=*/true);
    const auto stacked = logits_of(*m, ids);
    EXPECT_GT(max_abs_diff(stacked, stack_tensor("stack.logits")), 1e-3);  // NF4 changes the base
    peft::merge_adapters(*m);
    EXPECT_LE(max_abs_diff(logits_of(*m, ids), stacked), 1e-5);
    peft::unmerge_adapters(*m);
    // The reference pass is the NF4 base plus the frozen adapter: the single-adapter QLoRA model of "default".
    TempDir tmp;
    fs::create_directories(tmp.path / "default");
    for (const char* f : {peft::kAdapterConfigFile, peft::kAdapterWeightsFile})
        fs::copy_file(stack_fixture() / f, tmp.path / "default" / f);
    auto single = load_stack(tmp.path / "default", at::kFloat, true);
    auto off    = peft::disable_adapters(*m);
    EXPECT_LE(max_abs_diff(logits_of(*m, ids), logits_of(*single, ids)), 1e-5);
}

// Training through a stack: the trainable adapter's gradients are those of the same adapter on the base with the
// frozen adapters merged in (fp32), and the frozen adapters get none.
TEST(AdapterStack, GradientsFlowToTheTrainableAdapterOnly) {
    const auto ids = stack_tensor("input_ids");
    auto stacked   = load_stack(stack_fixture());
    randomize_trainable(*stacked, 3, 0.05);
    // The same model with the frozen adapter folded into dense weights: merge the whole stack, then take the
    // trainable adapter out again (unmerging only it), leaving W + s·B·A of "default" in the weight.
    auto folded = load_stack(stack_fixture());
    {
        at::NoGradGuard no_grad;
        auto a = peft::adapter_parameters(*stacked), b = peft::adapter_parameters(*folded);
        for (size_t i = 0; i < a.size(); ++i) b[i].second.copy_(a[i].second);
        for (auto& [name, layer] : peft::lora_layers(*folded)) {
            auto dense = std::dynamic_pointer_cast<peft::LoraLinear>(layer);
            ASSERT_TRUE(dense);
            dense->weight.add_(layer->frozen_delta_weight());
            layer->frozen_enabled = false;
        }
    }
    auto grads = [&](model::Qwen2ForCausalLM& m) {
        model::ForwardInputs in;
        in.input_ids = ids;
        auto w       = at::randn({m.config.vocab_size}, at::make_generator<at::CPUGeneratorImpl>(5));
        (m.forward(in) * w).sum().backward();
        std::vector<at::Tensor> out;
        for (auto& [name, p] : peft::adapter_parameters(m)) out.push_back(p.grad().clone());
        return out;
    };
    const auto gs = grads(*stacked), gf = grads(*folded);
    ASSERT_EQ(gs.size(), gf.size());
    for (size_t i = 0; i < gs.size(); ++i) {
        ASSERT_TRUE(gs[i].defined());
        EXPECT_GT(gs[i].abs().max().item<double>(), 0.0);
        // fp32, the same math in another association: relative to the gradient's size.
        EXPECT_LE(max_abs_diff(gs[i], gf[i]), 1e-4 * std::max(1.0, gf[i].abs().max().item<double>())) << i;
    }
    for (const auto& [name, layer] : peft::lora_layers(*stacked))
        for (const auto& f : layer->frozen_adapters()) {
            EXPECT_FALSE(f.A.requires_grad());
            EXPECT_FALSE(f.A.grad().defined());
        }
}

// medllm saves a stack as PEFT does (default in the folder, the others in subfolders, the same keys and tensors)
// plus adapter_stack.json; it loads back to the same model.
TEST(AdapterStack, SavesPeftsMultiAdapterLayout) {
    TempDir tmp;
    const auto ids = stack_tensor("input_ids");
    auto m         = load_stack(stack_fixture());
    auto cfg       = peft::read_adapter_config(stack_fixture() / "rpo").lora;
    peft::save_adapter(*m, cfg, tmp.path / "stack");
    EXPECT_EQ(read_json(tmp.path / "stack" / peft::kAdapterStackFile)["adapters"],
              nlohmann::json::array({"default", "rpo"}));
    for (const char* sub : {"", "rpo"}) {
        const auto mine = tmp.path / "stack" / sub, peft_dir = stack_fixture() / sub;
        const auto a = read_tensors(mine / peft::kAdapterWeightsFile),
                   b = read_tensors(peft_dir / peft::kAdapterWeightsFile);
        ASSERT_EQ(a.size(), b.size()) << sub;
        for (const auto& [k, t] : b) {
            ASSERT_TRUE(a.count(k)) << k;
            EXPECT_TRUE(at::equal(a.at(k), t)) << k;
        }
        const auto ca = read_json(mine / peft::kAdapterConfigFile), cb = read_json(peft_dir / peft::kAdapterConfigFile);
        for (const char* key : {"r", "lora_alpha", "use_rslora", "peft_type", "lora_dropout"})
            EXPECT_EQ(ca[key], cb[key]) << sub << " " << key;
        auto ta = ca["target_modules"].get<std::vector<std::string>>(),
             tb = cb["target_modules"].get<std::vector<std::string>>();
        std::sort(ta.begin(), ta.end());
        std::sort(tb.begin(), tb.end());
        EXPECT_EQ(ta, tb) << sub;
    }
    auto back = load_stack(tmp.path / "stack");
    EXPECT_TRUE(at::equal(logits_of(*back, ids), logits_of(*m, ids)));

    // A trained top adapter round-trips, and load_adapter (a resume) copies a stack into a model with that stack.
    randomize_trainable(*m, 7, 0.02);
    peft::save_adapter(*m, cfg, tmp.path / "trained");
    auto again = load_stack(stack_fixture());
    peft::load_adapter(*again, tmp.path / "trained");
    EXPECT_TRUE(at::equal(logits_of(*again, ids), logits_of(*m, ids)));
    EXPECT_GT(max_abs_diff(logits_of(*again, ids), stack_tensor("stack.logits")), 1e-4);
    // Saving one adapter where a stack was removes the stack's record.
    auto single = load_stack(stack_fixture() / "rpo");
    peft::save_adapter(*single, cfg, tmp.path / "trained");
    EXPECT_FALSE(fs::exists(tmp.path / "trained" / peft::kAdapterStackFile));
    // A single adapter loads into the trainable one, which must adapt the same modules.
    fs::create_directories(tmp.path / "default_only");
    for (const char* f : {peft::kAdapterConfigFile, peft::kAdapterWeightsFile})
        fs::copy_file(stack_fixture() / f, tmp.path / "default_only" / f);
    expect_error<Error>([&] { peft::load_adapter(*again, tmp.path / "default_only"); },
                        {"default_only", "layers.0.self_attn.q_proj.lora_A.weight", "[4, 64]", "[2, 64]"});
    // A stack of other names is refused naming both.
    auto renamed = load_stack(stack_fixture());
    peft::set_trainable_adapter_name(*renamed, "round2");
    expect_error<Error>([&] { peft::load_adapter(*renamed, tmp.path / "stack"); },
                        {peft::kAdapterStackFile, "[default, rpo]", "[default, round2]"});
}

// `medllm merge` folds every adapter of a stack; a PEFT folder without adapter_stack.json can be merged by naming
// its adapters' folders.
TEST(AdapterStack, MergeFoldsTheWholeStack) {
    TempDir tmp;
    const auto ids = stack_tensor("input_ids");
    auto r = run_medllm("merge --model " + peft_test::tiny_model().string() + " --adapter " + stack_fixture().string() +
                        " --output " + (tmp.path / "a").string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("merged 2 adapters on 12 modules"), std::string::npos) << r.output;
    auto merged    = model::Qwen2ForCausalLM::from_pretrained((tmp.path / "a").string(), at::kFloat);
    const auto ref = stack_tensor("stack.merged_logits");
    // bf16 weights: as the single-adapter merge, 2 % of the largest logit.
    EXPECT_LE(max_abs_diff(logits_of(*merged, ids), ref), 0.02 * ref.abs().max().item<double>());

    // The folder PEFT wrote, without medllm's record: default alone, or both folders named.
    copy_tree(stack_fixture(), tmp.path / "peft");
    fs::remove(tmp.path / "peft" / peft::kAdapterStackFile);
    r = run_medllm("merge --model " + peft_test::tiny_model().string() + " --adapter " + (tmp.path / "peft").string() +
                   " --adapter " + (tmp.path / "peft" / "rpo").string() + " --output " + (tmp.path / "b").string());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto a = read_tensors(tmp.path / "a" / "model.safetensors"),
               b = read_tensors(tmp.path / "b" / "model.safetensors");
    ASSERT_EQ(a.size(), b.size());
    for (const auto& [k, t] : a) EXPECT_TRUE(at::equal(t, b.at(k))) << k;
    // The PEFT folder alone is its default adapter: visibly other logits (so the checks above can fail).
    peft::merge_adapter_checkpoint(peft_test::tiny_model(), tmp.path / "peft", tmp.path / "d");
    auto d = model::Qwen2ForCausalLM::from_pretrained((tmp.path / "d").string(), at::kFloat);
    EXPECT_GT(max_abs_diff(logits_of(*d, ids), ref), 0.05 * ref.abs().max().item<double>());
}

TEST(AdapterStack, BadStackFilesAreOneClearLine) {
    TempDir tmp;
    const fs::path d    = tmp.path / "s";
    const auto manifest = [&](const std::string& text) {
        copy_tree(stack_fixture(), d);
        std::ofstream(d / peft::kAdapterStackFile) << text;
    };
    const std::string file = (d / peft::kAdapterStackFile).string();
    manifest("[1, 2]");
    expect_error<UsageError>([&] { peft::read_adapter_stack(d); }, {file, "expected a JSON object"});
    manifest("{\"adapters\": []}");
    expect_error<UsageError>([&] { peft::read_adapter_stack(d); }, {file, "key 'adapters'", "non-empty"});
    manifest("{\"adapters\": [\"default\", \"default\"]}");
    expect_error<UsageError>([&] { peft::read_adapter_stack(d); }, {file, "'default' twice"});
    manifest("{\"adapters\": [\"rpo\"]}");
    expect_error<UsageError>([&] { peft::read_adapter_stack(d); }, {file, "must include 'default'"});
    manifest("{\"adapters\": [\"default\", \"../x\"]}");
    expect_error<UsageError>([&] { peft::read_adapter_stack(d); }, {file, "'../x' is not an adapter name"});
    manifest("{\"adapters\": [\"default\", \"gone\"]}");
    expect_error<Error>([&] { load_stack(d); }, {file, "adapter 'gone' has no", "gone/adapter_config.json"});
    // An adapter of the stack that does not fit the base is named with its file.
    manifest("{\"adapters\": [\"default\", \"rpo\"]}");
    {
        auto j = read_json(d / "rpo" / peft::kAdapterConfigFile);
        j["r"] = 3;
        std::ofstream(d / "rpo" / peft::kAdapterConfigFile) << j.dump(2);
    }
    expect_error<Error>([&] { load_stack(d); }, {(d / "rpo" / peft::kAdapterWeightsFile).string(), "r=3"});
    // Names.
    auto m = load_stack(stack_fixture());
    expect_error<UsageError>([&] { peft::set_trainable_adapter_name(*m, "default"); }, {"'default'", "frozen"});
    expect_error<UsageError>([&] { peft::set_trainable_adapter_name(*m, "a.b"); }, {"'a.b' is not an adapter name"});
    expect_error<UsageError>([&] { peft::add_frozen_adapter(*m, "default", {}, peft::LoraConfig{}); },
                             {"already holds an adapter"});
}

// Writes a stack and its merge for `scripts/make_peft_stack_fixtures.py --check DIR` (PEFT loads medllm's stack):
// MEDLLM_PEFT_STACK_CHECK_DIR=DIR build/test_peft --gtest_filter=StackPeftCheck.*
TEST(StackPeftCheck, WritesPeftCheckDirectory) {
    TempDir tmp;
    const char* env    = std::getenv("MEDLLM_PEFT_STACK_CHECK_DIR");
    const fs::path dir = env ? fs::path(env) : tmp.path;
    fs::create_directories(dir);
    const auto ids = stack_tensor("input_ids");
    auto m         = load_stack(stack_fixture());
    randomize_trainable(*m, 11, 0.02);
    peft::save_adapter(*m, peft::read_adapter_config(stack_fixture() / "rpo").lora, dir / "stack");
    const auto stats = peft::merge_adapter_checkpoint(peft_test::tiny_model(), dir / "stack", dir / "merged");
    EXPECT_EQ(stats.merged_modules, 12);
    auto merged              = model::Qwen2ForCausalLM::from_pretrained((dir / "merged").string(), at::kFloat);
    const auto logits        = logits_of(*m, ids);
    const auto merged_logits = logits_of(*merged, ids);
    at::Tensor reference;
    {
        auto off  = peft::disable_adapters(*m);
        reference = logits_of(*m, ids);
    }
    EXPECT_LE(max_abs_diff(merged_logits, logits), 0.02 * logits.abs().max().item<double>());
    io::save_file(
        dir / "medllm.safetensors",
        {{"input_ids", ids}, {"logits", logits}, {"reference_logits", reference}, {"merged_logits", merged_logits}});
}
