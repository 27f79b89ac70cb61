// Progress lines for long jobs (quantize, merge, evaluation, training): "what: done/total (pct) | rate | ETA",
// logged at info level on the first step, then at most every `interval_seconds`, and always on the last step.
// Rate and ETA appear once 0.1 s have passed; the last line gives the total time instead of an ETA.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace medllm {

// "H:MM:SS".
std::string format_duration(double seconds);

class ProgressLog {
public:
    using Clock = std::function<std::chrono::steady_clock::time_point()>;
    // `unit` names what is counted ("tensors", "questions"); `interval_seconds` 0 logs every step. `clock` is for
    // tests (default: std::chrono::steady_clock::now).
    ProgressLog(std::string what, int64_t total, std::string unit, double interval_seconds = 10.0, Clock clock = {});

    // Records that `done` units are complete and `bytes` more bytes were processed (0 when not meaningful; the line
    // then omits GB/s). Returns true when a line was logged.
    bool update(int64_t done, uint64_t bytes = 0);

    // The line update() would log now (exposed for tests).
    std::string line() const;

private:
    std::string what_, unit_;
    int64_t total_, done_ = 0;
    uint64_t bytes_ = 0;
    double interval_;
    Clock clock_;
    std::chrono::steady_clock::time_point start_, last_log_;
    bool logged_ = false;
};

// A status line on a terminal that rewrites itself in place (carriage return, erase line, text; no newline):
// training's live "step/total | loss | lr | tok/s | ETA". clear() erases it so log lines start on a clean line.
// When `out` is not a terminal (a log file, a pipe, CI) it writes nothing: logs get the periodic fixed-format
// lines instead. `force` is for tests.
class LiveLine {
public:
    explicit LiveLine(std::FILE* out = stderr, bool force = false);
    ~LiveLine() { clear(); }
    LiveLine(const LiveLine&)            = delete;
    LiveLine& operator=(const LiveLine&) = delete;
    bool enabled() const { return enabled_; }
    void show(const std::string& text);
    void clear();

private:
    std::FILE* out_;
    bool enabled_, shown_ = false;
};

// A (done, total, bytes) callback for the checkpoint streamers (quantize, merge) that logs through a ProgressLog
// created on the first call, when the total is known.
std::function<void(int64_t done, int64_t total, uint64_t bytes)> progress_callback(std::string what, std::string unit);

}  // namespace medllm
