// AdamW over adapter parameters, update for update as torch.optim.AdamW.
#include "medllm/train/optimizer.h"

#include <cmath>
#include <map>

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include "medllm/core/error.h"
#include "medllm/io/safetensors.h"
#include "medllm/model/rng_state.h"

namespace medllm::train {

void AdamWOptions::validate() const {
    const auto check = [](double v, double lo, double hi, const char* key, bool hi_open) {
        if (!std::isfinite(v) || v < lo || (hi_open ? v >= hi : v > hi))
            throw UsageError(std::string("optim.") + key + ": out of range, got " + std::to_string(v));
    };
    check(beta1, 0, 1, "beta1", true);
    check(beta2, 0, 1, "beta2", true);
    check(eps, 0, 1, "eps", false);
    check(weight_decay, 0, 1e6, "weight_decay", false);
}

AdamW::AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options)
    : params_(std::move(params)), options_(options) {
    options_.validate();
    for (const auto& [name, p] : params_) {
        exp_avg_.push_back(at::zeros_like(p, at::MemoryFormat::Preserve));
        exp_avg_sq_.push_back(at::zeros_like(p, at::MemoryFormat::Preserve));
    }
}

void AdamW::step(double lr) {
    torch::NoGradGuard no_grad;
    ++step_;
    // torch.optim.adamw._single_tensor_adamw (capturable=False, amsgrad=False, maximize=False), op for op.
    const double bias_correction1      = 1 - std::pow(options_.beta1, static_cast<double>(step_));
    const double bias_correction2      = 1 - std::pow(options_.beta2, static_cast<double>(step_));
    const double step_size             = lr / bias_correction1;
    const double bias_correction2_sqrt = std::sqrt(bias_correction2);
    for (size_t i = 0; i < params_.size(); ++i) {
        at::Tensor p          = params_[i].second;
        const at::Tensor grad = p.grad();
        if (!grad.defined()) continue;
        p.mul_(1 - lr * options_.weight_decay);
        exp_avg_[i].lerp_(grad, 1 - options_.beta1);
        exp_avg_sq_[i].mul_(options_.beta2).addcmul_(grad, grad, 1 - options_.beta2);
        const at::Tensor denom = (exp_avg_sq_[i].sqrt() / bias_correction2_sqrt).add_(options_.eps);
        p.addcdiv_(exp_avg_[i], denom, -step_size);
    }
}

void AdamW::zero_grad() {
    for (auto& [name, p] : params_)
        if (p.grad().defined()) p.mutable_grad() = at::Tensor();  // set_to_none, as torch's default
}

std::vector<std::pair<std::string, at::Tensor>> AdamW::state_tensors() const {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (size_t i = 0; i < params_.size(); ++i) {
        out.emplace_back(params_[i].first + ".exp_avg", exp_avg_[i]);
        out.emplace_back(params_[i].first + ".exp_avg_sq", exp_avg_sq_[i]);
    }
    return out;
}

void AdamW::load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, int64_t step) {
    std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
    if (by_name.size() != 2 * params_.size())
        throw Error("optimizer state: " + std::to_string(by_name.size()) + " tensors for " +
                    std::to_string(params_.size()) + " parameters (expected two each)");
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params_.size(); ++i) {
        for (auto [suffix, dst] : {std::pair{".exp_avg", &exp_avg_[i]}, std::pair{".exp_avg_sq", &exp_avg_sq_[i]}}) {
            const std::string key = params_[i].first + suffix;
            auto it               = by_name.find(key);
            if (it == by_name.end()) throw Error("optimizer state: tensor '" + key + "' is missing");
            if (it->second.sizes() != dst->sizes())
                throw Error("optimizer state: tensor '" + key + "' has the wrong shape");
            dst->copy_(it->second);
        }
    }
    step_ = step;
}

double clip_grad_norm(const std::vector<std::pair<std::string, at::Tensor>>& params, double max_norm) {
    torch::NoGradGuard no_grad;
    std::vector<at::Tensor> grads, norms;
    for (const auto& [name, p] : params)
        if (p.grad().defined()) grads.push_back(p.grad());
    if (grads.empty()) return 0.0;
    for (const auto& g : grads) norms.push_back(at::linalg_vector_norm(g, 2.0));
    const at::Tensor total = at::linalg_vector_norm(at::stack(norms), 2.0);
    if (max_norm > 0) {
        // Python's `max_norm / tensor` is Tensor.__rtruediv__: reciprocal() * max_norm (not a division).
        const at::Tensor coef = at::clamp_max((total + 1e-6).reciprocal() * max_norm, 1.0);
        for (auto& g : grads) g.mul_(coef);
    }
    return total.item<double>();
}

void save_optimizer_and_rng(const std::filesystem::path& dir, const AdamW& optimizer) {
    io::save_file(dir / "optimizer.safetensors", optimizer.state_tensors());
    const auto rng = model::RngState::capture(optimizer.params().front().second);
    std::vector<std::pair<std::string, at::Tensor>> rng_tensors{{"cpu", rng.cpu}};
    if (rng.device.defined()) rng_tensors.emplace_back("cuda", rng.device);
    io::save_file(dir / "rng_state.safetensors", rng_tensors);
}

void load_optimizer_and_rng(const std::filesystem::path& dir, AdamW& optimizer, int64_t optimizer_steps,
                            const c10::Device& device) {
    {
        io::SafetensorsFile f(dir / "optimizer.safetensors");
        std::vector<std::pair<std::string, at::Tensor>> tensors;
        for (const auto& n : f.names()) tensors.emplace_back(n, f.tensor(n).clone());
        optimizer.load_state(tensors, optimizer_steps);
    }
    io::SafetensorsFile f(dir / "rng_state.safetensors");
    model::RngState rng;
    rng.cpu = f.tensor("cpu").clone();
    if (f.contains("cuda")) {
        rng.device       = f.tensor("cuda").clone();
        rng.device_index = device.is_cuda() ? device.index() : 0;
    }
    rng.restore();
}

}  // namespace medllm::train
