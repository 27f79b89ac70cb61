// The bitsandbytes / transformers 4-bit checkpoint layout (Linear4bit._save_to_state_dict), for a weight key K
// (e.g. "model.layers.0.self_attn.q_proj.weight"):
//   K                                       uint8 [(numel+1)/2, 1] packed nibbles (other quant_storage dtypes are
//                                           byte views and are accepted on load)
//   K.absmax                                fp32 [n_blocks], or uint8 [n_blocks] with double quantization
//   K.quant_map                             fp32 [16]
//   K.nested_absmax, K.nested_quant_map     fp32 [ceil(n_blocks/256)], fp32 [256]        (double quantization)
//   K.quant_state.bitsandbytes__nf4         uint8: UTF-8 JSON {"quant_type", "blocksize", "dtype", "shape"
//                                           [, "nested_blocksize", "nested_dtype", "nested_offset"]}
#pragma once

#include <map>
#include <string>
#include <vector>

#include "medllm/quant/nf4.h"

namespace medllm::quant {

inline constexpr const char* kNf4QuantStateSuffix = ".quant_state.bitsandbytes__nf4";

// True when `tensors` holds a bitsandbytes NF4 quant state for `weight_key`.
bool has_nf4_state(const std::map<std::string, at::Tensor>& tensors, const std::string& weight_key);

// The JSON bitsandbytes stores in the quant_state tensor, formatted byte for byte as Python's json.dumps does.
std::string nf4_quant_state_json(const Nf4Tensor& w);

// The checkpoint entries for `w` under `weight_key` (CPU, contiguous).
std::map<std::string, at::Tensor> nf4_to_state_dict(const Nf4Tensor& w, const std::string& weight_key);
// Their names, in the same (sorted) order, without quantizing anything.
std::vector<std::string> nf4_state_dict_keys(const std::string& weight_key, bool nested);

// Reads the entries for `weight_key` (tensors stay on their device). Throws medllm::Error naming the key when an
// entry is missing or inconsistent, and for FP4 or other quantization types.
Nf4Tensor nf4_from_state_dict(const std::map<std::string, at::Tensor>& tensors, const std::string& weight_key);

// Python repr() of a double (shortest round-trip digits, Python's choice between fixed and exponent notation).
std::string python_float_repr(double value);

}  // namespace medllm::quant
