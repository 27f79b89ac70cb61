// Reading what a test's run wrote: a whole file's bytes, its non-empty lines, and a JSONL file's records by their
// "index" (generate / build-prefs outputs).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

// The file's bytes ("" when it cannot be read).
inline std::string slurp(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// The non-empty lines, in order.
inline std::vector<std::string> lines_of(const std::filesystem::path& p) {
    std::vector<std::string> out;
    std::ifstream in(p);
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) out.push_back(line);
    return out;
}

// "index" -> the record's line, for files whose records finish in any order.
inline std::map<int64_t, std::string> records_by_index(const std::filesystem::path& p) {
    std::map<int64_t, std::string> out;
    for (const auto& line : lines_of(p)) out[nlohmann::json::parse(line).at("index").get<int64_t>()] = line;
    return out;
}
