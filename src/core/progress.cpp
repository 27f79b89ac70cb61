// Progress lines for long jobs: done/total, rate and ETA, throttled for logs.
#include "medllm/core/progress.h"

#include <unistd.h>

#include <cstdio>
#include <memory>

#include <spdlog/spdlog.h>

namespace medllm {

std::string format_duration(double seconds) {
    const int64_t total = seconds > 0 ? static_cast<int64_t>(seconds + 0.5) : 0;
    char buf[48];
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(total / 3600),
                  static_cast<long long>(total / 60 % 60), static_cast<long long>(total % 60));
    return buf;
}

ProgressLog::ProgressLog(std::string what, int64_t total, std::string unit, double interval_seconds, Clock clock)
    : what_(std::move(what)),
      unit_(std::move(unit)),
      total_(total),
      interval_(interval_seconds),
      clock_(clock ? std::move(clock) : Clock([] { return std::chrono::steady_clock::now(); })),
      start_(clock_()),
      last_log_(start_) {}

std::string ProgressLog::line() const {
    const double elapsed = std::chrono::duration<double>(clock_() - start_).count();
    const double rate    = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
    char buf[256];
    int n = std::snprintf(buf, sizeof buf, "%s: %lld/%lld", what_.c_str(), static_cast<long long>(done_),
                          static_cast<long long>(total_));
    std::string text(buf, static_cast<size_t>(n));
    if (total_ > 0) {
        std::snprintf(buf, sizeof buf, " (%.0f%%)", 100.0 * static_cast<double>(done_) / static_cast<double>(total_));
        text += buf;
    }
    // Rates measured over a few milliseconds are noise: the first line of a long job shows counts only.
    if (elapsed < 0.1 && done_ < total_) return text;
    std::snprintf(buf, sizeof buf, " | %.2f %s/s", rate, unit_.c_str());
    text += buf;
    if (bytes_ > 0 && elapsed > 0) {
        std::snprintf(buf, sizeof buf, " | %.2f GB/s", static_cast<double>(bytes_) / elapsed / 1e9);
        text += buf;
    }
    if (done_ >= total_) {
        text += " | done in " + format_duration(elapsed);
    } else if (rate > 0) {
        text += " | ETA " + format_duration(static_cast<double>(total_ - done_) / rate);
    }
    return text;
}

bool ProgressLog::update(int64_t done, uint64_t bytes) {
    done_ = done;
    bytes_ += bytes;
    const auto now = clock_();
    const bool due = !logged_ || done_ >= total_ || std::chrono::duration<double>(now - last_log_).count() >= interval_;
    if (!due) return false;
    spdlog::info("{}", line());
    logged_   = true;
    last_log_ = now;
    return true;
}

LiveLine::LiveLine(std::FILE* out, bool force)
    : out_(out), enabled_(force || (out != nullptr && ::isatty(::fileno(out)) == 1)) {}

void LiveLine::show(const std::string& text) {
    if (!enabled_) return;
    std::fprintf(out_, "\r\033[K%s", text.c_str());  // a failed terminal write is not worth stopping a run for
    std::fflush(out_);
    shown_ = true;
}

void LiveLine::clear() {
    if (!enabled_ || !shown_) return;
    std::fputs("\r\033[K", out_);
    std::fflush(out_);
    shown_ = false;
}

std::function<void(int64_t, int64_t, uint64_t)> progress_callback(std::string what, std::string unit) {
    auto log = std::make_shared<std::unique_ptr<ProgressLog>>();
    return [log, what = std::move(what), unit = std::move(unit)](int64_t done, int64_t total, uint64_t bytes) {
        if (!*log) *log = std::make_unique<ProgressLog>(what, total, unit);
        (*log)->update(done, bytes);
    };
}

}  // namespace medllm
