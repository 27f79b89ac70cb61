// Helpers shared by the subcommand files in src/cli/.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "medllm/core/config.h"

namespace medllm::cli {

// Registers a callback that refuses to run: the capability is not built yet (exit 2, one line).
void add_not_built_callback(CLI::App* cmd, const std::string& what);

// Range checks for numeric flags. They replace CLI::PositiveNumber / CLI::Range, whose message for a bad value
// prints the type's limit (a 300-digit number), and they look at the text before CLI11 converts it: "nan", "inf",
// "1e3" for an integer, trailing junk, and negatives for unsigned options ("-1" would wrap) are refused. The
// message is short: "--seed: must be an integer >= 0, got '-1'". `--help` shows the range after the type.
CLI::Validator integer_in(int64_t min, int64_t max = std::numeric_limits<int64_t>::max());
// A finite number >= min (> min when `min_exclusive`) and <= max.
CLI::Validator number_in(double min, double max = std::numeric_limits<double>::infinity(), bool min_exclusive = false);

// `--config FILE` and repeatable `--set key=value` for subcommands driven by a config file.
struct ConfigOptions {
    std::string path;
    std::vector<std::string> overrides;
    ConfigSource source() const { return {path, overrides}; }
};
void add_config_options(CLI::App* cmd, ConfigOptions& opts);

// Flags that mirror config keys (build-prefs, eval igakuqa): each flag given on the command line becomes a
// `key=value` override after the user's own --set, so flags win over --config and --set.
class KeyedFlags {
public:
    // A text flag: its value goes in single-quoted, as a YAML string.
    CLI::Option* text(CLI::Option* opt, std::string key);
    // A numeric flag: its value goes in as written (the flag's own check has read it as a number).
    CLI::Option* number(CLI::Option* opt, std::string key);
    // The overrides of the flags given, in the order the flags were declared, appended to `source`.
    void add_to(ConfigSource& source) const;

private:
    struct Flag {
        CLI::Option* option;
        std::string key;
        bool quote;
    };
    std::vector<Flag> flags_;
};

// `text` as a single-quoted YAML scalar ('it''s').
std::string yaml_quote(const std::string& text);

}  // namespace medllm::cli
