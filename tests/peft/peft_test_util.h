// Shared helpers for the peft tests: fixture paths, tensor comparison, temporary directories.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <initializer_list>
#include <random>
#include <string>

#include <torch/torch.h>

#include "medllm/io/safetensors.h"
#include "medllm/model/qwen2.h"

namespace peft_test {

namespace fs = std::filesystem;

inline fs::path fixtures() {
    return fs::path(MEDLLM_FIXTURES_DIR) / "peft";
}
inline fs::path tiny_model() {
    return fs::path(MEDLLM_FIXTURES_DIR) / "model" / "qwen2-tiny-untied";
}
inline fs::path tiny_adapter() {
    return fixtures() / "tiny-adapter";
}
inline fs::path pattern_adapter() {
    return fixtures() / "tiny-adapter-pattern";
}

inline at::Tensor fixture_tensor(const std::string& file, const std::string& name) {
    static std::map<std::string, std::shared_ptr<medllm::io::SafetensorsFile>> cache;
    auto& f = cache[file];
    if (!f) f = std::make_shared<medllm::io::SafetensorsFile>(fixtures() / file);
    return f->tensor(name).clone();
}

inline double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
    return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

#define EXPECT_CLOSE(a, b, tol)                                                  \
    do {                                                                         \
        auto _a = (a);                                                           \
        auto _b = (b);                                                           \
        ASSERT_EQ(_a.sizes(), _b.sizes());                                       \
        EXPECT_LE(peft_test::max_abs_diff(_a, _b), (tol)) << #a << " vs " << #b; \
    } while (0)

inline at::Tensor tiny_input_ids() {
    return fixture_tensor("tiny_logits.safetensors", "input_ids");
}

inline at::Tensor logits_of(medllm::model::Qwen2ForCausalLM& m, const at::Tensor& ids) {
    at::NoGradGuard no_grad;
    medllm::model::ForwardInputs in;
    in.input_ids = ids;
    return m.forward(in).to(at::kFloat);
}

// Expects `fn` to throw T whose message contains every string in `needles`, on one line.
template <typename T, typename Fn>
void expect_error(Fn fn, std::initializer_list<std::string> needles) {
    try {
        fn();
        ADD_FAILURE() << "no exception";
    } catch (const T& e) {
        std::string msg = e.what();
        for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "'" << n << "' not in: " << msg;
        EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    }
}

// A fresh directory under the system temp dir, removed at destruction.
struct TempDir {
    fs::path path;
    TempDir() {
        std::random_device rd;
        path = fs::temp_directory_path() / ("medllm_peft_" + std::to_string(rd()) + std::to_string(rd()));
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

}  // namespace peft_test
