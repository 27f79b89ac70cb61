// libFuzzer target: the Qwen2.5 byte-level BPE encoder and decoder on arbitrary bytes.
// Invariants checked (abort on violation, so the fuzzer reports them):
//   * every id is inside the vocabulary; decode yields valid UTF-8;
//   * re-encoding the decoded text gives the same ids (encode is idempotent through decode);
//   * streaming decode equals whole decode;
//   * the pre-tokenizer's pieces cover the repaired, normalized input exactly.
// The tokenizer directory is MEDLLM_TOKENIZER_DIR or ../shared/qwen_tokenizer beside the source tree.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include "medllm/text/tokenizer.h"
#include "medllm/text/unicode.h"

namespace {

const medllm::text::Tokenizer& tokenizer() {
    static const std::unique_ptr<medllm::text::Tokenizer> tok = [] {
        const char* env = std::getenv("MEDLLM_TOKENIZER_DIR");
        const std::filesystem::path dir =
            env ? std::filesystem::path(env)
                : std::filesystem::path(__FILE__).parent_path() / ".." / ".." / ".." / "shared" / "qwen_tokenizer";
        return medllm::text::Tokenizer::from_dir(dir);
    }();
    return *tok;
}

void check(bool ok, const char* what) {
    if (!ok) {
        std::fprintf(stderr, "tokenizer invariant violated: %s\n", what);
        std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace medllm::text;
    const Tokenizer& tok = tokenizer();
    const std::string input(reinterpret_cast<const char*>(data), size);

    const auto ids = tok.encode(input);
    for (TokenId id : ids) check(id >= 0 && static_cast<std::size_t>(id) < tok.vocab_size(), "id out of range");
    const std::string text = tok.decode(ids);
    check(is_valid_utf8(text), "decode produced invalid UTF-8");
    check(tok.encode(text) == ids, "encode(decode(encode(x))) != encode(x)");

    auto stream = tok.stream_decoder();
    std::string streamed;
    for (TokenId id : ids) streamed += stream.push(id);
    streamed += stream.finish();
    check(streamed == text, "streaming decode differs from decode");

    // Raw ids (including partial UTF-8 byte tokens and unknown ids) must decode safely too.
    std::vector<TokenId> raw;
    for (std::size_t i = 0; i + 3 < size && raw.size() < 64; i += 4)
        raw.push_back(static_cast<TokenId>(data[i] | data[i + 1] << 8 | (data[i + 2] & 0x03) << 16));
    check(is_valid_utf8(tok.decode(raw, true)), "decode of raw ids produced invalid UTF-8");

    const std::string normalized = nfc(to_valid_utf8(input));
    std::vector<std::string_view> pieces;
    qwen2_pretokenize(normalized, pieces);
    std::size_t covered = 0;
    for (auto p : pieces) {
        check(!p.empty() && p.data() == normalized.data() + covered, "pre-tokenizer pieces do not tile the input");
        covered += p.size();
    }
    check(covered == normalized.size(), "pre-tokenizer pieces do not cover the input");
    return 0;
}
