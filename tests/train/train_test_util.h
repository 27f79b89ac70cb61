// Helpers for the trainer tests: temporary folders, the fixture paths, a tiny cpt config.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "medllm/train/cpt.h"

namespace test {

inline std::filesystem::path fixtures() {
    return std::filesystem::path(MEDLLM_FIXTURES_DIR);
}

class TrainTempDir : public ::testing::Test {
protected:
    std::filesystem::path dir;
    void SetUp() override {
        dir =
            std::filesystem::temp_directory_path() / ("medllm_train_" + std::to_string(::getpid()) + "_" +
                                                      ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir);
        std::filesystem::create_directories(dir);
    }
    void TearDown() override { std::filesystem::remove_all(dir); }
    static std::string read_bytes(const std::filesystem::path& p) {
        std::ifstream in(p, std::ios::binary);
        return std::string(std::istreambuf_iterator<char>(in), {});
    }

    // A small Japanese-and-English corpus (JSONL) for the byte tokenizer.
    std::filesystem::path write_corpus(int documents = 40) {
        const auto path = dir / "corpus.jsonl";
        std::ofstream out(path);
        for (int i = 0; i < documents; ++i)
            out << "{\"text\": \"document " << i << ": the patient had a fever of " << (37 + i % 4)
                << " degrees and was treated with rest. 発熱と咳が続く場合は受診する。\"}\n";
        return path;
    }

    // Overrides for a tiny LoRA run on the fixture model (fp32, CPU).
    std::vector<std::string> tiny_overrides(const std::filesystem::path& corpus, const std::filesystem::path& out) {
        return {"model.path=" + (fixtures() / "model" / "qwen2-tiny-tied").string(),
                "model.tokenizer=" + (fixtures() / "train" / "byte-tokenizer").string(),
                "output=" + out.string(),
                "data.sources=[{path: " + corpus.string() + "}]",
                "data.eos_token=<|endoftext|>",
                "data.seq_len=64",
                "data.validation.fraction=0.1",
                "data.threads=1",
                "eval_guard.enabled=false",
                "lora.r=4",
                "lora.alpha=8",
                "lora.dropout=0.1",
                "lora.quantize_base=false",
                "optim.lr=0.01",
                "schedule.warmup_steps=1",
                "training.max_steps=6",
                "training.batch_size=2",
                "training.grad_accum=2",
                "training.logging_steps=1",
                "training.save_steps=3",
                "training.device=cpu",
                "training.activation_checkpointing=true"};
    }

    static medllm::train::CptConfig load(const std::vector<std::string>& overrides,
                                         std::vector<medllm::ResolvedEntry>* resolved) {
        medllm::ConfigSchema<medllm::train::CptConfig> s;
        medllm::train::add_cpt_fields(s);
        return s.load(medllm::ConfigSource{"", overrides}, resolved);
    }
};

}  // namespace test
