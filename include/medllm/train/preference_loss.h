// Preference losses as TRL's DPOTrainer computes them (docs/reference/preference-losses.md §1-§3, §7): the
// sequence log-probabilities of completions (summed over completion tokens, log-softmax in fp32, chunked over the
// vocabulary so [rows, S, V] logits never exist), the DPO family (sigmoid with label smoothing = cDPO, ipo, hinge),
// the NLL of the chosen completion (RPO), and the metrics under TRL's names.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>

namespace medllm::model {
class Qwen2ForCausalLM;
}

namespace medllm::train {

// One term of the loss: "sigmoid", "ipo", "hinge" (per pair, averaged over the micro-batch) or "sft" (the NLL).
struct LossTerm {
    std::string type;
    double weight = 1.0;
};

struct PreferenceLossSpec {
    std::vector<LossTerm> terms{{"sigmoid", 1.0}};
    double beta            = 0.1;
    double label_smoothing = 0.0;  // sigmoid only (cDPO, TRL <= v0.28)
    double rpo_alpha       = 0.0;  // TRL v0.12-v0.28 spelling of an "sft" term with weight alpha
    // pooled: sum of the chosen-token NLLs of the micro-batch / their count (TRL, every era since v0.10);
    // per_sequence: the mean over pairs of each chosen completion's mean token NLL (Iterative RPO paper, v3).
    std::string nll_normalization = "pooled";
    bool nll_ignore_token_zero    = false;  // TRL v0.12-v0.28: F.cross_entropy(..., ignore_index=0) drops id 0

    double nll_weight() const;  // rpo_alpha + the weights of "sft" terms
    bool needs_nll() const { return nll_weight() != 0.0; }
    bool length_normalized() const;  // "ipo": log-probs divided by the completion length (TRL v0.28)
    std::string describe() const;    // "sigmoid + 10 * nll (pooled)"
};

// Builds the spec from the config keys: loss_type (a string, a list of strings, or null = sigmoid), loss_weights
// (null or a list of numbers of the same length), rpo_alpha. UsageError naming loss.<key> for an unknown type,
// a length mismatch, a non-finite or negative weight, "sft" alone without a preference term, or IPO with beta 0.
PreferenceLossSpec parse_loss_spec(const nlohmann::json& loss_type, const nlohmann::json& loss_weights, double beta,
                                   double label_smoothing, double rpo_alpha, const std::string& nll_normalization,
                                   bool nll_ignore_token_zero);

// Per-token log-probabilities of selected positions: row p of `flat_hidden` [N, H] (the hidden state at the
// position that predicts the token) against `targets[p]`, through lm_head `weight` [V, H], in chunks of `chunk`
// positions; log-softmax in fp32 (TRL's selective_log_softmax: gather - logsumexp). Differentiable with respect
// to the hidden rows (and the weight when it requires grad): backward recomputes each chunk's logits.
struct TokenLogps {
    at::Tensor logps;       // [M] fp32
    at::Tensor logit_sums;  // [M] fp32: sum over the vocabulary of the raw logits (the logits/* metrics), no grad
};
TokenLogps selected_token_logps(const at::Tensor& hidden_rows, const at::Tensor& weight, const at::Tensor& targets,
                                int64_t chunk = 1024);

// Sums of token log-probs per sequence: out[row_of[m]] += token_logps[m] (differentiable), [rows] fp32.
at::Tensor sequence_logps(const at::Tensor& token_logps, const at::Tensor& row_of, int64_t rows);

// The NLL of the chosen completions from their token log-probs (`row_of` < num_pairs are chosen rows).
// `targets` decides the id-0 quirk. Pooled over an empty set = NaN, as TRL.
at::Tensor chosen_nll(const PreferenceLossSpec& spec, const at::Tensor& token_logps, const at::Tensor& row_of,
                      const at::Tensor& targets, int64_t num_pairs);

struct PreferenceLossOutput {
    at::Tensor loss;              // scalar: mean over pairs of sum_k w_k * l_k + nll_weight * nll
    at::Tensor losses;            // [B] per-pair preference part (before the mean; without the NLL)
    at::Tensor chosen_rewards;    // [B] beta * (policy - reference), detached
    at::Tensor rejected_rewards;  // [B]
};
// `chosen`/`rejected`: policy log-probs [B] (length-normalized by the caller when spec.length_normalized());
// `ref_*`: the reference's [B]; `nll`: a scalar (undefined when !spec.needs_nll()).
PreferenceLossOutput preference_loss(const PreferenceLossSpec& spec, const at::Tensor& chosen,
                                     const at::Tensor& rejected, const at::Tensor& ref_chosen,
                                     const at::Tensor& ref_rejected, const at::Tensor& nll);

// ---------------------------------------------------------------- the model side

struct PrefBatch;  // pref_dataset.h

struct PairLogps {
    at::Tensor chosen, rejected;  // [B] policy log-probs (divided by the completion length when length_normalized)
    at::Tensor nll;               // scalar, or undefined without with_nll
    double logits_chosen = 0, logits_rejected = 0;  // mean raw logit over completion positions × vocabulary
};
// One forward over the batch's 2B rows (chosen and rejected concatenated); log-probs of completion tokens only,
// their hidden states gathered before lm_head so logits exist only for completion positions, `chunk` at a time.
PairLogps pair_logps(model::Qwen2ForCausalLM& model, const PrefBatch& batch, const PreferenceLossSpec& spec,
                     int64_t chunk, bool with_nll);
// The reference's log-probs of a batch: the same model with its adapters disabled, under no-grad.
std::pair<at::Tensor, at::Tensor> reference_logps(model::Qwen2ForCausalLM& model, const PrefBatch& batch,
                                                  const PreferenceLossSpec& spec, int64_t chunk);

// TRL's metrics of one micro-batch (§7): means over its pairs; logits/* over its completion positions × vocabulary.
struct MicroMetrics {
    double loss = 0, nll_loss = NAN;
    bool has_nll          = false;
    double rewards_chosen = 0, rewards_rejected = 0, rewards_accuracies = 0, rewards_margins = 0;
    double logps_chosen = 0, logps_rejected = 0, logits_chosen = 0, logits_rejected = 0;
    // per pair (for per-pair_type metrics): accuracy (strict >) and margin
    std::vector<double> pair_accuracy, pair_margin;
};

// The metrics of one micro-batch from its loss output and log-probs (the policy's, as given to preference_loss);
// logits_chosen / logits_rejected: the mean raw logit over the completion positions × vocabulary.
MicroMetrics make_micro_metrics(const PreferenceLossOutput& out, const at::Tensor& chosen, const at::Tensor& rejected,
                                const at::Tensor& nll, double logits_chosen, double logits_rejected);

// Averages over a logging interval: the TRL metrics as the mean of the micro-batches' values (TRL's store_metrics
// then log), and per pair_type the mean over that type's pairs of accuracy and margin.
class MetricsAccumulator {
public:
    void add(const MicroMetrics& m, const std::vector<std::string>& pair_types);
    bool empty() const { return micro_batches_ == 0; }
    // TRL's names: loss, nll_loss (when the NLL is on), rewards/*, logps/*, logits/*, and
    // rewards/accuracies/<pair_type>, rewards/margins/<pair_type>.
    nlohmann::json averages(bool with_nll) const;
    nlohmann::json state() const;  // for checkpoints (exact resume of a logging interval)
    void restore(const nlohmann::json& state);
    void clear();

private:
    int64_t micro_batches_ = 0;
    std::map<std::string, double> sums_;
    std::map<std::string, std::pair<double, int64_t>> type_acc_, type_margin_;
};

}  // namespace medllm::train
