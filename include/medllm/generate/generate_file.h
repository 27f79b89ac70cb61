// Prompt records run through a Generator into a resumable JSONL file: what `medllm generate --input/--output` does,
// and what `medllm build-prefs` reuses to sample answers.
//
// Output: one line per prompt as soon as all its samples are done (so not in input order):
//   {"index": <0-based input record>, "id": ..., "prompt_tokens": N,
//    "completions": [{"text", "token_ids", "finish_reason": "stop"|"eos"|"length", "stop", "generated_tokens",
//                     "logprobs" (with logprobs)}]}
// A rerun resumes the file: its complete records are kept and only the missing prompts run. The run's identity
// (the caller's: input hash, model and adapter identity, dtype ...; plus every decoding option that changes the
// samples) is kept in `<output>.run.json` (core's JsonlRecordFile); a rerun with another identity is refused with
// the differing key named, unless `overwrite`.
//
// Several processes (options.place, e.g. torchrun ranks each holding a whole model) share the prompts still to do:
// rank R runs the k-th of them for k % world_size == R and appends its records to its own shard beside the output
// (out.jsonl -> out.rank1-of2.jsonl, core's ShardedRecords); at the end rank 0 folds the shards into the output in
// index order. So the output holds the same records as one process writes (as a set: one process writes them in
// finishing order), and a killed run's shards are folded in by the next run, with any number of processes.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/shards.h"
#include "medllm/generate/engine.h"

namespace medllm::generate {

struct PromptRecord {
    std::size_t index = 0;                    // 0-based record number in the input
    std::size_t line  = 0;                    // 1-based line in the input file (0: not from a file)
    nlohmann::json id;                        // copied to the output; null when absent
    std::string text;                         // the prompt, rendered (chat template applied)
    std::optional<std::vector<TokenId>> ids;  // "prompt_ids": pre-tokenized, used as is
};

// Reads prompt JSONL: one object per line with "prompt" (raw text, used as is), "messages" ([{role, content}],
// rendered with the chat template and a generation prompt) or "prompt_ids" (token ids), and optionally "id".
// Blank lines are skipped. Errors (Error) name file and line.
std::vector<PromptRecord> read_prompt_records(const std::filesystem::path& path, const text::Tokenizer& tokenizer);

// The decoding options that change the records (sampling, lengths, stops, seed, samples, logprobs), as JSON for a
// run identity. The batch size is left out: each prompt's samples do not depend on it.
nlohmann::json decoding_identity(const GenerateOptions& options, const std::vector<int64_t>& eos_token_ids);

struct GenerateFileOptions {
    std::filesystem::path output;  // empty: no file (the callbacks still see every prompt)
    // Identity of what produced the records besides the decoding options (input content hash, model, adapter,
    // dtype ...). decoding_identity() is added under "decoding".
    nlohmann::json identity = nlohmann::json::object();
    bool overwrite          = false;  // start the file over instead of resuming it
    std::string source;               // the input's name in errors ("prompts.jsonl", "--prompt")
    bool log_progress = true;         // prompts done, tok/s and ETA every 5 s
    // In a group of processes the callbacks see this rank's prompts only.
    std::function<void(const PromptRecord&, const std::vector<Completion>&)> on_record;  // after it is written
    std::function<void(const Completion&, const std::string&)> on_text;                  // streamed text
    // This process's place in a group sharing the prompts (default: one process). A group needs `output`.
    ShardPlace place;
};

// Counts are the whole run's on every rank (each rank knows what was done and what is left); stats and completions
// are this rank's share.
struct GenerateFileResult {
    std::size_t prompts   = 0;            // records given
    std::size_t resumed   = 0;            // already in the output file (or an earlier run's shards)
    std::size_t generated = 0;            // run now, by all ranks together
    GenerationStats stats;                // this rank's
    std::vector<Completion> completions;  // of this rank's prompts, in the order Generator::generate returns them
};

// Encodes the records (or takes their prompt_ids) and checks each against the model: ids inside the vocabulary,
// not empty, and leaving room in the context. Errors (Error) name source:line.
std::vector<std::vector<TokenId>> encode_prompt_records(const std::vector<PromptRecord>& records, Generator& generator,
                                                        const std::string& source);

// Runs the records that are not yet in `options.output` and appends one record per prompt (flushed and checked:
// a full disk is an Error naming the file). Every prompt is encoded and checked before the file is opened. Each
// prompt's random streams are keyed by its index, so a resumed file (or one written by several processes) holds
// what one uninterrupted run would. In a group every rank calls this with the same records and options; it returns
// once every rank's share is done and rank 0 has folded the shards (a lost rank: Error naming it).
GenerateFileResult generate_to_file(Generator& generator, const std::vector<PromptRecord>& records,
                                    GenerateOptions generate_options, const GenerateFileOptions& options);

}  // namespace medllm::generate
