// safetensors checkpoints: a strict header parser, a memory-mapped zero-copy reader, sharded checkpoints
// (model.safetensors.index.json) and a streaming, sharding writer whose output HF transformers loads.
//
// File layout: [u64 little-endian N][N bytes of UTF-8 JSON header][data buffer]. Every tensor's
// data_offsets are relative to the data buffer and the ranges must tile it exactly (no gaps, no overlaps).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace medllm::io {

// Upper bound on the JSON header, as in the reference implementation (a guard against absurd allocations).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

enum class DType : uint8_t { BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64, F8_E4M3, F8_E5M2 };

std::string_view dtype_name(DType dtype);
std::optional<DType> dtype_from_name(std::string_view name);
size_t dtype_size(DType dtype);
at::ScalarType to_scalar_type(DType dtype);
// Throws medllm::Error for LibTorch dtypes safetensors cannot hold (complex, quantized int types).
DType from_scalar_type(at::ScalarType type);

struct TensorInfo {
    std::string name;
    DType dtype = DType::F32;
    std::vector<int64_t> shape;
    uint64_t begin = 0;  // byte offsets into the data buffer, half-open
    uint64_t end   = 0;

    uint64_t numel() const;
    uint64_t nbytes() const { return end - begin; }
};

struct Header {
    uint64_t header_bytes = 0;  // N
    uint64_t data_start   = 0;  // 8 + N: file offset of the data buffer
    std::map<std::string, std::string> metadata;
    std::vector<TensorInfo> tensors;  // sorted by data offset (file order)

    const TensorInfo* find(std::string_view name) const;

private:
    friend Header parse_header(const uint8_t*, size_t, const std::string&);
    std::unordered_map<std::string, size_t> index_;
};

// Parses and fully validates the header of a complete safetensors file held in memory (`file` points at byte 0,
// `file_size` is the whole file). Throws medllm::Error naming `source` (and the tensor at fault) on anything
// malformed. Touches only the first 8 + N bytes, so it is cheap on a mapped file.
Header parse_header(const uint8_t* file, size_t file_size, const std::string& source);

class MappedFile;  // read-only view of a whole file (mmap, copy-on-write private mapping)

// One safetensors file, memory-mapped. Tensors returned by tensor() are zero-copy views into the mapping when the
// data is aligned for its dtype (otherwise an aligned copy); each view keeps the mapping alive, so they stay valid
// after this object is destroyed. The mapping is private: in-place ops on a view never modify the file.
class SafetensorsFile {
public:
    explicit SafetensorsFile(const std::filesystem::path& path);

    const std::filesystem::path& path() const { return path_; }
    const Header& header() const { return header_; }
    const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
    std::vector<std::string> names() const;  // file order
    bool contains(std::string_view name) const { return header_.find(name) != nullptr; }
    const TensorInfo& info(std::string_view name) const;  // throws Error naming file and tensor
    at::Tensor tensor(std::string_view name) const;
    // The tensor's raw little-endian bytes inside the mapping (valid while this object lives).
    const uint8_t* data(std::string_view name) const;

private:
    std::filesystem::path path_;
    std::shared_ptr<MappedFile> map_;
    Header header_;
};

// A checkpoint: a directory with model.safetensors.index.json (sharded), a directory with model.safetensors, or a
// single .safetensors file. All headers (and the index) are validated up front; tensor data is read only on load(),
// one tensor at a time, so loading a 72B model streams through the page cache and never needs 2x its size in RAM.
class CheckpointReader {
public:
    explicit CheckpointReader(const std::filesystem::path& path);

    std::vector<std::string> names() const;  // sorted
    bool contains(std::string_view name) const;
    const TensorInfo& info(std::string_view name) const;
    const std::filesystem::path& file_of(std::string_view name) const;
    at::Tensor load(std::string_view name) const;  // zero-copy view (see SafetensorsFile::tensor)
    // Visits every tensor shard by shard in file order (sequential reads through the page cache; the mapped pages
    // are clean and the kernel reclaims them as the visit moves on).
    void for_each(const std::function<void(const TensorInfo&, const at::Tensor&)>& visit);

    const std::vector<std::filesystem::path>& files() const { return files_; }
    uint64_t total_bytes() const;  // sum of tensor byte sizes
    bool sharded() const { return sharded_; }

private:
    struct Entry {
        size_t file;
        const TensorInfo* info;
    };
    const Entry& entry(std::string_view name) const;

    std::filesystem::path root_;
    bool sharded_ = false;
    std::vector<std::filesystem::path> files_;
    std::vector<std::unique_ptr<SafetensorsFile>> shards_;
    std::map<std::string, Entry, std::less<>> entries_;
};

// Identifies a checkpoint directory's current contents for resume keys: the names, sizes and modification times
// of its top-level files.
std::string directory_fingerprint(const std::filesystem::path& dir);

// Writes one safetensors file (tensors are made contiguous and moved to CPU one at a time). Data is laid out by
// dtype size (largest first) then name, so every tensor stays aligned; the header is padded with spaces to 8 bytes.
// Written to a temporary name and renamed, so a crash never leaves a truncated file under the final name.
void save_file(const std::filesystem::path& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
               const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes a checkpoint directory the way HF save_pretrained does: one `model.safetensors` when everything fits in
// `max_shard_bytes`, otherwise `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`
// ({"metadata": {"total_parameters": P, "total_size": N}, "weight_map": {name: file}}, as transformers 5 writes
// it). Tensors are added one by one and written as soon as a shard is full, so only one shard's tensors are
// referenced at a time.
//
// Resumable writing (`resume_key` non-empty): every finished shard is recorded in `.<prefix>-shards.json` next to
// it, with its content hash (XXH3). When a run with the same key and shard size finds such a record, the shards it
// lists are kept after their hashes are checked (the first shard that is missing or changed is written again, with
// a warning, and so is every shard after it): `completed()`
// tells the caller which tensors it need not compute again, and `add()` skips them. The caller must add tensors in
// the same order as the interrupted run (same inputs and options: put them in the key); a different order is an
// error. An abandoned resumable writer keeps its finished shards; a plain one removes them.
class CheckpointWriter {
public:
    static constexpr uint64_t kDefaultMaxShardBytes = 5'000'000'000ULL;  // HF's default "5GB"

    explicit CheckpointWriter(std::filesystem::path dir, uint64_t max_shard_bytes = kDefaultMaxShardBytes,
                              std::map<std::string, std::string> metadata = {{"format", "pt"}},
                              std::string prefix = "model", std::string resume_key = "");
    ~CheckpointWriter();

    // True when a resumed shard already holds `name`.
    bool completed(const std::string& name) const { return completed_.count(name) > 0; }
    // Shards / tensors / bytes taken over from an interrupted run.
    size_t resumed_shards() const { return resumed_shards_; }
    size_t resumed_tensors() const { return completed_.size(); }
    uint64_t resumed_bytes() const { return resumed_bytes_; }

    void add(const std::string& name, const at::Tensor& tensor);
    // Writes the pending shard, renames shards to their final names and writes the index. Returns the files.
    std::vector<std::filesystem::path> finish();

private:
    void flush_shard();
    void write_shard();
    std::filesystem::path journal_path() const;
    void write_journal() const;
    void adopt_or_clear_journal();

    std::filesystem::path dir_;
    uint64_t max_shard_bytes_;
    std::map<std::string, std::string> metadata_;
    std::string prefix_;
    std::vector<std::pair<std::string, at::Tensor>> pending_;
    uint64_t pending_bytes_ = 0;
    uint64_t total_bytes_   = 0;
    uint64_t total_numel_   = 0;
    std::vector<std::filesystem::path> temp_shards_;
    std::vector<std::vector<std::string>> shard_names_;
    std::map<std::string, bool> seen_;
    bool finished_ = false;
    std::string resume_key_;
    std::set<std::string> completed_;
    std::vector<uint64_t> shard_bytes_, shard_numel_;
    std::vector<std::string> shard_hashes_;  // XXH3 of each finished shard file, checked on resume
    size_t resumed_shards_  = 0;
    uint64_t resumed_bytes_ = 0;
    bool added_new_         = false;  // a tensor not in a resumed shard has been added
};

}  // namespace medllm::io
