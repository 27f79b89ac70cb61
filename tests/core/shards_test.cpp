// Sharded resumable records (core/shards.h) with ranks as threads: shards fold into the file one process writes,
// an earlier run's shards fold in first (any world size), duplicates and foreign identities are handled, and a
// rank that does not share the folder is told so.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/shards.h"
#include "support/text_files.h"
#include "support/thread_group.h"

namespace medllm {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

fs::path fresh_dir(const std::string& name) {
    const fs::path d = fs::path(testing::TempDir()) / ("shards_" + name);
    fs::remove_all(d);
    fs::create_directories(d);
    return d;
}

const json kIdentity = {{"run", "test"}};
std::string key_of(const json& r) {
    return std::to_string(r["i"].get<int>());
}
int64_t order_of(const json& r) {
    return r["i"].get<int64_t>();
}

// One process's way: records i = 0..n-1 appended in order.
std::string single_process_file(const fs::path& dir, int n) {
    ShardedRecords s(dir / "out.jsonl", kIdentity, false, "hint", ShardPlace{}, key_of, order_of);
    for (int i = 0; i < n; ++i) s.append({{"i", i}, {"v", i * i}});
    EXPECT_TRUE(s.finish().empty());
    return slurp(dir / "out.jsonl");
}

TEST(ShardPlace, OwnsEveryWorldSizeThItem) {
    ShardPlace p;
    p.rank       = 1;
    p.world_size = 3;
    EXPECT_FALSE(p.owns(0));
    EXPECT_TRUE(p.owns(1));
    EXPECT_TRUE(p.owns(4));
    EXPECT_TRUE(ShardPlace{}.owns(7));
    EXPECT_EQ(shard_path("/a/b/predictions.jsonl", 1, 4), fs::path("/a/b/predictions.rank1-of4.jsonl"));
}

TEST(ShardedRecords, ThreeRanksWriteWhatOneProcessWrites) {
    const fs::path one = fresh_dir("one"), three = fresh_dir("three");
    const std::string expected = single_process_file(one, 10);
    ThreadGroup group(3);
    std::vector<size_t> folded(3);
    const auto errors = group.run([&](int64_t rank) {
        ShardedRecords s(three / "out.jsonl", kIdentity, false, "hint", group.place(rank), key_of, order_of);
        EXPECT_TRUE(s.existing().empty());
        EXPECT_EQ(s.own_path(), shard_path(three / "out.jsonl", rank, 3));
        // Ranks finish out of order: rank 2 appends its share backwards.
        std::vector<int> mine;
        for (int i = 0; i < 10; ++i)
            if (group.place(rank).owns(static_cast<size_t>(i))) mine.push_back(i);
        if (rank == 2) std::reverse(mine.begin(), mine.end());
        for (int i : mine) s.append({{"i", i}, {"v", i * i}});
        folded[static_cast<size_t>(rank)] = s.finish().size();
    });
    for (const auto& e : errors) EXPECT_EQ(e, "");
    EXPECT_EQ(folded[0], 10u);  // rank 0 folds every rank's records
    EXPECT_EQ(folded[1], 0u);
    EXPECT_EQ(slurp(three / "out.jsonl"), expected);
    EXPECT_TRUE(find_shards(three / "out.jsonl").empty());
    EXPECT_EQ(slurp(JsonlRecordFile::sidecar_path(three / "out.jsonl")),
              slurp(JsonlRecordFile::sidecar_path(one / "out.jsonl")));
}

TEST(ShardedRecords, AKilledRunsShardsFoldInFirstUnderAnotherWorldSize) {
    const fs::path dir = fresh_dir("resume");
    // What a killed 2-process run left: rank 0's shard complete, rank 1's cut mid-line, plus a merged file.
    {
        JsonlRecordFile merged(dir / "out.jsonl", kIdentity);
        merged.append({{"i", 0}, {"v", 0}});
        merged.close();
        JsonlRecordFile r0(shard_path(dir / "out.jsonl", 0, 2), kIdentity);
        r0.append({{"i", 0}, {"v", 0}});  // folded before the shard was removed: counted once
        r0.append({{"i", 2}, {"v", 4}});
        r0.close();
        JsonlRecordFile r1(shard_path(dir / "out.jsonl", 1, 2), kIdentity);
        r1.append({{"i", 1}, {"v", 1}});
        r1.close();
        std::ofstream(shard_path(dir / "out.jsonl", 1, 2), std::ios::app) << R"({"i": 3, "v")";
    }
    ThreadGroup group(3);
    std::vector<std::set<int>> seen(3);
    const auto errors = group.run([&](int64_t rank) {
        ShardedRecords s(dir / "out.jsonl", kIdentity, false, "hint", group.place(rank), key_of, order_of);
        for (const auto& r : s.existing()) seen[static_cast<size_t>(rank)].insert(r["i"].get<int>());
        std::vector<int> todo;
        for (int i = 0; i < 6; ++i)
            if (!seen[static_cast<size_t>(rank)].count(i)) todo.push_back(i);
        for (size_t k = 0; k < todo.size(); ++k)
            if (group.place(rank).owns(k)) s.append({{"i", todo[k]}, {"v", todo[k] * todo[k]}});
        s.finish();
    });
    for (const auto& e : errors) EXPECT_EQ(e, "");
    for (const auto& s : seen) EXPECT_EQ(s, (std::set<int>{0, 1, 2}));  // every rank agrees on what is done
    std::vector<json> records;
    std::vector<size_t> lines;
    JsonlRecordFile::read_records(dir / "out.jsonl", records, lines);
    ASSERT_EQ(records.size(), 6u);
    std::map<int, int> v;
    for (const auto& r : records) v[r["i"].get<int>()] = r["v"].get<int>();
    for (int i = 0; i < 6; ++i) EXPECT_EQ(v[i], i * i);
    EXPECT_TRUE(find_shards(dir / "out.jsonl").empty());
}

TEST(ShardedRecords, AShardOfAnotherRunIsRefusedUnlessOverwrite) {
    const fs::path dir = fresh_dir("foreign");
    {
        JsonlRecordFile r1(shard_path(dir / "out.jsonl", 1, 2), {{"run", "other"}});
        r1.append({{"i", 1}});
    }
    try {
        ShardedRecords s(dir / "out.jsonl", kIdentity, false, "pass --overwrite", ShardPlace{}, key_of, order_of);
        FAIL() << "a shard of another run was folded in";
    } catch (const Error& e) {
        const std::string m = e.what();
        EXPECT_NE(m.find("out.rank1-of2.jsonl"), std::string::npos) << m;
        EXPECT_NE(m.find("run"), std::string::npos) << m;
        EXPECT_NE(m.find("pass --overwrite"), std::string::npos) << m;
    }
    ShardedRecords s(dir / "out.jsonl", kIdentity, /*overwrite=*/true, "hint", ShardPlace{}, key_of, order_of);
    EXPECT_TRUE(s.existing().empty());
    EXPECT_TRUE(find_shards(dir / "out.jsonl").empty());
}

TEST(ShardedRecords, ADamagedShardLineIsNamedByFileAndLine) {
    const fs::path dir = fresh_dir("damaged");
    {
        JsonlRecordFile r1(shard_path(dir / "out.jsonl", 1, 2), kIdentity);
        r1.append({{"i", 1}});
    }
    std::ofstream(shard_path(dir / "out.jsonl", 1, 2), std::ios::app) << "not json\n{\"i\": 3}\n";
    try {
        ShardedRecords s(dir / "out.jsonl", kIdentity, false, "hint", ShardPlace{}, key_of, order_of);
        FAIL() << "a damaged shard was folded in";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("out.rank1-of2.jsonl:2: not a JSON record"), std::string::npos)
            << e.what();
    }
    EXPECT_TRUE(fs::exists(shard_path(dir / "out.jsonl", 1, 2)));  // kept for the user to look at
}

TEST(ShardedRecords, ARankThatDoesNotSeeTheFolderIsTold) {
    const fs::path a = fresh_dir("node_a"), b = fresh_dir("node_b");
    ThreadGroup group(2);
    const auto errors = group.run([&](int64_t rank) {
        ShardedRecords s((rank == 0 ? a : b) / "out.jsonl", kIdentity, false, "hint", group.place(rank), key_of,
                         order_of);
        s.finish();
    });
    EXPECT_NE(errors[1].find("every rank sees"), std::string::npos) << errors[1];
}

TEST(ShardedRecords, ShardNamesAreRecognisedExactly) {
    const fs::path dir = fresh_dir("names");
    for (const char* name : {"out.rank0-of2.jsonl", "out.rank1-of2.jsonl", "out.rank1-of2.jsonl.run.json",
                             "out.rankx-of2.jsonl", "other.rank0-of2.jsonl", "out.jsonl", "out.rank3-of.jsonl"})
        std::ofstream(dir / name) << "";
    const auto found = find_shards(dir / "out.jsonl");
    ASSERT_EQ(found.size(), 2u);
    EXPECT_EQ(found[0].filename(), "out.rank0-of2.jsonl");
    EXPECT_EQ(found[1].filename(), "out.rank1-of2.jsonl");
}

}  // namespace
}  // namespace medllm
