// medllm: one binary for the Preferred-MedLLM pipeline. main() only parses and dispatches;
// each subcommand lives in src/cli/<name>.cpp.
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "medllm/build_info.h"
#include "medllm/core/config.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/log.h"

namespace {

// --threads above this is refused: thousands of OpenMP workers hang the process at start-up, and more threads than
// cores only slows LibTorch down (4x leaves room for SMT and cgroup quotas that hide cores).
int max_threads() {
    const unsigned cores = std::thread::hardware_concurrency();
    return 4 * static_cast<int>(cores ? cores : 1);
}

// The default intra-op threads: OMP_NUM_THREADS when set, else the cores this process may run on (its CPU
// affinity: taskset, Slurm's binding) shared between the ranks torchrun starts on this node (LOCAL_WORLD_SIZE), so
// N processes on one machine do not each start a thread per core.
int default_threads() {
    auto positive = [](const char* name) -> int {
        const char* v = std::getenv(name);
        if (!v || !*v) return 0;
        char* end    = nullptr;
        const long n = std::strtol(v, &end, 10);
        return (*end == '\0' && n > 0 && n < 65536) ? static_cast<int>(n) : 0;
    };
    if (const int omp = positive("OMP_NUM_THREADS")) return omp;
    int cores = 0;
    cpu_set_t set;
    if (::sched_getaffinity(0, sizeof set, &set) == 0) cores = CPU_COUNT(&set);
    if (cores <= 0) cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int local = std::max(1, positive("LOCAL_WORLD_SIZE"));
    return std::max(1, cores / local);
}

// "medllm quantise" names no subcommand, and CLI11 would only say that one is required: name the closest. The
// first argument that is neither a flag nor a global flag's value is the subcommand.
void check_subcommand_name(const CLI::App& app, int argc, char** argv) {
    std::vector<std::string> names;
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; })) names.push_back(sub->get_name());
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--threads" || arg == "--log-level") {
            ++i;
            continue;
        }
        if (!arg.empty() && arg[0] == '-') continue;
        if (std::find(names.begin(), names.end(), arg) != names.end()) return;
        std::string msg         = "unknown command '" + arg + "'";
        const std::string close = medllm::config_detail::closest_key(arg, names);
        if (!close.empty()) msg += "; did you mean '" + close + "'?";
        throw medllm::UsageError(msg + " (medllm --help lists the commands)");
    }
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{
        "medllm: continued pretraining, reasoning preference optimization and IgakuQA evaluation "
        "for Qwen2.5 medical LLMs (QLoRA, LibTorch)"};
    app.set_version_flag("--version", std::string("medllm ") + MEDLLM_VERSION);
    app.require_subcommand(1);
    app.fallthrough();  // global flags may also come after the subcommand

    int threads           = 0;
    std::string log_level = "info";
    app.add_option("--threads", threads,
                   "LibTorch intra-op threads (0 = OMP_NUM_THREADS if set, else the cores this process may use, "
                   "divided by torchrun's LOCAL_WORLD_SIZE). On a machine shared with other busy processes use 1, "
                   "or set OMP_WAIT_POLICY=PASSIVE (docs/distributed.md, 'Shared machines')")
        ->capture_default_str()
        ->check(CLI::Validator(
            [](std::string& value) -> std::string {
                std::size_t used = 0;
                long long n      = -1;
                try {
                    n = std::stoll(value, &used);
                } catch (const std::exception&) {
                }
                if (used != value.size() || n < 0 || n > max_threads())
                    return "must be an integer between 0 (all cores) and " + std::to_string(max_threads()) +
                           " (4 x the cores here), got '" + value + "'";
                return "";
            },
            "0.." + std::to_string(max_threads())));
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")->capture_default_str();

    medllm::cli::add_cpt_command(app);
    medllm::cli::add_build_prefs_command(app);
    medllm::cli::add_rpo_command(app);
    medllm::cli::add_pipeline_command(app);
    medllm::cli::add_eval_command(app);
    medllm::cli::add_generate_command(app);
    medllm::cli::add_quantize_command(app);
    medllm::cli::add_prepare_corpus_command(app);
    medllm::cli::add_merge_command(app);
    medllm::cli::add_tokenize_command(app);
    medllm::cli::add_info_command(app);
    medllm::cli::add_version_command(app);

    // Runs after all flags are read and before the chosen subcommand's callback.
    app.parse_complete_callback([&] {
        medllm::log_init(log_level);
        // LibTorch may start with one thread; default to this process's share of the cores.
        at::set_num_threads(threads > 0 ? threads : default_threads());
    });

    auto fail = [](const std::string& message, int rc) {
        medllm::log_fatal_to_file(medllm::one_line(message));
        std::cerr << "error: " << medllm::one_line(message) << "\n";
        return rc;
    };
    try {
        check_subcommand_name(app, argc, argv);
        app.parse(argc, argv);
        medllm::check_stdout();  // output cut by a full disk or a closed pipe is a failure, not exit 0
    } catch (const CLI::ParseError& e) {
        // --help and --version exit 0; every other parse error is a usage error (exit 2), printed as one line
        // (CLI11's own printer adds a second "Run with --help" line).
        if (e.get_exit_code() != 0) return fail(std::string(e.what()) + " (--help lists the options)", 2);
        app.exit(e);
        try {
            medllm::check_stdout();
        } catch (const medllm::Error& out) {
            return fail(out.what(), 1);
        }
        return 0;
    } catch (const medllm::UsageError& e) {
        return fail(e.what(), 2);
    } catch (const medllm::Error& e) {
        return fail(e.what(), 1);
    } catch (const c10::OutOfMemoryError& e) {
        return fail(std::string("out of memory: ") + e.what_without_backtrace(), 1);
    } catch (const c10::Error& e) {
        return fail(e.what_without_backtrace(), 1);
    } catch (const std::bad_alloc&) {
        return fail(
            "out of memory: an allocation failed (std::bad_alloc); the model, batch or sequence is larger "
            "than this machine's memory",
            1);
    } catch (const std::exception& e) {
        return fail(e.what(), 1);
    }
    return 0;
}
