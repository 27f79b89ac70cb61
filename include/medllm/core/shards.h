// Resumable records written by several processes: a generation-heavy command (eval igakuqa, eval mcqa,
// build-prefs, generate) launched by torchrun or Slurm shards its work across the ranks, each rank appends what it
// finishes to its own shard file beside the output, and rank 0 folds the shards into the one file a single
// process writes (in the caller's order, so a fresh N-process run writes the same file as one process).
//
//   <output>/predictions.jsonl               the merged records (what one process writes)
//   <output>/predictions.rank1-of4.jsonl     rank 1's records of a 4-process run, until rank 0 folds them
//
// Every rank must see the output folder (one node, or a filesystem shared by the nodes). A run that is killed
// leaves its shards behind; the next run (any number of processes) folds them in first, so finished records are
// never generated twice and a killed rank's share resumes where it stopped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/files.h"

namespace medllm {

// This process's place in a group of processes, and a wait for the others. `wait_for_all` is a barrier that
// tolerates long uneven work (one rank's share of generation may take minutes longer than another's) and throws
// Error naming a rank that was lost; required when world_size > 1.
struct ShardPlace {
    int64_t rank       = 0;
    int64_t world_size = 1;
    std::function<void(const std::string& what)> wait_for_all;

    bool is_main() const { return rank == 0; }
    bool sharded() const { return world_size > 1; }
    // Item k of a work list belongs to rank k % world_size.
    bool owns(std::size_t k) const { return static_cast<int64_t>(k % static_cast<std::size_t>(world_size)) == rank; }
    void wait(const std::string& what) const;
};

// `<dir>/<stem>.rank<R>-of<W><ext>`: predictions.jsonl -> predictions.rank1-of4.jsonl.
std::filesystem::path shard_path(const std::filesystem::path& merged, int64_t rank, int64_t world_size);
// The shard files of `merged` on disk (any rank and world size), sorted by name.
std::vector<std::filesystem::path> find_shards(const std::filesystem::path& merged);

class ShardedRecords {
public:
    using KeyFn   = std::function<std::string(const nlohmann::json&)>;  // what a record is the result of
    using OrderFn = std::function<int64_t(const nlohmann::json&)>;      // where a folded record goes

    // Rank 0 opens `merged` as a JsonlRecordFile (identity check, `overwrite` also removes old shards, cut-line
    // repair) and folds into it the shard files an earlier run left: they must carry the same identity (else Error
    // naming the shard and the key, ending with `hint`); a record whose key the merged file already holds is
    // skipped; the shards are removed once the merged file is on disk. Every rank waits for that and reads the
    // merged file (existing()); ranks of a group then start a shard file of their own to append to. A single
    // process appends to the merged file itself.
    ShardedRecords(std::filesystem::path merged, nlohmann::json identity, bool overwrite, std::string hint,
                   ShardPlace place, KeyFn key, OrderFn order);
    ~ShardedRecords();
    ShardedRecords(const ShardedRecords&)            = delete;
    ShardedRecords& operator=(const ShardedRecords&) = delete;

    // The records saved before this run (merged file and folded shards), with "file:line" for error messages.
    const std::vector<nlohmann::json>& existing() const { return existing_; }
    const std::vector<std::string>& existing_where() const { return where_; }

    void append(const nlohmann::json& record);  // to this rank's file: one line, flushed and checked

    // Closes this rank's file; in a group, waits for every rank and rank 0 folds the shards into the merged file
    // (sorted by `order`), fsyncs it and removes them. Returns the records rank 0 folded (empty elsewhere, and for
    // a single process, whose appends are already in the merged file).
    std::vector<nlohmann::json> finish();

    const std::filesystem::path& merged_path() const { return merged_; }
    // The file this rank appends to (the merged file for a single process).
    std::filesystem::path own_path() const {
        return place_.sharded() ? shard_path(merged_, place_.rank, place_.world_size) : merged_;
    }
    const ShardPlace& place() const { return place_; }

private:
    // Rank 0: appends the records of `shards` that the merged file lacks, in order; fsyncs; removes the shards.
    // `keep`: also add them to existing().
    std::vector<nlohmann::json> fold(const std::vector<std::filesystem::path>& shards, bool keep);

    std::filesystem::path merged_;
    nlohmann::json identity_;
    std::string hint_;
    ShardPlace place_;
    KeyFn key_;
    OrderFn order_;
    std::unique_ptr<JsonlRecordFile> merged_file_;  // rank 0 only
    std::unique_ptr<JsonlRecordFile> shard_file_;   // ranks of a group
    JsonlRecordFile* own_ = nullptr;
    std::set<std::string> merged_keys_;  // rank 0: keys in the merged file
    std::vector<nlohmann::json> existing_;
    std::vector<std::string> where_;
};

}  // namespace medllm
