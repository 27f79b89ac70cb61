// The CPT corpus settings (data.*, eval_guard.*) and `medllm prepare-corpus`: tokenize once into the token cache.
#include "medllm/data/corpus_config.h"

#include <algorithm>
#include <chrono>

#include <spdlog/spdlog.h>

#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "medllm/core/interrupt.h"
#include "medllm/core/progress.h"
#include "medllm/eval/igakuqa_data.h"

namespace medllm::data {
namespace fs = std::filesystem;

fs::path CorpusConfig::resolved_cache_dir() const {
    if (!cache_dir.empty()) return cache_dir;
    if (output.empty()) throw UsageError("set data.cache_dir or output (the cache goes to <output>/corpus_cache)");
    return fs::path(output) / "corpus_cache";
}

fs::path CorpusConfig::resolved_tokenizer_dir() const {
    const std::string dir = tokenizer.empty() ? model_path : tokenizer;
    if (dir.empty())
        throw UsageError("set model.path (or model.tokenizer): the corpus is tokenized with its tokenizer");
    if (!fs::is_directory(dir))
        throw UsageError("tokenizer folder " + dir + " does not exist (model.path / model.tokenizer)");
    return dir;
}

std::shared_ptr<const ConfigSchema<SourceSpec>> source_schema() {
    auto s = std::make_shared<ConfigSchema<SourceSpec>>();
    s->field("path", &SourceSpec::path, "file, folder (searched recursively) or glob").required();
    s->field("weight", &SourceSpec::weight, "copies of each document per epoch (2 = upsample; fractions allowed)")
        .range(0, 1000);
    s->field("format", &SourceSpec::format, "auto (by extension), jsonl, text (file = document) or lines")
        .one_of({"auto", "jsonl", "text", "lines"});
    s->field("text_field", &SourceSpec::text_field, "JSONL key holding the document");
    return s;
}

PackingOptions packing_options(const CorpusConfig& c, Split split) {
    PackingOptions p;
    p.seq_len                            = c.seq_len;
    p.packing                            = parse_packing(c.packing);
    p.seed                               = static_cast<uint64_t>(c.seed);
    p.split                              = split;
    p.split_options.validation_fraction  = c.validation_fraction;
    p.split_options.validation_documents = c.validation_documents;
    p.split_options.seed                 = static_cast<uint64_t>(c.seed);
    for (const auto& s : c.sources) p.source_weights.push_back(s.weight);
    return p;
}

PrepareResult prepare_corpus(const CorpusConfig& c, bool force_rebuild) {
    const auto start = std::chrono::steady_clock::now();
    CacheBuildOptions o;
    o.sources                = c.sources;
    o.base_dir               = fs::current_path();
    o.tokenizer_dir          = c.resolved_tokenizer_dir();
    o.on_invalid             = parse_invalid_policy(c.on_invalid);
    o.append_eos             = c.append_eos;
    o.eos_token              = c.eos_token;
    o.threads                = static_cast<int>(c.threads);
    o.shard_tokens           = static_cast<uint64_t>(c.shard_mb) * (uint64_t(1) << 20) / sizeof(uint32_t);
    o.force_rebuild          = force_rebuild;
    const fs::path cache_dir = c.resolved_cache_dir();

    const std::unique_ptr<ContaminationGuard> guard = make_eval_guard(c.guard, "the corpus is");
    if (guard) {
        const auto years = eval::parse_years(c.guard.years);
        const auto& g    = guard->options();
        // The exam files' contents (questions and their English translations) are part of the identity: a changed
        // question set re-checks the corpus. Sorted, so the directory's listing order does not matter.
        std::vector<fs::path> exam_files;
        for (int y : years)
            for (const auto& e : fs::directory_iterator(fs::path(c.guard.igakuqa_dir) / "data" / std::to_string(y))) {
                const std::string name = e.path().filename().string();
                if (e.path().extension() == ".jsonl" &&
                    (name.find("_") == std::string::npos || name.find("_translate.jsonl") != std::string::npos))
                    exam_files.push_back(e.path());
            }
        std::sort(exam_files.begin(), exam_files.end());
        std::string exam_hashes;
        for (const auto& f : exam_files) exam_hashes += f.filename().string() + "=" + hash_file(f) + ";";
        o.guard          = guard.get();
        o.guard_action   = parse_guard_action(c.guard.action);
        o.guard_identity = {{"years", years},
                            {"questions", guard->num_questions()},
                            {"exams", hash_bytes(exam_hashes)},
                            {"ngram", g.ngram},
                            {"threshold", g.threshold},
                            {"min_ngrams", g.min_ngrams},
                            {"min_ngrams_en", g.min_ngrams_en},
                            // format: lines files are checked as runs of lines (a guard before this rule let
                            // questions written over several lines through, so its caches are rebuilt)
                            {"line_span_factor", kLineSpanFactor}};
    }

    std::unique_ptr<ProgressLog> progress;
    o.progress = [&](uint64_t done, uint64_t total) {
        if (!progress) progress = std::make_unique<ProgressLog>("tokenize", static_cast<int64_t>(total >> 20), "MB");
        progress->update(static_cast<int64_t>(done >> 20), 0);
    };

    // The folder's lock covers the build, the check and summary.json (its temp file has a fixed name too).
    TokenCacheLock lock(cache_dir);
    o.lock = false;
    PrepareResult r;
    r.build = build_token_cache(cache_dir, o);
    if (r.build.reused)
        spdlog::info("token cache {} is up to date (reused; nothing changed)", cache_dir.string());
    else
        spdlog::info("token cache {} built ({}): {} documents, {} tokens in {:.1f} s ({:.1f} MB/s)", cache_dir.string(),
                     r.build.rebuild_reason, r.build.documents, r.build.tokens, r.build.seconds,
                     r.build.input_bytes / 1e6 / std::max(r.build.seconds, 1e-9));
    if (r.build.flagged > 0)
        spdlog::warn("contamination guard flagged {} documents ({} dropped); report: {}", r.build.flagged,
                     r.build.dropped, r.build.guard_report.string());

    // Split and rows, from the cache as the trainer will read it.
    TokenCache cache(cache_dir);
    const auto mask  = validation_mask(cache.num_documents(), packing_options(c).split_options);
    int64_t val_docs = 0, val_tokens = 0;
    for (std::size_t i = 0; i < cache.num_documents(); ++i)
        if (mask[i]) {
            ++val_docs;
            val_tokens += cache.document(i).length;
        }
    nlohmann::json rows;
    try {
        PackedDataset train(cache, packing_options(c, Split::train));
        rows["train_rows_per_epoch"]   = train.rows_per_epoch();
        rows["train_tokens_per_epoch"] = train.tokens_per_epoch();
        rows["padding_fraction"] = 1.0 - double(train.tokens_per_epoch()) / double(train.packed_rows() * c.seq_len);
    } catch (const Error& e) {
        rows["train_rows_per_epoch"] = 0;
        spdlog::warn("{}", e.what());
    }
    auto& b   = r.build;
    r.summary = {{"cache_dir", fs::absolute(cache_dir).string()},
                 {"reused", b.reused},
                 {"rebuild_reason", b.rebuild_reason},
                 {"files", b.files},
                 {"documents", b.documents},
                 {"tokens", b.tokens},
                 {"characters", b.characters},
                 {"characters_per_token", b.tokens ? double(b.characters) / double(b.tokens) : 0.0},
                 {"input_bytes", b.input_bytes},
                 {"skipped", b.skipped},
                 {"guard",
                  {{"enabled", c.guard.enabled},
                   {"action", c.guard.action},
                   {"flagged", b.flagged},
                   {"dropped", b.dropped},
                   {"report", b.guard_report.empty() ? "" : b.guard_report.string()},
                   {"seconds", b.guard_seconds}}},
                 {"split",
                  {{"train_documents", int64_t(cache.num_documents()) - val_docs},
                   {"validation_documents", val_docs},
                   {"train_tokens", int64_t(cache.num_tokens()) - val_tokens},
                   {"validation_tokens", val_tokens},
                   {"seed", c.seed}}},
                 {"packing", {{"mode", c.packing}, {"seq_len", c.seq_len}}},
                 {"build_seconds", b.seconds},
                 {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()}};
    r.summary["packing"].update(rows);
    write_file_atomic(cache_dir / "summary.json", dump_json(r.summary, 2) + "\n");
    return r;
}

void run_prepare_corpus(const CorpusConfig& config, const std::vector<ResolvedEntry>& resolved, bool force_rebuild) {
    start_run(config.resolved_cache_dir().string(), resolved);
    // The cache counts only once its manifest is written last, so a stop ends at once and a rerun builds it again.
    const ResumeOnSignal on_stop("prepare-corpus",
                                 "the token cache is unfinished (no manifest), so nothing reads it half-built",
                                 "build it", config.resolved_cache_dir());
    const auto result = prepare_corpus(config, force_rebuild);
    write_stdout(dump_json(result.summary, 2) + "\n");
}

}  // namespace medllm::data
