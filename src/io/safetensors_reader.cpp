// Memory-mapped safetensors reading: single files and sharded checkpoints.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/io/safetensors.h"
#include "safetensors_util.h"

namespace fs = std::filesystem;

namespace medllm::io {

MappedFile::MappedFile(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(path.string() + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        const int err = errno;
        ::close(fd);
        throw Error(path.string() + ": not a regular file" + (err ? std::string(": ") + std::strerror(err) : ""));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
        // Private + writable + no swap reservation: in-place ops on a tensor view touch only a private copy of the
        // page, never the file, and mapping a 100+ GB file does not count against the commit limit.
        void* p   = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
        writable_ = p != MAP_FAILED;
        if (p == MAP_FAILED) p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            const int err = errno;
            ::close(fd);
            throw Error(path.string() + ": mmap failed: " + std::strerror(err));
        }
        data_ = static_cast<uint8_t*>(p);
    }
    ::close(fd);
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(data_, size_);
}

namespace {

const uint8_t kEmpty[8] = {};

at::Tensor make_tensor(const std::shared_ptr<MappedFile>& map, const Header& header, const TensorInfo& info,
                       const std::string& source) {
    const uint8_t* bytes = map->data() ? map->data() + header.data_start + info.begin : kEmpty;
    if (info.dtype == DType::BOOL) {
        // A bool byte other than 0/1 is undefined behaviour in LibTorch kernels: reject it here.
        for (uint64_t i = 0; i < info.nbytes(); ++i)
            if (bytes[i] > 1)
                throw Error(source + ": tensor " + quoted_name(info.name) + ": BOOL element " + std::to_string(i) +
                            " has byte value " + std::to_string(bytes[i]));
    }
    const auto options = at::TensorOptions().dtype(to_scalar_type(info.dtype)).device(at::kCPU);
    const size_t item  = dtype_size(info.dtype);
    if (info.nbytes() == 0) return at::empty(info.shape, options);
    if (!map->writable() || reinterpret_cast<uintptr_t>(bytes) % item != 0) {
        // Misaligned data (a writer that did not order by alignment) or a read-only mapping: copy.
        at::Tensor out = at::empty(info.shape, options);
        std::memcpy(out.data_ptr(), bytes, info.nbytes());
        return out;
    }
    std::shared_ptr<MappedFile> keep = map;
    return at::from_blob(
        const_cast<uint8_t*>(bytes), info.shape, [keep](void*) mutable { keep.reset(); }, options);
}

}  // namespace

SafetensorsFile::SafetensorsFile(const fs::path& path) : path_(path), map_(std::make_shared<MappedFile>(path)) {
    header_ = parse_header(map_->data() ? map_->data() : kEmpty, map_->size(), path.string());
}

std::vector<std::string> SafetensorsFile::names() const {
    std::vector<std::string> out;
    out.reserve(header_.tensors.size());
    for (const auto& t : header_.tensors) out.push_back(t.name);
    return out;
}

const TensorInfo& SafetensorsFile::info(std::string_view name) const {
    const TensorInfo* t = header_.find(name);
    if (!t) throw Error(path_.string() + ": no tensor " + quoted_name(name));
    return *t;
}

at::Tensor SafetensorsFile::tensor(std::string_view name) const {
    return make_tensor(map_, header_, info(name), path_.string());
}

const uint8_t* SafetensorsFile::data(std::string_view name) const {
    const TensorInfo& t = info(name);
    return map_->data() ? map_->data() + header_.data_start + t.begin : kEmpty;
}

// ---------------------------------------------------------------- CheckpointReader

CheckpointReader::CheckpointReader(const fs::path& path) : root_(path) {
    std::error_code ec;
    if (fs::is_regular_file(path, ec)) {
        files_.push_back(path);
    } else if (fs::is_directory(path, ec)) {
        const fs::path index = path / "model.safetensors.index.json";
        if (fs::exists(index, ec)) {
            sharded_                 = true;
            const nlohmann::json doc = read_json_file(index);
            if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object())
                throw Error(index.string() + ": missing object 'weight_map'");
            std::map<std::string, size_t> file_ids;
            std::map<std::string, std::string> wanted;  // tensor -> shard file name
            for (auto it = doc["weight_map"].begin(); it != doc["weight_map"].end(); ++it) {
                if (!it.value().is_string())
                    throw Error(index.string() + ": weight_map entry " + quoted_name(it.key()) +
                                " is not a file name string");
                const std::string file = it.value().get<std::string>();
                // Shards live beside the index; a path would let a downloaded index read arbitrary files.
                if (file.empty() || file.find('/') != std::string::npos || file.find('\\') != std::string::npos ||
                    file == "." || file == "..")
                    throw Error(index.string() + ": weight_map entry " + quoted_name(it.key()) + " names " +
                                quoted_name(file) + ", which is not a plain file name beside the index");
                if (file_ids.emplace(file, files_.size()).second) files_.push_back(path / file);
                wanted[it.key()] = file;
            }
            for (const auto& f : files_) shards_.push_back(std::make_unique<SafetensorsFile>(f));
            for (const auto& [name, file] : wanted) {
                const size_t id        = file_ids.at(file);
                const TensorInfo* info = shards_[id]->header().find(name);
                if (!info)
                    throw Error(files_[id].string() + ": tensor " + quoted_name(name) + " listed in " +
                                index.filename().string() + " is missing from this shard");
                entries_.emplace(name, Entry{id, info});
            }
            for (size_t id = 0; id < shards_.size(); ++id)
                for (const auto& t : shards_[id]->header().tensors) {
                    auto it = entries_.find(t.name);
                    if (it == entries_.end() || it->second.file != id)
                        throw Error(files_[id].string() + ": tensor " + quoted_name(t.name) + " is not mapped to " +
                                    "this shard by " + index.filename().string());
                }
            // metadata.total_size is informational (writers differ on what they count); the shards are the truth.
            return;
        }
        const fs::path single = path / "model.safetensors";
        if (!fs::exists(single, ec))
            throw Error(path.string() + ": no model.safetensors.index.json or model.safetensors in this directory");
        files_.push_back(single);
    } else {
        throw Error(path.string() + ": no such checkpoint file or directory");
    }
    shards_.push_back(std::make_unique<SafetensorsFile>(files_.front()));
    for (const auto& t : shards_.front()->header().tensors) entries_.emplace(t.name, Entry{0, &t});
}

std::vector<std::string> CheckpointReader::names() const {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& [name, e] : entries_) out.push_back(name);
    return out;
}

bool CheckpointReader::contains(std::string_view name) const {
    return entries_.find(name) != entries_.end();
}

const CheckpointReader::Entry& CheckpointReader::entry(std::string_view name) const {
    auto it = entries_.find(name);
    if (it == entries_.end()) throw Error(root_.string() + ": checkpoint has no tensor " + quoted_name(name));
    return it->second;
}

const TensorInfo& CheckpointReader::info(std::string_view name) const {
    return *entry(name).info;
}

const fs::path& CheckpointReader::file_of(std::string_view name) const {
    return files_[entry(name).file];
}

at::Tensor CheckpointReader::load(std::string_view name) const {
    const Entry& e = entry(name);
    return shards_[e.file]->tensor(e.info->name);
}

void CheckpointReader::for_each(const std::function<void(const TensorInfo&, const at::Tensor&)>& visit) {
    for (const auto& shard : shards_)
        for (const auto& t : shard->header().tensors) visit(t, shard->tensor(t.name));
}

uint64_t CheckpointReader::total_bytes() const {
    uint64_t total = 0;
    for (const auto& [name, e] : entries_) total += e.info->nbytes();
    return total;
}

}  // namespace medllm::io
