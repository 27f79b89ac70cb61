// PEFT adapter folders: read, write, apply to a model, and `medllm merge` (an adapter folded into its base).
#include "medllm/peft/adapter.h"

#include <algorithm>

#include <cmath>
#include <regex>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/progress.h"
#include "medllm/io/model_files.h"
#include "medllm/io/safetensors.h"
#include "medllm/model/checkpoint_check.h"
#include "medllm/model/config.h"
#include "medllm/quant/nf4_serialize.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace medllm::peft {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string short_name_of(const std::string& module) {
    auto pos = module.rfind('.');
    return pos == std::string::npos ? module : module.substr(pos + 1);
}

// PEFT's get_pattern_key: a pattern key matches a module name when `(.*\.)?(key)$` matches it from the start.
template <typename T>
const T* match_pattern(const std::map<std::string, T>& patterns, const std::string& module) {
    for (const auto& [key, value] : patterns) {
        try {
            if (std::regex_match(module, std::regex("(.*\\.)?(" + key + ")"))) return &value;
        } catch (const std::regex_error&) {
            if (module == key || ends_with(module, "." + key)) return &value;
        }
    }
    return nullptr;
}

double scaling_of(double alpha, int64_t r, bool rslora) {
    return rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

json number_json(double v) {
    if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) return json(static_cast<int64_t>(v));
    return json(v);
}

}  // namespace

int64_t AdapterConfig::rank_for(const std::string& module) const {
    const int64_t* r = match_pattern(rank_pattern, module);
    return r ? *r : lora.r;
}

double AdapterConfig::alpha_for(const std::string& module) const {
    const double* a = match_pattern(alpha_pattern, module);
    return a ? *a : lora.alpha;
}

double AdapterConfig::scaling_for(const std::string& module) const {
    return scaling_of(alpha_for(module), rank_for(module), lora.use_rslora);
}

AdapterConfig read_adapter_config(const fs::path& dir) {
    const fs::path path     = dir / kAdapterConfigFile;
    const std::string where = path.string();
    if (!fs::exists(path)) throw Error(where + ": not found (not a PEFT adapter directory)");
    const json j = read_json_file(path);
    // A wrong value in the adapter's config is a configuration error (exit 2), as one in a model's config.json.
    if (!j.is_object()) throw UsageError(where + ": expected a JSON object");
    auto key_error = [&](const std::string& key, const std::string& what) {
        return UsageError(where + ": key '" + key + "' " + what);
    };
    auto get_int = [&](const char* key, int64_t fallback) -> int64_t {
        if (!j.contains(key) || j[key].is_null()) return fallback;
        if (!j[key].is_number_integer()) throw key_error(key, "must be an integer");
        return j[key].get<int64_t>();
    };
    auto get_double = [&](const char* key, double fallback) -> double {
        if (!j.contains(key) || j[key].is_null()) return fallback;
        if (!j[key].is_number()) throw key_error(key, "must be a number");
        return j[key].get<double>();
    };
    auto get_bool = [&](const char* key) -> bool {
        if (!j.contains(key) || j[key].is_null()) return false;
        if (!j[key].is_boolean()) throw key_error(key, "must be true or false");
        return j[key].get<bool>();
    };
    auto unsupported = [&](const std::string& key, const std::string& why) {
        return UsageError(where + ": key '" + key + "': " + why + " is not supported by medllm");
    };

    if (!j.contains("peft_type")) throw key_error("peft_type", "is missing");
    if (!j["peft_type"].is_string()) throw key_error("peft_type", "must be a string");
    if (j["peft_type"] != "LORA") throw unsupported("peft_type", "adapter type " + j["peft_type"].get<std::string>());

    AdapterConfig cfg;
    cfg.lora.r          = get_int("r", 8);
    cfg.lora.alpha      = get_double("lora_alpha", 8.0);
    cfg.lora.dropout    = get_double("lora_dropout", 0.0);
    cfg.lora.use_rslora = get_bool("use_rslora");
    if (cfg.lora.r < 1) throw key_error("r", "must be >= 1, got " + std::to_string(cfg.lora.r));
    if (!(cfg.lora.dropout >= 0.0 && cfg.lora.dropout < 1.0)) throw key_error("lora_dropout", "must be in [0, 1)");
    if (get_bool("use_dora")) throw unsupported("use_dora", "DoRA");
    if (get_bool("lora_bias")) throw unsupported("lora_bias", "a bias on lora_B");
    if (get_bool("fan_in_fan_out")) throw unsupported("fan_in_fan_out", "Conv1D-style weights");
    if (get_bool("use_qalora")) throw unsupported("use_qalora", "QALoRA");
    if (j.contains("bias") && !j["bias"].is_null() && j["bias"] != "none")
        throw unsupported("bias", "training base biases (bias=" + j["bias"].dump() + ")");
    for (const char* key : {"modules_to_save", "layer_replication", "trainable_token_indices", "target_parameters"}) {
        if (j.contains(key) && !j[key].is_null() && !j[key].empty()) throw unsupported(key, std::string(key));
    }
    if (j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string())
        cfg.lora.base_model_name_or_path = j["base_model_name_or_path"].get<std::string>();

    // target_modules: a list of names, "all-linear", or a regex (then the weight file decides which modules).
    cfg.lora.target_modules = all_projection_names();
    if (j.contains("target_modules") && j["target_modules"].is_array()) {
        std::vector<std::string> targets;
        for (const auto& t : j["target_modules"]) {
            if (!t.is_string()) throw key_error("target_modules", "must hold strings");
            std::string name  = short_name_of(t.get<std::string>());
            const auto& known = all_projection_names();
            if (std::find(known.begin(), known.end(), name) == known.end())
                throw unsupported("target_modules", "adapting '" + t.get<std::string>() + "' (only the 7 projections)");
            targets.push_back(name);
        }
        if (targets.empty()) throw key_error("target_modules", "is empty");
        cfg.lora.target_modules = targets;
    } else if (j.contains("target_modules") && !j["target_modules"].is_null() && !j["target_modules"].is_string()) {
        throw key_error("target_modules", "must be a list of names or a string");
    }
    for (const char* key : {"rank_pattern", "alpha_pattern"}) {
        if (!j.contains(key) || j[key].is_null()) continue;
        if (!j[key].is_object()) throw key_error(key, "must be an object");
        for (const auto& [pattern, value] : j[key].items()) {
            if (std::string(key) == "rank_pattern") {
                if (!value.is_number_integer() || value.get<int64_t>() < 1)
                    throw key_error(std::string(key) + "." + pattern, "must be an integer >= 1");
                cfg.rank_pattern[pattern] = value.get<int64_t>();
            } else {
                if (!value.is_number()) throw key_error(std::string(key) + "." + pattern, "must be a number");
                cfg.alpha_pattern[pattern] = value.get<double>();
            }
        }
    }
    return cfg;
}

json adapter_config_json(const LoraConfig& cfg) {
    std::vector<std::string> targets = cfg.target_modules;
    std::sort(targets.begin(), targets.end());
    json j;  // nlohmann's object is a std::map: keys come out sorted, as PEFT writes them
    j["alpha_pattern"] = json::object();
    j["auto_mapping"]  = nullptr;
    j["base_model_name_or_path"] =
        cfg.base_model_name_or_path.empty() ? json(nullptr) : json(cfg.base_model_name_or_path);
    j["bias"]                = "none";
    j["exclude_modules"]     = nullptr;
    j["fan_in_fan_out"]      = false;
    j["inference_mode"]      = true;
    j["init_lora_weights"]   = true;
    j["layer_replication"]   = nullptr;
    j["layers_pattern"]      = nullptr;
    j["layers_to_transform"] = nullptr;
    j["lora_alpha"]          = number_json(cfg.alpha);
    j["lora_bias"]           = false;
    j["lora_dropout"]        = cfg.dropout;
    j["modules_to_save"]     = nullptr;
    j["peft_type"]           = "LORA";
    j["r"]                   = cfg.r;
    j["rank_pattern"]        = json::object();
    j["revision"]            = nullptr;
    j["target_modules"]      = targets;
    j["task_type"]           = "CAUSAL_LM";
    j["use_dora"]            = false;
    j["use_rslora"]          = cfg.use_rslora;
    return j;
}

std::map<std::string, AdapterWeights> read_adapter_weights(const fs::path& dir, const AdapterConfig& cfg) {
    const fs::path path     = dir / kAdapterWeightsFile;
    const std::string where = path.string();
    if (!fs::exists(path)) {
        if (fs::exists(dir / "adapter_model.bin"))
            throw UsageError((dir / "adapter_model.bin").string() +
                             ": pickle adapters are not supported; re-save with safe_serialization=True");
        throw Error(where + ": not found (not a PEFT adapter directory)");
    }
    io::SafetensorsFile file(path);
    const std::string prefix   = kPeftKeyPrefix;
    const std::string suffix_a = ".lora_A.weight", suffix_b = ".lora_B.weight";
    std::map<std::string, AdapterWeights> out;
    for (const auto& key : file.names()) {
        auto bad = [&](const std::string& what) { return Error(where + ": tensor '" + key + "' " + what); };
        if (key.compare(0, prefix.size(), prefix) != 0) throw bad("does not start with '" + prefix + "'");
        std::string rest = key.substr(prefix.size());
        bool is_a = ends_with(rest, suffix_a), is_b = ends_with(rest, suffix_b);
        if (!is_a && !is_b) {
            if (ends_with(rest, ".lora_B.bias"))
                throw UsageError(where + ": tensor '" + key + "': lora_bias is not supported");
            if (rest.find("lora_magnitude_vector") != std::string::npos)
                throw UsageError(where + ": tensor '" + key + "': DoRA is not supported");
            throw bad("is not a LoRA weight (expected <module>.lora_A.weight or <module>.lora_B.weight)");
        }
        std::string module = rest.substr(0, rest.size() - suffix_a.size());
        at::Tensor t       = file.tensor(key);
        if (!at::isFloatingType(t.scalar_type()))
            throw bad("has non-floating dtype " + std::string(c10::toString(t.scalar_type())));
        if (t.dim() != 2) throw bad("must be 2-D, got shape " + c10::str(t.sizes()));
        // A diverged training run leaves NaN/Inf in its adapter; merging or generating with it would give garbage.
        if (!at::isfinite(t).all().item<bool>()) {
            const int64_t n = (~at::isfinite(t)).sum().item<int64_t>();
            throw bad("contains " + std::to_string(n) + " NaN or Inf value" + (n == 1 ? "" : "s") +
                      " (a diverged training run?)");
        }
        const int64_t r = cfg.rank_for(module);
        if (is_a && t.size(0) != r)
            throw bad("has rank " + std::to_string(t.size(0)) + " but adapter_config.json says r=" + std::to_string(r));
        if (is_b && t.size(1) != r)
            throw bad("has rank " + std::to_string(t.size(1)) + " but adapter_config.json says r=" + std::to_string(r));
        auto& w            = out[module];
        (is_a ? w.A : w.B) = t;
        w.scaling          = cfg.scaling_for(module);
    }
    for (const auto& [module, w] : out) {
        if (!w.A.defined()) throw Error(where + ": missing tensor '" + prefix + module + suffix_a + "'");
        if (!w.B.defined()) throw Error(where + ": missing tensor '" + prefix + module + suffix_b + "'");
    }
    if (out.empty()) throw Error(where + ": holds no LoRA weights");
    return out;
}

// ---------------------------------------------------------------- stacks

std::vector<StackEntry> read_adapter_stack(const fs::path& dir) {
    const fs::path path = dir / kAdapterStackFile;
    if (!fs::exists(path)) return {{"default", dir}};
    const std::string where = path.string();
    const json j            = read_json_file(path);
    if (!j.is_object()) throw UsageError(where + ": expected a JSON object");
    if (!j.contains("adapters") || !j["adapters"].is_array() || j["adapters"].empty())
        throw UsageError(where + ": key 'adapters' must be a non-empty list of adapter names (bottom first)");
    std::vector<StackEntry> out;
    std::set<std::string> seen;
    for (const auto& a : j["adapters"]) {
        if (!a.is_string()) throw UsageError(where + ": key 'adapters' must hold strings, got " + a.dump());
        const std::string name = a.get<std::string>();
        validate_adapter_name(name, where + ": key 'adapters'");
        if (!seen.insert(name).second) throw UsageError(where + ": key 'adapters' names '" + name + "' twice");
        const fs::path d = name == "default" ? dir : dir / name;
        if (!fs::is_regular_file(d / kAdapterConfigFile))
            throw Error(where + ": adapter '" + name + "' has no " + (d / kAdapterConfigFile).string());
        out.push_back({name, d});
    }
    if (!seen.count("default"))
        throw UsageError(where +
                         ": key 'adapters' must include 'default' (the adapter in the folder itself, where "
                         "PEFT saves it)");
    return out;
}

json adapter_identity(const fs::path& dir) {
    if (!fs::exists(dir / kAdapterStackFile)) return io::model_dir_identity(dir);
    json stack = json::array();
    for (const auto& e : read_adapter_stack(dir))
        stack.push_back({{"name", e.name}, {"files", io::model_dir_identity(e.dir)}});
    return {{"stack", stack}};
}

namespace {

// One module of one adapter, as saved.
struct SavedModule {
    std::string name;
    at::Tensor A, B;
    int64_t rank;
    double scaling;
};

// One adapter folder in PEFT's format: the weights, and adapter_config.json from `cfg` with the modules whose rank
// or scaling differ from it recorded as PEFT patterns (full name).
void write_adapter_folder(const fs::path& dir, const LoraConfig& cfg, const std::vector<SavedModule>& modules) {
    if (modules.empty()) throw Error("save_adapter: the model has no LoRA adapters");
    fs::create_directories(dir);
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    json config = adapter_config_json(cfg);
    std::set<std::string> targets;
    for (const auto& m : modules) {
        tensors.emplace_back(kPeftKeyPrefix + m.name + ".lora_A.weight", m.A.detach().cpu().contiguous());
        tensors.emplace_back(kPeftKeyPrefix + m.name + ".lora_B.weight", m.B.detach().cpu().contiguous());
        targets.insert(short_name_of(m.name));
        const double alpha = cfg.use_rslora ? m.scaling * std::sqrt(static_cast<double>(m.rank))
                                            : m.scaling * static_cast<double>(m.rank);
        if (m.rank != cfg.r) config["rank_pattern"][m.name] = m.rank;
        if (std::fabs(alpha - cfg.alpha) > 1e-9 * std::max(1.0, std::fabs(cfg.alpha)))
            config["alpha_pattern"][m.name] = number_json(alpha);
    }
    config["target_modules"] = std::vector<std::string>(targets.begin(), targets.end());
    io::save_file(dir / kAdapterWeightsFile, tensors, {{"format", "pt"}});
    write_file_atomic(dir / kAdapterConfigFile, config.dump(2) + "\n");
}

std::vector<SavedModule> trainable_modules(model::Qwen2ForCausalLM& model) {
    std::vector<SavedModule> out;
    for (const auto& [name, layer] : lora_layers(model)) {
        if (!layer->has_adapter()) continue;
        out.push_back({name, layer->lora_A->weight, layer->lora_B->weight, layer->rank(), layer->scaling()});
    }
    return out;
}

std::vector<SavedModule> frozen_modules(model::Qwen2ForCausalLM& model, const std::string& adapter,
                                        std::shared_ptr<const LoraConfig>* config) {
    std::vector<SavedModule> out;
    for (const auto& [name, layer] : lora_layers(model)) {
        for (const auto& f : layer->frozen_adapters()) {
            if (f.name != adapter) continue;
            out.push_back({name, f.A, f.B, f.A.size(0), f.scaling});
            if (config && !*config) *config = f.config;
        }
    }
    return out;
}

std::string join_names(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return "[" + out + "]";
}

// Copies one adapter file's weights into the model's trainable adapter (`frozen` empty) or into its frozen adapter
// `frozen`: every module the model adapts with it must be in the file, with the same shapes, and nothing else.
void copy_adapter_weights(model::Qwen2ForCausalLM& model, const std::map<std::string, AdapterWeights>& weights,
                          const fs::path& dir, const std::string& frozen) {
    const std::string where = (dir / kAdapterWeightsFile).string();
    at::NoGradGuard no_grad;
    std::set<std::string> used;
    for (auto& [name, layer] : lora_layers(model)) {
        at::Tensor dst_a, dst_b;
        FrozenAdapter* f = nullptr;
        if (frozen.empty()) {
            if (!layer->has_adapter()) continue;
            dst_a = layer->lora_A->weight;
            dst_b = layer->lora_B->weight;
        } else {
            for (auto& g : layer->frozen_adapters())
                if (g.name == frozen) f = &layer->frozen_adapter(frozen);
            if (!f) continue;
            dst_a = f->A;
            dst_b = f->B;
        }
        auto it = weights.find(name);
        if (it == weights.end())
            throw Error(where + ": missing tensor '" + kPeftKeyPrefix + name + ".lora_A.weight' (the model adapts " +
                        name + ")");
        const auto& w = it->second;
        auto check    = [&, &name = name](const at::Tensor& dst, const at::Tensor& src, const char* which) {
            if (dst.sizes() != src.sizes())
                throw Error(where + ": tensor '" + kPeftKeyPrefix + name + "." + which + ".weight' has shape " +
                               c10::str(src.sizes()) + " but the model needs " + c10::str(dst.sizes()));
        };
        check(dst_a, w.A, "lora_A");
        check(dst_b, w.B, "lora_B");
        if (layer->merged()) layer->unmerge();
        dst_a.copy_(w.A);
        dst_b.copy_(w.B);
        if (f)
            f->scaling = w.scaling;
        else
            layer->set_scaling(w.scaling);
        used.insert(name);
    }
    for (const auto& [module, w] : weights) {
        if (!used.count(module))
            throw Error(where + ": tensor '" + kPeftKeyPrefix + module +
                        ".lora_A.weight' names a module the model does not adapt");
    }
}

}  // namespace

void save_adapter(model::Qwen2ForCausalLM& model, const LoraConfig& cfg, const fs::path& dir) {
    const auto names            = adapter_names(model);
    const std::string trainable = trainable_adapter_name(model);
    const bool stacked          = names.size() > 1 || (names.size() == 1 && names[0] != trainable);
    if (!stacked) {
        write_adapter_folder(dir, cfg, trainable_modules(model));
        fs::remove(dir / kAdapterStackFile);  // an earlier stack saved here would otherwise name stale subfolders
        return;
    }
    if (std::find(names.begin(), names.end(), "default") == names.end())
        throw Error(
            "save_adapter: a stack needs an adapter named 'default' (PEFT keeps it in the folder itself); "
            "the model holds " +
            join_names(names));
    for (const auto& name : names) {
        const fs::path d = name == "default" ? dir : dir / name;
        if (name == trainable) {
            write_adapter_folder(d, cfg, trainable_modules(model));
        } else {
            std::shared_ptr<const LoraConfig> config;
            const auto modules        = frozen_modules(model, name, &config);
            LoraConfig c              = config ? *config : cfg;
            c.base_model_name_or_path = cfg.base_model_name_or_path;
            write_adapter_folder(d, c, modules);
        }
    }
    json manifest = {{"adapters", names},
                     {"description",
                      "medllm adapter stack, bottom first; every adapter is active and the model is the base plus the "
                      "sum of their deltas. PEFT: PeftModel.from_pretrained(base, <this folder>) loads 'default'; "
                      "load_adapter(<this folder>/<name>, adapter_name=<name>) each other one; then "
                      "set_adapter([all names])"}};
    write_file_atomic(dir / kAdapterStackFile, manifest.dump(2) + "\n");  // last: the stack is complete when named
}

void load_adapter(model::Qwen2ForCausalLM& model, const fs::path& dir) {
    if (!fs::exists(dir / kAdapterStackFile)) {
        const AdapterConfig cfg = read_adapter_config(dir);
        copy_adapter_weights(model, read_adapter_weights(dir, cfg), dir, "");
        return;
    }
    const auto entries = read_adapter_stack(dir);
    std::vector<std::string> file_names;
    for (const auto& e : entries) file_names.push_back(e.name);
    const auto model_names = adapter_names(model);
    if (file_names != model_names)
        throw Error((dir / kAdapterStackFile).string() + ": holds the stack " + join_names(file_names) +
                    " but the model stacks " + join_names(model_names));
    const std::string trainable = trainable_adapter_name(model);
    for (const auto& e : entries) {
        const AdapterConfig cfg = read_adapter_config(e.dir);
        copy_adapter_weights(model, read_adapter_weights(e.dir, cfg), e.dir, e.name == trainable ? "" : e.name);
    }
}

namespace {

// An adapter made for another model is refused before the base loads, with the adapter's file and tensor named
// (the base folder is right; the adapter is what does not fit it).
void check_adapter_fits(const std::map<std::string, AdapterWeights>& weights, const fs::path& adapter_dir,
                        const std::string& base_dir) {
    const auto config       = model::Qwen2Config::from_file(base_dir);
    const std::string where = (adapter_dir / kAdapterWeightsFile).string();
    const int64_t H = config.hidden_size, I = config.intermediate_size;
    const int64_t q = config.num_attention_heads * config.head_dim, kv = config.num_key_value_heads * config.head_dim;
    const std::map<std::string, std::pair<int64_t, int64_t>> in_out = {
        {"self_attn.q_proj", {H, q}}, {"self_attn.k_proj", {H, kv}}, {"self_attn.v_proj", {H, kv}},
        {"self_attn.o_proj", {q, H}}, {"mlp.gate_proj", {H, I}},     {"mlp.up_proj", {H, I}},
        {"mlp.down_proj", {I, H}}};
    const std::string layers = "model.layers.";
    for (const auto& [module, w] : weights) {
        const std::string key_a = kPeftKeyPrefix + module + ".lora_A.weight";
        const std::string key_b = kPeftKeyPrefix + module + ".lora_B.weight";
        const std::string base  = " (base model " + base_dir + ": " + std::to_string(config.num_hidden_layers) +
                                 " layers, hidden_size " + std::to_string(H) + "); an adapter for another model?";
        std::size_t end = 0;
        int64_t layer   = -1;
        if (module.compare(0, layers.size(), layers) == 0) {
            try {
                layer = std::stoll(module.substr(layers.size()), &end);
            } catch (const std::exception&) {
                layer = -1;
            }
        }
        const auto dot = layers.size() + end;
        auto it        = layer >= 0 && module.size() > dot && module[dot] == '.' ? in_out.find(module.substr(dot + 1))
                                                                                 : in_out.end();
        if (it == in_out.end() || layer >= config.num_hidden_layers ||
            module != layers + std::to_string(layer) + "." + it->first)
            throw Error(where + ": tensor '" + key_a + "' adapts " + module + ", which the model does not have" + base);
        const auto [in, out] = it->second;
        if (w.A.size(1) != in)
            throw Error(where + ": tensor '" + key_a + "' has shape " + c10::str(w.A.sizes()) + " but " + module +
                        " takes " + std::to_string(in) + " inputs" + base);
        if (w.B.size(0) != out)
            throw Error(where + ": tensor '" + key_b + "' has shape " + c10::str(w.B.sizes()) + " but " + module +
                        " has " + std::to_string(out) + " outputs" + base);
    }
}

}  // namespace

namespace {

struct LoadedAdapter {
    StackEntry entry;
    AdapterConfig config;
    std::map<std::string, AdapterWeights> weights;
};

// Every adapter of a folder (a stack's all), read and checked against the base before anything loads.
std::vector<LoadedAdapter> read_stack_checked(const fs::path& dir, const std::string& base_dir) {
    std::vector<LoadedAdapter> out;
    for (const auto& e : read_adapter_stack(dir)) {
        LoadedAdapter a{e, read_adapter_config(e.dir), {}};
        a.weights = read_adapter_weights(e.dir, a.config);
        check_adapter_fits(a.weights, e.dir, base_dir);
        out.push_back(std::move(a));
    }
    return out;
}

}  // namespace

std::shared_ptr<model::Qwen2ForCausalLM> load_model_with_adapter(const std::string& base_dir,
                                                                 const fs::path& adapter_dir, at::ScalarType dtype,
                                                                 at::Device device, bool quantize_base) {
    auto stack         = read_stack_checked(adapter_dir, base_dir);
    const auto& top    = stack.back();
    LoraConfig lora    = top.config.lora;
    lora.adapter_name  = top.entry.name;
    lora.quantize_base = quantize_base;
    ModuleRanks modules;
    for (const auto& [name, w] : top.weights) modules[name] = {w.A.size(0), w.scaling};
    auto model = load_model_for_lora(base_dir, lora, dtype, device, &modules);
    copy_adapter_weights(*model, top.weights, top.entry.dir, "");
    for (size_t i = 0; i + 1 < stack.size(); ++i)
        add_frozen_adapter(*model, stack[i].entry.name, stack[i].weights, stack[i].config.lora);
    if (stack.size() > 1) spdlog::info("{}: adapter stack {}", adapter_dir.string(), join_names(adapter_names(*model)));
    return model;
}

std::vector<std::string> add_frozen_adapters(model::Qwen2ForCausalLM& model, const fs::path& dir,
                                             const std::string& base_dir) {
    std::vector<std::string> names;
    for (auto& a : read_stack_checked(dir, base_dir)) {
        add_frozen_adapter(model, a.entry.name, a.weights, a.config.lora);
        names.push_back(a.entry.name);
    }
    return names;
}

// ---------------------------------------------------------------- merge into a checkpoint

MergeStats merge_adapter_checkpoint(const fs::path& base_dir, const std::vector<fs::path>& adapter_dirs,
                                    const fs::path& out_dir, uint64_t max_shard_bytes,
                                    const std::function<void(int64_t, int64_t, uint64_t)>& progress) {
    if (!fs::is_directory(base_dir)) throw Error(base_dir.string() + ": not a model directory");
    if (adapter_dirs.empty()) throw UsageError("merge: no adapter given");
    std::vector<fs::path> inputs{base_dir};
    inputs.insert(inputs.end(), adapter_dirs.begin(), adapter_dirs.end());
    check_output_not_input(out_dir, inputs);  // also through a symlink, before anything is written
    // Every adapter of every folder (a stack's whole stack, bottom first), each module's adapters in that order.
    struct ModuleAdapter {
        const AdapterWeights* w;
        fs::path file;
    };
    std::vector<std::map<std::string, AdapterWeights>> all_weights;
    std::vector<fs::path> files;
    std::string adapters_key;
    for (const auto& dir : adapter_dirs) {
        adapters_key += "|" + io::directory_fingerprint(dir);  // one folder: the key a single-adapter merge had
        for (const auto& e : read_adapter_stack(dir)) {
            if (e.dir != dir) adapters_key += "|" + io::directory_fingerprint(e.dir);
            const AdapterConfig cfg = read_adapter_config(e.dir);
            all_weights.push_back(read_adapter_weights(e.dir, cfg));
            files.push_back(e.dir / kAdapterWeightsFile);
        }
    }
    std::map<std::string, std::vector<ModuleAdapter>> weights;
    for (size_t i = 0; i < all_weights.size(); ++i)
        for (const auto& [module, w] : all_weights[i]) weights[module].push_back({&w, files[i]});

    // config.json is copied as is (so every key the base has survives), with the dtype and quantization updated.
    const fs::path config_path = base_dir / "config.json";
    json config                = read_json_file(config_path);

    io::CheckpointReader reader(base_dir);
    // Every tensor of the config present, none extra, shapes as the config implies (the check info and generate make).
    model::validate_checkpoint(reader, model::Qwen2Config::from_json(config, config_path.string()), base_dir.string());
    const auto names = reader.names();
    // bitsandbytes 4-bit weights: "<key>" plus "<key>.<statistic>" entries, recognised by their quant_state.
    std::set<std::string> quantized_keys;
    const std::string qs_suffix = quant::kNf4QuantStateSuffix;
    for (const auto& n : names) {
        if (ends_with(n, qs_suffix)) quantized_keys.insert(n.substr(0, n.size() - qs_suffix.size()));
    }
    auto is_statistic = [&](const std::string& n) {  // "<module>.weight.<statistic>"
        auto pos = n.find(".weight.");
        return pos != std::string::npos && quantized_keys.count(n.substr(0, pos + 7)) > 0;
    };

    fs::create_directories(out_dir);
    MergeStats stats;
    std::set<std::string> merged;
    {
        // Resumable: rerunning the same merge keeps the shards an interrupted run finished.
        const std::string resume_key = "medllm merge v1|" + io::directory_fingerprint(base_dir) + adapters_key;
        io::CheckpointWriter writer(out_dir, max_shard_bytes, {{"format", "pt"}}, "model", resume_key);
        if (writer.resumed_shards() > 0) {
            spdlog::info("merge: resuming; {} shards ({} tensors) of an interrupted run are kept",
                         writer.resumed_shards(), writer.resumed_tensors());
        }
        const auto total = static_cast<int64_t>(
            std::count_if(names.begin(), names.end(), [&](const std::string& n) { return !is_statistic(n); }));
        for (const auto& name : names) {
            if (is_statistic(name)) continue;
            const bool quantized     = quantized_keys.count(name) > 0;
            const std::string module = ends_with(name, ".weight") ? name.substr(0, name.size() - 7) : std::string();
            const auto adapter       = module.empty() ? weights.end() : weights.find(module);
            if (quantized) ++stats.dequantized_modules;
            if (adapter != weights.end()) {
                merged.insert(module);
                ++stats.merged_modules;
            }
            ++stats.tensors;
            if (writer.completed(name)) {  // written by the interrupted run: counted above, nothing to compute
                if (progress) progress(stats.tensors, total, 0);
                continue;
            }
            at::Tensor t;
            uint64_t bytes_read = 0;
            if (quantized) {
                std::map<std::string, at::Tensor> entries;
                for (const auto& n : names) {
                    if (n == name ||
                        (n.size() > name.size() && n.compare(0, name.size(), name) == 0 && n[name.size()] == '.')) {
                        entries[n] = reader.load(n);
                        bytes_read += entries[n].nbytes();
                    }
                }
                // The weight the adapter was trained against: dequantized to the stored dtype.
                t = quant::nf4_dequantize(quant::nf4_from_state_dict(entries, name));
            } else {
                t          = reader.load(name);
                bytes_read = t.nbytes();
            }
            if (adapter != weights.end()) {
                // Σ of the adapters' deltas in fp32 on the fp32 weight: one rounding to bf16 for the whole stack.
                t = t.to(at::kFloat);
                for (const auto& [w, file] : adapter->second) {
                    if (t.dim() != 2 || t.size(0) != w->B.size(0) || t.size(1) != w->A.size(1))
                        throw Error(file.string() + ": adapter for '" + module + "' is [" +
                                    std::to_string(w->B.size(0)) + ", " + std::to_string(w->A.size(1)) +
                                    "] but the base weight " + name + " is " + c10::str(t.sizes()));
                    t = t + scaled_mm(w->B.to(at::kFloat), w->A.to(at::kFloat), w->scaling);
                }
            }
            if (at::isFloatingType(t.scalar_type())) t = t.to(at::kBFloat16);
            writer.add(name, t);
            if (progress) progress(stats.tensors, total, bytes_read);
        }
        stats.files = writer.finish();
    }
    for (const auto& [module, list] : weights) {
        if (!merged.count(module))
            throw Error(list.front().file.string() + ": module '" + module + "' has no weight '" + module +
                        ".weight' in " + base_dir.string());
    }

    config.erase("quantization_config");
    bool had_dtype = false;
    for (const char* key : {"dtype", "torch_dtype"}) {
        if (config.contains(key)) {
            config[key] = "bfloat16";
            had_dtype   = true;
        }
    }
    if (!had_dtype) config["torch_dtype"] = "bfloat16";
    write_file_atomic(out_dir / "config.json", config.dump(2) + "\n");
    io::copy_model_side_files(base_dir, out_dir);  // tokenizer, chat template, generation config
    spdlog::info("merged {} adapter{} on {} modules ({} dequantized from NF4) into {} tensors -> {}",
                 all_weights.size(), all_weights.size() == 1 ? "" : "s", stats.merged_modules,
                 stats.dequantized_modules, stats.tensors, out_dir.string());
    return stats;
}

void run_merge(const MergeConfig& config) {
    const std::vector<fs::path> adapters(config.adapters.begin(), config.adapters.end());
    const auto stats = merge_adapter_checkpoint(config.model, adapters, config.output, config.max_shard_bytes,
                                                progress_callback("merge", "tensors"));
    spdlog::info("wrote {} files to {}", stats.files.size() + 1, config.output);
}

}  // namespace medllm::peft
