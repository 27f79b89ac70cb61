// `medllm version`: what was built and what it can see (LibTorch, CUDA devices, optional parts).
#include <iostream>

#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/version.h>
#ifdef MEDLLM_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAFunctions.h>
#include <cuda_runtime_api.h>
#endif

#include "cli/commands.h"
#include "medllm/build_info.h"

namespace medllm::cli {

static void print_version() {
    std::cout << "medllm " << MEDLLM_VERSION << " (" << MEDLLM_BUILD_TYPE << ")\n";
    std::cout << "LibTorch " << TORCH_VERSION << ", intra-op threads " << at::get_num_threads() << "\n";
    std::cout << "CUDA kernels compiled: "
              << (MEDLLM_CUDA_KERNELS_COMPILED ? std::string("yes (compute capability ") + MEDLLM_CUDA_ARCHS + ")"
                                               : "no")
              << "\n";
    const bool cuda = torch::cuda::is_available();
    std::cout << "CUDA available: " << (cuda ? "yes" : "no") << "\n";
#ifdef MEDLLM_HAVE_CUDA_KERNELS
    if (cuda) {
        int n = static_cast<int>(torch::cuda::device_count());
        for (int i = 0; i < n; ++i) {
            cudaDeviceProp prop{};
            if (cudaGetDeviceProperties(&prop, i) == cudaSuccess) {
                std::cout << "  device " << i << ": " << prop.name << ", " << (prop.totalGlobalMem >> 20) << " MiB, sm_"
                          << prop.major << prop.minor << "\n";
            }
        }
    }
#else
    if (cuda) std::cout << "  devices: " << torch::cuda::device_count() << " (names need the CUDA build)\n";
#endif
}

void add_version_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("version", "Print versions, CUDA availability and devices, and compiled-in parts");
    cmd->callback(print_version);
}

}  // namespace medllm::cli
