// DPO and RPO losses as TRL's DPOTrainer computes them.
#include "medllm/train/preference_loss.h"

#include <cmath>
#include <sstream>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "medllm/core/error.h"
#include "medllm/model/qwen2.h"
#include "medllm/peft/lora.h"
#include "medllm/train/pair_data.h"

namespace medllm::train {

// ---------------------------------------------------------------- the spec

double PreferenceLossSpec::nll_weight() const {
    double w = rpo_alpha;
    for (const auto& t : terms)
        if (t.type == "sft") w += t.weight;
    return w;
}

bool PreferenceLossSpec::length_normalized() const {
    for (const auto& t : terms)
        if (t.type == "ipo") return true;
    return false;
}

std::string PreferenceLossSpec::describe() const {
    std::ostringstream s;
    bool first = true;
    for (const auto& t : terms) {
        if (t.type == "sft") continue;
        s << (first ? "" : " + ");
        if (t.weight != 1.0) s << t.weight << " * ";
        s << t.type;
        if (t.type == "sigmoid" && label_smoothing > 0) s << " (label smoothing " << label_smoothing << ")";
        first = false;
    }
    if (needs_nll())
        s << " + " << nll_weight() << " * nll (" << nll_normalization
          << (nll_ignore_token_zero ? ", id 0 ignored as TRL v0.12-v0.28" : "") << ")";
    s << ", beta " << beta;
    return s.str();
}

PreferenceLossSpec parse_loss_spec(const nlohmann::json& loss_type, const nlohmann::json& loss_weights, double beta,
                                   double label_smoothing, double rpo_alpha, const std::string& nll_normalization,
                                   bool nll_ignore_token_zero) {
    PreferenceLossSpec spec;
    spec.beta                  = beta;
    spec.label_smoothing       = label_smoothing;
    spec.rpo_alpha             = rpo_alpha;
    spec.nll_normalization     = nll_normalization;
    spec.nll_ignore_token_zero = nll_ignore_token_zero;
    std::vector<std::string> types;
    if (loss_type.is_null()) {
        types = {"sigmoid"};
    } else if (loss_type.is_string()) {
        types = {loss_type.get<std::string>()};
    } else if (loss_type.is_array() && !loss_type.empty()) {
        for (const auto& t : loss_type) {
            if (!t.is_string())
                throw UsageError("loss.loss_type: expected a name or a list of names, got " + loss_type.dump());
            types.push_back(t.get<std::string>());
        }
    } else {
        throw UsageError("loss.loss_type: expected sigmoid, ipo, hinge or a list such as [sigmoid, sft], got " +
                         loss_type.dump());
    }
    std::vector<double> weights(types.size(), 1.0);
    if (!loss_weights.is_null()) {
        if (!loss_weights.is_array() || loss_weights.size() != types.size())
            throw UsageError("loss.loss_weights: expected a list of " + std::to_string(types.size()) +
                             " numbers (one per loss.loss_type entry), got " + loss_weights.dump());
        for (size_t i = 0; i < types.size(); ++i) {
            if (!loss_weights[i].is_number() || !std::isfinite(loss_weights[i].get<double>()) ||
                loss_weights[i].get<double>() < 0)
                throw UsageError("loss.loss_weights[" + std::to_string(i) + "]: expected a finite number >= 0, got " +
                                 loss_weights[i].dump());
            weights[i] = loss_weights[i].get<double>();
        }
    }
    spec.terms.clear();
    bool preference = false;
    for (size_t i = 0; i < types.size(); ++i) {
        const std::string& t = types[i];
        if (t != "sigmoid" && t != "ipo" && t != "hinge" && t != "sft")
            throw UsageError("loss.loss_type: unknown loss '" + t +
                             "' (medllm implements sigmoid, ipo, hinge and sft, TRL's names)");
        for (const auto& e : spec.terms)
            if (e.type == t) throw UsageError("loss.loss_type: '" + t + "' is listed twice");
        preference = preference || t != "sft";
        spec.terms.push_back({t, weights[i]});
    }
    if (!preference)
        throw UsageError(
            "loss.loss_type: 'sft' alone is supervised fine-tuning, not preference optimization; list "
            "a preference loss too ([sigmoid, sft])");
    if (!(beta > 0) || !std::isfinite(beta)) throw UsageError("loss.beta: must be > 0");
    if (!std::isfinite(rpo_alpha) || rpo_alpha < 0) throw UsageError("loss.rpo_alpha: must be a finite number >= 0");
    // The NLL weight has two spellings (TRL <= 0.28's rpo_alpha, TRL >= 1.0's sft entry); both at once would add up
    // (loss_weights [1, 5] with rpo_alpha 2 trains with alpha 7), which neither TRL version does.
    for (const auto& t : spec.terms)
        if (t.type == "sft" && rpo_alpha > 0) {
            std::ostringstream msg;
            msg << "loss.rpo_alpha and the sft entry of loss.loss_type both weight the chosen completion's NLL "
                   "(together alpha = "
                << t.weight + rpo_alpha
                << "): give the weight once, as loss.rpo_alpha (TRL <= 0.28) or as the sft entry's "
                   "loss.loss_weights (TRL >= 1.0)";
            throw UsageError(msg.str());
        }
    if (!(label_smoothing >= 0 && label_smoothing < 0.5)) throw UsageError("loss.label_smoothing: must be in [0, 0.5)");
    bool sigmoid = false;
    for (const auto& t : spec.terms) sigmoid = sigmoid || t.type == "sigmoid";
    if (label_smoothing > 0 && !sigmoid) throw UsageError("loss.label_smoothing: only the sigmoid loss uses it (cDPO)");
    if (nll_normalization != "pooled" && nll_normalization != "per_sequence")
        throw UsageError("loss.nll_normalization: expected pooled or per_sequence, got '" + nll_normalization + "'");
    return spec;
}

// ---------------------------------------------------------------- token log-probs

namespace {

// fp32 for bf16/fp16/fp32 hidden states (TRL's selective_log_softmax upcasts too), fp64 for fp64 (tests).
at::ScalarType accumulate_type(const at::Tensor& t) {
    return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

struct SelectedLogSoftmax : public torch::autograd::Function<SelectedLogSoftmax> {
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::Tensor hidden,
                                                  at::Tensor weight, at::Tensor targets, int64_t chunk) {
        const int64_t M = hidden.size(0);
        const auto acc  = accumulate_type(hidden);
        auto logps      = at::empty({M}, hidden.options().dtype(acc));
        auto sums       = at::empty({M}, hidden.options().dtype(acc));
        for (int64_t s = 0; s < M; s += chunk) {
            const int64_t n = std::min(chunk, M - s);
            auto logits     = at::linear(hidden.narrow(0, s, n), weight).to(acc);
            auto t          = targets.narrow(0, s, n).unsqueeze(1);
            logps.narrow(0, s, n).copy_(logits.gather(1, t).squeeze(1) - at::logsumexp(logits, -1));
            sums.narrow(0, s, n).copy_(logits.sum(-1));
        }
        ctx->save_for_backward({hidden, weight, targets});
        ctx->saved_data["chunk"] = chunk;
        ctx->mark_non_differentiable({sums});
        return {logps, sums};
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grad_out) {
        const auto saved    = ctx->get_saved_variables();
        const auto& hidden  = saved[0];
        const auto& weight  = saved[1];
        const auto& targets = saved[2];
        const int64_t chunk = ctx->saved_data["chunk"].toInt();
        const int64_t M     = hidden.size(0);
        const auto acc      = accumulate_type(hidden);
        const at::Tensor g  = grad_out[0].defined() ? grad_out[0].to(acc) : at::zeros({M}, hidden.options().dtype(acc));
        at::Tensor grad_h   = ctx->needs_input_grad(0) ? at::empty_like(hidden) : at::Tensor();
        at::Tensor grad_w =
            ctx->needs_input_grad(1) ? at::zeros(weight.sizes(), weight.options().dtype(acc)) : at::Tensor();
        for (int64_t s = 0; s < M; s += chunk) {
            const int64_t n = std::min(chunk, M - s);
            auto h          = hidden.narrow(0, s, n);
            auto gs         = g.narrow(0, s, n).unsqueeze(1);
            // d logp / d logits = onehot(target) - softmax: scaled by the incoming gradient of each position.
            auto d = at::softmax(at::linear(h, weight).to(acc), -1).mul_(gs.neg());
            d.scatter_add_(1, targets.narrow(0, s, n).unsqueeze(1), gs);
            d = d.to(hidden.scalar_type());
            if (grad_h.defined()) grad_h.narrow(0, s, n).copy_(at::matmul(d, weight));
            if (grad_w.defined()) grad_w.add_(at::matmul(d.t(), h).to(acc));
        }
        if (grad_w.defined()) grad_w = grad_w.to(weight.scalar_type());
        return {grad_h, grad_w, at::Tensor(), at::Tensor()};
    }
};

}  // namespace

TokenLogps selected_token_logps(const at::Tensor& hidden_rows, const at::Tensor& weight, const at::Tensor& targets,
                                int64_t chunk) {
    if (hidden_rows.dim() != 2 || targets.dim() != 1 || hidden_rows.size(0) != targets.size(0))
        throw Error("selected_token_logps: hidden [M, H] and targets [M] must agree");
    auto out = SelectedLogSoftmax::apply(hidden_rows, weight, targets.to(hidden_rows.device(), at::kLong),
                                         std::max<int64_t>(1, chunk));
    return {out[0], out[1]};
}

at::Tensor sequence_logps(const at::Tensor& token_logps, const at::Tensor& row_of, int64_t rows) {
    return at::zeros({rows}, token_logps.options())
        .index_add(0, row_of.to(token_logps.device(), at::kLong), token_logps);
}

at::Tensor chosen_nll(const PreferenceLossSpec& spec, const at::Tensor& token_logps, const at::Tensor& row_of,
                      const at::Tensor& targets, int64_t num_pairs) {
    const auto rows = row_of.to(token_logps.device(), at::kLong);
    auto keep       = rows.lt(num_pairs);
    if (spec.nll_ignore_token_zero) keep = keep.logical_and(targets.to(token_logps.device()).ne(0));
    const auto idx = keep.nonzero().squeeze(1);
    const auto lp  = token_logps.index_select(0, idx);
    if (spec.nll_normalization == "pooled") return -lp.sum() / static_cast<double>(idx.size(0));
    // per_sequence: each chosen completion's mean token NLL, then the mean over pairs.
    const auto r = rows.index_select(0, idx);
    auto sums    = at::zeros({num_pairs}, lp.options()).index_add(0, r, lp);
    auto counts  = at::zeros({num_pairs}, lp.options()).index_add(0, r, at::ones_like(lp));
    return (-sums / counts).mean();
}

// ---------------------------------------------------------------- the loss

PreferenceLossOutput preference_loss(const PreferenceLossSpec& spec, const at::Tensor& chosen,
                                     const at::Tensor& rejected, const at::Tensor& ref_chosen,
                                     const at::Tensor& ref_rejected, const at::Tensor& nll) {
    PreferenceLossOutput out;
    const double beta = spec.beta;
    // TRL v0.28's order of operations: (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected).
    const auto logits = (chosen - rejected) - (ref_chosen - ref_rejected);
    at::Tensor losses = at::zeros_like(logits);
    for (const auto& t : spec.terms) {
        at::Tensor l;
        if (t.type == "sigmoid") {
            l = -at::log_sigmoid(beta * logits) * (1 - spec.label_smoothing) -
                at::log_sigmoid(-beta * logits) * spec.label_smoothing;
        } else if (t.type == "hinge") {
            l = at::relu(1 - beta * logits);
        } else if (t.type == "ipo") {
            l = (logits - 1 / (2 * beta)).pow(2);
        } else {  // sft: the scalar NLL for every pair
            l = nll.expand(logits.sizes());
        }
        losses = losses + l * t.weight;
    }
    out.losses = losses;
    if (spec.rpo_alpha != 0) losses = losses + spec.rpo_alpha * nll;
    out.loss             = losses.mean();
    out.chosen_rewards   = (beta * (chosen - ref_chosen)).detach();
    out.rejected_rewards = (beta * (rejected - ref_rejected)).detach();
    return out;
}

MicroMetrics make_micro_metrics(const PreferenceLossOutput& out, const at::Tensor& chosen, const at::Tensor& rejected,
                                const at::Tensor& nll, double logits_chosen, double logits_rejected) {
    MicroMetrics m;
    auto cr              = out.chosen_rewards.to(at::kCPU, at::kDouble);
    auto rr              = out.rejected_rewards.to(at::kCPU, at::kDouble);
    m.loss               = out.loss.item<double>();
    m.has_nll            = nll.defined();
    m.nll_loss           = nll.defined() ? nll.item<double>() : NAN;
    m.rewards_chosen     = cr.mean().item<double>();
    m.rewards_rejected   = rr.mean().item<double>();
    auto acc             = out.chosen_rewards.gt(out.rejected_rewards).to(at::kCPU, at::kDouble);  // strict, as TRL
    m.rewards_accuracies = acc.mean().item<double>();
    auto margin          = (out.chosen_rewards - out.rejected_rewards).to(at::kCPU, at::kDouble);
    m.rewards_margins    = margin.mean().item<double>();
    m.logps_chosen       = chosen.detach().to(at::kCPU, at::kDouble).mean().item<double>();
    m.logps_rejected     = rejected.detach().to(at::kCPU, at::kDouble).mean().item<double>();
    m.logits_chosen      = logits_chosen;
    m.logits_rejected    = logits_rejected;
    for (int64_t i = 0; i < acc.size(0); ++i) {
        m.pair_accuracy.push_back(acc[i].item<double>());
        m.pair_margin.push_back(margin[i].item<double>());
    }
    return m;
}

// ---------------------------------------------------------------- the forward of one micro-batch

// Chosen and rejected rows in one forward; log-probs of the completion tokens only, gathered before lm_head so
// the logits exist only for completion positions, a chunk at a time.
PairLogps pair_logps(model::Qwen2ForCausalLM& model, const PrefBatch& b, const PreferenceLossSpec& spec, int64_t chunk,
                     bool with_nll) {
    model::ForwardInputs in;
    in.input_ids         = b.input_ids;     // right-padded: causal attention never reaches the pads from a real token
    in.position_ids      = b.position_ids;  // shared-prompt rows: rejected's own positions
    in.attention_mask_4d = b.attention_mask_4d;  // and its mask (prefix + itself)
    const auto hidden    = model.forward_hidden(in).hidden;
    const int64_t H      = hidden.size(2);
    const auto rows      = hidden.reshape({-1, H}).index_select(0, b.predict_position);
    const auto tl        = selected_token_logps(rows, model.lm_head_weight(), b.targets, chunk);
    auto seq             = sequence_logps(tl.logps, b.row_of, 2 * b.pairs);
    PairLogps out;
    if (spec.length_normalized()) seq = seq / b.completion_len;
    out.chosen   = seq.narrow(0, 0, b.pairs);
    out.rejected = seq.narrow(0, b.pairs, b.pairs);
    if (with_nll) out.nll = chosen_nll(spec, tl.logps, b.row_of, b.targets, b.pairs);
    const double V      = static_cast<double>(model.config.vocab_size);
    const auto chosen   = b.row_of.lt(b.pairs).to(at::kFloat);
    const double c_sum  = (tl.logit_sums * chosen).sum().item<double>();
    const double all    = tl.logit_sums.sum().item<double>();
    out.logits_chosen   = b.chosen_tokens > 0 ? c_sum / (static_cast<double>(b.chosen_tokens) * V) : NAN;
    out.logits_rejected = b.rejected_tokens > 0 ? (all - c_sum) / (static_cast<double>(b.rejected_tokens) * V) : NAN;
    return out;
}

// The reference log-probs of a batch: the same model with the trainable adapter off, no grad.
std::pair<at::Tensor, at::Tensor> reference_logps(model::Qwen2ForCausalLM& model, const PrefBatch& b,
                                                  const PreferenceLossSpec& spec, int64_t chunk) {
    torch::NoGradGuard no_grad;
    auto off       = peft::disable_adapters(model);
    const auto out = pair_logps(model, b, spec, chunk, false);
    return {out.chosen.detach(), out.rejected.detach()};
}

// ---------------------------------------------------------------- logging interval

void MetricsAccumulator::add(const MicroMetrics& m, const std::vector<std::string>& pair_types) {
    ++micro_batches_;
    sums_["loss"] += m.loss;
    if (m.has_nll) sums_["nll_loss"] += m.nll_loss;
    sums_["rewards/chosen"] += m.rewards_chosen;
    sums_["rewards/rejected"] += m.rewards_rejected;
    sums_["rewards/accuracies"] += m.rewards_accuracies;
    sums_["rewards/margins"] += m.rewards_margins;
    sums_["logps/chosen"] += m.logps_chosen;
    sums_["logps/rejected"] += m.logps_rejected;
    sums_["logits/chosen"] += m.logits_chosen;
    sums_["logits/rejected"] += m.logits_rejected;
    for (size_t i = 0; i < m.pair_accuracy.size() && i < pair_types.size(); ++i) {
        if (pair_types[i].empty()) continue;
        auto& a = type_acc_[pair_types[i]];
        a.first += m.pair_accuracy[i];
        ++a.second;
        auto& g = type_margin_[pair_types[i]];
        g.first += m.pair_margin[i];
        ++g.second;
    }
}

nlohmann::json MetricsAccumulator::averages(bool with_nll) const {
    nlohmann::json out = nlohmann::json::object();
    if (micro_batches_ == 0) return out;
    const double n = static_cast<double>(micro_batches_);
    for (const auto& [k, v] : sums_) {
        if (k == "nll_loss" && !with_nll) continue;
        out[k] = std::isfinite(v / n) ? nlohmann::json(v / n) : nlohmann::json(nullptr);
    }
    for (const auto& [t, a] : type_acc_) out["rewards/accuracies/" + t] = a.first / static_cast<double>(a.second);
    for (const auto& [t, g] : type_margin_) out["rewards/margins/" + t] = g.first / static_cast<double>(g.second);
    return out;
}

nlohmann::json MetricsAccumulator::state() const {
    nlohmann::json s = {{"micro_batches", micro_batches_}, {"sums", nlohmann::json::object()}};
    for (const auto& [k, v] : sums_) s["sums"][k] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
    for (const auto& [t, a] : type_acc_) s["type_acc"][t] = {a.first, a.second};
    for (const auto& [t, g] : type_margin_) s["type_margin"][t] = {g.first, g.second};
    return s;
}

void MetricsAccumulator::restore(const nlohmann::json& s) {
    clear();
    micro_batches_ = s.at("micro_batches").get<int64_t>();
    for (const auto& [k, v] : s.at("sums").items()) sums_[k] = v.is_null() ? NAN : v.get<double>();
    if (s.contains("type_acc"))
        for (const auto& [t, a] : s["type_acc"].items()) type_acc_[t] = {a[0].get<double>(), a[1].get<int64_t>()};
    if (s.contains("type_margin"))
        for (const auto& [t, g] : s["type_margin"].items()) type_margin_[t] = {g[0].get<double>(), g[1].get<int64_t>()};
}

void MetricsAccumulator::clear() {
    micro_batches_ = 0;
    sums_.clear();
    type_acc_.clear();
    type_margin_.clear();
}

}  // namespace medllm::train
