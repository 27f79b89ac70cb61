// Ranks as threads of one test process, for core's sharded records: a ShardPlace per rank whose wait_for_all is a
// barrier across the threads. A rank that fails calls abort(), so the others' waits throw instead of hanging (and
// every wait gives up after 60 s).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "medllm/core/shards.h"

class ThreadGroup {
public:
    explicit ThreadGroup(int64_t world_size) : world_(world_size) {}

    medllm::ShardPlace place(int64_t rank) {
        medllm::ShardPlace p;
        p.rank         = rank;
        p.world_size   = world_;
        p.wait_for_all = [this](const std::string& what) { wait(what); };
        return p;
    }
    void abort() {
        std::lock_guard<std::mutex> lock(m_);
        aborted_ = true;
        cv_.notify_all();
    }
    // Runs body(rank) on world_size threads; a throwing rank aborts the group. Returns each rank's error ("" = none).
    std::vector<std::string> run(const std::function<void(int64_t rank)>& body) {
        std::vector<std::string> errors(static_cast<size_t>(world_));
        std::vector<std::thread> threads;
        for (int64_t r = 0; r < world_; ++r)
            threads.emplace_back([&, r] {
                try {
                    body(r);
                } catch (const std::exception& e) {
                    errors[static_cast<size_t>(r)] = e.what();
                    abort();
                }
            });
        for (auto& t : threads) t.join();
        return errors;
    }

private:
    void wait(const std::string& what) {
        std::unique_lock<std::mutex> lock(m_);
        const int64_t generation = generation_;
        if (++arrived_ == world_) {
            arrived_ = 0;
            ++generation_;
            cv_.notify_all();
            return;
        }
        const bool done =
            cv_.wait_for(lock, std::chrono::seconds(60), [&] { return generation_ != generation || aborted_; });
        if (aborted_) throw std::runtime_error(what + ": another rank failed");
        if (!done) throw std::runtime_error(what + ": timed out");
    }

    int64_t world_;
    std::mutex m_;
    std::condition_variable cv_;
    int64_t arrived_ = 0, generation_ = 0;
    bool aborted_ = false;
};
