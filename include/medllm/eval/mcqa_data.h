// Zero-shot multiple-choice QA (`medllm eval mcqa`, the paper's Table 3): task definitions, dataset loaders and
// prompt rendering. No LibTorch; the model side is in include/medllm/generate/loglik.h.
//
// A task is a small YAML file (or one of the built-in tasks below, or an item of a --tasks-config list):
//
//   name: my-exam                      # label in the reports
//   base: medqa-jp                     # optional: start from a built-in task and override some keys
//   loader: jsonl                      # jsonl | mmmlu_csv | pubmedqa
//   prompt: "質問：{question}\n{options}\n答え："
//   option_format: "{label}. {option}" # one line of {options}
//   option_separator: "\n"
//   labels: [A, B, C, D, E]
//   choice: label                      # what is scored after the prompt: label ("A") or option (its text)
//   target_delimiter: " "              # between prompt and choice (lm-eval's default; "" with the chat format)
//   system: ""                         # chat format: a system turn ("" = none)
//   fields: {question: question, options: options, answer: answer, context: context, id: id, subject: Subject}
//   subjects: [anatomy]                # mmmlu_csv: keep rows of these subjects ([] = all)
//   fixed_options: [yes, no, maybe]    # pubmedqa: the options every question has
//   max_new_tokens: 16                 # generative scoring: answer length
//
// Placeholders in prompt: {question} {options} {context} {subject} {labels}; "{{" and "}}" are literal braces.
//
// Loaders (a folder: every *.jsonl / *.json / *.csv in it, sorted by name). A row that does not fit is skipped
// with a reason naming file:line (reported in report.json); a file with no usable row is an Error.
//   jsonl      one object per line: question, options (a list, or one field per label: "A": ..., "B": ...),
//              answer (a label such as "C" or "c", a 0-based index, or the text of an option). JMedBench's names
//              are accepted when the configured field is absent: answer_idx for the answer, sample_id for the id,
//              metadata.<context field> for the context.
//   mmmlu_csv  MMMLU's CSV (header with Question, A, B, C, D, Answer, Subject; an unnamed index column is
//              ignored), RFC 4180 quoting (quoted fields may hold commas, quotes and newlines), filtered by subject.
//   pubmedqa   JSONL rows, or a JSON object of objects keyed by id (the original PubMedQA layout), with question,
//              context (a string or a list of strings, joined by "\n") and answer yes / no / maybe (the row's
//              options when it lists them, else fixed_options).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/core/config.h"

namespace medllm::eval {

struct McqaFields {
    std::string question = "question";
    std::string options  = "options";
    std::string answer   = "answer";
    std::string context  = "context";
    std::string id       = "id";
    std::string subject  = "Subject";
};

struct McqaTask {
    std::string name;
    std::string loader           = "jsonl";  // jsonl | mmmlu_csv | pubmedqa
    std::string prompt           = "質問：{question}\n選択肢：\n{options}\n答え：";
    std::string option_format    = "{label}. {option}";
    std::string option_separator = "\n";
    std::vector<std::string> labels{"A", "B", "C", "D", "E"};
    std::string choice           = "label";  // label | option
    std::string target_delimiter = " ";
    std::string system;
    McqaFields fields;
    std::vector<std::string> subjects;
    std::vector<std::string> fixed_options;
    int64_t max_new_tokens = 16;

    nlohmann::json to_json() const;  // every key (part of the run identity and of report.json)
    // Throws UsageError naming `where` and the key for an unknown loader/choice, an unknown placeholder, no labels.
    void validate(const std::string& where) const;
};

// The paper's tasks: medqa-jp, medmcqa-jp, pubmedqa-jp (JMedBench's translations, with JMedBench's prompts
// "質問：{question}\n{options}\n答え：" and "要旨：{context}\n質問：{question}\n答え：", each option's text
// scored) and mmmlu-medical (MMMLU JA_JP, subjects anatomy, clinical_knowledge, college_medicine,
// medical_genetics, professional_medicine; the label scored after the listed options, as lm-eval's MMLU).
std::vector<std::string> builtin_mcqa_task_names();
// Throws UsageError listing the built-in names when `name` is none of them.
McqaTask builtin_mcqa_task(const std::string& name);

// A task from a mapping (a YAML task file's document, or one item of a tasks-config list): `base` first, then
// every other key; unknown keys are a UsageError naming `where`, the key and the closest valid key. Keys named in
// `extra_keys` (e.g. "data") are left for the caller.
McqaTask mcqa_task_from_flat(const config_detail::FlatDoc& doc, const std::string& where,
                             const std::vector<std::string>& extra_keys = {});
// `--task`: a built-in name, or a YAML file (a path that exists or ends in .yaml/.yml).
McqaTask resolve_mcqa_task(const std::string& name_or_file);

// One --tasks-config entry: the task and its data.
struct McqaTaskEntry {
    McqaTask task;
    std::filesystem::path data;
};
// `tasks:` list of mappings, each a task (keys above, `task: NAME_OR_FILE` to start from a built-in or a file)
// plus `data: FILE_OR_DIR` (relative to the config file's folder). Errors name file and `tasks[i].key`.
std::vector<McqaTaskEntry> load_mcqa_tasks_config(const std::filesystem::path& file);

struct McqaQuestion {
    std::string id;  // the id field when present, else "<file name>:<line>"
    std::string question;
    std::string context;
    std::vector<std::string> options;
    int answer = -1;  // index into options
    std::string subject;
    std::string source;  // file:line
};

struct McqaDataset {
    std::vector<McqaQuestion> questions;
    std::vector<std::string> skipped;  // "file:line: reason"
    std::vector<std::filesystem::path> files;
    nlohmann::json identity;  // [{file name, size, xxh3}] for the run identity
};

// Throws UsageError for a missing path, Error naming the file for a file without any usable row.
McqaDataset load_mcqa_dataset(const McqaTask& task, const std::filesystem::path& file_or_dir);

// RFC 4180 CSV: records of fields; `lines[i]` is the line where record i starts. Quoted fields may hold commas,
// doubled quotes and newlines; CRLF and LF line ends; a UTF-8 BOM is dropped. An unterminated quote throws Error
// naming `where` and the line where the field started.
struct CsvTable {
    std::vector<std::vector<std::string>> records;
    std::vector<size_t> lines;
};
CsvTable parse_csv(const std::string& text, const std::string& where);

// The prompt text of a question (before any chat markup): the template with its placeholders filled.
std::string render_mcqa_prompt(const McqaTask& task, const McqaQuestion& question);
// What is scored for option i (without the delimiter): its label or its text.
std::string mcqa_choice_text(const McqaTask& task, const McqaQuestion& question, size_t i);

}  // namespace medllm::eval
