// Data parallelism on PyTorch's c10d (ProcessGroupGloo on CPU, ProcessGroupNCCL on CUDA, TCPStore rendezvous).
// src/train/distributed.cpp is the only file that includes c10d headers; the recipes see this small interface.
//
// Launch: torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) or
// Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE / SLURM_TASKS_PER_NODE; MASTER_ADDR and
// MASTER_PORT from the environment or the first host of SLURM_JOB_NODELIST and port 29500); explicit flags
// override both (training.md §5). World size 1 creates no process group (every collective is the identity)
// unless a backend is named explicitly (--backend nccl on one GPU checks the NCCL path).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "medllm/core/config.h"

namespace medllm::dist {

// What the command line says (unset fields come from the environment).
struct LaunchFlags {
    std::optional<int64_t> rank, world_size, local_rank;
    std::string master_addr;       // empty = from the environment
    int64_t master_port = 0;       // 0 = from the environment
    std::string backend = "auto";  // auto | gloo | nccl
    double timeout_s    = 600;     // rendezvous and every collective
};

struct Launch {
    int64_t rank = 0, world_size = 1, local_rank = 0, local_world_size = 1;
    std::string master_addr = "127.0.0.1";
    int64_t master_port     = 29500;
    std::string backend     = "auto";
    std::chrono::milliseconds timeout{600000};
    std::string source = "single process";  // "torchrun environment", "Slurm environment", "flags", ...
};

// Resolves flags + environment (`getenv` is injectable for tests). UsageError naming the variable or flag for a
// bad value (a rank outside [0, world size), a non-numeric RANK, a port outside [1, 65535]).
Launch resolve_launch(const LaunchFlags& flags, const std::function<const char*(const char*)>& getenv = nullptr);

// The first host of a Slurm node list: "node[01-04,07],gpu5" -> "node01", "a,b" -> "a", "x[3]" -> "x3".
std::string first_slurm_host(const std::string& nodelist);

enum class Reduce { sum, mean, max };

class Distributed {
public:
    // Joins the group (rank 0 hosts the TCPStore). `device_setting` is training.device (auto | cpu | cuda |
    // cuda:N): auto binds cuda:LOCAL_RANK when CUDA is available. Backend auto = NCCL on a CUDA device, Gloo
    // otherwise. Error naming the address and the ranks that did not arrive when the rendezvous times out.
    static std::shared_ptr<Distributed> create(const Launch& launch, const std::string& device_setting = "auto");
    // A single process: no group, collectives are the identity (what tests and world size 1 use).
    static std::shared_ptr<Distributed> single(const std::string& device_setting = "auto");
    ~Distributed();
    Distributed(const Distributed&)            = delete;
    Distributed& operator=(const Distributed&) = delete;

    int64_t rank() const { return launch_.rank; }
    int64_t world_size() const { return launch_.world_size; }
    int64_t local_rank() const { return launch_.local_rank; }
    bool is_main() const { return launch_.rank == 0; }
    const Launch& launch() const { return launch_; }
    at::Device device() const { return device_; }
    std::string backend() const;  // "none", "gloo" or "nccl"

    // In-place all-reduce of `tensors` (any shapes, same device), flattened into buckets of at most `bucket_bytes`
    // per dtype, so a few large collectives run instead of one per tensor. Undefined tensors are skipped.
    void all_reduce(const std::vector<at::Tensor>& tensors, Reduce op = Reduce::sum, int64_t bucket_bytes = 64 << 20);
    // Scalars (logging sums, flags): reduced as float64.
    std::vector<double> all_reduce_scalars(std::vector<double> values, Reduce op = Reduce::sum);
    // One value from every rank, in rank order (on every rank).
    std::vector<double> all_gather(double value);
    // Replaces `tensors` on every rank with root's.
    void broadcast(const std::vector<at::Tensor>& tensors, int64_t root = 0);
    // `timeout` overrides the collective timeout (e.g. while rank 0 tokenizes the corpus).
    void barrier(std::optional<std::chrono::milliseconds> timeout = std::nullopt);

    // A barrier for work of uneven length (each rank's share of a generation run, minutes apart): waits as long as
    // the ranks not there yet are alive — every rank of a group sends a heartbeat through the store each second —
    // and throws Error naming `what` and a rank that reported a failure, whose heartbeat stopped for the collective
    // timeout (--dist-timeout), or rank 0 when the store it hosts is gone.
    void wait_for_all(const std::string& what);

    // Tells the other ranks why this one is about to exit (shown in their "lost rank" error). Never throws.
    void report_failure(const std::string& message) noexcept;

    // Seconds spent in all_reduce / broadcast of tensors since the last call (benchmarks, metrics); for a
    // GradientSync, the time in finish() (the communication backward did not hide).
    double take_comm_seconds();

    // The sum of the adapter gradients across ranks for each optimizer step, in persistent flat buckets of at
    // most `bucket_bytes` (per dtype, parameters in reverse registration order: the order backward produces
    // them, as DDP's reducer). With `overlap`, arm() before the backward of a step's last micro-batch makes each
    // parameter's gradient, as soon as it is final (a post hook on its gradient accumulator), go into its bucket
    // times `scale`, and a full bucket's all-reduce start asynchronously while backward goes on; buckets start in
    // index order on every rank whatever order the hooks fire in. finish() copies in what the hooks did not see,
    // reduces the rest and `scalars` (float64, summed, in the same round), waits, and writes the sums into .grad
    // (undefined gradients become zeros). The sums are those of Distributed::all_reduce (for 2 ranks bit for bit:
    // a + b does not depend on the bucketing). World size 1: arm() and finish() do nothing (no group, no scaling). One
    // per training run; the parameters must outlive it.
    class GradientSync {
    public:
        GradientSync(Distributed& dist, std::vector<at::Tensor> params, bool overlap, int64_t bucket_bytes = 25 << 20);
        ~GradientSync();
        GradientSync(const GradientSync&)            = delete;
        GradientSync& operator=(const GradientSync&) = delete;
        // The next backward is the step's last; each gradient is sent times `scale` (cpt: this rank's target
        // tokens, so the ranks' token-loss sums add up). Without overlap it only records `scale`.
        void arm(double scale = 1.0);
        // Returns the summed `scalars`. Error naming the lost rank when a collective fails.
        std::vector<double> finish(const std::vector<double>& scalars = {});
        bool overlap() const { return overlap_; }
        int64_t num_buckets() const;
        // Buckets whose all-reduce started inside backward during the last step (tests, benchmarks).
        int64_t buckets_started_in_backward() const { return started_in_backward_; }

        struct State;  // distributed.cpp

    private:
        Distributed& dist_;
        bool overlap_;
        int64_t started_in_backward_ = 0;
        std::unique_ptr<State> state_;
    };

    struct Impl;

private:
    Distributed() = default;
    // Rethrows a collective failure as Error naming the lost ranks (found by a roll call through the store).
    [[noreturn]] void fail(const std::string& what, const std::exception& e);
    Launch launch_;
    at::Device device_{at::kCPU};
    std::unique_ptr<Impl> impl_;
    double comm_seconds_ = 0;
};

// The gradient sync of a recipe's trainable (name, tensor) parameters for each optimizer step; null without a group
// (one process with no --backend). `overlap` is training.overlap_allreduce (auto | true | false; auto is off for
// every backend — README: what overlap can hide of a LoRA step is < 0.05% over NVLink, < 2% over 25 Gb/s Ethernet
// for 72B, and nothing measured on the CPU), `bucket_mb` training.allreduce_bucket_mb.
std::unique_ptr<Distributed::GradientSync> make_gradient_sync(
    Distributed& dist, const std::vector<std::pair<std::string, at::Tensor>>& params, const std::string& overlap,
    double bucket_mb);

// The device a training.device setting names for this process (auto: cuda:LOCAL_RANK when CUDA is there).
at::Device resolve_device(const std::string& setting, int64_t local_rank);

}  // namespace medllm::dist
