// Helpers for the generation tests: fixture paths and a tiny byte-level BPE tokenizer that fits the fixture
// models' 512-token vocabulary (ids 0..2 special, 3..258 the 256 byte symbols, then a few merges).
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace medllm::generate::testing {

namespace fs = std::filesystem;

inline fs::path model_fixture(const std::string& name) {
    return fs::path(MEDLLM_FIXTURES_DIR) / "model" / name;
}

// GPT-2 bytes_to_unicode: the printable symbol that stands for each byte in a byte-level BPE vocabulary.
inline std::string byte_symbol(int byte) {
    int code = byte;
    if (!((byte >= 33 && byte <= 126) || (byte >= 161 && byte <= 172) || (byte >= 174 && byte <= 255))) {
        int k = 0;
        for (int b = 0; b < byte; ++b)
            if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))) ++k;
        code = 256 + k;
    }
    std::string out;
    if (code < 0x80) {
        out += static_cast<char>(code);
    } else {
        out += static_cast<char>(0xC0 | (code >> 6));
        out += static_cast<char>(0x80 | (code & 0x3F));
    }
    return out;
}

// Writes vocab.json, merges.txt and tokenizer_config.json (with added tokens and a chat template) into `dir`.
inline void write_tiny_tokenizer(const fs::path& dir) {
    fs::create_directories(dir);
    nlohmann::json vocab;
    for (int b = 0; b < 256; ++b) vocab[byte_symbol(b)] = 3 + b;
    const std::vector<std::pair<std::string, std::string>> merges = {
        {byte_symbol(' '), "t"}, {"h", "e"}, {byte_symbol(' ') + "t", "he"}, {"i", "n"}, {"e", "r"}};
    int next = 259;
    std::ofstream m(dir / "merges.txt");
    m << "#version: 0.2\n";
    for (const auto& [a, b] : merges) {
        vocab[a + b] = next++;
        m << a << " " << b << "\n";
    }
    std::ofstream(dir / "vocab.json") << vocab.dump();
    nlohmann::json cfg;
    cfg["added_tokens_decoder"] = {
        {"0", {{"content", "<|im_end|>"}, {"special", true}}},
        {"1", {{"content", "<|im_start|>"}, {"special", true}}},
        {"2", {{"content", "<|endoftext|>"}, {"special", true}}},
    };
    cfg["eos_token"]     = "<|endoftext|>";
    cfg["chat_template"] = "(ChatML)";
    std::ofstream(dir / "tokenizer_config.json") << cfg.dump(2);
}

// A model folder: the fixture's config + weights, plus the tiny tokenizer.
inline fs::path make_model_dir(const std::string& fixture, const fs::path& dir) {
    fs::remove_all(dir);
    fs::create_directories(dir);
    for (const char* f : {"config.json", "model.safetensors"}) fs::copy_file(model_fixture(fixture) / f, dir / f);
    write_tiny_tokenizer(dir);
    return dir;
}

}  // namespace medllm::generate::testing

#include <torch/torch.h>

#include "medllm/model/qwen2.h"

namespace medllm::generate::testing {

// The untied fixture model with every lm_head row but the printable ASCII byte tokens (ids 35..129) zeroed, so its
// greedy text is readable ASCII; saved with the tiny tokenizer. `context` overrides max_position_embeddings
// (RoPE does not depend on it) so long prompts fit.
inline fs::path make_printable_model_dir(const fs::path& dir, int64_t context = 0) {
    fs::remove_all(dir);
    auto model = model::Qwen2ForCausalLM::from_pretrained(model_fixture("qwen2-tiny-untied").string(), at::kFloat);
    {
        at::NoGradGuard no_grad;
        auto& w = model->lm_head->weight;
        w.narrow(0, 0, 35).zero_();
        w.narrow(0, 130, w.size(0) - 130).zero_();
    }
    model->save_pretrained(dir.string());
    if (context > 0) {
        nlohmann::json cfg             = nlohmann::json::parse(std::ifstream(dir / "config.json"));
        cfg["max_position_embeddings"] = context;
        std::ofstream(dir / "config.json") << cfg.dump(2);
    }
    write_tiny_tokenizer(dir);
    return dir;
}

}  // namespace medllm::generate::testing
