// What a person follows during training: one fixed-format log line per logging step, `<output>/metrics.jsonl`
// (one JSON object per logging step, stable keys) and TensorBoard event files (training.md §4).
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include "medllm/core/files.h"
#include "medllm/model/config.h"

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

// Peak memory of this process so far, in bytes: on CUDA the caching allocator's peak allocated bytes on `device`
// (what torch.cuda.max_memory_allocated reports; HF Trainer's memory metrics use the same counter), on CPU the
// process's peak resident set (getrusage ru_maxrss), which includes the loaded model and everything else.
double peak_memory_bytes(c10::Device device);
// "cuda_max_allocated" or "cpu_max_rss": what peak_memory_bytes measured, for metrics.jsonl and the logs.
const char* peak_memory_kind(c10::Device device);

// Dense bf16 tensor-core peak FLOP/s of `device_name` (as cudaGetDeviceProperties names it) from NVIDIA's data
// sheets, for the GPUs this project targets (A100, H100 SXM/PCIe, H200); nullopt for any other name.
std::optional<double> peak_bf16_flops(const std::string& device_name);
// That peak for a CUDA device; nullopt on CPU or for an unknown GPU (MFU is then left out, never logged as 0).
std::optional<double> device_peak_flops(c10::Device device);
// Model FLOPs utilization with the usual 6·N estimate (forward 2N + backward 4N FLOPs per token, attention
// scores left out): 6 · matmul_params · tokens_per_second / peak_flops.
double model_flops_utilization(double matmul_params, double tokens_per_second, double peak_flops);
// N for that estimate: the weights each token multiplies (the seven projections of every layer and the LM head,
// tied or not); the embedding lookup and the norms do no matmul.
double matmul_parameters(const model::Qwen2Config& config);

// What one logging step reports; the fixed-format log line and the terminal's live line are built from it.
struct StepReport {
    int64_t step = 0, total_steps = 0;
    double epoch = 0, loss = 0, lr = 0, grad_norm = 0, tokens_per_second = 0, eta_seconds = 0;
    double peak_memory_gb = 0;
    std::optional<double> mfu;  // a fraction, only where the device's peak is known
};
// "step 12/30 | epoch 0.40 | loss 5.4321 | lr 1.234e-04 | grad_norm 0.8123 | 1234 tok/s | peak mem 1.23 GB |
// MFU 41.2% | ETA 0:00:21" (MFU only when known): one line per logging step, in logs and when not a terminal.
std::string format_log_line(const StepReport& r);
// The shorter line a terminal refreshes after every step: "step 12/30 (40%) | epoch 0.40 | loss 5.4321 |
// lr 1.234e-04 | 1234 tok/s | ETA 0:00:21".
std::string format_live_line(const StepReport& r);

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
