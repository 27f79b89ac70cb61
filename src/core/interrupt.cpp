// Resume hints on SIGINT/SIGTERM for commands that end at once when stopped (include/medllm/core/interrupt.h).
#include "medllm/core/interrupt.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iterator>

namespace medllm {
namespace {

// What the handler writes, built before it is installed: a handler may only call async-signal-safe functions
// (write, signal, raise), not allocate or format.
struct Lines {
    std::string console, log;  // console: the line for stderr; log: the same line for medllm.log
};
Lines g_on_int, g_on_term;
int g_log_fd                     = -1;
volatile sig_atomic_t g_printing = 0;
struct sigaction g_old_int, g_old_term;

void write_all(int fd, const std::string& text) {
    const char* p = text.data();
    size_t left   = text.size();
    while (left > 0) {
        const ssize_t n = ::write(fd, p, left);
        if (n <= 0) return;
        p += n;
        left -= static_cast<size_t>(n);
    }
}

void print_resume_and_stop(int sig) {
    if (!g_printing) {  // a second signal while the first prints ends the process without a second line
        g_printing         = 1;
        const Lines& lines = sig == SIGINT ? g_on_int : g_on_term;
        write_all(STDERR_FILENO, lines.console);
        if (g_log_fd >= 0) write_all(g_log_fd, lines.log);
    }
    // Ends the process by the signal, as it would have ended without this handler.
    std::signal(sig, SIG_DFL);
    std::raise(sig);
}

bool needs_quotes(const std::string& arg) {
    if (arg.empty()) return true;
    for (char c : arg)
        if (!std::isalnum(static_cast<unsigned char>(c)) && std::string("-_./=:,+@%").find(c) == std::string::npos)
            return true;
    return false;
}

// torchrun's and srun's rank and world size (0 and 1 when not launched by one).
int env_int(const char* a, const char* b, int fallback) {
    for (const char* name : {a, b})
        if (const char* v = std::getenv(name); v && *v) return std::atoi(v);
    return fallback;
}

}  // namespace

std::string process_command_line() {
    std::ifstream in("/proc/self/cmdline", std::ios::binary);
    const std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::string out;
    size_t start = 0;
    while (start < raw.size()) {
        size_t end = raw.find('\0', start);
        if (end == std::string::npos) end = raw.size();
        const std::string arg = raw.substr(start, end - start);
        if (!out.empty()) out += ' ';
        if (needs_quotes(arg)) {
            out += '\'';
            for (char c : arg) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
            out += '\'';
        } else {
            out += arg;
        }
        start = end + 1;
    }
    return out;
}

ResumeOnSignal::ResumeOnSignal(const std::string& command, const std::string& kept, const std::string& again,
                               const std::filesystem::path& log_dir)
    : command_(command), kept_(kept) {
    const int rank  = env_int("RANK", "SLURM_PROCID", 0);
    const int world = env_int("WORLD_SIZE", "SLURM_NTASKS", 1);
    resume_ = world > 1 ? "run the same launch command again (all " + std::to_string(world) + " processes) to " + again
                        : "run the same command again to " + again + ": " + process_command_line();
    const bool speaks = rank == 0;
    if (speaks) {
        g_on_int  = {message("SIGINT") + "\n", "fatal: " + message("SIGINT") + "\n"};
        g_on_term = {message("SIGTERM") + "\n", "fatal: " + message("SIGTERM") + "\n"};
    } else {
        g_on_int = g_on_term = {};
    }
    g_log_fd            = speaks && !log_dir.empty()
                              ? ::open((log_dir / "medllm.log").c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)
                              : -1;
    g_printing          = 0;
    struct sigaction sa = {};
    sa.sa_handler       = print_resume_and_stop;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &g_old_int);
    ::sigaction(SIGTERM, &sa, &g_old_term);
}

ResumeOnSignal::~ResumeOnSignal() {
    ::sigaction(SIGINT, &g_old_int, nullptr);
    ::sigaction(SIGTERM, &g_old_term, nullptr);
    if (g_log_fd >= 0) ::close(g_log_fd);
    g_log_fd = -1;
}

std::string ResumeOnSignal::message(const std::string& signal_name) const {
    return command_ + ": interrupted by " + signal_name + "; " + kept_ + "; " + resume_;
}

}  // namespace medllm
