// Atomic checkpoint folders: the marker decides completeness, a failed write keeps the previous checkpoint and
// says so, leftovers of a killed write are removed, retention keeps the newest K.
#include <gtest/gtest.h>

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
