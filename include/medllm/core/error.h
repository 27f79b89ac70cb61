// Error types shared by every part of medllm. The CLI maps them to exit codes:
// UsageError -> 2 (bad flags, config keys, values, or a capability not built),
// Error (and anything else) -> 1 (runtime failure: I/O, corrupt files, numerics).
#pragma once

#include <stdexcept>
#include <string>

namespace medllm {

// Runtime failure: the input was well-formed as far as the user can control,
// but something went wrong (missing file, corrupt checkpoint, malformed JSONL line).
// The message must name the file, line, key or tensor at fault.
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The user asked for something invalid: unknown option or config key, value out of range.
class UsageError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A subcommand or option whose capability is not built yet. Exit code 2, one line.
class NotImplementedError : public UsageError {
public:
    using UsageError::UsageError;
};

// An error message as the one line the CLI prints: trailing blanks dropped and inner line breaks joined with "; "
// (LibTorch's messages span several lines).
std::string one_line(std::string text);

}  // namespace medllm
