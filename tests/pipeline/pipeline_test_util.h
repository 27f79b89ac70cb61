// Helpers shared by the pipeline suites: a UsageError's message, a stage and its resolved values by name, medllm
// run from the repository root (where the shipped configs' relative paths point).
#pragma once

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "medllm/core/error.h"
#include "medllm/pipeline/pipeline.h"
#include "support/run_medllm.h"

namespace pipeline_test {

// The message of the UsageError `f` throws, "" when it throws none.
inline std::string usage_error(const std::function<void()>& f) {
    try {
        f();
    } catch (const medllm::UsageError& e) {
        return e.what();
    }
    return "";
}

inline const medllm::pipeline::Stage& stage_named(const std::vector<medllm::pipeline::Stage>& stages,
                                                  const std::string& name) {
    for (const auto& s : stages)
        if (s.name == name) return s;
    throw std::runtime_error("no stage " + name);
}

// A key of a resolved stage config: its value as text, or where it came from ("" when the schema has no such key).
inline std::string resolved_value(const medllm::pipeline::StageConfig& c, const std::string& key) {
    for (const auto& e : c.entries)
        if (e.key == key) return e.value;
    return "";
}
inline std::string resolved_origin(const medllm::pipeline::StageConfig& c, const std::string& key) {
    for (const auto& e : c.entries)
        if (e.key == key) return e.origin;
    return "";
}

// `medllm ARGS` from the repository root, stdout and stderr together.
inline CliRun medllm_in_root(const std::string& args) {
    return run_shell(std::string("cd ") + MEDLLM_SOURCE_DIR + " && " + MEDLLM_BINARY + " " + args + " 2>&1 </dev/null");
}

}  // namespace pipeline_test
