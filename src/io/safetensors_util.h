// Internal helpers shared by the safetensors reader and writer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace medllm::io {

// A name from a file, quoted for a one-line error message (control characters escaped, length bounded).
std::string quoted_name(std::string_view name);

// A whole file mapped privately (copy-on-write): pages load on demand and writes never reach the file.
class MappedFile {
public:
    explicit MappedFile(const std::filesystem::path& path);
    ~MappedFile();
    MappedFile(const MappedFile&)            = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    uint8_t* mutable_data() const { return data_; }
    size_t size() const { return size_; }
    bool writable() const { return writable_; }

private:
    uint8_t* data_ = nullptr;
    size_t size_   = 0;
    bool writable_ = false;
};

}  // namespace medllm::io
