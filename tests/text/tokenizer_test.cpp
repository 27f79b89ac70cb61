// Tokenizer behaviour beyond the HF goldens: loading variants, errors, decode/streaming, chat, batch, invalid UTF-8.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "medllm/core/error.h"
#include "medllm/text/bpe.h"
#include "medllm/text/tokenizer.h"
#include "medllm/text/unicode.h"
#include "text/test_util.h"

namespace medllm::text {
namespace {
namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
    const fs::path dir = fs::temp_directory_path() / ("medllm_text_" + name + "_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

void write(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

const char* kQwenRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// A tokenizer.json equivalent to the shared vocab.json + merges.txt + added tokens, merges in either spelling.
nlohmann::json make_tokenizer_json(bool pair_merges) {
    nlohmann::json j;
    j["version"]       = "1.0";
    j["normalizer"]    = {{"type", "NFC"}};
    j["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", kQwenRegex}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}}}}};
    j["decoder"]          = {{"type", "ByteLevel"}};
    j["model"]            = {{"type", "BPE"}, {"ignore_merges", false}, {"byte_fallback", false}};
    j["model"]["vocab"]   = nlohmann::json::parse(read_text(qwen_dir() / "vocab.json"));
    nlohmann::json merges = nlohmann::json::array();
    std::istringstream lines(read_text(qwen_dir() / "merges.txt"));
    for (std::string line; std::getline(lines, line);) {
        const auto sp = line.find(' ');
        if (pair_merges) {
            merges.push_back({line.substr(0, sp), line.substr(sp + 1)});
        } else {
            merges.push_back(line);
        }
    }
    j["model"]["merges"] = merges;
    j["added_tokens"]    = nlohmann::json::array();
    for (const auto& t : nlohmann::json::parse(read_text(qwen_dir() / "added_tokens_qwen2.5.json"))) {
        j["added_tokens"].push_back({{"id", t["id"]},
                                     {"content", t["content"]},
                                     {"special", t["special"]},
                                     {"single_word", false},
                                     {"lstrip", false},
                                     {"rstrip", false},
                                     {"normalized", false}});
    }
    return j;
}

const std::vector<std::string>& sample_texts() {
    static const std::vector<std::string> texts = {
        "58歳の男性。発熱と咳嗽を主訴に来院した。",
        "I'LL be there, they're   late\n\n",
        "e\u0301 👨\u200d👩\u200d👧",
        "<|im_start|>user\n質問<|im_end|>\n",
        "ｶﾞ ＡＢＣ １２３ 333",
        "",
    };
    return texts;
}

TEST(TokenizerLoading, TokenizerJsonWithStringAndPairMergesMatchesVocabMerges) {
    for (bool pairs : {false, true}) {
        const fs::path dir = temp_dir(pairs ? "pairs" : "strings");
        write(dir / "tokenizer.json", make_tokenizer_json(pairs).dump());
        write(dir / "tokenizer_config.json", R"({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                                 "bos_token": null, "add_bos_token": false})");
        const auto tok = Tokenizer::from_dir(dir);
        EXPECT_EQ(tok->kind(), "bpe");
        EXPECT_EQ(tok->vocab_size(), 151665u);
        EXPECT_EQ(tok->eos_id(), 151645);
        EXPECT_EQ(tok->pad_id(), 151643);
        EXPECT_FALSE(tok->bos_id());
        for (const auto& text : sample_texts()) EXPECT_EQ(tok->encode(text), qwen().encode(text)) << text;
        fs::remove_all(dir);
    }
}

TEST(TokenizerLoading, MergesWithVersionHeaderAndCrlf) {
    const fs::path dir = temp_dir("crlf");
    fs::copy_file(qwen_dir() / "vocab.json", dir / "vocab.json");
    std::string merges = "#version: 0.2\r\n";
    std::istringstream lines(read_text(qwen_dir() / "merges.txt"));
    for (std::string line; std::getline(lines, line);) merges += line + "\r\n";
    write(dir / "merges.txt", merges);
    write(dir / "added_tokens.json", R"({"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645})");
    write(dir / "special_tokens_map.json", "{}");
    const auto tok = Tokenizer::from_dir(dir);
    EXPECT_EQ(tok->vocab_size(), 151646u);
    for (const auto& text : sample_texts()) EXPECT_EQ(tok->encode(text), qwen().encode(text)) << text;
    fs::remove_all(dir);
}

TEST(TokenizerLoading, ErrorsNameTheFile) {
    const fs::path dir = temp_dir("errors");
    auto message       = [&] {
        try {
            Tokenizer::from_dir(dir);
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_NE(message().find("no tokenizer in"), std::string::npos);
    write(dir / "vocab.json", "{\"a\": 0, ");
    write(dir / "merges.txt", "a a\n");
    EXPECT_NE(message().find("vocab.json:1:"), std::string::npos) << message();  // file:line:col
    EXPECT_NE(message().find("invalid JSON"), std::string::npos) << message();
    write(dir / "vocab.json", R"({"a": 0, "b": 1})");
    EXPECT_NE(message().find("merges.txt"), std::string::npos) << message();  // "a a" -> "aa" missing
    write(dir / "merges.txt", "a b c\n");
    EXPECT_NE(message().find("merges.txt:1:"), std::string::npos) << message();
    write(dir / "merges.txt", "");
    write(dir / "tokenizer_config.json", "[1,");
    EXPECT_NE(message().find("tokenizer_config.json:1:"), std::string::npos) << message();  // file:line:col
    EXPECT_NE(message().find("invalid JSON"), std::string::npos) << message();
    fs::remove(dir / "tokenizer_config.json");
    auto j                                                     = make_tokenizer_json(false);
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\p{N}{1,3}";
    write(dir / "tokenizer.json", j.dump());
    EXPECT_NE(message().find("tokenizer.json: unsupported pre-tokenizer"), std::string::npos) << message();
    write(dir / "tokenizer.json", "not json");
    EXPECT_NE(message().find("tokenizer.json:1:"), std::string::npos) << message();  // file:line:col
    EXPECT_NE(message().find("invalid JSON"), std::string::npos) << message();
    EXPECT_THROW(Tokenizer::from_dir(dir / "missing"), Error);
    fs::remove_all(dir);
}

TEST(Decode, SkipSpecialKeepsNonSpecialAddedTokens) {
    const Tokenizer& tok = qwen();
    const auto ids       = tok.encode("<|im_start|>a<tool_call>b<|fim_prefix|><|im_end|>");
    EXPECT_EQ(tok.decode(ids), "<|im_start|>a<tool_call>b<|fim_prefix|><|im_end|>");
    EXPECT_EQ(tok.decode(ids, true), "a<tool_call>b<|fim_prefix|>");
    EXPECT_TRUE(tok.is_special(151645));
    EXPECT_FALSE(tok.is_special(151657));
    EXPECT_EQ(tok.special_token_ids().size(), 14u);
}

TEST(Decode, InvalidBytesAndUnknownIds) {
    const Tokenizer& tok = qwen();
    const TokenId e4     = *tok.token_to_id(byte_symbol(0xE4));  // lead byte of a 3-byte character
    EXPECT_EQ(tok.decode({e4}), "\xEF\xBF\xBD");
    EXPECT_EQ(tok.decode({e4, 9707}), "\xEF\xBF\xBDHello");
    EXPECT_EQ(tok.decode({151700, 151935, -1, 9707}), "Hello");  // embedding padding rows decode to nothing
    EXPECT_EQ(tok.id_to_token(9707), "Hello");
    EXPECT_EQ(tok.id_to_token(151644), "<|im_start|>");
    EXPECT_FALSE(tok.id_to_token(151700));
    EXPECT_EQ(tok.token_to_id("<|im_end|>"), 151645);
    EXPECT_FALSE(tok.token_to_id("no such token"));
}

TEST(Decode, StreamingEqualsWholeDecode) {
    const Tokenizer& tok = qwen();
    std::mt19937 rng(7);
    std::vector<std::vector<TokenId>> cases;
    for (const auto& text : sample_texts()) cases.push_back(tok.encode(text));
    for (int i = 0; i < 200; ++i) {  // random ids, many of them partial UTF-8 byte tokens
        std::vector<TokenId> ids(rng() % 12);
        for (auto& id : ids) id = static_cast<TokenId>(rng() % 2 ? rng() % 256 : rng() % 151700);
        cases.push_back(ids);
    }
    for (const auto& ids : cases) {
        for (bool skip : {false, true}) {
            auto stream = tok.stream_decoder(skip);
            std::string streamed;
            for (TokenId id : ids) {
                const std::string piece = stream.push(id);
                EXPECT_TRUE(is_valid_utf8(piece));
                streamed += piece;
            }
            streamed += stream.finish();
            EXPECT_EQ(streamed, tok.decode(ids, skip));
        }
    }
}

TEST(Decode, StreamingHoldsBackIncompleteCharacters) {
    const Tokenizer& tok = qwen();
    // "日" is E6 97 A5: feed it byte by byte.
    auto stream = tok.stream_decoder();
    EXPECT_EQ(stream.push(*tok.token_to_id(byte_symbol(0xE6))), "");
    EXPECT_EQ(stream.push(*tok.token_to_id(byte_symbol(0x97))), "");
    EXPECT_EQ(stream.push(*tok.token_to_id(byte_symbol(0xA5))), "日");
    EXPECT_EQ(stream.push(*tok.token_to_id(byte_symbol(0xE6))), "");
    EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");
}

TEST(Encode, RoundTripIsNfc) {
    const Tokenizer& tok = qwen();
    std::ifstream in(fixtures_dir() / "qwen2_golden.jsonl");
    std::size_t n = 0;
    for (std::string line; std::getline(in, line);) {
        const auto text = nlohmann::json::parse(line).at("text").get<std::string>();
        EXPECT_EQ(tok.decode(tok.encode(text)), nfc(text)) << line;
        ++n;
    }
    EXPECT_GT(n, 0u);
}

TEST(Encode, InvalidUtf8IsRepairedLikePython) {
    const Tokenizer& tok = qwen();
    // Python: b"a\xff\xe3\x81b\xed\xa0\x80".decode("utf-8", "replace") == "a\ufffd\ufffdb\ufffd\ufffd\ufffd"
    const std::string bad =
        "a\xff\xe3\x81"
        "b\xed\xa0\x80";
    EXPECT_EQ(to_valid_utf8(bad),
              "a\xEF\xBF\xBD\xEF\xBF\xBD"
              "b\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
    EXPECT_EQ(tok.encode(bad), tok.encode(to_valid_utf8(bad)));
    EXPECT_FALSE(is_valid_utf8(bad));
    EXPECT_TRUE(is_valid_utf8("日本\xF0\x9F\x91\x8D"));
    EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));                   // overlong
    EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));           // above U+10FFFF
    EXPECT_EQ(to_valid_utf8("\xF0\x9F\x91"), "\xEF\xBF\xBD");  // truncated: one replacement
    EXPECT_EQ(utf8_settled_prefix("ab\xF0\x9F\x91"), 2u);
    EXPECT_EQ(utf8_settled_prefix("ab\xFF"), 3u);
}

TEST(Encode, BatchEqualsSingleAcrossThreads) {
    const Tokenizer& tok = qwen();
    std::vector<std::string> texts;
    for (int i = 0; i < 300; ++i) texts.push_back(sample_texts()[i % sample_texts().size()] + std::to_string(i));
    const auto batch = tok.encode_batch(texts, false, 4);
    ASSERT_EQ(batch.size(), texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(batch[i], tok.encode(texts[i]));
    EXPECT_TRUE(tok.encode_batch({}, false, 4).empty());
}

TEST(Chat, MatchesOfficialTemplateRendering) {
    std::ifstream in(fixtures_dir() / "qwen2_golden.jsonl");
    std::size_t chats = 0;
    for (std::string line; std::getline(in, line);) {
        const auto j = nlohmann::json::parse(line);
        if (j.value("source", "") != "chat") continue;
        std::vector<ChatMessage> messages;
        for (const auto& m : j["messages"]) messages.push_back({m["role"], m["content"]});
        const std::string rendered = qwen().apply_chat_template(messages, j["add_generation_prompt"].get<bool>());
        EXPECT_EQ(rendered, j["text"].get<std::string>());
        EXPECT_EQ(qwen().encode(rendered), j["ids"].get<std::vector<TokenId>>());
        ++chats;
    }
    EXPECT_GE(chats, 5u);
    EXPECT_THROW(qwen().apply_chat_template({{"robot", "x"}}, false), UsageError);
}

}  // namespace
}  // namespace medllm::text

namespace medllm::text {
namespace {

// lstrip / rstrip / single_word / normalized added tokens, against HF (scripts/make_tokenizer_fixtures.py).
TEST(AddedTokens, FlagRulesMatchHuggingFace) {
    std::ifstream in(fixtures_dir() / "added_token_rules.jsonl");
    ASSERT_TRUE(in);
    std::vector<AddedToken> added;
    for (const auto& t : nlohmann::json::parse(read_text(qwen_dir() / "added_tokens_qwen2.5.json")))
        added.push_back(AddedToken{t["content"], t["id"], t["special"]});
    std::string line;
    std::getline(in, line);
    const auto header = nlohmann::json::parse(line);
    for (const auto& t : header.at("tokens"))
        added.push_back(AddedToken{t["content"], t["id"], t["special"], t["lstrip"], t["rstrip"], t["single_word"],
                                   t["normalized"]});
    const auto tok =
        BpeTokenizer::from_vocab_merges(qwen_dir() / "vocab.json", qwen_dir() / "merges.txt", added, BpeOptions{});
    std::size_t cases = 0;
    while (std::getline(in, line)) {
        const auto j    = nlohmann::json::parse(line);
        const auto text = j["text"].get<std::string>();
        const auto ids  = j["ids"].get<std::vector<TokenId>>();
        EXPECT_EQ(tok->encode(text), ids) << j["text"].dump();
        EXPECT_EQ(tok->decode(ids), j["decoded"].get<std::string>()) << j["text"].dump();
        EXPECT_EQ(tok->decode(ids, true), j["decoded_skip"].get<std::string>()) << j["text"].dump();
        ++cases;
    }
    EXPECT_GE(cases, 20u);
}

}  // namespace
}  // namespace medllm::text
