// Every `medllm ...` command line and every config key the user reads — in README.md, docs/*.md, the shipped
// configs' opening comments, the CLI sources' opening comments and every command's --help — names things that exist:
// the subcommand, each flag (as that command's --help lists it), each `--set` key and each key of a ```yaml block
// (as that command's schema lists them under "Config keys" in its --help, which prints the schema itself), and each
// configs/ file given to --config. A dotted key in prose (`loss.rpo_alpha`, `cpt.lora.r`) must be a key too, unless
// the text shows it as a refused one (`unknown key 'lora.rank' ...`). So a renamed flag or key fails here instead
// of leaving the manual describing a command that no longer runs.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "medllm/core/config.h"
#include "medllm/core/error.h"
#include "medllm/core/files.h"
#include "support/run_medllm.h"

namespace fs = std::filesystem;

namespace {

const fs::path kRoot(MEDLLM_SOURCE_DIR);

// What a command's --help says: its flags and its config keys (and the keys of its list items).
struct Help {
    std::set<std::string> flags;
    std::set<std::string> keys;
    std::map<std::string, std::set<std::string>> item_keys;  // list key -> the keys of each item
    std::string text;
};

Help parse_help(const std::string& text) {
    Help h;
    h.text = text;
    static const std::regex option_line(R"(^\s+(-[\w-]+(?:,\s*-[\w-]+)*))");
    static const std::regex key_line(R"(^  ([A-Za-z_][\w.]*) = )");
    static const std::regex item_line(R"(^      ([A-Za-z_][\w.]*) = )");
    bool in_keys = false;
    std::string last_key;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        std::smatch m;
        if (line.rfind("Config keys", 0) == 0) {
            in_keys = true;
            continue;
        }
        if (in_keys && !line.empty() && line[0] != ' ') in_keys = false;  // the footer's prose after the keys
        if (in_keys && std::regex_search(line, m, key_line)) {
            last_key = m[1];
            h.keys.insert(last_key);
        } else if (in_keys && std::regex_search(line, m, item_line)) {
            h.item_keys[last_key].insert(m[1].str());
        } else if (!in_keys && std::regex_search(line, m, option_line)) {
            std::string names = m[1];
            for (size_t start = 0; start < names.size();) {
                size_t comma = names.find(',', start);
                if (comma == std::string::npos) comma = names.size();
                std::string name = names.substr(start, comma - start);
                name.erase(0, name.find_first_not_of(' '));
                h.flags.insert(name);
                start = comma + 1;
            }
        }
    }
    return h;
}

const std::vector<std::string> kStageSections = {"eval", "cpt", "build_prefs", "rpo"};
std::string stage_command(const std::string& section) {
    if (section == "eval") return "eval igakuqa";
    if (section == "build_prefs") return "build-prefs";
    return section;
}

// Every subcommand's help, read once.
class Commands {
public:
    Commands() {
        global_ = parse_help(run_medllm("--help").output);
        static const std::regex sub_line(R"(^  ([a-z][\w-]*)\s{2,})");
        bool in_subs = false;
        std::istringstream in(global_.text);
        for (std::string line; std::getline(in, line);) {
            if (line.rfind("Subcommands:", 0) == 0) in_subs = true;
            std::smatch m;
            if (in_subs && std::regex_search(line, m, sub_line)) {
                const std::string name = m[1];
                if (name == "eval") {
                    for (const char* b : {"igakuqa", "mcqa"}) names_.insert("eval " + std::string(b));
                } else {
                    names_.insert(name);
                }
            }
        }
        // Each medllm start loads LibTorch (seconds on a busy machine): the helps are read side by side.
        std::map<std::string, std::future<std::string>> texts;
        for (const auto& name : names_)
            texts[name] = std::async(std::launch::async, [name] { return run_medllm(name + " --help").output; });
        for (auto& [name, text] : texts) help_[name] = parse_help(text.get());
    }
    bool has(const std::string& command) const { return names_.count(command) > 0; }
    const Help& help(const std::string& command) const { return help_.at(command); }
    const Help& global() const { return global_; }
    const std::set<std::string>& names() const { return names_; }

    // Whether `key` is a config key of `command` (a list item's key as `list[N].key`; in a pipeline file a stage
    // section's key as `<section>.<key>`, `<section>.set.<key>` or `<section>.config`).
    bool is_key(const std::string& command, const std::string& key) const {
        if (command == "pipeline") {
            if (help_.at("pipeline").keys.count(key)) return true;
            for (const auto& section : kStageSections) {
                const std::string p = section + ".";
                if (key.rfind(p, 0) != 0) continue;
                std::string sub = key.substr(p.size());
                if (sub == "config" || sub == "set") return true;
                if (sub.rfind("set.", 0) == 0) sub = sub.substr(4);
                return is_key(stage_command(section), sub);
            }
            return false;
        }
        const Help& h = help_.at(command);
        static const std::regex item(R"(^([\w.]+)\[\d+\](?:\.(\w+))?$)");
        std::smatch m;
        if (std::regex_match(key, m, item)) {
            const auto it = h.item_keys.find(m[1].str());
            if (h.keys.count(m[1].str()) == 0) return false;
            return !m[2].matched || (it != h.item_keys.end() && it->second.count(m[2].str()));
        }
        if (h.keys.count(key)) return true;
        // prepare-corpus reads cpt.yaml: cpt's keys are accepted there.
        return command == "prepare-corpus" && is_key("cpt", key);
    }

    // A dotted key in prose belongs to some command (or to a pipeline file).
    bool is_any_key(const std::string& key) const {
        for (const auto& name : names_)
            if (!help_.at(name).keys.empty() && is_key(name, key)) return true;
        return false;
    }

    // The first components of every key: a dotted word in prose that starts with one of them is meant as a key.
    std::set<std::string> sections() const {
        std::set<std::string> out(kStageSections.begin(), kStageSections.end());
        for (const auto& [name, h] : help_)
            for (const auto& k : h.keys)
                if (k.find('.') != std::string::npos) out.insert(k.substr(0, k.find('.')));
        return out;
    }

private:
    Help global_;
    std::set<std::string> names_;
    std::map<std::string, Help> help_;
};

const Commands& commands() {
    static const Commands c;
    return c;
}

// A command line split as a POSIX shell splits it (quotes, backslashes), cut at a comment, a pipe or `&&`.
std::vector<std::string> shell_words(const std::string& text) {
    std::vector<std::string> out;
    std::string word;
    bool in_word = false;
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (c == '\'') {
            const size_t end = text.find('\'', i + 1);
            word += text.substr(i + 1, end == std::string::npos ? std::string::npos : end - i - 1);
            in_word = true;
            if (end == std::string::npos) break;
            i = end;
        } else if (c == '"') {
            size_t j = i + 1;
            for (; j < text.size() && text[j] != '"'; ++j) {
                if (text[j] == '\\' && j + 1 < text.size()) ++j;
                word += text[j];
            }
            in_word = true;
            i       = j;
        } else if (c == '\\' && i + 1 < text.size()) {
            word += text[++i];
            in_word = true;
        } else if (c == ' ' || c == '\t') {
            if (in_word) out.push_back(word);
            word.clear();
            in_word = false;
        } else if ((!in_word && c == '#') || c == '|' || c == ';' || c == '>' || c == '<' ||
                   (c == '&' && i + 1 < text.size() && text[i + 1] == '&')) {
            break;  // a comment, a pipe, a redirection or the next command (`a|b` in a synopsis: the first)
        } else {
            word += c;
            in_word = true;
        }
    }
    if (in_word) out.push_back(word);
    return out;
}

struct Example {
    std::string where;  // file:line or "medllm X --help"
    std::string text;   // from `medllm` on
};

// The problems of one command line ("" when it is fine).
std::string check_example(const Example& e) {
    const auto& c = commands();
    auto words    = shell_words(e.text);
    // Placeholders in synopses (`[--batch N ...]`) are still flags.
    for (auto& w : words) {
        while (!w.empty() && (w.front() == '[' || w.front() == '(')) w.erase(0, 1);
        while (!w.empty() && (w.back() == ']' || w.back() == ')' || w.back() == ',')) w.pop_back();
    }
    if (words.empty() || fs::path(words[0]).filename() != "medllm") return "not a medllm command line";
    size_t i = 1;
    while (i < words.size() && words[i].rfind("--", 0) == 0 && c.global().flags.count(words[i])) i += 2;
    if (i >= words.size() || words[i] == "..." || words[i] == "<subcommand>" || words[i] == "<command>") return "";
    std::string command = words[i++];
    if (command.rfind("-", 0) == 0) return c.global().flags.count(command) ? "" : "no global flag " + command;
    if (command == "eval" && i < words.size() && words[i].rfind("-", 0) != 0) command += " " + words[i++];
    if (command == "eval") return "";  // `medllm eval --help`
    if (!c.has(command)) return "no subcommand '" + command + "'";
    const Help& h = c.help(command);
    std::string problems;
    for (; i < words.size(); ++i) {
        const std::string& w = words[i];
        if (w.size() < 2 || w[0] != '-' || !(std::isalpha(static_cast<unsigned char>(w[1])) || w[1] == '-')) continue;
        const std::string flag = w.substr(0, w.find('='));
        if (!h.flags.count(flag) && !c.global().flags.count(flag)) {
            problems += " no flag " + flag + ";";
            continue;
        }
        std::string value;
        if (w.find('=') != std::string::npos) {
            value = w.substr(w.find('=') + 1);
        } else if (i + 1 < words.size()) {
            value = words[i + 1];
        }
        if (flag == "--set") {
            const std::string key = value.substr(0, value.find('='));
            if (value.find('=') == std::string::npos || !c.is_key(command, key))
                problems += " --set " + value + ": no key '" + key + "' in `medllm " + command + "`;";
        } else if (flag == "--config" && value.rfind("configs/", 0) == 0 && !fs::exists(kRoot / value)) {
            problems += " --config " + value + ": no such file;";
        }
    }
    return problems;
}

// `medllm ...` in markdown: each line of a code block that runs it (also after torchrun/srun), each code span that
// starts with it.
std::vector<Example> markdown_examples(const fs::path& file) {
    std::vector<Example> out;
    std::ifstream in(file);
    const std::string name = file.lexically_relative(kRoot).string();
    static const std::regex runs(R"((^|[\s(])((build/)?medllm [a-z-].*)$)");
    static const std::regex span(R"(`((build/)?medllm [^`]*)`)");
    bool in_block = false;
    std::string block_lang, joined;
    size_t line_no = 0, joined_from = 0;
    for (std::string line; std::getline(in, line);) {
        ++line_no;
        if (line.rfind("```", 0) == 0) {
            in_block   = !in_block;
            block_lang = in_block ? line.substr(3) : "";
            continue;
        }
        if (in_block) {
            if (block_lang == "yaml") continue;  // their opening comment names the command; checked with the keys
            if (joined.empty()) joined_from = line_no;
            if (!line.empty() && line.back() == '\\') {
                joined += line.substr(0, line.size() - 1) + " ";
                continue;
            }
            joined += line;
            std::smatch m;
            if (std::regex_search(joined, m, runs)) out.push_back({name + ":" + std::to_string(joined_from), m[2]});
            joined.clear();
            continue;
        }
        for (auto it = std::sregex_iterator(line.begin(), line.end(), span); it != std::sregex_iterator(); ++it)
            out.push_back({name + ":" + std::to_string(line_no), (*it)[1]});
    }
    return out;
}

// Comment lines that run medllm (`#   build/medllm cpt --config ...`, `//   medllm build-prefs ...`).
std::vector<Example> comment_examples(const fs::path& file, const std::string& marker) {
    std::vector<Example> out;
    std::ifstream in(file);
    const std::string name = file.lexically_relative(kRoot).string();
    static const std::regex runs(R"(^\s*(?:torchrun .*--no-python |srun .* )?((build/)?medllm [a-z-].*)$)");
    size_t line_no = 0;
    std::string joined;
    size_t from = 0;
    for (std::string line; std::getline(in, line);) {
        ++line_no;
        if (line.rfind(marker, 0) != 0) {
            joined.clear();
            continue;
        }
        std::string body = line.substr(marker.size());
        if (joined.empty()) from = line_no;
        if (!body.empty() && body.back() == '\\') {
            joined += body.substr(0, body.size() - 1) + " ";
            continue;
        }
        joined += body;
        std::smatch m;
        // Two spaces after the command start its description (`medllm cpt --config x.yaml   what it does`).
        if (std::regex_match(joined, m, runs)) {
            std::string text = m[1];
            text             = text.substr(0, text.find("   "));
            out.push_back({name + ":" + std::to_string(from), text});
        }
        joined.clear();
    }
    return out;
}

std::vector<fs::path> manual_pages() {
    std::vector<fs::path> out = {kRoot / "README.md"};
    for (const auto& e : fs::directory_iterator(kRoot / "docs"))
        if (e.path().extension() == ".md") out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
}

std::vector<fs::path> files_under(const fs::path& dir, const std::string& ext) {
    std::vector<fs::path> out;
    for (const auto& e : fs::recursive_directory_iterator(dir))
        if (e.is_regular_file() && e.path().extension() == ext) out.push_back(e.path());
    std::sort(out.begin(), out.end());
    return out;
}

// Dotted words in text that start with a config section (`loss.rpo_alpha`, `cpt.lora.r`, `data.sources[0].path`),
// file names aside (`pairs.jsonl`, `model.safetensors`).
std::vector<std::string> key_mentions(const std::string& text) {
    static const std::regex dotted(R"((^|[^\w./$-])([a-z][a-z0-9_]*(?:\.[a-z0-9_]+|\[\d+\])+))");
    static const std::set<std::string> extensions = {"json", "jsonl",       "yaml", "yml", "md",  "html", "txt",
                                                     "log",  "safetensors", "bin",  "idx", "py",  "sh",   "cpp",
                                                     "h",    "so",          "tsv",  "pt",  "svg", "csv",  "sbatch"};
    const auto sections                           = commands().sections();
    std::vector<std::string> out;
    for (auto it = std::sregex_iterator(text.begin(), text.end(), dotted); it != std::sregex_iterator(); ++it) {
        const std::string k = (*it)[2];
        // `model.load_adapter(...)` is a call in a code sample, not a key.
        const size_t end = static_cast<size_t>(it->position(2) + it->length(2));
        if (end < text.size() && text[end] == '(') continue;
        if (!sections.count(k.substr(0, k.find_first_of(".[")))) continue;
        const size_t dot = k.rfind('.');
        if (dot != std::string::npos && extensions.count(k.substr(dot + 1))) continue;
        out.push_back(k);
    }
    return out;
}

// A key the text shows as refused: `unknown key 'lora.rank'` (the message may wrap onto the next line).
bool shown_as_refused(const std::string& text, const std::string& key) {
    return text.find("unknown key '" + key + "'") != std::string::npos;
}

}  // namespace

TEST(DocsExamples, EveryCommandLineNamesRealSubcommandsFlagsAndKeys) {
    std::vector<Example> examples;
    for (const auto& page : manual_pages())
        for (auto& e : markdown_examples(page)) examples.push_back(e);
    for (const auto& file : files_under(kRoot / "configs", ".yaml"))
        for (auto& e : comment_examples(file, "#")) examples.push_back(e);
    for (const auto& file : files_under(kRoot / "src" / "cli", ".cpp"))
        for (auto& e : comment_examples(file, "//")) examples.push_back(e);
    for (const auto& name : commands().names()) {
        std::istringstream in(commands().help(name).text);
        static const std::regex runs(R"(^\s*(?:torchrun .*--no-python |srun .* )?(medllm [a-z-].*)$)");
        for (std::string line; std::getline(in, line);) {
            std::smatch m;
            if (std::regex_match(line, m, runs))
                examples.push_back({"medllm " + name + " --help", std::string(m[1]).substr(0, m[1].str().find("   "))});
        }
    }
    // The manual shows each command at work: far more lines than this if the extraction broke.
    ASSERT_GE(examples.size(), 60u);
    std::set<std::string> seen;
    for (const auto& e : examples) {
        seen.insert(shell_words(e.text).size() > 1 ? shell_words(e.text)[1] : "");
        const std::string problems = check_example(e);
        EXPECT_EQ(problems, "") << e.where << ": " << e.text;
    }
    for (const char* command : {"cpt", "rpo", "build-prefs", "pipeline", "eval", "prepare-corpus", "merge"})
        EXPECT_TRUE(seen.count(command)) << "no example of medllm " << command;
}

// A ```sh block of the manual holds only medllm command lines and comments (other shell goes in ```bash blocks), so
// every line a reader copies from one is checked above.
TEST(DocsExamples, ShellBlocksHoldOnlyMedllmCommandLines) {
    size_t lines = 0;
    for (const auto& page : manual_pages()) {
        std::ifstream in(page);
        const std::string name = page.lexically_relative(kRoot).string();
        bool in_sh = false, in_block = false;
        std::string joined;
        size_t line_no = 0;
        for (std::string line; std::getline(in, line);) {
            ++line_no;
            if (line.rfind("```", 0) == 0) {
                in_block = !in_block;
                in_sh    = in_block && line == "```sh";
                continue;
            }
            if (!in_sh || line.empty() || line[0] == '#') continue;  // a comment (what the line prints)
            joined += line;
            if (joined.back() == '\\') continue;
            ++lines;
            EXPECT_TRUE(joined.rfind("build/medllm ", 0) == 0 || joined.rfind("medllm ", 0) == 0)
                << name << ":" << line_no << ": a ```sh block holds medllm command lines only (use ```bash)\n  "
                << joined;
            joined.clear();
        }
    }
    EXPECT_GE(lines, 30u);
}

// Each ```yaml block of the manual opens with `# medllm <command> ...` and holds only that command's keys.
TEST(DocsExamples, EveryYamlBlockUsesItsCommandsKeys) {
    size_t blocks = 0;
    for (const auto& page : manual_pages()) {
        std::ifstream in(page);
        const std::string name = page.lexically_relative(kRoot).string();
        bool in_block          = false;
        std::string text, command;
        size_t line_no = 0, opened = 0;
        for (std::string line; std::getline(in, line);) {
            ++line_no;
            if (!in_block && line == "```yaml") {
                in_block = true;
                opened   = line_no;
                text.clear();
                continue;
            }
            if (!in_block) continue;
            if (line != "```") {
                text += line + "\n";
                continue;
            }
            in_block = false;
            ++blocks;
            const std::string where = name + ":" + std::to_string(opened);
            static const std::regex head(R"(^# (?:build/)?medllm (eval igakuqa|eval mcqa|[a-z-]+))");
            std::smatch m;
            if (!std::regex_search(text, m, head)) {
                ADD_FAILURE() << where << ": a yaml block opens with `# medllm <command> ...`";
                continue;
            }
            command = m[1];
            ASSERT_TRUE(commands().has(command)) << where << ": no subcommand " << command;
            const fs::path tmp =
                fs::temp_directory_path() / ("medllm-docs-block-" + std::to_string(::getpid()) + ".yaml");
            medllm::write_file_atomic(tmp, text);
            try {
                for (const auto& [key, v] : medllm::config_detail::load_flat({tmp.string(), {}})) {
                    EXPECT_TRUE(commands().is_key(command, key))
                        << where << ": '" << key << "' is no key of `medllm " << command << "`";
                    // A list of mappings (data.sources): each item's keys are the item schema's.
                    if (!v.value.is_array()) continue;
                    for (const auto& item : v.value) {
                        if (!item.is_object()) continue;
                        for (const auto& [field, _] : medllm::config_detail::flatten_mapping(item, "docs"))
                            EXPECT_TRUE(commands().is_key(command, key + "[0]." + field))
                                << where << ": '" << key << "[]." << field << "' is no key of `medllm " << command
                                << "`";
                    }
                }
            } catch (const medllm::Error& e) {
                ADD_FAILURE() << where << ": " << e.what();
            }
            fs::remove(tmp);
        }
    }
    EXPECT_GE(blocks, 6u);
}

// A dotted key in the manual's prose or code, or in any --help, is a key of some command (or of a pipeline file),
// unless it is shown as refused. `lora.rank` in particular is not a key (the rank is `lora.r`).
TEST(DocsExamples, EveryKeyMentionedIsAKey) {
    size_t mentions = 0;
    auto check      = [&](const std::string& where, const std::string& text) {
        std::istringstream in(text);
        size_t line_no = 0;
        std::string previous;
        for (std::string line; std::getline(in, line); previous = line) {
            ++line_no;
            for (const auto& key : key_mentions(line)) {
                ++mentions;
                if (shown_as_refused(previous + " " + line, key)) continue;
                EXPECT_TRUE(commands().is_any_key(key))
                    << where << ":" << line_no << ": '" << key << "' is no config key of any command\n  " << line;
            }
        }
    };
    for (const auto& page : manual_pages())
        check(page.lexically_relative(kRoot).string(), medllm::read_text_file(page));
    for (const auto& name : commands().names()) check("medllm " + name + " --help", commands().help(name).text);
    EXPECT_GE(mentions, 150u);

    // The check itself: lora.rank is refused, lora.r and the pipeline's spellings are keys.
    EXPECT_FALSE(commands().is_any_key("lora.rank"));
    EXPECT_TRUE(commands().is_any_key("lora.r"));
    EXPECT_TRUE(commands().is_key("pipeline", "cpt.lora.r"));
    EXPECT_TRUE(commands().is_key("pipeline", "rpo.set.loss.beta"));
    EXPECT_FALSE(commands().is_key("pipeline", "cpt.lora.rank"));
    EXPECT_EQ(key_mentions("`model.load_adapter(\"x\")` and `lora.r`"), std::vector<std::string>{"lora.r"});
    EXPECT_TRUE(commands().is_key("cpt", "data.sources[0].path"));
    EXPECT_FALSE(commands().is_key("cpt", "data.sources[0].paht"));
    EXPECT_EQ(check_example({"test", "medllm cpt --config configs/tiny/cpt.yaml --set lora.rank=8"}),
              " --set lora.rank=8: no key 'lora.rank' in `medllm cpt`;");
    EXPECT_EQ(check_example({"test", "build/medllm info --model DIR --lora-rank 8 --no-such-flag"}),
              " no flag --no-such-flag;");
    EXPECT_NE(check_example({"test", "medllm eval igakuqa --config configs/nowhere.yaml"}), "");
}
