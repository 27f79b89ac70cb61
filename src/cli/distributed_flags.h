// Data-parallel launch flags shared by the commands that run as several processes (cpt, rpo, build-prefs,
// generate, eval): --world-size/--rank/--local-rank override torchrun's or Slurm's environment,
// --master-addr/--master-port the rendezvous, --backend, --dist-timeout.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "medllm/core/shards.h"
#include "medllm/dist/parallel.h"

namespace medllm::cli {

struct DistributedFlags {
    int64_t world_size = 0, rank = -1, local_rank = -1;  // 0 / -1 = from the environment
    std::string master_addr;
    int64_t master_port           = 0;
    std::string backend           = "auto";
    double timeout_s              = 600;
    bool resume_world_size_change = false;
};

// Adds the flags to `cmd` (with --help text). `training`: also --resume-world-size-change (a checkpoint's world).
void add_distributed_options(CLI::App* cmd, DistributedFlags& flags, bool training = true);

// Text for a command's --help footer: how to launch it with torchrun and Slurm and what each rank writes.
std::string distributed_help(const std::string& command);

// The --help footer of a generation-heavy command (eval igakuqa, eval mcqa, build-prefs, generate): how its work
// is sharded across ranks and what each rank writes.
std::string distributed_generation_help(const std::string& command, const std::string& output);

// The flags as the library takes them (dist::RunOptions::launch, join_process_group); unset ones stay unset.
dist::LaunchFlags launch_flags(const DistributedFlags& flags);

// Resolves flags + environment and joins the process group (world size 1: none). On ranks other than 0 the
// console log is lowered to warnings. `device_setting` is training.device.
dist::Parallel join_process_group(const DistributedFlags& flags, const std::string& device_setting);

}  // namespace medllm::cli
