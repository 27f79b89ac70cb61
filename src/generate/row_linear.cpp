// The fixed-order, row-count-independent linear of the engine's decoding rows (row_linear.h): AVX2+FMA tiles and a
// portable loop that computes the same bits.
#include "medllm/generate/row_linear.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include <ATen/Parallel.h>
#include <torch/torch.h>

namespace medllm::generate {
namespace {

// The fixed tree over the 8 lanes.
inline float lanes_sum(const float* l) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// bf16 bits widened to fp32 (exact).
inline float widen(uint16_t v) {
    const uint32_t u = uint32_t(v) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}
inline float weight_at(const float* w, int64_t k) {
    return w[k];
}
inline float weight_at(const uint16_t* w, int64_t k) {
    return widen(w[k]);
}

// The scalar chain over the k beyond the last multiple of 8.
template <typename W>
inline float tail_dot(const float* x, const W* w, int64_t k, int64_t K) {
    float tail = 0.0f;
    for (; k < K; ++k) tail = std::fma(x[k], weight_at(w, k), tail);
    return tail;
}

// ---------------------------------------------------------------- portable

template <typename W>
float dot_portable(const float* x, const W* w, int64_t K) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t k    = 0;
    for (; k + 8 <= K; k += 8)
        for (int j = 0; j < 8; ++j) acc[j] = std::fma(x[k + j], weight_at(w, k + j), acc[j]);
    return lanes_sum(acc) + tail_dot(x, w, k, K);
}

// ---------------------------------------------------------------- AVX2 + FMA

__attribute__((target("avx2,fma"))) inline __m256 load8(const float* p) {
    return _mm256_loadu_ps(p);
}
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
// lanes_sum in registers: (l0+l4, l1+l5, l2+l6, l3+l7), then (s0+s2, s1+s3), then their sum.
__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// out[m·ldo + n] = dot(x row m, w row n) for an MR x NR tile: each (m, n) has its own accumulator, so the tile
// shape changes how many run side by side, not what each computes.
template <int MR, int NR, typename W>
__attribute__((target("avx2,fma"))) void tile_avx2(const float* x, const W* w, int64_t K, float* out, int64_t ldo) {
    __m256 acc[MR][NR];
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 wv[NR];
        for (int n = 0; n < NR; ++n) wv[n] = load8(w + n * K + k);
        for (int m = 0; m < MR; ++m) {
            const __m256 xv = _mm256_loadu_ps(x + m * K + k);
            for (int n = 0; n < NR; ++n) acc[m][n] = _mm256_fmadd_ps(xv, wv[n], acc[m][n]);
        }
    }
    for (int m = 0; m < MR; ++m)
        for (int n = 0; n < NR; ++n) out[m * ldo + n] = hsum(acc[m][n]) + tail_dot(x + m * K, w + n * K, k, K);
}

template <typename W>
using TileFn = void (*)(const float*, const W*, int64_t, float*, int64_t);

// Tile shapes: up to 4 rows of x by up to 4 rows of the weight (16 accumulators at most in 16 ymm registers
// together with the loads: 4 x 3 for full tiles).
constexpr int kRows = 4;
template <typename W>
TileFn<W> tile_for(int mr, int nr) {
    static const TileFn<W> table[kRows][4] = {
        {tile_avx2<1, 1, W>, tile_avx2<1, 2, W>, tile_avx2<1, 3, W>, tile_avx2<1, 4, W>},
        {tile_avx2<2, 1, W>, tile_avx2<2, 2, W>, tile_avx2<2, 3, W>, tile_avx2<2, 4, W>},
        {tile_avx2<3, 1, W>, tile_avx2<3, 2, W>, tile_avx2<3, 3, W>, tile_avx2<3, 4, W>},
        {tile_avx2<4, 1, W>, tile_avx2<4, 2, W>, tile_avx2<4, 3, W>, tile_avx2<4, 4, W>},
    };
    return table[mr - 1][nr - 1];
}

bool has_avx2_fma() {
    static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return yes;
}

// y [M, N] fp32 = x [M, K] fp32 · w [N, K]ᵀ. Threads take blocks of weight rows (about 128 KiB each, so a block
// stays in cache while every row tile of x passes over it); within a block, tiles of 4 x rows by 3-4 weight rows.
template <typename W>
void rows_times_weight(const float* x, int64_t M, int64_t K, const W* w, int64_t N, float* y) {
    const int64_t row_bytes = K * static_cast<int64_t>(sizeof(W));
    const int64_t block     = std::max<int64_t>(4, (int64_t{128} << 10) / std::max<int64_t>(row_bytes, 1) / 4 * 4);
    const int64_t blocks    = (N + block - 1) / block;
    const bool avx2         = has_avx2_fma();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
            const int64_t n0 = b * block, n1 = std::min(N, n0 + block);
            for (int64_t m0 = 0; m0 < M; m0 += kRows) {
                const int mr = static_cast<int>(std::min<int64_t>(kRows, M - m0));
                const int nr = mr <= 2 ? 4 : 3;
                for (int64_t n = n0; n < n1;) {
                    const int take = static_cast<int>(std::min<int64_t>(nr, n1 - n));
                    if (avx2) {
                        tile_for<W>(mr, take)(x + m0 * K, w + n * K, K, y + m0 * N + n, N);
                    } else {
                        for (int m = 0; m < mr; ++m)
                            for (int j = 0; j < take; ++j)
                                y[(m0 + m) * N + n + j] = dot_portable(x + (m0 + m) * K, w + (n + j) * K, K);
                    }
                    n += take;
                }
            }
        }
    });
}

}  // namespace

bool row_linear_applies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
    const auto dt = weight.scalar_type();
    if (!x.is_cpu() || !weight.is_cpu() || x.dim() != 2 || weight.dim() != 2 || !weight.is_contiguous()) return false;
    if (dt != at::kFloat && dt != at::kBFloat16) return false;
    if (x.scalar_type() != dt || x.size(1) != weight.size(1)) return false;
    return !bias.defined() || (bias.scalar_type() == dt && bias.dim() == 1 && bias.size(0) == weight.size(0));
}

at::Tensor row_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
    const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
    const auto xf = x.to(at::kFloat).contiguous();
    auto y        = at::empty({M, N}, x.options().dtype(at::kFloat));
    if (M > 0) {
        if (weight.scalar_type() == at::kFloat) {
            rows_times_weight(xf.data_ptr<float>(), M, K, weight.data_ptr<float>(), N, y.data_ptr<float>());
        } else {
            rows_times_weight(xf.data_ptr<float>(), M, K, reinterpret_cast<const uint16_t*>(weight.data_ptr()), N,
                              y.data_ptr<float>());
        }
    }
    if (bias.defined()) y.add_(bias.to(at::kFloat));  // one rounding per output, after the dot product
    return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
}

}  // namespace medllm::generate
