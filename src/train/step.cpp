// One optimizer step's shared pieces: rows to tensors, forward and backward over micro-batches with HF's loss
// normalization, validation loss.
#include "medllm/train/step.h"

#include <cmath>

#include <ATen/ATen.h>
#include <torch/autograd.h>

namespace medllm::train {

MicroBatch make_micro_batch(const std::vector<data::PackedRow>& rows, at::Device device) {
    const int64_t b = static_cast<int64_t>(rows.size());
    const int64_t s = static_cast<int64_t>(rows.at(0).input_ids.size());
    auto ids = at::empty({b, s}, at::kInt), lab = at::empty({b, s}, at::kInt), seg = at::empty({b, s}, at::kInt),
         pos = at::empty({b, s}, at::kInt);
    MicroBatch mb;
    for (int64_t i = 0; i < b; ++i) {
        const auto& r = rows[i];
        std::memcpy(ids[i].data_ptr<int32_t>(), r.input_ids.data(), s * 4);
        std::memcpy(lab[i].data_ptr<int32_t>(), r.labels.data(), s * 4);
        std::memcpy(seg[i].data_ptr<int32_t>(), r.segment_ids.data(), s * 4);
        std::memcpy(pos[i].data_ptr<int32_t>(), r.position_ids.data(), s * 4);
        mb.real_tokens += r.real_tokens;
    }
    mb.input_ids     = ids.to(device, at::kLong);
    mb.labels        = lab.to(device, at::kLong);
    mb.segment_ids   = seg.to(device, at::kLong);
    mb.position_ids  = pos.to(device, at::kLong);
    mb.target_tokens = count_target_tokens(mb.labels);
    return mb;
}

int64_t count_target_tokens(const at::Tensor& labels) {
    return labels.slice(1, 1).ne(-100).sum().item<int64_t>();
}

namespace {
at::Tensor micro_loss(model::Qwen2ForCausalLM& model, const MicroBatch& mb, double num_items) {
    model::ForwardInputs in;
    in.input_ids            = mb.input_ids;
    in.segment_ids          = mb.segment_ids;
    in.position_ids         = mb.position_ids;
    const at::Tensor hidden = model.forward_hidden(in).hidden;
    // causal_lm_loss with num_items = 1 is the plain sum of token losses; the division by the step's count is done
    // here so num_items may be fractional-free of the int parameter (world size × tokens).
    return model::causal_lm_loss(hidden, model.lm_head_weight(), mb.labels, 1024, 1) / num_items;
}
}  // namespace

StepLosses forward_backward(model::Qwen2ForCausalLM& model, const std::vector<MicroBatch>& micro_batches,
                            double num_items) {
    StepLosses out;
    model.train();
    for (const auto& mb : micro_batches) {
        at::Tensor loss = micro_loss(model, mb, num_items);
        loss.backward();
        const double v = loss.item<double>();
        out.micro.push_back(v);
        out.loss += v;
    }
    return out;
}

EvalResult evaluate(model::Qwen2ForCausalLM& model, const data::PackedDataset& dataset, int64_t batch_size,
                    at::Device device, int64_t shard, int64_t num_shards) {
    torch::NoGradGuard no_grad;
    model.eval();
    EvalResult r;
    double sum = 0;
    std::vector<data::PackedRow> rows;
    const int64_t total = dataset.rows_per_epoch();
    const int64_t mine  = shard < total ? (total - shard + num_shards - 1) / num_shards : 0;  // rows of this shard
    for (int64_t i = 0; i < mine; i += batch_size) {
        rows.assign(static_cast<size_t>(std::min(batch_size, mine - i)), {});
        for (size_t j = 0; j < rows.size(); ++j)
            dataset.row(0, (i + static_cast<int64_t>(j)) * num_shards + shard, rows[j]);
        const MicroBatch mb = make_micro_batch(rows, device);
        if (mb.target_tokens == 0) continue;
        sum += micro_loss(model, mb, 1.0).item<double>();
        r.tokens += mb.target_tokens;
    }
    model.train();
    r.loss_sum   = sum;
    r.loss       = r.tokens > 0 ? sum / static_cast<double>(r.tokens) : 0.0;
    r.perplexity = std::exp(r.loss);
    return r;
}

}  // namespace medllm::train
