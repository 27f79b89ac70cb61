// y = x·Wᵀ (+ b) for the decoding rows of the generation engine on the CPU.
//
// Every output is one dot product summed in one fixed order, whatever the number of rows: 8 fp32 lanes, lane j
// accumulating k ≡ j (mod 8) with fused multiply-adds in increasing k, the k beyond the last multiple of 8 in one
// scalar fused chain, then ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)) + tail, then the bias, then the rounding to the
// output dtype. So a row gets the same bits alone or among 63 others (MKL's GEMM changes kernels, and summation
// order, with the row count), which keeps a sampled sequence independent of its batch. It is also the fast path of
// decoding: for the few rows of a decode step the weight is streamed from memory once per block of rows, and bf16
// weights are read as bf16 (half the bytes) and widened in registers. AVX2+FMA when the CPU has them; otherwise a
// portable loop that computes the same bits (std::fma everywhere, the same lanes and tree).
#pragma once

#include <ATen/Tensor.h>

namespace medllm::generate {

// Whether row_linear handles this input and weight: CPU tensors, x [M, K] and a contiguous weight [N, K] both fp32
// or both bf16, bias (when given) [N] of the same dtype.
bool row_linear_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

// [M, N] in x's dtype; accumulation in fp32 (bf16 inputs are widened exactly).
at::Tensor row_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);

}  // namespace medllm::generate
