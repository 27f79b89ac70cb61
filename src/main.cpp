// medllm: one binary for the Preferred-MedLLM pipeline. main() only parses and dispatches;
// each subcommand lives in src/cli/<name>.cpp.
#include <iostream>
#include <thread>

#include <ATen/Parallel.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "medllm/build_info.h"
#include "medllm/core/error.h"
#include "medllm/core/log.h"

int main(int argc, char** argv) {
    CLI::App app{
        "medllm: continued pretraining, reasoning preference optimization and IgakuQA evaluation "
        "for Qwen2.5 medical LLMs (QLoRA, LibTorch)"};
    app.set_version_flag("--version", std::string("medllm ") + MEDLLM_VERSION);
    app.require_subcommand(1);
    app.fallthrough();  // global flags may also come after the subcommand

    int threads           = 0;
    std::string log_level = "info";
    app.add_option("--threads", threads, "LibTorch intra-op threads (0 = all cores)")
        ->capture_default_str()
        ->check(CLI::NonNegativeNumber);
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();

    medllm::cli::add_cpt_command(app);
    medllm::cli::add_build_prefs_command(app);
    medllm::cli::add_rpo_command(app);
    medllm::cli::add_eval_command(app);
    medllm::cli::add_generate_command(app);
    medllm::cli::add_quantize_command(app);
    medllm::cli::add_merge_command(app);
    medllm::cli::add_tokenize_command(app);
    medllm::cli::add_info_command(app);
    medllm::cli::add_version_command(app);

    // Runs after all flags are read and before the chosen subcommand's callback.
    app.parse_complete_callback([&] {
        medllm::log_init(log_level);
        // LibTorch may start with one thread; default to every core.
        unsigned cores = std::thread::hardware_concurrency();
        at::set_num_threads(threads > 0 ? threads : static_cast<int>(cores ? cores : 1));
    });

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // --help and --version exit 0; every other parse error is a usage error (exit 2).
        int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    } catch (const medllm::UsageError& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    } catch (const medllm::Error& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
