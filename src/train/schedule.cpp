// Learning-rate schedules (warmup, then constant, linear or cosine) as transformers computes them.
#include "medllm/train/schedule.h"

#include <algorithm>
#include <cmath>

#include "medllm/core/error.h"

namespace medllm::train {

void Schedule::validate() const {
    if (name != "cosine" && name != "cosine_with_min_lr" && name != "linear" && name != "constant_with_warmup" &&
        name != "constant")
        throw UsageError("schedule.name: unknown schedule '" + name +
                         "' (allowed: cosine, cosine_with_min_lr, linear, constant_with_warmup, constant)");
    if (total_steps < 1) throw UsageError("schedule: total steps must be >= 1, got " + std::to_string(total_steps));
    if (warmup_steps < 0) throw UsageError("schedule.warmup_steps must be >= 0");
    if (!(min_lr_rate >= 0.0 && min_lr_rate <= 1.0)) throw UsageError("schedule.min_lr_rate must be in [0, 1]");
    if (!std::isfinite(base_lr) || base_lr < 0) throw UsageError("optim.lr must be a finite number >= 0");
}

double Schedule::lambda_at(int64_t step) const {
    // Written as transformers writes each lambda (the same float operations in the same order, so the values are
    // equal, not just close).
    const double s = static_cast<double>(step), w = static_cast<double>(warmup_steps);
    const double t = static_cast<double>(total_steps);
    if (name == "constant") return 1.0;
    if (step < warmup_steps) return s / std::max(1.0, w);
    if (name == "constant_with_warmup") return 1.0;
    if (name == "linear") return std::max(0.0, (t - s) / std::max(1.0, t - w));
    const double progress = (s - w) / std::max(1.0, t - w);
    double factor         = 0.5 * (1.0 + std::cos(M_PI * num_cycles * 2.0 * progress));
    if (name == "cosine") return std::max(0.0, factor);
    factor = factor * (1 - min_lr_rate) + min_lr_rate;  // cosine_with_min_lr
    return std::max(0.0, factor);
}

int64_t resolve_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t total_steps) {
    if (warmup_steps > 0) return warmup_steps;
    return static_cast<int64_t>(std::ceil(static_cast<double>(total_steps) * warmup_ratio));
}

}  // namespace medllm::train
