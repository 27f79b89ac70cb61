// A full disk, simulated without privileges: RLIMIT_FSIZE makes any write past `bytes` fail with EFBIG (SIGXFSZ is
// ignored so the write returns an error instead of killing the process). Processes started while the limit is in
// place (run_medllm) inherit it, so a CLI test can check that a command reports the failed write and exits 1.
#pragma once

#include <sys/resource.h>

#include <csignal>

class ScopedFileSizeLimit {
public:
    explicit ScopedFileSizeLimit(rlim_t bytes) {
        getrlimit(RLIMIT_FSIZE, &saved_);
        old_handler_   = std::signal(SIGXFSZ, SIG_IGN);
        rlimit limit   = saved_;
        limit.rlim_cur = bytes;
        setrlimit(RLIMIT_FSIZE, &limit);
    }
    ~ScopedFileSizeLimit() {
        setrlimit(RLIMIT_FSIZE, &saved_);
        std::signal(SIGXFSZ, old_handler_);
    }
    ScopedFileSizeLimit(const ScopedFileSizeLimit&)            = delete;
    ScopedFileSizeLimit& operator=(const ScopedFileSizeLimit&) = delete;

private:
    rlimit saved_{};
    void (*old_handler_)(int) = SIG_DFL;
};
