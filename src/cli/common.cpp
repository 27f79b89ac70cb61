// Helpers for the subcommand files: numeric flag checks, --config/--set, flags that mirror config keys.
#include "cli/common.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "medllm/core/error.h"

namespace medllm::cli {

void add_not_built_callback(CLI::App* cmd, const std::string& what) {
    cmd->allow_extras();  // accept any flags so the message below is what the user sees
    cmd->callback([what, name = cmd->get_name()] {
        throw NotImplementedError("medllm " + name + ": " + what + " in this version");
    });
}

namespace {

std::string format_number(double x) {
    std::string s = std::to_string(x);  // fixed notation; trim the zeros std::to_string pads with
    if (s.find('.') != std::string::npos) {
        while (s.back() == '0') s.pop_back();
        if (s.back() == '.') s.pop_back();
    }
    return s;
}

}  // namespace

CLI::Validator integer_in(int64_t min, int64_t max) {
    const bool unbounded = max == std::numeric_limits<int64_t>::max();
    std::string range;
    if (unbounded)
        range = min == 1 ? "POSITIVE" : min == 0 ? "NONNEGATIVE" : ">= " + std::to_string(min);
    else
        range = "[" + std::to_string(min) + ", " + std::to_string(max) + "]";
    const std::string wanted = unbounded ? "an integer >= " + std::to_string(min)
                                         : "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
    return CLI::Validator(
        [min, max, wanted](std::string& text) -> std::string {
            const std::string bad = "must be " + wanted + ", got '" + text + "'";
            if (text.empty() || std::isspace(static_cast<unsigned char>(text.front()))) return bad;
            errno             = 0;
            char* end         = nullptr;
            const long long x = std::strtoll(text.c_str(), &end, 10);
            if (end == text.c_str() || *end != '\0' || errno == ERANGE || x < min || x > max) return bad;
            return {};
        },
        range);
}

CLI::Validator number_in(double min, double max, bool min_exclusive) {
    std::string range;
    if (std::isinf(max))
        range = (min_exclusive ? "> " : ">= ") + format_number(min);
    else
        range = (min_exclusive ? "(" : "[") + format_number(min) + ", " + format_number(max) + "]";
    const std::string wanted = std::isinf(max) ? "a number " + range : "a number in " + range;
    return CLI::Validator(
        [min, max, min_exclusive, wanted](std::string& text) -> std::string {
            const std::string bad = "must be " + wanted + ", got '" + text + "'";
            if (text.empty() || std::isspace(static_cast<unsigned char>(text.front()))) return bad;
            char* end      = nullptr;
            const double x = std::strtod(text.c_str(), &end);
            if (end == text.c_str() || *end != '\0' || !std::isfinite(x)) return bad;
            if (min_exclusive ? !(x > min) : !(x >= min)) return bad;
            if (!(x <= max)) return bad;
            return {};
        },
        range);
}

void add_config_options(CLI::App* cmd, ConfigOptions& opts) {
    cmd->add_option("--config", opts.path, "YAML or JSON config file (see configs/)")->check(CLI::ExistingFile);
    cmd->add_option("--set", opts.overrides,
                    "Override a config key, e.g. --set lora.r=16 (repeatable; wins over --config)")
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
}

CLI::Option* KeyedFlags::text(CLI::Option* opt, std::string key) {
    flags_.push_back({opt, std::move(key), true});
    return opt;
}

CLI::Option* KeyedFlags::number(CLI::Option* opt, std::string key) {
    flags_.push_back({opt, std::move(key), false});
    return opt;
}

void KeyedFlags::add_to(ConfigSource& source) const {
    for (const auto& f : flags_) {
        if (f.option->count() == 0) continue;
        const std::string value = f.option->as<std::string>();
        source.overrides.push_back(f.key + "=" + (f.quote ? yaml_quote(value) : value));
    }
}

std::string yaml_quote(const std::string& text) {
    std::string out = "'";
    for (char c : text) out += c == '\'' ? std::string("''") : std::string(1, c);
    return out + "'";
}

}  // namespace medllm::cli
