// Where a command runs among its processes: rank, world size and the process group (include/medllm/dist/
// distributed.h). Every command that can run as several ranks takes a Parallel: the training recipes (cpt, rpo)
// all-reduce their gradients through its group, the generation commands (eval igakuqa, eval mcqa, build-prefs,
// generate) share their prompts through core's sharded records (shard_place).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "medllm/core/config.h"
#include "medllm/core/shards.h"
#include "medllm/dist/distributed.h"

namespace medllm::dist {

// This process's rank, the number of processes and the process group. No group = one process (rank 0 of 1).
struct Parallel {
    int64_t rank       = 0;
    int64_t world_size = 1;
    std::shared_ptr<Distributed> group;    // from torchrun / Slurm / flags (null: one process)
    bool allow_world_size_change = false;  // --resume-world-size-change
    // The group to use: `group`, or a single-process one on `device_setting` (UsageError if world_size > 1).
    std::shared_ptr<Distributed> resolve(const std::string& device_setting) const;
};

// What the body of a command that can run as several processes (build-prefs, generate, eval igakuqa, eval mcqa)
// takes besides its settings. The body checks its settings first and joins the group only then, so a bad setting is
// named at once instead of after a rendezvous.
struct RunOptions {
    std::vector<ResolvedEntry> resolved;  // the resolved config: rank 0 logs it and writes config.resolved.yaml
    bool overwrite = false;               // --overwrite: start the outputs over instead of resuming them
    LaunchFlags launch;                   // --world-size, --rank, ...; unset fields come from torchrun / Slurm
};

// Joins the process group that `flags` + the environment describe (world size 1: a group of one). On ranks other
// than 0 the console log is lowered to warnings. `device_setting` is the command's device key (training.device,
// device).
Parallel join_process_group(const LaunchFlags& flags, const std::string& device_setting,
                            bool allow_world_size_change = false);

// Where this process stands for core's sharded records: rank, world size and the group's wait_for_all.
ShardPlace shard_place(const Parallel& parallel);

// Runs `body`; an exception is first reported to the other ranks (their "lost rank" error then says why).
template <class F>
auto run_reporting_failure(const Parallel& parallel, F&& body) -> decltype(body()) {
    try {
        return body();
    } catch (const std::exception& e) {
        if (parallel.group) parallel.group->report_failure(e.what());
        throw;
    }
}

}  // namespace medllm::dist
