// `medllm tokenize`: encode text to token ids (JSONL) or decode ids back to text with a model's tokenizer, one
// document per input line, in batches encoded in parallel; --stats prints counts and throughput to stderr.
#pragma once

#include <cstddef>
#include <string>

namespace medllm::text {

struct TokenizeConfig {
    std::string model;         // the model or tokenizer folder
    std::string input  = "-";  // '-' = stdin
    std::string output = "-";  // '-' = stdout
    std::string field;         // JSONL input: encode this string field of each object
    bool decode              = false;
    bool stats               = false;
    bool add_special_tokens  = false;
    bool skip_special_tokens = false;
    int jobs                 = 0;  // encoding threads; 0 = all cores
    std::size_t batch        = 8192;
};

// Writes {"ids": [...]} (encode) or {"text": ...} (decode) per input line. Errors name the input line; the output
// is written through a temporary file (stdout and devices directly), so a failed run leaves no cut file.
void run_tokenize(const TokenizeConfig& config);

}  // namespace medllm::text
