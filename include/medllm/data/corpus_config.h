// The corpus part of the CPT config (`data:` and `eval_guard:` of cpt.yaml, plus `model.path` for the tokenizer
// and `output` for the default cache folder), shared by `medllm prepare-corpus` and `medllm cpt`, and the one
// call both make to get a ready token cache.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"
#include "medllm/data/corpus.h"
#include "medllm/data/guard.h"
#include "medllm/data/packing.h"
#include "medllm/data/token_cache.h"

namespace medllm::data {

struct CorpusConfig {
    std::string model_path;  // model.path: the tokenizer comes from here unless model.tokenizer is set
    std::string tokenizer;   // model.tokenizer
    std::string output = "runs/cpt";
    std::vector<SourceSpec> sources;
    std::string cache_dir;  // default <output>/corpus_cache
    std::string on_invalid = "skip";
    bool append_eos        = true;
    std::string eos_token;
    int64_t seq_len              = 4096;
    std::string packing          = "isolated";
    int64_t seed                 = 42;
    double validation_fraction   = 0.01;
    int64_t validation_documents = 0;
    int64_t threads              = 0;
    int64_t shard_mb             = 1024;
    GuardSettings guard;  // eval_guard.*

    std::filesystem::path resolved_cache_dir() const;
    std::filesystem::path resolved_tokenizer_dir() const;
};

std::shared_ptr<const ConfigSchema<SourceSpec>> source_schema();

// Adds the corpus keys to a command's schema. `Config` is CorpusConfig or a struct derived from it (cpt's).
template <class Config>
void add_corpus_fields(ConfigSchema<Config>& s) {
    using C = CorpusConfig;
    auto m  = [](auto C::*member) {
        using V = std::remove_reference_t<decltype(std::declval<C&>().*member)>;
        return static_cast<V Config::*>(member);
    };
    s.field("model.path", m(&C::model_path), "model folder; its tokenizer tokenizes the corpus");
    s.field("model.tokenizer", m(&C::tokenizer), "tokenizer folder when it is not model.path");
    s.field("output", m(&C::output), "run folder (the cache goes to <output>/corpus_cache unless data.cache_dir)");
    s.list_field("data.sources", m(&C::sources), source_schema(),
                 "corpus inputs: JSONL files, .txt/.md files, folders, globs, each with a sampling weight")
        .required();
    s.field("data.cache_dir", m(&C::cache_dir), "token cache folder (reused while nothing changes)");
    s.field("data.on_invalid", m(&C::on_invalid),
            "a bad record (malformed JSON, missing text, invalid UTF-8, empty): skip and count, or error")
        .one_of({"skip", "error"});
    s.field("data.append_eos", m(&C::append_eos), "end every document with the tokenizer's EOS token");
    s.field("data.eos_token", m(&C::eos_token), "EOS token text when the tokenizer names none ('' = its own)");
    s.field("data.seq_len", m(&C::seq_len), "tokens per training row").range(2, 1 << 24);
    s.field("data.packing", m(&C::packing),
            "isolated (no attention across documents), split (isolated, rows filled: documents continue in the next "
            "row), concat or none (padded)")
        .one_of({"isolated", "split", "concat", "none"});
    s.field("data.seed", m(&C::seed), "packing order, per-epoch shuffle, split and fractional weights").range(0, 9e15);
    s.field("data.validation.fraction", m(&C::validation_fraction), "share of documents held out for validation")
        .range(0, 0.99);
    s.field("data.validation.documents", m(&C::validation_documents),
            "held-out documents (overrides the fraction when > 0)")
        .range(0, 9e15);
    s.field("data.threads", m(&C::threads), "tokenizer and guard threads; 0 = all cores").range(0, 4096);
    s.field("data.shard_mb", m(&C::shard_mb), "largest token shard in MiB").range(1, 1 << 20);
    add_guard_fields(s, m(&C::guard), "the corpus",
                     "refuse (exit 2 naming the report), drop (train without flagged documents) or warn");
    s.strict_sections({"data", "eval_guard"});
}

struct PrepareResult {
    CacheBuildReport build;
    nlohmann::json summary;  // what prepare-corpus prints and writes as summary.json
};

// Builds (or reuses) the token cache the config describes, runs the guard, computes the split and the rows per
// epoch, and writes <cache>/summary.json. Throws UsageError for config problems and the guard's refusal.
PrepareResult prepare_corpus(const CorpusConfig& config, bool force_rebuild = false);

// The packing options the config implies (rank/world size 0/1; the trainer sets them).
PackingOptions packing_options(const CorpusConfig& config, Split split = Split::train);

// `medllm prepare-corpus`: starts the cache folder's log (medllm.log, config.resolved.yaml from `resolved`), runs
// prepare_corpus and prints the summary.
void run_prepare_corpus(const CorpusConfig& config, const std::vector<ResolvedEntry>& resolved, bool force_rebuild);

}  // namespace medllm::data
