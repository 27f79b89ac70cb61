// Configuration files for subcommands: YAML (or JSON, a subset of YAML) plus `--set a.b.c=value`
// overrides that take precedence. A subcommand describes its typed struct once with a ConfigSchema;
// the same description parses the file, validates types and ranges, lists keys in --help, and prints
// the resolved table. No YAML or JSON node leaves this module.
//
//   struct CptConfig { std::string model; int64_t lora_r = 64; double lr = 2e-4; };
//   ConfigSchema<CptConfig> schema;
//   schema.field("model", &CptConfig::model, "HF checkpoint directory").required();
//   schema.field("lora.r", &CptConfig::lora_r, "adapter rank; higher = more capacity and memory").range(1, 1024);
//   CptConfig cfg = schema.load(ConfigSource{path, overrides});   // throws UsageError naming file and key
//
// Keys are dotted paths into nested mappings. Unknown keys are an error that names the closest valid key.
// A list of mappings (`data.sources: [{path: a.jsonl, weight: 2}, ...]`) is a list_field with its own item
// schema: every item is checked like a config of its own, errors name `data.sources[1].weight`.
// Every key the command does not read is an error, in every section (a misspelt `trainig:` would otherwise train
// with the defaults). Several commands may read one file (prepare-corpus and cpt read cpt.yaml): accept_keys()
// names the other command's keys, which are then accepted and left to it, and nothing else is. A key written twice
// in one file (a second `lora:` section) is an error naming both lines.
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
    // How the key was written where it came from, before the schema's key: "rpo." for a key of a pipeline file's
    // rpo: section, so messages name `rpo.lora.rnak`, the key the user wrote, not the stage's own `lora.rnak`.
    std::string key_prefix;
};
using FlatDoc = std::map<std::string, FlatValue>;

FlatDoc load_flat(const ConfigSource& source);  // parse file (YAML/JSON) and apply overrides
// One mapping (a list item) flattened to dotted keys, every value tagged with `origin`.
FlatDoc flatten_mapping(const nlohmann::json& mapping, const std::string& origin);
// The items of a list-of-mappings value; UsageError naming `key` when it is not one.
std::vector<nlohmann::json> list_of_mappings(const std::string& key, const FlatValue& v);
std::string closest_key(const std::string& key, const std::vector<std::string>& candidates);
std::string render_value(const nlohmann::json& v);
// The origin load_flat gives a file's values: its base name ("configs/tiny/cpt.yaml" -> "cpt.yaml").
std::string file_origin(const std::string& path);

// Typed conversion with errors naming key, value and what is allowed.
void convert(const std::string& key, const FlatValue& v, std::string& out);
void convert(const std::string& key, const FlatValue& v, int64_t& out);
void convert(const std::string& key, const FlatValue& v, double& out);
void convert(const std::string& key, const FlatValue& v, bool& out);
void convert(const std::string& key, const FlatValue& v, std::vector<std::string>& out);
void convert(const std::string& key, const FlatValue& v, std::vector<int64_t>& out);
// Any value as it was written (a key that takes a string or a list, checked by its command).
void convert(const std::string& key, const FlatValue& v, nlohmann::json& out);

std::string to_text(const std::string& v);
std::string to_text(int64_t v);
std::string to_text(double v);
std::string to_text(bool v);
std::string to_text(const std::vector<std::string>& v);
std::string to_text(const std::vector<int64_t>& v);
std::string to_text(const nlohmann::json& v);

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
        std::function<void(T&, const std::string& key, const config_detail::FlatValue&)> assign_;
        std::function<std::string(const T&)> show_;
        std::function<nlohmann::json(const T&)> json_;
        std::function<void(const T&, const std::string& key, const std::string& origin)> check_;
        std::string item_help_;  // list_field: the item schema's describe()
    };

    template <class V>
    Field& field(const std::string& key, V T::*member, const std::string& help) {
        return add_field<V>(key, help, [member](T& obj) -> V& { return obj.*member; });
    }

    // A key held in a group struct of T (`lora.r` -> T::lora.r): one group type can serve several commands.
    template <class G, class V>
    Field& field(const std::string& key, G T::*group, V G::*member, const std::string& help) {
        return add_field<V>(key, help, [group, member](T& obj) -> V& { return (obj.*group).*member; });
    }

    // A list of mappings, each parsed and validated by `item` (errors name `key[i].field`). The default is the
    // member's initial value (usually an empty list); `.required()` makes an empty or missing list an error.
    template <class Item>
    Field& list_field(const std::string& key, std::vector<Item> T::*member,
                      std::shared_ptr<const ConfigSchema<Item>> item, const std::string& help) {
        auto f        = std::make_unique<Field>();
        f->key_       = key;
        f->help_      = help;
        f->item_help_ = item->describe();
        Field* self   = f.get();
        f->assign_    = [member, item](T& obj, const std::string& shown_key, const config_detail::FlatValue& v) {
            auto& out = obj.*member;
            out.clear();
            const auto items = config_detail::list_of_mappings(shown_key, v);
            for (size_t i = 0; i < items.size(); ++i) {
                const std::string prefix = shown_key + "[" + std::to_string(i) + "]";
                out.push_back(item->load_doc(config_detail::flatten_mapping(items[i], v.origin), v.origin, prefix));
            }
        };
        auto to_json = [member, item](const T& obj) {
            nlohmann::json arr = nlohmann::json::array();
            for (const auto& it : obj.*member) arr.push_back(item->to_json(it));
            return arr;
        };
        f->json_  = to_json;
        f->show_  = [to_json](const T& obj) { return to_json(obj).dump(); };  // JSON flow text is YAML too
        f->check_ = [member, self](const T& obj, const std::string& shown_key, const std::string& origin) {
            if (self->required_ && (obj.*member).empty())
                throw UsageError("key '" + shown_key + "' (from " + origin + ") must list at least one item (" +
                                 self->help_ + ")");
        };
        fields_.push_back(std::move(f));
        return *self;
    }

    // Kept so that schemas written when keys outside these sections were ignored still compile: it has no effect
    // now that every unknown key is an error (see accept_keys for a file that two commands read).
    ConfigSchema& strict_sections(std::vector<std::string>) { return *this; }

    // Keys another command reads from the same file (prepare-corpus accepts cpt's keys in cpt.yaml): accepted and
    // not read here; any other unknown key is still an error.
    ConfigSchema& accept_keys(std::vector<std::string> keys) {
        accepted_.insert(accepted_.end(), keys.begin(), keys.end());
        return *this;
    }

    // The keys this schema reads, in order.
    std::vector<std::string> keys() const {
        std::vector<std::string> out;
        for (const auto& f : fields_) out.push_back(f->key_);
        return out;
    }

    // Parse, validate and return the typed config; `resolved` (optional) receives the table.
    T load(const ConfigSource& source, std::vector<ResolvedEntry>* resolved = nullptr) const {
        config_detail::FlatDoc doc = config_detail::load_flat(source);
        return load_doc(doc, source.path.empty() ? "the overrides" : source.path, "", resolved);
    }

    // load() on an already flattened document; `prefix` ("data.sources[2]") is prepended to keys in messages.
    T load_doc(const config_detail::FlatDoc& doc, const std::string& where, const std::string& prefix,
               std::vector<ResolvedEntry>* resolved = nullptr) const {
        std::vector<std::string> known = keys();
        known.insert(known.end(), accepted_.begin(), accepted_.end());
        // A key as the user wrote it: the list item's prefix, or the section a pipeline file nests it under.
        const auto shown = [&](const std::string& key, const config_detail::FlatValue* v = nullptr) {
            if (!prefix.empty()) return prefix + "." + key;
            return v ? v->key_prefix + key : key;
        };
        for (const auto& [key, v] : doc) {
            bool found = false;
            for (const auto& k : known) found = found || k == key;
            if (found) continue;
            // The file the schema was given is named by its path; a value from elsewhere (--set, a stage config a
            // pipeline file names) by its origin.
            const std::string in = v.origin == config_detail::file_origin(where) ? where : v.origin;
            std::string msg      = "unknown key '" + shown(key, &v) + "' in " + in;
            std::string near     = config_detail::closest_key(key, known);
            if (!near.empty()) msg += "; did you mean '" + shown(near, &v) + "'?";
            throw UsageError(msg);
        }
        T obj{};
        for (const auto& f : fields_) {
            auto it            = doc.find(f->key_);
            std::string origin = "default";
            if (it != doc.end()) {
                f->assign_(obj, shown(f->key_, &it->second), it->second);
                origin = it->second.origin;
            } else if (f->required_) {
                throw UsageError("missing required key '" + shown(f->key_) + "' in " + where + " (" + f->help_ + ")");
            }
            f->check_(obj, shown(f->key_, it != doc.end() ? &it->second : nullptr), origin);
            if (resolved) resolved->push_back({f->key_, f->show_(obj), origin});
        }
        return obj;
    }

    // The typed values as a JSON object with dotted keys (a list_field's items as objects).
    nlohmann::json to_json(const T& obj) const {
        nlohmann::json out = nlohmann::json::object();
        for (const auto& f : fields_) out[f->key_] = f->json_(obj);
        return out;
    }

    // Lines "key (default) — help" for --help footers.
    std::string describe(const T& defaults = T{}) const {
        std::string out;
        for (const auto& f : fields_) {
            out += "  " + f->key_ + " = " + f->show_(defaults);
            if (f->required_) out += " (required)";
            out += "\n      " + f->help_ + "\n";
            if (!f->item_help_.empty()) {
                out += "      each item:\n";
                std::string line;
                for (char c : f->item_help_) {
                    line += c;
                    if (c == '\n') {
                        out += "    " + line;
                        line.clear();
                    }
                }
            }
        }
        return out;
    }

private:
    template <class V, class Get>
    Field& add_field(const std::string& key, const std::string& help, Get get) {
        auto f      = std::make_unique<Field>();
        f->key_     = key;
        f->help_    = help;
        Field* self = f.get();
        auto cget   = [get](const T& obj) -> const V& { return get(const_cast<T&>(obj)); };
        f->assign_  = [get](T& obj, const std::string& shown_key, const config_detail::FlatValue& v) {
            config_detail::convert(shown_key, v, get(obj));
        };
        f->show_  = [cget](const T& obj) { return config_detail::to_text(cget(obj)); };
        f->json_  = [cget](const T& obj) { return nlohmann::json(cget(obj)); };
        f->check_ = [cget, self](const T& obj, const std::string& shown_key, const std::string& origin) {
            check_value(*self, shown_key, cget(obj), origin);
        };
        fields_.push_back(std::move(f));
        return *self;
    }

    template <class V>
    static void check_value(const Field& f, const std::string& key, const V& v, const std::string& origin) {
        if constexpr (std::is_same_v<V, int64_t> || std::is_same_v<V, double>) {
            if ((f.lo_ && v < *f.lo_) || (f.hi_ && v > *f.hi_)) {
                config_detail::fail_range(
                    key, config_detail::to_text(v),
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
                if (!ok) config_detail::fail_range(key, "'" + v + "'", "one of " + allowed, origin);
            }
        }
    }

    std::vector<std::unique_ptr<Field>> fields_;
    std::vector<std::string> accepted_;
};

// Print the resolved table (two columns) through the logger and write it as YAML.
std::string format_resolved_table(const std::vector<ResolvedEntry>& entries);
void write_resolved_yaml(const std::vector<ResolvedEntry>& entries, const std::string& path);

// Starts a run's output folder: creates it, adds <dir>/medllm.log to the log, logs the resolved config as a
// two-column table and writes <dir>/config.resolved.yaml.
void start_run(const std::string& output_dir, const std::vector<ResolvedEntry>& resolved);

}  // namespace medllm
