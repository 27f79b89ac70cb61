// bitsandbytes 4-bit checkpoint layout <-> Nf4Tensor.
#include "medllm/quant/nf4_serialize.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"

namespace medllm::quant {
namespace {

std::string dtype_name(at::ScalarType dtype) {
    switch (dtype) {
        case at::kFloat:
            return "float32";
        case at::kBFloat16:
            return "bfloat16";
        case at::kHalf:
            return "float16";
        default:
            throw Error(std::string("nf4 state: unsupported original dtype ") + c10::toString(dtype));
    }
}

at::ScalarType dtype_from_name(const std::string& name, const std::string& key) {
    if (name == "float32" || name == "float") return at::kFloat;
    if (name == "bfloat16") return at::kBFloat16;
    if (name == "float16" || name == "half") return at::kHalf;
    throw Error(key + ": unsupported dtype \"" + name + "\" in the 4-bit quant state");
}

const at::Tensor& require(const std::map<std::string, at::Tensor>& tensors, const std::string& key) {
    const auto it = tensors.find(key);
    if (it == tensors.end() || !it->second.defined()) throw Error("4-bit checkpoint: missing tensor " + key);
    return it->second;
}

at::Tensor bytes_of(const std::string& text) {
    at::Tensor t = at::empty({static_cast<int64_t>(text.size())}, at::TensorOptions().dtype(at::kByte));
    std::memcpy(t.data_ptr(), text.data(), text.size());
    return t;
}

}  // namespace

std::string python_float_repr(double value) {
    if (std::isnan(value)) return "NaN";  // json.dumps spelling
    if (std::isinf(value)) return value > 0 ? "Infinity" : "-Infinity";
    if (value == 0.0) return std::signbit(value) ? "-0.0" : "0.0";
    char buffer[64];
    const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
    std::string sci(buffer, result.ptr);
    std::string sign;
    if (sci[0] == '-') {
        sign = "-";
        sci.erase(0, 1);
    }
    const size_t e_pos = sci.find('e');
    std::string digits = sci.substr(0, e_pos);
    digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
    const int exponent = std::stoi(sci.substr(e_pos + 1));
    const int decpt    = exponent + 1;  // value = 0.digits * 10^decpt
    const int ndigits  = static_cast<int>(digits.size());
    if (decpt <= -4 || decpt > 16) {
        std::string text = sign + digits.substr(0, 1);
        if (ndigits > 1) text += "." + digits.substr(1);
        const int e = decpt - 1;
        char exp_text[16];
        std::snprintf(exp_text, sizeof(exp_text), "e%c%02d", e < 0 ? '-' : '+', std::abs(e));
        return text + exp_text;
    }
    if (decpt <= 0) return sign + "0." + std::string(static_cast<size_t>(-decpt), '0') + digits;
    if (decpt >= ndigits) return sign + digits + std::string(static_cast<size_t>(decpt - ndigits), '0') + ".0";
    return sign + digits.substr(0, static_cast<size_t>(decpt)) + "." + digits.substr(static_cast<size_t>(decpt));
}

bool has_nf4_state(const std::map<std::string, at::Tensor>& tensors, const std::string& weight_key) {
    return tensors.count(weight_key + kNf4QuantStateSuffix) != 0;
}

std::string nf4_quant_state_json(const Nf4Tensor& w) {
    // Same key order and separators as bitsandbytes' pack_dict_to_tensor(json.dumps(...)).
    std::string text = "{\"quant_type\": \"nf4\", \"blocksize\": " + std::to_string(w.blocksize) + ", \"dtype\": \"" +
                       dtype_name(w.dtype) + "\", \"shape\": [";
    for (size_t i = 0; i < w.shape.size(); ++i) text += (i ? ", " : "") + std::to_string(w.shape[i]);
    text += "]";
    if (w.nested) {
        text +=
            ", \"nested_blocksize\": " + std::to_string(w.nested_blocksize) +
            ", \"nested_dtype\": \"float32\", \"nested_offset\": " + python_float_repr(static_cast<double>(w.offset));
    }
    return text + "}";
}

std::vector<std::string> nf4_state_dict_keys(const std::string& weight_key, bool nested) {
    std::vector<std::string> keys = {weight_key, weight_key + ".absmax", weight_key + ".quant_map",
                                     weight_key + kNf4QuantStateSuffix};
    if (nested) {
        keys.push_back(weight_key + ".nested_absmax");
        keys.push_back(weight_key + ".nested_quant_map");
    }
    std::sort(keys.begin(), keys.end());  // the order nf4_to_state_dict's map iterates in
    return keys;
}

std::map<std::string, at::Tensor> nf4_to_state_dict(const Nf4Tensor& w, const std::string& weight_key) {
    w.validate(weight_key);
    auto cpu = [](const at::Tensor& t) { return t.to(at::kCPU).contiguous(); };
    std::map<std::string, at::Tensor> out;
    out[weight_key]             = cpu(w.packed).reshape({(w.numel() + 1) / 2, 1});
    out[weight_key + ".absmax"] = cpu(w.absmax).reshape({w.n_blocks()});
    out[weight_key + ".quant_map"] =
        at::from_blob(const_cast<float*>(nf4_code().data()), {16}, at::TensorOptions().dtype(at::kFloat)).clone();
    if (w.nested) {
        out[weight_key + ".nested_absmax"]    = cpu(w.nested_absmax).reshape({-1});
        out[weight_key + ".nested_quant_map"] = cpu(w.nested_quant_map).reshape({256});
    }
    out[weight_key + kNf4QuantStateSuffix] = bytes_of(nf4_quant_state_json(w));
    return out;
}

Nf4Tensor nf4_from_state_dict(const std::map<std::string, at::Tensor>& tensors, const std::string& weight_key) {
    const std::string state_key = weight_key + kNf4QuantStateSuffix;
    if (!has_nf4_state(tensors, weight_key)) {
        if (tensors.count(weight_key + ".quant_state.bitsandbytes__fp4")) {
            throw Error(weight_key + ": FP4 4-bit checkpoints are not supported (only NF4)");
        }
        throw Error("4-bit checkpoint: missing tensor " + state_key);
    }
    const at::Tensor state_bytes = require(tensors, state_key).to(at::kCPU).contiguous();
    if (state_bytes.scalar_type() != at::kByte) throw Error(state_key + ": quant state must be a uint8 tensor");
    const std::string text(static_cast<const char*>(state_bytes.data_ptr()), static_cast<size_t>(state_bytes.numel()));
    nlohmann::json state;
    try {
        state = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
        throw Error(state_key + ": quant state is not valid JSON: " + e.what());
    }
    Nf4Tensor w;
    try {
        const std::string quant_type = state.at("quant_type").get<std::string>();
        if (quant_type != "nf4") throw Error(state_key + ": quant_type \"" + quant_type + "\" is not nf4");
        w.blocksize = state.at("blocksize").get<int64_t>();
        w.dtype     = dtype_from_name(state.at("dtype").get<std::string>(), state_key);
        w.shape     = state.at("shape").get<std::vector<int64_t>>();
        w.nested    = state.contains("nested_offset") || tensors.count(weight_key + ".nested_absmax");
        if (w.nested) {
            w.nested_blocksize = state.at("nested_blocksize").get<int64_t>();
            w.offset           = static_cast<float>(state.at("nested_offset").get<double>());
            if (state.contains("nested_dtype") && state.at("nested_dtype").get<std::string>() != "float32") {
                throw Error(state_key + ": nested_dtype must be float32");
            }
        }
    } catch (const nlohmann::json::exception& e) {
        throw Error(state_key + ": malformed quant state: " + e.what());
    }
    at::Tensor packed = require(tensors, weight_key).contiguous();
    if (packed.scalar_type() != at::kByte) packed = packed.view(at::kByte);  // quant_storage other than uint8
    w.packed    = packed.reshape({-1, 1});
    w.absmax    = require(tensors, weight_key + ".absmax").contiguous().reshape({-1});
    w.quant_map = require(tensors, weight_key + ".quant_map").contiguous().reshape({-1});
    if (w.nested) {
        w.nested_absmax    = require(tensors, weight_key + ".nested_absmax").contiguous().reshape({-1});
        w.nested_quant_map = require(tensors, weight_key + ".nested_quant_map").contiguous().reshape({-1});
    }
    const at::Tensor nf4 =
        at::from_blob(const_cast<float*>(nf4_code().data()), {16}, at::TensorOptions().dtype(at::kFloat));
    if (w.quant_map.scalar_type() != at::kFloat || w.quant_map.numel() != 16 || !at::equal(w.quant_map.cpu(), nf4)) {
        throw Error(weight_key + ".quant_map: not the NF4 code book");
    }
    w.validate(weight_key);
    return w;
}

}  // namespace medllm::quant
