// Every shipped config (configs/**/*.yaml, found by globbing: a new file is covered without editing this test)
// resolves through the schema of the command its header names, and the paper's run resolves to the paper's values,
// so a value that drifts from the paper fails here instead of shipping.
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>

#include <gtest/gtest.h>

#include "medllm/core/config.h"
#include "medllm/core/error.h"
#include "medllm/eval/igakuqa_command.h"
#include "medllm/eval/mcqa_data.h"
#include "medllm/peft/lora.h"
#include "medllm/pipeline/pipeline.h"
#include "medllm/pipeline/stage_configs.h"
#include "medllm/prefs/build_prefs_command.h"
#include "medllm/train/cpt_config.h"
#include "medllm/train/rpo_config.h"
#include "pipeline_test_util.h"

namespace fs = std::filesystem;
using namespace medllm;

namespace {

const fs::path kRoot(MEDLLM_SOURCE_DIR);

// The keys of a stage kind's command, from the schema its standalone command reads.
std::vector<std::string> command_keys(const std::string& kind) {
    if (kind == "cpt") {
        ConfigSchema<train::CptConfig> s;
        train::add_cpt_fields(s);
        return s.keys();
    }
    if (kind == "rpo") {
        ConfigSchema<train::RpoConfig> s;
        train::add_rpo_fields(s);
        return s.keys();
    }
    if (kind == "build-prefs") return prefs::build_prefs_schema().keys();
    if (kind == "eval") return eval::eval_igakuqa_schema().keys();
    ADD_FAILURE() << "no stage kind " << kind;
    return {};
}

// Resolved through the command's schema: every key of the command listed, in its order, defaults included.
bool resolved_by_schema(const std::string& kind, const pipeline::StageConfig& c) {
    std::vector<std::string> keys;
    for (const auto& e : c.entries) keys.push_back(e.key);
    return keys == command_keys(kind) && c.values.size() == keys.size();
}

std::vector<fs::path> shipped_configs() {
    std::vector<fs::path> out;
    for (const auto& e : fs::recursive_directory_iterator(kRoot / "configs"))
        if (e.is_regular_file() && (e.path().extension() == ".yaml" || e.path().extension() == ".yml"))
            out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
}

// The commands a config's opening comment runs it with ("# build/medllm rpo --config ...").
std::set<std::string> commands_in_header(const fs::path& file) {
    static const std::regex command(
        R"(medllm (pipeline|cpt|rpo|prepare-corpus|build-prefs|eval igakuqa) --config|medllm (eval mcqa --tasks-config|eval mcqa --task) )");
    std::ifstream in(file);
    std::set<std::string> out;
    for (std::string line; std::getline(in, line) && (line.empty() || line[0] == '#');)
        for (auto it = std::sregex_iterator(line.begin(), line.end(), command); it != std::sregex_iterator(); ++it)
            out.insert((*it)[1].matched ? (*it)[1].str() : (*it)[2].str());
    return out;
}

// The flat document of a config file, every key checked by the stage kind's schema.
pipeline::StageConfig resolve_file(const std::string& kind, const fs::path& file) {
    return pipeline::resolve_stage_config(kind, config_detail::load_flat({file.string(), {}}), file.string());
}

std::string value_of(const pipeline::StageConfig& c, const std::string& key) {
    for (const auto& e : c.entries)
        if (e.key == key) return e.value;
    ADD_FAILURE() << "no key " << key;
    return "";
}

using pipeline_test::stage_named;

}  // namespace

TEST(ShippedConfigs, EveryFileResolvesThroughItsCommandsSchema) {
    const auto files = shipped_configs();
    ASSERT_GE(files.size(), 15u);  // configs/qwen2.5-72b, -7b, quickstart, tiny, mcqa
    for (const auto& file : files) {
        const std::string name = file.lexically_relative(kRoot).string();
        const auto commands    = commands_in_header(file);
        EXPECT_FALSE(commands.empty()) << name << ": its opening comment should name the command that runs it";
        for (const auto& cmd : commands) {
            SCOPED_TRACE(name + " as `medllm " + cmd + "`");
            try {
                if (cmd == "pipeline") {
                    const auto config = pipeline::load_pipeline_config({file.string(), {}});
                    for (const auto& s : pipeline::plan_stages(config)) {
                        if (s.kind == "merge" || s.kind == "report") continue;
                        EXPECT_TRUE(resolved_by_schema(s.kind, s.resolved))
                            << s.name << " is not resolved through its command's schema";
                    }
                } else if (cmd == "cpt" || cmd == "prepare-corpus") {
                    // prepare-corpus reads cpt.yaml and accepts exactly cpt's keys.
                    EXPECT_TRUE(resolved_by_schema("cpt", resolve_file("cpt", file)));
                } else if (cmd == "rpo") {
                    EXPECT_TRUE(resolved_by_schema("rpo", resolve_file("rpo", file)));
                } else if (cmd == "build-prefs") {
                    EXPECT_TRUE(resolved_by_schema("build-prefs", resolve_file("build-prefs", file)));
                } else if (cmd == "eval igakuqa") {
                    EXPECT_TRUE(resolved_by_schema("eval", resolve_file("eval", file)));
                } else if (cmd == "eval mcqa --task") {
                    eval::resolve_mcqa_task(file.string());
                } else if (cmd == "eval mcqa --tasks-config") {
                    EXPECT_FALSE(eval::load_mcqa_tasks_config(file).empty());
                }
            } catch (const Error& e) {
                ADD_FAILURE() << e.what();
            }
        }
    }
}

// The paper's run as configs/qwen2.5-72b/pipeline.yaml resolves it: the stage configs it names, the pipeline's
// wiring, and the DPO ablation row.
TEST(ShippedConfigs, The72bPipelineRunsThePapersRecipe) {
    const std::string file = (kRoot / "configs/qwen2.5-72b/pipeline.yaml").string();
    const auto config      = pipeline::load_pipeline_config({file, {"rows.cpt_dpo=true"}});
    const auto stages      = pipeline::plan_stages(config);
    const fs::path run(config.run_dir);

    // CPT (paper §3.1): QLoRA (a frozen NF4 base with double quantization), AdamW, cosine with warmup, 2 epochs.
    const auto& cpt = stage_named(stages, "cpt").resolved;
    EXPECT_EQ(value_of(cpt, "lora.quantize_base"), "true");
    const peft::LoraConfig qlora;  // what lora.quantize_base builds: bitsandbytes' NF4, 64-element blocks
    EXPECT_TRUE(qlora.double_quant);
    EXPECT_EQ(qlora.blocksize, 64);
    // AdamW is the optimizer of cpt and rpo (train/optimizer.h, the only one); its keys are HF's defaults.
    EXPECT_EQ(value_of(cpt, "optim.beta1"), "0.9");
    EXPECT_EQ(value_of(cpt, "optim.beta2"), "0.999");
    EXPECT_EQ(value_of(cpt, "schedule.name"), "cosine");
    EXPECT_TRUE(std::stod(value_of(cpt, "schedule.warmup_ratio")) > 0 ||
                std::stoll(value_of(cpt, "schedule.warmup_steps")) > 0);
    EXPECT_EQ(value_of(cpt, "training.epochs"), "2");
    EXPECT_EQ(value_of(cpt, "training.max_steps"), "0");  // epochs decide
    EXPECT_EQ(value_of(cpt, "model.path"), config.base_model);
    EXPECT_EQ(value_of(cpt, "eval_guard.enabled"), "true");

    // RPO (paper §3.3): DPO (sigmoid) + 10 x NLL of the chosen answer, one epoch, from the CPT weights.
    const auto& rpo = stage_named(stages, "rpo").resolved;
    EXPECT_EQ(value_of(rpo, "loss.loss_type"), "sigmoid");
    EXPECT_EQ(value_of(rpo, "loss.rpo_alpha"), "10");
    EXPECT_EQ(value_of(rpo, "loss.loss_weights"), "null");
    EXPECT_EQ(value_of(rpo, "training.epochs"), "1");
    EXPECT_EQ(value_of(rpo, "training.max_steps"), "0");
    EXPECT_EQ(value_of(rpo, "lora.quantize_base"), "true");
    EXPECT_EQ(value_of(rpo, "schedule.name"), "cosine");
    // Starting from the CPT weights: either the merged CPT model as the base (what the pipeline wires: merge-cpt
    // folds cpt's adapter into the base once, for eval-cpt, build-prefs and rpo alike), or the base with
    // lora.init_adapter = cpt's adapter merged in by rpo itself (lora.merge_init_adapter).
    const auto& merge_cpt                     = stage_named(stages, "merge-cpt");
    const std::vector<std::string> merge_args = {"merge",
                                                 "--model",
                                                 config.base_model,
                                                 "--adapter",
                                                 (run / "cpt" / "adapter").string(),
                                                 "--output",
                                                 (run / "merge-cpt").string()};
    EXPECT_EQ(merge_cpt.args, merge_args);
    const bool on_merged =
        value_of(rpo, "model.path") == (run / "merge-cpt").string() && value_of(rpo, "lora.init_adapter").empty();
    const bool merges_itself = value_of(rpo, "model.path") == config.base_model &&
                               value_of(rpo, "lora.init_adapter") == (run / "cpt" / "adapter").string() &&
                               value_of(rpo, "lora.merge_init_adapter") == "true";
    EXPECT_TRUE(on_merged || merges_itself)
        << value_of(rpo, "model.path") << " / " << value_of(rpo, "lora.init_adapter");
    EXPECT_EQ(value_of(rpo, "lora.merge_init_adapter"), "true");
    // The reference is that model with the adapter off (no other adapter under it), its log-probs precomputed once.
    EXPECT_EQ(value_of(rpo, "lora.resume_adapter"), "");
    EXPECT_EQ(value_of(rpo, "reference.precompute"), "true");
    EXPECT_EQ(value_of(rpo, "data.path"), (run / "build-prefs" / "pairs.jsonl").string());

    // The DPO ablation row: the same stage with alpha 0 and nothing else changed.
    const auto& dpo = stage_named(stages, "rpo-dpo").resolved;
    EXPECT_EQ(value_of(dpo, "loss.rpo_alpha"), "0");
    for (const auto& e : rpo.entries) {
        if (e.key == "loss.rpo_alpha" || e.key == "output") continue;
        EXPECT_EQ(value_of(dpo, e.key), e.value) << e.key;
    }

    // build-prefs (paper §3.2): the CPT model answers 3-shot with the paper's template.
    const auto& prefs = stage_named(stages, "build-prefs");
    EXPECT_EQ(prefs.config["model"], (run / "merge-cpt").string());
    EXPECT_EQ(value_of(prefs.resolved, "template.preset"), "paper");
    EXPECT_EQ(value_of(prefs.resolved, "few_shot.k"), "3");
    // Its guard refuses the evaluation exams: by exam number, and by problem_id and text in the folder eval reads.
    EXPECT_EQ(value_of(prefs.resolved, "guard.eval_exams"), "[112, 113, 114, 115, 116]");
    EXPECT_EQ(value_of(prefs.resolved, "guard.years"), "2018-2022");
    EXPECT_EQ(value_of(prefs.resolved, "guard.igakuqa_dir"),
              value_of(stage_named(stages, "eval-base").resolved, "data_dir"));
    EXPECT_EQ(value_of(prefs.resolved, "guard.allow_eval_overlap"), "false");

    // Evaluation: IgakuQA 2018-2022, 3-shot with and without explanation, for every row.
    size_t evals = 0;
    for (const auto& s : stages) {
        if (s.kind != "eval") continue;
        ++evals;
        EXPECT_EQ(value_of(s.resolved, "years"), "2018-2022") << s.name;
        EXPECT_EQ(value_of(s.resolved, "mode"), "both") << s.name;
        EXPECT_EQ(value_of(s.resolved, "extraction"), "official") << s.name;
    }
    EXPECT_EQ(evals, 4u);  // base, +CPT, +CPT+RPO, +CPT+DPO
}

// The 7B pipeline is the same recipe on one GPU: the paper's values hold there too.
TEST(ShippedConfigs, The7bPipelineRunsThePapersRecipe) {
    const auto config = pipeline::load_pipeline_config({(kRoot / "configs/qwen2.5-7b/pipeline.yaml").string(), {}});
    const auto stages = pipeline::plan_stages(config);
    const auto& cpt   = stage_named(stages, "cpt").resolved;
    const auto& rpo   = stage_named(stages, "rpo").resolved;
    EXPECT_EQ(value_of(cpt, "lora.quantize_base"), "true");
    EXPECT_EQ(value_of(cpt, "schedule.name"), "cosine");
    EXPECT_EQ(value_of(cpt, "training.epochs"), "2");
    EXPECT_EQ(value_of(rpo, "loss.loss_type"), "sigmoid");
    EXPECT_EQ(value_of(rpo, "loss.rpo_alpha"), "10");
    EXPECT_EQ(value_of(rpo, "training.epochs"), "1");
    EXPECT_EQ(value_of(stage_named(stages, "build-prefs").resolved, "few_shot.k"), "3");
    EXPECT_EQ(value_of(stage_named(stages, "eval-cpt-rpo").resolved, "mode"), "both");
}

// dpo_qlora.yaml, the ablation by hand, is rpo_qlora.yaml with alpha 0: no other value may drift between them.
TEST(ShippedConfigs, TheStandaloneDpoConfigIsTheRpoConfigWithAlphaZero) {
    const auto rpo = resolve_file("rpo", kRoot / "configs/qwen2.5-72b/rpo_qlora.yaml");
    const auto dpo = resolve_file("rpo", kRoot / "configs/qwen2.5-72b/dpo_qlora.yaml");
    EXPECT_EQ(value_of(dpo, "loss.rpo_alpha"), "0");
    for (const auto& e : rpo.entries) {
        if (e.key == "loss.rpo_alpha" || e.key == "output") continue;
        EXPECT_EQ(value_of(dpo, e.key), e.value) << e.key;
    }
}
