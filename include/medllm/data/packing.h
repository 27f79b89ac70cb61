// Rows for the trainer: a token cache packed into fixed-length rows, shuffled per epoch, sharded by rank, with a
// cursor that saves and restores exactly. Plain buffers, no LibTorch (the trainer wraps them in tensors).
//
// Packing modes (HF names in docs/reference/training.md §2.5):
//   isolated (default)  whole documents packed into rows in a seeded order (next fit); every document is its own
//                       segment: segment_ids 1, 2, ... along the row, position_ids restart at 0, and the first
//                       label of each segment is -100, so no token is predicted from another document (HF
//                       DataCollatorWithFlattening). A document longer than seq_len is cut into seq_len chunks,
//                       each a segment of its own.
//   split               as isolated, but every row is filled to seq_len: a document that does not fit in what is
//                       left of a row fills it and continues at the start of the next row as a segment of its own
//                       (positions restart, its first label there is -100: the token before it is in another
//                       row). Only the epoch's last row is padded (torchtune's split_across_pack, with each piece
//                       isolated). A row with one free token is closed instead (a one-token piece has no label).
//   concat              the documents concatenated (in the same seeded order) and cut every seq_len tokens; one
//                       segment per row, attention crosses documents (HF group_texts).
//   none                one document (or seq_len chunk of one) per row, padded.
// Padding: input pad_id, label -100, segment 0, position 0. Labels equal input_ids elsewhere (the loss shifts).
//
// Every token of the selected split appears exactly once per epoch per unit of its source's weight (isolated,
// concat and none alike). A weight w is floor(w) copies of each document plus one more for a seeded share
// frac(w) of them, decided once, so rows per epoch are the same every epoch and known up front.
//
// Ranks: the epoch's shuffled rows are dealt round-robin; when world_size does not divide them, the first rows
// are dealt again to fill the last round (PyTorch DistributedSampler), so every rank has rows_per_epoch() rows.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "medllm/data/token_cache.h"

namespace medllm::data {

enum class Packing { isolated, split, concat, none };
Packing parse_packing(const std::string& name);  // UsageError naming the allowed values
const char* to_string(Packing p);

enum class Split { train, validation };

// Document-level train/validation split: `count` documents (when > 0) or round(fraction * documents) of them,
// chosen by a seeded shuffle. Returns one flag per document (1 = validation).
struct SplitOptions {
    double validation_fraction   = 0.0;
    int64_t validation_documents = 0;
    uint64_t seed                = 0;
};
std::vector<uint8_t> validation_mask(std::size_t num_documents, const SplitOptions& options);

struct PackingOptions {
    int64_t seq_len    = 2048;
    Packing packing    = Packing::isolated;
    uint64_t seed      = 0;     // packing order and the per-epoch shuffle
    bool shuffle       = true;  // false: rows in packed order every epoch
    int64_t rank       = 0;
    int64_t world_size = 1;
    Split split        = Split::train;
    SplitOptions split_options;
    std::vector<double> source_weights;  // by source index; empty = 1 for every source
    int32_t pad_id = 0;
};

struct PackedRow {
    std::vector<int32_t> input_ids, labels, segment_ids, position_ids;  // each seq_len long
    int64_t real_tokens = 0;                                            // tokens that are not padding
};

// Where a reader is: the epoch and the index of the next row within this rank's rows of that epoch.
struct DataCursor {
    int64_t epoch = 0;
    int64_t index = 0;
};

class PackedDataset {
public:
    // Throws UsageError for bad options, Error when the selected split has no tokens.
    PackedDataset(const TokenCache& cache, PackingOptions options);

    int64_t rows_per_epoch() const { return rows_per_rank_; }  // this rank's rows, equal on every rank
    int64_t packed_rows() const { return num_rows_; }          // rows of the whole split, before sharding
    int64_t tokens_per_epoch() const { return tokens_; }       // real tokens of the whole split (weights applied)
    const PackingOptions& options() const { return options_; }

    // The row at `index` (< rows_per_epoch) of this rank in `epoch`. Not thread-safe (caches the permutation).
    void row(int64_t epoch, int64_t index, PackedRow& out) const;

    // Sequential reading: fills the row at the cursor and advances it (the epoch rolls over at the end).
    void next(PackedRow& out);
    DataCursor cursor() const { return cursor_; }
    void seek(DataCursor c);

    // The cursor plus what it is valid for (cache fingerprint and packing options), for checkpoints.
    nlohmann::json state() const;
    // Restores a state(); UsageError naming the first differing key when it came from another dataset.
    void restore(const nlohmann::json& state);
    nlohmann::json identity() const;

private:
    struct Piece {
        uint32_t doc, offset, length;
    };
    int64_t packed_index(int64_t epoch, int64_t index) const;
    void fill_pieces(int64_t row, PackedRow& out) const;
    void fill_concat(int64_t row, PackedRow& out) const;

    const TokenCache* cache_;
    PackingOptions options_;
    int64_t num_rows_ = 0, rows_per_rank_ = 0, tokens_ = 0;
    std::vector<Piece> pieces_;          // isolated/none: pieces of every row, row by row
    std::vector<uint64_t> row_begin_;    // isolated/none: num_rows_ + 1 offsets into pieces_
    std::vector<uint32_t> stream_docs_;  // concat: documents in stream order
    std::vector<uint64_t> stream_pos_;   // concat: start of each in the stream (+ the total at the end)
    mutable int64_t perm_epoch_ = -1;
    mutable std::vector<uint32_t> perm_;
    DataCursor cursor_;
};

}  // namespace medllm::data
