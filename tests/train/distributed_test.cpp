// Data parallelism on c10d: the launch environment, the collectives (two Gloo ranks in one process), and `medllm
// cpt` run as two processes on 127.0.0.1 — equal to one process with twice the gradient accumulation, launched
// through torchrun's and Slurm's variables, resumed exactly, refusing another world size, stopping together on
// SIGTERM, and failing with the lost rank's name when one is SIGKILLed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <map>
#include <thread>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "generate/generate_test_util.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/shards.h"
#include "medllm/dist/distributed.h"
#include "medllm/io/safetensors.h"
#include "medllm/train/checkpoint.h"
#include "support/processes.h"
#include "support/run_medllm.h"
#include "support/shared_data.h"
#include "train_test_util.h"

using namespace medllm;
using dist::Distributed;
using dist::Launch;
using dist::LaunchFlags;
using dist::Reduce;
namespace fs = std::filesystem;
namespace gt = medllm::generate::testing;

namespace {

Launch local_launch(int64_t rank, int64_t world, int port, double timeout_s = 20) {
    LaunchFlags f;
    f.rank        = rank;
    f.world_size  = world;
    f.master_addr = "127.0.0.1";
    f.master_port = port;
    f.backend     = "gloo";
    f.timeout_s   = timeout_s;
    return dist::resolve_launch(f, env_of({}));
}

// One Gloo group of two ranks in this process, each joined on its own thread (each waits for the other at the
// rendezvous); a rank that could not join is null, with its error in `errors`.
std::vector<std::shared_ptr<Distributed>> two_gloo_ranks(std::vector<std::string>& errors) {
    const int port = free_port();
    std::vector<std::shared_ptr<Distributed>> group(2);
    errors.assign(2, port > 0 ? "" : "no free port");
    if (port == 0) return group;
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r)
        threads.emplace_back([&, r] {
            try {
                group[r] = Distributed::create(local_launch(r, 2, port), "cpu");
            } catch (const std::exception& e) {
                errors[r] = e.what();
            }
        });
    for (auto& t : threads) t.join();
    return group;
}

std::vector<nlohmann::json> read_jsonl(const fs::path& p) {
    std::vector<nlohmann::json> out;
    std::ifstream in(p);
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    return out;
}

// The same, skipping a line being written.
std::vector<nlohmann::json> read_jsonl_safe(const fs::path& p) {
    std::vector<nlohmann::json> out;
    std::ifstream in(p);
    for (std::string line; std::getline(in, line);) {
        const auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded()) out.push_back(j);
    }
    return out;
}

std::vector<fs::path> train_checkpoints(const fs::path& out) {
    return train::list_checkpoints(out);
}

std::map<std::string, at::Tensor> read_adapter(const fs::path& dir) {
    io::SafetensorsFile f(dir / "adapter_model.safetensors");
    std::map<std::string, at::Tensor> out;
    for (const auto& n : f.names()) out[n] = f.tensor(n).clone();
    return out;
}

}  // namespace

// ---------------------------------------------------------------- launch environment

TEST(DistributedLaunch, SlurmNodeListFirstHost) {
    EXPECT_EQ(dist::first_slurm_host("node[01-04,07],gpu5"), "node01");
    EXPECT_EQ(dist::first_slurm_host("a,b"), "a");
    EXPECT_EQ(dist::first_slurm_host("x[3]"), "x3");
    EXPECT_EQ(dist::first_slurm_host("rack1-[08-09]-ib"), "rack1-08-ib");
    EXPECT_EQ(dist::first_slurm_host("solo"), "solo");
    EXPECT_THROW(dist::first_slurm_host("node[01-04"), UsageError);
}

TEST(DistributedLaunch, TorchrunSlurmAndFlags) {
    const auto t = dist::resolve_launch({}, env_of({{"RANK", "3"},
                                                    {"WORLD_SIZE", "8"},
                                                    {"LOCAL_RANK", "1"},
                                                    {"LOCAL_WORLD_SIZE", "2"},
                                                    {"MASTER_ADDR", "10.0.0.5"},
                                                    {"MASTER_PORT", "29400"}}));
    EXPECT_EQ(t.rank, 3);
    EXPECT_EQ(t.world_size, 8);
    EXPECT_EQ(t.local_rank, 1);
    EXPECT_EQ(t.local_world_size, 2);
    EXPECT_EQ(t.master_addr, "10.0.0.5");
    EXPECT_EQ(t.master_port, 29400);
    EXPECT_EQ(t.source, "torchrun environment");

    const auto s = dist::resolve_launch({}, env_of({{"SLURM_PROCID", "5"},
                                                    {"SLURM_NTASKS", "8"},
                                                    {"SLURM_LOCALID", "1"},
                                                    {"SLURM_TASKS_PER_NODE", "4(x2)"},
                                                    {"SLURM_JOB_NODELIST", "gpu[07-08]"}}));
    EXPECT_EQ(s.rank, 5);
    EXPECT_EQ(s.world_size, 8);
    EXPECT_EQ(s.local_rank, 1);
    EXPECT_EQ(s.local_world_size, 4);
    EXPECT_EQ(s.master_addr, "gpu07");  // the first host; no MASTER_ADDR exported
    EXPECT_EQ(s.master_port, 29500);

    LaunchFlags f;
    f.rank        = 0;
    f.master_port = 1234;
    const auto o  = dist::resolve_launch(f, env_of({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}}));
    EXPECT_EQ(o.rank, 0);  // the flag wins over the environment
    EXPECT_EQ(o.world_size, 8);
    EXPECT_EQ(o.master_port, 1234);

    const auto none = dist::resolve_launch({}, env_of({}));
    EXPECT_EQ(none.world_size, 1);

    auto expect_usage = [](const LaunchFlags& fl, const std::map<std::string, std::string>& env,
                           const std::string& needle) {
        try {
            dist::resolve_launch(fl, env_of(env));
            ADD_FAILURE() << "accepted: " << needle;
        } catch (const UsageError& e) {
            EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        }
    };
    expect_usage({}, {{"RANK", "2"}, {"WORLD_SIZE", "2"}}, "rank 2");
    expect_usage({}, {{"RANK", "x"}, {"WORLD_SIZE", "2"}}, "RANK");
    expect_usage({}, {{"MASTER_PORT", "70000"}}, "port 70000");
    // Half a launch environment is refused, not run as one process.
    expect_usage({}, {{"RANK", "1"}}, "WORLD_SIZE is not");
    expect_usage({}, {{"WORLD_SIZE", "4"}}, "RANK is not");
    expect_usage({}, {{"SLURM_PROCID", "3"}}, "SLURM_NTASKS is not");
    EXPECT_EQ(dist::resolve_launch({}, env_of({{"SLURM_NTASKS", "4"}})).world_size, 1);  // an salloc shell
    LaunchFlags bad_backend;
    bad_backend.backend = "mpi";
    expect_usage(bad_backend, {}, "--backend");
}

// ---------------------------------------------------------------- collectives (two ranks, one process)

TEST(DistributedGroup, AllReduceBroadcastGatherOverTwoGlooRanks) {
    std::vector<std::string> errors;
    const auto group = two_gloo_ranks(errors);
    ASSERT_TRUE(group[0] && group[1]) << errors[0] << " | " << errors[1];
    EXPECT_EQ(group[0]->backend(), "gloo");

    // Rank r holds tensors filled with r + 1 (and a float64 and an int64 one); a 64-byte bucket limit forces
    // several buckets per dtype.
    std::vector<std::vector<at::Tensor>> t(2);
    for (int r = 0; r < 2; ++r)
        t[r] = {at::full({3, 4}, r + 1.0), at::full({5}, 10.0 * (r + 1)), at::full({2}, r + 1.0, at::kDouble),
                at::full({7}, int64_t{r + 1}, at::kLong), at::arange(20, at::kFloat) * (r + 1)};
    std::vector<double> scalars_sum, scalars_max, gathered;
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r)
        threads.emplace_back([&, r] {
            try {
                group[r]->all_reduce(t[r], Reduce::sum, 64);
                const auto s = group[r]->all_reduce_scalars({1.5 * (r + 1), double(r)}, Reduce::sum);
                const auto m = group[r]->all_reduce_scalars({double(r)}, Reduce::max);
                const auto g = group[r]->all_gather(100.0 + r);
                if (r == 0) {
                    scalars_sum = s;
                    scalars_max = m;
                    gathered    = g;
                }
                std::vector<at::Tensor> b{at::full({4}, 7.0 * (r + 1))};
                group[r]->broadcast(b, 1);
                t[r].push_back(b[0]);
                std::vector<at::Tensor> mean{at::full({3}, 2.0 * (r + 1))};
                group[r]->all_reduce(mean, Reduce::mean);
                t[r].push_back(mean[0]);
                group[r]->barrier();
            } catch (const std::exception& e) {
                errors[r] = e.what();
            }
        });
    for (auto& th : threads) th.join();
    ASSERT_EQ(errors[0] + errors[1], "");
    for (int r = 0; r < 2; ++r) {
        EXPECT_TRUE(t[r][0].equal(at::full({3, 4}, 3.0)));
        EXPECT_TRUE(t[r][1].equal(at::full({5}, 30.0)));
        EXPECT_TRUE(t[r][2].equal(at::full({2}, 3.0, at::kDouble)));
        EXPECT_TRUE(t[r][3].equal(at::full({7}, int64_t{3}, at::kLong)));
        EXPECT_TRUE(t[r][4].equal(at::arange(20, at::kFloat) * 3));
        EXPECT_TRUE(t[r][5].equal(at::full({4}, 14.0))) << "broadcast from rank 1";
        EXPECT_TRUE(t[r][6].equal(at::full({3}, 3.0))) << "mean";
    }
    EXPECT_EQ(scalars_sum, (std::vector<double>{4.5, 1.0}));
    EXPECT_EQ(scalars_max, (std::vector<double>{1.0}));
    EXPECT_EQ(gathered, (std::vector<double>{100.0, 101.0}));
}

TEST(DistributedGroup, RendezvousTimeoutNamesAddressAndMissingRank) {
    const int port  = free_port();
    const auto t0   = std::chrono::steady_clock::now();
    std::string msg = "(no error)";
    try {
        Distributed::create(local_launch(0, 3, port, 1.0), "cpu");  // ranks 1 and 2 never come
    } catch (const Error& e) {
        msg = e.what();
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(s, 10.0);
    EXPECT_NE(msg.find("127.0.0.1:" + std::to_string(port)), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank(s) 1, 2 of 3 did not arrive"), std::string::npos) << msg;
}

TEST(DistributedGroup, RanksWithDifferentWorldSizesAreNamedNotLeftWaiting) {
    // Rank 0 launched for 2 processes, rank 1 for 3: both stop within the timeout naming the two sizes, instead of
    // waiting for a rank 2 that never comes.
    const int port = free_port();
    std::string msg[2];
    std::vector<std::thread> threads;
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < 2; ++r)
        threads.emplace_back([&, r] {
            try {
                Distributed::create(local_launch(r, r == 0 ? 2 : 3, port, 20.0), "cpu");
                msg[r] = "(no error)";
            } catch (const Error& e) {
                msg[r] = e.what();
            }
        });
    for (auto& th : threads) th.join();
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 15.0);
    for (int r = 0; r < 2; ++r) {
        EXPECT_NE(msg[r].find("rank 1 was launched with world size 3, rank 0 with 2"), std::string::npos) << msg[r];
        EXPECT_NE(msg[r].find("--world-size"), std::string::npos) << msg[r];
    }
}

TEST(DistributedGroup, WorldSizeOneHasNoGroup) {
    auto launch    = local_launch(0, 1, 1);
    launch.backend = "auto";  // a named backend builds a group even for one process
    auto d         = Distributed::create(launch, "cpu");
    EXPECT_EQ(d->backend(), "none");
    std::vector<at::Tensor> t{at::ones({2})};
    d->all_reduce(t);
    d->barrier();
    EXPECT_TRUE(t[0].equal(at::ones({2})));
    EXPECT_EQ(d->all_gather(4.0), std::vector<double>{4.0});
}

// ---------------------------------------------------------------- medllm cpt as two processes

class DistributedCpt : public test::TrainTempDir {
protected:
    fs::path corpus;
    void SetUp() override {
        TrainTempDir::SetUp();
        corpus = write_corpus(48);
    }
    // The tiny run without dropout (each rank would draw other masks than one process), 4 optimizer steps.
    std::vector<std::string> args(const fs::path& out, int64_t grad_accum, std::vector<std::string> extra = {}) {
        std::vector<std::string> a{"cpt"};
        auto ov = tiny_overrides(corpus, out);
        ov.push_back("lora.dropout=0");
        ov.push_back("training.max_steps=4");
        ov.push_back("training.save_steps=2");
        ov.push_back("training.grad_accum=" + std::to_string(grad_accum));
        for (const auto& o : ov) {
            a.push_back("--set");
            a.push_back(o);
        }
        for (auto& e : extra) a.push_back(e);
        return a;
    }
    static std::map<std::string, std::string> torchrun_env(int rank, int port) {
        return {{"RANK", std::to_string(rank)}, {"WORLD_SIZE", "2"},          {"LOCAL_RANK", std::to_string(rank)},
                {"LOCAL_WORLD_SIZE", "2"},      {"MASTER_ADDR", "127.0.0.1"}, {"MASTER_PORT", std::to_string(port)},
                {"OMP_NUM_THREADS", "1"}};
    }
    static std::map<std::string, std::string> slurm_env(int rank, int port) {
        return {{"SLURM_PROCID", std::to_string(rank)},  {"SLURM_NTASKS", "2"},
                {"SLURM_LOCALID", std::to_string(rank)}, {"SLURM_JOB_NODELIST", "localhost"},
                {"MASTER_PORT", std::to_string(port)},   {"OMP_NUM_THREADS", "1"}};
    }
    // Two ranks; returns their exit codes (after at most `seconds`).
    std::vector<Proc> run_two(const std::vector<std::string>& a, bool slurm, const std::string& tag,
                              double seconds = 90) {
        const int port = free_port();
        std::vector<Proc> p;
        for (int r = 0; r < 2; ++r)
            p.push_back(Proc::start(a, slurm ? slurm_env(r, port) : torchrun_env(r, port),
                                    dir / (tag + "_rank" + std::to_string(r) + ".log")));
        for (auto& x : p) EXPECT_TRUE(x.wait(seconds)) << tag << " timed out\n" << x.output();
        return p;
    }
};

TEST_F(DistributedCpt, TwoProcessesEqualOneWithTwiceTheAccumulationAndResumeExactly) {
    // One process, grad_accum 4.
    Proc one = Proc::start(args(dir / "one", 4), {}, dir / "one.log");
    ASSERT_TRUE(one.wait(90));
    ASSERT_EQ(one.exit_code, 0) << one.output();
    // Two processes (torchrun's variables), grad_accum 2: the same rows per optimizer step.
    auto two = run_two(args(dir / "two", 2), false, "two");
    ASSERT_EQ(two[0].exit_code, 0) << two[0].output();
    ASSERT_EQ(two[1].exit_code, 0) << two[1].output();

    const auto m1 = read_jsonl(dir / "one" / "metrics.jsonl"), m2 = read_jsonl(dir / "two" / "metrics.jsonl");
    ASSERT_EQ(m1.size(), m2.size());
    int train_records = 0, eval_records = 0;
    for (size_t i = 0; i < m1.size(); ++i) {
        // fp32 sums in another order (two partial sums, then the all-reduce): relative 1e-5 on the loss and the
        // gradient norm; the measured differences are about 1e-7.
        if (m1[i].contains("loss")) {
            ++train_records;
            EXPECT_NEAR(m2[i]["loss"].get<double>(), m1[i]["loss"].get<double>(), 1e-5 * m1[i]["loss"].get<double>())
                << "step " << m1[i]["step"];
            EXPECT_NEAR(m2[i]["grad_norm"].get<double>(), m1[i]["grad_norm"].get<double>(),
                        1e-5 * m1[i]["grad_norm"].get<double>())
                << "step " << m1[i]["step"];
            EXPECT_EQ(m2[i]["tokens_seen"], m1[i]["tokens_seen"]);
            EXPECT_EQ(m2[i]["world_size"], 2);
        }
        if (m1[i].contains("eval_loss")) {  // every validation row once, split between the ranks
            ++eval_records;
            EXPECT_NEAR(m2[i]["eval_loss"].get<double>(), m1[i]["eval_loss"].get<double>(), 1e-6);
            EXPECT_EQ(m2[i]["eval_tokens"], m1[i]["eval_tokens"]);
        }
    }
    EXPECT_EQ(train_records, 4);
    EXPECT_EQ(eval_records, 2);
    const auto a1 = read_adapter(dir / "one" / "adapter"), a2 = read_adapter(dir / "two" / "adapter");
    ASSERT_EQ(a1.size(), a2.size());
    double worst = 0;
    for (const auto& [name, t] : a1) worst = std::max(worst, (t - a2.at(name)).abs().max().item<double>());
    // Four AdamW steps at lr 0.01 (each moves a weight by up to ~0.01): 5e-5 absolute is 0.5% of a step. Adam
    // divides each gradient by its running RMS, so an element whose gradient is near zero turns a 1e-7 relative
    // difference of the sums into a visible one: an AVX2 EPYC measured 2.2e-5 (layers.1 down_proj lora_A, one
    // element; 1e-5 held on the earlier CI machine), whatever the thread count.
    EXPECT_LT(worst, 5e-5) << "largest adapter difference";
    // Rank 0 alone wrote files: one TensorBoard file, one summary; rank 1 printed nothing on stdout.
    int events = 0;
    for (const auto& e : fs::directory_iterator(dir / "two"))
        events += e.path().filename().string().rfind("events.out.tfevents", 0) == 0;
    EXPECT_EQ(events, 1);
    EXPECT_EQ(two[1].output().find("\"steps\""), std::string::npos) << two[1].output();

    // Resume: drop the last checkpoint and the adapter; rerun (Slurm's variables this time) from checkpoint-2.
    fs::copy(dir / "two", dir / "resumed", fs::copy_options::recursive);
    fs::remove_all(dir / "resumed" / "checkpoint-4");
    fs::remove_all(dir / "resumed" / "adapter");
    auto resumed = run_two(args(dir / "resumed", 2), true, "resumed");
    ASSERT_EQ(resumed[0].exit_code, 0) << resumed[0].output();
    ASSERT_EQ(resumed[1].exit_code, 0) << resumed[1].output();
    EXPECT_NE(resumed[0].output().find("resuming from"), std::string::npos);
    EXPECT_EQ(read_bytes(dir / "resumed" / "adapter" / "adapter_model.safetensors"),
              read_bytes(dir / "two" / "adapter" / "adapter_model.safetensors"))
        << "resumed 2-process adapter differs from the straight run";
    const auto mr = read_jsonl(dir / "resumed" / "metrics.jsonl");
    ASSERT_EQ(mr.size(), m2.size());
    for (size_t i = 0; i < mr.size(); ++i) {
        if (mr[i].contains("loss")) {
            EXPECT_EQ(mr[i]["loss"], m2[i]["loss"]) << "step " << mr[i]["step"];
        }
    }

    // One process on the 2-process checkpoints: refused, naming both world sizes; allowed with the flag.
    fs::remove_all(dir / "resumed" / "adapter");
    fs::remove_all(dir / "resumed" / "checkpoint-4");
    Proc refused = Proc::start(args(dir / "resumed", 2), {}, dir / "refused.log");
    ASSERT_TRUE(refused.wait(60));
    EXPECT_EQ(refused.exit_code, 2) << refused.output();
    EXPECT_NE(refused.output().find("written by 2 process(es), this run has 1"), std::string::npos) << refused.output();
    EXPECT_NE(refused.output().find("--resume-world-size-change"), std::string::npos) << refused.output();
    Proc allowed = Proc::start(args(dir / "resumed", 2, {"--resume-world-size-change"}), {}, dir / "allowed.log");
    ASSERT_TRUE(allowed.wait(60));
    EXPECT_EQ(allowed.exit_code, 0) << allowed.output();
    EXPECT_NE(allowed.output().find("each optimizer step now covers 4 rows instead of 8"), std::string::npos)
        << allowed.output();
}

TEST_F(DistributedCpt, SigtermStopsBothRanksWithOneCheckpointAndSigkillNamesTheLostRank) {
    // A long run (many steps, rare checkpoints); the signal comes once training has started.
    auto long_args = [&](const fs::path& out) {
        auto a = args(out, 1, {"--dist-timeout", "20"});
        for (auto& s : a) {
            if (s == "training.max_steps=4") s = "training.max_steps=100000";
            if (s == "training.save_steps=2") s = "training.save_steps=100000";
        }
        return a;
    };
    auto started = [&](const fs::path& out, double seconds) {
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
        while (std::chrono::steady_clock::now() < deadline) {
            for (const auto& rec : read_jsonl_safe(out / "metrics.jsonl"))
                if (rec.contains("loss")) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        return false;
    };

    {
        const int port = free_port();
        std::vector<Proc> p;
        for (int r = 0; r < 2; ++r)
            p.push_back(Proc::start(long_args(dir / "term"), torchrun_env(r, port),
                                    dir / ("term_rank" + std::to_string(r) + ".log")));
        ASSERT_TRUE(started(dir / "term", 60)) << p[0].output();
        // Slurm signals every task at (nearly) the same moment; the ranks may still see it at different steps.
        ::kill(p[1].pid, SIGTERM);
        ::kill(p[0].pid, SIGTERM);
        for (auto& x : p) ASSERT_TRUE(x.wait(60)) << x.output();
        EXPECT_EQ(p[0].exit_code, 1) << p[0].output();
        EXPECT_EQ(p[1].exit_code, 1) << p[1].output();
        EXPECT_NE(p[0].output().find("interrupted at step"), std::string::npos) << p[0].output();
        const auto cks = train_checkpoints(dir / "term");
        ASSERT_EQ(cks.size(), 1u);
        EXPECT_TRUE(fs::exists(cks[0] / "COMPLETE"));
    }
    {
        const int port = free_port();
        std::vector<Proc> p;
        for (int r = 0; r < 2; ++r)
            p.push_back(Proc::start(long_args(dir / "kill"), torchrun_env(r, port),
                                    dir / ("kill_rank" + std::to_string(r) + ".log")));
        ASSERT_TRUE(started(dir / "kill", 60)) << p[0].output();
        ::kill(p[1].pid, SIGKILL);
        const auto t0 = std::chrono::steady_clock::now();
        ASSERT_TRUE(p[0].wait(30)) << "rank 0 hung after rank 1 was killed\n" << p[0].output();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        p[1].wait(5);
        EXPECT_EQ(p[0].exit_code, 1) << p[0].output();
        EXPECT_NE(p[0].output().find("lost rank(s) 1 of 2"), std::string::npos) << p[0].output();
        EXPECT_LT(s, 20.0) << "within --dist-timeout";
    }
}

TEST_F(DistributedCpt, RpoTwoProcessesEqualOneWithTwiceTheBatch) {
    const fs::path repo = test::fixtures().parent_path().parent_path();
    auto rpo_args       = [&](const fs::path& out, int batch) {
        std::vector<std::string> a{"rpo", "--config", (repo / "configs/tiny/rpo.yaml").string()};
        for (const std::string& o :
             {"output=" + out.string(), "model.path=" + (repo / "tests/fixtures/model/qwen2-tiny-tied").string(),
              "model.tokenizer=" + (repo / "tests/fixtures/train/byte-tokenizer").string(),
              "data.path=" + (repo / "tests/fixtures/train/rpo/pairs.jsonl").string(), std::string("training.epochs=1"),
              std::string("training.logging_steps=1"), std::string("loss.rpo_alpha=0"),  // DPO: a mean over pairs
              "training.batch_size=" + std::to_string(batch)}) {
            a.push_back("--set");
            a.push_back(o);
        }
        return a;
    };
    // One process, 2 pairs per micro-batch; two processes with 1 pair each (DDP's mean of the gradients).
    Proc one = Proc::start(rpo_args(dir / "one", 2), {}, dir / "rpo_one.log");
    ASSERT_TRUE(one.wait(90));
    ASSERT_EQ(one.exit_code, 0) << one.output();
    auto two = run_two(rpo_args(dir / "two", 1), false, "rpo_two");
    ASSERT_EQ(two[0].exit_code, 0) << two[0].output();
    ASSERT_EQ(two[1].exit_code, 0) << two[1].output();
    const auto m1 = read_jsonl(dir / "one" / "metrics.jsonl"), m2 = read_jsonl(dir / "two" / "metrics.jsonl");
    ASSERT_EQ(m1.size(), 3u);  // 6 pairs, 2 per step
    ASSERT_EQ(m2.size(), m1.size());
    for (size_t i = 0; i < m1.size(); ++i)
        for (const char* k : {"loss", "grad_norm", "rewards/margins", "rewards/chosen", "logps/chosen"}) {
            // Padding to the longer pair (one process) vs none, and a different summation order: 1e-5.
            const double a = m1[i][k].get<double>(), b = m2[i][k].get<double>();
            EXPECT_NEAR(b, a, 1e-5 * std::max(1.0, std::abs(a))) << k << " at step " << m1[i]["step"];
        }
    for (size_t i = 0; i < m1.size(); ++i) {
        EXPECT_EQ(m2[i]["rewards/accuracies"], m1[i]["rewards/accuracies"]);
        EXPECT_EQ(m2[i]["world_size"], 2);
    }
    const auto a1 = read_adapter(dir / "one" / "adapter"), a2 = read_adapter(dir / "two" / "adapter");
    double worst = 0;
    for (const auto& [name, t] : a1) worst = std::max(worst, (t - a2.at(name)).abs().max().item<double>());
    EXPECT_LT(worst, 1e-5) << "largest adapter difference";

    // One process (1 pair per step) on the 2-process run's last checkpoint: refused, naming both world sizes;
    // with --resume-world-size-change it continues from step 3 of 6 and says what changes.
    fs::copy(dir / "two", dir / "changed", fs::copy_options::recursive);
    fs::remove_all(dir / "changed" / "adapter");
    Proc refused = Proc::start(rpo_args(dir / "changed", 1), {}, dir / "rpo_refused.log");
    ASSERT_TRUE(refused.wait(60));
    EXPECT_EQ(refused.exit_code, 2) << refused.output();
    EXPECT_NE(refused.output().find("written by 2 process(es), this run has 1"), std::string::npos) << refused.output();
    EXPECT_NE(refused.output().find("--resume-world-size-change"), std::string::npos) << refused.output();
    auto changed_args = rpo_args(dir / "changed", 1);
    changed_args.push_back("--resume-world-size-change");
    Proc allowed = Proc::start(changed_args, {}, dir / "rpo_allowed.log");
    ASSERT_TRUE(allowed.wait(90));
    ASSERT_EQ(allowed.exit_code, 0) << allowed.output();
    EXPECT_NE(
        allowed.output().find("each optimizer step now covers 1 pairs instead of 2; 6 steps per epoch instead of 3"),
        std::string::npos)
        << allowed.output();
    EXPECT_NE(allowed.output().find("resuming from"), std::string::npos) << allowed.output();
    const auto mc = read_jsonl(dir / "changed" / "metrics.jsonl");
    ASSERT_EQ(mc.size(), 6u);  // the 3 steps of the 2-process run, then steps 4..6 with one process
    EXPECT_EQ(mc.back()["step"], 6);
    EXPECT_FALSE(mc.back().contains("world_size"));
}

// ---------------------------------------------------------------- medllm eval igakuqa as two processes

// The tiny printable model on 6 questions of each 2018 section (36), both modes, greedy: two ranks share the
// questions and write what one process writes; a rank killed mid-run makes the other exit naming it, and one
// process then finishes from the shards with the same scores.
class DistributedEval : public test::TrainTempDir {
protected:
    // One thread per process: two ranks on a 2-core machine, each with a thread per core, crawl.
    const std::map<std::string, std::string> kOneThread{{"OMP_NUM_THREADS", "1"}};
    fs::path model, data, fewshot;
    void SetUp() override {
        TrainTempDir::SetUp();
        model              = gt::make_printable_model_dir(dir / "model", /*context=*/16384);
        const fs::path src = shared_path("igakuqa_data/data/2018");
        data               = dir / "data";
        fs::create_directories(data / "data" / "2018");
        for (char s : {'A', 'B', 'C', 'D', 'E', 'F'})
            for (const std::string suffix : {".jsonl", "_metadata.jsonl"}) {
                const std::string name = "112-" + std::string(1, s) + suffix;
                std::ifstream in(src / name);
                std::ofstream out(data / "data" / "2018" / name);
                std::string line;
                for (int i = 0; i < 6 && std::getline(in, line); ++i) out << line << "\n";
            }
        fewshot = dir / "fewshot.jsonl";
        std::ofstream(fewshot)
            << R"({"problem_id": "100E5", "problem_text": "正しいのはどれか。", "choices": ["甲", "乙"], )"
            << R"("text_only": true, "answer": ["a"], "explanation": "甲が正しい。"})"
            << "\n";
    }
    std::vector<std::string> args(const fs::path& out, std::vector<std::string> extra = {}) const {
        std::vector<std::string> a{"eval",
                                   "igakuqa",
                                   "--data-dir",
                                   data.string(),
                                   "--model",
                                   model.string(),
                                   "--years",
                                   "2018",
                                   "--prompt-format",
                                   "base",
                                   "--prompt-file",
                                   fewshot.string(),
                                   "--max-new-tokens",
                                   "4",
                                   "--max-new-tokens-explanation",
                                   "8",
                                   "--mode",
                                   "both",
                                   "--output",
                                   out.string()};
        for (auto& e : extra) a.push_back(e);
        return a;
    }
    static std::vector<std::string> rank_flags(int rank, int port, const std::string& batch) {
        return {"--world-size",  "2",         "--rank",         std::to_string(rank),
                "--master-addr", "127.0.0.1", "--master-port",  std::to_string(port),
                "--backend",     "gloo",      "--dist-timeout", "5",
                "--batch-size",  batch};
    }
    static nlohmann::json report(const fs::path& out) {
        auto r = nlohmann::json::parse(std::ifstream(out / "report.json"));
        return r;
    }
};

TEST_F(DistributedEval, TwoRanksWriteWhatOneProcessWrites) {
    Proc one = Proc::start(args(dir / "one", {"--batch-size", "4"}), kOneThread, dir / "one.log");
    ASSERT_TRUE(one.wait(120));
    ASSERT_EQ(one.exit_code, 0) << one.output();

    const int port = free_port();
    std::vector<Proc> two;
    for (int r = 0; r < 2; ++r)  // another batch size too: greedy answers do not depend on the batch
        two.push_back(Proc::start(args(dir / "two", rank_flags(r, port, "3")), kOneThread,
                                  dir / ("two_rank" + std::to_string(r) + ".log")));
    for (auto& p : two) ASSERT_TRUE(p.wait(120)) << p.output();
    ASSERT_EQ(two[0].exit_code, 0) << two[0].output();
    ASSERT_EQ(two[1].exit_code, 0) << two[1].output();
    EXPECT_NE(two[0].output().find("IgakuQA model standard"), std::string::npos) << two[0].output();
    EXPECT_EQ(two[1].output().find("IgakuQA model"), std::string::npos) << two[1].output();  // rank 0 reports

    EXPECT_EQ(read_bytes(dir / "two" / "predictions.jsonl"), read_bytes(dir / "one" / "predictions.jsonl"));
    EXPECT_EQ(read_bytes(dir / "two" / "scored.jsonl"), read_bytes(dir / "one" / "scored.jsonl"));
    EXPECT_EQ(report(dir / "two"), report(dir / "one"));
    EXPECT_EQ(read_jsonl(dir / "two" / "predictions.jsonl").size(), 72u);
    EXPECT_FALSE(fs::exists(dir / "two" / "predictions.rank1-of2.jsonl"));
    EXPECT_FALSE(fs::exists(dir / "two" / "log.txt") && !fs::exists(dir / "two" / "config.resolved.yaml"));
}

TEST_F(DistributedEval, AKilledRankIsNamedAndOneProcessFinishesFromTheShards) {
    Proc one = Proc::start(args(dir / "one", {"--batch-size", "4"}), kOneThread, dir / "one.log");
    ASSERT_TRUE(one.wait(120));
    ASSERT_EQ(one.exit_code, 0) << one.output();

    const int port     = free_port();
    const fs::path out = dir / "killed";
    std::vector<Proc> two;
    for (int r = 0; r < 2; ++r)
        two.push_back(Proc::start(args(out, rank_flags(r, port, "1")), kOneThread,
                                  dir / ("killed_rank" + std::to_string(r) + ".log")));
    // Rank 1 dies once it has saved a few answers.
    const fs::path shard1 = out / "predictions.rank1-of2.jsonl";
    const auto deadline   = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (read_jsonl_safe(shard1).size() < 3 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ::kill(two[1].pid, SIGKILL);
    ASSERT_TRUE(two[1].wait(10));
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(two[0].wait(60)) << two[0].output();
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
    EXPECT_EQ(two[0].exit_code, 1) << two[0].output();
    EXPECT_NE(two[0].output().find("lost rank 1 of 2"), std::string::npos) << two[0].output();
    const size_t saved1 = read_jsonl(shard1).size();
    EXPECT_GE(saved1, 3u);
    EXPECT_LT(saved1, 36u) << "rank 1 finished before it was killed; the test did not test a resume";

    // One process folds both shards in and generates only what is missing.
    Proc resumed = Proc::start(args(out, {"--batch-size", "4"}), kOneThread, dir / "resumed.log");
    ASSERT_TRUE(resumed.wait(120));
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output();
    EXPECT_NE(resumed.output().find("folding in 2 shard file(s)"), std::string::npos) << resumed.output();
    EXPECT_EQ(report(out), report(dir / "one"));
    auto sorted_lines = [&](const fs::path& p) {
        std::vector<std::string> lines;
        std::ifstream in(p);
        for (std::string l; std::getline(in, l);) lines.push_back(l);
        std::sort(lines.begin(), lines.end());
        return lines;
    };
    EXPECT_EQ(sorted_lines(out / "predictions.jsonl"), sorted_lines(dir / "one" / "predictions.jsonl"));
    EXPECT_TRUE(find_shards(out / "predictions.jsonl").empty());
}

// ---------------------------------------------------------------- the gradient all-reduce inside backward

// Two Gloo ranks (threads), two micro-batches per step: with overlap, the last backward starts buckets of 64 bytes
// (many) through hooks; the result must be exactly g0 * s + g1 * s of the ranks' own accumulated gradients (a + b
// is exact for 2 ranks), for a parameter used only in the first micro-batch, one never used, a float64 one, and
// again in a second step (the per-step state is reset). A bucket never reduced, a gradient sent before its last
// accumulation or unscaled would leave another value.
TEST(DistributedGroup, GradientSyncOverlapSumsExactlyWhatTheRanksAccumulated) {
    std::vector<std::string> errors;
    const auto group = two_gloo_ranks(errors);
    ASSERT_TRUE(group[0] && group[1]) << errors[0] << " | " << errors[1];

    struct Rank {
        std::vector<at::Tensor> params;  // W3 [16,8], W1 [8,4], b [4], U [3] (first micro-batch only), V [5] (unused),
                                         // D [2] float64 (last micro-batch only)
        std::vector<at::Tensor> x;       // per step and micro-batch
    };
    auto make_params = [](int r) {
        auto g = at::make_generator<at::CPUGeneratorImpl>(100 + r);
        std::vector<at::Tensor> p{at::randn({16, 8}, g), at::randn({8, 4}, g),
                                  at::randn({4}, g),     at::randn({3}, g),
                                  at::randn({5}, g),     at::randn({2}, g, at::TensorOptions().dtype(at::kDouble))};
        for (auto& t : p) t.requires_grad_(true);
        return p;
    };
    auto inputs = [](int r) {
        auto g = at::make_generator<at::CPUGeneratorImpl>(200 + r);
        std::vector<at::Tensor> x;
        for (int i = 0; i < 4; ++i) x.push_back(at::randn({6, 16}, g));
        return x;
    };
    // One micro-batch's backward (micro 0 uses U, micro 1 uses D).
    auto backward = [](std::vector<at::Tensor>& p, const at::Tensor& x, int micro) {
        at::Tensor loss = ((at::tanh(x.matmul(p[0])).matmul(p[1]) + p[2]).pow(2)).sum();
        if (micro == 0) loss = loss + (p[3] * p[3]).sum() * 0.5;
        if (micro == 1) loss = loss + (p[5] * p[5]).sum().to(at::kFloat);
        loss.backward();
    };
    const std::vector<double> scale{3.0, 0.7};  // per step (cpt: the rank's target tokens)
    // Expected: each rank's gradients alone, single-threaded, then summed here.
    std::vector<std::vector<std::vector<at::Tensor>>> local(2);  // [rank][step] -> grads
    for (int r = 0; r < 2; ++r) {
        auto p = make_params(r);
        auto x = inputs(r);
        for (int step = 0; step < 2; ++step) {
            backward(p, x[2 * step], 0);
            backward(p, x[2 * step + 1], 1);
            std::vector<at::Tensor> g;
            for (auto& t : p) g.push_back(t.grad().defined() ? t.grad().clone() * scale[step] : at::zeros_like(t));
            local[r].push_back(g);
            for (auto& t : p) t.mutable_grad() = at::Tensor();
        }
    }
    for (const bool overlap : {true, false}) {
        std::vector<std::vector<std::vector<at::Tensor>>> got(2);
        std::vector<std::vector<double>> sums(2);
        std::vector<int64_t> started(2), buckets(2);
        std::vector<std::thread> threads;
        for (int r = 0; r < 2; ++r)
            threads.emplace_back([&, r] {
                try {
                    auto p = make_params(r);
                    auto x = inputs(r);
                    Distributed::GradientSync sync(*group[r], p, overlap, 64);
                    buckets[r] = sync.num_buckets();
                    for (int step = 0; step < 2; ++step) {
                        backward(p, x[2 * step], 0);
                        sync.arm(scale[step]);
                        backward(p, x[2 * step + 1], 1);
                        sums[r] = sync.finish({1.0 + r, 10.0 * step});
                        started[r] += sync.buckets_started_in_backward();
                        std::vector<at::Tensor> g;
                        for (auto& t : p) g.push_back(t.grad().clone());
                        got[r].push_back(g);
                        for (auto& t : p) t.mutable_grad() = at::Tensor();
                    }
                } catch (const std::exception& e) {
                    errors[r] = e.what();
                }
            });
        for (auto& t : threads) t.join();
        ASSERT_EQ(errors[0] + errors[1], "") << "overlap " << overlap;
        // 64-byte buckets, from the last parameter back: D (float64) alone; V, U, b (48 bytes); W1; W3.
        EXPECT_EQ(buckets[0], 4);
        if (overlap)
            EXPECT_GT(started[0], 0) << "no bucket started inside backward: nothing overlapped";
        else
            EXPECT_EQ(started[0], 0);
        for (int r = 0; r < 2; ++r) {
            EXPECT_EQ(sums[r], (std::vector<double>{3.0, 20.0})) << "the last step's scalars, summed";
            for (int step = 0; step < 2; ++step)
                for (size_t k = 0; k < got[r][step].size(); ++k)
                    EXPECT_TRUE(got[r][step][k].equal(local[0][step][k] + local[1][step][k]))
                        << "overlap " << overlap << ", rank " << r << ", step " << step << ", parameter " << k;
        }
    }
}

// medllm cpt and rpo as two processes, training.overlap_allreduce true vs false with 1 KB buckets (many, so most
// start inside the last backward): the same adapter bytes and the same logged losses.
TEST_F(DistributedCpt, OverlappedGradientAllReduceGivesTheSameAdapterBits) {
    auto cpt_args = [&](const fs::path& out, bool overlap) {
        auto a = args(out, 2,
                      {"--set", std::string("training.overlap_allreduce=") + (overlap ? "true" : "false"), "--set",
                       "training.allreduce_bucket_mb=0.001"});
        for (auto& s : a)
            if (s == "training.max_steps=4") s = "training.max_steps=2";
        return a;
    };
    const fs::path repo = test::fixtures().parent_path().parent_path();
    auto rpo_args       = [&](const fs::path& out, bool overlap) {
        std::vector<std::string> a{"rpo", "--config", (repo / "configs/tiny/rpo.yaml").string()};
        for (const std::string& o :
             {"output=" + out.string(), "model.path=" + (repo / "tests/fixtures/model/qwen2-tiny-tied").string(),
              "model.tokenizer=" + (repo / "tests/fixtures/train/byte-tokenizer").string(),
              "data.path=" + (repo / "tests/fixtures/train/rpo/pairs.jsonl").string(), std::string("training.epochs=1"),
              std::string("training.logging_steps=1"), std::string("training.batch_size=1"),
              std::string("training.grad_accum=2"), std::string("training.allreduce_bucket_mb=0.001"),
              std::string("training.overlap_allreduce=") + (overlap ? "true" : "false")}) {
            a.push_back("--set");
            a.push_back(o);
        }
        return a;
    };
    for (const std::string recipe : {"cpt", "rpo"}) {
        std::map<bool, fs::path> out;
        for (const bool overlap : {false, true}) {
            out[overlap]    = dir / (recipe + (overlap ? "_overlap" : "_plain"));
            const auto a    = recipe == "cpt" ? cpt_args(out[overlap], overlap) : rpo_args(out[overlap], overlap);
            const auto runs = run_two(a, false, recipe + (overlap ? "_overlap" : "_plain"));
            ASSERT_EQ(runs[0].exit_code, 0) << runs[0].output();
            ASSERT_EQ(runs[1].exit_code, 0) << runs[1].output();
            if (recipe == "cpt" && overlap) {  // most buckets really started inside backward
                const std::string o = runs[0].output();
                const auto at       = o.find("overlapped with the last backward (");
                ASSERT_NE(at, std::string::npos) << o;
                EXPECT_GT(std::stoi(o.substr(at + 35)), 0) << o.substr(at, 80);
            }
        }
        EXPECT_TRUE(read_bytes(out[true] / "adapter" / "adapter_model.safetensors") ==
                    read_bytes(out[false] / "adapter" / "adapter_model.safetensors"))
            << recipe << ": the overlapped all-reduce changed the adapter";
        const auto m0 = read_jsonl(out[false] / "metrics.jsonl"), m1 = read_jsonl(out[true] / "metrics.jsonl");
        ASSERT_EQ(m0.size(), m1.size()) << recipe;
        int steps = 0;
        for (size_t i = 0; i < m0.size(); ++i)
            if (m0[i].contains("loss")) {
                ++steps;
                EXPECT_EQ(m1[i]["loss"], m0[i]["loss"]) << recipe << " step " << m0[i]["step"];
                EXPECT_EQ(m1[i]["grad_norm"], m0[i]["grad_norm"]) << recipe << " step " << m0[i]["step"];
            }
        EXPECT_EQ(steps, 2) << recipe;
    }
}

// scripts/slurm/cpt.sbatch as Slurm would run it, with stand-ins for srun (two tasks with SLURM_PROCID / SLURM_LOCALID)
// and scontrol on PATH: COMMAND="eval igakuqa" shards the questions over the two tasks and writes what one process
// writes.
TEST_F(DistributedEval, SbatchScriptLaunchesTheShardedEvaluation) {
    Proc one = Proc::start(args(dir / "one", {"--batch-size", "4"}), kOneThread, dir / "one.log");
    ASSERT_TRUE(one.wait(120));
    ASSERT_EQ(one.exit_code, 0) << one.output();

    const fs::path bin = dir / "fake-slurm";
    fs::create_directories(bin);
    std::ofstream(bin / "scontrol") << "#!/bin/sh\necho localhost\n";
    std::ofstream(bin / "srun") << "#!/bin/sh\n"
                                   "while [ \"${1#--}\" != \"$1\" ]; do shift; done  # srun's own options\n"
                                   "SLURM_PROCID=0 SLURM_LOCALID=0 \"$@\" >\"$TASK_LOGS\"/task0.log 2>&1 & a=$!\n"
                                   "SLURM_PROCID=1 SLURM_LOCALID=1 \"$@\" >\"$TASK_LOGS\"/task1.log 2>&1 & b=$!\n"
                                   "rc=0; wait $a || rc=1; wait $b || rc=1; exit $rc\n";
    fs::permissions(bin / "scontrol", fs::perms::owner_all);
    fs::permissions(bin / "srun", fs::perms::owner_all);
    std::ofstream(dir / "eval.yaml")
        << "data_dir: " << data.string() << "\nmodel: " << model.string()
        << "\nyears: '2018'\nprompt_format: base\nprompt_file: " << fewshot.string()
        << "\nmax_new_tokens: 4\nmax_new_tokens_explanation: 8\nmode: both\nbatch_size: 3\n"
        << "output: " << (dir / "slurm").string() << "\n";
    const std::string env = "PATH=" + bin.string() + ":$PATH TASK_LOGS=" + dir.string() +
                            " SLURM_JOB_NODELIST=localhost SLURM_JOB_ID=77 SLURM_NTASKS=2 SLURM_TASKS_PER_NODE=2 "
                            "SLURM_CPUS_PER_TASK=1 MASTER_PORT=" +
                            std::to_string(free_port()) + " MEDLLM=" + MEDLLM_BINARY + " COMMAND='eval igakuqa' ";
    const auto run = run_shell("cd " + std::string(MEDLLM_SOURCE_DIR) + " && " + env +
                               "bash scripts/slurm/cpt.sbatch " + (dir / "eval.yaml").string() + " 2>&1 </dev/null");
    ASSERT_EQ(run.exit_code, 0) << run.output << read_bytes(dir / "task0.log") << read_bytes(dir / "task1.log");
    const std::string rank0 = read_bytes(dir / "task0.log");
    EXPECT_NE(rank0.find("IgakuQA model standard"), std::string::npos) << rank0;
    EXPECT_NE(rank0.find("on rank 0 of 2"), std::string::npos) << rank0;  // one group, not two lone processes
    EXPECT_EQ(read_bytes(dir / "slurm" / "predictions.jsonl"), read_bytes(dir / "one" / "predictions.jsonl"));
    EXPECT_EQ(report(dir / "slurm"), report(dir / "one"));
}
