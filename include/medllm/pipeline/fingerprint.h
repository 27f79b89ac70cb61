// What the pipeline records of the files a stage reads and writes, to notice on a rerun that something changed
// (include/medllm/pipeline/pipeline.h, "Rebuilds").
//
// A stage's outputs are recorded when it finishes: every file's relative path, size, modification time and XXH3 of
// its content. Hashing is paid once, when the stage has just written the files (a 145 GB merged model is read back
// once, at disk speed); a later check stats each file and trusts size + mtime, and reads a file again only when its
// mtime moved (a copy without -p), keeping the record when the content is the same. What downstream stages record
// of it is the hash over paths, sizes and contents, not times, so an output written again byte for byte does not
// rebuild what follows. Paths are relative to the stage folder: a moved run folder stays valid.
//
// An input the pipeline does not produce (the base model, a corpus, exam folders) is never read whole: its identity
// is the paths, sizes and modification times of its files, and the content of files up to 1 MiB (configs,
// tokenizers' small files, exam JSONL).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace medllm::pipeline {

// The record of a stage folder's outputs: {"<relative path>": {"size", "mtime_ns", "xxh3"}} for every file except
// the pipeline's and the command's bookkeeping (done, started.json, stage.yaml, stdout*.txt, medllm.log,
// config.resolved.yaml, TensorBoard event files) and what is not an output (checkpoint-*/, corpus_cache/,
// ref_cache/, init_merged/, *.tmp).
nlohmann::json record_outputs(const std::filesystem::path& dir);

// The hash a downstream stage records of these outputs (paths, sizes, contents; not times), over the files whose
// relative path starts with one of `only` (all of them when empty).
std::string outputs_hash(const nlohmann::json& record, const std::vector<std::string>& only = {});

// "" when the folder still holds exactly the recorded outputs, else what differs ("adapter/adapter_model.safetensors
// is missing", "... changed", "... is new"). A file whose mtime moved but whose content is the same passes, and its
// new mtime is written into `record` (`*refreshed` set), so the next check need not read it again.
std::string check_outputs(const std::filesystem::path& dir, nlohmann::json& record, bool* refreshed = nullptr);

// The identity of an input file or folder (every regular file beneath it, recursively): a hash over relative paths,
// sizes and mtimes, and the content of files up to 1 MiB. "" when the path does not exist.
std::string input_identity(const std::filesystem::path& path);

// The modification time of a file in nanoseconds since the Unix epoch (st_mtim; not the standard library's file
// clock, whose epoch differs between implementations).
int64_t unix_mtime_ns(const std::filesystem::path& path);

}  // namespace medllm::pipeline
