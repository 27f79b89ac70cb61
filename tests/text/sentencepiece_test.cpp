// A tiny SentencePiece model trained here with libsentencepiece's trainer, used through the Tokenizer interface.
#include <gtest/gtest.h>

#include <fstream>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include "medllm/core/error.h"
#include "medllm/text/tokenizer.h"
#include "medllm/text/unicode.h"

namespace medllm::text {
namespace {
namespace fs = std::filesystem;

class SentencePieceModel : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = fs::temp_directory_path() / ("medllm_sp_" + std::to_string(::getpid()));
        fs::create_directories(dir_);
        std::ofstream corpus(dir_ / "corpus.txt");
        const char* lines[] = {"患者は発熱と咳嗽を主訴に来院した。",          "血圧は128/76 mmHgであった。",
                               "The patient presented with fever and cough.", "Chest X-ray showed infiltrates.",
                               "高アンモニア血症をきたす疾患はどれか。",      "糖尿病の治療にはインスリンを用いる。"};
        for (int i = 0; i < 50; ++i)
            for (const char* l : lines) corpus << l << "\n";
        corpus.close();
        const auto status = sentencepiece::SentencePieceTrainer::Train(
            "--input=" + (dir_ / "corpus.txt").string() + " --model_prefix=" + (dir_ / "tokenizer").string() +
            " --vocab_size=400 --model_type=bpe --byte_fallback=true --character_coverage=1.0"
            " --bos_id=1 --eos_id=2 --unk_id=0 --pad_id=-1 --minloglevel=2");
        ASSERT_TRUE(status.ok()) << status.ToString();
    }
    static void TearDownTestSuite() { fs::remove_all(dir_); }
    static fs::path dir_;
};
fs::path SentencePieceModel::dir_;

TEST_F(SentencePieceModel, RoundTripsThroughTheTokenizerInterface) {
    const auto tok = Tokenizer::from_dir(dir_);
    EXPECT_EQ(tok->kind(), "sentencepiece");
    EXPECT_EQ(tok->vocab_size(), 400u);
    EXPECT_EQ(tok->bos_id(), 1);
    EXPECT_EQ(tok->eos_id(), 2);
    EXPECT_TRUE(tok->is_special(1));

    sentencepiece::SentencePieceProcessor reference;
    ASSERT_TRUE(reference.Load((dir_ / "tokenizer.model").string()).ok());
    // Includes characters absent from training: byte fallback must round-trip them.
    for (const std::string text :
         {"患者は発熱を主訴に来院した。", "The patient has fever.", "未知の文字👍 ok", "a  b"}) {
        const auto ids = tok->encode(text);
        std::vector<int> want;
        ASSERT_TRUE(reference.Encode(text, &want).ok());
        EXPECT_EQ(ids, std::vector<TokenId>(want.begin(), want.end())) << text;
        EXPECT_EQ(tok->decode(ids), text == "a  b" ? reference.DecodeIds(want) : text);

        const auto with_bos = tok->encode(text, /*add_special_tokens=*/true);
        ASSERT_FALSE(with_bos.empty());
        EXPECT_EQ(with_bos.front(), 1);
        EXPECT_EQ(tok->decode(with_bos, /*skip_special_tokens=*/true), tok->decode(ids));

        auto stream = tok->stream_decoder(true);
        std::string streamed;
        for (TokenId id : with_bos) streamed += stream.push(id);
        streamed += stream.finish();
        EXPECT_EQ(streamed, tok->decode(ids)) << text;
    }
    EXPECT_EQ(tok->token_to_id("<s>"), 1);
    EXPECT_FALSE(tok->token_to_id("definitely not a piece"));
    EXPECT_EQ(tok->encode("ok\xFF"), tok->encode("ok\xEF\xBF\xBD"));  // invalid UTF-8 repaired first
}

TEST_F(SentencePieceModel, PreferredOverANonByteLevelTokenizerJson) {
    // Llama-family repos ship tokenizer.json (Metaspace, byte_fallback BPE) next to tokenizer.model.
    std::ofstream(dir_ / "tokenizer.json")
        << R"({"model": {"type": "BPE", "byte_fallback": true, "vocab": {}, "merges": []},
              "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581"}})";
    const auto tok = Tokenizer::from_dir(dir_);
    fs::remove(dir_ / "tokenizer.json");
    EXPECT_EQ(tok->kind(), "sentencepiece");
}

TEST(SentencePieceErrors, CorruptModelNamesTheFile) {
    const fs::path dir = fs::temp_directory_path() / ("medllm_sp_bad_" + std::to_string(::getpid()));
    fs::create_directories(dir);
    std::ofstream(dir / "tokenizer.model") << "not a model";
    try {
        Tokenizer::from_dir(dir);
        ADD_FAILURE() << "no error";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("tokenizer.model"), std::string::npos) << e.what();
    }
    fs::remove_all(dir);
}

}  // namespace
}  // namespace medllm::text
