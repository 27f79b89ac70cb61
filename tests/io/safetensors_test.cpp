// safetensors reader/writer: reference files from the Python `safetensors` package and transformers
// (scripts/make_io_fixtures.py), round trips, and corrupt or truncated files that must fail with a clear error.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "medllm/core/error.h"
#include "medllm/io/safetensors.h"
#include "support/file_limit.h"

namespace fs = std::filesystem;
using medllm::Error;
using namespace medllm::io;

namespace {

const fs::path kFixtures = fs::path(MEDLLM_FIXTURES_DIR) / "io";

std::string read_bytes(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void write_bytes(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

nlohmann::json read_json(const fs::path& p) {
    return nlohmann::json::parse(read_bytes(p));
}

// A safetensors file from a header text and a data buffer (the length prefix is computed).
std::string make_file(const std::string& header, const std::string& data, std::optional<uint64_t> length = {}) {
    std::string out(8, '\0');
    const uint64_t n = length.value_or(header.size());
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out + header + data;
}

// Same dtype, shape and bytes (so NaN payloads compare too).
void expect_same_tensor(const at::Tensor& got, const at::Tensor& want, const std::string& name) {
    EXPECT_EQ(got.scalar_type(), want.scalar_type()) << name;
    EXPECT_EQ(got.sizes(), want.sizes()) << name;
    if (want.numel()) {
        EXPECT_TRUE(at::equal(got.reshape(-1).view(at::kByte), want.reshape(-1).view(at::kByte))) << name;
    }
}

class TempDir {
public:
    TempDir() {
        char tmpl[] = "/tmp/medllm_io_test_XXXXXX";
        path_       = ::mkdtemp(tmpl);
    }
    ~TempDir() {
        std::error_code ignored;  // a destructor must not throw
        fs::remove_all(path_, ignored);
    }
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

double checksum(const at::Tensor& t) {
    const at::Tensor flat    = t.reshape(-1).to(at::kDouble);
    const at::Tensor weights = at::arange(flat.numel(), at::kDouble).remainder(7) + 1;
    return (flat * weights).sum().item<double>();
}

// Expect `fn` to throw medllm::Error whose message contains every fragment.
template <typename Fn>
void expect_error(Fn&& fn, const std::vector<std::string>& fragments) {
    try {
        fn();
        ADD_FAILURE() << "no error thrown; wanted one mentioning " << fragments.front();
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_EQ(what.find('\n'), std::string::npos) << what;
        for (const auto& f : fragments) EXPECT_NE(what.find(f), std::string::npos) << "'" << f << "' not in: " << what;
    }
}

Header parse(const std::string& file, const std::string& source = "mem.safetensors") {
    return parse_header(reinterpret_cast<const uint8_t*>(file.data()), file.size(), source);
}

}  // namespace

// ---------------------------------------------------------------- reference files

TEST(Safetensors, ReadsEveryDtypeWrittenByPythonSafetensors) {
    const auto expected = read_json(kFixtures / "dtypes.json");
    SafetensorsFile file(kFixtures / "dtypes.safetensors");
    EXPECT_EQ(file.metadata().at("format"), "pt");
    EXPECT_EQ(file.metadata().at("producer"), expected["metadata"]["producer"].get<std::string>());
    ASSERT_EQ(file.names().size(), expected["tensors"].size());
    for (const auto& [name, want] : expected["tensors"].items()) {
        SCOPED_TRACE(name);
        const at::Tensor t = file.tensor(name);
        EXPECT_EQ(t.sizes().vec(), want["shape"].get<std::vector<int64_t>>());
        const auto& values = want["values"];
        ASSERT_EQ(static_cast<size_t>(t.numel()), values.size());
        const std::string dtype = want["dtype"];
        const at::Tensor flat   = t.reshape(-1);
        for (size_t i = 0; i < values.size(); ++i) {
            const auto& v = values[i];
            if (dtype == "int64") {
                EXPECT_EQ(flat[i].item<int64_t>(), v.get<int64_t>()) << i;
            } else if (dtype == "bool" || dtype.rfind("int", 0) == 0 || dtype == "uint8") {
                EXPECT_EQ(flat[i].to(at::kLong).item<int64_t>(), v.get<int64_t>()) << i;
            } else {
                const double want_v = v.is_string() ? (v == "inf" ? INFINITY : -INFINITY) : v.get<double>();
                const double got    = flat[i].to(at::kDouble).item<double>();
                EXPECT_EQ(got, want_v) << i;  // exact: the same bits were written
                EXPECT_EQ(std::signbit(got), std::signbit(want_v)) << i;
            }
        }
    }
    const std::map<std::string, at::ScalarType> dtypes = {
        {"bf16", at::kBFloat16}, {"f16", at::kHalf},  {"f32", at::kFloat}, {"f64", at::kDouble}, {"u8", at::kByte},
        {"i8", at::kChar},       {"i16", at::kShort}, {"i32", at::kInt},   {"i64", at::kLong},   {"bool", at::kBool}};
    for (const auto& [name, type] : dtypes) EXPECT_EQ(file.tensor(name).scalar_type(), type) << name;
    EXPECT_EQ(file.info("bf16").dtype, DType::BF16);
    EXPECT_EQ(file.tensor("scalar").dim(), 0);
    EXPECT_EQ(file.tensor("empty").numel(), 0);
}

TEST(Safetensors, TensorsAreZeroCopyViewsThatOutliveTheReaderAndNeverWriteTheFile) {
    TempDir dir;
    const fs::path copy = dir.path() / "dtypes.safetensors";
    fs::copy_file(kFixtures / "dtypes.safetensors", copy);
    const std::string before = read_bytes(copy);
    at::Tensor f32;
    {
        SafetensorsFile file(copy);
        f32 = file.tensor("f32");
        EXPECT_EQ(f32.data_ptr(), static_cast<const void*>(file.data("f32")));  // a view into the mapping
        EXPECT_EQ(file.header().data_start % 8, 0u);
    }
    EXPECT_EQ(f32[0].item<float>(), 1.5f);  // mapping kept alive by the tensor's deleter
    f32.mul_(2);                            // private mapping: the file must not change
    EXPECT_EQ(f32[0].item<float>(), 3.0f);
    f32.reset();
    EXPECT_EQ(read_bytes(copy), before);
}

TEST(Safetensors, ReadsTheShardedCheckpointTransformersWrote) {
    const auto meta  = read_json(kFixtures / "sharded.json");
    const auto index = read_json(kFixtures / "sharded" / "model.safetensors.index.json");
    CheckpointReader reader(kFixtures / "sharded");
    EXPECT_TRUE(reader.sharded());
    EXPECT_EQ(reader.files().size(), 3u);
    EXPECT_EQ(reader.names().size(), index["weight_map"].size());
    EXPECT_EQ(reader.total_bytes(), index["metadata"]["total_size"].get<uint64_t>());
    for (const auto& [name, file] : index["weight_map"].items()) {
        SCOPED_TRACE(name);
        EXPECT_EQ(reader.file_of(name).filename().string(), file.get<std::string>());
        const at::Tensor t = reader.load(name);
        EXPECT_EQ(t.scalar_type(), at::kBFloat16);
        EXPECT_DOUBLE_EQ(checksum(t), meta["checksums"][name].get<double>());
    }
    size_t visited = 0;
    reader.for_each([&](const TensorInfo& info, const at::Tensor& t) {
        ++visited;
        EXPECT_DOUBLE_EQ(checksum(t), meta["checksums"][info.name].get<double>()) << info.name;
    });
    EXPECT_EQ(visited, reader.names().size());
    expect_error([&] { reader.load("lm_head.bias"); }, {"sharded", "'lm_head.bias'"});
}

// ---------------------------------------------------------------- writer

TEST(Safetensors, WriterRoundTripsEveryDtypeAlignedAndBitExact) {
    TempDir dir;
    SafetensorsFile reference(kFixtures / "dtypes.safetensors");
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& name : reference.names()) tensors.emplace_back(name, reference.tensor(name));
    // A non-contiguous view must be written as its logical (row-major) values.
    tensors.emplace_back("transposed", at::arange(6, at::kFloat).reshape({2, 3}).t());
    const fs::path path = dir.path() / "out.safetensors";
    save_file(path, tensors, {{"format", "pt"}, {"note", "ünïcode ok"}});

    SafetensorsFile back(path);
    EXPECT_EQ(back.metadata().at("note"), "ünïcode ok");
    EXPECT_EQ(back.header().data_start % 8, 0u);
    for (const auto& t : back.header().tensors) EXPECT_EQ(t.begin % dtype_size(t.dtype), 0u) << t.name;
    for (const auto& [name, want] : tensors) expect_same_tensor(back.tensor(name), want, name);
    EXPECT_FALSE(fs::exists(path.string() + ".tmp"));
    expect_error(
        [&] {
            save_file(dir.path() / "dup.safetensors", {{"a", at::ones(1)}, {"a", at::ones(1)}});
        },
        {"dup.safetensors", "'a'", "twice"});
    expect_error(
        [&] {
            save_file(dir.path() / "c.safetensors", {{"c", at::ones(1, at::kComplexFloat)}});
        },
        {"c.safetensors", "'c'"});
}

TEST(Safetensors, ShardsLikeTransformersAtTheSizeLimit) {
    const auto meta                 = read_json(kFixtures / "sharded.json");
    const std::string hf_index_text = read_bytes(kFixtures / "sharded" / "model.safetensors.index.json");
    CheckpointReader hf(kFixtures / "sharded");
    TempDir dir;
    write_bytes(dir.path() / "model-00001-of-00009.safetensors", "stale shard from an earlier save");
    CheckpointWriter writer(dir.path(), meta["max_shard_bytes"].get<uint64_t>());
    for (const auto& name : meta["order"]) writer.add(name, hf.load(name.get<std::string>()));
    const auto files = writer.finish();
    ASSERT_EQ(files.size(), 3u);
    EXPECT_EQ(files[0].filename(), "model-00001-of-00003.safetensors");
    EXPECT_FALSE(fs::exists(dir.path() / "model-00001-of-00009.safetensors"));
    // Same shard assignment and the same index text, byte for byte.
    EXPECT_EQ(read_bytes(dir.path() / "model.safetensors.index.json"), hf_index_text);
    CheckpointReader back(dir.path());
    for (const auto& name : back.names()) EXPECT_TRUE(at::equal(back.load(name), hf.load(name))) << name;

    // Everything under the limit: one model.safetensors and no index, like save_pretrained.
    TempDir single;
    CheckpointWriter one(single.path());
    one.add("x", at::ones({4, 4}));
    one.add("y", at::zeros({3}, at::kBFloat16));
    ASSERT_EQ(one.finish().size(), 1u);
    EXPECT_TRUE(fs::exists(single.path() / "model.safetensors"));
    EXPECT_FALSE(fs::exists(single.path() / "model.safetensors.index.json"));
    CheckpointReader single_back(single.path());
    EXPECT_FALSE(single_back.sharded());
    EXPECT_EQ(single_back.names(), (std::vector<std::string>{"x", "y"}));
    EXPECT_EQ(single_back.load("x").sum().item<float>(), 16.0f);
    EXPECT_EQ(CheckpointReader(single.path() / "model.safetensors").names().size(), 2u);

    // A tensor larger than the limit gets a shard of its own.
    TempDir big;
    CheckpointWriter w(big.path(), 100);
    w.add("a", at::ones(10));   // 40 B
    w.add("b", at::ones(100));  // 400 B: own shard
    w.add("c", at::ones(10));
    EXPECT_EQ(w.finish().size(), 3u);
    const auto idx = read_json(big.path() / "model.safetensors.index.json");
    EXPECT_EQ(idx["weight_map"]["b"], "model-00002-of-00003.safetensors");
    EXPECT_EQ(idx["metadata"]["total_size"], 480);
    EXPECT_EQ(idx["metadata"]["total_parameters"], 120);
}

// A resumable writer interrupted after some shards keeps them; a rerun with the same key takes them over, skips
// their tensors and produces exactly the checkpoint an uninterrupted run writes.
TEST(Safetensors, ResumableWriterTakesOverFinishedShards) {
    const auto meta = read_json(kFixtures / "sharded.json");
    const auto max  = meta["max_shard_bytes"].get<uint64_t>();
    CheckpointReader hf(kFixtures / "sharded");
    std::vector<std::string> order;
    for (const auto& name : meta["order"]) order.push_back(name.get<std::string>());
    const std::string key = "test-run-1";

    TempDir dir;
    {
        CheckpointWriter first(dir.path(), max, {{"format", "pt"}}, "model", key);
        // Interrupted: the writer goes away (an exception, or a kill) after part of the tensors.
        for (size_t i = 0; i < order.size() * 3 / 4; ++i) first.add(order[i], hf.load(order[i]));
    }
    EXPECT_TRUE(fs::exists(dir.path() / ".model-shards.json"));
    {
        CheckpointWriter other(dir.path(), max, {{"format", "pt"}}, "model", "a different run");
        EXPECT_EQ(other.resumed_shards(), 0u);  // different key: nothing is taken over, the leftovers go
    }
    EXPECT_FALSE(fs::exists(dir.path() / ".model-shard-0.safetensors"));
    {
        CheckpointWriter first(dir.path(), max, {{"format", "pt"}}, "model", key);
        for (size_t i = 0; i < order.size() * 3 / 4; ++i) first.add(order[i], hf.load(order[i]));
    }
    CheckpointWriter second(dir.path(), max, {{"format", "pt"}}, "model", key);
    ASSERT_GE(second.resumed_shards(), 1u);
    EXPECT_TRUE(second.completed(order.front()));
    EXPECT_FALSE(second.completed(order.back()));
    size_t skipped = 0;
    for (const auto& name : order) {
        if (second.completed(name)) {
            ++skipped;
            continue;  // what a caller does: no load, no compute
        }
        second.add(name, hf.load(name));
    }
    EXPECT_EQ(skipped, second.resumed_tensors());
    EXPECT_EQ(second.finish().size(), 3u);
    EXPECT_FALSE(fs::exists(dir.path() / ".model-shards.json"));
    EXPECT_EQ(read_bytes(dir.path() / "model.safetensors.index.json"),
              read_bytes(kFixtures / "sharded" / "model.safetensors.index.json"));
    CheckpointReader back(dir.path());
    EXPECT_EQ(back.names(), hf.names());
    for (const auto& name : back.names()) EXPECT_TRUE(at::equal(back.load(name), hf.load(name))) << name;
    for (const auto& entry : fs::directory_iterator(dir.path()))
        EXPECT_NE(entry.path().filename().string().front(), '.') << "left behind: " << entry.path();
}

// The resume key of quantize/merge: any change to the input directory's files gives another fingerprint.
TEST(Safetensors, DirectoryFingerprintChangesWithTheFiles) {
    TempDir d;
    write_bytes(d.path() / "model.safetensors", "abc");
    write_bytes(d.path() / "config.json", "{}");
    const std::string first = directory_fingerprint(d.path());
    EXPECT_EQ(directory_fingerprint(d.path()), first);
    write_bytes(d.path() / "model.safetensors", "abcd");  // size
    const std::string second = directory_fingerprint(d.path());
    EXPECT_NE(second, first);
    fs::last_write_time(d.path() / "config.json",
                        fs::last_write_time(d.path() / "config.json") - std::chrono::hours(1));
    EXPECT_NE(directory_fingerprint(d.path()), second);  // modification time
    write_bytes(d.path() / "extra.safetensors", "");
    EXPECT_NE(directory_fingerprint(d.path()), second);
}

TEST(Safetensors, ResumeRefusesADifferentOrderAndPlainWritersCleanUp) {
    TempDir dir;
    {
        CheckpointWriter w(dir.path(), 100, {{"format", "pt"}}, "model", "k");
        w.add("a", at::ones(25));  // 100 B: a shard of its own
        w.add("b", at::ones(25));
    }
    CheckpointWriter again(dir.path(), 100, {{"format", "pt"}}, "model", "k");
    EXPECT_EQ(again.resumed_shards(), 2u);
    again.add("z", at::ones(3));
    expect_error([&] { again.add("a", at::ones(25)); }, {"'a'", "interrupted run", ".model-shards.json"});

    TempDir plain;
    {
        CheckpointWriter w(plain.path(), 100);
        w.add("a", at::ones(25));
    }
    EXPECT_TRUE(fs::is_empty(plain.path()));

    // A damaged record: nothing is taken over, the leftovers are cleared. (A shard that no longer matches its
    // record is dropped with the ones after it: ResumeRewritesAKeptShardWhoseBytesChanged.)
    for (const std::string damage : {"journal", "types"}) {
        TempDir d;
        {
            CheckpointWriter w(d.path(), 100, {{"format", "pt"}}, "model", "k");
            w.add("a", at::ones(25));
            w.add("b", at::ones(25));
        }
        if (damage == "journal") {
            write_bytes(d.path() / ".model-shards.json", "{\"resume_key\": \"k\", \"shards\": [tru");
        } else if (damage == "types") {
            write_bytes(d.path() / ".model-shards.json",
                        R"({"resume_key": "k", "max_shard_bytes": "100", "shards": [{"file": 3}]})");
        }
        CheckpointWriter again(d.path(), 100, {{"format", "pt"}}, "model", "k");
        EXPECT_EQ(again.resumed_shards(), 0u) << damage;
        EXPECT_FALSE(fs::exists(d.path() / ".model-shard-0.safetensors")) << damage;
        again.add("a", at::ones(25));
        again.add("b", at::ones(25));
        EXPECT_EQ(again.finish().size(), 2u) << damage;
    }
}

// Finding 2: resume used to keep a shard whose size matched its record, so a changed byte inside survived into the
// output. Now the shard's hash is checked: the changed shard and the ones after it are written again, and the
// result is byte for byte a clean run's.
TEST(Safetensors, ResumeRewritesAKeptShardWhoseBytesChanged) {
    auto tensors = [] {
        std::vector<std::pair<std::string, at::Tensor>> t;
        for (int i = 0; i < 4; ++i) t.emplace_back("t" + std::to_string(i), at::arange(25, at::kFloat) + i);
        return t;
    }();
    auto write_all = [&](const fs::path& dir, size_t stop_after) {
        CheckpointWriter w(dir, 100, {{"format", "pt"}}, "model", "k");  // 100 B: one tensor per shard
        size_t added = 0;
        for (const auto& [name, t] : tensors) {
            if (w.completed(name)) continue;
            if (added++ == stop_after) return size_t{0};  // interrupted
            w.add(name, t);
        }
        w.finish();
        return w.resumed_shards();
    };
    TempDir clean, resumed;
    write_all(clean.path(), 99);
    write_all(resumed.path(), 3);  // shards 0..2 finished, then interrupted
    for (const std::string damage : {"data byte", "removed", "other tensor"}) {
        SCOPED_TRACE(damage);
        const fs::path shard1 = resumed.path() / ".model-shard-1.safetensors";
        if (damage == "data byte") {
            std::string bytes = read_bytes(shard1);
            bytes[bytes.size() - 7] ^= 0x01;  // inside t1's data: same size, same header
            write_bytes(shard1, bytes);
        } else if (damage == "removed") {
            fs::remove(shard1);
        } else {
            save_file(shard1, {{"other", at::ones(25)}});
        }
        {
            CheckpointWriter probe(resumed.path(), 100, {{"format", "pt"}}, "model", "k");
            EXPECT_EQ(probe.resumed_shards(), 1u);  // shard 0 kept; 1 (changed) and 2 (after it) dropped
            EXPECT_TRUE(probe.completed("t0"));
            EXPECT_FALSE(probe.completed("t1"));
            EXPECT_FALSE(probe.completed("t2"));
        }
        EXPECT_FALSE(fs::exists(resumed.path() / ".model-shard-2.safetensors"));
        // Interrupt again after one more tensor, so the next damage finds shards 0..2 again.
        EXPECT_EQ(write_all(resumed.path(), 2), 0u);
    }
    EXPECT_EQ(write_all(resumed.path(), 99), 3u);
    for (int i = 1; i <= 4; ++i) {
        const std::string name = "model-0000" + std::to_string(i) + "-of-00004.safetensors";
        EXPECT_EQ(read_bytes(resumed.path() / name), read_bytes(clean.path() / name)) << name;
    }
    EXPECT_EQ(read_bytes(resumed.path() / "model.safetensors.index.json"),
              read_bytes(clean.path() / "model.safetensors.index.json"));
}

// Finding 1: every safetensors write is checked and atomic: a full disk (RLIMIT_FSIZE here) is an Error naming the
// file, and leaves neither a cut file under the final name nor a temporary.
TEST(Safetensors, FullDiskIsAnErrorAndLeavesNoCutFile) {
    TempDir dir;
    const fs::path path = dir.path() / "big.safetensors";
    {
        ScopedFileSizeLimit limit(4096);
        expect_error([&] { save_file(path, {{"w", at::zeros({4096})}}); }, {path.string(), "write failed"});
    }
    EXPECT_FALSE(fs::exists(path));
    EXPECT_TRUE(fs::is_empty(dir.path()));
    // The index of a sharded checkpoint goes through the same writer (shards of ~104 B fit, the ~180 B index not).
    {
        ScopedFileSizeLimit limit(150);
        CheckpointWriter w(dir.path(), 8);
        w.add("a", at::ones(2));
        w.add("b", at::ones(2));
        expect_error([&] { w.finish(); }, {"model.safetensors.index.json", "write failed"});
    }
    EXPECT_FALSE(fs::exists(dir.path() / "model.safetensors.index.json"));
}

// Re-writes every dtype of the Python-written fixture and reads it back. With MEDLLM_IO_EXPORT_DIR set (as
// scripts/make_io_fixtures.py --verify-cpp does) the file goes there for Python safetensors/transformers to load.
TEST(Safetensors, ExportForPython) {
    TempDir tmp;
    const char* env     = std::getenv("MEDLLM_IO_EXPORT_DIR");
    const fs::path out  = env ? fs::path(env) : tmp.path();
    const fs::path file = out / "dtypes_cpp.safetensors";
    SafetensorsFile reference(kFixtures / "dtypes.safetensors");
    std::vector<std::pair<std::string, at::Tensor>> tensors;
    for (const auto& name : reference.names()) tensors.emplace_back(name, reference.tensor(name));
    save_file(file, tensors, {{"format", "pt"}, {"writer", "medllm"}});
    SafetensorsFile back(file);
    auto sorted = [](std::vector<std::string> v) {
        std::sort(v.begin(), v.end());
        return v;
    };
    EXPECT_EQ(sorted(back.names()), sorted(reference.names()));
    for (const auto& name : reference.names()) expect_same_tensor(back.tensor(name), reference.tensor(name), name);

    const auto meta = read_json(kFixtures / "sharded.json");
    CheckpointReader hf(kFixtures / "sharded");
    const fs::path dir = out / "sharded_cpp";
    CheckpointWriter writer(dir, meta["max_shard_bytes"].get<uint64_t>());
    for (const auto& name : meta["order"]) writer.add(name, hf.load(name.get<std::string>()));
    writer.finish();
    fs::copy_file(kFixtures / "sharded" / "config.json", dir / "config.json");
    CheckpointReader again(dir);
    for (const auto& name : meta["order"]) {
        EXPECT_TRUE(at::equal(again.load(name.get<std::string>()), hf.load(name.get<std::string>()))) << name;
    }
}

// ---------------------------------------------------------------- corrupt and truncated files

TEST(Safetensors, EveryTruncationOfAValidFileIsRejected) {
    const std::string good = read_bytes(kFixtures / "dtypes.safetensors");
    for (size_t len = 0; len < good.size(); ++len) {
        const std::string cut = good.substr(0, len);
        EXPECT_THROW(parse(cut), Error) << "prefix of " << len << " bytes";
    }
    EXPECT_NO_THROW(parse(good));
    TempDir dir;
    write_bytes(dir.path() / "cut.safetensors", good.substr(0, good.size() - 3));
    expect_error([&] { SafetensorsFile f(dir.path() / "cut.safetensors"); }, {"cut.safetensors", "truncated"});
}

TEST(Safetensors, CorruptHeadersNameFileAndTensor) {
    const std::string data(8, '\0');
    const std::string ok = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    EXPECT_NO_THROW(parse(make_file(ok, data)));
    EXPECT_NO_THROW(parse(make_file(ok + "   ", data)));  // space padding, as HF writes

    struct Case {
        std::string header;
        std::string data;
        std::vector<std::string> fragments;
    };
    const std::vector<Case> cases = {
        {"[1,2]", "", {"does not start with '{'"}},
        {"{\"w\":", "", {"not valid JSON"}},
        {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} x)", data, {"not valid JSON"}},
        {R"({"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}})", data, {"'w'", "unsupported dtype 'Q4'"}},
        {R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data, {"'w'", "shape"}},
        {R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", data, {"'w'", "shape"}},
        {R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data, {"'w'", "needs 12"}},
        {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,1]}})", data, {"'w'", "data_offsets"}},
        {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data, {"'w'", "before begin"}},
        {R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data, {"'w'", "past the data buffer"}},
        {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data + "xx", {"2 bytes after the last tensor"}},
        {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
         data,
         {"'b'", "overlaps tensor 'a'"}},
        {R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data, {"'a'", "gap of 4"}},
        {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
         data,
         {"duplicate key 'a'"}},
        {R"({"w":{"dtype":"F32","shape":[[[2]]],"data_offsets":[0,8]}})", data, {"nests deeper"}},
        {R"({"__metadata__":{"k":1},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data, {"'k'"}},
        {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", data, {"'w'", "'extra'"}},
        {R"({"w":{"shape":[2],"data_offsets":[0,8]}})", data, {"'w'", "dtype"}},
        {R"({"w":[1]})", data, {"'w'", "not an object"}},
        {R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", data, {"'w'", "overflow"}},
        {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551616]}})", data, {"'w'", "data_offsets"}},
        {"{\"w\\n\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", data, {"'w\\x0a'"}},
        {"{\"\xff\":{}}", data, {"not valid JSON"}},
    };
    for (const auto& c : cases) {
        SCOPED_TRACE(c.header);
        expect_error([&] { parse(make_file(c.header, c.data), "bad.safetensors"); }, c.fragments);
    }
    expect_error([&] { parse(make_file(ok, data, 200'000'000)); }, {"exceeds"});
    expect_error([&] { parse(make_file(ok, data, ok.size() + 100)); }, {"runs past the end"});
    expect_error([&] { parse("abc"); }, {"too short"});
    std::string deep(10'000'000, '[');  // must fail fast, without recursion or a huge DOM
    expect_error([&] { parse(make_file("{\"w\":" + deep, "")); }, {"nests deeper"});

    TempDir dir;
    write_bytes(dir.path() / "bool.safetensors",
                make_file(R"({"b":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})", std::string("\x01\x02", 2)));
    SafetensorsFile bools(dir.path() / "bool.safetensors");
    expect_error([&] { bools.tensor("b"); }, {"bool.safetensors", "'b'", "byte value 2"});
}

TEST(Safetensors, RandomByteFlipsNeverCrash) {
    const std::string good  = read_bytes(kFixtures / "dtypes.safetensors");
    const size_t header_end = 8 + parse(good).header_bytes;
    std::mt19937 rng(7);
    int accepted = 0;
    for (int i = 0; i < 3000; ++i) {
        std::string bad = good;
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int f = 0; f < flips; ++f) bad[rng() % header_end] = static_cast<char>(rng() & 0xff);
        try {
            const Header h = parse(bad);
            ++accepted;  // a flip inside a name or metadata value can leave a valid file
            for (const auto& t : h.tensors) EXPECT_LE(8 + h.header_bytes + t.end, bad.size());
        } catch (const Error&) {
        }
    }
    EXPECT_LT(accepted, 3000);
}

TEST(Safetensors, CorruptShardIndexesAreRejected) {
    TempDir dir;
    save_file(dir.path() / "a.safetensors", {{"x", at::ones(2)}, {"y", at::ones(3)}});
    auto write_index = [&](const std::string& text) { write_bytes(dir.path() / "model.safetensors.index.json", text); };
    write_index(R"({"metadata":{},"weight_map":{"x":"a.safetensors","y":"a.safetensors"}})");
    EXPECT_EQ(CheckpointReader(dir.path()).names().size(), 2u);
    write_index(R"({"weight_map":{"x":"a.safetensors"}})");
    expect_error([&] { CheckpointReader r(dir.path()); }, {"a.safetensors", "'y'", "not mapped"});
    write_index(R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors","z":"a.safetensors"}})");
    expect_error([&] { CheckpointReader r(dir.path()); }, {"a.safetensors", "'z'", "missing"});
    write_index(R"({"weight_map":{"x":"../etc/passwd"}})");
    expect_error([&] { CheckpointReader r(dir.path()); }, {"index.json", "'x'", "plain file name"});
    write_index(R"({"weight_map":{"x":"missing.safetensors"}})");
    expect_error([&] { CheckpointReader r(dir.path()); }, {"missing.safetensors", "cannot open"});
    write_index(R"({"weight_map":[]})");
    expect_error([&] { CheckpointReader r(dir.path()); }, {"index.json", "weight_map"});
    write_index("{");
    expect_error([&] { CheckpointReader r(dir.path()); }, {"index.json:", "invalid JSON"});
    TempDir empty;
    expect_error([&] { CheckpointReader r(empty.path()); }, {"no model.safetensors"});
    expect_error([&] { CheckpointReader r(empty.path() / "nope"); }, {"nope", "no such"});
}
