// NF4 blockwise quantization: one CTA per quantization block (grid-stride over blocks).
// Numerics follow bitsandbytes' CPU reference backend exactly (IEEE reciprocal / division, strict `>` against
// the fp32 midpoints), so the bytes equal medllm::quant::ref::nf4_quantize.
#include "nf4_quantize.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "nf4_common.cuh"

namespace medllm::kernels {
namespace {

constexpr int kQuantizeThreads = 128;

__device__ __forceinline__ uint8_t nf4_index(float v) {
    // Midpoints are (c[k] + c[k+1]) / 2 in fp32, exactly as the CPU reference computes them.
    uint8_t index = 0;
#pragma unroll
    for (int k = 0; k < 15; ++k) {
        const float midpoint = __fmul_rn(__fadd_rn(nf4_detail::nf4_value(k), nf4_detail::nf4_value(k + 1)), 0.5f);
        index += v > midpoint ? 1 : 0;
    }
    return index;
}

template <typename T>
__global__ void nf4_quantize_kernel(const T* __restrict__ x, int64_t n, int64_t blocksize, uint8_t* __restrict__ packed,
                                    float* __restrict__ absmax) {
    __shared__ float partial[kQuantizeThreads];
    const int64_t n_blocks = (n + blocksize - 1) / blocksize;
    const int64_t full     = n - n % blocksize;
    for (int64_t block = blockIdx.x; block < n_blocks; block += gridDim.x) {
        const int64_t start = block * blocksize;
        const int64_t end   = min(start + blocksize, n);

        float local_max = 0.0f;
        for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x)
            local_max = fmaxf(local_max, fabsf(nf4_detail::to_float(x[i])));
        partial[threadIdx.x] = local_max;
        __syncthreads();
        for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
            if (threadIdx.x < stride) partial[threadIdx.x] = fmaxf(partial[threadIdx.x], partial[threadIdx.x + stride]);
            __syncthreads();
        }
        const float block_max = partial[0];
        __syncthreads();  // partial[] is reused by the next block

        // Full blocks multiply by the IEEE reciprocal of max(absmax, 1e-38); the tail block divides by it and stores
        // the clamped value (bitsandbytes' reference backend).
        const bool is_tail  = start >= full;
        const float clamped = fmaxf(block_max, 1e-38f);
        const float inverse = __frcp_rn(clamped);
        if (threadIdx.x == 0) absmax[block] = is_tail ? clamped : block_max;

        // Block sizes are even, so byte j holds elements 2j (high nibble) and 2j+1 of the same block.
        for (int64_t i = start + 2 * threadIdx.x; i < end; i += 2 * blockDim.x) {
            uint8_t codes[2];
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const float v = (i + e < end) ? nf4_detail::to_float(x[i + e]) : 0.0f;
                float scaled  = is_tail ? __fdiv_rn(v, clamped) : __fmul_rn(v, inverse);
                if (i + e >= end) scaled = 0.0f;  // odd tail: padded with 0.0 -> code 7
                scaled   = fminf(fmaxf(scaled, -1.0f), 1.0f);
                codes[e] = nf4_index(scaled);
            }
            packed[i / 2] = static_cast<uint8_t>((codes[0] << 4) | codes[1]);
        }
    }
}

template <typename T>
void launch_typed(const void* x, int64_t n, int64_t blocksize, uint8_t* packed, float* absmax, cudaStream_t stream) {
    const int64_t n_blocks = (n + blocksize - 1) / blocksize;
    const int grid         = static_cast<int>(std::min<int64_t>(n_blocks, 65535 * 16));
    nf4_quantize_kernel<T>
        <<<grid, kQuantizeThreads, 0, stream>>>(static_cast<const T*>(x), n, blocksize, packed, absmax);
}

}  // namespace

void launch_nf4_quantize(const void* x, at::ScalarType dtype, int64_t n, int64_t blocksize, uint8_t* packed,
                         float* absmax, cudaStream_t stream) {
    if (n == 0) return;
    switch (dtype) {
        case at::kFloat:
            launch_typed<float>(x, n, blocksize, packed, absmax, stream);
            break;
        case at::kBFloat16:
            launch_typed<__nv_bfloat16>(x, n, blocksize, packed, absmax, stream);
            break;
        case at::kHalf:
            launch_typed<__half>(x, n, blocksize, packed, absmax, stream);
            break;
        default:
            TORCH_CHECK(false, "nf4_quantize_cuda: unsupported dtype ", dtype);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> nf4_quantize_cuda(const at::Tensor& x, int64_t blocksize) {
    TORCH_CHECK(x.is_cuda(), "nf4_quantize_cuda: input must be a CUDA tensor");
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
                "nf4_quantize_cuda: input must be float32, bfloat16 or float16, got ", x.scalar_type());
    TORCH_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
                "nf4_quantize_cuda: blocksize must be a power of two in [32, 4096], got ", blocksize);
    const c10::cuda::CUDAGuard guard(x.device());
    const at::Tensor input = x.contiguous();
    const int64_t n        = input.numel();
    const auto bytes_opts  = input.options().dtype(at::kByte);
    at::Tensor packed      = at::empty({(n + 1) / 2, 1}, bytes_opts);
    at::Tensor absmax      = at::empty({(n + blocksize - 1) / blocksize}, input.options().dtype(at::kFloat));
    launch_nf4_quantize(input.data_ptr(), input.scalar_type(), n, blocksize, packed.data_ptr<uint8_t>(),
                        absmax.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
    return {packed, absmax};
}

}  // namespace medllm::kernels
