// `medllm generate`: text from a model with the batched engine. One --prompt streams its completion to stdout; an
// --input file of prompts is written to an --output JSONL one record per prompt as it finishes, resumable under a
// run identity kept in <output>.run.json (generate_to_file, generate_file.h), and shared by several processes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "medllm/dist/parallel.h"
#include "medllm/generate/engine.h"

namespace medllm::generate {

// The command's flags (the engine's own settings are `gen`).
struct GenerateConfig {
    std::string model, adapter;
    std::string prompt;  // one prompt, streamed to stdout; or
    std::string input;   // a JSONL file of prompts, written to `output`
    std::string output;
    std::string system;  // --chat's system message (default: the template's)
    std::string dtype = "auto", device = "auto";
    bool load_in_4bit = false;  // quantize the base to NF4 as it loads
    bool chat         = false;  // render --prompt as a chat user turn
    GenerateOptions gen;
    double temperature = 0.0;  // 0 = greedy
    std::vector<int64_t> stop_token_ids;
};

// Checks the flags, joins the process group (several processes only share an --input file), loads the model and
// generates. UsageError naming the flag for bad settings, before any rendezvous.
void run_generate(GenerateConfig config, const dist::RunOptions& run);

}  // namespace medllm::generate
