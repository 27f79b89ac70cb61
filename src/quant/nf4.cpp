// Tensor-level NF4 API: validation, CPU reference wrappers, and dispatch to the CUDA kernels.
#include "medllm/quant/nf4.h"

#include <ATen/core/grad_mode.h>

#include <map>
#include <mutex>
#include <tuple>

#include "medllm/core/error.h"

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
    at::Tensor absmax2 = at::empty({(n_blocks + kNestedBlocksize - 1) / kNestedBlocksize}, at::TensorOptions().dtype(at::kFloat));
    ref::quantize_blockwise_8bit(centred.data_ptr<float>(), n_blocks, dynamic_map().data(), kNestedBlocksize,
                                 codes.data_ptr<uint8_t>(), absmax2.data_ptr<float>());
    w.nested           = true;
    w.offset           = offset;
    w.nested_blocksize = kNestedBlocksize;
    w.absmax           = codes;
    w.nested_absmax    = absmax2;
    w.nested_quant_map = code_tensor(dynamic_map().data(), 256);
}

#ifdef MEDLLM_HAVE_CUDA_KERNELS
// Reused dequantization buffers for the training-size path, one per (device, dtype, stream): the next call on the
// same stream may overwrite it only after the previous matmul has consumed it, which stream order guarantees.
at::Tensor workspace_for(const at::Tensor& like, int64_t numel) {
    static std::mutex mutex;
    static std::map<std::tuple<int, int, int64_t>, at::Tensor> buffers;
    const int64_t stream_id = static_cast<int64_t>(c10::cuda::getCurrentCUDAStream(like.device().index()).id());
    const auto key = std::make_tuple(static_cast<int>(like.device().index()), static_cast<int>(like.scalar_type()),
                                     stream_id);
    const std::lock_guard<std::mutex> lock(mutex);
    at::Tensor& buffer = buffers[key];
    if (!buffer.defined() || buffer.numel() < numel) buffer = at::empty({numel}, like.options());
    return buffer.narrow(0, 0, numel);
}
#endif

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

int64_t Nf4Tensor::n_blocks() const { return blocksize > 0 ? (numel() + blocksize - 1) / blocksize : 0; }

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
    if (!is_valid_nf4_blocksize(blocksize)) fail("blocksize " + std::to_string(blocksize) + " is not a power of two in [32, 4096]");
    if (!is_float_dtype(dtype)) fail(std::string("dtype ") + c10::toString(dtype) + " is not float32/bfloat16/float16");
    const int64_t n = numel();
    if (!packed.defined() || packed.scalar_type() != at::kByte || packed.numel() != (n + 1) / 2) {
        fail("packed weight must be uint8 with " + std::to_string((n + 1) / 2) + " bytes for shape " + shape_string(shape));
    }
    const at::Device dev = packed.device();
    auto same_device     = [&](const at::Tensor& t, const char* what) {
        if (t.device() != dev) fail(std::string(what) + " is on " + t.device().str() + ", the weight on " + dev.str());
    };
    if (!absmax.defined() || absmax.numel() != n_blocks()) fail("absmax must have " + std::to_string(n_blocks()) + " entries");
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
        if (!nested_quant_map.defined() || nested_quant_map.scalar_type() != at::kFloat || nested_quant_map.numel() != 256) {
            fail("nested_quant_map must be float32 [256]");
        }
        same_device(nested_absmax, "nested_absmax");
        same_device(nested_quant_map, "nested_quant_map");
        if (!std::isfinite(offset)) fail("nested offset is not finite");
    } else if (absmax.scalar_type() != at::kFloat) {
        fail("absmax must be float32 without double quantization");
    }
}

Nf4Tensor nf4_quantize(const at::Tensor& weight, int64_t blocksize, bool double_quant) {
    if (!is_valid_nf4_blocksize(blocksize)) {
        throw UsageError("nf4 blocksize must be a power of two from 32 to 4096, got " + std::to_string(blocksize));
    }
    if (!weight.defined() || !is_float_dtype(weight.scalar_type())) {
        throw Error(std::string("nf4_quantize: expected a float32/bfloat16/float16 tensor, got ") +
                    (weight.defined() ? c10::toString(weight.scalar_type()) : "an undefined tensor"));
    }
    if (weight.numel() == 0 || weight.dim() == 0) throw Error("nf4_quantize: cannot quantize an empty or 0-d tensor");
    if (!at::isfinite(weight).all().item<bool>()) {
        throw Error("nf4_quantize: tensor of shape " + shape_string(weight.sizes().vec()) + " contains NaN or Inf");
    }
    const at::NoGradGuard no_grad;
    Nf4Tensor w;
    w.shape     = weight.sizes().vec();
    w.dtype     = weight.scalar_type();
    w.blocksize = blocksize;
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
        ref::nf4_quantize(x.data_ptr<float>(), n, blocksize, w.packed.data_ptr<uint8_t>(), absmax_f32.data_ptr<float>());
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
    const at::Tensor q     = w.absmax.cpu().contiguous();
    const at::Tensor a2    = w.nested_absmax.cpu().contiguous();
    const at::Tensor code  = w.nested_quant_map.cpu().contiguous();
    at::Tensor out         = at::empty({w.n_blocks()}, at::TensorOptions().dtype(at::kFloat));
    ref::rebuild_absmax(q.data_ptr<uint8_t>(), a2.data_ptr<float>(), code.data_ptr<float>(), w.offset, w.n_blocks(),
                        w.nested_blocksize, out.data_ptr<float>());
    return out.to(w.device());
}

at::Tensor nf4_dequantize(const Nf4Tensor& w, std::optional<at::ScalarType> dtype) {
    w.validate();
    const at::ScalarType target = dtype.value_or(w.dtype);
    if (!is_float_dtype(target)) {
        throw UsageError(std::string("nf4_dequantize: target dtype must be float32/bfloat16/float16, got ") +
                         c10::toString(target));
    }
    const at::NoGradGuard no_grad;
    if (w.device().is_cuda()) {
        require_cuda_kernels("nf4_dequantize");
#ifdef MEDLLM_HAVE_CUDA_KERNELS
        at::Tensor out = at::empty(w.shape, w.packed.options().dtype(target));
        return kernels::nf4_dequantize_cuda(w.packed.contiguous(), w.absmax.contiguous(),
                                            w.nested ? w.nested_absmax.contiguous() : at::Tensor(),
                                            w.nested ? w.nested_quant_map.contiguous() : at::Tensor(), w.offset,
                                            w.nested_blocksize, w.numel(), w.blocksize, out);
#endif
    }
    const at::Tensor absmax = nf4_absmax(w).cpu().contiguous();
    const at::Tensor packed = w.packed.cpu().contiguous();
    at::Tensor out          = at::empty(w.shape, at::TensorOptions().dtype(at::kFloat));
    ref::nf4_dequantize(packed.data_ptr<uint8_t>(), absmax.data_ptr<float>(), w.numel(), w.blocksize,
                        out.data_ptr<float>());
    return out.to(target).to(w.device());
}

at::Tensor nf4_linear(const at::Tensor& x, const Nf4Tensor& w, const std::optional<at::Tensor>& bias) {
    if (w.shape.size() != 2) throw Error("nf4_linear: weight must be 2-D [out, in], got " + shape_string(w.shape));
    const int64_t out_features = w.shape[0];
    const int64_t in_features  = w.shape[1];
    if (!x.defined() || x.dim() < 1 || x.size(-1) != in_features) {
        throw Error("nf4_linear: input's last dimension must be " + std::to_string(in_features) + ", got shape " +
                    (x.defined() ? shape_string(x.sizes().vec()) : std::string("undefined")));
    }
    if (!is_float_dtype(x.scalar_type())) {
        throw Error(std::string("nf4_linear: input must be float32/bfloat16/float16, got ") + c10::toString(x.scalar_type()));
    }
    if (x.device() != w.device()) {
        throw Error("nf4_linear: input is on " + x.device().str() + ", the weight on " + w.device().str());
    }
    if (bias && bias->defined() && bias->numel() != out_features) {
        throw Error("nf4_linear: bias has " + std::to_string(bias->numel()) + " entries, expected " +
                    std::to_string(out_features));
    }
    const at::Tensor bias_cast = (bias && bias->defined()) ? bias->to(x.scalar_type()) : at::Tensor();
#ifdef MEDLLM_HAVE_CUDA_KERNELS
    const bool needs_grad =
        at::GradMode::is_enabled() && (x.requires_grad() || (bias_cast.defined() && bias_cast.requires_grad()));
    if (x.is_cuda() && !needs_grad) {
        w.validate("nf4_linear weight");
        const at::Tensor rows = x.reshape({-1, in_features});
        if (kernels::nf4_gemv_supported(rows.size(0), in_features)) {
            const at::Tensor y = kernels::nf4_gemv_cuda(
                rows, w.packed.contiguous(), w.absmax.contiguous(), w.nested ? w.nested_absmax.contiguous() : at::Tensor(),
                w.nested ? w.nested_quant_map.contiguous() : at::Tensor(), w.offset, w.nested_blocksize, out_features,
                in_features, w.blocksize, bias_cast);
            std::vector<int64_t> out_shape = x.sizes().vec();
            out_shape.back()               = out_features;
            return y.reshape(out_shape);
        }
        // Training-size batch without autograd: dequantize into the reused workspace, then cuBLAS.
        at::Tensor weight = workspace_for(x, w.numel());
        kernels::nf4_dequantize_cuda(w.packed.contiguous(), w.absmax.contiguous(),
                                     w.nested ? w.nested_absmax.contiguous() : at::Tensor(),
                                     w.nested ? w.nested_quant_map.contiguous() : at::Tensor(), w.offset,
                                     w.nested_blocksize, w.numel(), w.blocksize, weight);
        return at::linear(x, weight.view({out_features, in_features}), bias_cast);
    }
#endif
    // Autograd may keep the weight for backward, so it gets its own fresh dequantized copy (bitsandbytes' order:
    // dequantize to the stored dtype, then cast to the compute dtype).
    at::Tensor weight = nf4_dequantize(w);
    if (weight.scalar_type() != x.scalar_type()) weight = weight.to(x.scalar_type());
    return at::linear(x, weight, bias_cast);
}

}  // namespace medllm::quant
