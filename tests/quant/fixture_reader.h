// Test-only reader for the safetensors fixtures under tests/fixtures/quant (kept independent of src/io so the quant
// tests do not depend on the production reader). Format: u64 little-endian header size, JSON header
// {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the raw little-endian tensor bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

namespace medllm::quant::testing {

struct FixtureFile {
    std::map<std::string, at::Tensor> tensors;
    std::map<std::string, std::string> metadata;

    const at::Tensor& at(const std::string& name) const {
        const auto it = tensors.find(name);
        if (it == tensors.end()) throw std::runtime_error("fixture tensor missing: " + name);
        return it->second;
    }
    bool has(const std::string& name) const { return tensors.count(name) != 0; }
};

inline at::ScalarType fixture_dtype(const std::string& name) {
    static const std::map<std::string, at::ScalarType> kinds = {
        {"F32", at::kFloat}, {"F16", at::kHalf}, {"BF16", at::kBFloat16}, {"U8", at::kByte},
        {"I8", at::kChar},   {"I32", at::kInt},  {"I64", at::kLong},      {"F64", at::kDouble}};
    const auto it = kinds.find(name);
    if (it == kinds.end()) throw std::runtime_error("fixture dtype not supported: " + name);
    return it->second;
}

inline FixtureFile read_fixture(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot open fixture " + path);
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (bytes.size() < 8) throw std::runtime_error("fixture too short: " + path);
    uint64_t header_size = 0;
    std::memcpy(&header_size, bytes.data(), 8);
    if (header_size > bytes.size() - 8) throw std::runtime_error("bad fixture header size: " + path);
    const nlohmann::json header =
        nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<long>(header_size));
    const char* data  = bytes.data() + 8 + header_size;
    const size_t left = bytes.size() - 8 - header_size;
    FixtureFile file;
    for (const auto& [name, entry] : header.items()) {
        if (name == "__metadata__") {
            for (const auto& [key, value] : entry.items()) file.metadata[key] = value.get<std::string>();
            continue;
        }
        const auto shape   = entry.at("shape").get<std::vector<int64_t>>();
        const auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
        if (offsets.size() != 2 || offsets[1] < offsets[0] || offsets[1] > left) {
            throw std::runtime_error("bad offsets for fixture tensor " + name);
        }
        const auto dtype = fixture_dtype(entry.at("dtype").get<std::string>());
        at::Tensor t     = at::empty(shape, at::TensorOptions().dtype(dtype));
        if (static_cast<uint64_t>(t.nbytes()) != offsets[1] - offsets[0]) {
            throw std::runtime_error("size mismatch for fixture tensor " + name);
        }
        std::memcpy(t.data_ptr(), data + offsets[0], t.nbytes());
        file.tensors[name] = t;
    }
    return file;
}

}  // namespace medllm::quant::testing
