// Shared device helpers for the NF4 kernels (CUDA translation units only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace medllm::kernels::nf4_detail {

// NF4 code book, exact fp32 values as hexadecimal literals (bitsandbytes `get_4bit_type("nf4")`). Kept in
// constant memory: a local array would give every thread a 64-byte stack frame.
static __constant__ float kNf4Code[16] = {
    -0x1.0000000000000p+0f, -0x1.6473620000000p-1f, -0x1.0cd6600000000p-1f, -0x1.9465400000000p-2f,
    -0x1.23449a0000000p-2f, -0x1.7a6a7e0000000p-3f, -0x1.74f0e20000000p-4f, 0x0.0p+0f,
    0x1.45f5fe0000000p-4f,  0x1.4995c60000000p-3f,  0x1.f809ba0000000p-3f,  0x1.5a06740000000p-2f,
    0x1.c349700000000p-2f,  0x1.200f560000000p-1f,  0x1.7227660000000p-1f,  0x1.0000000000000p+0f,
};

__device__ __forceinline__ float nf4_value(int index) {
    return kNf4Code[index];
}

// Element conversions: round to nearest even, the same as c10::BFloat16 / c10::Half for finite values.
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
    return __float2half_rn(v);
}

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
    return v;
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
    return __half2float(v);
}

// The 32 weights of one 16-byte run of packed codes: value 2b comes from byte b's high nibble and 2b+1 from its low
// nibble (bytes little-endian within each 32-bit word), each code * scale as one rounded fp32 multiply (never
// contracted into an FMA, so the values equal the CPU reference's). `lut` holds the 16 code values.
__device__ __forceinline__ void decode_run(const uint4 raw, float scale, const float* lut, float (&w)[32]) {
    const uint32_t word[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int b = 0; b < 16; ++b) {
        const uint32_t byte = (word[b / 4] >> (8 * (b % 4))) & 0xFFu;
        w[2 * b]            = __fmul_rn(lut[byte >> 4], scale);
        w[2 * b + 1]        = __fmul_rn(lut[byte & 0x0F], scale);
    }
}

// Per-block absmax, rebuilt from the double-quantized statistics when absmax_q is set:
// (code8[q] * absmax2) + offset as two separately rounded fp32 operations, the order bitsandbytes uses.
struct AbsmaxSource {
    const float* absmax_f32;  // plain absmax, or nullptr when nested
    const uint8_t* absmax_q;  // nested: 8-bit codes
    const float* nested_absmax;
    const float* nested_code;  // 256 entries
    float offset;
    int64_t nested_blocksize;

    __device__ __forceinline__ float operator()(int64_t block) const {
        if (absmax_f32 != nullptr) return absmax_f32[block];
        const float scaled = __fmul_rn(nested_code[absmax_q[block]], nested_absmax[block / nested_blocksize]);
        return __fadd_rn(scaled, offset);
    }
};

}  // namespace medllm::kernels::nf4_detail
