// Checked file I/O: atomic writes, the resumable JSONL record file, JSON reading, hashing, output-vs-input guard.
#include <gtest/gtest.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "support/file_limit.h"

namespace medllm {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

class FilesTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("medllm_files_" + std::to_string(::getpid()) + "_" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }
    void put(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }
    std::string get(const fs::path& p) { return read_text_file(p); }
    fs::path dir_;
};

template <class F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "";
}

TEST_F(FilesTest, AtomicWriteReplacesWholeFileAndLeavesNoTemporary) {
    const fs::path p = dir_ / "sub" / "report.json";
    write_file_atomic(p, "first\n");
    write_file_atomic(p, "second\n");
    EXPECT_EQ(get(p), "second\n");
    EXPECT_FALSE(fs::exists(p.string() + ".tmp"));
}

TEST_F(FilesTest, AtomicWriteOnFullDiskThrowsAndKeepsTheOldFile) {
    const fs::path p = dir_ / "report.json";
    write_file_atomic(p, "old\n");
    const std::string big(64 * 1024, 'x');
    std::string message;
    {
        ScopedFileSizeLimit limit(4096);
        message = error_of([&] { write_file_atomic(p, big); });
    }
    EXPECT_NE(message.find(p.string() + ": write failed"), std::string::npos) << message;
    EXPECT_EQ(get(p), "old\n");  // the cut temporary never replaced it
    EXPECT_FALSE(fs::exists(p.string() + ".tmp"));
}

TEST_F(FilesTest, UncommittedWriterLeavesNothing) {
    const fs::path p = dir_ / "x.bin";
    {
        AtomicFileWriter w(p);
        w.write("abc");
    }
    EXPECT_FALSE(fs::exists(p));
    EXPECT_FALSE(fs::exists(p.string() + ".tmp"));
}

TEST_F(FilesTest, ReadJsonNamesFileLineAndColumn) {
    const fs::path p = dir_ / "config.json";
    put(p, "{\n  \"a\": 1,\n  \"b\": ]\n}\n");
    const std::string m = error_of([&] { read_json_file(p); });
    EXPECT_NE(m.find(p.string() + ":3:"), std::string::npos) << m;
    EXPECT_NE(m.find("invalid JSON"), std::string::npos) << m;
    EXPECT_NE(error_of([&] { read_json_file(dir_ / "missing.json"); }).find("missing.json: cannot open"),
              std::string::npos);
    EXPECT_NE(error_of([&] { read_json_file(dir_); }).find("is a directory"), std::string::npos);
    put(p, "{\"a\": [1, 2]}");
    EXPECT_EQ(read_json_file(p)["a"][1], 2);
}

TEST_F(FilesTest, JsonlResumesAndRepairsACutLastLine) {
    const fs::path p    = dir_ / "out.jsonl";
    const json identity = {{"input", "abc"}, {"options", {{"n", 4}}}};
    {
        JsonlRecordFile f(p, identity);
        EXPECT_TRUE(f.existing().empty());
        f.append({{"index", 0}});
        f.append({{"index", 1}});
        f.close();
    }
    {  // a killed run: half a line at the end
        std::ofstream(p, std::ios::binary | std::ios::app) << "{\"index\": 2, \"te";
    }
    JsonlRecordFile f(p, identity);
    ASSERT_EQ(f.existing().size(), 2u);
    EXPECT_TRUE(f.repaired_cut_line());
    EXPECT_EQ(f.existing()[1]["index"], 1);
    f.append({{"index", 2}});
    f.close();
    EXPECT_EQ(get(p), "{\"index\":0}\n{\"index\":1}\n{\"index\":2}\n");
}

TEST_F(FilesTest, JsonlRefusesAnotherRunsFileNamingTheKey) {
    const fs::path p = dir_ / "out.jsonl";
    {
        JsonlRecordFile f(p, {{"input", "abc"}, {"options", {{"n", 4}, {"seed", 1}}}});
        f.append({{"index", 0}});
        f.close();
    }
    const std::string m = error_of([&] {
        JsonlRecordFile f(p, {{"input", "abc"}, {"options", {{"n", 4}, {"seed", 2}}}}, false, "HINT");
    });
    EXPECT_NE(m.find("different run (options.seed: was 1, now 2); HINT"), std::string::npos) << m;
    // --overwrite starts over
    JsonlRecordFile f(p, {{"input", "abc"}, {"options", {{"n", 4}, {"seed", 2}}}}, /*overwrite=*/true);
    EXPECT_TRUE(f.existing().empty());
    EXPECT_EQ(fs::file_size(p), 0u);
}

// One writer at a time: a second run on the same output is refused before it reads, repairs or appends anything
// (it would cut the line the first is writing as a killed run's); the lock goes with the first file.
TEST_F(FilesTest, JsonlRefusesASecondWriterUntilTheFirstIsGone) {
    const fs::path p = dir_ / "out.jsonl";
    auto first       = std::make_unique<JsonlRecordFile>(p, json{{"run", 1}});
    first->append({{"index", 0}});
    std::ofstream(p, std::ios::app) << "{\"index\": 1, \"half";  // the first run is mid-line
    const std::string m = error_of([&] { JsonlRecordFile second(p, json{{"run", 1}}); });
    EXPECT_NE(m.find("out.jsonl: another process is writing it"), std::string::npos) << m;
    EXPECT_NE(read_text_file(p).find("\"half"), std::string::npos);  // not cut by the refused second writer
    first.reset();
    JsonlRecordFile again(p, json{{"run", 1}});  // the lock went with the first file: the cut line is repaired
    EXPECT_EQ(again.existing().size(), 1u);
}

TEST_F(FilesTest, JsonlRefusesRecordsWithoutARunRecordAndDamagedLines) {
    const fs::path p = dir_ / "out.jsonl";
    put(p, "{\"index\":0}\n");
    EXPECT_NE(error_of([&] { JsonlRecordFile f(p, {{"a", 1}}); }).find("no run record"), std::string::npos);
    put(p, "{\"index\":0}\nnot json\n{\"index\":1}\n");
    EXPECT_NE(error_of([&] { JsonlRecordFile f(p, nullptr); }).find("out.jsonl:2: not a JSON record"),
              std::string::npos);
}

TEST_F(FilesTest, JsonlAppendOnFullDiskThrows) {
    const fs::path p = dir_ / "out.jsonl";
    JsonlRecordFile f(p, nullptr);
    const std::string text(1000, 'y');
    std::string message;
    {
        ScopedFileSizeLimit limit(8192);
        message = error_of([&] {
            for (int i = 0; i < 100; ++i) f.append({{"index", i}, {"text", text}});
        });
    }
    EXPECT_NE(message.find("out.jsonl: write failed"), std::string::npos) << message;
}

TEST_F(FilesTest, HashesChangeWithContent) {
    const fs::path p = dir_ / "a.txt";
    put(p, "hello");
    EXPECT_EQ(hash_file(p), hash_bytes("hello"));
    EXPECT_EQ(hash_bytes("hello").size(), 16u);
    EXPECT_NE(hash_bytes("hello"), hash_bytes("hellp"));
    const json id = file_identity(p, true);
    EXPECT_EQ(id["size"], 5);
    EXPECT_EQ(id["xxh3"], hash_bytes("hello"));
    EXPECT_FALSE(file_identity(p, false).contains("xxh3"));
}

TEST_F(FilesTest, OutputThatIsAnInputIsRefused) {
    const fs::path in = dir_ / "x.txt";
    put(in, "data");
    fs::create_symlink(in, dir_ / "link.txt");
    fs::create_hard_link(in, dir_ / "hard.txt");
    EXPECT_THROW(check_output_not_input(in, {in}), UsageError);
    EXPECT_THROW(check_output_not_input(dir_ / "link.txt", {in}), UsageError);
    EXPECT_THROW(check_output_not_input(dir_ / "hard.txt", {in}), UsageError);
    EXPECT_THROW(check_output_not_input(dir_ / "." / "x.txt", {in}), UsageError);
    EXPECT_NO_THROW(check_output_not_input(dir_ / "y.txt", {in}));
    EXPECT_EQ(get(in), "data");
}

TEST(JsonDifference, NamesTheFirstDifferingKey) {
    EXPECT_EQ(describe_json_difference({{"a", 1}}, {{"a", 1}}), "");
    EXPECT_EQ(describe_json_difference({{"a", {{"b", 1}}}}, {{"a", {{"b", 2}}}}), "a.b: was 1, now 2");
    EXPECT_EQ(describe_json_difference({{"a", 1}}, {{"a", 1}, {"c", true}}), "c: not recorded before, now true");
    EXPECT_EQ(describe_json_difference({{"a", 1}, {"c", 2}}, {{"a", 1}}), "c: was 2, now not given");
}

TEST_F(FilesTest, IdentitiesRecordUnixTimeNotTheLibrarysFileClock) {
    const auto p = dir_ / "stamped.txt";
    write_file_atomic(p, "x");
    const int64_t now_ns = static_cast<int64_t>(std::time(nullptr)) * 1000000000LL;
    const int64_t m      = unix_mtime_ns(p);
    // libstdc++'s file clock counts from 2174 (negative numbers today); Unix time is within a minute of now.
    EXPECT_GT(m, now_ns - 60LL * 1000000000LL);
    EXPECT_LT(m, now_ns + 60LL * 1000000000LL);
    EXPECT_EQ(file_identity(p, false)["mtime_ns"].get<int64_t>(), m);
    EXPECT_THROW(unix_mtime_ns(dir_ / "absent"), Error);
}

}  // namespace
}  // namespace medllm
