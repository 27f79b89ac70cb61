// Learning-rate schedules equal to transformers' (transformers.optimization, LambdaLR): lr(step) = base_lr ·
// lambda(step), where `step` is the number of optimizer steps already taken (the first step runs at lambda(0),
// which is 0 when there is warmup). Formulas in docs/reference/training.md §2.3.
#pragma once

#include <cstdint>
#include <string>

namespace medllm::train {

struct Schedule {
    std::string name     = "cosine";  // cosine | cosine_with_min_lr | linear | constant_with_warmup | constant
    double base_lr       = 2e-4;
    int64_t total_steps  = 1;
    int64_t warmup_steps = 0;
    double num_cycles    = 0.5;  // cosine, as transformers' default
    double min_lr_rate   = 0.0;  // cosine_with_min_lr: the floor as a share of base_lr

    // UsageError naming the field for an unknown name, negative steps or an out-of-range rate.
    void validate() const;
    double lambda_at(int64_t step) const;  // transformers' lr_lambda
    double lr_at(int64_t step) const { return base_lr * lambda_at(step); }
};

// transformers' TrainingArguments.get_warmup_steps: warmup_steps when > 0, else ceil(ratio · total).
int64_t resolve_warmup_steps(int64_t warmup_steps, double warmup_ratio, int64_t total_steps);

}  // namespace medllm::train
