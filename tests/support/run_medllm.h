// Runs the built `medllm` binary (MEDLLM_BINARY) the way a user would, for CLI tests.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

struct CliRun {
    int exit_code = -1;
    std::string output;  // stdout, plus stderr unless dropped
};

// Runs a shell command line and collects what it prints on stdout, with its exit code.
inline CliRun run_shell(const std::string& command) {
    CliRun run;
    FILE* pipe = popen(command.c_str(), "r");
    if (!pipe) return run;
    char buf[4096];
    while (size_t n = fread(buf, 1, sizeof buf, pipe)) run.output.append(buf, n);
    const int status = pclose(pipe);
    run.exit_code    = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return run;
}

// Standard input is /dev/null so a command waiting for input fails instead of hanging the test.
inline CliRun run_medllm(const std::string& args, bool stderr_too = true) {
    return run_shell(std::string(MEDLLM_BINARY) + " " + args + (stderr_too ? " 2>&1" : " 2>/dev/null") + " </dev/null");
}

// Runs medllm with its stdout sent to `stdout_to` (e.g. /dev/full); `output` is then what it printed on stderr.
inline CliRun run_medllm_stdout_to(const std::string& args, const std::string& stdout_to) {
    return run_shell(std::string(MEDLLM_BINARY) + " " + args + " 2>&1 >" + stdout_to + " </dev/null");
}
