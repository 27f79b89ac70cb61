// The generation engine's decoding-row linear (generate/row_linear.h) next to LibTorch's at::linear (MKL) on the
// projections of a model shape, for a few row counts: what a decode step of 1..M sequences spends in its matrix
// products. Prints milliseconds per call (best of REPEATS) and the ratio.
//   bench_row_linear [HIDDEN INTERMEDIATE VOCAB KV_DIM [fp32|bf16 [THREADS [REPEATS]]]]   (default: Qwen2.5-0.5B)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "medllm/generate/row_linear.h"

namespace {

template <typename F>
double best_ms(F&& f, int repeats) {
    double best = 1e30;
    for (int r = 0; r < repeats; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

}  // namespace

int main(int argc, char** argv) {
    const int64_t hidden = argc > 1 ? std::atoll(argv[1]) : 896, inter = argc > 2 ? std::atoll(argv[2]) : 4864;
    const int64_t vocab = argc > 3 ? std::atoll(argv[3]) : 151936, kv = argc > 4 ? std::atoll(argv[4]) : 128;
    const auto dtype = argc > 5 && std::string(argv[5]) == "bf16" ? at::kBFloat16 : at::kFloat;
    at::set_num_threads(argc > 6 ? std::atoi(argv[6]) : 1);
    const int repeats = argc > 7 ? std::atoi(argv[7]) : 5;
    struct Shape {
        const char* name;
        int64_t n, k;
    };
    const std::vector<Shape> shapes = {{"q/o", hidden, hidden},
                                       {"k/v", kv, hidden},
                                       {"gate/up", inter, hidden},
                                       {"down", hidden, inter},
                                       {"lm_head", vocab, hidden}};
    c10::InferenceMode guard;
    std::printf("threads %d, %s\n%-8s %5s | %10s %10s %6s\n", at::get_num_threads(), c10::toString(dtype), "proj",
                "rows", "row_linear", "at::linear", "ratio");
    for (const auto& s : shapes) {
        const auto w = at::randn({s.n, s.k}).to(dtype);
        const auto b = at::Tensor();
        for (int64_t m : {1, 4, 8}) {
            const auto x   = at::randn({m, s.k}).to(dtype);
            const double r = best_ms([&] { medllm::generate::row_linear(x, w, b); }, repeats);
            const double l = best_ms([&] { at::linear(x, w); }, repeats);
            std::printf("%-8s %5lld | %10.3f %10.3f %5.2fx\n", s.name, static_cast<long long>(m), r, l, l / r);
        }
    }
    return 0;
}
