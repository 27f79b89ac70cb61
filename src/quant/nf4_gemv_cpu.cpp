// Fused NF4 matrix-vector product on the CPU for decode-shaped inputs: y = x · dequant(W)ᵀ without a dense weight.
//
// Per output row and per quantization block the 16 possible weights code[c] · absmax are computed once and rounded
// as dequantize-then-matmul rounds them (to the stored dtype, then to the compute dtype when that is a different
// 16-bit type: bitsandbytes' "dequantize, then cast"), and the row's 4-bit codes only select among them while the
// dot products accumulate in fp32. Compared with dequantize + GEMM the only difference is the order of the fp32
// additions (docs/reference/nf4-qlora.md for the format).
//
// Three kernels share that definition: a scalar one (any shape; the reference the tests hold the others to) and two
// AVX2 ones, chosen at run time, that keep everything in registers:
//  - weights that end up bf16 (a bf16 checkpoint, the usual case), rows a multiple of 32: per block, the 16 weights
//    become two 16-byte tables (their low and high bytes) and two byte shuffles (vpshufb) look 32 weights up at
//    once; a shift or a mask makes each bf16 its fp32 value (a bf16 is the top half of an fp32);
//  - any other rounding, rows a multiple of 16: two 8-wide table lookups (vpermps) and a blend on the nibble's top
//    bit select 8 fp32 weights at a time.
// Each reads the activations in an order matching where its lookups put the weights, arranged once per call.
// Intrinsics rather than plain loops: a table lookup written in C++ compiles to gathers, several times slower here.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "medllm/core/error.h"
#include "medllm/quant/nf4.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace medllm::quant {
namespace {

// How a weight code[c] · absmax (an fp32 product) is rounded before it multiplies an activation.
enum class Rounding { none, bf16, fp16, bf16_then_fp16, fp16_then_bf16 };

Rounding rounding_for(at::ScalarType stored, at::ScalarType compute) {
    const Rounding to_stored = stored == at::kBFloat16 ? Rounding::bf16
                               : stored == at::kHalf   ? Rounding::fp16
                                                       : Rounding::none;
    const bool compute_16bit = compute == at::kBFloat16 || compute == at::kHalf;
    if (!compute_16bit || compute == stored) return to_stored;  // a cast to fp32 (or none) is exact
    if (stored == at::kFloat) return compute == at::kBFloat16 ? Rounding::bf16 : Rounding::fp16;
    return stored == at::kBFloat16 ? Rounding::bf16_then_fp16 : Rounding::fp16_then_bf16;
}

float round_weight(float v, Rounding r) {
    auto bf16 = [](float f) { return static_cast<float>(static_cast<c10::BFloat16>(f)); };
    auto fp16 = [](float f) { return static_cast<float>(static_cast<c10::Half>(f)); };
    switch (r) {
        case Rounding::bf16:
            return bf16(v);
        case Rounding::fp16:
            return fp16(v);
        case Rounding::bf16_then_fp16:
            return fp16(bf16(v));
        case Rounding::fp16_then_bf16:
            return bf16(fp16(v));
        default:
            return v;
    }
}

// The weight as the kernels read it: packed codes plus per-block fp32 scales, either stored or rebuilt from the
// double-quantized statistics for the blocks a tile of rows needs.
struct WeightView {
    const uint8_t* packed    = nullptr;
    const float* absmax      = nullptr;  // plain: fp32 per block
    const uint8_t* codes8    = nullptr;  // nested: 8-bit codes per block
    const float* absmax2     = nullptr;  // nested: fp32 per nested block
    const float* code2       = nullptr;  // nested: the 256-entry map
    float offset             = 0.0f;
    int64_t nested_blocksize = kNestedBlocksize;
    int64_t out = 0, in = 0, blocksize = 0;
    Rounding rounding = Rounding::none;
};

// Rebuilds double-quantized absmax for blocks [b0, b1) into out[0..): (code2[q] * absmax2) + offset with one
// rounding per operation, as ref::rebuild_absmax and so nf4_dequantize do (never contracted to an FMA, whatever the
// flags), one nested block at a time so no division runs per block.
__attribute__((optimize("fp-contract=off"))) void rebuild_scales(const uint8_t* codes8, const float* absmax2,
                                                                 const float* code2, float offset, int64_t nested,
                                                                 int64_t b0, int64_t b1, float* out) {
    for (int64_t j = b0 / nested; j * nested < b1; ++j) {
        const float scale2 = absmax2[j];
        const int64_t end  = std::min(b1, (j + 1) * nested);
        for (int64_t b = std::max(b0, j * nested); b < end; ++b) {
            const float scaled = code2[codes8[b]] * scale2;
            out[b - b0]        = scaled + offset;
        }
    }
}

// Scales of blocks [b0, b1): a pointer p with p[b - first] = absmax[b] for b in [b0, b1), stored or rebuilt.
const float* block_scales(const WeightView& w, int64_t b0, int64_t b1, std::vector<float>& buffer, int64_t& first) {
    if (!w.codes8) {
        first = 0;
        return w.absmax;
    }
    first = b0;
    buffer.resize(static_cast<size_t>(b1 - b0));
    rebuild_scales(w.codes8, w.absmax2, w.code2, w.offset, w.nested_blocksize, b0, b1, buffer.data());
    return buffer.data();
}

template <typename Out>
void store(Out* y, float v) {
    *y = static_cast<Out>(v);
}

// ---------------------------------------------------------------- scalar kernel (any shape)

// Output rows [n0, n1) for M activation rows x ([M, in] fp32, natural order); y[m * out + n].
template <typename Out>
void rows_scalar(const WeightView& w, const float* scales, int64_t first, int64_t n0, int64_t n1, const float* x,
                 int64_t M, const float* bias, Out* y) {
    const auto& code = nf4_code();
    std::vector<float> acc(static_cast<size_t>(M));
    float table[16];
    int64_t table_block = -1;
    for (int64_t n = n0; n < n1; ++n) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t k = 0; k < w.in; ++k) {
            const int64_t i = n * w.in + k;
            const int64_t b = i / w.blocksize;
            if (b != table_block) {
                for (int c = 0; c < 16; ++c) table[c] = round_weight(code[c] * scales[b - first], w.rounding);
                table_block = b;
            }
            const uint8_t byte = w.packed[i / 2];
            const float weight = table[(i % 2 == 0) ? (byte >> 4) : (byte & 0x0F)];
            for (int64_t m = 0; m < M; ++m) acc[m] += x[m * w.in + k] * weight;
        }
        for (int64_t m = 0; m < M; ++m) store(y + m * w.out + n, acc[m] + (bias ? bias[n] : 0.0f));
    }
}

// ---------------------------------------------------------------- AVX2 kernels

bool has_avx2() {
#if defined(__x86_64__)
    static const bool supported =
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    return supported;
#else
    return false;
#endif
}

enum class Kernel { scalar, avx2_permute, avx2_bf16 };

Kernel choose_kernel(Rounding rounding, int64_t in_features) {
    if (!has_avx2()) return Kernel::scalar;
    const bool ends_bf16 = rounding == Rounding::bf16 || rounding == Rounding::fp16_then_bf16;
    if (ends_bf16 && in_features % 32 == 0) return Kernel::avx2_bf16;
    if (in_features % 16 == 0) return Kernel::avx2_permute;
    return Kernel::scalar;
}

// Activations as fp32 in the order a kernel reads them, per group of 16 elements e0..e15 (n a multiple of 16 for
// the AVX2 kernels):
//  - scalar: natural order;
//  - avx2_permute: the 8 even elements, then the 8 odd ones (the high and the low nibbles of 8 packed bytes);
//  - avx2_bf16: e0 e4 e8 e12, e1 e5 e9 e13, e2 e6 e10 e14, e3 e7 e11 e15 (see rows_avx2_bf16).
template <typename In>
void to_kernel_order(Kernel kernel, const In* x, int64_t n, float* out) {
    if (kernel == Kernel::scalar) {
        for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(x[i]);
        return;
    }
    for (int64_t g = 0; g < n; g += 16) {
        for (int j = 0; j < 16; ++j) {
            const int from = kernel == Kernel::avx2_permute ? (j % 8) * 2 + j / 8 : (j % 4) * 4 + j / 4;
            out[g + j]     = static_cast<float>(x[g + from]);
        }
    }
}

#if defined(__x86_64__)
#define MEDLLM_AVX2 __attribute__((target("avx2,fma,f16c")))

MEDLLM_AVX2 inline float horizontal_sum(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

// Nearest bf16 (ties to even) on the bits, as c10::BFloat16 rounds finite values; the result is an fp32 whose low
// 16 bits are zero.
MEDLLM_AVX2 inline __m256 round_bf16(__m256 v) {
    const __m256i u   = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    const __m256i r   = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
    return _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// Nearest fp16 (ties to even, F16C) and back.
MEDLLM_AVX2 inline __m256 round_fp16(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// code[c] · scale for 8 codes, rounded as R says.
template <Rounding R>
MEDLLM_AVX2 inline __m256 weights_of(__m256 codes, __m256 scale) {
    const __m256 v = _mm256_mul_ps(codes, scale);
    if constexpr (R == Rounding::bf16) return round_bf16(v);
    if constexpr (R == Rounding::fp16) return round_fp16(v);
    if constexpr (R == Rounding::bf16_then_fp16) return round_fp16(round_bf16(v));
    if constexpr (R == Rounding::fp16_then_bf16) return round_bf16(round_fp16(v));
    return v;
}

// Rows [n0, n1) with two 8-wide table lookups per 8 weights, in % 16 == 0. Two accumulators per activation row while
// they fit in the 16 vector registers (M <= 4), one beyond.
template <int M, Rounding R, typename Out>
MEDLLM_AVX2 void rows_avx2_permute(const WeightView& w, const float* scales, int64_t first, int64_t n0, int64_t n1,
                                   const float* xk, const float* bias, Out* y) {
    constexpr bool kTwo  = M <= 4;
    const float* code    = nf4_code().data();
    const __m256 code_lo = _mm256_loadu_ps(code), code_hi = _mm256_loadu_ps(code + 8);
    const int64_t in = w.in;
    const int shift  = __builtin_ctzll(static_cast<unsigned long long>(w.blocksize));  // a power of two
    for (int64_t n = n0; n < n1; ++n) {
        __m256 acc_even[M], acc_odd[M];
        for (int m = 0; m < M; ++m) acc_even[m] = acc_odd[m] = _mm256_setzero_ps();
        const uint8_t* bytes_at = w.packed + n * (in / 2);
        int64_t k               = 0;
        while (k < in) {
            // One segment: the part of this row inside one quantization block (a block may span rows). Both ends
            // are multiples of 16 because the row length and the block size are.
            const int64_t i       = n * in + k;
            const int64_t b       = i >> shift;
            const int64_t seg_end = std::min(in, k + ((b + 1) << shift) - i);
            const __m256 scale    = _mm256_set1_ps(scales[b - first]);
            const __m256 lut_lo = weights_of<R>(code_lo, scale), lut_hi = weights_of<R>(code_hi, scale);
            do {
                const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes_at)));
                // Even element: the high nibble (index bits 4..6, table-half bit 7); odd: the low one (bits 0..2, 3).
                // vpermps reads only the low 3 bits of each index; blendv reads only the sign bit of its selector.
                const __m256i high_index = _mm256_srli_epi32(bytes, 4);
                const __m256 high_half   = _mm256_castsi256_ps(_mm256_slli_epi32(bytes, 24));
                const __m256 low_half    = _mm256_castsi256_ps(_mm256_slli_epi32(bytes, 28));
                const __m256 w_even      = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lut_lo, high_index),
                                                            _mm256_permutevar8x32_ps(lut_hi, high_index), high_half);
                const __m256 w_odd       = _mm256_blendv_ps(_mm256_permutevar8x32_ps(lut_lo, bytes),
                                                            _mm256_permutevar8x32_ps(lut_hi, bytes), low_half);
                for (int m = 0; m < M; ++m) {
                    const float* xm = xk + m * in + k;
                    acc_even[m]     = _mm256_fmadd_ps(w_even, _mm256_loadu_ps(xm), acc_even[m]);
                    if constexpr (kTwo) {
                        acc_odd[m] = _mm256_fmadd_ps(w_odd, _mm256_loadu_ps(xm + 8), acc_odd[m]);
                    } else {
                        acc_even[m] = _mm256_fmadd_ps(w_odd, _mm256_loadu_ps(xm + 8), acc_even[m]);
                    }
                }
                bytes_at += 8;
                k += 16;
            } while (k < seg_end);
        }
        for (int m = 0; m < M; ++m) {
            const __m256 total = kTwo ? _mm256_add_ps(acc_even[m], acc_odd[m]) : acc_even[m];
            store(y + m * w.out + n, horizontal_sum(total) + (bias ? bias[n] : 0.0f));
        }
    }
}

// A block's 16 weights (bf16 values) as two byte tables repeated in both 128-bit lanes: `low` holds byte 0 of each
// bf16, `high` byte 1, indexed by the code.
template <Rounding R>
MEDLLM_AVX2 inline void bf16_byte_tables(__m256 code_lo, __m256 code_hi, float scale, __m256i& low, __m256i& high) {
    const __m256 s   = _mm256_set1_ps(scale);
    const __m256i r0 = _mm256_castps_si256(weights_of<R>(code_lo, s));  // codes 0..7, the bf16 in bits 16..31
    const __m256i r1 = _mm256_castps_si256(weights_of<R>(code_hi, s));  // codes 8..15
    // Bytes 2 and 3 of every dword: lane 0 gets [low 0-3, low 8-11, high 0-3, high 8-11], lane 1 the same for codes
    // 4-7 and 12-15; one dword permutation puts each table in code order, in both lanes.
    const __m256i pick0 = _mm256_setr_epi8(2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15, -1, -1, -1, -1,  //
                                           2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15, -1, -1, -1, -1);
    const __m256i pick1 = _mm256_setr_epi8(-1, -1, -1, -1, 2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15,  //
                                           -1, -1, -1, -1, 2, 6, 10, 14, -1, -1, -1, -1, 3, 7, 11, 15);
    const __m256i both  = _mm256_or_si256(_mm256_shuffle_epi8(r0, pick0), _mm256_shuffle_epi8(r1, pick1));
    low                 = _mm256_permutevar8x32_epi32(both, _mm256_setr_epi32(0, 4, 1, 5, 0, 4, 1, 5));
    high                = _mm256_permutevar8x32_epi32(both, _mm256_setr_epi32(2, 6, 3, 7, 2, 6, 3, 7));
}

// Rows [n0, n1) of bf16 weights, in % 32 == 0: 16 packed bytes (32 weights) per step. Lane 0 of `codes` holds the
// high nibbles (elements 0, 2, .., 30), lane 1 the low ones (1, 3, .., 31); the table shuffles give each weight's two
// bytes, and interleaving them gives 16-bit words, two per dword: words 2j and 2j+1 of lane 0 are elements 4j and
// 4j+2, of lane 1 elements 4j+1 and 4j+3 (16 more in the second interleave). A left shift by 16 makes the even
// words fp32 and masking the low half the odd ones: per 16 elements, e0 e4 e8 e12 | e1 e5 e9 e13, then
// e2 e6 e10 e14 | e3 e7 e11 e15 -- the activations' kernel order. Accumulators: 4 for one activation row, 2 each
// for up to 4 rows, 1 beyond (the 16 vector registers).
template <int M, Rounding R, typename Out>
MEDLLM_AVX2 void rows_avx2_bf16(const WeightView& w, const float* scales, int64_t first, int64_t n0, int64_t n1,
                                const float* xk, const float* bias, Out* y) {
    constexpr int kAcc   = M == 1 ? 4 : M <= 4 ? 2 : 1;
    const float* code    = nf4_code().data();
    const __m256 code_lo = _mm256_loadu_ps(code), code_hi = _mm256_loadu_ps(code + 8);
    const __m256i shifts = _mm256_setr_epi32(4, 4, 4, 4, 0, 0, 0, 0);
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    const __m256i top    = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
    const int64_t in     = w.in;
    const int shift      = __builtin_ctzll(static_cast<unsigned long long>(w.blocksize));
    for (int64_t n = n0; n < n1; ++n) {
        __m256 acc[M][kAcc];
        for (int m = 0; m < M; ++m)
            for (int a = 0; a < kAcc; ++a) acc[m][a] = _mm256_setzero_ps();
        const uint8_t* bytes_at = w.packed + n * (in / 2);
        int64_t k               = 0;
        while (k < in) {
            const int64_t i       = n * in + k;
            const int64_t b       = i >> shift;
            const int64_t seg_end = std::min(in, k + ((b + 1) << shift) - i);  // a multiple of 32
            __m256i low, high;
            bf16_byte_tables<R>(code_lo, code_hi, scales[b - first], low, high);
            do {
                const __m256i packed =
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes_at)));
                const __m256i codes     = _mm256_and_si256(_mm256_srlv_epi32(packed, shifts), nibble);
                const __m256i lo        = _mm256_shuffle_epi8(low, codes);
                const __m256i hi        = _mm256_shuffle_epi8(high, codes);
                const __m256i words[2]  = {_mm256_unpacklo_epi8(lo, hi), _mm256_unpackhi_epi8(lo, hi)};
                const __m256 weights[4] = {_mm256_castsi256_ps(_mm256_slli_epi32(words[0], 16)),
                                           _mm256_castsi256_ps(_mm256_and_si256(words[0], top)),
                                           _mm256_castsi256_ps(_mm256_slli_epi32(words[1], 16)),
                                           _mm256_castsi256_ps(_mm256_and_si256(words[1], top))};
                for (int m = 0; m < M; ++m) {
                    const float* xm = xk + m * in + k;
                    for (int q = 0; q < 4; ++q) {
                        acc[m][q % kAcc] = _mm256_fmadd_ps(weights[q], _mm256_loadu_ps(xm + 8 * q), acc[m][q % kAcc]);
                    }
                }
                bytes_at += 16;
                k += 32;
            } while (k < seg_end);
        }
        for (int m = 0; m < M; ++m) {
            __m256 total = acc[m][0];
            for (int a = 1; a < kAcc; ++a) total = _mm256_add_ps(total, acc[m][a]);
            store(y + m * w.out + n, horizontal_sum(total) + (bias ? bias[n] : 0.0f));
        }
    }
}

// Compile-time dispatch on the activation row count (1..8), the kernel and the rounding.
template <Kernel K, Rounding R, typename Out, int M = 1>
void rows_for(int64_t rows, const WeightView& w, const float* scales, int64_t first, int64_t n0, int64_t n1,
              const float* xk, const float* bias, Out* y) {
    if constexpr (M < 8) {
        if (rows > M) return rows_for<K, R, Out, M + 1>(rows, w, scales, first, n0, n1, xk, bias, y);
    }
    if constexpr (K == Kernel::avx2_bf16) {
        rows_avx2_bf16<M, R>(w, scales, first, n0, n1, xk, bias, y);
    } else {
        rows_avx2_permute<M, R>(w, scales, first, n0, n1, xk, bias, y);
    }
}

template <typename Out>
void rows_vectorized(Kernel kernel, int64_t rows, const WeightView& w, const float* scales, int64_t first, int64_t n0,
                     int64_t n1, const float* xk, const float* bias, Out* y) {
    if (kernel == Kernel::avx2_bf16) {
        if (w.rounding == Rounding::bf16)
            return rows_for<Kernel::avx2_bf16, Rounding::bf16>(rows, w, scales, first, n0, n1, xk, bias, y);
        return rows_for<Kernel::avx2_bf16, Rounding::fp16_then_bf16>(rows, w, scales, first, n0, n1, xk, bias, y);
    }
    switch (w.rounding) {
        case Rounding::bf16:
            return rows_for<Kernel::avx2_permute, Rounding::bf16>(rows, w, scales, first, n0, n1, xk, bias, y);
        case Rounding::fp16:
            return rows_for<Kernel::avx2_permute, Rounding::fp16>(rows, w, scales, first, n0, n1, xk, bias, y);
        case Rounding::bf16_then_fp16:
            return rows_for<Kernel::avx2_permute, Rounding::bf16_then_fp16>(rows, w, scales, first, n0, n1, xk, bias,
                                                                            y);
        case Rounding::fp16_then_bf16:
            return rows_for<Kernel::avx2_permute, Rounding::fp16_then_bf16>(rows, w, scales, first, n0, n1, xk, bias,
                                                                            y);
        default:
            return rows_for<Kernel::avx2_permute, Rounding::none>(rows, w, scales, first, n0, n1, xk, bias, y);
    }
}
#undef MEDLLM_AVX2
#endif

template <typename Out>
void gemv(Kernel kernel, const WeightView& w, const float* x, int64_t M, const float* bias, Out* y) {
    // Threads split the output rows (at least ~16K weights each, so small projections do not pay for a fork); each
    // walks its rows in tiles whose block scales fit a small buffer.
    const int64_t tile_rows = std::max<int64_t>(1, (int64_t(1) << 16) / w.in);
    const int64_t grain     = std::max<int64_t>(1, (int64_t(1) << 14) / w.in);
    at::parallel_for(0, w.out, grain, [&](int64_t begin, int64_t end) {
        std::vector<float> buffer;
        for (int64_t n0 = begin; n0 < end; n0 += tile_rows) {
            const int64_t n1 = std::min(end, n0 + tile_rows);
            const int64_t b0 = n0 * w.in / w.blocksize, b1 = (n1 * w.in - 1) / w.blocksize + 1;
            int64_t first       = 0;
            const float* scales = block_scales(w, b0, b1, buffer, first);
            // At most 8 activation rows per pass: their accumulators live in registers.
            for (int64_t m0 = 0; m0 < M; m0 += 8) {
                const int64_t rows = std::min<int64_t>(8, M - m0);
#if defined(__x86_64__)
                if (kernel != Kernel::scalar) {
                    rows_vectorized(kernel, rows, w, scales, first, n0, n1, x + m0 * w.in, bias, y + m0 * w.out);
                    continue;
                }
#endif
                rows_scalar(w, scales, first, n0, n1, x + m0 * w.in, rows, bias, y + m0 * w.out);
            }
        }
    });
}

}  // namespace

int64_t nf4_cpu_gemv_max_rows(at::ScalarType compute) {
    constexpr int64_t kFp32Crossover = 48;
#if defined(__x86_64__)
    static const bool native_bf16 = __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
    static const bool native_bf16 = true;  // unmeasured: keep the BLAS for large inputs
#endif
    if (compute == at::kFloat || native_bf16) return kFp32Crossover;
    return std::numeric_limits<int64_t>::max();
}

bool nf4_gemv_cpu_vectorized(at::ScalarType stored, at::ScalarType compute, int64_t in_features) {
    return choose_kernel(rounding_for(stored, compute), in_features) != Kernel::scalar;
}

at::Tensor nf4_gemv_cpu(const at::Tensor& x, const Nf4Tensor& w, const at::Tensor& bias, bool scalar) {
    w.validate("nf4 weight");
    if (!w.device().is_cpu() || !x.device().is_cpu()) {
        throw Error("nf4_gemv_cpu: the input and weight must be on the CPU");
    }
    if (w.shape.size() != 2) throw Error("nf4_gemv_cpu: weight must be 2-D [out, in]");
    const int64_t out_features = w.shape[0], in_features = w.shape[1];
    if (!x.defined() || x.dim() < 1 || x.size(-1) != in_features) {
        throw Error("nf4_gemv_cpu: input's last dimension must be " + std::to_string(in_features) + ", got " +
                    (x.defined() ? c10::str(x.sizes()) : std::string("undefined")));
    }
    const at::ScalarType xt = x.scalar_type();
    if (xt != at::kFloat && xt != at::kBFloat16 && xt != at::kHalf) {
        throw Error(std::string("nf4_gemv_cpu: input must be float32/bfloat16/float16, got ") + c10::toString(xt));
    }
    if (bias.defined() && bias.numel() != out_features) {
        throw Error("nf4_gemv_cpu: bias has " + std::to_string(bias.numel()) + " entries, expected " +
                    std::to_string(out_features));
    }
    const at::Tensor rows          = x.reshape({-1, in_features}).contiguous();
    const int64_t M                = rows.size(0);
    std::vector<int64_t> out_shape = x.sizes().vec();
    out_shape.back()               = out_features;
    at::Tensor y                   = at::empty(out_shape, x.options());
    if (M == 0) return y;

    // validate() checked every size; the state's tensors are contiguous as built and as loaded.
    const at::Tensor packed = w.packed.contiguous(), absmax = w.absmax.contiguous();
    WeightView view;
    view.packed    = packed.data_ptr<uint8_t>();
    view.out       = out_features;
    view.in        = in_features;
    view.blocksize = w.blocksize;
    view.rounding  = rounding_for(w.dtype, xt);
    at::Tensor absmax2, code2;
    if (w.nested) {
        absmax2               = w.nested_absmax.contiguous();
        code2                 = w.nested_quant_map.contiguous();
        view.codes8           = absmax.data_ptr<uint8_t>();
        view.absmax2          = absmax2.data_ptr<float>();
        view.code2            = code2.data_ptr<float>();
        view.offset           = w.offset;
        view.nested_blocksize = w.nested_blocksize;
    } else {
        view.absmax = absmax.data_ptr<float>();
    }

    // Activations as fp32 in the order the kernel reads them: decode-sized ones in a buffer this thread keeps,
    // larger ones (prefill) in one freed after the call.
    const Kernel kernel          = scalar ? Kernel::scalar : choose_kernel(view.rounding, in_features);
    constexpr size_t kKeptFloats = size_t(1) << 18;
    thread_local std::vector<float> kept, bias32;
    std::vector<float> once;
    const size_t n_x        = static_cast<size_t>(M * in_features);
    std::vector<float>& buf = n_x <= kKeptFloats ? kept : once;
    buf.resize(n_x);
    switch (xt) {
        case at::kFloat:
            to_kernel_order(kernel, rows.data_ptr<float>(), M * in_features, buf.data());
            break;
        case at::kBFloat16:
            to_kernel_order(kernel, rows.data_ptr<c10::BFloat16>(), M * in_features, buf.data());
            break;
        default:
            to_kernel_order(kernel, rows.data_ptr<c10::Half>(), M * in_features, buf.data());
            break;
    }
    const float* xk = buf.data();
    const float* b  = nullptr;
    if (bias.defined()) {
        const at::Tensor b32 = bias.reshape({-1}).to(at::kFloat).contiguous();
        bias32.assign(b32.data_ptr<float>(), b32.data_ptr<float>() + out_features);
        b = bias32.data();
    }
    switch (xt) {
        case at::kFloat:
            gemv(kernel, view, xk, M, b, y.data_ptr<float>());
            break;
        case at::kBFloat16:
            gemv(kernel, view, xk, M, b, y.data_ptr<c10::BFloat16>());
            break;
        default:
            gemv(kernel, view, xk, M, b, y.data_ptr<c10::Half>());
            break;
    }
    return y;
}

}  // namespace medllm::quant
