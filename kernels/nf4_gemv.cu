// Fused NF4 dequantize + GEMV for 1..4 activation rows (decoding). One warp per output feature: every lane takes
// 16 packed bytes (32 weights) per step with one 128-bit load, rebuilds the block's absmax (double quantization
// included), loads the matching 32 activations per row with 128-bit loads, and accumulates in fp32; a warp
// shuffle reduction finishes the dot product. The weight stream dominates, so the kernel is bandwidth-bound.
#include "nf4_gemv.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "nf4_common.cuh"

namespace medllm::kernels {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kChunk         = 32;  // weights per lane per step

template <typename T, int ROWS>
__global__ void nf4_gemv_kernel(const uint8_t* __restrict__ packed, nf4_detail::AbsmaxSource absmax, int64_t blocksize,
                                const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y,
                                int64_t out_features, int64_t in_features) {
    __shared__ float lut[16];
    if (threadIdx.x < 16) lut[threadIdx.x] = nf4_detail::nf4_value(threadIdx.x);
    __syncthreads();

    const int lane      = threadIdx.x % 32;
    const int64_t row_n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
    if (row_n >= out_features) return;

    const int64_t chunks_per_row = in_features / kChunk;
    const uint4* weight_chunks   = reinterpret_cast<const uint4*>(packed) + row_n * chunks_per_row;
    float acc[ROWS];
#pragma unroll
    for (int m = 0; m < ROWS; ++m) acc[m] = 0.0f;

    for (int64_t c = lane; c < chunks_per_row; c += 32) {
        const float scale = absmax((row_n * in_features + c * kChunk) / blocksize);
        float w[kChunk];
        nf4_detail::decode_run(weight_chunks[c], scale, lut, w);
#pragma unroll
        for (int m = 0; m < ROWS; ++m) {
            const uint4* xs       = reinterpret_cast<const uint4*>(x + m * in_features + c * kChunk);
            constexpr int kPerVec = static_cast<int>(sizeof(uint4) / sizeof(T));
#pragma unroll
            for (int v = 0; v < kChunk / kPerVec; ++v) {
                const uint4 packed_x = xs[v];
                const T* xv          = reinterpret_cast<const T*>(&packed_x);
#pragma unroll
                for (int e = 0; e < kPerVec; ++e)
                    acc[m] = fmaf(w[v * kPerVec + e], nf4_detail::to_float(xv[e]), acc[m]);
            }
        }
    }
#pragma unroll
    for (int m = 0; m < ROWS; ++m) {
        float sum = acc[m];
        for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
        if (lane == 0) {
            if (bias != nullptr) sum += nf4_detail::to_float(bias[row_n]);
            y[m * out_features + row_n] = nf4_detail::from_float<T>(sum);
        }
    }
}

template <typename T, int ROWS>
void launch_rows(const Nf4DeviceView& w, const void* x, const void* bias, void* y, int64_t out_features,
                 int64_t in_features, cudaStream_t stream) {
    const int64_t grid = (out_features + kWarpsPerBlock - 1) / kWarpsPerBlock;
    const nf4_detail::AbsmaxSource absmax{w.absmax_f32,  w.absmax_q, w.nested_absmax,
                                          w.nested_code, w.offset,   w.nested_blocksize};
    nf4_gemv_kernel<T, ROWS><<<static_cast<unsigned>(grid), kWarpsPerBlock * 32, 0, stream>>>(
        w.packed, absmax, w.blocksize, static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(y),
        out_features, in_features);
}

template <typename T>
void launch_typed(const Nf4DeviceView& w, const void* x, const void* bias, void* y, int64_t rows, int64_t out_features,
                  int64_t in_features, cudaStream_t stream) {
    switch (rows) {
        case 1:
            launch_rows<T, 1>(w, x, bias, y, out_features, in_features, stream);
            break;
        case 2:
            launch_rows<T, 2>(w, x, bias, y, out_features, in_features, stream);
            break;
        case 3:
            launch_rows<T, 3>(w, x, bias, y, out_features, in_features, stream);
            break;
        case 4:
            launch_rows<T, 4>(w, x, bias, y, out_features, in_features, stream);
            break;
        default:
            TORCH_CHECK(false, "nf4_gemv: rows must be 1..4, got ", rows);
    }
}

bool aligned16(const void* p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

}  // namespace

bool nf4_gemv_supported(int64_t rows, int64_t in_features) {
    return rows >= 1 && rows <= kNf4GemvMaxRows && in_features > 0 && in_features % kChunk == 0;
}

void launch_nf4_gemv(const Nf4DeviceView& w, const void* x, const void* bias, void* y, at::ScalarType dtype,
                     int64_t rows, int64_t out_features, int64_t in_features, cudaStream_t stream) {
    if (out_features == 0) return;
    switch (dtype) {
        case at::kFloat:
            launch_typed<float>(w, x, bias, y, rows, out_features, in_features, stream);
            break;
        case at::kBFloat16:
            launch_typed<__nv_bfloat16>(w, x, bias, y, rows, out_features, in_features, stream);
            break;
        case at::kHalf:
            launch_typed<__half>(w, x, bias, y, rows, out_features, in_features, stream);
            break;
        default:
            TORCH_CHECK(false, "nf4_gemv: unsupported dtype ", dtype);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor nf4_gemv_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& absmax,
                         const at::Tensor& nested_absmax, const at::Tensor& nested_code, double offset,
                         int64_t nested_blocksize, int64_t out_features, int64_t in_features, int64_t blocksize,
                         const at::Tensor& bias) {
    TORCH_CHECK(x.is_cuda() && x.dim() == 2, "nf4_gemv: x must be a 2-D CUDA tensor [rows, in_features]");
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
                "nf4_gemv: x must be float32, bfloat16 or float16, got ", x.scalar_type());
    TORCH_CHECK(x.size(1) == in_features, "nf4_gemv: x has ", x.size(1), " features, the weight expects ", in_features);
    TORCH_CHECK(nf4_gemv_supported(x.size(0), in_features), "nf4_gemv: needs 1..4 rows and in_features % 32 == 0, got ",
                x.size(0), " rows and ", in_features, " features");
    TORCH_CHECK(packed.is_cuda() && packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                    packed.device() == x.device() && packed.numel() == out_features * in_features / 2,
                "nf4_gemv: packed weight must be a contiguous uint8 tensor of out*in/2 bytes on x's device");
    TORCH_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
                "nf4_gemv: blocksize must be a power of two in [32, 4096], got ", blocksize);
    const int64_t n_blocks = (out_features * in_features + blocksize - 1) / blocksize;
    TORCH_CHECK(absmax.device() == x.device() && absmax.is_contiguous() && absmax.numel() == n_blocks,
                "nf4_gemv: absmax must have ", n_blocks, " contiguous entries on x's device");
    const bool nested = absmax.scalar_type() == at::kByte;
    TORCH_CHECK(nested || absmax.scalar_type() == at::kFloat, "nf4_gemv: absmax must be float32 or uint8");
    if (nested) {
        TORCH_CHECK(nested_blocksize > 0 && nested_absmax.defined() && nested_code.defined() &&
                        nested_absmax.scalar_type() == at::kFloat && nested_code.scalar_type() == at::kFloat &&
                        nested_absmax.is_contiguous() && nested_code.is_contiguous() &&
                        nested_absmax.device() == x.device() && nested_code.device() == x.device() &&
                        nested_absmax.numel() == (n_blocks + nested_blocksize - 1) / nested_blocksize &&
                        nested_code.numel() == 256,
                    "nf4_gemv: inconsistent double-quantization statistics");
    }
    if (bias.defined()) {
        TORCH_CHECK(bias.device() == x.device() && bias.numel() == out_features, "nf4_gemv: bias must have ",
                    out_features, " entries on x's device");
    }
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor input = x.contiguous();
    if (!aligned16(input.data_ptr())) input = input.clone();
    TORCH_CHECK(aligned16(packed.data_ptr()), "nf4_gemv: packed weight must be 16-byte aligned");
    at::Tensor bias_cast;
    if (bias.defined()) bias_cast = bias.to(input.scalar_type()).contiguous();
    at::Tensor y = at::empty({input.size(0), out_features}, input.options());

    Nf4DeviceView view;
    view.packed    = packed.data_ptr<uint8_t>();
    view.numel     = out_features * in_features;
    view.blocksize = blocksize;
    if (nested) {
        view.absmax_q         = absmax.data_ptr<uint8_t>();
        view.nested_absmax    = nested_absmax.data_ptr<float>();
        view.nested_code      = nested_code.data_ptr<float>();
        view.offset           = static_cast<float>(offset);
        view.nested_blocksize = nested_blocksize;
    } else {
        view.absmax_f32 = absmax.data_ptr<float>();
    }
    launch_nf4_gemv(view, input.data_ptr(), bias_cast.defined() ? bias_cast.data_ptr() : nullptr, y.data_ptr(),
                    input.scalar_type(), input.size(0), out_features, in_features, at::cuda::getCurrentCUDAStream());
    return y;
}

}  // namespace medllm::kernels
