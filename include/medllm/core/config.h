// Configuration files for subcommands: YAML (or JSON, a subset of YAML) plus `--set a.b.c=value`
// overrides that take precedence. A subcommand describes its typed struct once with a ConfigSchema;
// the same description parses the file, validates types and ranges, lists keys in --help, and prints
// the resolved table. No YAML or JSON node leaves this module.
//
//   struct CptConfig { std::string model; int64_t lora_rank = 64; double lr = 2e-4; };
//   ConfigSchema<CptConfig> schema;
//   schema.field("model", &CptConfig::model, "HF checkpoint directory").required();
//   schema.field("lora.rank", &CptConfig::lora_rank, "adapter rank; higher = more capacity and memory").range(1, 1024);
//   CptConfig cfg = schema.load(ConfigSource{path, overrides});   // throws UsageError naming file and key
//
// Keys are dotted paths into nested mappings. Unknown keys are an error that names the closest valid key.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"

namespace medllm {

// Where a config comes from: an optional file and `key=value` overrides, applied in order.
struct ConfigSource {
    std::string path;                    // "" = no file, defaults + overrides only
    std::vector<std::string> overrides;  // "a.b.c=value"; the value is read as a YAML scalar or flow list
};

namespace config_detail {

// The parsed document flattened to dotted keys, each with a scalar/list value and its origin.
struct FlatValue {
    nlohmann::json value;
    std::string origin;  // "cpt.yaml" or "--set"
};
using FlatDoc = std::map<std::string, FlatValue>;

FlatDoc load_flat(const ConfigSource& source);  // parse file (YAML/JSON) and apply overrides
std::string closest_key(const std::string& key, const std::vector<std::string>& candidates);
std::string render_value(const nlohmann::json& v);

// Typed conversion with errors naming key, value and what is allowed.
void convert(const std::string& key, const FlatValue& v, std::string& out);
void convert(const std::string& key, const FlatValue& v, int64_t& out);
void convert(const std::string& key, const FlatValue& v, double& out);
void convert(const std::string& key, const FlatValue& v, bool& out);
void convert(const std::string& key, const FlatValue& v, std::vector<std::string>& out);
void convert(const std::string& key, const FlatValue& v, std::vector<int64_t>& out);

std::string to_text(const std::string& v);
std::string to_text(int64_t v);
std::string to_text(double v);
std::string to_text(bool v);
std::string to_text(const std::vector<std::string>& v);
std::string to_text(const std::vector<int64_t>& v);

[[noreturn]] void fail_range(const std::string& key, const std::string& value, const std::string& allowed,
                             const std::string& origin);

}  // namespace config_detail

// One resolved key for display and for config.resolved.yaml.
struct ResolvedEntry {
    std::string key;
    std::string value;   // rendered as YAML scalar text
    std::string origin;  // "default", file name, or "--set"
};

template <class T>
class ConfigSchema {
public:
    class Field {
    public:
        Field& required() {
            required_ = true;
            return *this;
        }
        // Inclusive numeric range (for int64_t/double fields).
        Field& range(double lo, double hi) {
            lo_ = lo;
            hi_ = hi;
            return *this;
        }
        // Allowed string values (for std::string fields).
        Field& one_of(std::vector<std::string> values) {
            choices_ = std::move(values);
            return *this;
        }

    private:
        friend class ConfigSchema;
        std::string key_, help_;
        bool required_ = false;
        std::optional<double> lo_, hi_;
        std::vector<std::string> choices_;
        std::function<void(T&, const config_detail::FlatValue&)> assign_;
        std::function<std::string(const T&)> show_;
        std::function<void(const T&, const std::string& origin)> check_;
    };

    template <class V>
    Field& field(const std::string& key, V T::*member, const std::string& help) {
        auto f      = std::make_unique<Field>();
        f->key_     = key;
        f->help_    = help;
        Field* self = f.get();
        f->assign_  = [member, key](T& obj, const config_detail::FlatValue& v) {
            config_detail::convert(key, v, obj.*member);
        };
        f->show_  = [member](const T& obj) { return config_detail::to_text(obj.*member); };
        f->check_ = [member, self](const T& obj, const std::string& origin) {
            check_value(*self, obj.*member, origin);
        };
        fields_.push_back(std::move(f));
        return *self;
    }

    // Parse, validate and return the typed config; `resolved` (optional) receives the table.
    T load(const ConfigSource& source, std::vector<ResolvedEntry>* resolved = nullptr) const {
        config_detail::FlatDoc doc = config_detail::load_flat(source);
        std::vector<std::string> known;
        for (const auto& f : fields_) known.push_back(f->key_);
        std::string where = source.path.empty() ? "the overrides" : source.path;
        for (const auto& [key, v] : doc) {
            bool found = false;
            for (const auto& f : fields_) found = found || f->key_ == key;
            if (!found) {
                std::string msg  = "unknown key '" + key + "' in " + (v.origin == "--set" ? "--set" : where);
                std::string near = config_detail::closest_key(key, known);
                if (!near.empty()) msg += "; did you mean '" + near + "'?";
                throw UsageError(msg);
            }
        }
        T obj{};
        for (const auto& f : fields_) {
            auto it            = doc.find(f->key_);
            std::string origin = "default";
            if (it != doc.end()) {
                f->assign_(obj, it->second);
                origin = it->second.origin;
            } else if (f->required_) {
                throw UsageError("missing required key '" + f->key_ + "' in " + where + " (" + f->help_ + ")");
            }
            f->check_(obj, origin);
            if (resolved) resolved->push_back({f->key_, f->show_(obj), origin});
        }
        return obj;
    }

    // Lines "key (default) — help" for --help footers.
    std::string describe(const T& defaults = T{}) const {
        std::string out;
        for (const auto& f : fields_) {
            out += "  " + f->key_ + " = " + f->show_(defaults);
            if (f->required_) out += " (required)";
            out += "\n      " + f->help_ + "\n";
        }
        return out;
    }

private:
    template <class V>
    static void check_value(const Field& f, const V& v, const std::string& origin) {
        if constexpr (std::is_same_v<V, int64_t> || std::is_same_v<V, double>) {
            if ((f.lo_ && v < *f.lo_) || (f.hi_ && v > *f.hi_)) {
                config_detail::fail_range(
                    f.key_, config_detail::to_text(v),
                    "between " + config_detail::to_text(*f.lo_) + " and " + config_detail::to_text(*f.hi_), origin);
            }
        } else if constexpr (std::is_same_v<V, std::string>) {
            if (!f.choices_.empty()) {
                bool ok = false;
                std::string allowed;
                for (const auto& c : f.choices_) {
                    ok = ok || c == v;
                    allowed += (allowed.empty() ? "" : ", ") + c;
                }
                if (!ok) config_detail::fail_range(f.key_, "'" + v + "'", "one of " + allowed, origin);
            }
        }
    }

    std::vector<std::unique_ptr<Field>> fields_;
};

// Print the resolved table (two columns) through the logger and write it as YAML.
std::string format_resolved_table(const std::vector<ResolvedEntry>& entries);
void write_resolved_yaml(const std::vector<ResolvedEntry>& entries, const std::string& path);

}  // namespace medllm
