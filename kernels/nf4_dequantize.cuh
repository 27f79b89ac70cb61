// NF4 dequantization on CUDA: one launch that also rebuilds double-quantized absmax.
// Bit-exact with medllm::quant::ref::rebuild_absmax + nf4_dequantize followed by a round-to-nearest-even cast.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace medllm::kernels {

// Device pointers describing one quantized weight. For a plain state set absmax_f32; for a double-quantized one
// set absmax_q, nested_absmax, nested_code, offset and nested_blocksize (absmax_f32 = nullptr).
struct Nf4DeviceView {
    const uint8_t* packed      = nullptr;
    const float* absmax_f32    = nullptr;
    const uint8_t* absmax_q    = nullptr;
    const float* nested_absmax = nullptr;
    const float* nested_code   = nullptr;
    float offset               = 0.0f;
    int64_t nested_blocksize   = 256;
    int64_t numel              = 0;
    int64_t blocksize          = 64;
};

// out: numel elements of out_dtype (float32, bfloat16 or float16).
void launch_nf4_dequantize(const Nf4DeviceView& w, void* out, at::ScalarType out_dtype, cudaStream_t stream);

// fp32 absmax [n_blocks] rebuilt from the nested statistics.
void launch_nf4_rebuild_absmax(const Nf4DeviceView& w, float* out, int64_t n_blocks, cudaStream_t stream);

// Checked entry points on the current stream. `absmax` is fp32 (plain) or uint8 (nested, then nested_absmax and
// nested_code must be defined). `out` must be a contiguous CUDA tensor of numel elements (any shape) whose dtype is
// the target dtype; it is returned.
at::Tensor nf4_dequantize_cuda(const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& nested_absmax,
                               const at::Tensor& nested_code, double offset, int64_t nested_blocksize, int64_t numel,
                               int64_t blocksize, at::Tensor out);

at::Tensor nf4_rebuild_absmax_cuda(const at::Tensor& absmax_q, const at::Tensor& nested_absmax,
                                   const at::Tensor& nested_code, double offset, int64_t nested_blocksize);

}  // namespace medllm::kernels
