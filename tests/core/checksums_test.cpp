// Folder checksums: an intact folder verifies; a changed byte, a changed size, a missing file, a damaged manifest
// are each named; a folder without a manifest says so instead of passing as verified.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "medllm/core/checksums.h"
#include "medllm/core/files.h"

namespace medllm {
namespace {
namespace fs = std::filesystem;

class ChecksumsTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir = fs::temp_directory_path() / ("medllm_checksums_" + std::to_string(::getpid()) + "_" +
                                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir);
        fs::create_directories(dir / "sub");
        write_file_atomic(dir / "a.bin", std::string(1000, 'a'));
        write_file_atomic(dir / "sub" / "b.json", "{\"step\": 3}\n");
    }
    void TearDown() override { fs::remove_all(dir); }
    fs::path dir;
};

TEST_F(ChecksumsTest, AnIntactFolderVerifiesAndEachKindOfDamageIsNamed) {
    EXPECT_FALSE(verify_checksums(dir).has_manifest);  // nothing to verify yet: not "verified"
    const auto manifest = write_checksums(dir);
    EXPECT_EQ(manifest["files"].size(), 2u);
    EXPECT_TRUE(verify_checksums(dir).ok());
    EXPECT_TRUE(verify_checksums(dir).has_manifest);
    write_file_atomic(dir / "extra.txt", "not covered");  // files written after the manifest are not looked at
    EXPECT_TRUE(verify_checksums(dir).ok());

    write_file_atomic(dir / "sub" / "b.json", "{\"step\": 4}\n");  // same size, other content
    auto c = verify_checksums(dir);
    EXPECT_NE(c.problem.find("sub/b.json has changed content"), std::string::npos) << c.problem;
    write_file_atomic(dir / "sub" / "b.json", "{\"step\": 3}\n");
    EXPECT_TRUE(verify_checksums(dir).ok());

    fs::resize_file(dir / "a.bin", 999);
    c = verify_checksums(dir);
    EXPECT_NE(c.problem.find("a.bin has changed size"), std::string::npos) << c.problem;
    fs::remove(dir / "a.bin");
    c = verify_checksums(dir);
    EXPECT_NE(c.problem.find("a.bin is missing"), std::string::npos) << c.problem;

    write_file_atomic(dir / kChecksumsFile, "{not json");
    EXPECT_FALSE(verify_checksums(dir).ok());
}

TEST_F(ChecksumsTest, TheDigestNamesTheContentNotTheLocation) {
    const auto a         = checksums_digest(write_checksums(dir));
    const fs::path moved = dir.string() + "_moved";
    fs::remove_all(moved);
    fs::rename(dir, moved);
    EXPECT_EQ(checksums_digest(write_checksums(moved)), a);
    write_file_atomic(moved / "a.bin", std::string(1000, 'b'));
    EXPECT_NE(checksums_digest(write_checksums(moved)), a);
    fs::rename(moved, dir);
}

}  // namespace
}  // namespace medllm
