// LoRA and QLoRA linear layers as PEFT computes them, applied to a Qwen2 model in place.
#include "medllm/peft/lora.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "medllm/core/error.h"
#include "medllm/io/safetensors.h"
#include "medllm/model/checkpoint_check.h"
#include "medllm/quant/nf4_serialize.h"

namespace medllm::peft {

// s·(a·b) as one GEMM (the scale is the GEMM's alpha; beta = 0 so the 0-dim input is never read).
at::Tensor scaled_mm(const at::Tensor& a, const at::Tensor& b, double s) {
    return at::addmm(at::zeros({}, a.options()), a, b, /*beta=*/0, /*alpha=*/s);
}

const std::vector<std::string>& all_projection_names() {
    static const std::vector<std::string> names = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};
    return names;
}

double LoraConfig::scaling() const {
    return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

void LoraConfig::validate() const {
    if (r < 1) throw UsageError("lora: r must be >= 1, got " + std::to_string(r));
    if (!std::isfinite(alpha)) throw UsageError("lora: alpha must be finite");
    if (!(dropout >= 0.0 && dropout < 1.0))
        throw UsageError("lora: dropout must be in [0, 1), got " + std::to_string(dropout));
    if (target_modules.empty()) throw UsageError("lora: target_modules is empty");
    const auto& known = all_projection_names();
    for (const auto& t : target_modules) {
        if (std::find(known.begin(), known.end(), t) == known.end())
            throw UsageError("lora: unknown target module '" + t +
                             "' (Qwen2 projections: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj)");
    }
    if (!at::isFloatingType(adapter_dtype)) throw UsageError("lora: adapter dtype must be a floating type");
    validate_adapter_name(adapter_name, "lora: adapter name");
    if (quantize_base && !quant::is_valid_nf4_blocksize(blocksize))
        throw UsageError("lora: NF4 blocksize must be a power of two in [32, 4096], got " + std::to_string(blocksize));
}

void validate_adapter_name(const std::string& name, const std::string& what) {
    // The name is a folder of a saved stack and part of buffer names: no separators, no dots, nothing to escape.
    const bool ok = !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    });
    if (!ok) throw UsageError(what + ": '" + name + "' is not an adapter name (1-64 of A-Z a-z 0-9 _ -)");
}

// ---------------------------------------------------------------- LoraLayer

LoraLayer::LoraLayer(int64_t in, int64_t out, int64_t r, double scaling, double dropout, at::ScalarType adapter_dtype,
                     at::Device device)
    : in_features_(in), out_features_(out), r_(r), scaling_(scaling), dropout_(dropout) {
    if (r < 0) throw UsageError("lora: rank must be >= 0, got " + std::to_string(r));
    if (r > 0) {
        lora_A = register_module("lora_A", torch::nn::Linear(torch::nn::LinearOptions(in, r).bias(false)));
        lora_B = register_module("lora_B", torch::nn::Linear(torch::nn::LinearOptions(r, out).bias(false)));
        lora_A->to(device, adapter_dtype);
        lora_B->to(device, adapter_dtype);
        reset_adapter();
    }
}

void LoraLayer::reset_adapter(std::optional<uint64_t> seed) {
    if (!has_adapter()) return;
    at::NoGradGuard no_grad;
    // kaiming_uniform_(a=sqrt(5)) on [r, in]: gain sqrt(2/(1+5)), bound = sqrt(3)·gain/sqrt(fan_in) = 1/sqrt(in).
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features_));
    at::Tensor a       = at::empty({r_, in_features_}, at::TensorOptions().dtype(at::kFloat));
    if (seed) {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(*seed);
        a.uniform_(-bound, bound, gen);
    } else {
        a.uniform_(-bound, bound);
    }
    lora_A->weight.copy_(a);
    lora_B->weight.zero_();
}

at::Tensor LoraLayer::delta_weight() const {
    if (!has_adapter()) throw Error("lora: layer has no adapter");
    at::NoGradGuard no_grad;
    auto B = lora_B->weight.to(at::kFloat), A = lora_A->weight.to(at::kFloat);
    return scaled_mm(B, A, scaling_);
}

at::Tensor LoraLayer::frozen_delta_weight() const {
    at::NoGradGuard no_grad;
    if (frozen_.empty()) return at::zeros({out_features_, in_features_}, at::TensorOptions().dtype(at::kFloat));
    at::Tensor sum;
    for (const auto& f : frozen_) {
        auto d = scaled_mm(f.B.to(at::kFloat), f.A.to(at::kFloat), f.scaling);
        sum    = sum.defined() ? sum + d : d;
    }
    return sum;
}

at::Tensor LoraLayer::merge_delta() const {
    if (!has_adapter()) return frozen_delta_weight();
    if (!has_frozen()) return delta_weight();
    at::Tensor d = frozen_delta_weight();
    return d.to(lora_A->weight.device()) + delta_weight();
}

void LoraLayer::add_frozen_adapter(const std::string& name, const at::Tensor& A, const at::Tensor& B, double scaling,
                                   double dropout, std::shared_ptr<const LoraConfig> config) {
    if (A.dim() != 2 || B.dim() != 2 || A.size(1) != in_features_ || B.size(0) != out_features_ ||
        B.size(1) != A.size(0))
        throw Error("lora: adapter '" + name + "' with A " + c10::str(A.sizes()) + " and B " + c10::str(B.sizes()) +
                    " does not fit a [" + std::to_string(out_features_) + ", " + std::to_string(in_features_) +
                    "] layer");
    for (const auto& f : frozen_)
        if (f.name == name) throw Error("lora: the layer already holds an adapter named '" + name + "'");
    if (merged_) throw Error("lora: cannot add adapter '" + name + "' to a merged layer (unmerge first)");
    at::NoGradGuard no_grad;
    FrozenAdapter f;
    f.name    = name;
    f.A       = register_buffer("frozen_" + name + "_lora_A", A.detach().clone());
    f.B       = register_buffer("frozen_" + name + "_lora_B", B.detach().clone());
    f.scaling = scaling;
    f.dropout = dropout;
    f.config  = std::move(config);
    frozen_.push_back(std::move(f));
}

FrozenAdapter& LoraLayer::frozen_adapter(const std::string& name) {
    for (auto& f : frozen_)
        if (f.name == name) return f;
    throw Error("lora: the layer holds no adapter named '" + name + "'");
}

at::Tensor LoraLayer::forward(const at::Tensor& x) {
    const bool trainable = has_adapter() && adapters_enabled;
    const bool frozen    = has_frozen() && frozen_enabled;
    if (merged_ || (!trainable && !frozen)) return base_forward(x);
    if (frozen) return stacked_forward(x, trainable);
    // Dropout applies to the adapter's input only (PEFT).
    at::Tensor x_lora = (dropout_ > 0.0 && is_training()) ? at::dropout(x, dropout_, true) : x;
    return adapted_forward(x, x_lora);
}

// Several adapters, as PEFT's forward with several active adapters: the base output, then each adapter's output
// added in stack order (frozen ones first, the trainable one last), each with its own dropout mask. Autograd
// carries the gradients (of x through every adapter, of the trainable A and B); the frozen tensors have none.
at::Tensor LoraLayer::stacked_forward(const at::Tensor& x, bool with_trainable) {
    const at::Tensor base     = base_forward(x);
    const auto out_dtype      = base.scalar_type();
    const auto out_shape      = base.sizes().vec();
    const bool in_adapter_dty = accumulates_in_adapter_dtype();
    at::Tensor acc            = base.reshape({-1, out_features_});
    auto add                  = [&](const at::Tensor& A, const at::Tensor& B, double s, double p) {
        const at::Tensor xin = (p > 0.0 && is_training()) ? at::dropout(x, p, true) : x;
        const at::Tensor xa  = at::matmul(xin.to(A.scalar_type()), A.t()).reshape({-1, A.size(0)});
        if (in_adapter_dty)  // lora.Linear: result + lora (promoted to the adapter dtype), cast back at the end
            acc = at::addmm(acc.to(A.scalar_type()), xa, B.t(), 1, s);
        else  // Linear4bit: each output cast to the result's dtype, then added
            acc = acc + scaled_mm(xa, B.t(), s).to(out_dtype);
    };
    for (const auto& f : frozen_) add(f.A, f.B, f.scaling, f.dropout);
    if (with_trainable) add(lora_A->weight, lora_B->weight, scaling_, dropout_);
    return acc.to(out_dtype).reshape(out_shape);
}

// ---------------------------------------------------------------- LoraLinear

LoraLinear::LoraLinear(const model::DenseLinear& base, int64_t r, double scaling, double dropout,
                       at::ScalarType adapter_dtype)
    : LoraLayer(base.in_features(), base.out_features(), r, scaling, dropout, adapter_dtype, base.weight.device()) {
    weight = register_parameter("weight", base.weight, /*requires_grad=*/false);
    if (base.bias.defined()) bias = register_parameter("bias", base.bias, /*requires_grad=*/false);
}

at::Tensor LoraLinear::base_forward(const at::Tensor& x) {
    return at::linear(x, weight, bias);
}

at::Tensor LoraLinear::adapted_forward(const at::Tensor& x, const at::Tensor& x_lora) {
    at::Tensor result = at::linear(x, weight, bias);
    const auto& A     = lora_A->weight;
    const auto& B     = lora_B->weight;
    auto out_shape    = result.sizes().vec();
    auto xa           = at::matmul(x_lora.to(A.scalar_type()), A.t()).reshape({-1, r_});
    auto result2d     = result.reshape({-1, out_features_});
    // result + scaling·(xa·Bᵀ) as one GEMM with alpha = scaling, beta = 1; promoted like PEFT's `result + lora`.
    if (result.scalar_type() == A.scalar_type()) return at::addmm(result2d, xa, B.t(), 1, scaling_).view(out_shape);
    return at::addmm(result2d.to(A.scalar_type()), xa, B.t(), 1, scaling_).to(result.scalar_type()).view(out_shape);
}

void LoraLinear::merge() {
    if (merged_ || (!has_adapter() && !has_frozen())) return;
    at::NoGradGuard no_grad;
    weight.add_(merge_delta().to(weight.device()));
    merged_ = true;
}

void LoraLinear::unmerge() {
    if (!merged_) return;
    at::NoGradGuard no_grad;
    weight.sub_(merge_delta().to(weight.device()));
    merged_ = false;
}

// ---------------------------------------------------------------- QLoRA autograd function

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The NF4 state travels in saved_data (tensors are shared, not copied), so a backward never depends on the layer
// object still holding the same quantized weight.
void stash_nf4(AutogradContext* ctx, const quant::Nf4Tensor& w) {
    auto& d        = ctx->saved_data;
    d["packed"]    = w.packed;
    d["absmax"]    = w.absmax;
    d["quant_map"] = w.quant_map;
    d["nested"]    = w.nested;
    if (w.nested) {
        d["nested_absmax"]    = w.nested_absmax;
        d["nested_quant_map"] = w.nested_quant_map;
    }
    d["offset"]           = static_cast<double>(w.offset);
    d["nested_blocksize"] = w.nested_blocksize;
    d["shape"]            = w.shape;
    d["dtype"]            = static_cast<int64_t>(w.dtype);
    d["blocksize"]        = w.blocksize;
}

quant::Nf4Tensor unstash_nf4(AutogradContext* ctx) {
    auto& d = ctx->saved_data;
    quant::Nf4Tensor w;
    w.packed    = d["packed"].toTensor();
    w.absmax    = d["absmax"].toTensor();
    w.quant_map = d["quant_map"].toTensor();
    w.nested    = d["nested"].toBool();
    if (w.nested) {
        w.nested_absmax    = d["nested_absmax"].toTensor();
        w.nested_quant_map = d["nested_quant_map"].toTensor();
    }
    w.offset           = static_cast<float>(d["offset"].toDouble());
    w.nested_blocksize = d["nested_blocksize"].toInt();
    w.shape            = d["shape"].toIntVector();
    w.dtype            = static_cast<at::ScalarType>(d["dtype"].toInt());
    w.blocksize        = d["blocksize"].toInt();
    return w;
}

struct QLoraFunction : public torch::autograd::Function<QLoraFunction> {
    static at::Tensor forward(AutogradContext* ctx, at::Tensor x, at::Tensor x_lora, at::Tensor bias, at::Tensor A,
                              at::Tensor B, double scaling, const quant::Nf4Tensor& w) {
        const int64_t out = w.shape[0], in = w.shape[1];
        // Forward runs without autograd, so nf4_linear takes its fused/workspace paths and keeps no weight.
        // Absent bias / adapter arrive as empty tensors (autograd functions cannot take undefined inputs).
        const bool has_bias = bias.numel() > 0, has_adapter = A.numel() > 0;
        at::Tensor y = quant::nf4_linear(x, w, has_bias ? std::optional<at::Tensor>(bias) : std::nullopt);
        at::Tensor xl, xa;
        if (has_adapter) {
            xl      = x_lora.reshape({-1, in}).to(A.scalar_type());
            xa      = at::mm(xl, A.t());  // [N, r]
            auto y2 = y.view({-1, out});
            if (y.scalar_type() == A.scalar_type()) {
                y2.addmm_(xa, B.t(), 1, scaling);  // y += scaling·xa·Bᵀ in one GEMM
            } else {
                // PEFT's Linear4bit: the adapter output is computed in the adapter dtype, cast, then added.
                y2.add_(scaled_mm(xa, B.t(), scaling).to(y.scalar_type()));
            }
        }
        stash_nf4(ctx, w);
        ctx->saved_data["scaling"]     = scaling;
        ctx->saved_data["x_dtype"]     = static_cast<int64_t>(x.scalar_type());
        ctx->saved_data["x_shape"]     = x.sizes().vec();
        ctx->saved_data["xl_dtype"]    = static_cast<int64_t>(x_lora.scalar_type());
        ctx->saved_data["xl_shape"]    = x_lora.sizes().vec();
        ctx->saved_data["bias_dtype"]  = static_cast<int64_t>(bias.scalar_type());
        ctx->saved_data["has_adapter"] = has_adapter;
        if (has_adapter) ctx->save_for_backward({xl, xa, A, B});
        return y;
    }

    static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
        const auto w      = unstash_nf4(ctx);
        const int64_t out = w.shape[0], in = w.shape[1];
        const double s         = ctx->saved_data["scaling"].toDouble();
        const bool has_adapter = ctx->saved_data["has_adapter"].toBool();
        auto saved             = ctx->get_saved_variables();
        at::Tensor xl, xa, A, B;
        if (has_adapter) xl = saved[0], xa = saved[1], A = saved[2], B = saved[3];
        at::Tensor g = grad_out[0].reshape({-1, out});
        at::Tensor grad_x, grad_xl, grad_bias, grad_A, grad_B;
        if (ctx->needs_input_grad(0)) {
            // Dequantized afresh into the reused workspace (bitsandbytes' order: to the stored dtype, then to the
            // gradient's dtype); nothing dense survives the call.
            grad_x = quant::nf4_linear_input_grad(g, w).view(ctx->saved_data["x_shape"].toIntVector());
            grad_x = grad_x.to(static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt()));
        }
        if (ctx->needs_input_grad(2))
            grad_bias = g.sum(0).to(static_cast<at::ScalarType>(ctx->saved_data["bias_dtype"].toInt()));
        if (has_adapter) {
            at::Tensor gl  = g.to(A.scalar_type());
            at::Tensor gBs = scaled_mm(gl, B, s);  // scaling·g·B [N, r], shared by dA and dx_lora
            if (ctx->needs_input_grad(4)) grad_B = scaled_mm(gl.t(), xa, s);
            if (ctx->needs_input_grad(3)) grad_A = at::mm(gBs.t(), xl);
            if (ctx->needs_input_grad(1)) {
                grad_xl = at::mm(gBs, A)
                              .to(static_cast<at::ScalarType>(ctx->saved_data["xl_dtype"].toInt()))
                              .view(ctx->saved_data["xl_shape"].toIntVector());
            }
        }
        (void)in;
        return {grad_x, grad_xl, grad_bias, grad_A, grad_B, at::Tensor(), at::Tensor()};
    }
};

}  // namespace

at::Tensor qlora_linear(const at::Tensor& x, const at::Tensor& x_lora, const quant::Nf4Tensor& w,
                        const at::Tensor& bias, const at::Tensor& A, const at::Tensor& B, double scaling) {
    if (w.shape.size() != 2) throw Error("qlora_linear: the NF4 weight must be 2-D");
    if (A.defined() != B.defined()) throw Error("qlora_linear: lora_A and lora_B must both be given or both omitted");
    if (A.defined() && (A.dim() != 2 || B.dim() != 2 || A.size(1) != w.shape[1] || B.size(0) != w.shape[0] ||
                        B.size(1) != A.size(0))) {
        throw Error("qlora_linear: adapter shapes A " + c10::str(A.sizes()) + ", B " + c10::str(B.sizes()) +
                    " do not fit the weight [" + std::to_string(w.shape[0]) + ", " + std::to_string(w.shape[1]) + "]");
    }
    at::Tensor xl = x_lora.defined() ? x_lora : x;
    if (xl.sizes() != x.sizes()) throw Error("qlora_linear: x_lora must have the shape of x");
    const at::Tensor none = at::empty({0}, x.options());
    return QLoraFunction::apply(x, xl, bias.defined() ? bias : none, A.defined() ? A : none, B.defined() ? B : none,
                                scaling, w);
}

// ---------------------------------------------------------------- QLoraLinear

QLoraLinear::QLoraLinear(quant::Nf4Tensor base_weight, at::Tensor base_bias, int64_t r, double scaling, double dropout,
                         at::ScalarType adapter_dtype)
    : LoraLayer(base_weight.shape.size() == 2 ? base_weight.shape[1] : 0,
                base_weight.shape.size() == 2 ? base_weight.shape[0] : 0, r, scaling, dropout, adapter_dtype,
                base_weight.device()),
      base(std::move(base_weight)) {
    if (base.shape.size() != 2) throw Error("QLoraLinear: the NF4 weight must be 2-D [out, in]");
    base.validate("QLoraLinear weight");
    if (base_bias.defined()) bias = register_parameter("bias", base_bias, /*requires_grad=*/false);
}

at::Tensor QLoraLinear::dequantized_weight(std::optional<at::ScalarType> dtype) const {
    return quant::nf4_dequantize(base, dtype);
}

at::Tensor QLoraLinear::base_forward(const at::Tensor& x) {
    if (merged_)
        return at::linear(x, merged_weight_.to(x.scalar_type()), bias.defined() ? bias.to(x.scalar_type()) : bias);
    return qlora_linear(x, x, base, bias, at::Tensor(), at::Tensor(), 1.0);
}

at::Tensor QLoraLinear::adapted_forward(const at::Tensor& x, const at::Tensor& x_lora) {
    return qlora_linear(x, x_lora, base, bias, lora_A->weight, lora_B->weight, scaling_);
}

void QLoraLinear::merge() {
    if (merged_ || (!has_adapter() && !has_frozen())) return;
    at::NoGradGuard no_grad;
    merged_weight_ = (dequantized_weight().to(at::kFloat) + merge_delta().to(base.device())).to(base.dtype);
    merged_        = true;
}

void QLoraLinear::unmerge() {
    merged_weight_ = at::Tensor();
    merged_        = false;
}

void QLoraLinear::to(at::Device device, bool non_blocking) {
    base = base.to(device);
    if (merged_weight_.defined()) merged_weight_ = merged_weight_.to(device);
    LoraLayer::to(device, non_blocking);
}

void QLoraLinear::to(at::Device device, at::ScalarType dtype, bool non_blocking) {
    base = base.to(device);
    if (merged_weight_.defined()) merged_weight_ = merged_weight_.to(device);
    LoraLayer::to(device, dtype, non_blocking);
}

// ---------------------------------------------------------------- model level

namespace {

struct ProjectionSlot {
    std::string name;  // model.layers.N.self_attn.q_proj
    std::string short_name;
    torch::nn::Module* parent;
    std::shared_ptr<model::Projection>* member;
};

std::vector<ProjectionSlot> projection_slots(model::Qwen2ForCausalLM& m) {
    std::vector<ProjectionSlot> out;
    for (size_t i = 0; i < m.model->layers.size(); ++i) {
        auto& layer        = *m.model->layers[i];
        std::string prefix = "model.layers." + std::to_string(i) + ".";
        auto* attn         = layer.self_attn.get();
        auto* mlp          = layer.mlp.get();
        out.push_back({prefix + "self_attn.q_proj", "q_proj", attn, &attn->q_proj});
        out.push_back({prefix + "self_attn.k_proj", "k_proj", attn, &attn->k_proj});
        out.push_back({prefix + "self_attn.v_proj", "v_proj", attn, &attn->v_proj});
        out.push_back({prefix + "self_attn.o_proj", "o_proj", attn, &attn->o_proj});
        out.push_back({prefix + "mlp.gate_proj", "gate_proj", mlp, &mlp->gate_proj});
        out.push_back({prefix + "mlp.up_proj", "up_proj", mlp, &mlp->up_proj});
        out.push_back({prefix + "mlp.down_proj", "down_proj", mlp, &mlp->down_proj});
    }
    return out;
}

void install(const ProjectionSlot& slot, std::shared_ptr<model::Projection> replacement) {
    slot.parent->replace_module(slot.short_name, replacement);
    *slot.member = std::move(replacement);
}

std::vector<NamedLoraLayer> apply_lora_impl(model::Qwen2ForCausalLM& m, const LoraConfig& cfg,
                                            std::map<std::string, quant::Nf4Tensor>* prequantized,
                                            const ModuleRanks* modules) {
    cfg.validate();
    const std::set<std::string> targets(cfg.target_modules.begin(), cfg.target_modules.end());
    std::optional<uint64_t> seed = cfg.seed;
    for (auto& p : m.parameters()) p.requires_grad_(false);
    std::vector<NamedLoraLayer> adapted;
    for (const auto& slot : projection_slots(m)) {
        const bool target    = modules ? modules->count(slot.name) > 0 : targets.count(slot.short_name) > 0;
        const int64_t r      = !target ? 0 : modules ? modules->at(slot.name).first : cfg.r;
        const double scaling = !target ? 1.0 : modules ? modules->at(slot.name).second : cfg.scaling();
        if (target && r < 1) throw UsageError("lora: rank of " + slot.name + " must be >= 1, got " + std::to_string(r));
        std::shared_ptr<LoraLayer> layer;
        if (prequantized && prequantized->count(slot.name)) {
            auto dense      = std::dynamic_pointer_cast<model::DenseLinear>(*slot.member);
            at::Tensor bias = dense ? dense->bias : at::Tensor();
            layer = std::make_shared<QLoraLinear>(std::move(prequantized->at(slot.name)), bias, r, scaling, cfg.dropout,
                                                  cfg.adapter_dtype);
            prequantized->erase(slot.name);
        } else if (target || cfg.quantize_base) {
            // QLoRA holds every projection in NF4, adapted or not, as transformers + bitsandbytes load a 4-bit
            // model (every nn.Linear but lm_head): the base an adapter was trained against.
            auto dense = std::dynamic_pointer_cast<model::DenseLinear>(*slot.member);
            if (!dense) {
                if (!target) continue;  // already NF4 (or replaced) and not adapted: leave it
                throw Error("apply_lora: " + slot.name + " is not a dense projection (LoRA applied twice?)");
            }
            if (cfg.quantize_base) {
                auto nf4 =
                    quant::nf4_quantize(dense->weight.detach(), cfg.blocksize, cfg.double_quant, slot.name + ".weight");
                layer = std::make_shared<QLoraLinear>(std::move(nf4), dense->bias, r, scaling, cfg.dropout,
                                                      cfg.adapter_dtype);
            } else {
                layer = std::make_shared<LoraLinear>(*dense, r, scaling, cfg.dropout, cfg.adapter_dtype);
            }
        } else {
            continue;
        }
        if (layer->has_adapter()) {
            layer->reset_adapter(seed);
            if (seed) ++*seed;  // a different but reproducible A per module
        }
        layer->adapter_name = cfg.adapter_name;
        install(slot, layer);
        if (layer->has_adapter()) adapted.push_back({slot.name, layer});
    }
    return adapted;
}

}  // namespace

std::vector<NamedLoraLayer> apply_lora(model::Qwen2ForCausalLM& model, const LoraConfig& cfg) {
    return apply_lora_impl(model, cfg, nullptr, nullptr);
}

std::vector<NamedLoraLayer> apply_lora(model::Qwen2ForCausalLM& model, const LoraConfig& cfg,
                                       const ModuleRanks& modules) {
    std::set<std::string> known;
    for (const auto& slot : projection_slots(model)) known.insert(slot.name);
    for (const auto& [name, rs] : modules) {
        if (!known.count(name)) throw Error("apply_lora: the model has no projection named '" + name + "'");
    }
    return apply_lora_impl(model, cfg, nullptr, &modules);
}

std::vector<NamedLoraLayer> lora_layers(model::Qwen2ForCausalLM& model) {
    std::vector<NamedLoraLayer> out;
    for (const auto& slot : projection_slots(model)) {
        if (auto layer = std::dynamic_pointer_cast<LoraLayer>(*slot.member)) out.push_back({slot.name, layer});
    }
    return out;
}

std::vector<std::pair<std::string, at::Tensor>> adapter_parameters(model::Qwen2ForCausalLM& model) {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& [name, layer] : lora_layers(model)) {
        if (!layer->has_adapter()) continue;
        out.emplace_back(name + ".lora_A.weight", layer->lora_A->weight);
        out.emplace_back(name + ".lora_B.weight", layer->lora_B->weight);
    }
    return out;
}

std::shared_ptr<model::Qwen2ForCausalLM> load_model_for_lora(const std::string& dir, const LoraConfig& cfg,
                                                             at::ScalarType dtype, at::Device device,
                                                             const ModuleRanks* modules) {
    cfg.validate();
    auto config = model::Qwen2Config::from_file(dir);
    model::validate_checkpoint(io::CheckpointReader(dir), config, dir);  // before anything is allocated
    // Built on CPU: LibTorch's CPU allocations are lazy, so the dense weights that are quantized instead of
    // loaded are never touched; the remaining parameters move to `device` once loaded.
    auto m = std::make_shared<model::Qwen2ForCausalLM>(config, at::TensorOptions().dtype(dtype));
    std::set<std::string> projections;
    for (const auto& slot : projection_slots(*m)) projections.insert(slot.name);
    std::map<std::string, quant::Nf4Tensor> quantized;                     // module name -> NF4 weight
    std::map<std::string, std::map<std::string, at::Tensor>> bnb_entries;  // module name -> its 4-bit entries
    auto module_of = [&](const std::string& name) -> std::string {
        // "<module>.weight" or "<module>.weight.<4-bit statistic>"
        auto pos = name.find(".weight");
        if (pos == std::string::npos) return {};
        std::string module = name.substr(0, pos);
        return projections.count(module) ? module : std::string();
    };
    auto on_tensor = [&](const std::string& name, const at::Tensor& src) -> bool {
        std::string module = module_of(name);
        if (module.empty()) return false;
        const bool statistic = name.size() > module.size() + 7;
        if (statistic || src.scalar_type() == at::kByte) {  // part of a bitsandbytes 4-bit weight
            bnb_entries[module][name] = src.to(device);
            return true;
        }
        if (cfg.quantize_base) {  // every projection, adapted or not (see apply_lora_impl)
            quantized.emplace(module, quant::nf4_quantize(src.to(device), cfg.blocksize, cfg.double_quant, name));
            return true;
        }
        return false;
    };
    m->load_checkpoint(dir, on_tensor);
    for (auto& [module, entries] : bnb_entries) {
        quantized.emplace(module, quant::nf4_from_state_dict(entries, module + ".weight"));
    }
    for (auto& slot : projection_slots(*m)) {  // free the untouched dense placeholders before moving the model
        if (!quantized.count(slot.name)) continue;
        if (auto dense = std::dynamic_pointer_cast<model::DenseLinear>(*slot.member))
            dense->weight.set_data(at::empty({0}, dense->weight.options()));
    }
    if (modules) {
        for (const auto& [name, rs] : *modules) {
            if (!projections.count(name)) throw Error(dir + ": the model has no projection named '" + name + "'");
        }
    }
    const auto nf4_projections = static_cast<int64_t>(quantized.size());
    auto layers                = apply_lora_impl(*m, cfg, &quantized, modules);
    m->to(device);
    const std::string base = nf4_projections == 0 ? std::string("dense base")
                                                  : "NF4 base in " + std::to_string(nf4_projections) + " of " +
                                                        std::to_string(projections.size()) + " projections";
    if (layers.empty()) {
        spdlog::info("{}: {}, no LoRA adapter", dir, base);
    } else if (modules) {  // ranks and alphas come from the adapter file, module by module
        spdlog::info("{}: LoRA adapter on {} modules ({})", dir, layers.size(), base);
    } else {
        spdlog::info("{}: LoRA r={} alpha={} on {} modules ({})", dir, cfg.r, cfg.alpha, layers.size(), base);
    }
    return m;
}

// ---------------------------------------------------------------- stacks

std::vector<std::string> adapter_names(model::Qwen2ForCausalLM& model) {
    // Frozen adapters ordered by when they were added (a later one may adapt an earlier module than the first one).
    std::map<int64_t, std::string> frozen;
    std::string trainable;
    for (const auto& [name, layer] : lora_layers(model)) {
        for (const auto& f : layer->frozen_adapters()) frozen.emplace(f.position, f.name);
        if (layer->has_adapter() && trainable.empty()) trainable = layer->adapter_name;
    }
    std::vector<std::string> out;
    for (const auto& [pos, name] : frozen) out.push_back(name);
    if (!trainable.empty()) out.push_back(trainable);
    return out;
}

std::string trainable_adapter_name(model::Qwen2ForCausalLM& model) {
    for (const auto& [name, layer] : lora_layers(model))
        if (layer->has_adapter()) return layer->adapter_name;
    return {};
}

void add_frozen_adapter(model::Qwen2ForCausalLM& model, const std::string& name,
                        const std::map<std::string, AdapterWeights>& weights, const LoraConfig& config) {
    validate_adapter_name(name, "adapter name");
    const auto names = adapter_names(model);
    if (std::find(names.begin(), names.end(), name) != names.end())
        throw UsageError("adapter name '" + name + "': the model already holds an adapter of that name");
    if (weights.empty()) throw Error("adapter '" + name + "' adapts no module");
    // Everything is checked before the model changes, so a refused adapter leaves it as it was.
    const auto slots = projection_slots(model);
    std::map<std::string, const ProjectionSlot*> by_name;
    for (const auto& slot : slots) by_name[slot.name] = &slot;
    for (const auto& [module, w] : weights) {
        auto it = by_name.find(module);
        if (it == by_name.end())
            throw Error("adapter '" + name + "': the model has no projection named '" + module + "'");
        const auto& proj = **it->second->member;
        if (w.A.dim() != 2 || w.B.dim() != 2 || w.A.size(1) != proj.in_features() ||
            w.B.size(0) != proj.out_features() || w.B.size(1) != w.A.size(0))
            throw Error("adapter '" + name + "': " + module + " has A " + c10::str(w.A.sizes()) + " and B " +
                        c10::str(w.B.sizes()) + " but the projection is [" + std::to_string(proj.out_features()) +
                        ", " + std::to_string(proj.in_features()) + "]");
        if (!std::dynamic_pointer_cast<LoraLayer>(*it->second->member) &&
            !std::dynamic_pointer_cast<model::DenseLinear>(*it->second->member))
            throw Error("adapter '" + name + "': " + module + " is neither dense nor a LoRA layer");
    }
    const auto shared = std::make_shared<const LoraConfig>(config);
    int64_t position  = 0;
    for (const auto& [n, layer] : lora_layers(model))
        for (const auto& f : layer->frozen_adapters()) position = std::max(position, f.position + 1);
    const at::Device device     = model.parameters().front().device();
    const std::string trainable = trainable_adapter_name(model);
    for (const auto& slot : slots) {
        auto it = weights.find(slot.name);
        if (it == weights.end()) continue;
        auto layer = std::dynamic_pointer_cast<LoraLayer>(*slot.member);
        if (!layer) {  // a projection the trainable adapter does not adapt: a LoRA layer with no trainable adapter
            auto dense          = std::dynamic_pointer_cast<model::DenseLinear>(*slot.member);
            layer               = std::make_shared<LoraLinear>(*dense, 0, 1.0, 0.0, config.adapter_dtype);
            layer->adapter_name = trainable.empty() ? "default" : trainable;
            install(slot, layer);
        }
        const auto& w = it->second;
        layer->add_frozen_adapter(name, w.A.to(device, config.adapter_dtype), w.B.to(device, config.adapter_dtype),
                                  w.scaling, config.dropout, shared);
        layer->frozen_adapter(name).position = position;
    }
}

void set_trainable_adapter_name(model::Qwen2ForCausalLM& model, const std::string& name) {
    validate_adapter_name(name, "adapter name");
    for (const auto& [module, layer] : lora_layers(model))
        for (const auto& f : layer->frozen_adapters())
            if (f.name == name)
                throw UsageError("adapter name '" + name + "': a frozen adapter of the model has that name");
    for (const auto& [module, layer] : lora_layers(model)) layer->adapter_name = name;
}

// ---------------------------------------------------------------- adapter scopes

AdaptersDisabled::AdaptersDisabled(model::Qwen2ForCausalLM& model, Disable which) {
    for (auto& [name, layer] : lora_layers(model)) {
        saved_.push_back({layer, layer->adapters_enabled, layer->frozen_enabled, layer->merged()});
        if (layer->merged()) layer->unmerge();
        layer->adapters_enabled = false;
        if (which == Disable::all) layer->frozen_enabled = false;
    }
}

AdaptersDisabled::~AdaptersDisabled() {
    for (auto& s : saved_) {
        s.layer->adapters_enabled = s.enabled;
        s.layer->frozen_enabled   = s.frozen_enabled;
        if (s.merged) s.layer->merge();
    }
}

void merge_adapters(model::Qwen2ForCausalLM& model) {
    for (auto& [name, layer] : lora_layers(model)) layer->merge();
}

void unmerge_adapters(model::Qwen2ForCausalLM& model) {
    for (auto& [name, layer] : lora_layers(model)) layer->unmerge();
}

}  // namespace medllm::peft
