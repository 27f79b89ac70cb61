// What a person follows during training: one fixed-format log line per logging step, `<output>/metrics.jsonl`
// (one JSON object per logging step, stable keys) and TensorBoard event files (training.md §4).
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "medllm/core/files.h"

namespace medllm::train {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) and TFRecord's masked form.
uint32_t crc32c(const void* data, std::size_t size, uint32_t crc = 0);
uint32_t masked_crc32c(const void* data, std::size_t size);
// One TFRecord: uint64 length | masked crc of the length | data | masked crc of the data (little-endian).
std::string tfrecord(const std::string& data);
// A serialized tensorflow.Event with a scalar summary (tag, simple_value), or the file_version event when `tag`
// is empty.
std::string tensorboard_scalar_event(double wall_time, int64_t step, const std::string& tag, float value);
std::string tensorboard_version_event(double wall_time);

// `events.out.tfevents.<unix time>.<host>.<pid>` in `dir`; every record is flushed as it is written, checked.
class TensorBoardWriter {
public:
    explicit TensorBoardWriter(const std::filesystem::path& dir);
    ~TensorBoardWriter();
    TensorBoardWriter(const TensorBoardWriter&)            = delete;
    TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;
    void add_scalar(const std::string& tag, double value, int64_t step);
    const std::filesystem::path& path() const { return path_; }

private:
    void write(const std::string& event);
    std::filesystem::path path_;
    std::FILE* file_ = nullptr;
};

// metrics.jsonl for a run that starts at `resume_step` (0 = a fresh run, which empties the file; > 0 keeps the
// records up to that step and drops the ones a killed run wrote after its last checkpoint).
class MetricsFile {
public:
    MetricsFile(const std::filesystem::path& path, int64_t resume_step);
    void append(const nlohmann::json& record) { file_->append(record); }
    void close() { file_->close(); }

private:
    std::unique_ptr<JsonlRecordFile> file_;
};

}  // namespace medllm::train
