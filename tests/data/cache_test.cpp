// The token cache: exact tokens, validation policy, reuse/rebuild rules, an interrupted build never looks complete.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <thread>

#include <gtest/gtest.h>

#include "data_test_util.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/data/guard.h"
#include "medllm/data/token_cache.h"
#include "medllm/text/tokenizer.h"
#include "support/file_limit.h"

namespace {

using namespace medllm::data;
namespace fs = std::filesystem;

class CacheTest : public test::TempDir {};

TEST_F(CacheTest, TokensAreTheTokenizersPlusEosForJsonlTextAndLines) {
    write("in/a.jsonl", "{\"text\": \"心窩部痛で来院した。\"}\n{\"body\": \"x\", \"text\": \"Hello, world\"}\n");
    write("in/notes/b.md", "# 所見\n腹部は平坦、軟。\n");
    write("lines.txt", "一行目の文書。\n\n二行目の文書。\n");
    auto o = test::options(dir, {{"in"}, {"lines.txt", 1.0, "lines"}});
    auto r = build_token_cache(dir / "cache", o);
    EXPECT_FALSE(r.reused);
    EXPECT_EQ(r.documents, 5);
    TokenCache cache(dir / "cache");
    ASSERT_EQ(cache.num_documents(), 5u);
    const auto& tok                      = test::tokenizer();
    const std::vector<std::string> texts = {"心窩部痛で来院した。", "Hello, world", "# 所見\n腹部は平坦、軟。\n",
                                            "一行目の文書。", "二行目の文書。"};
    const std::vector<uint32_t> lines = {1, 2, 0, 1, 3};
    int64_t total                     = 0;
    for (size_t i = 0; i < texts.size(); ++i) {
        auto want = tok.encode(texts[i]);
        want.push_back(*tok.token_to_id("<|endoftext|>"));
        const auto& d = cache.document(i);
        ASSERT_EQ(d.length, want.size()) << texts[i];
        EXPECT_EQ(std::vector<int32_t>(cache.tokens(i), cache.tokens(i) + d.length), want) << texts[i];
        EXPECT_EQ(d.line, lines[i]);
        total += d.length;
    }
    EXPECT_EQ(r.tokens, total);
    EXPECT_EQ(cache.num_tokens(), uint64_t(total));
    EXPECT_EQ(cache.file_source(cache.document(4).file), 1u);
}

// A `format: lines` corpus holding an exam question written over lines (stem, then one choice per line): each
// line alone is a document and holds too little of the question (112A1's stem is 11 of its 32 n-grams), so the
// question used to enter the cache; the guard now checks runs of lines and flags the stem and every choice line.
TEST_F(CacheTest, GuardCatchesAQuestionWrittenOverLinesOfALinesFile) {
    write("lines.txt",
          "急性虫垂炎は若年者に多い腹部救急疾患である。\n"
          "高アンモニア血症をきたす疾患はどれか。\n"
          "a　Gaucher病\n"
          "b　von Gierke病\n"
          "c　Hurler症候群\n"
          "d　メープルシロップ尿症\n"
          "e　オルニチントランスカルバミラーゼ欠損症\n"
          "\n"
          "血液培養は抗菌薬投与前に2セット採取する。\n");
    const auto guard = ContaminationGuard::from_igakuqa(shared_path("igakuqa_data"), {2018}, {});
    auto o           = test::options(dir, {{"lines.txt", 1.0, "lines"}});
    o.guard          = &guard;
    o.guard_action   = GuardAction::drop;
    const auto r     = build_token_cache(dir / "cache", o);
    EXPECT_EQ(r.flagged, 6);
    EXPECT_EQ(r.dropped, 6);
    EXPECT_EQ(r.documents, 2);  // the two ordinary lines
    const auto report = nlohmann::json::parse(std::ifstream(dir / "cache" / "guard_report.json"));
    ASSERT_EQ(report["documents"].size(), 6u);
    for (size_t i = 0; i < 6; ++i) {
        EXPECT_EQ(report["documents"][i]["line"], i + 2);
        EXPECT_EQ(report["documents"][i]["matches"][0]["problem_id"], "112A1");
    }
    o.guard_action  = GuardAction::refuse;
    o.force_rebuild = true;
    try {
        build_token_cache(dir / "cache2", o);
        FAIL() << "the question entered the cache";
    } catch (const medllm::UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("lines.txt:2: 112A1"), std::string::npos) << e.what();
    }
}

TEST_F(CacheTest, InvalidRecordsAreCountedOrNamedWithFileAndLine) {
    write("c.jsonl",
          "{\"text\": \"ok\"}\n{broken\n[1, 2]\n{\"title\": \"no text\"}\n{\"text\": 5}\n{\"text\": \"  \\u3000 \"}\n"
          "{\"text\": \"\xff\xfe\"}\n{\"text\": \"also ok\"}\n");
    auto o = test::options(dir, {{"c.jsonl"}});
    auto r = build_token_cache(dir / "cache", o);
    EXPECT_EQ(r.documents, 2);
    EXPECT_EQ(r.skipped.at("malformed JSON"), 1);
    EXPECT_EQ(r.skipped.at("not a JSON object"), 1);
    EXPECT_EQ(r.skipped.at("missing text field"), 1);
    EXPECT_EQ(r.skipped.at("text field is not a string"), 1);
    EXPECT_EQ(r.skipped.at("empty document"), 1);
    EXPECT_EQ(r.skipped.at("invalid UTF-8"), 1);
    o.on_invalid = InvalidPolicy::error;
    try {
        build_token_cache(dir / "cache2", o);
        FAIL() << "no error";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("c.jsonl:2: malformed JSON"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(dir / "cache2" / "manifest.json"));
}

TEST_F(CacheTest, RerunReusesTouchKeepsChangesRebuild) {
    write("c.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
    auto o = test::options(dir, {{"c.jsonl"}});
    EXPECT_FALSE(build_token_cache(dir / "cache", o).reused);
    auto again = build_token_cache(dir / "cache", o);
    EXPECT_TRUE(again.reused);
    EXPECT_EQ(again.documents, 2);
    // Same content, new mtime: re-hashed, still reused.
    fs::last_write_time(dir / "c.jsonl", fs::last_write_time(dir / "c.jsonl") + std::chrono::seconds(5));
    EXPECT_TRUE(build_token_cache(dir / "cache", o).reused);
    // Same size, new content.
    write("c.jsonl", "{\"text\": \"won\"}\n{\"text\": \"two\"}\n");
    auto changed = build_token_cache(dir / "cache", o);
    EXPECT_FALSE(changed.reused);
    EXPECT_NE(changed.rebuild_reason.find("file changed (content)"), std::string::npos) << changed.rebuild_reason;
    // A setting that changes tokens.
    o.append_eos = false;
    auto setting = build_token_cache(dir / "cache", o);
    EXPECT_FALSE(setting.reused);
    EXPECT_NE(setting.rebuild_reason.find("eos"), std::string::npos) << setting.rebuild_reason;
    // A new file in a folder source.
    write("d/x.txt", "x");
    o.sources = {{"d"}};
    build_token_cache(dir / "cache", o);
    write("d/y.txt", "y");
    auto added = build_token_cache(dir / "cache", o);
    EXPECT_FALSE(added.reused);
    EXPECT_NE(added.rebuild_reason.find("corpus files changed"), std::string::npos) << added.rebuild_reason;
    // A damaged shard.
    EXPECT_TRUE(build_token_cache(dir / "cache", o).reused);
    fs::resize_file(dir / "cache" / "tokens-00000.u32", 4);
    auto damaged = build_token_cache(dir / "cache", o);
    EXPECT_FALSE(damaged.reused);
    EXPECT_NE(damaged.rebuild_reason.find("tokens-00000.u32"), std::string::npos) << damaged.rebuild_reason;
}

// One token changed to another valid id keeps every size right; the checksums written after the shards catch it:
// opening the cache names the shard, and the next build rebuilds it to the original tokens.
TEST_F(CacheTest, AChangedTokenIsCaughtByTheChecksumAndRebuilt) {
    write("c.jsonl", "{\"text\": \"one two three\"}\n{\"text\": \"four\"}\n");
    auto o = test::options(dir, {{"c.jsonl"}});
    ASSERT_FALSE(build_token_cache(dir / "cache", o).reused);
    std::vector<uint32_t> before;
    {
        TokenCache c(dir / "cache");
        before.assign(c.tokens(0), c.tokens(0) + c.document(0).length);
    }
    const fs::path shard = dir / "cache" / "tokens-00000.u32";
    {
        std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
        uint32_t t = 0;
        f.read(reinterpret_cast<char*>(&t), sizeof t);
        t = t == 100 ? 101 : 100;  // another id well inside the vocabulary
        f.seekp(0);
        f.write(reinterpret_cast<const char*>(&t), sizeof t);
    }
    try {
        TokenCache c(dir / "cache");
        FAIL() << "opened a cache whose shard changed";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("tokens-00000.u32: content does not match"), std::string::npos)
            << e.what();
    }
    const auto rebuilt = build_token_cache(dir / "cache", o);
    EXPECT_FALSE(rebuilt.reused);
    EXPECT_NE(rebuilt.rebuild_reason.find("checksum"), std::string::npos) << rebuilt.rebuild_reason;
    TokenCache c(dir / "cache");
    EXPECT_EQ(std::vector<uint32_t>(c.tokens(0), c.tokens(0) + c.document(0).length), before);
    EXPECT_TRUE(build_token_cache(dir / "cache", o).reused);
}

TEST_F(CacheTest, AnInterruptedBuildNeverLooksComplete) {
    std::string big;
    for (int i = 0; i < 2000; ++i) big += "{\"text\": \"文書" + std::to_string(i) + "の本文です。\"}\n";
    write("c.jsonl", big);
    auto o = test::options(dir, {{"c.jsonl"}});
    ASSERT_FALSE(build_token_cache(dir / "cache", o).reused);
    o.append_eos = false;  // forces a rebuild, which fails part-way (the disk is "full")
    {
        ScopedFileSizeLimit limit(4096);
        EXPECT_THROW(build_token_cache(dir / "cache", o), medllm::Error);
    }
    EXPECT_FALSE(fs::exists(dir / "cache" / "manifest.json"));
    try {
        TokenCache c(dir / "cache");
        FAIL() << "opened an incomplete cache";
    } catch (const medllm::Error& e) {
        EXPECT_NE(std::string(e.what()).find("no token cache"), std::string::npos) << e.what();
    }
    auto r = build_token_cache(dir / "cache", o);
    EXPECT_FALSE(r.reused);
    EXPECT_EQ(r.rebuild_reason, "an earlier build did not finish");
    EXPECT_EQ(r.documents, 2000);
}

// Two builders sharing one cache folder (two `medllm cpt` runs, or cpt next to prepare-corpus): each takes the
// folder's lock through its own file descriptor, so they take turns: the cache is built once and the second one
// reuses it, instead of both rebuilding and colliding on tokens-00000.u32.tmp.
TEST_F(CacheTest, TwoBuildersOfOneFolderTakeTurnsAndBuildOnce) {
    std::string big;
    for (int i = 0; i < 3000; ++i) big += "{\"text\": \"症例" + std::to_string(i) + "は心窩部痛で来院した。\"}\n";
    write("c.jsonl", big);
    const auto cache = dir / "cache";
    std::optional<TokenCacheLock> held(std::in_place, cache);  // a third holder, so both builders start waiting
    // Each builder has its own tokenizer, as a second process would; loaded first, so both reach the cache at once.
    const auto second = medllm::text::Tokenizer::from_dir(test::tokenizer_dir());
    const auto build  = [&](const medllm::text::Tokenizer* t) {
        auto o      = test::options(dir, {{"c.jsonl"}});
        o.tokenizer = t;
        return build_token_cache(cache, o);
    };
    auto a = std::async(std::launch::async, build, &test::tokenizer());
    auto b = std::async(std::launch::async, build, second.get());
    EXPECT_EQ(a.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout) << "built past the lock";
    EXPECT_FALSE(fs::exists(cache / "manifest.json"));
    held.reset();
    const auto ra = a.get();
    const auto rb = b.get();
    EXPECT_EQ(int(ra.reused) + int(rb.reused), 1) << ra.rebuild_reason << " / " << rb.rebuild_reason;
    EXPECT_EQ(ra.documents, 3000);
    EXPECT_EQ(ra.documents, rb.documents);
    EXPECT_EQ(ra.tokens, rb.tokens);
    for (const auto& e : fs::directory_iterator(cache)) EXPECT_NE(e.path().extension(), ".tmp") << e.path();
    TokenCache c(cache);
    EXPECT_EQ(c.num_documents(), 3000u);
    EXPECT_EQ(int64_t(c.num_tokens()), ra.tokens);
    // The lock is free again, and a holder names itself for the next waiter.
    std::optional<TokenCacheLock> again(std::in_place, cache);
    EXPECT_FALSE(again->waited());
    EXPECT_EQ(medllm::read_text_file(cache / ".lock"), std::to_string(::getpid()) + "\n");
    auto waiter = std::async(std::launch::async, [&] { return TokenCacheLock(cache).waited(); });
    EXPECT_EQ(waiter.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
    again.reset();
    EXPECT_TRUE(waiter.get());
}

TEST_F(CacheTest, BadSourcesAreUsageErrors) {
    auto o = test::options(dir, {{"missing.jsonl"}});
    EXPECT_THROW(build_token_cache(dir / "cache", o), medllm::UsageError);
    write("empty/readme.csv", "x");
    o.sources = {{"empty"}};
    EXPECT_THROW(build_token_cache(dir / "cache", o), medllm::UsageError);
    write("a.jsonl", "{\"text\": \"a\"}\n");
    o.sources = {{"a.jsonl"}, {"*.jsonl"}};
    EXPECT_THROW(build_token_cache(dir / "cache", o), medllm::UsageError);
}

}  // namespace
