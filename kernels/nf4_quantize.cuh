// NF4 blockwise quantization on CUDA (bit-exact with medllm::quant::ref::nf4_quantize).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <tuple>

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace medllm::kernels {

// x: n device elements of `dtype` (float32, bfloat16 or float16). packed: (n+1)/2 bytes; absmax: ceil(n/blocksize).
void launch_nf4_quantize(const void* x, at::ScalarType dtype, int64_t n, int64_t blocksize, uint8_t* packed,
                         float* absmax, cudaStream_t stream);

// Checked entry point on the current stream: returns (packed uint8 [(n+1)/2, 1], absmax fp32 [n_blocks]).
std::tuple<at::Tensor, at::Tensor> nf4_quantize_cuda(const at::Tensor& x, int64_t blocksize);

}  // namespace medllm::kernels
