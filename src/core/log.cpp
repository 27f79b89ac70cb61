// Console and medllm.log logging (include/medllm/core/log.h).
#include "medllm/core/log.h"

#include <filesystem>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "medllm/core/error.h"

namespace medllm {
namespace {
std::shared_ptr<spdlog::sinks::basic_file_sink_mt> g_file_sink;  // the run's medllm.log, once a run has one
}  // namespace

void log_init(const std::string& level) {
    auto lvl = spdlog::level::from_str(level);
    // from_str maps unknown names to `off`; only accept it when asked for by name.
    if (lvl == spdlog::level::off && level != "off")
        throw UsageError("--log-level '" + level + "' is not one of trace, debug, info, warn, error, off");
    auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    auto logger  = std::make_shared<spdlog::logger>("medllm", console);
    logger->set_pattern("[%H:%M:%S] %^%l%$ %v");
    logger->set_level(lvl);
    spdlog::set_default_logger(logger);
}

void log_to_file(const std::string& output_dir) {
    std::error_code ec;
    std::filesystem::create_directories(output_dir, ec);
    if (ec) throw Error("cannot create output directory '" + output_dir + "': " + ec.message());
    auto path = (std::filesystem::path(output_dir) / "medllm.log").string();
    try {
        auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, /*truncate=*/false);
        file->set_pattern("[%Y-%m-%d %H:%M:%S.%e] %l %v");
        file->set_level(spdlog::level::trace);
        spdlog::default_logger()->sinks().push_back(file);
        g_file_sink = file;
    } catch (const spdlog::spdlog_ex& e) {
        throw Error("cannot open log file '" + path + "': " + e.what());
    }
}

void log_fatal_to_file(const std::string& message) {
    if (!g_file_sink) return;
    try {
        const std::string text = "fatal: " + message;
        const spdlog::details::log_msg msg("medllm", spdlog::level::err, text);
        g_file_sink->log(msg);
        g_file_sink->flush();
    } catch (const std::exception&) {
        // the console line is the one that counts; a full disk must not hide it
    }
}

}  // namespace medllm
