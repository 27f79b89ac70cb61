// A command's place among its processes (include/medllm/dist/parallel.h): joining the group, the shard place.
#include "medllm/dist/parallel.h"

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"

namespace medllm::dist {

std::shared_ptr<Distributed> Parallel::resolve(const std::string& device_setting) const {
    if (group) return group;
    if (world_size != 1 || rank != 0)
        throw UsageError("rank " + std::to_string(rank) + " of " + std::to_string(world_size) +
                         " needs a process group (Parallel::group)");
    return Distributed::single(device_setting);
}

Parallel join_process_group(const LaunchFlags& flags, const std::string& device_setting, bool allow_world_size_change) {
    const auto launch = resolve_launch(flags);
    Parallel p;
    p.group                   = Distributed::create(launch, device_setting);
    p.rank                    = p.group->rank();
    p.world_size              = p.group->world_size();
    p.allow_world_size_change = allow_world_size_change;
    if (!p.group->is_main() && spdlog::get_level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
    return p;
}

ShardPlace shard_place(const Parallel& parallel) {
    ShardPlace place;
    place.rank       = parallel.rank;
    place.world_size = parallel.world_size;
    if (parallel.world_size > 1) {
        auto group         = parallel.group;
        place.wait_for_all = [group](const std::string& what) { group->wait_for_all(what); };
    }
    return place;
}

}  // namespace medllm::dist
