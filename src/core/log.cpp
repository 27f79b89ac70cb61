#include "medllm/core/log.h"

#include <filesystem>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "medllm/core/error.h"

namespace medllm {

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
    } catch (const spdlog::spdlog_ex& e) {
        throw Error("cannot open log file '" + path + "': " + e.what());
    }
}

}  // namespace medllm
