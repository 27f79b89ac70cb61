// Atomic checkpoint folders: the marker decides completeness, a failed write keeps the previous checkpoint and
// says so, leftovers of a killed write are removed, retention keeps the newest K.
#include <gtest/gtest.h>

#include <fstream>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/train/checkpoint.h"
#include "support/file_limit.h"
#include "train_test_util.h"

using namespace medllm::train;
namespace fs = std::filesystem;

class CheckpointTest : public test::TrainTempDir {};

TEST_F(CheckpointTest, OnlyFoldersWithTheMarkerCount) {
    write_checkpoint(dir, 5, [](const fs::path& d) { medllm::write_file_atomic(d / "a", "x"); });
    fs::create_directories(dir / "checkpoint-9");  // a folder without the marker (copied by hand, cut short)
    fs::create_directories(dir / "checkpoint-7.tmp");
    ASSERT_TRUE(find_latest_checkpoint(dir));
    EXPECT_EQ(find_latest_checkpoint(dir)->filename(), "checkpoint-5");
    EXPECT_EQ(read_bytes(dir / "checkpoint-5" / "a"), "x");
    write_checkpoint(dir, 6, [](const fs::path&) {});
    EXPECT_FALSE(fs::exists(dir / "checkpoint-7.tmp"));  // leftover of a killed write removed
    EXPECT_EQ(list_checkpoints(dir).size(), 2u);
}

TEST_F(CheckpointTest, AFailedWriteKeepsThePreviousCheckpointAndNamesIt) {
    write_checkpoint(dir, 1, [](const fs::path& d) { medllm::write_file_atomic(d / "a", "ok"); });
    try {
        ScopedFileSizeLimit limit(1000);
        write_checkpoint(dir, 2,
                         [](const fs::path& d) { medllm::write_file_atomic(d / "big", std::string(5000, 'x')); });
        FAIL() << "the write past the limit must fail";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("checkpoint-1"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "checkpoint-2"));
    EXPECT_FALSE(fs::exists(dir / "checkpoint-2.tmp"));
    EXPECT_EQ(find_latest_checkpoint(dir)->filename(), "checkpoint-1");
}

TEST_F(CheckpointTest, RetentionKeepsTheNewest) {
    for (int s : {10, 2, 30, 4}) write_checkpoint(dir, s, [](const fs::path&) {});
    apply_retention(dir, 2);
    const auto kept = list_checkpoints(dir);
    ASSERT_EQ(kept.size(), 2u);
    EXPECT_EQ(kept[0].filename(), "checkpoint-10");  // by step, not by name
    EXPECT_EQ(kept[1].filename(), "checkpoint-30");
    EXPECT_EQ(checkpoint_step("checkpoint-12x"), std::nullopt);
}

// Checksums: a changed byte, a hand-edited step, a truncated file — each named; --resume auto passes over the
// damaged checkpoint to the newest intact one.
namespace {
void flip_byte(const fs::path& file, std::size_t at) {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(at));
    char c = 0;
    f.get(c);
    f.seekp(static_cast<std::streamoff>(at));
    f.put(static_cast<char>(c ^ 0x01));
}
}  // namespace

TEST_F(CheckpointTest, ChecksumsNameTheDamagedFileAndAutoFallsBackToTheNewestIntactCheckpoint) {
    for (int step : {1, 2, 3})
        write_checkpoint(dir, step, [step](const fs::path& d) {
            fs::create_directories(d / "adapter");
            medllm::write_file_atomic(d / "adapter" / "adapter_model.safetensors", std::string(64, char('a' + step)));
            medllm::write_file_atomic(d / "trainer_state.json", "{\"step\": " + std::to_string(step) + "}\n");
        });
    EXPECT_TRUE(fs::exists(dir / "checkpoint-3" / "checksums.json"));
    EXPECT_NO_THROW(verify_checkpoint(dir / "checkpoint-3"));
    EXPECT_EQ(find_latest_intact_checkpoint(dir)->filename(), "checkpoint-3");

    flip_byte(dir / "checkpoint-3" / "adapter" / "adapter_model.safetensors", 17);  // one bit of one byte
    try {
        verify_checkpoint(dir / "checkpoint-3");
        FAIL() << "a changed byte must be found";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("adapter/adapter_model.safetensors"), std::string::npos) << e.what();
    }
    EXPECT_EQ(find_latest_intact_checkpoint(dir)->filename(), "checkpoint-2");

    medllm::write_file_atomic(dir / "checkpoint-2" / "trainer_state.json", "{\"step\": 7}\n");  // a hand edit
    EXPECT_THROW(verify_checkpoint(dir / "checkpoint-2"), medllm::Error);
    EXPECT_EQ(find_latest_intact_checkpoint(dir)->filename(), "checkpoint-1");

    fs::resize_file(dir / "checkpoint-1" / "adapter" / "adapter_model.safetensors", 10);  // cut short
    EXPECT_EQ(find_latest_intact_checkpoint(dir), std::nullopt);
}

TEST_F(CheckpointTest, RetentionNeverTouchesAnotherRunsCheckpoints) {
    for (int s : {1, 2, 3, 4}) write_checkpoint(dir, s, [](const fs::path&) {});
    // Checkpoints 1 and 3 belong to another run: they are neither counted nor deleted.
    apply_retention(dir, 1, [](const fs::path& d) { return *checkpoint_step(d) % 2 == 0; });
    std::vector<std::string> kept;
    for (const auto& c : list_checkpoints(dir)) kept.push_back(c.filename().string());
    EXPECT_EQ(kept, (std::vector<std::string>{"checkpoint-1", "checkpoint-3", "checkpoint-4"}));
}
