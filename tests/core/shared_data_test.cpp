// tests/support/shared_data.h: where tests find the shared data, and that a test needing missing data fails (never
// skips) with one line naming the path and MEDLLM_SHARED_DIR.
#include "support/shared_data.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include "support/run_medllm.h"

namespace {
namespace fs = std::filesystem;

// Sets MEDLLM_SHARED_DIR (or unsets it, for nullopt) for one test and puts back what was there.
class SharedDirEnv {
public:
    explicit SharedDirEnv(const std::optional<std::string>& value) {
        if (const char* old = std::getenv("MEDLLM_SHARED_DIR")) old_ = old;
        if (value)
            ::setenv("MEDLLM_SHARED_DIR", value->c_str(), 1);
        else
            ::unsetenv("MEDLLM_SHARED_DIR");
    }
    ~SharedDirEnv() {
        if (old_)
            ::setenv("MEDLLM_SHARED_DIR", old_->c_str(), 1);
        else
            ::unsetenv("MEDLLM_SHARED_DIR");
    }

private:
    std::optional<std::string> old_;
};

fs::path temp_dir() {
    const fs::path dir = fs::temp_directory_path() / ("medllm_shared_data_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir / "present");
    return dir;
}

TEST(SharedData, TheEnvironmentVariableDecidesWhereTheDataIs) {
    const fs::path dir = temp_dir();
    const SharedDirEnv env(dir.string());
    EXPECT_EQ(shared_dir(), dir);
    EXPECT_EQ(shared_path("present"), dir / "present");
    fs::remove_all(dir);
}

TEST(SharedData, WithoutTheVariableTheConfiguredFolderIsUsed) {
    const SharedDirEnv env(std::nullopt);
    EXPECT_EQ(shared_dir(), fs::path(MEDLLM_DEFAULT_SHARED_DIR));
    const SharedDirEnv empty("");
    EXPECT_EQ(shared_dir(), fs::path(MEDLLM_DEFAULT_SHARED_DIR));
}

TEST(SharedData, AMissingPathIsOneLineNamingItAndTheVariable) {
    const fs::path dir = temp_dir();
    const SharedDirEnv env(dir.string());
    try {
        shared_path("igakuqa_data");
        ADD_FAILURE() << "no exception for a missing path";
    } catch (const std::runtime_error& e) {
        const std::string message = e.what();
        EXPECT_NE(message.find((dir / "igakuqa_data").string()), std::string::npos) << message;
        EXPECT_NE(message.find("MEDLLM_SHARED_DIR"), std::string::npos) << message;
        EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    }
    fs::remove_all(dir);
}

// Run only by the next test, in a child process: a test that asks for data that is not there.
TEST(SharedData, DISABLED_NeedsMissingData) {
    shared_path("no_such_folder");
}

TEST(SharedData, ATestNeedingMissingDataFailsInsteadOfSkipping) {
    const std::string exe = fs::read_symlink("/proc/self/exe").string();
    const CliRun run      = run_shell("MEDLLM_SHARED_DIR=/nonexistent/shared " + exe +
                                      " --gtest_color=no --gtest_also_run_disabled_tests"
                                           " --gtest_filter=SharedData.DISABLED_NeedsMissingData 2>&1 </dev/null");
    EXPECT_EQ(run.exit_code, 1) << run.output;
    EXPECT_NE(run.output.find("missing shared test data /nonexistent/shared/no_such_folder: point the environment "
                              "variable MEDLLM_SHARED_DIR at the shared/ folder"),
              std::string::npos)
        << run.output;
    EXPECT_NE(run.output.find("[  FAILED  ] SharedData.DISABLED_NeedsMissingData"), std::string::npos) << run.output;
    EXPECT_EQ(run.output.find("SKIPPED"), std::string::npos) << run.output;
}

}  // namespace
