// The pieces of one optimizer step that every recipe shares (free functions, torchtune's "copy the loop, share
// the functions"): packed rows to tensors, forward + backward over the micro-batches of a step with HF's loss
// normalization, and the validation loss.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "medllm/data/packing.h"
#include "medllm/model/qwen2.h"

namespace medllm::train {

struct MicroBatch {
    at::Tensor input_ids, labels, segment_ids, position_ids;  // [B, S] int64
    int64_t target_tokens = 0;  // labels != -100 after the shift (what the loss averages over)
    int64_t real_tokens   = 0;  // tokens that are not padding (throughput)
};

MicroBatch make_micro_batch(const std::vector<data::PackedRow>& rows, at::Device device);
int64_t count_target_tokens(const at::Tensor& labels);

struct StepLosses {
    std::vector<double> micro;  // each micro-batch's loss: its token-loss sum / num_items (what backward sees)
    double loss = 0;            // their sum = the mean token loss of the step
};

// Forward and backward of every micro-batch; each loss is the sum of its token losses divided by `num_items`
// (the target tokens of the whole optimizer step, times the world size under data parallelism), so the
// accumulated gradient is that of one big batch (transformers >= 4.46). Gradients accumulate into .grad.
StepLosses forward_backward(model::Qwen2ForCausalLM& model, const std::vector<MicroBatch>& micro_batches,
                            double num_items);

// Mean token loss over every row of `dataset` (in its order), without gradients, in eval mode. With
// `num_shards` > 1 only rows i with i % num_shards == shard are evaluated (data parallelism: the ranks add up
// loss_sum and tokens, which gives the one-process loss).
struct EvalResult {
    double loss       = 0;
    int64_t tokens    = 0;
    double perplexity = 0;
    double loss_sum   = 0;  // the summed token losses behind `loss`
};
EvalResult evaluate(model::Qwen2ForCausalLM& model, const data::PackedDataset& dataset, int64_t batch_size,
                    at::Device device, int64_t shard = 0, int64_t num_shards = 1);

}  // namespace medllm::train
