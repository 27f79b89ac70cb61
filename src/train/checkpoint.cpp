// Training checkpoints: atomic writes with checksums, verification, retention (include/medllm/train/checkpoint.h).
#include "medllm/train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "medllm/core/checksums.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"

namespace fs = std::filesystem;

namespace medllm::train {

fs::path checkpoint_path(const fs::path& output, int64_t step) {
    return output / (kCheckpointPrefix + std::to_string(step));
}

void fsync_directory(const fs::path& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd < 0) throw Error("cannot open folder " + dir.string() + " to sync it: " + std::strerror(errno));
    const int rc = ::fsync(fd), err = errno;
    ::close(fd);
    if (rc != 0) throw Error("cannot sync folder " + dir.string() + ": " + std::strerror(err));
}

namespace {

void fsync_file(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw Error("cannot open " + path.string() + " to sync it: " + std::strerror(errno));
    const int rc = ::fsync(fd), err = errno;
    ::close(fd);
    if (rc != 0) throw Error("cannot sync " + path.string() + ": " + std::strerror(err));
}

void sync_tree(const fs::path& dir) {
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
        if (e.is_regular_file())
            fsync_file(e.path());
        else if (e.is_directory())
            fsync_directory(e.path());
    }
    fsync_directory(dir);
}

void remove_leftovers(const fs::path& output) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(output, ec)) {
        const std::string name = e.path().filename().string();
        if (name.rfind(kCheckpointPrefix, 0) == 0 && name.size() > 4 && name.substr(name.size() - 4) == ".tmp") {
            spdlog::warn("removing the incomplete checkpoint {} (an interrupted write)", e.path().string());
            fs::remove_all(e.path());
        }
    }
}

}  // namespace

std::optional<int64_t> checkpoint_step(const fs::path& dir) {
    const std::string name = dir.filename().string();
    const std::string p    = kCheckpointPrefix;
    if (name.rfind(p, 0) != 0 || name.size() == p.size() || name.size() > p.size() + 18) return std::nullopt;
    int64_t step = 0;
    for (size_t i = p.size(); i < name.size(); ++i) {
        if (name[i] < '0' || name[i] > '9') return std::nullopt;
        step = step * 10 + (name[i] - '0');
    }
    return step;
}

bool is_complete_checkpoint(const fs::path& dir) {
    std::error_code ec;
    return checkpoint_step(dir) && fs::is_directory(dir, ec) && fs::is_regular_file(dir / kCheckpointComplete, ec);
}

std::vector<fs::path> list_checkpoints(const fs::path& output) {
    std::vector<std::pair<int64_t, fs::path>> found;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(output, ec))
        if (is_complete_checkpoint(e.path())) found.emplace_back(*checkpoint_step(e.path()), e.path());
    std::sort(found.begin(), found.end());
    std::vector<fs::path> out;
    for (auto& [step, path] : found) out.push_back(std::move(path));
    return out;
}

std::optional<fs::path> find_latest_checkpoint(const fs::path& output) {
    auto all = list_checkpoints(output);
    if (all.empty()) return std::nullopt;
    return all.back();
}

fs::path write_checkpoint(const fs::path& output, int64_t step, const std::function<void(const fs::path&)>& fill) {
    fs::create_directories(output);
    remove_leftovers(output);
    const fs::path final_dir = checkpoint_path(output, step);
    fs::path tmp             = final_dir;
    tmp += ".tmp";
    try {
        fs::create_directories(tmp);
        fill(tmp);
        write_checksums(tmp);
        write_file_atomic(tmp / kCheckpointComplete, "step " + std::to_string(step) + "\n");
        sync_tree(tmp);
        if (fs::exists(final_dir)) fs::remove_all(final_dir);
        fs::rename(tmp, final_dir);
        fsync_directory(output);
    } catch (const std::exception& e) {
        std::error_code ec;
        fs::remove_all(tmp, ec);
        const auto previous = find_latest_checkpoint(output);
        throw Error("checkpoint " + final_dir.string() + " was not written (" + e.what() + "); " +
                    (previous ? "the newest complete checkpoint is still " + previous->string()
                              : std::string("there is no earlier checkpoint")));
    }
    return final_dir;
}

std::optional<fs::path> find_latest_intact_checkpoint(const fs::path& output) {
    auto all = list_checkpoints(output);
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
        const auto check = verify_checksums(*it);
        if (check.ok()) {
            if (!check.has_manifest)
                spdlog::warn("checkpoint {} has no {} (written by an older medllm): not verified", it->string(),
                             kChecksumsFile);
            if (it != all.rbegin()) spdlog::warn("resuming from the newest intact checkpoint, {}", it->string());
            return *it;
        }
        spdlog::warn("checkpoint {} is damaged ({}); it is not used", it->string(), check.problem);
    }
    return std::nullopt;
}

void verify_checkpoint(const fs::path& dir) {
    const auto check = verify_checksums(dir);
    if (!check.ok())
        throw Error("checkpoint " + dir.string() + " is damaged: " + check.problem +
                    "; resume from an earlier checkpoint (--resume auto passes over damaged ones)");
    if (!check.has_manifest)
        spdlog::warn("checkpoint {} has no {} (written by an older medllm): not verified", dir.string(),
                     kChecksumsFile);
}

void apply_retention(const fs::path& output, int64_t keep_last, const std::function<bool(const fs::path&)>& ours) {
    if (keep_last <= 0) return;
    std::vector<fs::path> all;
    for (auto& c : list_checkpoints(output))
        if (!ours || ours(c)) all.push_back(std::move(c));
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i) {
        // The marker goes first, so a deletion cut short leaves a folder no reader trusts.
        fs::remove(all[i] / kCheckpointComplete);
        fs::remove_all(all[i]);
    }
}

void check_world_size_change(const fs::path& checkpoint, const WorldSizeChange& c, bool allowed) {
    if (c.saved_world == c.world) return;
    const std::string what = "checkpoint " + checkpoint.string() + " was written by " + std::to_string(c.saved_world) +
                             " process(es), this run has " + std::to_string(c.world);
    if (!allowed)
        throw UsageError("cannot resume: " + what + " (an optimizer step would cover a different number of " + c.unit +
                         "); use the same world size, or --resume-world-size-change to continue anyway");
    // The data position is a function of the step (epoch = step / steps_per_epoch, the epoch's shuffle, the
    // micro-batch within it), so it is recomputed with the new steps per epoch.
    spdlog::warn(
        "{} (--resume-world-size-change): each optimizer step now covers {} {} instead of {}; {} steps per epoch "
        "instead of {}, {} steps in all; the run continues at step {} with its learning-rate schedule, AdamW moments "
        "and RNG state, and its data position is recomputed from the step (epoch {}, step {} of it), so {} near the "
        "switch may be seen twice or skipped; the result differs from a run that kept {} processes",
        what, c.world * c.per_rank_step, c.unit, c.saved_world * c.per_rank_step, c.steps_per_epoch,
        c.saved_steps_per_epoch, c.total_steps, c.step, c.step / c.steps_per_epoch, c.step % c.steps_per_epoch, c.unit,
        c.saved_world);
}

}  // namespace medllm::train
