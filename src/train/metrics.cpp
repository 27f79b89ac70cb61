// Training logs: the per-step line, metrics.jsonl and TensorBoard events.
#include "medllm/train/metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>

#ifdef MEDLLM_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDACachingAllocator.h>
#include <cuda_runtime_api.h>
#endif

#include "medllm/core/error.h"
#include "medllm/core/progress.h"
#include "medllm/model/memory.h"

namespace fs = std::filesystem;

namespace medllm::train {

namespace {

const std::array<uint32_t, 256>& crc_table() {
    static const auto table = [] {
        std::array<uint32_t, 256> t{};
        for (uint32_t i = 0; i < 256; ++i) {
            uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    return table;
}

void put_le(std::string& out, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_varint(std::string& out, uint64_t v) {
    while (v >= 0x80) {
        out.push_back(static_cast<char>((v & 0x7f) | 0x80));
        v >>= 7;
    }
    out.push_back(static_cast<char>(v));
}
void put_bytes_field(std::string& out, int field, const std::string& bytes) {
    put_varint(out, (static_cast<uint64_t>(field) << 3) | 2);
    put_varint(out, bytes.size());
    out += bytes;
}
std::string event_header(double wall_time, int64_t step) {
    std::string e;
    uint64_t bits;
    std::memcpy(&bits, &wall_time, 8);
    put_varint(e, (1 << 3) | 1);  // wall_time: double, fixed64
    put_le(e, bits, 8);
    if (step != 0) {
        put_varint(e, (2 << 3) | 0);  // step: int64 varint (proto3 omits 0)
        put_varint(e, static_cast<uint64_t>(step));
    }
    return e;
}

}  // namespace

uint32_t crc32c(const void* data, std::size_t size, uint32_t crc) {
    const auto& t = crc_table();
    const auto* p = static_cast<const uint8_t*>(data);
    crc           = ~crc;
    for (std::size_t i = 0; i < size; ++i) crc = t[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

uint32_t masked_crc32c(const void* data, std::size_t size) {
    const uint32_t c = crc32c(data, size);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord(const std::string& data) {
    std::string out, len;
    put_le(len, data.size(), 8);
    out += len;
    put_le(out, masked_crc32c(len.data(), len.size()), 4);
    out += data;
    put_le(out, masked_crc32c(data.data(), data.size()), 4);
    return out;
}

std::string tensorboard_version_event(double wall_time) {
    std::string e = event_header(wall_time, 0);
    put_bytes_field(e, 3, "brain.Event:2");
    return e;
}

std::string tensorboard_scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
    std::string v;
    put_bytes_field(v, 1, tag);
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    put_varint(v, (2 << 3) | 5);  // simple_value: float, fixed32
    put_le(v, bits, 4);
    std::string summary;
    put_bytes_field(summary, 1, v);
    std::string e = event_header(wall_time, step);
    put_bytes_field(e, 5, summary);
    return e;
}

static double unix_now() {
    return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

TensorBoardWriter::TensorBoardWriter(const fs::path& dir) {
    char host[256] = "localhost";
    ::gethostname(host, sizeof(host) - 1);
    const double now = unix_now();
    path_            = dir / ("events.out.tfevents." + std::to_string(static_cast<int64_t>(now)) + "." + host + "." +
                   std::to_string(::getpid()));
    file_            = std::fopen(path_.c_str(), "ab");
    if (!file_) throw Error("cannot create " + path_.string() + ": " + std::strerror(errno));
    write(tensorboard_version_event(now));
}

TensorBoardWriter::~TensorBoardWriter() {
    if (file_) std::fclose(file_);
}

void TensorBoardWriter::write(const std::string& event) {
    const std::string rec = tfrecord(event);
    if (std::fwrite(rec.data(), 1, rec.size(), file_) != rec.size() || std::fflush(file_) != 0)
        throw Error("cannot write " + path_.string() + ": " + std::strerror(errno));
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
    write(tensorboard_scalar_event(unix_now(), step, tag, static_cast<float>(value)));
}

double peak_memory_bytes(c10::Device device) {
#ifdef MEDLLM_HAVE_CUDA_KERNELS
    if (device.is_cuda()) {
        const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.has_index() ? device.index() : 0);
        return static_cast<double>(
            stats.allocated_bytes[static_cast<std::size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak);
    }
#endif
    if (device.is_cuda()) return 0.0;  // a build without the CUDA parts cannot train on CUDA anyway
    rusage u{};
    if (::getrusage(RUSAGE_SELF, &u) != 0) return 0.0;
    return static_cast<double>(u.ru_maxrss) * 1024.0;  // Linux reports KiB
}

const char* peak_memory_kind(c10::Device device) {
    return device.is_cuda() ? "cuda_max_allocated" : "cpu_max_rss";
}

std::optional<double> peak_bf16_flops(const std::string& name) {
    const auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
    if (has("H200")) return 989.4e12;
    if (has("H100")) return has("PCIe") ? 756.0e12 : 989.4e12;  // SXM (and NVL's per-GPU figure is close: SXM's)
    if (has("A100")) return 312.0e12;                           // SXM and PCIe alike
    return std::nullopt;
}

std::optional<double> device_peak_flops(c10::Device device) {
    if (!device.is_cuda()) return std::nullopt;
#ifdef MEDLLM_HAVE_CUDA_KERNELS
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device.has_index() ? device.index() : 0) != cudaSuccess) return std::nullopt;
    return peak_bf16_flops(prop.name);
#else
    return std::nullopt;
#endif
}

double model_flops_utilization(double matmul_params, double tokens_per_second, double peak_flops) {
    return peak_flops > 0 ? 6.0 * matmul_params * tokens_per_second / peak_flops : 0.0;
}

double matmul_parameters(const model::Qwen2Config& config) {
    const auto n = model::count_parameters(config);
    return static_cast<double>(n.linear_weights) +
           static_cast<double>(config.vocab_size) * static_cast<double>(config.hidden_size);
}

std::string format_log_line(const StepReport& r) {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "step %lld/%lld | epoch %.2f | loss %.4f | lr %.3e | grad_norm %.4f | %.0f tok/s | peak mem %.2f GB",
                  static_cast<long long>(r.step), static_cast<long long>(r.total_steps), r.epoch, r.loss, r.lr,
                  r.grad_norm, r.tokens_per_second, r.peak_memory_gb);
    std::string line = buf;
    if (r.mfu) {
        std::snprintf(buf, sizeof buf, " | MFU %.1f%%", 100.0 * *r.mfu);
        line += buf;
    }
    return line + " | ETA " + format_duration(r.eta_seconds);
}

std::string format_live_line(const StepReport& r) {
    char buf[256];
    const double pct = r.total_steps > 0 ? 100.0 * static_cast<double>(r.step) / static_cast<double>(r.total_steps) : 0;
    std::snprintf(buf, sizeof buf, "step %lld/%lld (%.0f%%) | epoch %.2f | loss %.4f | lr %.3e | %.0f tok/s | ETA ",
                  static_cast<long long>(r.step), static_cast<long long>(r.total_steps), pct, r.epoch, r.loss, r.lr,
                  r.tokens_per_second);
    return buf + format_duration(r.eta_seconds);
}

MetricsFile::MetricsFile(const fs::path& path, int64_t resume_step) {
    if (resume_step > 0 && fs::exists(path)) {
        // Keep what the checkpoint's run had logged; a killed run may have logged steps after its last checkpoint.
        std::string kept;
        {
            JsonlRecordFile old(path, nullptr);
            for (const auto& r : old.existing())
                if (r.value("step", int64_t(0)) <= resume_step) kept += r.dump() + "\n";
        }
        write_file_atomic(path, kept);
        file_ = std::make_unique<JsonlRecordFile>(path, nullptr);
    } else {
        file_ = std::make_unique<JsonlRecordFile>(path, nullptr, /*overwrite=*/true);
    }
}

}  // namespace medllm::train
