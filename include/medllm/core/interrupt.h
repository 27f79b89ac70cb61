// How a command whose work survives a kill ends on SIGINT/SIGTERM. build-prefs appends each finished question to
// samples.jsonl and prepare-corpus writes its cache's manifest last, so ending at once loses nothing a rerun needs;
// what they lacked is the line cpt and rpo print when stopped: how to resume. While a ResumeOnSignal lives, SIGINT
// and SIGTERM print "<command>: interrupted by SIGTERM; <kept>; run the same command again to resume: <command
// line>" on stderr and in the run's medllm.log, then end the process by that signal as before (exit status 128+N).
// Under torchrun or srun only rank 0 prints, naming the launch command instead of its own.
#pragma once

#include <filesystem>
#include <string>

namespace medllm {

class ResumeOnSignal {
public:
    // `command` names the command ("build-prefs"); `kept` says what survives ("samples.jsonl keeps every finished
    // question"); `again` what a rerun does ("resume", "build it"); `log_dir` holds the run's medllm.log ("" = none).
    ResumeOnSignal(const std::string& command, const std::string& kept, const std::string& again,
                   const std::filesystem::path& log_dir);
    ~ResumeOnSignal();  // the previous handlers back
    ResumeOnSignal(const ResumeOnSignal&)            = delete;
    ResumeOnSignal& operator=(const ResumeOnSignal&) = delete;

    // The line printed for `signal_name` ("SIGTERM"); exposed for tests.
    std::string message(const std::string& signal_name) const;

private:
    std::string command_, kept_, resume_;
};

// This process's command line (/proc/self/cmdline), each argument shell-quoted where it needs it, so it can be
// pasted back into a shell.
std::string process_command_line();

}  // namespace medllm
