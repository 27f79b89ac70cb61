// Shared device helpers for the NF4 kernels (CUDA translation units only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace medllm::kernels::nf4_detail {

// NF4 code book, exact fp32 bits (bitsandbytes `get_4bit_type("nf4")`).
__device__ __forceinline__ float nf4_value(int index) {
    constexpr uint32_t kBits[16] = {0xBF800000u, 0xBF3239B1u, 0xBF066B30u, 0xBECA32A0u, 0xBE91A24Du, 0xBE3D353Fu,
                                    0xBDBA7871u, 0x00000000u, 0x3DA2FAFFu, 0x3E24CAE3u, 0x3E7C04DDu, 0x3EAD033Au,
                                    0x3EE1A4B8u, 0x3F1007ABu, 0x3F3913B3u, 0x3F800000u};
    return __uint_as_float(kBits[index]);
}

// Element conversions: round to nearest even, the same as c10::BFloat16 / c10::Half for finite values.
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }

// Per-block absmax, rebuilt from the double-quantized statistics when absmax_q is set:
// (code8[q] * absmax2) + offset as two separately rounded fp32 operations, the order bitsandbytes uses.
struct AbsmaxSource {
    const float* absmax_f32;    // plain absmax, or nullptr when nested
    const uint8_t* absmax_q;    // nested: 8-bit codes
    const float* nested_absmax;
    const float* nested_code;   // 256 entries
    float offset;
    int64_t nested_blocksize;

    __device__ __forceinline__ float operator()(int64_t block) const {
        if (absmax_f32 != nullptr) return absmax_f32[block];
        const float scaled = __fmul_rn(nested_code[absmax_q[block]], nested_absmax[block / nested_blocksize]);
        return __fadd_rn(scaled, offset);
    }
};

}  // namespace medllm::kernels::nf4_detail
