// NF4 (4-bit NormalFloat) blockwise quantization, numerically identical to bitsandbytes.
//
// Layout (bitsandbytes `quantize_4bit(..., quant_type="nf4")`):
//  - the weight is flattened row-major and cut into blocks of `blocksize` consecutive elements;
//  - each block keeps one fp32 absmax; each element keeps the 4-bit index of the nearest NF4 code
//    of x / absmax (nearest = comparison against the fp32 midpoints, an exact tie goes to the lower code);
//  - two indices per byte, the first element in the high nibble; an odd tail is padded with code 7 (0.0).
// Double quantization ("compress_statistics"): offset = mean(absmax); (absmax - offset) is quantized with the
// signed 8-bit dynamic map in blocks of 256; dequantization rebuilds absmax as (map[q] * absmax2) + offset,
// a rounded multiply and then a rounded add (never an FMA).
//
// Quantization follows bitsandbytes' CPU path (the pure-PyTorch reference backend for the 4-bit codes, the
// 65536-entry lookup table of libbitsandbytes_cpu for the 8-bit absmax codes), so it is byte-exact against
// bitsandbytes on CPU. bitsandbytes' CUDA quantizer normalises with an approximate reciprocal and may pick the
// neighbouring code for values within an ulp of a threshold; dequantization is exact in every case.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/ATen.h>

namespace medllm::quant {

inline constexpr int64_t kNf4DefaultBlocksize = 64;
inline constexpr int64_t kNestedBlocksize     = 256;  // double quantization block size (fixed in bitsandbytes)

// The 16 NF4 values, ascending (index 7 is exactly 0).
const std::array<float, 16>& nf4_code();
// The 15 fp32 midpoints between consecutive NF4 values: code(v) = #{k : v > midpoint[k]}.
const std::array<float, 15>& nf4_midpoints();
// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map()`), exact bits.
const std::array<float, 256>& dynamic_map();

// True for the block sizes bitsandbytes accepts: powers of two from 32 to 4096.
bool is_valid_nf4_blocksize(int64_t blocksize);

// ---------------------------------------------------------------- raw-buffer reference (CPU)
namespace ref {

// 4-bit index of an already normalised value (strict `>` against the midpoints; NaN -> 0).
uint8_t nf4_index(float normalized);

// Quantizes n floats. packed: (n+1)/2 bytes; absmax: ceil(n/blocksize) floats.
void nf4_quantize(const float* x, int64_t n, int64_t blocksize, uint8_t* packed, float* absmax);

// out[i] = code[nibble_i] * absmax[i / blocksize] in fp32.
void nf4_dequantize(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, float* out);

// 8-bit blockwise quantization with a sorted 256-entry code (bitsandbytes' CPU lookup-table quantizer).
// q: n bytes; absmax: ceil(n/blocksize) floats.
void quantize_blockwise_8bit(const float* x, int64_t n, const float* code, int64_t blocksize, uint8_t* q,
                             float* absmax);

// Rebuilds double-quantized absmax: out[b] = (code[q[b]] * absmax2[b / nested_blocksize]) + offset.
void rebuild_absmax(const uint8_t* q, const float* absmax2, const float* code, float offset, int64_t n_blocks,
                    int64_t nested_blocksize, float* out);

}  // namespace ref

// ---------------------------------------------------------------- tensors

// A quantized weight and its bitsandbytes QuantState. All tensors live on the same device.
struct Nf4Tensor {
    at::Tensor packed;            // uint8 [(numel+1)/2, 1]
    at::Tensor absmax;            // fp32 [n_blocks], or uint8 [n_blocks] when nested
    at::Tensor quant_map;         // fp32 [16]: the NF4 code book
    bool nested = false;          // double quantization
    at::Tensor nested_absmax;     // fp32 [ceil(n_blocks/256)]
    at::Tensor nested_quant_map;  // fp32 [256]
    float offset             = 0.0f;
    int64_t nested_blocksize = kNestedBlocksize;
    std::vector<int64_t> shape;            // original shape, e.g. [out, in]
    at::ScalarType dtype = at::kBFloat16;  // original dtype (dequantization target by default)
    int64_t blocksize    = kNf4DefaultBlocksize;

    int64_t numel() const;
    int64_t n_blocks() const;
    at::Device device() const { return packed.device(); }
    // Copies every tensor to `device`.
    Nf4Tensor to(at::Device device) const;
    // Bytes held by the quantized representation (packed weights + statistics).
    int64_t nbytes() const;
    // Throws medllm::Error naming `name` when shapes, dtypes or sizes are inconsistent.
    void validate(const std::string& name = "nf4 tensor") const;
};
using QuantState = Nf4Tensor;

// Quantizes a floating-point tensor (fp32/bf16/fp16, any shape, any device). Throws UsageError for a bad
// block size and Error for non-finite values. With double_quant the offset is computed by at::mean on CPU so
// that every device produces the same bytes.
// `name` (e.g. the checkpoint tensor's) is put in error messages.
Nf4Tensor nf4_quantize(const at::Tensor& weight, int64_t blocksize = kNf4DefaultBlocksize, bool double_quant = true,
                       const std::string& name = "");

// The fp32 per-block absmax, rebuilt from the nested statistics when double-quantized.
at::Tensor nf4_absmax(const Nf4Tensor& w);

// Dequantizes to `dtype` (default: the original dtype) with the original shape, on the tensor's device.
at::Tensor nf4_dequantize(const Nf4Tensor& w, std::optional<at::ScalarType> dtype = std::nullopt);

// y = x W^T (+ bias) for x [..., in] and W [out, in]. Without autograd, decode-sized inputs use a fused kernel that
// never builds the dense weight (CUDA: at most 4 rows, kernels/nf4_gemv.cu; CPU: up to nf4_cpu_gemv_max_rows,
// nf4_gemv_cpu) and everything else dequantizes into a reused per-thread (CPU) / per-stream (CUDA) workspace and
// calls one GEMM; when autograd is recording, the dense weight is a fresh tensor it may keep.
// `cpu_path` forces one of the two CPU paths (benchmarks and tests); it does not affect CUDA or autograd.
enum class Nf4CpuPath { by_rows, fused, dequantize_gemm };
at::Tensor nf4_linear(const at::Tensor& x, const Nf4Tensor& w, const std::optional<at::Tensor>& bias = std::nullopt,
                      Nf4CpuPath cpu_path = Nf4CpuPath::by_rows);

// Most rows (tokens) for which nf4_linear takes nf4_gemv_cpu on the CPU with activations of dtype `compute`; more
// rows dequantize once into the workspace and call the BLAS GEMM. Measured crossover (`scripts/bench-nf4.sh
// cpu-decode`, Qwen2.5-0.5B and 7B projections, AVX2 CPU): fp32 GEMM overtakes the fused kernel between 48 and 96
// rows, so fp32 takes it up to 48; LibTorch's bf16/fp16 GEMM has no native instructions on a CPU without
// AVX512-BF16 or AMX and stays 3-5x slower than the fused kernel up to 512 rows, so there 16-bit activations take it
// at every row count; on a CPU with them, 16-bit activations use the fp32 threshold.
int64_t nf4_cpu_gemv_max_rows(at::ScalarType compute);

// The fused CPU matrix-vector product behind nf4_linear for few rows: y = x W^T (+ bias) for x [..., in]
// (fp32/bf16/fp16, output in x's dtype) without a dense weight. Each weight is rounded exactly as dequantize-then-
// matmul rounds it (code * absmax to the stored dtype, then to x's dtype when that is another 16-bit type) and the
// products accumulate in fp32, so the result equals at::linear(x, nf4_dequantize(w).to(x's dtype), bias) up to the
// order of the fp32 additions. `scalar` forces the portable kernel (the tests' reference for the AVX2 ones).
at::Tensor nf4_gemv_cpu(const at::Tensor& x, const Nf4Tensor& w, const at::Tensor& bias = at::Tensor(),
                        bool scalar = false);
// True when nf4_gemv_cpu runs an AVX2 kernel for weights stored as `stored`, activations of dtype `compute` and rows
// of `in_features` (a CPU with AVX2, FMA and F16C; rows a multiple of 32 when the weights end up bf16, of 16
// otherwise); false when it runs the scalar kernel.
bool nf4_gemv_cpu_vectorized(at::ScalarType stored, at::ScalarType compute, int64_t in_features);

// grad_x = grad_y · dequant(W) for grad_y [..., out]: the input gradient of nf4_linear (no autograd), through the
// same reused workspace, so the frozen weight is never kept dense. Dequantizes to the stored dtype, then casts to
// grad_y's dtype when they differ (bitsandbytes' order).
at::Tensor nf4_linear_input_grad(const at::Tensor& grad_y, const Nf4Tensor& w);

// True when this build carries the CUDA kernels (MEDLLM_HAVE_CUDA_KERNELS).
bool nf4_cuda_kernels_available();

}  // namespace medllm::quant
