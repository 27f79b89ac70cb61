// SentencePiece tokenizers (tokenizer.model) behind the common Tokenizer interface.
#include "medllm/text/sentencepiece.h"

#include <sentencepiece_processor.h>

#include "medllm/core/error.h"
#include "medllm/text/unicode.h"

namespace medllm::text {
namespace {
std::optional<TokenId> valid_id(int id) {
    return id >= 0 ? std::optional<TokenId>(id) : std::nullopt;
}
}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::filesystem::path& model_file, bool add_bos, bool add_eos)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()), add_bos_(add_bos), add_eos_(add_eos) {
    if (!std::filesystem::exists(model_file)) throw Error("cannot open tokenizer file " + model_file.string());
    const auto status = sp_->Load(model_file.string());
    if (!status.ok()) throw Error(model_file.string() + ": not a SentencePiece model: " + status.ToString());
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<TokenId> SentencePieceTokenizer::encode(std::string_view text, bool add_special_tokens) const {
    std::string repaired;
    if (!is_valid_utf8(text)) {
        repaired = to_valid_utf8(text);
        text     = repaired;
    }
    std::vector<int> ids;
    const auto status = sp_->Encode(std::string(text), &ids);
    if (!status.ok()) throw Error("SentencePiece encode failed: " + status.ToString());
    std::vector<TokenId> out;
    out.reserve(ids.size() + 2);
    if (add_special_tokens && add_bos_ && sp_->bos_id() >= 0) out.push_back(sp_->bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    if (add_special_tokens && add_eos_ && sp_->eos_id() >= 0) out.push_back(sp_->eos_id());
    return out;
}

std::string SentencePieceTokenizer::decode(const std::vector<TokenId>& ids, bool skip_special_tokens) const {
    std::vector<int> kept;
    kept.reserve(ids.size());
    const int size = sp_->GetPieceSize();
    for (TokenId id : ids) {
        if (id < 0 || id >= size) continue;  // no string: decode to nothing, as for BPE
        if (skip_special_tokens && is_special(id)) continue;
        kept.push_back(id);
    }
    std::string text;
    const auto status = sp_->Decode(kept, &text);
    if (!status.ok()) throw Error("SentencePiece decode failed: " + status.ToString());
    return to_valid_utf8(text);
}

std::optional<TokenId> SentencePieceTokenizer::token_to_id(std::string_view token) const {
    const int id = sp_->PieceToId(std::string(token));
    // PieceToId answers unk for unknown pieces; only the unk piece itself maps to unk.
    if (id == sp_->unk_id() && sp_->IdToPiece(id) != token) return std::nullopt;
    return id;
}

std::optional<std::string> SentencePieceTokenizer::id_to_token(TokenId id) const {
    if (id < 0 || id >= sp_->GetPieceSize()) return std::nullopt;
    return sp_->IdToPiece(id);
}

std::size_t SentencePieceTokenizer::vocab_size() const {
    return static_cast<std::size_t>(sp_->GetPieceSize());
}

bool SentencePieceTokenizer::is_special(TokenId id) const {
    if (id < 0 || id >= sp_->GetPieceSize()) return false;
    return sp_->IsControl(id) || sp_->IsUnknown(id);
}

std::vector<TokenId> SentencePieceTokenizer::special_token_ids() const {
    std::vector<TokenId> ids;
    for (int id = 0; id < sp_->GetPieceSize(); ++id)
        if (is_special(id)) ids.push_back(id);
    return ids;
}

std::optional<TokenId> SentencePieceTokenizer::bos_id() const {
    return valid_id(sp_->bos_id());
}
std::optional<TokenId> SentencePieceTokenizer::eos_id() const {
    return valid_id(sp_->eos_id());
}
std::optional<TokenId> SentencePieceTokenizer::pad_id() const {
    return valid_id(sp_->pad_id());
}

std::string SentencePieceTokenizer::token_bytes(TokenId id, bool first) const {
    if (id < 0 || id >= sp_->GetPieceSize() || sp_->IsControl(id)) return {};
    const std::string& piece = sp_->IdToPiece(id);
    if (sp_->IsByte(id)) {  // "<0xAB>"
        return std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
    }
    if (sp_->IsUnknown(id)) return " \xE2\x81\x87 ";  // SentencePiece renders unk as " ⁇ "
    std::string out;
    static const std::string kSpace = "\xE2\x96\x81";  // "▁"
    for (std::size_t i = 0; i < piece.size();) {
        if (piece.compare(i, kSpace.size(), kSpace) == 0) {
            out += ' ';
            i += kSpace.size();
        } else {
            out += piece[i++];
        }
    }
    if (first && !out.empty() && out[0] == ' ') out.erase(0, 1);  // the dummy prefix added at encode time
    return out;
}

}  // namespace medllm::text
