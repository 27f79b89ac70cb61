// Training checkpoints: `<output>/checkpoint-<step>/`, written atomically and kept by retention.
//
// Writing: everything goes into `checkpoint-<step>.tmp/`, then `checksums.json` (every file's size and XXH3,
// core/checksums.h), the completion marker `COMPLETE` last; the files and the folder are fsynced, the folder is
// renamed to `checkpoint-<step>/` and the parent fsynced (docs/reference/training.md §3). A reader trusts only a
// `checkpoint-<step>/` that holds the marker, so a run killed at any moment (SIGKILL included) leaves complete
// checkpoints only; leftover `.tmp` folders are removed by the next write. Retention deletes old checkpoints only after
// the new one is complete, and only the run's own. Reading: a resume verifies the checksums first; a damaged checkpoint
// (a changed byte, a hand-edited trainer_state.json) is never loaded — `--resume auto` falls back to the newest intact
// one and says so.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace medllm::train {

inline constexpr const char* kCheckpointPrefix   = "checkpoint-";
inline constexpr const char* kCheckpointComplete = "COMPLETE";

std::filesystem::path checkpoint_path(const std::filesystem::path& output, int64_t step);

// Writes checkpoint `step` through `fill(dir)` (which writes the files into the temporary folder it is given).
// A failure (a full disk) removes the temporary folder and throws Error saying the checkpoint was not written and
// which checkpoint is still the newest complete one. An existing checkpoint of the same step is replaced.
std::filesystem::path write_checkpoint(const std::filesystem::path& output, int64_t step,
                                       const std::function<void(const std::filesystem::path&)>& fill);

bool is_complete_checkpoint(const std::filesystem::path& dir);
// The step of a folder named checkpoint-<step>, or nullopt.
std::optional<int64_t> checkpoint_step(const std::filesystem::path& dir);
// Complete checkpoints in `output`, oldest step first.
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& output);
std::optional<std::filesystem::path> find_latest_checkpoint(const std::filesystem::path& output);
// The newest complete checkpoint whose checksums verify; each newer damaged one is named in a warning (what is
// wrong with it) and passed over. nullopt when none is intact.
std::optional<std::filesystem::path> find_latest_intact_checkpoint(const std::filesystem::path& output);
// Error naming the checkpoint and its first damaged file unless its checksums verify (a checkpoint written before
// checksums passes with a warning).
void verify_checkpoint(const std::filesystem::path& dir);
// Keeps the newest `keep_last` complete checkpoints for which `ours` is true (0 = keep all) and deletes the older
// ones of them; checkpoints `ours` rejects (another run's) are never touched.
void apply_retention(const std::filesystem::path& output, int64_t keep_last,
                     const std::function<bool(const std::filesystem::path&)>& ours = nullptr);

// fsync of a folder (so a rename inside it is durable); Error naming it on failure.
void fsync_directory(const std::filesystem::path& dir);

// A resume of a checkpoint written by `saved_world` processes with `world` of them (cpt, rpo).
struct WorldSizeChange {
    int64_t saved_world = 1, world = 1;
    std::string unit;                   // what a step covers: "rows" | "pairs"
    int64_t per_rank_step         = 0;  // units of one rank's optimizer step (batch_size x grad_accum)
    int64_t steps_per_epoch       = 0;  // with `world`
    int64_t saved_steps_per_epoch = 0;  // with `saved_world`
    int64_t total_steps = 0, step = 0;  // the run's, and the checkpoint's step
};
// Nothing when the world sizes agree; otherwise UsageError naming `checkpoint` unless `allowed`
// (--resume-world-size-change), and then a warning of what changes (units per step, steps per epoch, where the data
// position comes from).
void check_world_size_change(const std::filesystem::path& checkpoint, const WorldSizeChange& c, bool allowed);

}  // namespace medllm::train
