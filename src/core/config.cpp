// Config files for the commands: YAML/JSON + --set overrides, typed conversion, the resolved table and YAML.
#include "medllm/core/config.h"
#include "medllm/core/files.h"
#include "medllm/core/log.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>

namespace medllm {
namespace config_detail {
namespace {

std::string base_name(const std::string& path) {
    auto slash = path.find_last_of('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// YAML 1.2 core-schema resolution of a plain (unquoted) scalar.
nlohmann::json resolve_plain_scalar(const std::string& s) {
    static const std::regex int_re(R"([-+]?[0-9]+)");
    static const std::regex float_re(R"([-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?)");
    if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") return nullptr;
    if (s == "true" || s == "True" || s == "TRUE") return true;
    if (s == "false" || s == "False" || s == "FALSE") return false;
    if (std::regex_match(s, int_re)) {
        try {
            return static_cast<int64_t>(std::stoll(s));
        } catch (const std::out_of_range&) {
            return s;  // too large for int64: keep the text, the typed conversion will name it
        }
    }
    if (std::regex_match(s, float_re)) return std::stod(s);
    if (s == ".inf" || s == "+.inf") return INFINITY;
    if (s == "-.inf") return -INFINITY;
    if (s == ".nan") return NAN;
    return s;
}

nlohmann::json yaml_to_json(const YAML::Node& node, const std::string& origin) {
    switch (node.Type()) {
        case YAML::NodeType::Null:
            return nullptr;
        case YAML::NodeType::Scalar:
            // yaml-cpp tags quoted scalars "!": they are strings whatever they look like.
            if (node.Tag() == "!") return node.Scalar();
            return resolve_plain_scalar(node.Scalar());
        case YAML::NodeType::Sequence: {
            nlohmann::json arr = nlohmann::json::array();
            for (const auto& item : node) arr.push_back(yaml_to_json(item, origin));
            return arr;
        }
        case YAML::NodeType::Map: {
            nlohmann::json obj = nlohmann::json::object();
            for (const auto& kv : node) obj[kv.first.as<std::string>()] = yaml_to_json(kv.second, origin);
            return obj;
        }
        default:
            return nullptr;
    }
}

// A key written twice in one mapping, or one dotted key written twice in two forms (`lora: {r: 4}` and `lora.r: 8`),
// would keep only the last value without a word (a second `lora:` section replaces the first one whole): refuse it,
// naming both lines. Each list item is a mapping of its own.
void check_duplicate_keys(const YAML::Node& node, const std::string& prefix, std::map<std::string, size_t>& seen,
                          const std::string& path) {
    if (node.IsMap()) {
        for (const auto& kv : node) {
            const std::string key  = (prefix.empty() ? "" : prefix + ".") + kv.first.Scalar();
            const size_t line      = static_cast<size_t>(kv.first.Mark().line) + 1;
            const auto [it, fresh] = seen.emplace(key, line);
            if (!fresh)
                throw UsageError("duplicate key '" + key + "' in " + path + " at lines " + std::to_string(it->second) +
                                 " and " + std::to_string(line) + " (the second would silently replace the first)");
            check_duplicate_keys(kv.second, key, seen, path);
        }
    } else if (node.IsSequence()) {
        size_t i = 0;
        for (const auto& item : node) {
            std::map<std::string, size_t> own;
            check_duplicate_keys(item, prefix + "[" + std::to_string(i++) + "]", own, path);
        }
    }
}

// JSON's form of the same check (nlohmann's parser keeps the last value too); it reports no line numbers.
nlohmann::json parse_json_refusing_duplicates(const std::string& text, const std::string& path) {
    std::vector<std::set<std::string>> open;
    std::string duplicate;
    const auto callback = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
        if (event == nlohmann::json::parse_event_t::object_start) open.emplace_back();
        if (event == nlohmann::json::parse_event_t::object_end && !open.empty()) open.pop_back();
        if (event == nlohmann::json::parse_event_t::key && !open.empty() &&
            !open.back().insert(parsed.get<std::string>()).second && duplicate.empty())
            duplicate = parsed.get<std::string>();
        return true;
    };
    auto root = nlohmann::json::parse(text, callback);
    if (!duplicate.empty())
        throw UsageError("duplicate key '" + duplicate + "' in " + path +
                         " (written twice in one object; the second would silently replace the first)");
    return root;
}

void flatten(const nlohmann::json& node, const std::string& prefix, const std::string& origin, FlatDoc& out) {
    if (node.is_object() && !node.empty()) {
        for (const auto& [k, v] : node.items()) flatten(v, prefix.empty() ? k : prefix + "." + k, origin, out);
        return;
    }
    if (prefix.empty()) return;  // an empty document
    // An override replaces the file's value for that key and anything beneath it.
    for (auto it = out.lower_bound(prefix + "."); it != out.end() && it->first.rfind(prefix + ".", 0) == 0;)
        it = out.erase(it);
    out[prefix] = FlatValue{node, origin, ""};
}

std::string type_name(const nlohmann::json& v) {
    if (v.is_null()) return "null";
    if (v.is_boolean()) return "a boolean";
    if (v.is_number_integer()) return "an integer";
    if (v.is_number()) return "a number";
    if (v.is_string()) return "a string";
    if (v.is_array()) return "a list";
    return "a mapping";
}

[[noreturn]] void fail_type(const std::string& key, const FlatValue& v, const std::string& expected) {
    throw UsageError("key '" + key + "' (from " + v.origin + ") must be " + expected + ", got " + type_name(v.value) +
                     " " + render_value(v.value));
}

}  // namespace

FlatDoc load_flat(const ConfigSource& source) {
    FlatDoc doc;
    if (!source.path.empty()) {
        std::ifstream in(source.path);
        if (!in) throw UsageError("cannot read config file '" + source.path + "'");
        std::stringstream buf;
        buf << in.rdbuf();
        const std::string origin = base_name(source.path);
        nlohmann::json root;
        if (ends_with(source.path, ".json")) {
            try {
                root = parse_json_refusing_duplicates(buf.str(), source.path);
            } catch (const nlohmann::json::parse_error& e) {
                throw UsageError("malformed JSON in " + source.path + ": " + e.what());
            }
        } else {
            YAML::Node node;
            try {
                node = YAML::Load(buf.str());
                root = yaml_to_json(node, origin);
            } catch (const YAML::Exception& e) {
                throw UsageError("malformed YAML in " + source.path + " at line " + std::to_string(e.mark.line + 1) +
                                 ": " + e.msg);
            }
            std::map<std::string, size_t> seen;
            check_duplicate_keys(node, "", seen, source.path);
        }
        if (!root.is_null() && !root.is_object())
            throw UsageError("config file " + source.path + " must contain a mapping of keys at the top level");
        flatten(root, "", origin, doc);
    }
    for (const auto& ov : source.overrides) {
        auto eq = ov.find('=');
        if (eq == std::string::npos || eq == 0)
            throw UsageError("--set expects key=value (e.g. --set lora.r=16), got '" + ov + "'");
        std::string key = ov.substr(0, eq), text = ov.substr(eq + 1);
        nlohmann::json value;
        try {
            value = text.empty() ? nlohmann::json("") : yaml_to_json(YAML::Load(text), "--set");
        } catch (const YAML::Exception& e) {
            throw UsageError("cannot parse the value of --set " + key + ": " + e.msg);
        }
        flatten(value, key, "--set", doc);
    }
    return doc;
}

FlatDoc flatten_mapping(const nlohmann::json& mapping, const std::string& origin) {
    FlatDoc doc;
    flatten(mapping, "", origin, doc);
    return doc;
}

std::vector<nlohmann::json> list_of_mappings(const std::string& key, const FlatValue& v) {
    if (v.value.is_null()) return {};
    if (!v.value.is_array()) fail_type(key, v, "a list of mappings");
    std::vector<nlohmann::json> items;
    for (size_t i = 0; i < v.value.size(); ++i) {
        const auto& item = v.value[i];
        if (!item.is_object() || item.empty())
            throw UsageError("key '" + key + "[" + std::to_string(i) + "]' (from " + v.origin +
                             ") must be a mapping of keys, got " + type_name(item) + " " + render_value(item));
        items.push_back(item);
    }
    return items;
}

// Optimal-string-alignment distance: a transposition ("rnak" vs "rank") costs one edit.
static size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
    for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
    for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            d[i][j]     = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
                d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
    }
    return d[a.size()][b.size()];
}

std::string closest_key(const std::string& key, const std::vector<std::string>& candidates) {
    std::string best;
    size_t best_d = std::max<size_t>(3, key.size() / 3) + 1;
    for (const auto& c : candidates) {
        size_t dist = edit_distance(key, c);
        // A key that matches a candidate's last component ("r" for "lora.r") is a likely slip too.
        auto dot = c.find_last_of('.');
        if (dot != std::string::npos && c.substr(dot + 1) == key) dist = std::min<size_t>(dist, 1);
        if (dist < best_d) {
            best_d = dist;
            best   = c;
        }
    }
    return best;
}

std::string file_origin(const std::string& path) {
    return base_name(path);
}

std::string render_value(const nlohmann::json& v) {
    if (v.is_string()) return "'" + v.get<std::string>() + "'";
    return v.dump();
}

void convert(const std::string& key, const FlatValue& v, std::string& out) {
    if (v.value.is_string()) {
        out = v.value.get<std::string>();
    } else if (v.value.is_null()) {
        out.clear();
    } else if (v.value.is_number() || v.value.is_boolean()) {
        out = v.value.dump();  // `name: 7b`-style values that YAML read as numbers are still text
    } else {
        fail_type(key, v, "a string");
    }
}

void convert(const std::string& key, const FlatValue& v, int64_t& out) {
    if (v.value.is_number_integer()) {
        out = v.value.get<int64_t>();
    } else if (v.value.is_number_float() && std::floor(v.value.get<double>()) == v.value.get<double>() &&
               std::fabs(v.value.get<double>()) < 9e15) {
        out = static_cast<int64_t>(v.value.get<double>());  // 1e3 is a fine way to write 1000
    } else {
        fail_type(key, v, "an integer");
    }
}

void convert(const std::string& key, const FlatValue& v, double& out) {
    if (!v.value.is_number()) fail_type(key, v, "a number");
    out = v.value.get<double>();
}

void convert(const std::string& key, const FlatValue& v, bool& out) {
    if (!v.value.is_boolean()) fail_type(key, v, "true or false");
    out = v.value.get<bool>();
}

void convert(const std::string& key, const FlatValue& v, std::vector<std::string>& out) {
    if (!v.value.is_array()) fail_type(key, v, "a list of strings");
    out.clear();
    for (const auto& item : v.value) {
        if (!item.is_string()) fail_type(key, v, "a list of strings");
        out.push_back(item.get<std::string>());
    }
}

void convert(const std::string& key, const FlatValue& v, std::vector<int64_t>& out) {
    if (!v.value.is_array()) fail_type(key, v, "a list of integers");
    out.clear();
    for (const auto& item : v.value) {
        if (!item.is_number_integer()) fail_type(key, v, "a list of integers");
        out.push_back(item.get<int64_t>());
    }
}

void convert(const std::string&, const FlatValue& v, nlohmann::json& out) {
    out = v.value;
}

std::string to_text(const std::string& v) {
    return v;
}
std::string to_text(int64_t v) {
    return std::to_string(v);
}
std::string to_text(double v) {
    std::ostringstream s;
    s.precision(10);
    s << v;
    return s.str();
}
std::string to_text(bool v) {
    return v ? "true" : "false";
}
std::string to_text(const std::vector<std::string>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
    return out + "]";
}
std::string to_text(const std::vector<int64_t>& v) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
    return out + "]";
}

std::string to_text(const nlohmann::json& v) {
    if (v.is_string()) return v.get<std::string>();
    return v.dump();  // null, numbers, flow lists: JSON text is YAML too
}

void fail_range(const std::string& key, const std::string& value, const std::string& allowed,
                const std::string& origin) {
    throw UsageError("key '" + key + "' = " + value + " (from " + origin + ") is out of range: must be " + allowed);
}

}  // namespace config_detail

std::string format_resolved_table(const std::vector<ResolvedEntry>& entries) {
    size_t width = 3;
    for (const auto& e : entries) width = std::max(width, e.key.size());
    std::string out;
    for (const auto& e : entries) {
        out += e.key + std::string(width - e.key.size() + 2, ' ') + e.value;
        if (e.origin != "default") out += "   (" + e.origin + ")";
        out += "\n";
    }
    return out;
}

void write_resolved_yaml(const std::vector<ResolvedEntry>& schema_order, const std::string& path) {
    // Sorted so that keys sharing a mapping are adjacent (a mapping must be emitted once).
    std::vector<ResolvedEntry> entries = schema_order;
    std::stable_sort(entries.begin(), entries.end(),
                     [](const ResolvedEntry& a, const ResolvedEntry& b) { return a.key < b.key; });
    // Nested YAML so the file can be passed back with --config to repeat the run. Values are the
    // rendered scalars (or flow lists), which re-parse to the same typed values.
    YAML::Emitter out;
    out << YAML::BeginMap;
    std::vector<std::string> open;  // the mapping path currently open in the emitter
    for (const auto& e : entries) {
        std::vector<std::string> parts;
        std::stringstream ks(e.key);
        for (std::string p; std::getline(ks, p, '.');) parts.push_back(p);
        size_t common = 0;
        while (common < open.size() && common + 1 < parts.size() && open[common] == parts[common]) ++common;
        for (; open.size() > common; open.pop_back()) out << YAML::EndMap;
        for (size_t i = common; i + 1 < parts.size(); ++i) {
            out << YAML::Key << parts[i] << YAML::Value << YAML::BeginMap;
            open.push_back(parts[i]);
        }
        out << YAML::Key << parts.back() << YAML::Value;
        if (!e.value.empty() && e.value.front() == '[') {
            out << YAML::Flow << YAML::Load(e.value);
        } else if (e.value.empty()) {
            out << YAML::DoubleQuoted << "";
        } else {
            out << e.value;
        }
    }
    for (; !open.empty(); open.pop_back()) out << YAML::EndMap;
    out << YAML::EndMap;
    write_file_atomic(path, std::string("# Resolved configuration written by medllm; pass it back with --config to "
                                        "repeat the run.\n") +
                                out.c_str() + "\n");
}

void start_run(const std::string& output_dir, const std::vector<ResolvedEntry>& resolved) {
    log_to_file(output_dir);
    spdlog::info("resolved configuration:\n{}", format_resolved_table(resolved));
    write_resolved_yaml(resolved, (std::filesystem::path(output_dir) / "config.resolved.yaml").string());
}

}  // namespace medllm
