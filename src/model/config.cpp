// Qwen2Config from HF config.json: strict types, HF defaults for omitted keys, clear rejection of features
// medllm does not implement (sliding-window attention, non-default RoPE scaling).
#include "medllm/model/config.h"

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "medllm/core/error.h"
#include "medllm/core/files.h"

namespace fs = std::filesystem;

namespace medllm::model {

namespace {

class Reader {
public:
    Reader(const nlohmann::json& json, const std::string& source) : json_(json), source_(source) {}

    [[noreturn]] void fail(const std::string& key, const std::string& what) const {
        throw UsageError(source_ + ": key '" + key + "': " + what);
    }

    const nlohmann::json* find(const std::string& key) const {
        auto it = json_.find(key);
        return it == json_.end() || it->is_null() ? nullptr : &*it;
    }

    static bool is_int(const nlohmann::json& v) { return v.is_number_integer(); }

    // An integer in [min, max]; floats (1e12, 3.5, 32.0), strings and out-of-range values are refused with the range.
    int64_t as_int(const std::string& key, const nlohmann::json& v, int64_t min, int64_t max) const {
        const std::string wanted = max == std::numeric_limits<int64_t>::max()
                                       ? "an integer >= " + std::to_string(min)
                                       : "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
        const bool fits =
            is_int(v) &&
            !(v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
        if (!fits || v.get<int64_t>() < min || v.get<int64_t>() > max)
            fail(key, "must be " + wanted + ", got " + v.dump());
        return v.get<int64_t>();
    }

    // A key every Qwen2 config.json holds: HF's class defaults for these are another model's shape (hidden_size
    // 4096, 32 layers), never what a file that omits them meant, so a missing one is named instead of defaulted.
    int64_t require_int(const std::string& key, int64_t min, int64_t max) const {
        const auto* v = find(key);
        if (!v)
            fail(key,
                 "is missing (required; an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "])");
        return as_int(key, *v, min, max);
    }

    int64_t get_int(const std::string& key, int64_t fallback, int64_t min, int64_t max) const {
        const auto* v = find(key);
        return v ? as_int(key, *v, min, max) : fallback;
    }

    std::optional<int64_t> get_optional_int(const std::string& key, int64_t min, int64_t max) const {
        const auto* v = find(key);
        if (!v) return std::nullopt;
        return as_int(key, *v, min, max);
    }

    double get_double(const std::string& key, double fallback) const {
        const auto* v = find(key);
        if (!v) return fallback;
        if (!v->is_number()) fail(key, "expected a number, got " + v->dump());
        const double x = v->get<double>();
        if (!std::isfinite(x)) fail(key, "must be finite");
        return x;
    }

    bool get_bool(const std::string& key, bool fallback) const {
        const auto* v = find(key);
        if (!v) return fallback;
        if (!v->is_boolean()) fail(key, "expected true or false, got " + v->dump());
        return v->get<bool>();
    }

    std::string get_string(const std::string& key, const std::string& fallback) const {
        const auto* v = find(key);
        if (!v) return fallback;
        if (!v->is_string()) fail(key, "expected a string, got " + v->dump());
        return v->get<std::string>();
    }

private:
    const nlohmann::json& json_;
    const std::string& source_;
};

// Upper bounds for the size-like keys: far above every published Qwen2 / Qwen2.5 model (72B: hidden 8192,
// intermediate 29568, 80 layers, 64 heads, vocab 152064, 131072 positions), low enough that the tensor lists,
// parameter counts and memory estimates they size stay small and far from int64 overflow. `num_hidden_layers:
// 1e12` is a typo or a hostile file, and used to grow memory until the kernel killed the process.
constexpr int64_t kMaxVocab        = int64_t{1} << 24;
constexpr int64_t kMaxHidden       = int64_t{1} << 16;
constexpr int64_t kMaxIntermediate = int64_t{1} << 20;
constexpr int64_t kMaxLayers       = 1024;
constexpr int64_t kMaxHeads        = 1024;
constexpr int64_t kMaxHeadDim      = 1024;
constexpr int64_t kMaxPositions    = int64_t{1} << 24;
constexpr int64_t kMaxTokenId      = std::numeric_limits<int32_t>::max();  // text::TokenId is 32-bit

bool known_dtype(const std::string& d) {
    return d == "bfloat16" || d == "float16" || d == "float32" || d == "float" || d == "half";
}

}  // namespace

Qwen2Config Qwen2Config::from_json(const nlohmann::json& json, const std::string& source) {
    if (!json.is_object()) throw UsageError(source + ": config is not a JSON object");
    const Reader r(json, source);
    Qwen2Config c;
    c.source = source;

    const std::string model_type = r.get_string("model_type", "qwen2");
    if (model_type != "qwen2")
        r.fail("model_type", "'" + model_type + "' is not a Qwen2 model (medllm implements model_type \"qwen2\")");

    c.vocab_size          = r.require_int("vocab_size", 1, kMaxVocab);
    c.hidden_size         = r.require_int("hidden_size", 1, kMaxHidden);
    c.intermediate_size   = r.require_int("intermediate_size", 1, kMaxIntermediate);
    c.num_hidden_layers   = r.require_int("num_hidden_layers", 1, kMaxLayers);
    c.num_attention_heads = r.require_int("num_attention_heads", 1, kMaxHeads);
    c.num_key_value_heads = r.get_int("num_key_value_heads", c.num_attention_heads, 1, c.num_attention_heads);
    if (c.num_attention_heads % c.num_key_value_heads != 0)
        r.fail("num_key_value_heads", std::to_string(c.num_key_value_heads) + " does not divide num_attention_heads " +
                                          std::to_string(c.num_attention_heads));
    if (r.find("head_dim")) {
        c.head_dim = r.get_int("head_dim", 0, 1, kMaxHeadDim);
    } else {
        if (c.hidden_size % c.num_attention_heads != 0)
            r.fail("num_attention_heads", std::to_string(c.num_attention_heads) + " does not divide hidden_size " +
                                              std::to_string(c.hidden_size) + " (and no head_dim is given)");
        c.head_dim = c.hidden_size / c.num_attention_heads;
    }
    if (c.head_dim % 2 != 0) r.fail("head_dim", "must be even for rotate-half RoPE, got " + std::to_string(c.head_dim));

    c.hidden_act = r.get_string("hidden_act", c.hidden_act);
    if (c.hidden_act != "silu") r.fail("hidden_act", "'" + c.hidden_act + "' is not implemented (only silu)");
    c.max_position_embeddings = r.get_int("max_position_embeddings", c.max_position_embeddings, 1, kMaxPositions);
    c.initializer_range       = r.get_double("initializer_range", c.initializer_range);
    c.rms_norm_eps            = r.get_double("rms_norm_eps", c.rms_norm_eps);
    if (!(c.rms_norm_eps > 0)) r.fail("rms_norm_eps", "must be positive");
    c.use_cache           = r.get_bool("use_cache", c.use_cache);
    c.tie_word_embeddings = r.get_bool("tie_word_embeddings", c.tie_word_embeddings);
    c.attention_dropout   = r.get_double("attention_dropout", c.attention_dropout);
    if (c.attention_dropout < 0 || c.attention_dropout >= 1) r.fail("attention_dropout", "must be in [0, 1)");

    // RoPE: `rope_theta` + `rope_scaling` (transformers 4.x) or `rope_parameters` (transformers 5).
    std::optional<double> theta;
    if (r.find("rope_theta")) theta = r.get_double("rope_theta", 0);
    auto check_rope_type = [&](const std::string& key, const nlohmann::json& block) {
        if (!block.is_object()) r.fail(key, "expected an object or null, got " + block.dump());
        std::string type = "default";
        for (const char* type_key : {"rope_type", "type"}) {
            auto it = block.find(type_key);
            if (it != block.end() && !it->is_null()) {
                if (!it->is_string()) r.fail(key, std::string(type_key) + " is not a string");
                type = it->get<std::string>();
                break;
            }
        }
        if (type != "default")
            r.fail(key, "rope type '" + type + "' is not implemented (medllm implements default RoPE only)");
    };
    if (const auto* scaling = r.find("rope_scaling")) check_rope_type("rope_scaling", *scaling);
    if (const auto* params = r.find("rope_parameters")) {
        check_rope_type("rope_parameters", *params);
        auto it = params->find("rope_theta");
        if (it != params->end() && !it->is_null()) {
            if (!it->is_number() || !std::isfinite(it->get<double>()))
                r.fail("rope_parameters", "rope_theta is not a finite number");
            const double t = it->get<double>();
            if (theta && *theta != t)
                r.fail("rope_parameters",
                       "rope_theta " + it->dump() + " disagrees with rope_theta " + nlohmann::json(*theta).dump());
            theta = t;
        }
    }
    c.rope_theta = theta.value_or(c.rope_theta);
    // theta <= 1 gives frequencies that grow (or stay 1) with the dimension; tiny values overflow inv_freq to inf.
    if (!(c.rope_theta >= 1)) r.fail("rope_theta", "must be >= 1, got " + nlohmann::json(c.rope_theta).dump());

    // Sliding-window attention: inert in every Qwen2.5 release; enabling it would change the math, so refuse.
    c.use_sliding_window = r.get_bool("use_sliding_window", false);
    if (c.use_sliding_window)
        r.fail("use_sliding_window", "sliding-window attention is not implemented (no Qwen2.5 release enables it)");
    c.sliding_window    = r.get_optional_int("sliding_window", 0, kMaxPositions);
    c.max_window_layers = r.get_int("max_window_layers", c.max_window_layers, 0, kMaxLayers);
    if (const auto* types = r.find("layer_types")) {
        if (!types->is_array()) r.fail("layer_types", "expected a list of strings");
        if (static_cast<int64_t>(types->size()) != c.num_hidden_layers)
            r.fail("layer_types", "has " + std::to_string(types->size()) + " entries for " +
                                      std::to_string(c.num_hidden_layers) + " layers");
        for (size_t i = 0; i < types->size(); ++i) {
            const auto& t = (*types)[i];
            if (!t.is_string()) r.fail("layer_types", "entry " + std::to_string(i) + " is not a string");
            if (t != "full_attention")
                r.fail("layer_types",
                       "layer " + std::to_string(i) + " is " + t.dump() + "; only full_attention is implemented");
        }
    }

    c.bos_token_id = r.get_optional_int("bos_token_id", 0, kMaxTokenId);
    c.pad_token_id = r.get_optional_int("pad_token_id", 0, kMaxTokenId);
    if (const auto* eos = r.find("eos_token_id")) {
        if (eos->is_array()) {
            for (const auto& e : *eos) c.eos_token_ids.push_back(r.as_int("eos_token_id", e, 0, kMaxTokenId));
        } else {
            c.eos_token_ids.push_back(r.as_int("eos_token_id", *eos, 0, kMaxTokenId));
        }
    }

    const std::string dtype       = r.get_string("dtype", "");
    const std::string torch_dtype = r.get_string("torch_dtype", "");
    if (!dtype.empty() && !torch_dtype.empty() && dtype != torch_dtype)
        r.fail("dtype", "'" + dtype + "' disagrees with torch_dtype '" + torch_dtype + "'");
    c.torch_dtype = dtype.empty() ? torch_dtype : dtype;
    if (!c.torch_dtype.empty() && !known_dtype(c.torch_dtype))
        r.fail(dtype.empty() ? "torch_dtype" : "dtype", "'" + c.torch_dtype + "' is not a supported dtype");
    return c;
}

Qwen2Config Qwen2Config::from_file(const fs::path& path) {
    std::error_code ec;
    const fs::path file = fs::is_directory(path, ec) ? path / "config.json" : path;
    return from_json(read_json_file(file), file.string());
}

nlohmann::json Qwen2Config::to_json() const {
    nlohmann::json j = {
        {"architectures", {"Qwen2ForCausalLM"}},
        {"model_type", "qwen2"},
        {"vocab_size", vocab_size},
        {"hidden_size", hidden_size},
        {"intermediate_size", intermediate_size},
        {"num_hidden_layers", num_hidden_layers},
        {"num_attention_heads", num_attention_heads},
        {"num_key_value_heads", num_key_value_heads},
        {"hidden_act", hidden_act},
        {"max_position_embeddings", max_position_embeddings},
        {"initializer_range", initializer_range},
        {"rms_norm_eps", rms_norm_eps},
        {"use_cache", use_cache},
        {"tie_word_embeddings", tie_word_embeddings},
        {"rope_theta", rope_theta},
        {"rope_scaling", nullptr},
        {"use_sliding_window", use_sliding_window},
        {"sliding_window", sliding_window ? nlohmann::json(*sliding_window) : nlohmann::json(nullptr)},
        {"max_window_layers", max_window_layers},
        {"attention_dropout", attention_dropout},
        {"bos_token_id", bos_token_id ? nlohmann::json(*bos_token_id) : nlohmann::json(nullptr)},
        {"pad_token_id", pad_token_id ? nlohmann::json(*pad_token_id) : nlohmann::json(nullptr)},
    };
    if (hidden_size != num_attention_heads * head_dim) j["head_dim"] = head_dim;
    if (eos_token_ids.size() == 1)
        j["eos_token_id"] = eos_token_ids.front();
    else if (eos_token_ids.empty())
        j["eos_token_id"] = nullptr;
    else
        j["eos_token_id"] = eos_token_ids;
    if (!torch_dtype.empty()) j["torch_dtype"] = torch_dtype;
    return j;
}

}  // namespace medllm::model
