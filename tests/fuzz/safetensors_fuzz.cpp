// libFuzzer target for the safetensors header parser: any byte string is treated as a whole file. The parser must
// either accept it (and then every tensor range lies inside the buffer) or throw medllm::Error; anything else
// (a crash, a sanitizer report, another exception type, a hang) is a bug.
#include <cstdint>
#include <cstdlib>

#include "medllm/core/error.h"
#include "medllm/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const medllm::io::Header header = medllm::io::parse_header(data, size, "fuzz.safetensors");
        for (const auto& t : header.tensors) {
            if (header.data_start + t.end > size || t.end < t.begin) std::abort();
            if (t.nbytes() != t.numel() * medllm::io::dtype_size(t.dtype)) std::abort();
            if (header.find(t.name) != &t) std::abort();
        }
    } catch (const medllm::Error&) {
    }
    return 0;
}
