// Packing the token cache into training rows, shuffled per epoch and sharded by rank.
#include "medllm/data/packing.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "medllm/core/error.h"
#include "medllm/core/files.h"

namespace medllm::data {
namespace {

// splitmix64: a tiny, portable generator (std::shuffle's algorithm is not specified, so results would differ
// between standard libraries; the order here is the same everywhere).
struct Rng {
    uint64_t state;
    explicit Rng(uint64_t seed) : state(seed) {}
    uint64_t next() {
        uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
        z          = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z          = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }
    double unit() { return (next() >> 11) * (1.0 / 9007199254740992.0); }
};

uint64_t derive(uint64_t seed, uint64_t stream, uint64_t salt = 0) {
    Rng r(seed ^ (stream * 0xd1b54a32d192ed03ULL) ^ (salt * 0xabc98388fb8fac03ULL));
    return r.next();
}

template <class T>
void shuffle(std::vector<T>& v, Rng& rng) {
    for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng.below(i)]);
}

}  // namespace

Packing parse_packing(const std::string& name) {
    if (name == "isolated") return Packing::isolated;
    if (name == "concat") return Packing::concat;
    if (name == "none") return Packing::none;
    if (name == "split") return Packing::split;
    throw UsageError("data.packing must be isolated, split, concat or none, got '" + name + "'");
}

const char* to_string(Packing p) {
    switch (p) {
        case Packing::isolated:
            return "isolated";
        case Packing::split:
            return "split";
        case Packing::concat:
            return "concat";
        case Packing::none:
            return "none";
    }
    return "?";
}

std::vector<uint8_t> validation_mask(std::size_t n, const SplitOptions& o) {
    if (!(o.validation_fraction >= 0 && o.validation_fraction < 1))
        throw UsageError("data.validation.fraction must be in [0, 1)");
    if (o.validation_documents < 0) throw UsageError("data.validation.documents must be >= 0");
    std::size_t k = o.validation_documents > 0 ? static_cast<std::size_t>(o.validation_documents)
                                               : static_cast<std::size_t>(std::llround(o.validation_fraction * n));
    if (k >= n && n > 0 && k > 0)
        throw UsageError("the validation split (" + std::to_string(k) +
                         " documents) would leave no training documents (" + std::to_string(n) + " in the corpus)");
    std::vector<uint8_t> mask(n, 0);
    if (k == 0) return mask;
    std::vector<uint32_t> ids(n);
    for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<uint32_t>(i);
    Rng rng(derive(o.seed, 0x5e11));
    for (std::size_t i = 0; i < k; ++i) {  // partial Fisher-Yates: the first k are a uniform sample
        std::swap(ids[i], ids[i + rng.below(n - i)]);
        mask[ids[i]] = 1;
    }
    return mask;
}

PackedDataset::PackedDataset(const TokenCache& cache, PackingOptions o) : cache_(&cache), options_(std::move(o)) {
    const auto& opt = options_;
    if (opt.seq_len < 2 || opt.seq_len > (int64_t(1) << 24)) throw UsageError("data.seq_len must be in [2, 16777216]");
    if (opt.world_size < 1 || opt.rank < 0 || opt.rank >= opt.world_size)
        throw UsageError("rank " + std::to_string(opt.rank) + " is not in [0, world size " +
                         std::to_string(opt.world_size) + ")");
    for (double w : opt.source_weights)
        if (!(w >= 0 && w <= 1000)) throw UsageError("a data source's weight must be in [0, 1000]");
    const auto mask    = validation_mask(cache.num_documents(), opt.split_options);
    const uint8_t want = opt.split == Split::validation ? 1 : 0;

    // Occurrences: each selected document as many times as its source's weight says, in a seeded order.
    std::vector<uint32_t> occ;
    Rng frac_rng(derive(opt.seed, 0xf4ac));
    for (std::size_t d = 0; d < cache.num_documents(); ++d) {
        const double u = frac_rng.unit();  // drawn for every document so the choice does not depend on the split
        if (mask[d] != want || cache.document(d).length == 0) continue;
        const uint32_t src = cache.file_source(cache.document(d).file);
        const double w     = src < opt.source_weights.size() ? opt.source_weights[src] : 1.0;
        const auto copies  = static_cast<int64_t>(std::floor(w)) + (u < w - std::floor(w) ? 1 : 0);
        for (int64_t c = 0; c < copies; ++c) occ.push_back(static_cast<uint32_t>(d));
    }
    if (opt.shuffle) {
        Rng rng(derive(opt.seed, 0x9ac4));
        shuffle(occ, rng);
    }
    const uint64_t L = static_cast<uint64_t>(opt.seq_len);
    if (opt.packing == Packing::concat) {
        stream_docs_ = occ;
        stream_pos_.reserve(occ.size() + 1);
        uint64_t pos = 0;
        for (uint32_t d : occ) {
            stream_pos_.push_back(pos);
            pos += cache.document(d).length;
        }
        stream_pos_.push_back(pos);
        tokens_   = static_cast<int64_t>(pos);
        num_rows_ = static_cast<int64_t>((pos + L - 1) / L);
    } else {
        // isolated and none start a new row when a piece does not fit; split fills the row with the piece's head
        // and continues the document at the start of the next row (a piece of one token would carry no label, so
        // a row with one free token is closed instead).
        const bool split = opt.packing == Packing::split;
        row_begin_.push_back(0);
        uint64_t fill = 0;
        auto new_row  = [&] {
            row_begin_.push_back(pieces_.size());
            fill = 0;
        };
        for (uint32_t d : occ) {
            const uint32_t len = cache.document(d).length;
            tokens_ += len;
            for (uint32_t off = 0; off < len;) {
                uint32_t piece = static_cast<uint32_t>(std::min<uint64_t>(len - off, L));
                if (split) {
                    if (L - fill < 2 && piece > 1) new_row();
                    piece = static_cast<uint32_t>(std::min<uint64_t>(piece, L - fill));
                } else if (fill > 0 && (opt.packing == Packing::none || fill + piece > L)) {
                    new_row();
                }
                pieces_.push_back({d, off, piece});
                fill += piece;
                off += piece;
                if (split && fill == L) new_row();
            }
        }
        if (fill > 0) new_row();
        num_rows_ = static_cast<int64_t>(row_begin_.size()) - 1;
    }
    if (num_rows_ == 0)
        throw Error(std::string("the ") + (opt.split == Split::train ? "training" : "validation") +
                    " split of the token cache " + cache.dir().string() + " has no tokens");
    if (num_rows_ > int64_t(std::numeric_limits<uint32_t>::max())) throw Error("more than 2^32 rows per epoch");
    rows_per_rank_ = (num_rows_ + opt.world_size - 1) / opt.world_size;
}

int64_t PackedDataset::packed_index(int64_t epoch, int64_t index) const {
    if (index < 0 || index >= rows_per_rank_ || epoch < 0)
        throw Error("row " + std::to_string(index) + " of epoch " + std::to_string(epoch) + " is out of range (" +
                    std::to_string(rows_per_rank_) + " rows per epoch)");
    const int64_t global = (index * options_.world_size + options_.rank) % num_rows_;
    if (!options_.shuffle) return global;
    if (perm_epoch_ != epoch) {
        perm_.resize(static_cast<std::size_t>(num_rows_));
        for (int64_t i = 0; i < num_rows_; ++i) perm_[i] = static_cast<uint32_t>(i);
        Rng rng(derive(options_.seed, 0xe90c, static_cast<uint64_t>(epoch) + 1));
        shuffle(perm_, rng);
        perm_epoch_ = epoch;
    }
    return perm_[global];
}

void PackedDataset::row(int64_t epoch, int64_t index, PackedRow& out) const {
    const auto L = static_cast<std::size_t>(options_.seq_len);
    out.input_ids.assign(L, options_.pad_id);
    out.labels.assign(L, -100);
    out.segment_ids.assign(L, 0);
    out.position_ids.assign(L, 0);
    out.real_tokens = 0;
    const int64_t r = packed_index(epoch, index);
    if (options_.packing == Packing::concat)
        fill_concat(r, out);
    else
        fill_pieces(r, out);
}

void PackedDataset::fill_pieces(int64_t r, PackedRow& out) const {
    std::size_t at  = 0;
    int32_t segment = 0;
    for (uint64_t p = row_begin_[r]; p < row_begin_[r + 1]; ++p) {
        const auto& pc      = pieces_[p];
        const uint32_t* tok = cache_->tokens(pc.doc) + pc.offset;
        ++segment;
        for (uint32_t i = 0; i < pc.length; ++i, ++at) {
            out.input_ids[at]    = static_cast<int32_t>(tok[i]);
            out.labels[at]       = i == 0 ? -100 : static_cast<int32_t>(tok[i]);
            out.segment_ids[at]  = segment;
            out.position_ids[at] = static_cast<int32_t>(i);
        }
    }
    out.real_tokens = static_cast<int64_t>(at);
}

void PackedDataset::fill_concat(int64_t r, PackedRow& out) const {
    const uint64_t L     = static_cast<uint64_t>(options_.seq_len);
    const uint64_t begin = static_cast<uint64_t>(r) * L;
    const uint64_t end   = std::min(begin + L, stream_pos_.back());
    // The document holding `begin`: the last start <= begin.
    std::size_t d = static_cast<std::size_t>(std::upper_bound(stream_pos_.begin(), stream_pos_.end() - 1, begin) -
                                             stream_pos_.begin()) -
                    1;
    for (uint64_t pos = begin; pos < end; ++d) {
        const uint32_t* tok = cache_->tokens(stream_docs_[d]);
        const uint64_t from = pos - stream_pos_[d];
        const uint64_t to   = std::min<uint64_t>(stream_pos_[d + 1], end) - stream_pos_[d];
        for (uint64_t i = from; i < to; ++i, ++pos) {
            const std::size_t at = static_cast<std::size_t>(pos - begin);
            out.input_ids[at]    = static_cast<int32_t>(tok[i]);
            out.labels[at]       = static_cast<int32_t>(tok[i]);
            out.segment_ids[at]  = 1;
            out.position_ids[at] = static_cast<int32_t>(at);
        }
    }
    out.real_tokens = static_cast<int64_t>(end - begin);
}

void PackedDataset::next(PackedRow& out) {
    row(cursor_.epoch, cursor_.index, out);
    if (++cursor_.index == rows_per_rank_) {
        cursor_.index = 0;
        ++cursor_.epoch;
    }
}

void PackedDataset::seek(DataCursor c) {
    if (c.epoch < 0 || c.index < 0 || c.index >= rows_per_rank_)
        throw UsageError("data cursor (epoch " + std::to_string(c.epoch) + ", row " + std::to_string(c.index) +
                         ") is out of range: " + std::to_string(rows_per_rank_) + " rows per epoch");
    cursor_ = c;
}

nlohmann::json PackedDataset::identity() const {
    const auto& o = options_;
    return {{"cache", cache_->fingerprint()},
            {"seq_len", o.seq_len},
            {"packing", to_string(o.packing)},
            {"seed", o.seed},
            {"shuffle", o.shuffle},
            {"rank", o.rank},
            {"world_size", o.world_size},
            {"split", o.split == Split::train ? "train" : "validation"},
            {"validation_fraction", o.split_options.validation_fraction},
            {"validation_documents", o.split_options.validation_documents},
            {"split_seed", o.split_options.seed},
            {"source_weights", o.source_weights},
            {"pad_id", o.pad_id}};
}

nlohmann::json PackedDataset::state() const {
    return {{"epoch", cursor_.epoch}, {"index", cursor_.index}, {"dataset", identity()}};
}

void PackedDataset::restore(const nlohmann::json& state) {
    if (!state.is_object() || !state.contains("epoch") || !state.contains("index") || !state.contains("dataset"))
        throw UsageError("data state must have epoch, index and dataset");
    const auto diff = describe_json_difference(state["dataset"], identity());
    if (!diff.empty()) throw UsageError("the saved data position belongs to another dataset: " + diff);
    seek({state["epoch"].get<int64_t>(), state["index"].get<int64_t>()});
}

}  // namespace medllm::data
