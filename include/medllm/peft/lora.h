// LoRA and QLoRA linear layers (numerically following PEFT's `lora.Linear` and `lora.Linear4bit`), applied to a
// Qwen2ForCausalLM by replacing its projections in place (see docs/reference/nf4-qlora.md §6).
//
//   y = base(x) + scaling · B(A(dropout(x))),   scaling = alpha / r   (rsLoRA: alpha / sqrt(r))
//
// A layer holds one trainable adapter and, under it, any number of frozen ones (an adapter stack: earlier rounds'
// adapters kept as they were trained instead of merged into a re-quantized base). Every adapter has a PEFT name
// ("default" and others, as PEFT's multi-adapter models); the forward adds every active adapter's output in stack
// order, frozen ones first, as PEFT does with several active adapters:
//
//   y = base(x) + Σ_frozen s_i · B_i(A_i(x)) + s · B(A(x))
//
// The replaced modules keep their HF names, so the base weights stay `...q_proj.weight` / `...q_proj.bias` and
// the adapters are `...q_proj.lora_A.weight` [r, in] and `...q_proj.lora_B.weight` [out, r]; the adapter file
// adds PEFT's `base_model.model.` prefix (adapter.h).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "medllm/model/qwen2.h"
#include "medllm/quant/nf4.h"

namespace medllm::peft {

// The seven Qwen2 projections (QLoRA's recommendation: adapt all linear layers).
const std::vector<std::string>& all_projection_names();

struct LoraConfig {
    int64_t r                               = 8;
    double alpha                            = 8.0;
    double dropout                          = 0.0;
    bool use_rslora                         = false;
    std::vector<std::string> target_modules = all_projection_names();  // short names: q_proj, ..., down_proj
    at::ScalarType adapter_dtype            = at::kFloat;              // PEFT keeps adapters in fp32
    // QLoRA: hold the frozen weights of all seven projections of every layer in NF4 (bitsandbytes layout), the
    // adapted ones and the others, as transformers + bitsandbytes load a 4-bit model (every linear but lm_head).
    bool quantize_base = false;
    int64_t blocksize  = quant::kNf4DefaultBlocksize;
    bool double_quant  = true;
    std::optional<uint64_t> seed;          // adapter init RNG (default: LibTorch's global generator)
    std::string base_model_name_or_path;   // recorded in adapter_config.json
    std::string adapter_name = "default";  // PEFT's name of the trainable adapter (a stack's folder name)

    double scaling() const;
    // Throws UsageError naming the field for r < 1, non-finite alpha, dropout outside [0, 1), unknown targets, a
    // bad adapter name.
    void validate() const;
};

// UsageError unless `name` can name an adapter of a stack (and its folder): 1-64 of [A-Za-z0-9_-]. `what` says
// where the name came from.
void validate_adapter_name(const std::string& name, const std::string& what);

// One module's adapter weights (CPU or device, as given).
struct AdapterWeights {
    at::Tensor A;  // [r, in]
    at::Tensor B;  // [out, r]
    double scaling = 1.0;
};

// A frozen adapter of a layer: no gradient, never trained, kept in its own dtype (registered as buffers, so it
// moves with the model).
struct FrozenAdapter {
    std::string name;
    at::Tensor A, B;  // [r, in], [out, r]
    double scaling   = 1.0;
    double dropout   = 0.0;
    int64_t position = 0;                      // its place in the model's stack (0 = the bottom)
    std::shared_ptr<const LoraConfig> config;  // the adapter's settings, written back when the stack is saved
};

// Common part of LoraLinear and QLoraLinear: the trainable adapter pair, its scaling, dropout, the frozen adapters
// under it, and the on/off/merged state.
class LoraLayer : public model::Projection {
public:
    int64_t in_features() const override { return in_features_; }
    int64_t out_features() const override { return out_features_; }
    at::Tensor forward(const at::Tensor& x) override;

    // Re-initialises A as PEFT does (kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in))) and B = 0.
    void reset_adapter(std::optional<uint64_t> seed = std::nullopt);
    // scaling · B·A of the trainable adapter as an fp32 [out, in] tensor.
    at::Tensor delta_weight() const;
    // Σ scaling_i · B_i·A_i over the frozen adapters, fp32 [out, in] (zeros when there are none).
    at::Tensor frozen_delta_weight() const;

    // Adds a frozen adapter under the trainable one (on top of the frozen ones already there). Throws Error for a
    // shape that does not fit the layer and for a name the layer already holds.
    void add_frozen_adapter(const std::string& name, const at::Tensor& A, const at::Tensor& B, double scaling,
                            double dropout, std::shared_ptr<const LoraConfig> config);
    const std::vector<FrozenAdapter>& frozen_adapters() const { return frozen_; }
    FrozenAdapter& frozen_adapter(const std::string& name);  // Error when the layer has no such adapter

    // Folds every adapter the layer holds (the trainable one and the frozen ones) into the base weight; forward
    // then skips them. unmerge() takes them out again.
    virtual void merge()   = 0;
    virtual void unmerge() = 0;
    bool merged() const { return merged_; }
    bool has_adapter() const { return r_ > 0; }  // a trainable adapter
    bool has_frozen() const { return !frozen_.empty(); }
    int64_t rank() const { return r_; }
    double scaling() const { return scaling_; }
    void set_scaling(double scaling) { scaling_ = scaling; }

    bool adapters_enabled    = true;       // off: the trainable adapter is skipped (disable_adapters() toggles it)
    bool frozen_enabled      = true;       // off: the frozen adapters are skipped (disable_adapters(model, all))
    std::string adapter_name = "default";  // PEFT's name of the trainable adapter
    torch::nn::Linear lora_A{nullptr}, lora_B{nullptr};  // registered as lora_A / lora_B (absent when r == 0)
    at::Tensor bias;                                     // frozen base bias [out] or undefined

protected:
    LoraLayer(int64_t in, int64_t out, int64_t r, double scaling, double dropout, at::ScalarType adapter_dtype,
              at::Device device);
    virtual at::Tensor base_forward(const at::Tensor& x)                              = 0;
    virtual at::Tensor adapted_forward(const at::Tensor& x, const at::Tensor& x_lora) = 0;
    // PEFT's accumulation of several adapters: lora.Linear adds each output to the result promoted to the adapter
    // dtype and casts back once (true); Linear4bit casts each output to the result's dtype before adding (false).
    virtual bool accumulates_in_adapter_dtype() const = 0;
    // Σ of every adapter's delta (the trainable one and the frozen ones), fp32 [out, in]: what merge() folds in
    // and unmerge() takes out (recomputed: no adapter can change while merged, forward does not use them).
    at::Tensor merge_delta() const;

    int64_t in_features_, out_features_, r_;
    double scaling_, dropout_;
    bool merged_ = false;
    std::vector<FrozenAdapter> frozen_;

private:
    at::Tensor stacked_forward(const at::Tensor& x, bool with_trainable);
};

// LoRA over a dense (bf16/fp16/fp32) frozen base weight, as PEFT's lora.Linear.
class LoraLinear : public LoraLayer {
public:
    // Takes the base weight (and bias) of `base` without copying; they are frozen.
    LoraLinear(const model::DenseLinear& base, int64_t r, double scaling, double dropout,
               at::ScalarType adapter_dtype = at::kFloat);
    void merge() override;    // W += scaling·B·A (in place, like PEFT)
    void unmerge() override;  // W -= scaling·B·A
    at::Tensor weight;        // [out, in], frozen

protected:
    at::Tensor base_forward(const at::Tensor& x) override;
    at::Tensor adapted_forward(const at::Tensor& x, const at::Tensor& x_lora) override;
    bool accumulates_in_adapter_dtype() const override { return true; }
};

// LoRA over an NF4 frozen base (QLoRA). Forward and backward go through a custom autograd function: the base
// weight is dequantized on use and never kept (backward dequantizes afresh for the input gradient), it gets no
// gradient, and the LoRA scaling is the alpha of the GEMM that adds the adapter's output.
// With r == 0 it is a plain NF4 linear layer (a projection of a 4-bit checkpoint that is not adapted).
class QLoraLinear : public LoraLayer {
public:
    QLoraLinear(quant::Nf4Tensor base, at::Tensor bias, int64_t r, double scaling, double dropout,
                at::ScalarType adapter_dtype = at::kFloat);
    // Merging keeps a dense copy dequant(W)+scaling·B·A in the base dtype (the weight the adapter was trained
    // against, never re-quantized); unmerge drops it.
    void merge() override;
    void unmerge() override;
    // The frozen weight as a dense [out, in] tensor: dequant(W) in `dtype` (default: the base's original dtype).
    at::Tensor dequantized_weight(std::optional<at::ScalarType> dtype = std::nullopt) const;

    using torch::nn::Module::to;
    void to(at::Device device, bool non_blocking = false) override;
    void to(at::Device device, at::ScalarType dtype, bool non_blocking = false) override;

    quant::Nf4Tensor base;

protected:
    at::Tensor base_forward(const at::Tensor& x) override;
    at::Tensor adapted_forward(const at::Tensor& x, const at::Tensor& x_lora) override;
    bool accumulates_in_adapter_dtype() const override { return false; }

private:
    at::Tensor merged_weight_;
};

// y = x·dequant(W)ᵀ + bias + scaling·(x_lora·Aᵀ)·Bᵀ with a hand-written backward (grads for x, x_lora, A, B and,
// when it requires grad, bias; none for W). A and B may be undefined (base only). Exposed for tests.
at::Tensor qlora_linear(const at::Tensor& x, const at::Tensor& x_lora, const quant::Nf4Tensor& w,
                        const at::Tensor& bias, const at::Tensor& A, const at::Tensor& B, double scaling);

// s·(a·b) with the scale as the GEMM's alpha.
at::Tensor scaled_mm(const at::Tensor& a, const at::Tensor& b, double s);

// ---------------------------------------------------------------- model level

struct NamedLoraLayer {
    std::string name;  // HF module name, e.g. model.layers.0.self_attn.q_proj
    std::shared_ptr<LoraLayer> layer;
};

// Replaces the target projections of every decoder layer by LoraLinear (QLoraLinear when cfg.quantize_base or
// when the projection's base is already NF4), keeping module names, and freezes every non-adapter parameter.
// With cfg.quantize_base the other projections become QLoraLinear without an adapter (r = 0), so the whole base
// is NF4. Returns the adapted layers (those with an adapter). Throws UsageError for a bad config, Error when a
// target projection was already replaced.
std::vector<NamedLoraLayer> apply_lora(model::Qwen2ForCausalLM& model, const LoraConfig& cfg);

// Per-module rank and scaling, keyed by HF module name (an adapter file's modules, PEFT's rank/alpha patterns).
using ModuleRanks = std::map<std::string, std::pair<int64_t, double>>;
// As apply_lora, but adapts exactly the modules in `modules` with their own rank and scaling.
std::vector<NamedLoraLayer> apply_lora(model::Qwen2ForCausalLM& model, const LoraConfig& cfg,
                                       const ModuleRanks& modules);

// The model's LoRA layers (with or without an adapter), in module order.
std::vector<NamedLoraLayer> lora_layers(model::Qwen2ForCausalLM& model);

// Adapter parameters (lora_A/lora_B weights), named as in the model: `model.layers.0.self_attn.q_proj.lora_A.weight`.
std::vector<std::pair<std::string, at::Tensor>> adapter_parameters(model::Qwen2ForCausalLM& model);

// Builds a model for LoRA training from a HF checkpoint directory: a bf16/fp32 checkpoint (all projections'
// weights quantized to NF4 one tensor at a time as they stream when cfg.quantize_base, so no dense copy of them is ever
// resident), or a bitsandbytes 4-bit checkpoint (its NF4 projections load as they are). Non-quantized parameters
// get `dtype`; everything ends on `device`. Then applies LoRA with `cfg`.
// With `modules`, exactly those modules are adapted (see apply_lora).
std::shared_ptr<model::Qwen2ForCausalLM> load_model_for_lora(const std::string& dir, const LoraConfig& cfg,
                                                             at::ScalarType dtype, at::Device device = at::kCPU,
                                                             const ModuleRanks* modules = nullptr);

// The adapters the model holds, bottom of the stack first: the frozen ones in the order they were added, then the
// trainable one (when a layer has one). Empty for a model without LoRA.
std::vector<std::string> adapter_names(model::Qwen2ForCausalLM& model);
// The trainable adapter's name ("default" unless renamed); empty when no layer has a trainable adapter.
std::string trainable_adapter_name(model::Qwen2ForCausalLM& model);

// Adds `weights` (HF module name -> A, B, scaling) as the frozen adapter `name`, on top of the frozen adapters
// already there and under the trainable one; `config` is the adapter's settings (kept for saving the stack; its
// adapter_dtype is the dtype the weights are held in, its dropout applies in training mode as PEFT's). A projection
// without a LoRA layer gets one without a trainable adapter. Throws UsageError for a bad name or one the model
// already holds, Error naming the module for one the model lacks or a shape that does not fit.
void add_frozen_adapter(model::Qwen2ForCausalLM& model, const std::string& name,
                        const std::map<std::string, AdapterWeights>& weights, const LoraConfig& config);

// Renames the trainable adapter of every layer. UsageError for a bad name or one a frozen adapter has.
void set_trainable_adapter_name(model::Qwen2ForCausalLM& model, const std::string& name);

// Which adapters an AdaptersDisabled scope turns off.
enum class Disable {
    trainable,  // the trainable adapter only: the reference of DPO/RPO (base + a stack's frozen adapters)
    all,        // every adapter: the base model (PEFT's disable_adapter())
};

// Scope in which the LoRA layers run without the trainable adapter (the frozen reference model of DPO/RPO: the base
// plus the frozen adapters of a stack) or, with Disable::all, as their base layers. Merged layers are unmerged for
// the scope and merged again at its end.
class AdaptersDisabled {
public:
    explicit AdaptersDisabled(model::Qwen2ForCausalLM& model, Disable which = Disable::trainable);
    ~AdaptersDisabled();
    AdaptersDisabled(const AdaptersDisabled&)            = delete;
    AdaptersDisabled& operator=(const AdaptersDisabled&) = delete;

private:
    struct Saved {
        std::shared_ptr<LoraLayer> layer;
        bool enabled, frozen_enabled, merged;
    };
    std::vector<Saved> saved_;
};
inline AdaptersDisabled disable_adapters(model::Qwen2ForCausalLM& model, Disable which = Disable::trainable) {
    return AdaptersDisabled(model, which);
}

void merge_adapters(model::Qwen2ForCausalLM& model);
void unmerge_adapters(model::Qwen2ForCausalLM& model);

}  // namespace medllm::peft
