// safetensors writing: single files and HF-style sharded checkpoints with model.safetensors.index.json.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <regex>
#include <set>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/io/safetensors.h"
#include "safetensors_util.h"

namespace fs = std::filesystem;

namespace medllm::io {

namespace {

uint64_t tensor_bytes(const at::Tensor& t) {
    return static_cast<uint64_t>(t.numel()) * dtype_size(from_scalar_type(t.scalar_type()));
}

void write_index(const fs::path& path, const nlohmann::json& index) {
    // Same form as transformers: json.dumps(index, indent=2, sort_keys=True) + "\n" (ASCII-escaped).
    write_file_atomic(path, index.dump(2, ' ', /*ensure_ascii=*/true) + "\n");
}

}  // namespace

void save_file(const fs::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
               const std::map<std::string, std::string>& metadata) {
    struct Item {
        const std::string* name;
        const at::Tensor* tensor;
        DType dtype;
        uint64_t nbytes;
    };
    std::vector<Item> items;
    std::set<std::string_view> names;
    for (const auto& [name, tensor] : tensors) {
        if (name == "__metadata__") throw Error(path.string() + ": '__metadata__' cannot be a tensor name");
        if (!names.insert(name).second) throw Error(path.string() + ": tensor " + quoted_name(name) + " given twice");
        if (!tensor.defined()) throw Error(path.string() + ": tensor " + quoted_name(name) + " is undefined");
        DType dtype;
        try {
            dtype = from_scalar_type(tensor.scalar_type());
        } catch (const Error& e) {
            throw Error(path.string() + ": tensor " + quoted_name(name) + ": " + e.what());
        }
        items.push_back({&name, &tensor, dtype, tensor_bytes(tensor)});
    }
    // Largest element size first keeps every tensor aligned to its element size (the header is padded to 8).
    std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
        const size_t sa = dtype_size(a.dtype), sb = dtype_size(b.dtype);
        return sa != sb ? sa > sb : *a.name < *b.name;
    });

    nlohmann::json header = nlohmann::json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    uint64_t offset = 0;
    for (const auto& item : items) {
        header[*item.name] = {{"dtype", std::string(dtype_name(item.dtype))},
                              {"shape", item.tensor->sizes().vec()},
                              {"data_offsets", {offset, offset + item.nbytes}}};
        offset += item.nbytes;
    }
    std::string text;
    try {
        text = header.dump();
    } catch (const nlohmann::json::exception& e) {
        throw Error(path.string() + ": cannot write header (tensor names and metadata must be UTF-8): " + e.what());
    }
    text.append((8 - text.size() % 8) % 8, ' ');
    if (text.size() > kMaxHeaderBytes) throw Error(path.string() + ": header would exceed the 100 MB limit");

    // Temporary + fsync + rename: a crash or a full disk never leaves a cut file under the final name.
    AtomicFileWriter out(path);
    uint8_t length[8];
    for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
    out.write(length, 8);
    out.write(text.data(), text.size());
    for (const auto& item : items) {
        // One tensor at a time on the CPU: a model on the GPU is never copied to host memory as a whole.
        const at::Tensor cpu = item.tensor->detach().to(at::kCPU).contiguous();
        out.write(cpu.data_ptr(), item.nbytes);
    }
    out.commit();
}

// ---------------------------------------------------------------- CheckpointWriter

std::string directory_fingerprint(const fs::path& dir) {
    std::vector<std::string> lines;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        if (!entry.is_regular_file(ec)) continue;
        const auto size  = entry.file_size(ec);
        const auto mtime = unix_mtime_ns(entry.path());
        lines.push_back(entry.path().filename().string() + ":" + std::to_string(size) + ":" + std::to_string(mtime));
    }
    std::sort(lines.begin(), lines.end());
    std::string out = fs::absolute(dir).lexically_normal().string();
    for (const auto& line : lines) out += "|" + line;
    return out;
}

CheckpointWriter::CheckpointWriter(fs::path dir, uint64_t max_shard_bytes, std::map<std::string, std::string> metadata,
                                   std::string prefix, std::string resume_key)
    : dir_(std::move(dir)),
      max_shard_bytes_(max_shard_bytes),
      metadata_(std::move(metadata)),
      prefix_(std::move(prefix)),
      resume_key_(std::move(resume_key)) {
    if (max_shard_bytes_ == 0) throw UsageError("checkpoint writer: max shard size must be positive");
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec) throw Error(dir_.string() + ": cannot create directory: " + ec.message());
    if (!resume_key_.empty()) adopt_or_clear_journal();
}

CheckpointWriter::~CheckpointWriter() {
    if (finished_ || !resume_key_.empty()) return;  // a resumable writer keeps its finished shards for the rerun
    std::error_code ignored;  // abandoned (an exception unwound us): leave no half-written shards behind
    for (const auto& tmp : temp_shards_) fs::remove(tmp, ignored);
}

fs::path CheckpointWriter::journal_path() const {
    return dir_ / ("." + prefix_ + "-shards.json");
}

void CheckpointWriter::write_journal() const {
    nlohmann::json shards = nlohmann::json::array();
    for (size_t i = 0; i < temp_shards_.size(); ++i) {
        shards.push_back({{"file", temp_shards_[i].filename().string()},
                          {"names", shard_names_[i]},
                          {"bytes", shard_bytes_[i]},
                          {"numel", shard_numel_[i]},
                          {"xxh3", shard_hashes_[i]}});
    }
    const nlohmann::json journal = {
        {"resume_key", resume_key_}, {"max_shard_bytes", max_shard_bytes_}, {"shards", shards}};
    write_file_atomic(journal_path(), journal.dump() + "\n");
}

namespace {

// Why the shard `file` recorded by `record` cannot be kept ("" when it can): its record is damaged, the file is
// gone, or it no longer holds what was written (a changed byte anywhere changes its hash).
std::string kept_shard_problem(const nlohmann::json& record, const fs::path& file) {
    std::error_code ec;
    try {
        (void)record.at("bytes").get<uint64_t>();
        (void)record.at("numel").get<uint64_t>();
        if (record.at("file").get<std::string>() != file.filename().string()) return "its record names another file";
        if (!fs::exists(file, ec)) return "the file is missing";
        const auto recorded = record.at("xxh3").get<std::string>();
        const auto now      = hash_file(file);
        if (now != recorded)
            return "its content changed since it was written (xxh3 " + now + ", recorded " + recorded + ")";
        // The shard must still hold exactly the tensors the record lists.
        auto listed = record.at("names").get<std::vector<std::string>>();
        auto held   = SafetensorsFile(file).names();
        std::sort(listed.begin(), listed.end());
        std::sort(held.begin(), held.end());
        if (listed != held) return "it holds other tensors than its record lists";
    } catch (const std::exception& e) {
        return std::string("its record is damaged (") + e.what() + ")";
    }
    return "";
}

}  // namespace

// Takes over the shards an interrupted run with the same key finished, or clears what a different run left. Kept
// shards are verified against the hash recorded when they were written; from the first one that fails on, the
// shards are dropped and written again.
void CheckpointWriter::adopt_or_clear_journal() {
    std::error_code ec;
    nlohmann::json journal;
    if (fs::exists(journal_path(), ec)) {
        try {
            journal = read_json_file(journal_path());
        } catch (const Error&) {
            journal = nlohmann::json();  // unreadable: start over
        }
    }
    bool same_run = false;
    try {  // any missing or mistyped field makes the record unusable
        same_run = journal.is_object() && journal.at("resume_key").get<std::string>() == resume_key_ &&
                   journal.at("max_shard_bytes").get<uint64_t>() == max_shard_bytes_ && journal.at("shards").is_array();
    } catch (const std::exception&) {
        same_run = false;
    }
    size_t kept = 0;
    if (same_run) {
        for (; kept < journal["shards"].size(); ++kept) {
            const fs::path file       = dir_ / ("." + prefix_ + "-shard-" + std::to_string(kept) + ".safetensors");
            const std::string problem = kept_shard_problem(journal["shards"][kept], file);
            if (!problem.empty()) {
                spdlog::warn("{}: not resuming from this shard: {}; it and the {} after it are written again",
                             file.string(), problem, journal["shards"].size() - kept - 1);
                break;
            }
        }
    }
    // Whatever is not kept: temporary shards past the kept ones, unfinished temporaries, and a stale record.
    const std::regex temp_pattern("\\." + std::regex_replace(prefix_, std::regex(R"([.^$|()\[\]{}*+?\\])"), R"(\$&)") +
                                  R"(-shard-(\d+)\.safetensors(\.tmp)?)");
    std::vector<fs::path> leftovers;  // collected first: removing while iterating is unspecified
    for (const auto& entry : fs::directory_iterator(dir_, ec)) {
        std::smatch m;
        const std::string name = entry.path().filename().string();
        if (std::regex_match(name, m, temp_pattern) &&
            (m[2].matched || m[1].length() > 12 || std::stoull(m[1].str()) >= kept))
            leftovers.push_back(entry.path());
    }
    for (const auto& path : leftovers) fs::remove(path, ec);
    if (kept == 0) {
        fs::remove(journal_path(), ec);
        return;
    }
    for (size_t i = 0; i < kept; ++i) {
        const auto& shard = journal["shards"][i];
        temp_shards_.push_back(dir_ / shard["file"].get<std::string>());
        shard_names_.push_back(shard["names"].get<std::vector<std::string>>());
        shard_bytes_.push_back(shard["bytes"].get<uint64_t>());
        shard_numel_.push_back(shard["numel"].get<uint64_t>());
        shard_hashes_.push_back(shard["xxh3"].get<std::string>());
        for (const auto& name : shard_names_.back()) completed_.insert(name);
        total_bytes_ += shard_bytes_.back();
        total_numel_ += shard_numel_.back();
        resumed_bytes_ += shard_bytes_.back();
    }
    resumed_shards_ = temp_shards_.size();
    if (kept < journal["shards"].size()) write_journal();  // the record lists only what is kept
}

void CheckpointWriter::add(const std::string& name, const at::Tensor& tensor) {
    if (finished_) throw Error(dir_.string() + ": checkpoint writer already finished");
    if (completed_.count(name)) {
        if (added_new_) {
            throw Error(dir_.string() + ": tensor " + quoted_name(name) +
                        " comes later than in the interrupted run being resumed; delete " + journal_path().string() +
                        " to start over");
        }
        return;  // already in a resumed shard
    }
    added_new_ = true;
    if (!seen_.emplace(name, true).second)
        throw Error(dir_.string() + ": tensor " + quoted_name(name) + " added twice");
    if (!tensor.defined()) throw Error(dir_.string() + ": tensor " + quoted_name(name) + " is undefined");
    const uint64_t bytes = tensor_bytes(tensor);
    // HF's rule: start a new shard when this tensor would tip the current one over the limit; a tensor larger
    // than the limit gets a shard of its own.
    if (!pending_.empty() && pending_bytes_ + bytes > max_shard_bytes_) flush_shard();
    pending_.emplace_back(name, tensor);
    pending_bytes_ += bytes;
    total_bytes_ += bytes;
    total_numel_ += static_cast<uint64_t>(tensor.numel());
    if (pending_bytes_ >= max_shard_bytes_) flush_shard();
}

void CheckpointWriter::flush_shard() {
    if (pending_.empty()) return;
    write_shard();
}

// Writes the pending tensors (possibly none) as the next temporary shard.
void CheckpointWriter::write_shard() {
    const fs::path tmp = dir_ / ("." + prefix_ + "-shard-" + std::to_string(temp_shards_.size()) + ".safetensors");
    temp_shards_.push_back(tmp);
    save_file(tmp, pending_, metadata_);
    shard_hashes_.push_back(hash_file(tmp));  // read back from the page cache: cheap next to writing it
    std::vector<std::string> names;
    uint64_t bytes = 0, numel = 0;
    for (const auto& p : pending_) {
        names.push_back(p.first);
        bytes += tensor_bytes(p.second);
        numel += static_cast<uint64_t>(p.second.numel());
    }
    shard_names_.push_back(std::move(names));
    shard_bytes_.push_back(bytes);
    shard_numel_.push_back(numel);
    if (!resume_key_.empty()) write_journal();
    pending_.clear();
    pending_bytes_ = 0;
}

std::vector<fs::path> CheckpointWriter::finish() {
    if (finished_) throw Error(dir_.string() + ": checkpoint writer already finished");
    if (!pending_.empty() || temp_shards_.empty()) {
        // An empty checkpoint still gets a (tensor-less) file so readers find something valid.
        write_shard();
    }
    const size_t n            = temp_shards_.size();
    const fs::path index_path = dir_ / (prefix_ + ".safetensors.index.json");
    std::vector<fs::path> final_paths;
    if (n == 1) {
        final_paths.push_back(dir_ / (prefix_ + ".safetensors"));
    } else {
        for (size_t i = 0; i < n; ++i) {
            char buf[64];
            std::snprintf(buf, sizeof buf, "-%05zu-of-%05zu.safetensors", i + 1, n);
            final_paths.push_back(dir_ / (prefix_ + buf));
        }
    }
    // Remove what an earlier save left in this directory, so no stale shard or index contradicts the new files.
    std::error_code ec;
    const std::regex shard_pattern(std::regex_replace(prefix_, std::regex(R"([.^$|()\[\]{}*+?\\])"), R"(\$&)") +
                                   R"((-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?)");
    for (const auto& entry : fs::directory_iterator(dir_, ec)) {
        const std::string file = entry.path().filename().string();
        if (std::regex_match(file, shard_pattern) &&
            std::find(final_paths.begin(), final_paths.end(), entry.path()) == final_paths.end())
            fs::remove(entry.path(), ec);
    }
    for (size_t i = 0; i < n; ++i) fs::rename(temp_shards_[i], final_paths[i]);
    temp_shards_.clear();
    if (n > 1) {
        nlohmann::json weight_map = nlohmann::json::object();
        for (size_t i = 0; i < n; ++i)
            for (const auto& name : shard_names_[i]) weight_map[name] = final_paths[i].filename().string();
        write_index(index_path, {{"metadata", {{"total_parameters", total_numel_}, {"total_size", total_bytes_}}},
                                 {"weight_map", weight_map}});
    }
    if (!resume_key_.empty()) fs::remove(journal_path(), ec);
    finished_ = true;
    return final_paths;
}

}  // namespace medllm::io
