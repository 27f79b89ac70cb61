// Raw-buffer CPU reference for NF4 and the 8-bit double quantization, bit-exact against bitsandbytes on CPU.
// Every floating-point step below is one IEEE fp32 operation in the same order as bitsandbytes; keep it that
// way (no reassociation, no fused multiply-add) or the bytes stop matching.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "medllm/quant/nf4.h"

namespace medllm::quant {
namespace {

float bits_to_float(uint32_t bits) {
    float value;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}

// bitsandbytes' 8-bit quantizer maps x/absmax in [-1, 1] to one of 65536 evenly spaced bins and looks the code
// index up in a table; the table gives each bin the first code whose upper midpoint is not below the bin value.
constexpr int kLutSize = 65536;

std::vector<uint8_t> build_8bit_lut(const float* code) {
    float midpoints[255];
    for (int i = 0; i < 255; ++i) midpoints[i] = 0.5f * (code[i] + code[i + 1]);
    std::vector<uint8_t> lut(kLutSize);
    int code_index = 0;
    for (int i = 0; i < kLutSize; ++i) {
        const float bin_value = -1.0f + (2.0f * static_cast<float>(i)) / static_cast<float>(kLutSize - 1);
        while (code_index < 255 && midpoints[code_index] < bin_value) ++code_index;
        lut[i] = static_cast<uint8_t>(code_index);
    }
    return lut;
}

uint16_t lut_bin(float normalized) {
    if (std::isnan(normalized)) return 0;  // unreachable for finite input; keeps the table index in range
    normalized         = std::min(std::max(normalized, -1.0f), 1.0f);
    const float sum    = normalized + 1.0f;
    const float half   = sum * 0.5f;
    const float scaled = half * static_cast<float>(kLutSize - 1);
    return static_cast<uint16_t>(scaled + 0.5f);
}

}  // namespace

const std::array<float, 16>& nf4_code() {
    static const std::array<float, 16> code = [] {
        const uint32_t bits[16] = {0xBF800000, 0xBF3239B1, 0xBF066B30, 0xBECA32A0, 0xBE91A24D, 0xBE3D353F,
                                   0xBDBA7871, 0x00000000, 0x3DA2FAFF, 0x3E24CAE3, 0x3E7C04DD, 0x3EAD033A,
                                   0x3EE1A4B8, 0x3F1007AB, 0x3F3913B3, 0x3F800000};
        std::array<float, 16> values{};
        for (int i = 0; i < 16; ++i) values[i] = bits_to_float(bits[i]);
        return values;
    }();
    return code;
}

const std::array<float, 15>& nf4_midpoints() {
    // bitsandbytes computes (c[k] + c[k+1]) / 2 in fp32 (the sum is rounded, the halving is exact).
    static const std::array<float, 15> midpoints = [] {
        std::array<float, 15> values{};
        const auto& code = nf4_code();
        for (int k = 0; k < 15; ++k) values[k] = (code[k] + code[k + 1]) / 2.0f;
        return values;
    }();
    return midpoints;
}

const std::array<float, 256>& dynamic_map() {
    // Copied bit for bit from bitsandbytes.functional.create_dynamic_map() (scripts/make_nf4_fixtures.py checks
    // it again); re-deriving it in C++ differs in the last ulp for some entries.
    static const std::array<float, 256> map = [] {
        const uint32_t bits[256] = {
            0xBF7E3333, 0xBF7A999A, 0xBF770000, 0xBF736666, 0xBF6FCCCD, 0xBF6C3333, 0xBF68999A, 0xBF650000, 0xBF616666,
            0xBF5DCCCD, 0xBF5A3333, 0xBF56999A, 0xBF530000, 0xBF4F6666, 0xBF4BCCCD, 0xBF483333, 0xBF44999A, 0xBF410000,
            0xBF3D6666, 0xBF39CCCD, 0xBF363334, 0xBF32999A, 0xBF2F0000, 0xBF2B6666, 0xBF27CCCD, 0xBF243334, 0xBF20999A,
            0xBF1D0000, 0xBF196666, 0xBF15CCCD, 0xBF123334, 0xBF0E999A, 0xBF0B0000, 0xBF076666, 0xBF03CCCC, 0xBF003333,
            0xBEF93332, 0xBEF20000, 0xBEEACCCC, 0xBEE3999A, 0xBEDC6666, 0xBED53333, 0xBECE0000, 0xBEC6CCCC, 0xBEBF999A,
            0xBEB86666, 0xBEB13333, 0xBEAA0000, 0xBEA2CCCC, 0xBE9B999A, 0xBE946666, 0xBE8D3334, 0xBE860000, 0xBE7D9999,
            0xBE6F3333, 0xBE60CCCD, 0xBE526666, 0xBE440000, 0xBE35999A, 0xBE273333, 0xBE18CCCD, 0xBE0A6666, 0xBDF80000,
            0xBDDB3334, 0xBDC9EB85, 0xBDC428F7, 0xBDBE6667, 0xBDB8A3D7, 0xBDB2E148, 0xBDAD1EB8, 0xBDA75C2A, 0xBDA1999A,
            0xBD9BD70A, 0xBD96147B, 0xBD9051EB, 0xBD8A8F5D, 0xBD84CCCD, 0xBD7E147B, 0xBD728F5D, 0xBD670A3D, 0xBD5B851F,
            0xBD500000, 0xBD447AE1, 0xBD38F5C3, 0xBD2D70A3, 0xBD21EB85, 0xBD166667, 0xBD0AE148, 0xBCFEB852, 0xBCE7AE15,
            0xBCD0A3D7, 0xBCB9999A, 0xBCA28F5D, 0xBC8B851F, 0xBC68F5C3, 0xBC3AE148, 0xBC1F3B64, 0xBC160418, 0xBC0CCCCD,
            0xBC039581, 0xBBF4BC6A, 0xBBE24DD3, 0xBBCFDF3B, 0xBBBD70A4, 0xBBAB020D, 0xBB989374, 0xBB8624DD, 0xBB676C8A,
            0xBB428F5C, 0xBB1DB22D, 0xBAF1A9FC, 0xBAA7EF9D, 0xBA7765FF, 0xBA59E83E, 0xBA3C6A80, 0xBA1EECC1, 0xBA016F01,
            0xB9C7E283, 0xB98CE705, 0xB923D70B, 0xB8BA1F4B, 0xB88AEFB3, 0xB8378034, 0xB7B24206, 0xB70205FF, 0xB65A1A94,
            0xB513A3B7, 0x00000000, 0x3513A3B7, 0x365A1A94, 0x370205FF, 0x37B24206, 0x38378034, 0x388AEFB3, 0x38BA1F4B,
            0x3923D70B, 0x398CE705, 0x39C7E283, 0x3A016F01, 0x3A1EECC1, 0x3A3C6A80, 0x3A59E83E, 0x3A7765FF, 0x3AA7EF9D,
            0x3AF1A9FC, 0x3B1DB22D, 0x3B428F5C, 0x3B676C8A, 0x3B8624DD, 0x3B989374, 0x3BAB020D, 0x3BBD70A4, 0x3BCFDF3B,
            0x3BE24DD3, 0x3BF4BC6A, 0x3C039581, 0x3C0CCCCD, 0x3C160418, 0x3C1F3B64, 0x3C3AE148, 0x3C68F5C3, 0x3C8B851F,
            0x3CA28F5D, 0x3CB9999A, 0x3CD0A3D7, 0x3CE7AE15, 0x3CFEB852, 0x3D0AE148, 0x3D166667, 0x3D21EB85, 0x3D2D70A3,
            0x3D38F5C3, 0x3D447AE1, 0x3D500000, 0x3D5B851F, 0x3D670A3D, 0x3D728F5D, 0x3D7E147B, 0x3D84CCCD, 0x3D8A8F5D,
            0x3D9051EB, 0x3D96147B, 0x3D9BD70A, 0x3DA1999A, 0x3DA75C2A, 0x3DAD1EB8, 0x3DB2E148, 0x3DB8A3D7, 0x3DBE6667,
            0x3DC428F7, 0x3DC9EB85, 0x3DDB3334, 0x3DF80000, 0x3E0A6666, 0x3E18CCCD, 0x3E273333, 0x3E35999A, 0x3E440000,
            0x3E526666, 0x3E60CCCD, 0x3E6F3333, 0x3E7D9999, 0x3E860000, 0x3E8D3334, 0x3E946666, 0x3E9B999A, 0x3EA2CCCC,
            0x3EAA0000, 0x3EB13333, 0x3EB86666, 0x3EBF999A, 0x3EC6CCCC, 0x3ECE0000, 0x3ED53333, 0x3EDC6666, 0x3EE3999A,
            0x3EEACCCC, 0x3EF20000, 0x3EF93332, 0x3F003333, 0x3F03CCCC, 0x3F076666, 0x3F0B0000, 0x3F0E999A, 0x3F123334,
            0x3F15CCCD, 0x3F196666, 0x3F1D0000, 0x3F20999A, 0x3F243334, 0x3F27CCCD, 0x3F2B6666, 0x3F2F0000, 0x3F32999A,
            0x3F363334, 0x3F39CCCD, 0x3F3D6666, 0x3F410000, 0x3F44999A, 0x3F483333, 0x3F4BCCCD, 0x3F4F6666, 0x3F530000,
            0x3F56999A, 0x3F5A3333, 0x3F5DCCCD, 0x3F616666, 0x3F650000, 0x3F68999A, 0x3F6C3333, 0x3F6FCCCD, 0x3F736666,
            0x3F770000, 0x3F7A999A, 0x3F7E3333, 0x3F800000,
        };
        std::array<float, 256> values{};
        for (int i = 0; i < 256; ++i) values[i] = bits_to_float(bits[i]);
        return values;
    }();
    return map;
}

bool is_valid_nf4_blocksize(int64_t blocksize) {
    return blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
}

namespace ref {

uint8_t nf4_index(float normalized) {
    // Counting the midpoints strictly below the value is torch.bucketize(right=False): a value exactly on a
    // midpoint takes the lower code, NaN compares false everywhere and gets code 0.
    const auto& midpoints = nf4_midpoints();
    uint8_t index         = 0;
    for (float m : midpoints) index += normalized > m ? 1 : 0;
    return index;
}

void nf4_quantize(const float* x, int64_t n, int64_t blocksize, uint8_t* packed, float* absmax) {
    // bitsandbytes' reference backend: full blocks multiply by a correctly rounded reciprocal of absmax
    // (clamped to 1e-38 so an all-zero block maps to code 7), the partial tail block divides by its clamped
    // absmax, which is also what it stores.
    constexpr float kTiny = 1e-38f;
    const int64_t full    = n - n % blocksize;
    std::memset(packed, 0, static_cast<size_t>((n + 1) / 2));
    auto put = [&](int64_t i, uint8_t code) { packed[i / 2] |= (i % 2 == 0) ? static_cast<uint8_t>(code << 4) : code; };
    for (int64_t start = 0; start < n; start += blocksize) {
        const int64_t end = std::min(start + blocksize, n);
        float block_max   = 0.0f;
        for (int64_t i = start; i < end; ++i) block_max = std::max(block_max, std::fabs(x[i]));
        if (start < full) {
            absmax[start / blocksize] = block_max;
            const float inverse       = 1.0f / std::max(block_max, kTiny);
            for (int64_t i = start; i < end; ++i) {
                const float scaled = std::min(std::max(x[i] * inverse, -1.0f), 1.0f);
                put(i, nf4_index(scaled));
            }
        } else {
            const float clamped       = std::max(block_max, kTiny);
            absmax[start / blocksize] = clamped;
            for (int64_t i = start; i < end; ++i) {
                const float scaled = std::min(std::max(x[i] / clamped, -1.0f), 1.0f);
                put(i, nf4_index(scaled));
            }
        }
    }
    if (n % 2 == 1) put(n, nf4_index(0.0f));  // the padded element is 0.0 -> code 7
}

void nf4_dequantize(const uint8_t* packed, const float* absmax, int64_t n, int64_t blocksize, float* out) {
    const auto& code = nf4_code();
    for (int64_t i = 0; i < n; ++i) {
        const uint8_t byte   = packed[i / 2];
        const uint8_t nibble = (i % 2 == 0) ? static_cast<uint8_t>(byte >> 4) : static_cast<uint8_t>(byte & 0x0F);
        out[i]               = code[nibble] * absmax[i / blocksize];
    }
}

void quantize_blockwise_8bit(const float* x, int64_t n, const float* code, int64_t blocksize, uint8_t* q,
                             float* absmax) {
    static const std::vector<uint8_t> dynamic_lut = build_8bit_lut(dynamic_map().data());
    std::vector<uint8_t> custom_lut;
    const uint8_t* lut = dynamic_lut.data();
    if (std::memcmp(code, dynamic_map().data(), 256 * sizeof(float)) != 0) {
        custom_lut = build_8bit_lut(code);
        lut        = custom_lut.data();
    }
    for (int64_t start = 0, b = 0; start < n; start += blocksize, ++b) {
        const int64_t end = std::min(start + blocksize, n);
        float block_max   = 0.0f;
        for (int64_t i = start; i < end; ++i) {
            const float magnitude = std::fabs(x[i]);
            if (magnitude > block_max) block_max = magnitude;  // NaN never wins, as in bitsandbytes
        }
        absmax[b] = block_max;
        if (block_max == 0.0f) {
            std::memset(q + start, 0, static_cast<size_t>(end - start));
            continue;
        }
        const float inverse = 1.0f / block_max;
        for (int64_t i = start; i < end; ++i) q[i] = lut[lut_bin(x[i] * inverse)];
    }
}

void rebuild_absmax(const uint8_t* q, const float* absmax2, const float* code, float offset, int64_t n_blocks,
                    int64_t nested_blocksize, float* out) {
    for (int64_t b = 0; b < n_blocks; ++b) {
        const float scaled = code[q[b]] * absmax2[b / nested_blocksize];
        out[b]             = scaled + offset;
    }
}

}  // namespace ref
}  // namespace medllm::quant
