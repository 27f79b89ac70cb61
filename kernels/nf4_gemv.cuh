// Fused NF4 dequantize + GEMV for decoding: y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]) for 1..4 rows of x.
// The weight is dequantized in registers (fp32 code * fp32 absmax) and accumulated in fp32; results agree with
// dequantize + matmul within accumulation-order tolerance, not bit for bit.
#pragma once

#include <ATen/ATen.h>

#include "nf4_dequantize.cuh"

namespace medllm::kernels {

inline constexpr int64_t kNf4GemvMaxRows = 4;

// True when the fused kernel handles this shape: 1..4 rows, K a multiple of 32 (whole 16-byte chunks per row).
bool nf4_gemv_supported(int64_t rows, int64_t in_features);

// x: [rows, K] contiguous (float32, bfloat16 or float16); y: [rows, N] of the same dtype; bias: N elements of the
// same dtype or nullptr.
void launch_nf4_gemv(const Nf4DeviceView& w, const void* x, const void* bias, void* y, at::ScalarType dtype,
                     int64_t rows, int64_t out_features, int64_t in_features, cudaStream_t stream);

// Checked entry point on the current stream: x [rows, K] -> [rows, N].
at::Tensor nf4_gemv_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
                         const at::Tensor& nested_absmax, const at::Tensor& nested_code, double offset,
                         int64_t nested_blocksize, int64_t out_features, int64_t in_features, int64_t blocksize,
                         const at::Tensor& bias);

}  // namespace medllm::kernels
