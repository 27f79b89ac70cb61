// Logging set-up: console (stderr) at the chosen level, plus <output_dir>/medllm.log for runs that
// have an output directory. Everything else logs with spdlog's default logger.
#pragma once

#include <string>

namespace medllm {

// level: trace, debug, info, warn, error, off. Throws UsageError for other names.
void log_init(const std::string& level);

// Also write the log to <output_dir>/medllm.log (appended, so a resumed run keeps its history).
void log_to_file(const std::string& output_dir);

}  // namespace medllm
