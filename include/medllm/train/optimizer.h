// AdamW over the adapter parameters with torch.optim.AdamW's update (the single-tensor path, op for op, so a
// step equals PyTorch's to the last bit on the same inputs) and HF Trainer's defaults (training.md §2), and
// gradient clipping as torch.nn.utils.clip_grad_norm_. The state is named tensors, so a checkpoint stores it as
// one safetensors file keyed by parameter name.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

namespace medllm::train {

struct AdamWOptions {
    double beta1        = 0.9;
    double beta2        = 0.999;
    double eps          = 1e-8;
    double weight_decay = 0.0;  // HF Trainer's default (torch's own is 0.01)
    void validate() const;      // UsageError naming optim.<key>
};

class AdamW {
public:
    AdamW(std::vector<std::pair<std::string, at::Tensor>> params, AdamWOptions options);

    // One update at learning rate `lr` for every parameter with a gradient (torch skips those without one).
    void step(double lr);
    void zero_grad();
    int64_t steps() const { return step_; }
    const std::vector<std::pair<std::string, at::Tensor>>& params() const { return params_; }

    // `<name>.exp_avg`, `<name>.exp_avg_sq` for every parameter (fp32, on the parameters' device).
    std::vector<std::pair<std::string, at::Tensor>> state_tensors() const;
    // Restores a state_tensors() set and the step count; Error naming the missing or misshapen tensor.
    void load_state(const std::vector<std::pair<std::string, at::Tensor>>& tensors, int64_t step);

private:
    std::vector<std::pair<std::string, at::Tensor>> params_;
    std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
    AdamWOptions options_;
    int64_t step_ = 0;
};

// Total L2 norm of the gradients (norm of the per-tensor norms) before clipping; when max_norm > 0 every gradient
// is multiplied by min(1, max_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_ does.
double clip_grad_norm(const std::vector<std::pair<std::string, at::Tensor>>& params, double max_norm);

// The part of a training checkpoint both recipes share: `optimizer.safetensors` (state_tensors()) and
// `rng_state.safetensors` (the CPU generator, and the CUDA one of the parameters' device when there is one).
void save_optimizer_and_rng(const std::filesystem::path& dir, const AdamW& optimizer);
// Restores both into `optimizer` (with its step count `optimizer_steps`) and the generators; the CUDA state, when
// saved, goes to `device` (or CUDA device 0 when training now runs on the CPU).
void load_optimizer_and_rng(const std::filesystem::path& dir, AdamW& optimizer, int64_t optimizer_steps,
                            const c10::Device& device);

}  // namespace medllm::train
