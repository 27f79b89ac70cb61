// `medllm generate --input --output` sharded across processes: two Gloo processes on 127.0.0.1 write
// the records one process writes (one process appends them in finishing order, rank 0 folds the shards in index
// order, so they are compared as a set keyed by "index"), greedy and sampled; --prompt (stdout) is refused for a
// group before any rendezvous.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "generate/generate_test_util.h"
#include "medllm/core/error.h"
#include "medllm/core/shards.h"
#include "medllm/generate/generate_file.h"
#include "medllm/generate/load.h"
#include "support/processes.h"
#include "support/run_medllm.h"
#include "support/text_files.h"
#include "support/thread_group.h"

namespace {

namespace fs = std::filesystem;

// One thread per process, for the one-process runs too: two ranks on a 2-core machine with a thread per core each
// crawl, and every run computes with the same thread count.
const std::map<std::string, std::string> kOneThread{{"OMP_NUM_THREADS", "1"}};
namespace gt = medllm::generate::testing;
using nlohmann::json;

// Everything the suite writes, removed at its end.
fs::path scratch_root() {
    return fs::path(::testing::TempDir()) / ("gen_shard_" + std::to_string(::getpid()));
}

fs::path scratch(const std::string& name) {
    const fs::path p = scratch_root() / name;
    fs::remove_all(p);
    fs::create_directories(p);
    return p;
}

class GenerateShard : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        model_   = new fs::path(gt::make_printable_model_dir(scratch("model")));
        prompts_ = new fs::path(scratch("input") / "prompts.jsonl");
        std::ofstream in(*prompts_);
        // Mixed lengths: sequences finish at different steps and the batch refills with other neighbours.
        const char* texts[] = {"Once upon a time", "the", "In a hole in the ground there lived", "abc def",
                               "Hello, world",     "x",   "The quick brown fox jumps over",      "medical question:"};
        for (int i = 0; i < 8; ++i) in << json{{"prompt", texts[i]}, {"id", "p" + std::to_string(i)}}.dump() << "\n";
    }
    static void TearDownTestSuite() {
        fs::remove_all(scratch_root());
        delete model_;
        delete prompts_;
    }
    static fs::path* model_;
    static fs::path* prompts_;

    static std::vector<std::string> args(const fs::path& output, const std::vector<std::string>& decoding) {
        std::vector<std::string> a = {"generate", "--model",       model_->string(), "--input", prompts_->string(),
                                      "--output", output.string(), "--device",       "cpu",     "--max-new-tokens",
                                      "12"};
        a.insert(a.end(), decoding.begin(), decoding.end());
        return a;
    }
    static std::vector<std::string> rank_args(std::vector<std::string> a, int rank, int port) {
        for (const std::string& s : {std::string("--world-size"), std::string("2"), std::string("--rank"),
                                     std::to_string(rank), std::string("--master-addr"), std::string("127.0.0.1"),
                                     std::string("--master-port"), std::to_string(port), std::string("--backend"),
                                     std::string("gloo"), std::string("--dist-timeout"), std::string("20")})
            a.push_back(s);
        return a;
    }

    // One process into dir/one.jsonl and two into dir/two.jsonl; both must succeed.
    static void run_one_and_two(const fs::path& dir, const std::vector<std::string>& decoding) {
        Proc one = Proc::start(args(dir / "one.jsonl", decoding), kOneThread, dir / "one.log");
        ASSERT_TRUE(one.wait(60)) << one.output();
        ASSERT_EQ(one.exit_code, 0) << one.output();
        const int port = free_port();
        ASSERT_NE(port, 0);
        std::vector<Proc> two;
        for (int r = 0; r < 2; ++r)
            two.push_back(Proc::start(rank_args(args(dir / "two.jsonl", decoding), r, port), kOneThread,
                                      dir / ("two" + std::to_string(r) + ".log")));
        for (auto& p : two) {
            ASSERT_TRUE(p.wait(60)) << p.output();
            ASSERT_EQ(p.exit_code, 0) << p.output();
        }
    }
};
fs::path* GenerateShard::model_   = nullptr;
fs::path* GenerateShard::prompts_ = nullptr;

void expect_same_records(const fs::path& dir) {
    const auto one = records_by_index(dir / "one.jsonl"), two = records_by_index(dir / "two.jsonl");
    ASSERT_EQ(one.size(), 8u);
    EXPECT_EQ(two, one);
    // Rank 0 folded the shards in index order and removed them; the run identity is the same.
    std::vector<int64_t> order;
    for (const auto& line : lines_of(dir / "two.jsonl")) order.push_back(json::parse(line)["index"]);
    EXPECT_EQ(order, (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7}));
    EXPECT_TRUE(medllm::find_shards(dir / "two.jsonl").empty());
    EXPECT_EQ(slurp(dir / "two.jsonl.run.json"), slurp(dir / "one.jsonl.run.json"));
    // Each rank ran its half.
    const std::string log0 = slurp(dir / "two0.log");
    EXPECT_NE(log0.find("rank 0 of 2: 4 of the 8 prompts to do"), std::string::npos) << log0;
}

// --batch-size 3 (greedy) and 4 with -n 2 (sampled): one process decodes prompts of both ranks' shares side by
// side, each rank only its own, so the batches differ; the records must not.
TEST_F(GenerateShard, TwoProcessesWriteTheRecordsOfOneGreedy) {
    const fs::path dir = scratch("greedy");
    run_one_and_two(dir, {"--batch-size", "3"});
    expect_same_records(dir);
}

TEST_F(GenerateShard, TwoProcessesWriteTheRecordsOfOneSampled) {
    const fs::path dir = scratch("sampled");
    run_one_and_two(dir, {"--batch-size", "4", "-n", "2", "--temperature", "0.9", "--top-p", "0.95", "--seed", "7"});
    expect_same_records(dir);
    // The sampled records are not all alike (the comparison would pass vacuously with a constant model).
    std::set<std::string> texts;
    for (const auto& [i, line] : records_by_index(dir / "one.jsonl")) {
        const json record = json::parse(line);
        for (const auto& c : record["completions"]) texts.insert(c["text"].get<std::string>());
    }
    EXPECT_GT(texts.size(), 8u);
}

// Issue 24 §3: in bf16 with log-probabilities recorded, any dependence of a sequence's numbers on its batch
// neighbours shows (a last-bit difference in a logit changes the recorded log-probability, and bf16 rounding turns
// it into other sampled tokens within a few steps). Two processes, and one process at batch sizes 1, 3 and 8, write
// the records of the one-process run at batch size 4.
TEST_F(GenerateShard, SampledRecordsDoNotDependOnProcessesOrBatchSize) {
    const fs::path dir                      = scratch("sampled_bf16");
    const std::vector<std::string> decoding = {"-n",     "2",  "--temperature", "1.2",     "--top-p", "0.95",
                                               "--seed", "11", "--logprobs",    "--dtype", "bf16"};
    auto with_batch                         = [&](const std::string& batch) {
        auto d = decoding;
        d.insert(d.end(), {"--batch-size", batch});
        return d;
    };
    run_one_and_two(dir, with_batch("4"));
    expect_same_records(dir);
    const auto one = records_by_index(dir / "one.jsonl");
    for (const std::string batch : {"1", "3", "8"}) {
        const fs::path out = dir / ("batch" + batch + ".jsonl");
        Proc p             = Proc::start(args(out, with_batch(batch)), kOneThread, dir / ("batch" + batch + ".log"));
        ASSERT_TRUE(p.wait(60)) << p.output();
        ASSERT_EQ(p.exit_code, 0) << p.output();
        EXPECT_EQ(records_by_index(out), one) << "--batch-size " << batch;
    }
    std::set<std::string> texts;
    for (const auto& [i, line] : one) {
        const json record = json::parse(line);  // named: a range-for over a temporary's member would dangle
        for (const auto& c : record["completions"]) texts.insert(c["text"].get<std::string>());
    }
    EXPECT_GT(texts.size(), 8u);
}

TEST_F(GenerateShard, PromptModeIsRefusedForSeveralProcessesBeforeTheRendezvous) {
    const fs::path dir = scratch("prompt");
    const auto t0      = std::chrono::steady_clock::now();
    // Nobody listens on the port: joining would wait --dist-timeout (60 s) for rank 1.
    const auto r = run_medllm("generate --model " + model_->string() + " --prompt hello --device cpu --world-size 2 " +
                              "--rank 0 --master-addr 127.0.0.1 --master-port " + std::to_string(free_port()) +
                              " --backend gloo --dist-timeout 60");
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("2 processes share the prompts of --input FILE into --output FILE"), std::string::npos)
        << r.output;
    EXPECT_LT(s, 20.0);
    // Through torchrun's environment as well.
    const auto env = run_shell(
        "env WORLD_SIZE=2 RANK=1 LOCAL_RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port()) + " " +
        MEDLLM_BINARY + " generate --model " + model_->string() + " --prompt hello --device cpu 2>&1 </dev/null");
    EXPECT_EQ(env.exit_code, 2) << env.output;
    EXPECT_NE(env.output.find("--prompt runs in one process"), std::string::npos) << env.output;
}

TEST_F(GenerateShard, HelpDescribesTheSharing) {
    const auto r = run_medllm("generate --help");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    for (const char* s : {"--world-size", "--master-port", "--dist-timeout", "torchrun", ".rank<R>-of<N>.jsonl",
                          "--prompt runs in one process", "in input order"})
        EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
    EXPECT_EQ(r.output.find("--resume-world-size-change"), std::string::npos) << r.output;
}

// The library with ranks as threads (tests/support/thread_group.h): every rank's result counts the whole run
// (prompts, resumed, generated), its completions and on_record calls are its own share (k % 2 == rank of the
// prompts still to do), and a file two thread-ranks complete from a cut one-process file holds the full run.
TEST_F(GenerateShard, LibraryRanksCountTheWholeRunAndSeeTheirShare) {
    namespace g        = medllm::generate;
    const fs::path dir = scratch("library");
    g::LoadOptions lo;
    lo.device = "cpu";
    std::vector<g::LoadedModel> models;
    for (int r = 0; r < 2; ++r) models.push_back(g::load_model(*model_, lo));  // a model per rank, as processes
    const auto records = g::read_prompt_records(*prompts_, *models[0].tokenizer);
    ASSERT_EQ(records.size(), 8u);
    g::GenerateOptions gen;
    gen.max_new_tokens       = 8;
    gen.num_samples          = 2;
    gen.sampling.do_sample   = true;
    gen.sampling.temperature = 0.9;
    gen.seed                 = 11;
    gen.max_batch_size       = 3;
    auto file_options        = [&](const fs::path& out) {
        g::GenerateFileOptions f;
        f.output       = out;
        f.source       = "prompts.jsonl";
        f.log_progress = false;
        f.identity     = {{"test", "library"}};
        return f;
    };
    {
        g::Generator one(models[0].model, models[0].tokenizer, models[0].eos_token_ids);
        const auto r = g::generate_to_file(one, records, gen, file_options(dir / "one.jsonl"));
        ASSERT_EQ(r.generated, 8u);
    }
    // A killed one-process run: its first 3 records (finishing order) and its run record.
    const auto all = lines_of(dir / "one.jsonl");
    {
        std::ofstream cut(dir / "two.jsonl");
        for (int i = 0; i < 3; ++i) cut << all[static_cast<size_t>(i)] << "\n";
    }
    fs::copy_file(dir / "one.jsonl.run.json", dir / "two.jsonl.run.json");
    std::set<size_t> resumed;
    for (int i = 0; i < 3; ++i) resumed.insert(json::parse(all[static_cast<size_t>(i)])["index"].get<size_t>());
    std::vector<size_t> todo;  // what is left, in input order: rank r runs todo[k] for k % 2 == r
    for (size_t i = 0; i < 8; ++i)
        if (!resumed.count(i)) todo.push_back(i);

    ThreadGroup group(2);
    std::vector<g::GenerateFileResult> results(2);
    std::vector<std::vector<size_t>> seen(2);
    std::mutex m;
    const auto errors = group.run([&](int64_t rank) {
        g::Generator gen_r(models[static_cast<size_t>(rank)].model, models[static_cast<size_t>(rank)].tokenizer,
                           models[static_cast<size_t>(rank)].eos_token_ids);
        auto f      = file_options(dir / "two.jsonl");
        f.place     = group.place(rank);
        f.on_record = [&, rank](const g::PromptRecord& r, const std::vector<g::Completion>&) {
            std::lock_guard<std::mutex> lock(m);
            seen[static_cast<size_t>(rank)].push_back(r.index);
        };
        results[static_cast<size_t>(rank)] = g::generate_to_file(gen_r, records, gen, f);
    });
    ASSERT_EQ(errors, (std::vector<std::string>{"", ""}));
    for (size_t r = 0; r < 2; ++r) {
        EXPECT_EQ(results[r].prompts, 8u) << r;
        EXPECT_EQ(results[r].resumed, 3u) << r;
        EXPECT_EQ(results[r].generated, 5u) << r;
        std::vector<size_t> share;
        for (size_t k = r; k < todo.size(); k += 2) share.push_back(todo[k]);
        std::sort(seen[r].begin(), seen[r].end());
        EXPECT_EQ(seen[r], share) << r;
        EXPECT_EQ(results[r].completions.size(), share.size() * 2) << r;
    }
    // The cut records stay first (rank 0 appended the folded shards after them); as a set, the full run.
    EXPECT_EQ(records_by_index(dir / "two.jsonl"), records_by_index(dir / "one.jsonl"));
    const auto two = lines_of(dir / "two.jsonl");
    ASSERT_EQ(two.size(), 8u);
    EXPECT_EQ(std::vector<std::string>(two.begin(), two.begin() + 3),
              std::vector<std::string>(all.begin(), all.begin() + 3));
    EXPECT_TRUE(medllm::find_shards(dir / "two.jsonl").empty());

    // A group needs an output file to share.
    const auto no_file = group.run([&](int64_t rank) {
        g::Generator gen_r(models[0].model, models[0].tokenizer, models[0].eos_token_ids);
        auto f  = file_options({});
        f.place = group.place(rank);
        g::generate_to_file(gen_r, records, gen, f);
    });
    EXPECT_NE(no_file[0].find("several processes share the prompts only into an output file"), std::string::npos)
        << no_file[0];
}

}  // namespace
