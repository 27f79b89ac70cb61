// `eval mcqa` sharded across processes: two Gloo processes write the same predictions and reports as
// one, and the shards a killed group leaves are completed by a rerun without scoring anything twice.
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "mcqa_test_util.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/shards.h"
#include "medllm/eval/mcqa_evaluator.h"
#include "medllm/generate/loglik.h"
#include "support/processes.h"
#include "support/run_medllm.h"

namespace {

namespace fs = std::filesystem;
using namespace medllm;
using eval::testing::mcqa_fixture_dir;
using eval::testing::mcqa_model_dir;
using eval::testing::mcqa_scratch;

const std::vector<std::string> kTasks = {"medqa-jp", "pubmedqa-jp", "mmmlu-medical"};

std::vector<std::string> mcqa_args(const fs::path& dir, const fs::path& out) {
    const fs::path cfg = dir / "tasks.yaml";
    if (!fs::exists(cfg))
        std::ofstream(cfg) << "tasks:\n"
                           << "  - {task: medqa-jp, data: " << (mcqa_fixture_dir() / "medqa.jsonl").string() << "}\n"
                           << "  - {task: pubmedqa-jp, data: " << (mcqa_fixture_dir() / "pubmedqa.jsonl").string()
                           << "}\n"
                           << "  - {task: mmmlu-medical, data: " << (mcqa_fixture_dir() / "mmmlu.csv").string()
                           << "}\n";
    return {"eval",     "mcqa",       "--tasks-config", cfg.string(), "--model",      mcqa_model_dir().string(),
            "--output", out.string(), "--scoring",      "both",       "--batch-size", "2",
            "--device", "cpu"};
}

std::string joined(const std::vector<std::string>& args) {
    std::string s;
    for (const auto& a : args) s += (s.empty() ? "" : " ") + a;
    return s;
}

std::vector<std::string> lines_of(const fs::path& file) {
    std::ifstream in(file);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

std::vector<std::string> sorted_lines(const fs::path& file) {
    auto lines = lines_of(file);
    std::sort(lines.begin(), lines.end());
    return lines;
}

// Runs the command as ranks 0 and 1 of a Gloo group on 127.0.0.1; returns their logs (both must exit 0).
std::vector<std::string> run_two_ranks(const std::vector<std::string>& args, const fs::path& logs) {
    const int port = free_port();
    std::vector<Proc> procs;
    for (int rank = 0; rank < 2; ++rank) {
        auto a = args;
        a.insert(a.end(), {"--world-size", "2", "--rank", std::to_string(rank), "--master-addr", "127.0.0.1",
                           "--master-port", std::to_string(port), "--backend", "gloo", "--dist-timeout", "20"});
        procs.push_back(Proc::start(a, {}, logs / ("rank" + std::to_string(rank) + ".log")));
    }
    std::vector<std::string> out;
    for (auto& p : procs) {
        EXPECT_TRUE(p.wait(60)) << "timed out: " << p.output();
        EXPECT_EQ(p.exit_code, 0) << p.output();
        out.push_back(p.output());
    }
    return out;
}

// Two Gloo processes share the questions of each task (both scorings) and rank 0 writes byte for byte the
// predictions one process writes, and the same reports: the option log-likelihoods do not depend on which
// questions share a call, and neither do the greedy answers of these prompts.
TEST(McqaShard, TwoProcessesWriteWhatOneProcessWrites) {
    const fs::path dir = mcqa_scratch("shard_two");
    fs::remove_all(dir);
    fs::create_directories(dir);

    const auto one = run_medllm(joined(mcqa_args(dir, dir / "one")));
    ASSERT_EQ(one.exit_code, 0) << one.output;
    const auto logs = run_two_ranks(mcqa_args(dir, dir / "two"), dir);
    ASSERT_EQ(logs.size(), 2u);
    if (HasFailure()) return;

    // The work was shared: medqa-jp has 4 questions to score, rank 0 took 2 (rank 1 logs warnings only).
    EXPECT_NE(logs[0].find("mcqa medqa-jp loglik: 4 questions, 0 saved, 4 to score, 2 on rank 0 of 2"),
              std::string::npos)
        << logs[0];
    EXPECT_NE(logs[0].find("mcqa mmmlu-medical generate: 3 questions, 0 saved, 3 to generate, 2 on rank 0 of 2"),
              std::string::npos)
        << logs[0];
    // Only rank 0 reports.
    EXPECT_NE(logs[0].find("average over 3 tasks"), std::string::npos) << logs[0];
    EXPECT_EQ(logs[1].find("average over"), std::string::npos) << logs[1];

    for (const auto& task : kTasks) {
        SCOPED_TRACE(task);
        const fs::path a = dir / "one" / "predictions" / (task + ".jsonl");
        const fs::path b = dir / "two" / "predictions" / (task + ".jsonl");
        EXPECT_EQ(read_text_file(b), read_text_file(a));
        EXPECT_EQ(read_json_file(JsonlRecordFile::sidecar_path(b)), read_json_file(JsonlRecordFile::sidecar_path(a)));
        EXPECT_TRUE(find_shards(b).empty()) << "shards left beside " << b;
    }
    EXPECT_EQ(read_json_file(dir / "two" / "report.json"), read_json_file(dir / "one" / "report.json"));
    EXPECT_EQ(read_text_file(dir / "two" / "report.md"), read_text_file(dir / "one" / "report.md"));

    // A one-process run stopped after 2 questions of each task (--limit 2) is completed by a group: the ranks share
    // what is left and the result is the one-process result (the saved records stay first in the file).
    auto limited = mcqa_args(dir, dir / "three");
    limited.insert(limited.end(), {"--limit", "2"});
    const auto partial = run_medllm(joined(limited));
    ASSERT_EQ(partial.exit_code, 0) << partial.output;
    const auto resumed = run_two_ranks(mcqa_args(dir, dir / "three"), dir);
    ASSERT_EQ(resumed.size(), 2u);
    EXPECT_NE(resumed[0].find("mcqa medqa-jp loglik: 4 questions, 2 saved, 2 to score, 1 on rank 0 of 2"),
              std::string::npos)
        << resumed[0];
    for (const auto& task : kTasks) {
        SCOPED_TRACE(task);
        const fs::path a = dir / "one" / "predictions" / (task + ".jsonl");
        const fs::path c = dir / "three" / "predictions" / (task + ".jsonl");
        EXPECT_EQ(sorted_lines(c), sorted_lines(a));
        EXPECT_TRUE(find_shards(c).empty()) << "shards left beside " << c;
    }
    EXPECT_EQ(read_json_file(dir / "three" / "report.json"), read_json_file(dir / "one" / "report.json"));
    fs::remove_all(dir);
}

// The model counted: how many questions were scored and generated.
class CountingBackend : public eval::McqaBackend {
public:
    explicit CountingBackend(eval::McqaBackend& inner) : inner_(inner) {}
    std::vector<std::vector<eval::ContinuationScore>> loglikelihood(
        const std::vector<eval::LoglikRequest>& requests) override {
        scored += static_cast<int64_t>(requests.size());
        return inner_.loglikelihood(requests);
    }
    std::vector<std::string> complete(const std::vector<std::string>& prompts,
                                      const eval::GenerationParams& params) override {
        generated += static_cast<int64_t>(prompts.size());
        return inner_.complete(prompts, params);
    }
    bool has_chat_template() const override { return inner_.has_chat_template(); }
    std::string model_name() const override { return inner_.model_name(); }
    nlohmann::json identity() const override { return inner_.identity(); }
    int64_t scored = 0, generated = 0;

private:
    eval::McqaBackend& inner_;
};

generate::McqaEngineBackend& backend() {
    static generate::McqaEngineBackend b(mcqa_model_dir(), [] {
        generate::LoadOptions o;
        o.device = "cpu";
        o.dtype  = "fp32";
        return o;
    }());
    return b;
}

void write_lines(const fs::path& file, const std::vector<std::string>& lines, const std::string& cut_line = "") {
    std::ofstream out(file, std::ios::trunc);
    for (const auto& l : lines) out << l << "\n";
    out << cut_line;  // a record cut mid-write (no newline)
}

// What a killed 2-process run leaves (the merged file with a record of an earlier run, each rank's shard with the
// records it finished, rank 1's last one cut mid-write) is folded in by a one-process rerun, which then scores and
// generates only what is missing and writes the file a fresh run writes.
TEST(McqaShard, KilledGroupsShardsAreCompletedByOneProcess) {
    const auto task = eval::builtin_mcqa_task("medqa-jp");
    const auto data = eval::load_mcqa_dataset(task, mcqa_fixture_dir() / "medqa.jsonl");
    ASSERT_EQ(data.questions.size(), 4u);
    const fs::path dir = mcqa_scratch("shard_killed");
    fs::remove_all(dir);
    eval::McqaOptions o;
    o.scoring    = eval::McqaScoring::both;
    o.batch_size = 2;

    o.output_dir = dir / "fresh";
    CountingBackend fresh_backend(backend());
    const auto fresh         = eval::evaluate_mcqa_task(task, data, fresh_backend, o);
    const fs::path fresh_one = dir / "fresh" / "predictions" / "medqa-jp.jsonl";
    const auto records       = lines_of(fresh_one);  // loglik 0..3, generate 0..3
    ASSERT_EQ(records.size(), 8u);
    ASSERT_NE(records[0].find("\"mode\":\"loglik\""), std::string::npos);
    ASSERT_NE(records[4].find("\"mode\":\"generate\""), std::string::npos);

    // An earlier run saved loglik 0; the group's todo was loglik 1, 2, 3 (rank 0: 1 and 3, rank 1: 2), then
    // generate 0..3 (rank 0: 0 and 2, rank 1: 1 and 3); rank 0 finished generate 0, rank 1 was killed writing
    // generate 1.
    const fs::path merged = dir / "killed" / "predictions" / "medqa-jp.jsonl";
    fs::create_directories(merged.parent_path());
    const std::string identity = read_text_file(JsonlRecordFile::sidecar_path(fresh_one));
    write_lines(merged, {records[0]});
    write_file_atomic(JsonlRecordFile::sidecar_path(merged), identity);
    const fs::path rank0 = shard_path(merged, 0, 2), rank1 = shard_path(merged, 1, 2);
    write_lines(rank0, {records[1], records[3], records[4]});
    write_lines(rank1, {records[2]}, records[5].substr(0, records[5].size() / 2));
    for (const auto& s : {rank0, rank1}) write_file_atomic(JsonlRecordFile::sidecar_path(s), identity);

    o.output_dir = dir / "killed";
    CountingBackend rerun_backend(backend());
    const auto rerun = eval::evaluate_mcqa_task(task, data, rerun_backend, o);
    EXPECT_EQ(rerun_backend.scored, 0) << "every log-likelihood was in the merged file or a shard";
    EXPECT_EQ(rerun_backend.generated, 3) << "generate 1 (cut), 2 and 3 were missing";
    EXPECT_EQ(read_text_file(merged), read_text_file(fresh_one));
    EXPECT_TRUE(find_shards(merged).empty());
    EXPECT_EQ(rerun.acc.correct, fresh.acc.correct);
    EXPECT_EQ(rerun.acc_norm.correct, fresh.acc_norm.correct);
    EXPECT_EQ(rerun.generate.correct, fresh.generate.correct);
    EXPECT_EQ(rerun.generate_unparsed, fresh.generate_unparsed);
    EXPECT_EQ(rerun.acc.n, 4);

    // A shard of another run (other scoring) is refused naming the shard and the key, before anything is scored.
    write_lines(merged, {records[0]});
    write_lines(rank1, {records[2]});
    auto other       = nlohmann::json::parse(identity);
    other["scoring"] = "loglik";
    write_file_atomic(JsonlRecordFile::sidecar_path(rank1), other.dump());
    CountingBackend refused_backend(backend());
    try {
        eval::evaluate_mcqa_task(task, data, refused_backend, o);
        FAIL() << "a shard of another run must be refused";
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find(rank1.filename().string()), std::string::npos) << what;
        EXPECT_NE(what.find("scoring"), std::string::npos) << what;
        EXPECT_NE(what.find("--overwrite"), std::string::npos) << what;
    }
    EXPECT_EQ(refused_backend.scored + refused_backend.generated, 0);
    fs::remove_all(dir);
}

}  // namespace
