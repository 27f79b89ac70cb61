// Generation throughput of the engine on a model folder and a prompt_ids JSONL file, timed as
// scripts/bench-generate.sh times HF generate() in the same run. The prompts run as consecutive calls of BATCH
// prompts each (one call with every prompt when BATCH >= their number), as a user's file runs: the prefix cache is
// emptied before each measurement and kept across its calls (PREFIX_CACHE=0 in the environment turns it off).
// prefill = prompt tokens / wall time of generating 1 token per prompt; decode = generated tokens after
// the first / (t(NEW_TOKENS) - t(1)). The first call of the process (page faults of the memory-mapped weights, BLAS
// set-up) is timed separately as `cold`.
//   bench_generate MODEL_DIR PROMPTS_JSONL BATCH NEW_TOKENS THREADS [cpu|cuda [fp32|bf16 [PROFILE]]]
// PROFILE=1 adds a LibTorch profiler table of one warm prefill (operators by self time: time not spent in nested
// operators); PROFILE=2 splits the rows by input shapes; PROFILE=3 profiles a NEW_TOKENS run instead (decode).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "medllm/generate/engine.h"
#include "medllm/model/qwen2.h"

using namespace medllm;

namespace {

std::vector<std::vector<text::TokenId>> read_prompts(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::vector<std::vector<text::TokenId>> prompts;
    for (std::string line; std::getline(in, line);) {
        if (line.empty()) continue;
        prompts.push_back(nlohmann::json::parse(line).at("prompt_ids").get<std::vector<text::TokenId>>());
    }
    return prompts;
}

// Self time per operator name: each event's duration minus that of the events nested directly inside it (same
// thread), summed over the run.
void print_profile(const torch::autograd::profiler::ProfilerResult& result, double total_seconds, bool by_shape) {
    struct Span {
        uint64_t start, end, thread;
        std::string name;
    };
    std::vector<Span> spans;
    for (const auto& e : result.events())
        if (e.deviceType() == c10::DeviceType::CPU) {
            std::string name = e.name();
            if (by_shape && e.hasShapes()) {
                name += " ";
                for (const auto& s : e.shapes()) name += c10::str(s);
            }
            spans.push_back({e.startNs(), e.endNs(), e.startThreadId(), name});
        }
    std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
        return a.thread != b.thread ? a.thread < b.thread : a.start != b.start ? a.start < b.start : a.end > b.end;
    });
    struct Total {
        double self_ns = 0, total_ns = 0;
        int64_t calls = 0;
    };
    std::map<std::string, Total> totals;
    std::vector<std::size_t> stack;
    std::vector<double> child_ns(spans.size(), 0);
    auto close = [&](std::size_t i) {
        double dur = static_cast<double>(spans[i].end - spans[i].start);
        auto& t    = totals[spans[i].name];
        t.self_ns += dur - child_ns[i];
        t.total_ns += dur;
        ++t.calls;
    };
    for (std::size_t i = 0; i < spans.size(); ++i) {
        while (!stack.empty() &&
               (spans[stack.back()].thread != spans[i].thread || spans[stack.back()].end <= spans[i].start)) {
            close(stack.back());
            stack.pop_back();
        }
        if (!stack.empty()) child_ns[stack.back()] += static_cast<double>(spans[i].end - spans[i].start);
        stack.push_back(i);
    }
    while (!stack.empty()) {
        close(stack.back());
        stack.pop_back();
    }
    std::vector<std::pair<std::string, Total>> rows(totals.begin(), totals.end());
    std::sort(rows.begin(), rows.end(),
              [](const auto& a, const auto& b) { return a.second.self_ns > b.second.self_ns; });
    std::printf("profile: %.2f ms wall\n", total_seconds * 1e3);
    std::printf("%-44s %10s %10s %7s\n", "operator", "self ms", "total ms", "calls");
    for (std::size_t i = 0; i < std::min<std::size_t>(rows.size(), 30); ++i)
        std::printf("%-44s %10.3f %10.3f %7lld\n", rows[i].first.substr(0, by_shape ? 120 : 44).c_str(),
                    rows[i].second.self_ns / 1e6, rows[i].second.total_ns / 1e6,
                    static_cast<long long>(rows[i].second.calls));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 6 || argc > 9) {
        std::fprintf(stderr,
                     "usage: %s MODEL_DIR PROMPTS_JSONL BATCH NEW_TOKENS THREADS [cpu|cuda [fp32|bf16 [PROFILE]]]\n",
                     argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    auto prompts          = read_prompts(argv[2]);
    const int64_t batch = std::atoll(argv[3]), new_tokens = std::atoll(argv[4]);
    at::set_num_threads(std::atoi(argv[5]));
    const at::Device device    = argc > 6 && std::string(argv[6]) == "cuda" ? at::Device(at::kCUDA, 0) : at::kCPU;
    const at::ScalarType dtype = argc > 7 && std::string(argv[7]) == "bf16" ? at::kBFloat16 : at::kFloat;
    const int profile_mode     = argc > 8 ? std::atoi(argv[8]) : 0;
    if (device.is_cuda() && !torch::cuda::is_available()) {
        std::fprintf(stderr, "bench_generate: cuda asked for but no CUDA device is visible\n");
        return 2;
    }

    auto model = model::Qwen2ForCausalLM::from_pretrained(dir, dtype, device);
    model->eval();
    generate::Generator generator(model, nullptr, {});
    const char* cache_env = std::getenv("PREFIX_CACHE");
    if (cache_env && std::string(cache_env) == "0") generator.set_prefix_cache_bytes(0);
    int64_t prompt_tokens = 0;
    for (const auto& p : prompts) prompt_tokens += static_cast<int64_t>(p.size());
    int64_t cached = 0;
    auto timed     = [&](int64_t tokens) {
        generate::GenerateOptions options;
        options.max_batch_size = batch;
        options.max_new_tokens = tokens;
        options.ignore_eos     = true;
        generator.clear_prefix_cache();
        cached  = 0;
        auto t0 = std::chrono::steady_clock::now();
        for (std::size_t first = 0; first < prompts.size(); first += static_cast<std::size_t>(batch)) {
            const std::size_t last = std::min(prompts.size(), first + static_cast<std::size_t>(batch));
            std::vector<std::vector<text::TokenId>> call(prompts.begin() + first, prompts.begin() + last);
            options.prompt_keys.clear();
            for (auto i = first; i < last; ++i) options.prompt_keys.push_back(i);
            generator.generate(call, options);
            cached += generator.last_stats().cached_prompt_tokens;
        }
        if (device.is_cuda()) torch::cuda::synchronize();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    const double cold = timed(1);  // also the warm-up (HF's side warms up with a 2-token run)
    const double t1   = timed(1);
    const double tg   = timed(new_tokens);
    const auto rows   = static_cast<double>(prompts.size());
    std::printf(
        "{\"threads\": %d, \"prefill\": %.2f, \"decode\": %.2f, \"cold_prefill\": %.2f, \"prompt_tokens\": %lld, "
        "\"cached_prompt_tokens\": %lld, \"t1\": %.3f, \"tg\": %.3f}\n",
        at::get_num_threads(), prompt_tokens / t1, rows * static_cast<double>(new_tokens - 1) / std::max(tg - t1, 1e-9),
        prompt_tokens / cold, static_cast<long long>(prompt_tokens), static_cast<long long>(cached), t1, tg);
    if (profile_mode) {
        namespace prof = torch::autograd::profiler;
        const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO,
                                                           /*report_input_shapes=*/profile_mode == 2);
        const std::set<torch::profiler::impl::ActivityType> activities{torch::profiler::impl::ActivityType::CPU};
        prof::prepareProfiler(config, activities);  // Kineto must be set up before a trace starts
        prof::enableProfiler(config, activities);
        const double wall = timed(profile_mode == 3 ? new_tokens : 1);
        auto result       = prof::disableProfiler();
        print_profile(*result, wall, profile_mode == 2);
    }
    return 0;
}
