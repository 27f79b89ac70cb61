// Tensor-level NF4 API: validation, CPU reference wrappers, and dispatch to the CUDA kernels.
#include "medllm/quant/nf4.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "medllm/core/error.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#ifdef MEDLLM_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAStream.h>

#include "nf4_dequantize.cuh"
#include "nf4_gemv.cuh"
#include "nf4_quantize.cuh"
#endif

namespace medllm::quant {
namespace {

std::string shape_string(const std::vector<int64_t>& shape) {
    std::string text = "[";
    for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
    return text + "]";
}

bool is_float_dtype(at::ScalarType dtype) {
    return dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf;
}

void require_cuda_kernels(const char* what) {
    if (!nf4_cuda_kernels_available()) {
        throw UsageError(std::string(what) + ": the tensor is on a CUDA device but this build has no CUDA kernels");
    }
}

at::Tensor code_tensor(const float* values, int64_t n) {
    return at::from_blob(const_cast<float*>(values), {n}, at::TensorOptions().dtype(at::kFloat)).clone();
}

// Double quantization of fp32 CPU absmax, exactly as bitsandbytes: offset = torch mean, then the 8-bit blockwise
// quantizer on (absmax - offset).
void double_quantize(Nf4Tensor& w, const at::Tensor& absmax_cpu) {
    const int64_t n_blocks = absmax_cpu.numel();
    const float offset     = at::mean(absmax_cpu).item<float>();
    at::Tensor centred     = absmax_cpu - offset;
    at::Tensor codes       = at::empty({n_blocks}, at::TensorOptions().dtype(at::kByte));
    at::Tensor absmax2 =
        at::empty({(n_blocks + kNestedBlocksize - 1) / kNestedBlocksize}, at::TensorOptions().dtype(at::kFloat));
    ref::quantize_blockwise_8bit(centred.data_ptr<float>(), n_blocks, dynamic_map().data(), kNestedBlocksize,
                                 codes.data_ptr<uint8_t>(), absmax2.data_ptr<float>());
    w.nested           = true;
    w.offset           = offset;
    w.nested_blocksize = kNestedBlocksize;
    w.absmax           = codes;
    w.nested_absmax    = absmax2;
    w.nested_quant_map = code_tensor(dynamic_map().data(), 256);
}

// CPU quantization, parallel over runs of whole blocks: each run is an independent call of the reference on its own
// bytes (blocks hold at least 32 elements, so a run starts on a byte boundary), and only the last run holds the
// partial tail block, exactly as one call over the whole tensor would.
void quantize_cpu(const float* x, int64_t n, int64_t blocksize, uint8_t* packed, float* absmax) {
    const int64_t n_blocks = (n + blocksize - 1) / blocksize;
    const int64_t grain    = std::max<int64_t>(1, (int64_t(1) << 16) / blocksize);
    at::parallel_for(0, n_blocks, grain, [&](int64_t b0, int64_t b1) {
        const int64_t start = b0 * blocksize;
        const int64_t end   = std::min(b1 * blocksize, n);
        ref::nf4_quantize(x + start, end - start, blocksize, packed + start / 2, absmax + b0);
    });
}

#if defined(__x86_64__)
// Expands whole 16-byte runs of packed codes (32 values each) into 16-bit values with two byte shuffles per half:
// `low_table` / `high_table` hold the low and high bytes of the block's 16 possible outputs, indexed by nibble.
__attribute__((target("ssse3"))) inline void expand_runs(const uint8_t* packed, int64_t n_bytes, __m128i low_table,
                                                         __m128i high_table, uint16_t* out) {
    const __m128i nibble = _mm_set1_epi8(0x0F);
    for (int64_t j = 0; j < n_bytes; j += 16, out += 32) {
        const __m128i bytes    = _mm_loadu_si128(reinterpret_cast<const __m128i*>(packed + j));
        const __m128i first    = _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble);  // element 2k: the high nibble
        const __m128i second   = _mm_and_si128(bytes, nibble);
        const __m128i codes[2] = {_mm_unpacklo_epi8(first, second), _mm_unpackhi_epi8(first, second)};
        for (int half = 0; half < 2; ++half) {
            const __m128i lo = _mm_shuffle_epi8(low_table, codes[half]);
            const __m128i hi = _mm_shuffle_epi8(high_table, codes[half]);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * half), _mm_unpacklo_epi8(lo, hi));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16 * half + 8), _mm_unpackhi_epi8(lo, hi));
        }
    }
}

// Any 16-bit output type, its 16 values already computed.
__attribute__((target("ssse3"))) void expand_16bit_ssse3(const uint8_t* packed, int64_t n_bytes, const uint16_t* lut,
                                                         uint16_t* out) {
    alignas(16) uint8_t low[16], high[16];
    for (int k = 0; k < 16; ++k) {
        low[k]  = static_cast<uint8_t>(lut[k] & 0xFF);
        high[k] = static_cast<uint8_t>(lut[k] >> 8);
    }
    expand_runs(packed, n_bytes, _mm_load_si128(reinterpret_cast<const __m128i*>(low)),
                _mm_load_si128(reinterpret_cast<const __m128i*>(high)), out);
}

// bf16 blocks b0..b1 (all whole): each block's 16 outputs code * absmax are computed, rounded to bf16 (nearest
// even, the bits of c10::BFloat16 for finite values) and split into the two byte tables in registers.
__attribute__((target("sse4.1"))) void dequantize_bf16_blocks_sse41(const uint8_t* packed, const float* absmax,
                                                                    int64_t b0, int64_t b1, int64_t blocksize,
                                                                    uint16_t* out) {
    const float* code   = nf4_code().data();
    const __m128 c[4]   = {_mm_loadu_ps(code), _mm_loadu_ps(code + 4), _mm_loadu_ps(code + 8), _mm_loadu_ps(code + 12)};
    const __m128i round = _mm_set1_epi32(0x7FFF), one = _mm_set1_epi32(1), low_byte = _mm_set1_epi16(0x00FF);
    for (int64_t b = b0; b < b1; ++b) {
        const __m128 scale = _mm_set1_ps(absmax[b]);
        __m128i bits[4];
        for (int q = 0; q < 4; ++q) {
            const __m128i u = _mm_castps_si128(_mm_mul_ps(c[q], scale));
            bits[q] =
                _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(u, round), _mm_and_si128(_mm_srli_epi32(u, 16), one)), 16);
        }
        const __m128i w0 = _mm_packus_epi32(bits[0], bits[1]), w1 = _mm_packus_epi32(bits[2], bits[3]);
        const __m128i low_table  = _mm_packus_epi16(_mm_and_si128(w0, low_byte), _mm_and_si128(w1, low_byte));
        const __m128i high_table = _mm_packus_epi16(_mm_srli_epi16(w0, 8), _mm_srli_epi16(w1, 8));
        expand_runs(packed + b * blocksize / 2, blocksize / 2, low_table, high_table, out + b * blocksize);
    }
}

bool has_ssse3() {
    static const bool supported = __builtin_cpu_supports("ssse3");
    return supported;
}
bool has_sse41() {
    static const bool supported = __builtin_cpu_supports("sse4.1");
    return supported;
}
#endif

// CPU dequantization straight into the target dtype, parallel over blocks. Each value is code * absmax in fp32,
// then one rounding to the target, which is what the reference (fp32 result, then a cast) produces; the block's
// 16 possible outputs are computed once and the codes only select among them.
template <typename Out>
void dequantize_cpu(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, Out* out) {
    const auto& code       = nf4_code();
    const int64_t n_blocks = (n + blocksize - 1) / blocksize;
    const int64_t grain    = std::max<int64_t>(1, (int64_t(1) << 16) / blocksize);
    at::parallel_for(0, n_blocks, grain, [&](int64_t b0, int64_t b1) {
#if defined(__x86_64__)
        if constexpr (std::is_same_v<Out, c10::BFloat16>) {
            if (has_sse41()) {
                const int64_t whole_end = std::min(b1, n / blocksize);  // the partial tail block goes below
                if (whole_end > b0) {
                    dequantize_bf16_blocks_sse41(packed, absmax, b0, whole_end, blocksize,
                                                 reinterpret_cast<uint16_t*>(out));
                    b0 = whole_end;
                }
            }
        }
#endif
        for (int64_t b = b0; b < b1; ++b) {
            const float scale = absmax[b];
            Out lut[16];
            for (int k = 0; k < 16; ++k) lut[k] = static_cast<Out>(code[k] * scale);
            const int64_t start = b * blocksize;
            const int64_t end   = std::min(start + blocksize, n);
            int64_t i           = start;  // even: blocks hold at least 32 values
#if defined(__x86_64__)
            if constexpr (sizeof(Out) == 2) {
                if (has_ssse3()) {
                    const int64_t whole = (end - start) / 32 * 32;
                    uint16_t bits[16];
                    std::memcpy(bits, lut, sizeof(bits));
                    expand_16bit_ssse3(packed + start / 2, whole / 2, bits, reinterpret_cast<uint16_t*>(out + start));
                    i += whole;
                }
            }
#endif
            for (; i + 1 < end; i += 2) {
                const uint8_t byte = packed[i / 2];
                out[i]             = lut[byte >> 4];
                out[i + 1]         = lut[byte & 0x0F];
            }
            if (i < end) out[i] = lut[packed[i / 2] >> 4];
        }
    });
}

// Reused dequantization buffers for the paths that never hand the dense weight out (inference linears and the
// input gradient), so large weights are not re-allocated (and, on the CPU, re-faulted) on every call.
// CUDA: one per (device, dtype, stream); the next call on the same stream may overwrite it only after the previous
// GEMM has consumed it, which stream order guarantees. CPU: one per thread and dtype (the GEMM has finished when
// the call returns).
at::Tensor workspace_for(at::Device device, at::ScalarType dtype, int64_t numel) {
    const auto options = at::TensorOptions().device(device).dtype(dtype);
#ifdef MEDLLM_HAVE_CUDA_KERNELS
    if (device.is_cuda()) {
        static std::mutex mutex;
        static std::map<std::tuple<int, int, int64_t>, at::Tensor> buffers;
        const int64_t stream_id = static_cast<int64_t>(c10::cuda::getCurrentCUDAStream(device.index()).id());
        const auto key          = std::make_tuple(static_cast<int>(device.index()), static_cast<int>(dtype), stream_id);
        const std::lock_guard<std::mutex> lock(mutex);
        at::Tensor& buffer = buffers[key];
        if (!buffer.defined() || buffer.numel() < numel) buffer = at::empty({numel}, options);
        return buffer.narrow(0, 0, numel);
    }
#endif
    thread_local std::map<int, at::Tensor> buffers;
    at::Tensor& buffer = buffers[static_cast<int>(dtype)];
    if (!buffer.defined() || buffer.numel() < numel) {
        buffer = at::Tensor();  // free the smaller one first
        buffer = at::empty({numel}, options);
    }
    return buffer.narrow(0, 0, numel);
}

}  // namespace

bool nf4_cuda_kernels_available() {
#ifdef MEDLLM_HAVE_CUDA_KERNELS
    return true;
#else
    return false;
#endif
}

int64_t Nf4Tensor::numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

int64_t Nf4Tensor::n_blocks() const {
    return blocksize > 0 ? (numel() + blocksize - 1) / blocksize : 0;
}

int64_t Nf4Tensor::nbytes() const {
    int64_t total = 0;
    for (const at::Tensor* t : {&packed, &absmax, &quant_map, &nested_absmax, &nested_quant_map}) {
        if (t->defined()) total += t->numel() * static_cast<int64_t>(t->element_size());
    }
    return total;
}

Nf4Tensor Nf4Tensor::to(at::Device target) const {
    Nf4Tensor copy = *this;
    for (at::Tensor* t : {&copy.packed, &copy.absmax, &copy.quant_map, &copy.nested_absmax, &copy.nested_quant_map}) {
        if (t->defined()) *t = t->to(target).contiguous();
    }
    return copy;
}

void Nf4Tensor::validate(const std::string& name) const {
    auto fail = [&](const std::string& why) { throw Error(name + ": invalid NF4 state: " + why); };
    if (shape.empty()) fail("empty shape");
    for (int64_t d : shape) {
        if (d <= 0) fail("non-positive dimension in shape " + shape_string(shape));
    }
    if (!is_valid_nf4_blocksize(blocksize))
        fail("blocksize " + std::to_string(blocksize) + " is not a power of two in [32, 4096]");
    if (!is_float_dtype(dtype)) fail(std::string("dtype ") + c10::toString(dtype) + " is not float32/bfloat16/float16");
    const int64_t n = numel();
    if (!packed.defined() || packed.scalar_type() != at::kByte || packed.numel() != (n + 1) / 2) {
        fail("packed weight must be uint8 with " + std::to_string((n + 1) / 2) + " bytes for shape " +
             shape_string(shape));
    }
    const at::Device dev = packed.device();
    auto same_device     = [&](const at::Tensor& t, const char* what) {
        if (t.device() != dev) fail(std::string(what) + " is on " + t.device().str() + ", the weight on " + dev.str());
    };
    if (!absmax.defined() || absmax.numel() != n_blocks())
        fail("absmax must have " + std::to_string(n_blocks()) + " entries");
    same_device(absmax, "absmax");
    if (quant_map.defined()) {
        if (quant_map.scalar_type() != at::kFloat || quant_map.numel() != 16) fail("quant_map must be float32 [16]");
        // Reading device memory here would synchronise every dequantize; CUDA states are checked when loaded.
        if (quant_map.device().is_cpu() && !at::equal(quant_map.reshape({16}), code_tensor(nf4_code().data(), 16))) {
            fail("quant_map is not the NF4 code book");
        }
    }
    if (nested) {
        if (absmax.scalar_type() != at::kByte) fail("double-quantized absmax must be uint8");
        if (nested_blocksize <= 0) fail("nested blocksize must be positive");
        const int64_t n2 = (n_blocks() + nested_blocksize - 1) / nested_blocksize;
        if (!nested_absmax.defined() || nested_absmax.scalar_type() != at::kFloat || nested_absmax.numel() != n2) {
            fail("nested_absmax must be float32 [" + std::to_string(n2) + "]");
        }
        if (!nested_quant_map.defined() || nested_quant_map.scalar_type() != at::kFloat ||
            nested_quant_map.numel() != 256) {
            fail("nested_quant_map must be float32 [256]");
        }
        same_device(nested_absmax, "nested_absmax");
        same_device(nested_quant_map, "nested_quant_map");
        if (!std::isfinite(offset)) fail("nested offset is not finite");
    } else if (absmax.scalar_type() != at::kFloat) {
        fail("absmax must be float32 without double quantization");
    }
}

Nf4Tensor nf4_quantize(const at::Tensor& weight, int64_t blocksize, bool double_quant, const std::string& name) {
    if (!is_valid_nf4_blocksize(blocksize)) {
        throw UsageError("nf4 blocksize must be a power of two from 32 to 4096, got " + std::to_string(blocksize));
    }
    const std::string what = name.empty() ? "nf4_quantize: tensor" : "nf4_quantize: tensor '" + name + "'";
    if (!weight.defined() || !is_float_dtype(weight.scalar_type())) {
        throw Error(what + ": expected float32/bfloat16/float16, got " +
                    (weight.defined() ? std::string(c10::toString(weight.scalar_type())) : "an undefined tensor"));
    }
    if (weight.numel() == 0 || weight.dim() == 0) throw Error(what + ": cannot quantize an empty or 0-d tensor");
    if (!at::isfinite(weight).all().item<bool>()) {
        const int64_t bad = (~at::isfinite(weight)).sum().item<int64_t>();
        throw Error(what + " of shape " + shape_string(weight.sizes().vec()) + " contains " + std::to_string(bad) +
                    " NaN or Inf value" + (bad == 1 ? "" : "s"));
    }
    const at::NoGradGuard no_grad;
    Nf4Tensor w;
    w.shape         = weight.sizes().vec();
    w.dtype         = weight.scalar_type();
    w.blocksize     = blocksize;
    const int64_t n = weight.numel();
    at::Tensor absmax_f32;
    if (weight.is_cuda()) {
        require_cuda_kernels("nf4_quantize");
#ifdef MEDLLM_HAVE_CUDA_KERNELS
        std::tie(w.packed, absmax_f32) = kernels::nf4_quantize_cuda(weight, blocksize);
#endif
    } else {
        const at::Tensor x = weight.detach().to(at::kCPU).contiguous().to(at::kFloat);
        w.packed           = at::empty({(n + 1) / 2, 1}, at::TensorOptions().dtype(at::kByte));
        absmax_f32         = at::empty({(n + blocksize - 1) / blocksize}, at::TensorOptions().dtype(at::kFloat));
        quantize_cpu(x.data_ptr<float>(), n, blocksize, w.packed.data_ptr<uint8_t>(), absmax_f32.data_ptr<float>());
    }
    w.quant_map = code_tensor(nf4_code().data(), 16).to(weight.device());
    if (double_quant) {
        // The statistics are 1/blocksize of the weight: quantizing them on the CPU keeps the offset (a torch mean)
        // and the 8-bit codes identical on every device.
        double_quantize(w, absmax_f32.cpu().contiguous());
        w = w.to(weight.device());
    } else {
        w.absmax = absmax_f32;
    }
    return w;
}

at::Tensor nf4_absmax(const Nf4Tensor& w) {
    w.validate();
    if (!w.nested) return w.absmax.contiguous();
    if (w.device().is_cuda()) {
        require_cuda_kernels("nf4_absmax");
#ifdef MEDLLM_HAVE_CUDA_KERNELS
        return kernels::nf4_rebuild_absmax_cuda(w.absmax.contiguous(), w.nested_absmax.contiguous(),
                                                w.nested_quant_map.contiguous(), w.offset, w.nested_blocksize);
#endif
    }
    const at::Tensor q    = w.absmax.cpu().contiguous();
    const at::Tensor a2   = w.nested_absmax.cpu().contiguous();
    const at::Tensor code = w.nested_quant_map.cpu().contiguous();
    at::Tensor out        = at::empty({w.n_blocks()}, at::TensorOptions().dtype(at::kFloat));
    ref::rebuild_absmax(q.data_ptr<uint8_t>(), a2.data_ptr<float>(), code.data_ptr<float>(), w.offset, w.n_blocks(),
                        w.nested_blocksize, out.data_ptr<float>());
    return out.to(w.device());
}

namespace {

// Dequantizes `w` into `out` (contiguous, w.numel() elements of a float dtype, on w's device).
void dequantize_into(const Nf4Tensor& w, const at::Tensor& out) {
    const at::NoGradGuard no_grad;
    if (w.device().is_cuda()) {
        require_cuda_kernels("nf4_dequantize");
#ifdef MEDLLM_HAVE_CUDA_KERNELS
        kernels::nf4_dequantize_cuda(w.packed.contiguous(), w.absmax.contiguous(),
                                     w.nested ? w.nested_absmax.contiguous() : at::Tensor(),
                                     w.nested ? w.nested_quant_map.contiguous() : at::Tensor(), w.offset,
                                     w.nested_blocksize, w.numel(), w.blocksize, out);
        return;
#endif
    }
    const at::Tensor absmax = nf4_absmax(w).contiguous();
    const at::Tensor packed = w.packed.contiguous();
    const uint8_t* bytes    = packed.data_ptr<uint8_t>();
    const float* scales     = absmax.data_ptr<float>();
    switch (out.scalar_type()) {
        case at::kFloat:
            dequantize_cpu(bytes, scales, w.numel(), w.blocksize, out.data_ptr<float>());
            break;
        case at::kBFloat16:
            dequantize_cpu(bytes, scales, w.numel(), w.blocksize, out.data_ptr<c10::BFloat16>());
            break;
        default:
            dequantize_cpu(bytes, scales, w.numel(), w.blocksize, out.data_ptr<c10::Half>());
            break;
    }
}

// dequant(W) as a [out, in] tensor of `compute` dtype that lives in the reused workspace: valid until the next
// call on this thread (CPU) or stream (CUDA). bitsandbytes' order when the compute dtype differs from the stored
// one: dequantize to the stored dtype, then cast (into a fresh tensor).
at::Tensor scratch_weight(const Nf4Tensor& w, at::ScalarType compute) {
    w.validate("nf4 weight");
    at::Tensor dense = workspace_for(w.device(), w.dtype, w.numel());
    dequantize_into(w, dense);
    dense = dense.view(w.shape);
    return w.dtype == compute ? dense : dense.to(compute);
}

}  // namespace

at::Tensor nf4_dequantize(const Nf4Tensor& w, std::optional<at::ScalarType> dtype) {
    w.validate();
    const at::ScalarType target = dtype.value_or(w.dtype);
    if (!is_float_dtype(target)) {
        throw UsageError(std::string("nf4_dequantize: target dtype must be float32/bfloat16/float16, got ") +
                         c10::toString(target));
    }
    at::Tensor out = at::empty(w.shape, w.packed.options().dtype(target));
    dequantize_into(w, out);
    return out;
}

at::Tensor nf4_linear(const at::Tensor& x, const Nf4Tensor& w, const std::optional<at::Tensor>& bias,
                      Nf4CpuPath cpu_path) {
    if (w.shape.size() != 2) throw Error("nf4_linear: weight must be 2-D [out, in], got " + shape_string(w.shape));
    const int64_t out_features = w.shape[0];
    const int64_t in_features  = w.shape[1];
    if (!x.defined() || x.dim() < 1 || x.size(-1) != in_features) {
        throw Error("nf4_linear: input's last dimension must be " + std::to_string(in_features) + ", got shape " +
                    (x.defined() ? shape_string(x.sizes().vec()) : std::string("undefined")));
    }
    if (!is_float_dtype(x.scalar_type())) {
        throw Error(std::string("nf4_linear: input must be float32/bfloat16/float16, got ") +
                    c10::toString(x.scalar_type()));
    }
    if (x.device() != w.device()) {
        throw Error("nf4_linear: input is on " + x.device().str() + ", the weight on " + w.device().str());
    }
    if (bias && bias->defined() && bias->numel() != out_features) {
        throw Error("nf4_linear: bias has " + std::to_string(bias->numel()) + " entries, expected " +
                    std::to_string(out_features));
    }
    const at::Tensor bias_cast = (bias && bias->defined()) ? bias->to(x.scalar_type()) : at::Tensor();
    const bool needs_grad =
        at::GradMode::is_enabled() && (x.requires_grad() || (bias_cast.defined() && bias_cast.requires_grad()));
    if (needs_grad) {
        // Autograd keeps the weight for backward, so it gets its own fresh dequantized copy (bitsandbytes' order:
        // dequantize to the stored dtype, then cast to the compute dtype).
        at::Tensor weight = nf4_dequantize(w);
        if (weight.scalar_type() != x.scalar_type()) weight = weight.to(x.scalar_type());
        return at::linear(x, weight, bias_cast);
    }
#ifdef MEDLLM_HAVE_CUDA_KERNELS
    if (x.is_cuda()) {
        w.validate("nf4_linear weight");
        const at::Tensor rows = x.reshape({-1, in_features});
        if (kernels::nf4_gemv_supported(rows.size(0), in_features)) {
            const at::Tensor y =
                kernels::nf4_gemv_cuda(rows, w.packed.contiguous(), w.absmax.contiguous(),
                                       w.nested ? w.nested_absmax.contiguous() : at::Tensor(),
                                       w.nested ? w.nested_quant_map.contiguous() : at::Tensor(), w.offset,
                                       w.nested_blocksize, out_features, in_features, w.blocksize, bias_cast);
            std::vector<int64_t> out_shape = x.sizes().vec();
            out_shape.back()               = out_features;
            return y.reshape(out_shape);
        }
    }
#endif
    if (x.is_cpu() && cpu_path != Nf4CpuPath::dequantize_gemm &&
        (cpu_path == Nf4CpuPath::fused || x.numel() / in_features <= nf4_cpu_gemv_max_rows(x.scalar_type()))) {
        return nf4_gemv_cpu(x, w, bias_cast);
    }
    // Without autograd: dequantize into the reused workspace, then one GEMM (cuBLAS / the CPU BLAS).
    return at::linear(x, scratch_weight(w, x.scalar_type()), bias_cast);
}

at::Tensor nf4_linear_input_grad(const at::Tensor& grad_y, const Nf4Tensor& w) {
    if (w.shape.size() != 2)
        throw Error("nf4_linear_input_grad: weight must be 2-D [out, in], got " + shape_string(w.shape));
    if (!grad_y.defined() || grad_y.dim() < 1 || grad_y.size(-1) != w.shape[0]) {
        throw Error("nf4_linear_input_grad: gradient's last dimension must be " + std::to_string(w.shape[0]) +
                    ", got shape " +
                    (grad_y.defined() ? shape_string(grad_y.sizes().vec()) : std::string("undefined")));
    }
    if (grad_y.device() != w.device()) {
        throw Error("nf4_linear_input_grad: gradient is on " + grad_y.device().str() + ", the weight on " +
                    w.device().str());
    }
    const at::NoGradGuard no_grad;
    return at::matmul(grad_y, scratch_weight(w, grad_y.scalar_type()));
}

}  // namespace medllm::quant
