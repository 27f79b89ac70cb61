// Logging set-up: console (stderr) at the chosen level, plus <output_dir>/medllm.log for runs that
// have an output directory. Everything else logs with spdlog's default logger.
#pragma once

#include <string>

namespace medllm {

// level: trace, debug, info, warn, error, off. Throws UsageError for other names.
void log_init(const std::string& level);

// Also write the log to <output_dir>/medllm.log (appended, so a resumed run keeps its history).
void log_to_file(const std::string& output_dir);

// The error a command ends with, written to the run's medllm.log when it has one (the console gets it from main,
// once): a log read after a failure then says why the run stopped.
void log_fatal_to_file(const std::string& message);

}  // namespace medllm
