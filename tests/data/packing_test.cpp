// Packing for the trainer: exact token coverage per epoch, segment/position ids, labels, determinism, cursor
// restore, rank sharding, weights and the split.
#include <algorithm>
#include <map>
#include <set>

#include <gtest/gtest.h>

#include "data_test_util.h"
#include "medllm/core/error.h"
#include "medllm/data/packing.h"

namespace {

using namespace medllm::data;
namespace fs = std::filesystem;
using Tokens = std::vector<int32_t>;

class PackingTest : public test::TempDir {
protected:
    std::unique_ptr<TokenCache> cache;
    void SetUp() override {
        TempDir::SetUp();
        // Documents from 1 to ~300 tokens, so seq_len 64 sees short, packed and split documents.
        std::string a, b;
        for (int i = 0; i < 60; ++i) {
            std::string text = "文書" + std::to_string(i) + "：";
            for (int k = 0; k < (i * 37) % 97; ++k) text += "腹痛" + std::to_string(k * i % 13) + "、";
            (i % 3 ? a : b) += "{\"text\": \"" + text + "\"}\n";
        }
        write("a.jsonl", a);
        write("b.jsonl", b);
        build_token_cache(dir / "cache", test::options(dir, {{"a.jsonl"}, {"b.jsonl"}}));
        cache = std::make_unique<TokenCache>(dir / "cache");
    }
    PackingOptions opts(Packing p, int64_t seq_len = 64) {
        PackingOptions o;
        o.packing = p;
        o.seq_len = seq_len;
        o.seed    = 7;
        return o;
    }
    Tokens doc(std::size_t i) const { return Tokens(cache->tokens(i), cache->tokens(i) + cache->document(i).length); }
    // The segments of a row (runs of equal non-zero segment id), as token lists.
    static std::vector<Tokens> segments(const PackedRow& r) {
        std::vector<Tokens> out;
        for (size_t i = 0; i < r.input_ids.size(); ++i) {
            if (r.segment_ids[i] == 0) continue;
            if (i == 0 || r.segment_ids[i] != r.segment_ids[i - 1]) out.emplace_back();
            out.back().push_back(r.input_ids[i]);
        }
        return out;
    }
    // Every document cut into seq_len chunks: what isolated and none must produce, each exactly once.
    std::multiset<Tokens> chunks(int64_t L, const std::vector<uint8_t>* mask = nullptr, uint8_t want = 0) const {
        std::multiset<Tokens> out;
        for (size_t d = 0; d < cache->num_documents(); ++d) {
            if (mask && (*mask)[d] != want) continue;
            auto t = doc(d);
            for (size_t off = 0; off < t.size(); off += L)
                out.insert(Tokens(t.begin() + off, t.begin() + std::min<size_t>(t.size(), off + L)));
        }
        return out;
    }
};

TEST_F(PackingTest, IsolatedCoversEveryTokenOncePerEpochWithRestartingPositions) {
    PackedDataset ds(*cache, opts(Packing::isolated));
    std::multiset<Tokens> seen;
    int64_t real = 0;
    for (int64_t i = 0; i < ds.rows_per_epoch(); ++i) {
        PackedRow r;
        ds.row(0, i, r);
        ASSERT_EQ(r.input_ids.size(), 64u);
        for (auto& s : segments(r)) seen.insert(s);
        int32_t prev_seg = 0;
        for (size_t k = 0; k < 64; ++k) {
            const int32_t seg = r.segment_ids[k];
            if (seg == 0) {  // padding: only at the end
                EXPECT_EQ(r.labels[k], -100);
                EXPECT_EQ(r.position_ids[k], 0);
                for (size_t j = k; j < 64; ++j) EXPECT_EQ(r.segment_ids[j], 0);
                break;
            }
            const bool start = k == 0 || seg != prev_seg;
            if (start) {
                EXPECT_EQ(seg, prev_seg + 1);
            }
            EXPECT_EQ(r.position_ids[k], start ? 0 : r.position_ids[k - 1] + 1);
            EXPECT_EQ(r.labels[k], start ? -100 : r.input_ids[k]);  // never predicted from another document
            prev_seg = seg;
        }
        real += r.real_tokens;
    }
    EXPECT_EQ(seen, chunks(64));
    EXPECT_EQ(real, int64_t(cache->num_tokens()));
    EXPECT_EQ(ds.tokens_per_epoch(), int64_t(cache->num_tokens()));
}

// split: the same isolation (segments, restarting positions, -100 at each segment's start), but every row but the
// epoch's last is full, and the pieces of each document, read in row order, are the document again.
TEST_F(PackingTest, SplitFillsEveryRowAndKeepsDocumentsIsolated) {
    PackedDataset iso(*cache, opts(Packing::isolated));
    PackedDataset ds(*cache, opts(Packing::split));
    ASSERT_EQ(ds.tokens_per_epoch(), int64_t(cache->num_tokens()));
    EXPECT_EQ(ds.rows_per_epoch(), (int64_t(cache->num_tokens()) + 63) / 64);  // no one-free-token row here
    EXPECT_LT(ds.rows_per_epoch(), iso.rows_per_epoch());
    Tokens all;
    int64_t real = 0;
    auto opt     = opts(Packing::split);
    opt.shuffle  = false;  // rows in packing order, so pieces of a document come in order
    PackedDataset ordered(*cache, opt);
    for (int64_t i = 0; i < ordered.rows_per_epoch(); ++i) {
        PackedRow r;
        ordered.row(0, i, r);
        if (i + 1 < ordered.rows_per_epoch()) EXPECT_EQ(r.real_tokens, 64) << "row " << i << " is padded";
        int32_t prev_seg = 0;
        for (size_t k = 0; k < 64; ++k) {
            const int32_t seg = r.segment_ids[k];
            if (seg == 0) {
                EXPECT_EQ(r.labels[k], -100);
                continue;
            }
            const bool start = k == 0 || seg != prev_seg;
            EXPECT_EQ(r.position_ids[k], start ? 0 : r.position_ids[k - 1] + 1);
            EXPECT_EQ(r.labels[k], start ? -100 : r.input_ids[k]);
            all.push_back(r.input_ids[k]);
            prev_seg = seg;
        }
        real += r.real_tokens;
    }
    EXPECT_EQ(real, int64_t(cache->num_tokens()));
    // Unshuffled, the documents are packed in cache order: the rows' real tokens, read row after row, are every
    // document once, whole and in order (each cut only where a row ends).
    Tokens want;
    for (size_t d = 0; d < cache->num_documents(); ++d) {
        const auto t = doc(d);
        want.insert(want.end(), t.begin(), t.end());
    }
    EXPECT_EQ(all, want);
    EXPECT_EQ(parse_packing("split"), Packing::split);
    EXPECT_STREQ(to_string(Packing::split), "split");
}

TEST_F(PackingTest, ConcatIsTheStreamCutEverySeqLen) {
    auto o    = opts(Packing::concat, 50);
    o.shuffle = false;  // document order, row order = stream order
    PackedDataset ds(*cache, o);
    Tokens stream, want;
    for (size_t d = 0; d < cache->num_documents(); ++d) {
        auto t = doc(d);
        want.insert(want.end(), t.begin(), t.end());
    }
    EXPECT_EQ(ds.rows_per_epoch(), int64_t((want.size() + 49) / 50));
    for (int64_t i = 0; i < ds.rows_per_epoch(); ++i) {
        PackedRow r;
        ds.row(0, i, r);
        for (int k = 0; k < 50; ++k) {
            if (k < r.real_tokens) {
                EXPECT_EQ(r.segment_ids[k], 1);
                EXPECT_EQ(r.position_ids[k], k);
                EXPECT_EQ(r.labels[k], r.input_ids[k]);
            } else {
                EXPECT_EQ(r.labels[k], -100);
            }
        }
        stream.insert(stream.end(), r.input_ids.begin(), r.input_ids.begin() + r.real_tokens);
    }
    EXPECT_EQ(stream, want);
    // Shuffled: the same tokens, each once.
    PackedDataset shuffled(*cache, opts(Packing::concat, 50));
    std::map<int32_t, int64_t> a, b;
    for (int32_t t : want) ++a[t];
    for (int64_t i = 0; i < shuffled.rows_per_epoch(); ++i) {
        PackedRow r;
        shuffled.row(1, i, r);
        for (int64_t k = 0; k < r.real_tokens; ++k) ++b[r.input_ids[k]];
    }
    EXPECT_EQ(a, b);
}

TEST_F(PackingTest, NoneIsOneDocumentPerRow) {
    PackedDataset ds(*cache, opts(Packing::none));
    std::multiset<Tokens> seen;
    for (int64_t i = 0; i < ds.rows_per_epoch(); ++i) {
        PackedRow r;
        ds.row(0, i, r);
        auto s = segments(r);
        ASSERT_EQ(s.size(), 1u);
        seen.insert(s[0]);
    }
    EXPECT_EQ(seen, chunks(64));
    EXPECT_EQ(ds.rows_per_epoch(), int64_t(chunks(64).size()));
}

TEST_F(PackingTest, ShuffleIsDeterministicPerEpochAndSeed) {
    auto rows = [&](uint64_t seed, int64_t epoch) {
        auto o = opts(Packing::isolated);
        o.seed = seed;
        PackedDataset ds(*cache, o);
        std::vector<Tokens> out;
        for (int64_t i = 0; i < ds.rows_per_epoch(); ++i) {
            PackedRow r;
            ds.row(epoch, i, r);
            out.push_back(r.input_ids);
        }
        return out;
    };
    EXPECT_EQ(rows(7, 0), rows(7, 0));
    EXPECT_NE(rows(7, 0), rows(7, 1));
    EXPECT_NE(rows(7, 0), rows(8, 0));
    auto e0 = rows(7, 0), e1 = rows(7, 1);
    std::sort(e0.begin(), e0.end());
    std::sort(e1.begin(), e1.end());
    EXPECT_EQ(e0, e1);  // the same rows, in another order
}

TEST_F(PackingTest, CursorRestoresExactlyAcrossEpochs) {
    PackedDataset a(*cache, opts(Packing::isolated));
    PackedRow r;
    const int64_t n = a.rows_per_epoch();
    for (int64_t i = 0; i < n - 3; ++i) a.next(r);
    const auto saved = a.state();
    std::vector<Tokens> after;
    for (int i = 0; i < 8; ++i) {  // crosses into epoch 1
        a.next(r);
        after.push_back(r.input_ids);
    }
    EXPECT_EQ(a.cursor().epoch, 1);
    EXPECT_EQ(a.cursor().index, 5);
    PackedDataset b(*cache, opts(Packing::isolated));
    b.restore(nlohmann::json::parse(saved.dump()));
    for (int i = 0; i < 8; ++i) {
        b.next(r);
        EXPECT_EQ(r.input_ids, after[i]) << i;
    }
    PackedDataset other(*cache, opts(Packing::isolated, 128));
    try {
        other.restore(saved);
        FAIL() << "restored another dataset's cursor";
    } catch (const medllm::UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("seq_len"), std::string::npos) << e.what();
    }
}

TEST_F(PackingTest, RanksShareTheEpochAndEachHasTheSameRowCount) {
    PackedDataset whole(*cache, opts(Packing::isolated));
    std::multiset<Tokens> all, dealt;
    PackedRow r;
    for (int64_t i = 0; i < whole.rows_per_epoch(); ++i) {
        whole.row(2, i, r);
        all.insert(r.input_ids);
    }
    const int64_t world = 3;
    for (int64_t rank = 0; rank < world; ++rank) {
        auto o       = opts(Packing::isolated);
        o.rank       = rank;
        o.world_size = world;
        PackedDataset ds(*cache, o);
        EXPECT_EQ(ds.rows_per_epoch(), (whole.rows_per_epoch() + world - 1) / world);
        for (int64_t i = 0; i < ds.rows_per_epoch(); ++i) {
            ds.row(2, i, r);
            dealt.insert(r.input_ids);
        }
    }
    for (const auto& row : all) EXPECT_GE(dealt.count(row), all.count(row));  // all covered
    EXPECT_LT(dealt.size() - all.size(), size_t(world));                      // only the wrap-around extra
}

TEST_F(PackingTest, WeightsRepeatSourcesAndTheSplitIsDisjoint) {
    auto o           = opts(Packing::isolated);
    o.source_weights = {1.0, 2.0};  // b.jsonl twice
    PackedDataset ds(*cache, o);
    int64_t want = 0;
    for (size_t d = 0; d < cache->num_documents(); ++d)
        want += cache->document(d).length * (cache->file_source(cache->document(d).file) == 1 ? 2 : 1);
    EXPECT_EQ(ds.tokens_per_epoch(), want);
    o.source_weights = {1.0, 0.0};
    EXPECT_LT(PackedDataset(*cache, o).tokens_per_epoch(), int64_t(cache->num_tokens()));

    auto t                              = opts(Packing::isolated);
    t.split_options.validation_fraction = 0.2;
    t.split_options.seed                = 3;
    auto v                              = t;
    v.split                             = Split::validation;
    PackedDataset train(*cache, t), val(*cache, v);
    const auto mask = validation_mask(cache->num_documents(), t.split_options);
    EXPECT_EQ(std::count(mask.begin(), mask.end(), 1), 12);  // round(0.2 * 60)
    EXPECT_EQ(train.tokens_per_epoch() + val.tokens_per_epoch(), int64_t(cache->num_tokens()));
    std::multiset<Tokens> seen;
    PackedRow r;
    for (int64_t i = 0; i < val.rows_per_epoch(); ++i) {
        val.row(0, i, r);
        for (auto& s : segments(r)) seen.insert(s);
    }
    EXPECT_EQ(seen, chunks(64, &mask, 1));
    t.split_options.validation_documents = 60;
    EXPECT_THROW(PackedDataset(*cache, t), medllm::UsageError);
}

}  // namespace
