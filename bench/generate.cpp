// Generation throughput of the engine on a model folder and a prompt_ids JSONL file, timed as
// scripts/bench-generate.sh times HF generate() in the same run. The prompts run as consecutive calls of BATCH
// prompts each (one call with every prompt when BATCH >= their number), as a user's file runs: the prefix cache is
// emptied before each measurement and kept across its calls (PREFIX_CACHE=0 in the environment turns it off).
// One warm-up measurement of 1 new token (its prefill is printed as `cold`: the page faults of the memory-mapped
// weights and BLAS set-up, once per process), then one of NEW_TOKENS: prefill = prompt tokens / the engine's prefill
// steps' time (decoding rows of prompts already prefilled ride along in them), decode = tokens of decode steps /
// their time (GenerationStats), as bench_hf.py splits HF's generate() at its first logits; prefill_cpu and
// decode_cpu divide by the same steps' process CPU time instead (steadier than wall time on a shared machine).
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
    // The engine's own step times, summed over the calls of one measurement (GenerationStats: prefill steps, and
    // decode steps that carry no prompt chunk).
    struct Run {
        double wall = 0, prefill_seconds = 0, decode_seconds = 0, prefill_cpu = 0, decode_cpu = 0;
        int64_t decode_tokens = 0, cached = 0;
    };
    auto timed = [&](int64_t tokens) {
        generate::GenerateOptions options;
        options.max_batch_size = batch;
        options.max_new_tokens = tokens;
        options.ignore_eos     = true;
        generator.clear_prefix_cache();
        Run r;
        auto t0 = std::chrono::steady_clock::now();
        for (std::size_t first = 0; first < prompts.size(); first += static_cast<std::size_t>(batch)) {
            const std::size_t last = std::min(prompts.size(), first + static_cast<std::size_t>(batch));
            std::vector<std::vector<text::TokenId>> call(prompts.begin() + first, prompts.begin() + last);
            options.prompt_keys.clear();
            for (auto i = first; i < last; ++i) options.prompt_keys.push_back(i);
            generator.generate(call, options);
            const auto& st = generator.last_stats();
            r.prefill_seconds += st.prefill_seconds;
            r.decode_seconds += st.decode_seconds;
            r.prefill_cpu += st.prefill_cpu_seconds;
            r.decode_cpu += st.decode_cpu_seconds;
            r.decode_tokens += st.decode_tokens;
            r.cached += st.cached_prompt_tokens;
        }
        if (device.is_cuda()) torch::cuda::synchronize();
        r.wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        return r;
    };
    const Run cold = timed(1);  // also the warm-up (HF's side warms up with a 2-token run)
    const Run r    = timed(new_tokens);
    std::printf(
        "{\"threads\": %d, \"prefill\": %.2f, \"decode\": %.2f, \"prefill_cpu\": %.2f, \"decode_cpu\": %.2f, "
        "\"cold_prefill\": %.2f, \"prompt_tokens\": %lld, \"cached_prompt_tokens\": %lld, \"decode_tokens\": %lld, "
        "\"wall\": %.3f}\n",
        at::get_num_threads(), prompt_tokens / std::max(r.prefill_seconds, 1e-9),
        r.decode_tokens / std::max(r.decode_seconds, 1e-9), prompt_tokens / std::max(r.prefill_cpu, 1e-9),
        r.decode_tokens / std::max(r.decode_cpu, 1e-9), prompt_tokens / std::max(cold.prefill_seconds, 1e-9),
        static_cast<long long>(prompt_tokens), static_cast<long long>(r.cached),
        static_cast<long long>(r.decode_tokens), r.wall);
    if (profile_mode) {
        namespace prof = torch::autograd::profiler;
        const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO,
                                                           /*report_input_shapes=*/profile_mode == 2);
        const std::set<torch::profiler::impl::ActivityType> activities{torch::profiler::impl::ActivityType::CPU};
        prof::prepareProfiler(config, activities);  // Kineto must be set up before a trace starts
        prof::enableProfiler(config, activities);
        const double wall = timed(profile_mode == 3 ? new_tokens : 1).wall;
        auto result       = prof::disableProfiler();
        print_profile(*result, wall, profile_mode == 2);
    }
    return 0;
}
