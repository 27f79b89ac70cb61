// The data-parallel flags (--world-size, --rank, ..., --backend) and their --help texts.
#include "cli/distributed_flags.h"

#include <spdlog/spdlog.h>

#include "cli/common.h"

namespace medllm::cli {

void add_distributed_options(CLI::App* cmd, DistributedFlags& f, bool training) {
    const std::string group = "Data parallelism (torchrun / Slurm set these through the environment)";
    cmd->add_option("--world-size,--nproc", f.world_size,
                    "number of processes (overrides WORLD_SIZE / SLURM_NTASKS; 0 = from the environment, else 1)")
        ->check(integer_in(0, 1 << 20))
        ->group(group);
    cmd->add_option("--rank", f.rank, "this process's rank (overrides RANK / SLURM_PROCID; -1 = from the environment)")
        ->check(integer_in(-1, 1 << 20))
        ->group(group);
    cmd->add_option("--local-rank", f.local_rank,
                    "rank on this node, picks cuda:N (overrides LOCAL_RANK / SLURM_LOCALID; -1 = from the environment)")
        ->check(integer_in(-1, 1 << 20))
        ->group(group);
    cmd->add_option("--master-addr", f.master_addr,
                    "rendezvous host, where rank 0 listens (overrides MASTER_ADDR; default: the first host of "
                    "SLURM_JOB_NODELIST, else 127.0.0.1)")
        ->group(group);
    cmd->add_option("--master-port", f.master_port, "rendezvous port (overrides MASTER_PORT; 0 = from it, else 29500)")
        ->check(integer_in(0, 65535))
        ->group(group);
    cmd->add_option("--backend", f.backend, "auto (NCCL on CUDA devices, Gloo on CPU), gloo or nccl")
        ->check(CLI::IsMember({"auto", "gloo", "nccl"}))
        ->capture_default_str()
        ->group(group);
    cmd->add_option("--dist-timeout", f.timeout_s,
                    "seconds to wait for the rendezvous and for each collective; a rank that is lost makes the others "
                    "exit with an error naming it after at most this long")
        ->check(number_in(0, 1e7, true))
        ->capture_default_str()
        ->group(group);
    if (!training) return;
    cmd->add_flag("--resume-world-size-change", f.resume_world_size_change,
                  "resume a checkpoint written by another number of processes (says what changes)")
        ->group(group);
}

std::string distributed_help(const std::string& command) {
    return "\nData parallelism: one process per GPU (or CPU process with Gloo), launched by torchrun or srun, e.g.\n"
           "  torchrun --nproc-per-node 4 --no-python medllm " +
           command + " --config " + command +
           ".yaml\n"
           "  srun --ntasks-per-node 4 medllm " +
           command + " --config " + command +
           ".yaml   (scripts/slurm/cpt.sbatch)\n"
           "Each rank trains on its share of the rows; the gradients and the step's token count are summed across "
           "ranks, so N processes x grad_accum A equal one process with N x A. Rank 0 alone writes checkpoints, "
           "metrics, TensorBoard, the adapter and the log file; other ranks log warnings and errors only. Resume "
           "with the same number of processes (--resume-world-size-change to change it).";
}

std::string distributed_generation_help(const std::string& command, const std::string& output) {
    return "\nSeveral processes (one per GPU, each holding a whole model), launched by torchrun or srun, e.g.\n"
           "  torchrun --nproc-per-node 4 --no-python medllm " +
           command +
           " ...\n"
           "share the prompts: of the prompts still to do, rank R takes those whose position modulo the number of "
           "processes is R, and appends its records to its own shard beside the output (" +
           output +
           " -> <name>.rank<R>-of<N>.jsonl); rank 0 waits for every rank, folds the shards into the file one "
           "process writes (in input order) and alone writes the reports. Greedy runs give the same records; "
           "sampled ones too (each prompt's random stream is keyed by its index). A rank that dies makes rank 0 "
           "exit 1 naming it within --dist-timeout. The output folder must be one every rank sees. A killed run "
           "leaves its shards, and the next run (any number of processes) folds them in before it continues.";
}

dist::LaunchFlags launch_flags(const DistributedFlags& f) {
    dist::LaunchFlags lf;
    if (f.world_size > 0) lf.world_size = f.world_size;
    if (f.rank >= 0) lf.rank = f.rank;
    if (f.local_rank >= 0) lf.local_rank = f.local_rank;
    lf.master_addr = f.master_addr;
    lf.master_port = f.master_port;
    lf.backend     = f.backend;
    lf.timeout_s   = f.timeout_s;
    return lf;
}

dist::Parallel join_process_group(const DistributedFlags& f, const std::string& device_setting) {
    return dist::join_process_group(launch_flags(f), device_setting, f.resume_world_size_change);
}

}  // namespace medllm::cli
