// merge's resume checks what it keeps: a kept shard with a changed byte is written again, so the result equals a
// clean run's; and the output may not be one of the inputs.
#include <gtest/gtest.h>

#include <fstream>

#include "medllm/core/error.h"
#include "medllm/peft/adapter.h"
#include "peft/peft_test_util.h"
#include "support/run_medllm.h"

namespace {

namespace fs = std::filesystem;
using peft_test::TempDir;
using namespace medllm;

std::string read_all(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Finding 2: resume used to keep a shard whose size matched its record, so a corrupted byte inside survived.
TEST(MergeResume, AKeptShardWithAChangedByteIsWrittenAgain) {
    TempDir tmp;
    const uint64_t shard = 20'000;
    peft::merge_adapter_checkpoint(peft_test::tiny_model(), peft_test::tiny_adapter(), tmp.path / "whole", shard);
    const fs::path out = tmp.path / "resumed";
    EXPECT_THROW(peft::merge_adapter_checkpoint(peft_test::tiny_model(), peft_test::tiny_adapter(), out, shard,
                                                [](int64_t done, int64_t total, uint64_t) {
                                                    if (done == total * 2 / 3) throw std::runtime_error("interrupted");
                                                }),
                 std::runtime_error);
    const fs::path kept = out / ".model-shard-0.safetensors";
    ASSERT_TRUE(fs::exists(kept));
    std::string bytes = read_all(kept);
    bytes[bytes.size() - 3] ^= 0x40;  // inside the last tensor's data: same size, same header
    std::ofstream(kept, std::ios::binary | std::ios::trunc) << bytes;

    peft::merge_adapter_checkpoint(peft_test::tiny_model(), peft_test::tiny_adapter(), out, shard);
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(tmp.path / "whole")) names.push_back(entry.path().filename());
    ASSERT_GT(names.size(), 2u);
    for (const auto& name : names) EXPECT_EQ(read_all(out / name), read_all(tmp.path / "whole" / name)) << name;
    for (const auto& entry : fs::directory_iterator(out))
        EXPECT_TRUE(fs::exists(tmp.path / "whole" / entry.path().filename())) << "left behind: " << entry.path();
}

// Finding 3: an output that is the model or the adapter folder (also through a symlink) is refused.
TEST(MergeResume, OutputThatIsAnInputIsRefused) {
    TempDir tmp;
    fs::create_directory_symlink(peft_test::tiny_model(), tmp.path / "model_link");
    fs::create_directory_symlink(peft_test::tiny_adapter(), tmp.path / "adapter_link");
    for (const fs::path& out : {tmp.path / "model_link", tmp.path / "adapter_link"}) {
        const auto r = run_medllm("merge --model " + peft_test::tiny_model().string() + " --adapter " +
                                  peft_test::tiny_adapter().string() + " --output " + out.string());
        EXPECT_EQ(r.exit_code, 2) << r.output;
        EXPECT_NE(r.output.find("is the input"), std::string::npos) << r.output;
    }
}

}  // namespace
