// The one check of a checkpoint's tensors against its config.json: names, shapes and dtypes (dense or bitsandbytes
// NF4), from the safetensors headers alone (no weight data is read). Every command that reads a checkpoint runs it
// before it allocates or writes anything: info, generate / eval (Qwen2ForCausalLM::from_pretrained and the LoRA
// loader), quantize and merge, so they accept and refuse the same checkpoints with the same message.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "medllm/io/safetensors.h"
#include "medllm/model/config.h"

namespace medllm::model {

struct CheckpointCheck {
    std::vector<std::string> problems;            // empty when the checkpoint matches; each names the tensor
    uint64_t parameters = 0;                      // parameters of the config's tensors found (NF4 counted unpacked)
    std::map<std::string, uint64_t> dtype_bytes;  // stored bytes per safetensors dtype, every tensor
    int64_t nf4_weights = 0;                      // weights stored as bitsandbytes NF4

    bool ok() const { return problems.empty(); }
    // "3 problem(s), first: missing tensor 'model.norm.weight'"; "" when ok().
    std::string summary() const;
};

// Expected: exactly the tensors of expected_tensors(config), each a floating dtype of the config's shape, or a
// bitsandbytes NF4 weight (packed uint8 [(numel+1)/2, 1] with its .absmax, .quant_map and quant_state entries).
// Also accepted, as transformers does: rotary `inv_freq` buffers of old checkpoints and an lm_head.weight of the
// right shape when the embeddings are tied (both are ignored when loading).
CheckpointCheck check_checkpoint(const io::CheckpointReader& reader, const Qwen2Config& config);

// Throws medllm::Error "<where>: checkpoint does not match <config.source>: N problem(s), first: ..." (one line).
void validate_checkpoint(const io::CheckpointReader& reader, const Qwen2Config& config, const std::string& where);

}  // namespace medllm::model
