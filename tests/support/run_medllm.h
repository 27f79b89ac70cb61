// Runs the built `medllm` binary (MEDLLM_BINARY) the way a user would, for CLI tests.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

struct CliRun {
    int exit_code = -1;
    std::string output;  // stdout, plus stderr unless dropped
};

// Standard input is /dev/null so a command waiting for input fails instead of hanging the test.
inline CliRun run_medllm(const std::string& args, bool stderr_too = true) {
    CliRun run;
    const std::string command =
        std::string(MEDLLM_BINARY) + " " + args + (stderr_too ? " 2>&1" : " 2>/dev/null") + " </dev/null";
    FILE* pipe = popen(command.c_str(), "r");
    if (!pipe) return run;
    char buf[4096];
    while (size_t n = fread(buf, 1, sizeof buf, pipe)) run.output.append(buf, n);
    const int status = pclose(pipe);
    run.exit_code    = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return run;
}
