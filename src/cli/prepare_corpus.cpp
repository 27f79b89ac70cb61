// `medllm prepare-corpus --config cpt.yaml`: tokenize the CPT corpus once into the token cache `medllm cpt`
// reads, checking it against the evaluation exams first. The body is data::run_prepare_corpus
// (include/medllm/data/corpus_config.h); this file declares the flags.
#include "cli/commands.h"
#include "cli/common.h"
#include "medllm/data/corpus_config.h"
#include "medllm/train/cpt.h"

namespace medllm::cli {

void add_prepare_corpus_command(CLI::App& app) {
    auto* cmd = app.add_subcommand("prepare-corpus",
                                   "Tokenize the CPT corpus (data: section of cpt.yaml) into a reusable token cache, "
                                   "checked against the IgakuQA exams");
    struct Options {
        ConfigOptions config;
        bool force = false;
    };
    auto opts = std::make_shared<Options>();
    add_config_options(cmd, opts->config);
    cmd->add_flag("--force", opts->force, "Rebuild the cache even when it is up to date");
    static const auto schema = [] {
        ConfigSchema<data::CorpusConfig> s;
        data::add_corpus_fields(s);
        // cpt.yaml is cpt's file: its other keys are accepted and left to `medllm cpt`, and no other key is.
        ConfigSchema<train::CptConfig> cpt;
        train::add_cpt_fields(cpt);
        s.accept_keys(cpt.keys());
        return s;
    }();
    cmd->footer(
        "Config keys (cpt.yaml's other keys are accepted and left to `medllm cpt`; any other key is an error):\n" +
        schema.describe() +
        "\nA rerun with nothing changed reuses the cache; any change to a source file, the tokenizer or a "
        "setting that changes tokens rebuilds all of it. The summary is printed and written to "
        "<cache>/summary.json; the guard's findings to <cache>/guard_report.json. The manifest is written last: "
        "SIGINT/SIGTERM end the build at once, leave no cache that anything reads, and print the command that "
        "builds it.");
    cmd->callback([opts] {
        if (opts->config.path.empty() && opts->config.overrides.empty())
            throw UsageError("prepare-corpus: --config cpt.yaml is required");
        std::vector<ResolvedEntry> resolved;
        const auto config = schema.load(opts->config.source(), &resolved);
        data::run_prepare_corpus(config, resolved, opts->force);
    });
}

}  // namespace medllm::cli
