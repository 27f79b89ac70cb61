// Resumable per-rank record shards and merging them back into input order.
#include "medllm/core/shards.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <set>
#include <stdexcept>

#include "medllm/core/error.h"

namespace medllm {
namespace fs = std::filesystem;
using nlohmann::json;

void ShardPlace::wait(const std::string& what) const {
    if (world_size <= 1) return;
    if (!wait_for_all) throw std::logic_error("ShardPlace: a group of processes needs wait_for_all");
    wait_for_all(what);
}

fs::path shard_path(const fs::path& merged, int64_t rank, int64_t world_size) {
    const std::string name = merged.stem().string() + ".rank" + std::to_string(rank) + "-of" +
                             std::to_string(world_size) + merged.extension().string();
    return merged.parent_path() / name;
}

namespace {

// "<stem>.rank<digits>-of<digits><ext>"
bool is_shard_name(const std::string& name, const std::string& stem, const std::string& ext) {
    const std::string head = stem + ".rank";
    if (name.size() <= head.size() + ext.size() || name.compare(0, head.size(), head) != 0 ||
        name.compare(name.size() - ext.size(), ext.size(), ext) != 0)
        return false;
    const std::string mid = name.substr(head.size(), name.size() - head.size() - ext.size());  // "1-of4"
    const auto dash       = mid.find("-of");
    if (dash == std::string::npos || dash == 0 || dash + 3 >= mid.size()) return false;
    auto digits = [](const std::string& s) {
        return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
    };
    return digits(mid.substr(0, dash)) && digits(mid.substr(dash + 3));
}

void remove_with_sidecar(const fs::path& path) {
    std::error_code ec;
    fs::remove(path, ec);
    if (ec) throw Error(path.string() + ": cannot remove: " + ec.message());
    fs::remove(JsonlRecordFile::sidecar_path(path), ec);
}

}  // namespace

std::vector<fs::path> find_shards(const fs::path& merged) {
    std::vector<fs::path> out;
    const fs::path dir = merged.parent_path().empty() ? fs::path(".") : merged.parent_path();
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) return out;
    const std::string stem = merged.stem().string(), ext = merged.extension().string();
    for (const auto& entry : fs::directory_iterator(dir, ec))
        if (is_shard_name(entry.path().filename().string(), stem, ext))
            out.push_back(merged.parent_path() / entry.path().filename());
    std::sort(out.begin(), out.end());
    return out;
}

ShardedRecords::ShardedRecords(fs::path merged, json identity, bool overwrite, std::string hint, ShardPlace place,
                               KeyFn key, OrderFn order)
    : merged_(std::move(merged)),
      identity_(std::move(identity)),
      hint_(std::move(hint)),
      place_(std::move(place)),
      key_(std::move(key)),
      order_(std::move(order)) {
    if (place_.is_main()) {
        if (overwrite)
            for (const auto& s : find_shards(merged_)) remove_with_sidecar(s);
        merged_file_ = std::make_unique<JsonlRecordFile>(merged_, identity_, overwrite, hint_);
        for (std::size_t i = 0; i < merged_file_->existing().size(); ++i) {
            existing_.push_back(merged_file_->existing()[i]);
            where_.push_back(merged_.string() + ":" + std::to_string(merged_file_->existing_lines()[i]));
            merged_keys_.insert(key_(existing_.back()));
        }
        const auto left = find_shards(merged_);
        if (!left.empty()) {
            spdlog::info("{}: folding in {} shard file(s) an earlier run left", merged_.string(), left.size());
            fold(left, /*keep=*/true);
        }
    }
    place_.wait("open " + merged_.filename().string());
    if (!place_.is_main()) {
        // Rank 0 wrote the run record before the wait: a rank that does not see it does not share the folder.
        std::error_code ec;
        if (!identity_.is_null() && !fs::exists(JsonlRecordFile::sidecar_path(merged_), ec))
            throw Error("rank " + std::to_string(place_.rank) + " does not see " +
                        JsonlRecordFile::sidecar_path(merged_).string() +
                        ", which rank 0 wrote: the output folder must be on a filesystem every rank sees");
        std::vector<std::size_t> lines;
        JsonlRecordFile::read_records(merged_, existing_, lines);
        for (std::size_t line : lines) where_.push_back(merged_.string() + ":" + std::to_string(line));
    }
    if (place_.sharded()) {
        // Everything earlier is in the merged file now: this rank's shard starts empty.
        shard_file_ = std::make_unique<JsonlRecordFile>(shard_path(merged_, place_.rank, place_.world_size), identity_,
                                                        /*overwrite=*/true, hint_);
        own_        = shard_file_.get();
    } else {
        own_ = merged_file_.get();
    }
}

ShardedRecords::~ShardedRecords() = default;

void ShardedRecords::append(const json& record) {
    own_->append(record);
}

std::vector<json> ShardedRecords::fold(const std::vector<fs::path>& shards, bool keep) {
    struct Item {
        int64_t order;
        json record;
        std::string where;
    };
    std::vector<Item> items;
    for (const auto& s : shards) {
        JsonlRecordFile f(s, identity_, /*overwrite=*/false, hint_);  // same run, cut line repaired
        for (std::size_t i = 0; i < f.existing().size(); ++i) {
            const json& r = f.existing()[i];
            if (!merged_keys_.insert(key_(r)).second) continue;  // folded before the shard was removed
            items.push_back({order_(r), r, s.string() + ":" + std::to_string(f.existing_lines()[i])});
        }
        f.close();
    }
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.order < b.order; });
    std::vector<json> folded;
    for (auto& item : items) {
        merged_file_->append(item.record);
        if (keep) {
            existing_.push_back(item.record);
            where_.push_back(std::move(item.where));
        }
        folded.push_back(std::move(item.record));
    }
    merged_file_->sync();  // on disk before the shards go
    for (const auto& s : shards) remove_with_sidecar(s);
    return folded;
}

std::vector<json> ShardedRecords::finish() {
    if (!own_) return {};
    own_->close();
    own_ = nullptr;
    if (!place_.sharded()) return {};
    place_.wait("records of " + merged_.filename().string());
    if (!place_.is_main()) return {};
    for (int64_t r = 0; r < place_.world_size; ++r) {
        const fs::path p = shard_path(merged_, r, place_.world_size);
        std::error_code ec;
        if (!fs::exists(p, ec))
            throw Error("rank " + std::to_string(r) + "'s records " + p.string() +
                        " are not visible to rank 0: the output folder must be on a filesystem every rank sees");
    }
    auto folded = fold(find_shards(merged_), /*keep=*/false);
    merged_file_->close();
    return folded;
}

}  // namespace medllm
