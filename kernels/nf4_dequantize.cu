// NF4 dequantization in a single launch. Each thread turns one 16-byte chunk (32 elements, always inside one
// quantization block because block sizes are >= 32) into 32 outputs: one 128-bit load, one absmax (rebuilt from
// the nested statistics when double-quantized), 32 fp32 multiplies, and 128-bit stores.
#include "nf4_dequantize.cuh"

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "nf4_common.cuh"

namespace medllm::kernels {
namespace {

constexpr int kDequantThreads     = 256;
constexpr int64_t kElemsPerThread = 32;

template <typename T>
__global__ void nf4_dequantize_kernel(const uint8_t* __restrict__ packed, nf4_detail::AbsmaxSource absmax,
                                      int64_t numel, int64_t blocksize, T* __restrict__ out, bool vectorized) {
    __shared__ float lut[16];
    if (threadIdx.x < 16) lut[threadIdx.x] = nf4_detail::nf4_value(threadIdx.x);
    __syncthreads();

    const int64_t chunk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t first = chunk * kElemsPerThread;
    if (first >= numel) return;
    const float scale = absmax(first / blocksize);

    if (vectorized && first + kElemsPerThread <= numel) {
        float w[kElemsPerThread];
        nf4_detail::decode_run(reinterpret_cast<const uint4*>(packed)[chunk], scale, lut, w);
        alignas(16) T values[kElemsPerThread];
#pragma unroll
        for (int e = 0; e < kElemsPerThread; ++e) values[e] = nf4_detail::from_float<T>(w[e]);
        uint4* dst       = reinterpret_cast<uint4*>(out + first);
        const uint4* src = reinterpret_cast<const uint4*>(values);
#pragma unroll
        for (int v = 0; v < static_cast<int>(kElemsPerThread * sizeof(T) / sizeof(uint4)); ++v) dst[v] = src[v];
        return;
    }
    const int64_t end = min(first + kElemsPerThread, numel);
    for (int64_t i = first; i < end; ++i) {
        const uint8_t byte = packed[i / 2];
        const int nibble   = (i % 2 == 0) ? (byte >> 4) : (byte & 0x0F);
        out[i]             = nf4_detail::from_float<T>(__fmul_rn(lut[nibble], scale));
    }
}

__global__ void rebuild_absmax_kernel(nf4_detail::AbsmaxSource absmax, int64_t n_blocks, float* __restrict__ out) {
    const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (b < n_blocks) out[b] = absmax(b);
}

nf4_detail::AbsmaxSource absmax_source(const Nf4DeviceView& w) {
    return {w.absmax_f32, w.absmax_q, w.nested_absmax, w.nested_code, w.offset, w.nested_blocksize};
}

bool aligned16(const void* p) {
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <typename T>
void launch_typed(const Nf4DeviceView& w, void* out, cudaStream_t stream) {
    const int64_t chunks = (w.numel + kElemsPerThread - 1) / kElemsPerThread;
    const int64_t grid   = (chunks + kDequantThreads - 1) / kDequantThreads;
    TORCH_CHECK(grid <= 0x7FFFFFFF, "nf4 dequantize: tensor too large (", w.numel, " elements)");
    const bool vectorized = aligned16(w.packed) && aligned16(out);
    nf4_dequantize_kernel<T><<<static_cast<unsigned>(grid), kDequantThreads, 0, stream>>>(
        w.packed, absmax_source(w), w.numel, w.blocksize, static_cast<T*>(out), vectorized);
}

void check_state(const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& nested_absmax,
                 const at::Tensor& nested_code, int64_t nested_blocksize, int64_t numel, int64_t blocksize) {
    TORCH_CHECK(packed.is_cuda() && packed.scalar_type() == at::kByte && packed.is_contiguous(),
                "nf4 dequantize: packed weight must be a contiguous uint8 CUDA tensor");
    TORCH_CHECK(packed.numel() == (numel + 1) / 2, "nf4 dequantize: packed weight has ", packed.numel(),
                " bytes, expected ", (numel + 1) / 2);
    TORCH_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
                "nf4 dequantize: blocksize must be a power of two in [32, 4096], got ", blocksize);
    const int64_t n_blocks = (numel + blocksize - 1) / blocksize;
    TORCH_CHECK(absmax.is_cuda() && absmax.is_contiguous() && absmax.device() == packed.device(),
                "nf4 dequantize: absmax must be a contiguous tensor on the weight's device");
    TORCH_CHECK(absmax.numel() == n_blocks, "nf4 dequantize: absmax has ", absmax.numel(), " entries, expected ",
                n_blocks);
    if (absmax.scalar_type() == at::kByte) {
        TORCH_CHECK(nested_absmax.defined() && nested_code.defined(),
                    "nf4 dequantize: uint8 absmax needs nested_absmax and nested_quant_map");
        TORCH_CHECK(nested_blocksize > 0, "nf4 dequantize: nested blocksize must be positive");
        TORCH_CHECK(nested_absmax.scalar_type() == at::kFloat && nested_absmax.is_contiguous() &&
                        nested_absmax.device() == packed.device() &&
                        nested_absmax.numel() == (n_blocks + nested_blocksize - 1) / nested_blocksize,
                    "nf4 dequantize: nested_absmax must be fp32 [ceil(n_blocks / nested_blocksize)] on the device");
        TORCH_CHECK(nested_code.scalar_type() == at::kFloat && nested_code.is_contiguous() &&
                        nested_code.device() == packed.device() && nested_code.numel() == 256,
                    "nf4 dequantize: nested_quant_map must be fp32 [256] on the device");
    } else {
        TORCH_CHECK(absmax.scalar_type() == at::kFloat, "nf4 dequantize: absmax must be float32 or uint8, got ",
                    absmax.scalar_type());
    }
}

Nf4DeviceView make_view(const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& nested_absmax,
                        const at::Tensor& nested_code, double offset, int64_t nested_blocksize, int64_t numel,
                        int64_t blocksize) {
    Nf4DeviceView view;
    view.packed    = packed.data_ptr<uint8_t>();
    view.numel     = numel;
    view.blocksize = blocksize;
    if (absmax.scalar_type() == at::kByte) {
        view.absmax_q         = absmax.data_ptr<uint8_t>();
        view.nested_absmax    = nested_absmax.data_ptr<float>();
        view.nested_code      = nested_code.data_ptr<float>();
        view.offset           = static_cast<float>(offset);
        view.nested_blocksize = nested_blocksize;
    } else {
        view.absmax_f32 = absmax.data_ptr<float>();
    }
    return view;
}

}  // namespace

void launch_nf4_dequantize(const Nf4DeviceView& w, void* out, at::ScalarType out_dtype, cudaStream_t stream) {
    if (w.numel == 0) return;
    switch (out_dtype) {
        case at::kFloat:
            launch_typed<float>(w, out, stream);
            break;
        case at::kBFloat16:
            launch_typed<__nv_bfloat16>(w, out, stream);
            break;
        case at::kHalf:
            launch_typed<__half>(w, out, stream);
            break;
        default:
            TORCH_CHECK(false, "nf4 dequantize: unsupported output dtype ", out_dtype);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_nf4_rebuild_absmax(const Nf4DeviceView& w, float* out, int64_t n_blocks, cudaStream_t stream) {
    if (n_blocks == 0) return;
    constexpr int threads = 256;
    const int64_t grid    = (n_blocks + threads - 1) / threads;
    rebuild_absmax_kernel<<<static_cast<unsigned>(grid), threads, 0, stream>>>(absmax_source(w), n_blocks, out);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor nf4_dequantize_cuda(const at::Tensor& packed, const at::Tensor& absmax, const at::Tensor& nested_absmax,
                               const at::Tensor& nested_code, double offset, int64_t nested_blocksize, int64_t numel,
                               int64_t blocksize, at::Tensor out) {
    check_state(packed, absmax, nested_absmax, nested_code, nested_blocksize, numel, blocksize);
    TORCH_CHECK(out.defined() && out.is_cuda() && out.is_contiguous() && out.device() == packed.device(),
                "nf4 dequantize: output must be a contiguous tensor on the weight's device");
    TORCH_CHECK(out.numel() == numel, "nf4 dequantize: output has ", out.numel(), " elements, expected ", numel);
    const c10::cuda::CUDAGuard guard(packed.device());
    const Nf4DeviceView view =
        make_view(packed, absmax, nested_absmax, nested_code, offset, nested_blocksize, numel, blocksize);
    launch_nf4_dequantize(view, out.data_ptr(), out.scalar_type(), at::cuda::getCurrentCUDAStream());
    return out;
}

at::Tensor nf4_rebuild_absmax_cuda(const at::Tensor& absmax_q, const at::Tensor& nested_absmax,
                                   const at::Tensor& nested_code, double offset, int64_t nested_blocksize) {
    TORCH_CHECK(absmax_q.is_cuda() && absmax_q.scalar_type() == at::kByte && absmax_q.is_contiguous(),
                "nf4 rebuild absmax: codes must be a contiguous uint8 CUDA tensor");
    const int64_t n_blocks = absmax_q.numel();
    TORCH_CHECK(nested_blocksize > 0, "nf4 rebuild absmax: nested blocksize must be positive");
    TORCH_CHECK(nested_absmax.scalar_type() == at::kFloat && nested_absmax.is_contiguous() &&
                    nested_absmax.device() == absmax_q.device() &&
                    nested_absmax.numel() == (n_blocks + nested_blocksize - 1) / nested_blocksize,
                "nf4 rebuild absmax: nested_absmax must be fp32 [ceil(n_blocks / nested_blocksize)] on the device");
    TORCH_CHECK(nested_code.scalar_type() == at::kFloat && nested_code.is_contiguous() &&
                    nested_code.device() == absmax_q.device() && nested_code.numel() == 256,
                "nf4 rebuild absmax: nested_quant_map must be fp32 [256] on the device");
    const c10::cuda::CUDAGuard guard(absmax_q.device());
    Nf4DeviceView view;
    view.absmax_q         = absmax_q.data_ptr<uint8_t>();
    view.nested_absmax    = nested_absmax.data_ptr<float>();
    view.nested_code      = nested_code.data_ptr<float>();
    view.offset           = static_cast<float>(offset);
    view.nested_blocksize = nested_blocksize;
    at::Tensor out        = at::empty({n_blocks}, absmax_q.options().dtype(at::kFloat));
    launch_nf4_rebuild_absmax(view, out.data_ptr<float>(), n_blocks, at::cuda::getCurrentCUDAStream());
    return out;
}

}  // namespace medllm::kernels
