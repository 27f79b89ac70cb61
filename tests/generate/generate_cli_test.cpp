// `medllm generate` and `medllm eval igakuqa --model` through the built binary, on the fixture model with the
// tiny byte-level tokenizer (tests/generate/generate_test_util.h). Outputs are checked against the library run on
// the same prompts and options.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>
#include "support/file_limit.h"
#include "support/run_medllm.h"

#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>

#include "generate/generate_test_util.h"
#include "medllm/generate/engine.h"
#include "support/shared_data.h"

namespace {

namespace fs = std::filesystem;
namespace gt = medllm::generate::testing;
using namespace medllm::generate;

// A per-process path under the test temp dir: several builds' tests may run on one machine at once.
fs::path scratch(const std::string& name) {
    return fs::path(::testing::TempDir()) / (name + "_" + std::to_string(::getpid()));
}

std::vector<std::string> read_lines(const fs::path& path) {
    std::ifstream in(path);
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) lines.push_back(line);
    return lines;
}

class GenerateCli : public ::testing::Test {
protected:
    static void SetUpTestSuite() { dir_ = new fs::path(gt::make_printable_model_dir(scratch("gen_cli_model"))); }
    static void TearDownTestSuite() {
        fs::remove_all(*dir_);
        delete dir_;
    }
    static fs::path* dir_;
    const fs::path& dir() const { return *dir_; }
};
fs::path* GenerateCli::dir_ = nullptr;

TEST_F(GenerateCli, HelpShowsDecodingDefaults) {
    const auto run = run_medllm("generate --help");
    EXPECT_EQ(run.exit_code, 0) << run.output;
    for (const char* s :
         {"--max-new-tokens", "--temperature", "--top-p", "--min-p", "--repetition-penalty", "--stop", "--seed",
          "--adapter", "--input", "--output", "=256", "--overwrite", ".run.json", "naming the key that differs"})
        EXPECT_NE(run.output.find(s), std::string::npos) << s << "\n" << run.output;
}

TEST_F(GenerateCli, SinglePromptStreamsTheGreedyCompletion) {
    LoadOptions lo;
    lo.device   = "cpu";
    auto loaded = load_model(dir(), lo);
    Generator gen(loaded.model, loaded.tokenizer, loaded.eos_token_ids);
    GenerateOptions opt;
    opt.max_new_tokens = 20;
    const auto want    = gen.generate({loaded.tokenizer->encode("Hello there")}, opt)[0];
    ASSERT_FALSE(want.text.empty());
    const auto run = run_medllm("generate --model " + dir().string() + " --prompt 'Hello there' --max-new-tokens 20",
                                /*stderr_too=*/false);
    EXPECT_EQ(run.exit_code, 0);
    EXPECT_EQ(run.output, want.text + "\n");
}

TEST_F(GenerateCli, FileRunMatchesTheLibraryAndResumes) {
    const fs::path work = scratch("gen_cli_file");
    fs::remove_all(work);
    fs::create_directories(work);
    const std::vector<std::string> texts = {"alpha", "a longer prompt with more words", "x", "the end is near", "b c"};
    {
        std::ofstream in(work / "prompts.jsonl");
        for (size_t i = 0; i < texts.size(); ++i) {
            if (i == 2) in << "\n";  // blank lines are skipped
            in << nlohmann::json{{"prompt", texts[i]}, {"id", "q" + std::to_string(i)}}.dump() << "\n";
        }
        in << nlohmann::json{{"messages", {{{"role", "user"}, {"content", "hi"}}}}}.dump() << "\n";
    }
    const std::string args =
        "generate --model " + dir().string() + " --input " + (work / "prompts.jsonl").string() + " --output " +
        (work / "out.jsonl").string() +
        " -n 2 --temperature 0.8 --top-k 40 --seed 7 --max-new-tokens 12 --batch-size 3 --logprobs";
    auto run = run_medllm(args);
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("tok/s"), std::string::npos) << run.output;
    const auto lines = read_lines(work / "out.jsonl");
    ASSERT_EQ(lines.size(), texts.size() + 1);

    // The library with the same prompts and options gives the same completions.
    LoadOptions lo;
    lo.device   = "cpu";
    auto loaded = load_model(dir(), lo);
    std::vector<std::vector<TokenId>> prompts;
    for (const auto& t : texts) prompts.push_back(loaded.tokenizer->encode(t));
    prompts.push_back(loaded.tokenizer->encode(loaded.tokenizer->apply_chat_template({{"user", "hi"}}, true)));
    GenerateOptions opt;
    opt.max_new_tokens       = 12;
    opt.num_samples          = 2;
    opt.seed                 = 7;
    opt.sampling.do_sample   = true;
    opt.sampling.temperature = 0.8;
    opt.sampling.top_k       = 40;
    const auto want          = Generator(loaded.model, loaded.tokenizer, loaded.eos_token_ids).generate(prompts, opt);
    std::set<size_t> indices;
    for (const auto& line : lines) {
        const auto j     = nlohmann::json::parse(line);
        const size_t idx = j["index"];
        indices.insert(idx);
        if (idx < texts.size()) {
            EXPECT_EQ(j["id"], "q" + std::to_string(idx));
        }
        EXPECT_EQ(j["prompt_tokens"], prompts[idx].size());
        ASSERT_EQ(j["completions"].size(), 2u);
        for (int s = 0; s < 2; ++s) {
            const auto& c = j["completions"][s];
            const auto& w = want[idx * 2 + s];
            EXPECT_EQ(c["token_ids"].get<std::vector<TokenId>>(), w.ids) << line;
            EXPECT_EQ(c["text"], w.text);
            EXPECT_EQ(c["finish_reason"], to_string(w.finish_reason));
            EXPECT_EQ(c["logprobs"].size(), w.ids.size());
        }
    }
    EXPECT_EQ(indices.size(), texts.size() + 1);

    // Resume: keep two records and half of a third; the rerun completes the file with the same records.
    {
        std::ofstream cut(work / "out.jsonl", std::ios::trunc);
        cut << lines[0] << "\n" << lines[1] << "\n" << lines[2].substr(0, lines[2].size() / 2);
    }
    run = run_medllm(args);
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("resuming, 2 of 6"), std::string::npos) << run.output;
    const auto resumed = read_lines(work / "out.jsonl");
    EXPECT_EQ(std::multiset<std::string>(resumed.begin(), resumed.end()),
              std::multiset<std::string>(lines.begin(), lines.end()));
    // Nothing left: a third run does no work.
    run = run_medllm(args);
    EXPECT_EQ(run.exit_code, 0) << run.output;
    EXPECT_EQ(read_lines(work / "out.jsonl").size(), lines.size());
    fs::remove_all(work);
}

TEST_F(GenerateCli, BadInputIsNamedByFileAndLine) {
    const fs::path work = scratch("gen_cli_bad");
    fs::remove_all(work);
    fs::create_directories(work);
    const std::string base = "generate --model " + dir().string() + " --output " + (work / "out.jsonl").string();
    std::ofstream(work / "bad.jsonl") << "{\"prompt\": \"ok\"}\n{\"prompt\": \"ok\"}\n{\"prompt\": oops}\n";
    auto run = run_medllm(base + " --input " + (work / "bad.jsonl").string());
    EXPECT_EQ(run.exit_code, 1);
    EXPECT_NE(run.output.find("bad.jsonl:3: not valid JSON"), std::string::npos) << run.output;
    std::ofstream(work / "nokey.jsonl") << "{\"text\": \"ok\"}\n";
    run = run_medllm(base + " --input " + (work / "nokey.jsonl").string());
    EXPECT_EQ(run.exit_code, 1);
    EXPECT_NE(run.output.find("nokey.jsonl:1: needs a \"prompt\""), std::string::npos) << run.output;
    // A prompt longer than the context (256 tokens; one byte token per character here).
    std::ofstream(work / "long.jsonl") << "{\"prompt\": \"short\"}\n{\"prompt\": \"" << std::string(300, 'z')
                                       << "\"}\n";
    run = run_medllm(base + " --input " + (work / "long.jsonl").string());
    EXPECT_EQ(run.exit_code, 1);
    EXPECT_NE(run.output.find("long.jsonl:2: the prompt has 300 tokens"), std::string::npos) << run.output;
    EXPECT_NE(run.output.find("context of 256"), std::string::npos) << run.output;
    EXPECT_FALSE(fs::exists(work / "out.jsonl") && fs::file_size(work / "out.jsonl") > 0);
    // Usage errors.
    EXPECT_EQ(run_medllm("generate --model " + dir().string()).exit_code, 2);  // neither --prompt nor --input
    EXPECT_EQ(run_medllm("generate --model " + dir().string() + " --prompt x --top-p 0").exit_code, 2);
    EXPECT_EQ(run_medllm("generate --model /nonexistent --prompt x").exit_code, 2);
    EXPECT_EQ(run_medllm("generate --model " + dir().string() + " --prompt x --adapter /nonexistent").exit_code, 2);
    fs::remove_all(work);
}

// `eval igakuqa --model` end to end, both modes, on one question per section of 2018 with a one-example few-shot
// file.
TEST(EvalWithModel, IgakuqaRunsEndToEnd) {
    const fs::path work = scratch("gen_eval");
    fs::remove_all(work);
    const fs::path model = gt::make_printable_model_dir(work / "model", /*context=*/16384);
    const fs::path src   = shared_path("igakuqa_data/data/2018");
    const fs::path data  = work / "data";
    fs::create_directories(data / "data" / "2018");
    int sections = 0;
    for (char s : {'A', 'B', 'C', 'D', 'E', 'F'}) {
        for (const std::string suffix : {".jsonl", "_metadata.jsonl"}) {
            std::ifstream in(src / ("112-" + std::string(1, s) + suffix));
            std::string first;
            ASSERT_TRUE(std::getline(in, first)) << src;
            std::ofstream(data / "data" / "2018" / ("112-" + std::string(1, s) + suffix)) << first << "\n";
        }
        ++sections;
    }
    std::ofstream(work / "fewshot.jsonl")
        << R"({"problem_id": "100E5", "problem_text": "正しいのはどれか。", "choices": ["甲", "乙"], "text_only": true, "answer": ["a"], "explanation": "甲が正しい。"})"
        << "\n";
    const auto run =
        run_medllm("eval igakuqa --data-dir " + data.string() + " --model " + model.string() +
                   " --years 2018 --prompt-format base --prompt-file " + (work / "fewshot.jsonl").string() +
                   " --max-new-tokens 4 --max-new-tokens-explanation 8 --mode both --batch-size 3 --output " +
                   (work / "out").string());
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("IgakuQA model standard"), std::string::npos) << run.output;
    EXPECT_NE(run.output.find("IgakuQA model explanation"), std::string::npos) << run.output;
    const auto predictions = read_lines(work / "out" / "predictions.jsonl");
    EXPECT_EQ(static_cast<int>(predictions.size()), 2 * sections);
    const auto report = nlohmann::json::parse(std::ifstream(work / "out" / "report.json"));
    EXPECT_EQ(report["model"], "model");
    fs::remove_all(work);
}

// `eval igakuqa --limit N`: the first N questions of each year and section; a later run with a larger limit
// resumes them and adds the rest; with --predictions it is a usage error.
TEST(EvalWithModel, LimitTakesTheFirstQuestionsOfEachSection) {
    const fs::path work = scratch("gen_eval_limit");
    fs::remove_all(work);
    const fs::path model = gt::make_printable_model_dir(work / "model", /*context=*/16384);
    const fs::path src   = shared_path("igakuqa_data/data/2018");
    const fs::path data  = work / "data";
    fs::create_directories(data / "data" / "2018");
    std::set<std::string> first, second;  // problem_ids of the first and the second question of each section
    for (char s : {'A', 'B', 'C', 'D', 'E', 'F'}) {
        for (const std::string suffix : {".jsonl", "_metadata.jsonl"}) {
            std::ifstream in(src / ("112-" + std::string(1, s) + suffix));
            std::ofstream out(data / "data" / "2018" / ("112-" + std::string(1, s) + suffix));
            std::string line;
            for (int k = 0; k < 3 && std::getline(in, line); ++k) {
                out << line << "\n";
                const std::string id = nlohmann::json::parse(line)["problem_id"];
                if (k == 0) first.insert(id);
                if (k == 1) second.insert(id);
            }
        }
    }
    std::ofstream(work / "fewshot.jsonl")
        << R"({"problem_id": "100E5", "problem_text": "正しいのはどれか。", "choices": ["甲", "乙"], "text_only": true, "answer": ["a"], "explanation": "甲が正しい。"})"
        << "\n";
    const std::string base = "eval igakuqa --data-dir " + data.string() + " --model " + model.string() +
                             " --years 2018 --prompt-format base --prompt-file " + (work / "fewshot.jsonl").string() +
                             " --max-new-tokens 2 --output " + (work / "out").string();
    auto ids = [&] {
        std::set<std::string> out;
        for (const auto& line : read_lines(work / "out" / "predictions.jsonl"))
            out.insert(nlohmann::json::parse(line)["problem_id"].get<std::string>());
        return out;
    };
    const auto one = run_medllm(base + " --limit 1");
    ASSERT_EQ(one.exit_code, 0) << one.output;
    EXPECT_EQ(ids(), first);
    const auto two = run_medllm(base + " --limit 2");
    ASSERT_EQ(two.exit_code, 0) << two.output;
    EXPECT_NE(two.output.find("6 saved, 6 to generate"), std::string::npos) << two.output;
    std::set<std::string> both = first;
    both.insert(second.begin(), second.end());
    EXPECT_EQ(ids(), both);
    const auto bad =
        run_medllm("eval igakuqa --data-dir " + data.string() + " --predictions " +
                   (work / "out" / "predictions.jsonl").string() + " --limit 1 --output " + (work / "scored").string());
    EXPECT_EQ(bad.exit_code, 2) << bad.output;
    EXPECT_NE(bad.output.find("--limit applies to --model runs"), std::string::npos) << bad.output;
    fs::remove_all(work);
}

}  // namespace

namespace {

// A pre-quantized checkpoint (`medllm quantize`) loads as NF4 without an adapter and decodes exactly like the
// dense checkpoint quantized while loading (--load-in-4bit): both hold the same NF4 bytes.
TEST_F(GenerateCli, FourBitCheckpointLoadsWithoutAnAdapter) {
    const fs::path q4 = scratch("gen_cli_model_nf4");
    fs::remove_all(q4);
    auto quantize = run_medllm("quantize --model " + dir().string() + " --output " + q4.string());
    ASSERT_EQ(quantize.exit_code, 0) << quantize.output;
    for (const auto& entry : fs::directory_iterator(dir()))  // the tiny tokenizer files, whatever their names
        if (!fs::exists(q4 / entry.path().filename())) fs::copy_file(entry.path(), q4 / entry.path().filename());

    LoadOptions on_the_fly;
    on_the_fly.device        = "cpu";
    on_the_fly.quantize_base = true;
    LoadOptions prequantized;
    prequantized.device = "cpu";
    auto a              = load_model(dir(), on_the_fly);
    auto b              = load_model(q4, prequantized);
    // Same NF4 bytes and the same layers on both sides (1e-5 of the logits' scale allows for nothing but
    // summation order).
    const auto prompt = a.tokenizer->encode("Hello there, how are you?");
    medllm::model::ForwardInputs in;
    in.input_ids = torch::tensor(std::vector<int64_t>(prompt.begin(), prompt.end())).unsqueeze(0);
    torch::NoGradGuard no_grad;
    const auto want = a.model->forward(in), got = b.model->forward(in);
    LoadOptions dense_opts;
    dense_opts.device = "cpu";
    const auto dense  = load_model(dir(), dense_opts).model->forward(in);
    EXPECT_FALSE(at::equal(dense, want));  // the projections really are quantized
    EXPECT_LE((got - want).abs().max().item<double>(), 1e-5 * want.abs().max().item<double>());
    GenerateOptions opt;
    opt.max_new_tokens = 4;
    EXPECT_EQ(Generator(b.model, b.tokenizer, b.eos_token_ids).generate({prompt}, opt)[0].ids.size(), 4u);
    fs::remove_all(q4);
}

}  // namespace

// ---------------------------------------------------------------- faults, resume identity, inputs kept

namespace {

std::string read_all(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class GenerateFiles : public GenerateCli {
protected:
    void SetUp() override {
        work_ = scratch("gen_files");
        fs::remove_all(work_);
        fs::create_directories(work_);
    }
    void TearDown() override { fs::remove_all(work_); }
    fs::path prompts(const std::string& name, int count, bool reversed = false) {
        std::ofstream in(work_ / name);
        for (int k = 0; k < count; ++k) {
            const int i = reversed ? count - 1 - k : k;
            in << nlohmann::json{{"prompt", "prompt number " + std::to_string(i)}, {"id", i}}.dump() << "\n";
        }
        return work_ / name;
    }
    std::string args(const fs::path& input, const std::string& extra = "", int max_new_tokens = 6) const {
        return "generate --model " + dir().string() + " --input " + input.string() + " --output " +
               (work_ / "out.jsonl").string() + " --max-new-tokens " + std::to_string(max_new_tokens) +
               " --temperature 0.7 --seed 3 " + extra;
    }
    fs::path work_;
};

// Finding 1: a full disk used to leave a cut file and exit 0. RLIMIT_FSIZE stands in for the full disk.
TEST_F(GenerateFiles, FullDiskStopsWithExitOneNamingTheOutput) {
    const auto input = prompts("p.jsonl", 40);
    CliRun run;
    {
        ScopedFileSizeLimit limit(3000);  // the run record (< 2 KB) fits; 40 records (> 6 KB) do not
        run = run_medllm(args(input));
    }
    EXPECT_EQ(run.exit_code, 1) << run.output;
    EXPECT_NE(run.output.find("out.jsonl: write failed"), std::string::npos) << run.output;
    // What was written resumes: the rerun completes the file with the records of one uninterrupted run.
    run = run_medllm(args(input));
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const auto lines = read_lines(work_ / "out.jsonl");
    EXPECT_EQ(lines.size(), 40u);
    fs::rename(work_ / "out.jsonl", work_ / "resumed.jsonl");
    fs::remove(work_ / "out.jsonl.run.json");
    ASSERT_EQ(run_medllm(args(input)).exit_code, 0);
    const auto clean = read_lines(work_ / "out.jsonl");
    EXPECT_EQ(std::multiset<std::string>(lines.begin(), lines.end()),
              std::multiset<std::string>(clean.begin(), clean.end()));
}

// Finding 1: `generate --prompt ... > /dev/full` used to exit 0.
TEST_F(GenerateFiles, FullStdoutIsAnError) {
    for (const std::string samples : {"1", "2"}) {  // streamed, and printed per sample
        const auto run = run_medllm_stdout_to(
            "generate --model " + dir().string() + " --prompt 'Hello there' --max-new-tokens 8 -n " + samples,
            "/dev/full");
        EXPECT_EQ(run.exit_code, 1) << run.output;
        EXPECT_NE(run.output.find("standard output: write failed"), std::string::npos) << run.output;
    }
}

// Finding 2: resume used to go by line count only; a reordered input, another model or other decoding options
// were mixed into the same file.
TEST_F(GenerateFiles, ResumeRefusesAnotherRunNamingTheKey) {
    const auto input = prompts("p.jsonl", 6);
    ASSERT_EQ(run_medllm(args(input)).exit_code, 0);
    const std::string first = read_all(work_ / "out.jsonl");
    ASSERT_TRUE(fs::exists(work_ / "out.jsonl.run.json"));

    auto expect_refused = [&](const std::string& run_args, const std::string& key) {
        const auto run = run_medllm(run_args);
        EXPECT_EQ(run.exit_code, 1) << run.output;
        EXPECT_NE(run.output.find("different run (" + key), std::string::npos) << key << "\n" << run.output;
        EXPECT_NE(run.output.find("--overwrite"), std::string::npos) << run.output;
        EXPECT_EQ(read_all(work_ / "out.jsonl"), first) << "the file changed: " << key;
    };
    // The same prompts in another order.
    expect_refused(args(prompts("reordered.jsonl", 6, /*reversed=*/true)), "input.xxh3");
    // Other decoding options.
    expect_refused(args(input, "--top-k 5"), "decoding.sampling.top_k");
    expect_refused(args(input, "", /*max_new_tokens=*/7), "decoding.max_new_tokens");
    expect_refused(args(input, "--logprobs"), "decoding.logprobs");
    // Another model (same weights, another config.json).
    const fs::path other = work_ / "other_model";
    fs::copy(dir(), other, fs::copy_options::recursive);
    std::ofstream(other / "config.json", std::ios::app) << "\n";
    std::string other_args = args(input);
    other_args.replace(other_args.find(dir().string()), dir().string().size(), other.string());
    expect_refused(other_args, "model.files.config.json");
    // --batch-size does not change the samples: resuming with another is fine (and finds nothing to do).
    auto run = run_medllm(args(input, "--batch-size 2"));
    EXPECT_EQ(run.exit_code, 0) << run.output;
    EXPECT_NE(run.output.find("all 6 prompts are done"), std::string::npos) << run.output;
    // --overwrite starts over with the new identity.
    run = run_medllm(args(input, "--top-k 5 --overwrite"));
    EXPECT_EQ(run.exit_code, 0) << run.output;
    EXPECT_EQ(read_lines(work_ / "out.jsonl").size(), 6u);
    EXPECT_NE(read_all(work_ / "out.jsonl.run.json").find("\"top_k\": 5"), std::string::npos);
}

// Finding 2: a damaged record (a prompt twice, an index past the input) is an error, not silently kept.
TEST_F(GenerateFiles, DamagedOutputIsNamedByLine) {
    const auto input = prompts("p.jsonl", 3);
    ASSERT_EQ(run_medllm(args(input)).exit_code, 0);
    const auto lines = read_lines(work_ / "out.jsonl");
    std::ofstream(work_ / "out.jsonl", std::ios::app) << lines[0] << "\n";
    const auto run = run_medllm(args(input));
    EXPECT_EQ(run.exit_code, 1) << run.output;
    EXPECT_NE(run.output.find("out.jsonl:4: prompt"), std::string::npos) << run.output;
    EXPECT_NE(run.output.find("recorded twice"), std::string::npos) << run.output;
}

// Finding 3: an output that is the input (also through a symlink) is refused before anything is written.
TEST_F(GenerateFiles, OutputThatIsTheInputIsRefused) {
    const auto input         = prompts("p.jsonl", 3);
    const std::string before = read_all(input);
    fs::create_symlink(input, work_ / "link.jsonl");
    for (const fs::path& output : {input, work_ / "link.jsonl"}) {
        const auto run = run_medllm("generate --model " + dir().string() + " --input " + input.string() + " --output " +
                                    output.string() + " --max-new-tokens 4");
        EXPECT_EQ(run.exit_code, 2) << run.output;
        EXPECT_NE(run.output.find("is the input"), std::string::npos) << run.output;
        EXPECT_EQ(read_all(input), before);
    }
}

}  // namespace
