// The shared test data outside the tree (the Qwen2.5 tokenizer, IgakuQA): where tests find it, and one line naming
// what is missing when it is not there. It is read where it lies, never copied into the tree.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

// The environment variable MEDLLM_SHARED_DIR when set, else the folder compiled in (the CMake cache variable of the
// same name, by default ../shared beside the clone).
inline std::filesystem::path shared_dir() {
    const char* env = std::getenv("MEDLLM_SHARED_DIR");
    return env && *env ? std::filesystem::path(env) : std::filesystem::path(MEDLLM_DEFAULT_SHARED_DIR);
}

// `relative` inside the shared folder. When it does not exist this throws, and GoogleTest fails the test that asked
// with the message (a test that needs the data must not pass, or skip, without it).
inline std::filesystem::path shared_path(const std::string& relative) {
    const std::filesystem::path path = shared_dir() / relative;
    std::error_code ec;
    if (!std::filesystem::exists(path, ec))
        throw std::runtime_error("missing shared test data " + path.string() +
                                 ": point the environment variable MEDLLM_SHARED_DIR at the shared/ folder (default " +
                                 MEDLLM_DEFAULT_SHARED_DIR + ")");
    return path;
}
