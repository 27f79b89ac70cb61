// safetensors dtype table and the strict header parser (pure in-memory: the fuzz target calls it directly).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <set>

#include "medllm/core/error.h"
#include "medllm/io/safetensors.h"
#include "safetensors_util.h"

namespace medllm::io {

namespace {

struct DTypeRow {
    DType dtype;
    const char* name;
    size_t size;
    at::ScalarType scalar;
};

constexpr std::array<DTypeRow, 15> kDTypes{{
    {DType::BOOL, "BOOL", 1, at::kBool},
    {DType::U8, "U8", 1, at::kByte},
    {DType::I8, "I8", 1, at::kChar},
    {DType::I16, "I16", 2, at::kShort},
    {DType::U16, "U16", 2, at::kUInt16},
    {DType::I32, "I32", 4, at::kInt},
    {DType::U32, "U32", 4, at::kUInt32},
    {DType::I64, "I64", 8, at::kLong},
    {DType::U64, "U64", 8, at::kUInt64},
    {DType::F16, "F16", 2, at::kHalf},
    {DType::BF16, "BF16", 2, at::kBFloat16},
    {DType::F32, "F32", 4, at::kFloat},
    {DType::F64, "F64", 8, at::kDouble},
    {DType::F8_E4M3, "F8_E4M3", 1, at::kFloat8_e4m3fn},
    {DType::F8_E5M2, "F8_E5M2", 1, at::kFloat8_e5m2},
}};

const DTypeRow& row(DType dtype) {
    for (const auto& r : kDTypes)
        if (r.dtype == dtype) return r;
    throw Error("safetensors: unknown dtype enum value " + std::to_string(static_cast<int>(dtype)));
}

[[noreturn]] void fail(const std::string& source, const std::string& what) {
    throw Error(source + ": " + what);
}

[[noreturn]] void fail_tensor(const std::string& source, const std::string& name, const std::string& what) {
    throw Error(source + ": tensor " + quoted_name(name) + ": " + what);
}

bool read_u64(const nlohmann::json& value, uint64_t& out) {
    if (value.is_number_unsigned()) {
        out = value.get<uint64_t>();
        return true;
    }
    if (value.is_number_integer()) {
        const auto v = value.get<int64_t>();
        if (v < 0) return false;
        out = static_cast<uint64_t>(v);
        return true;
    }
    return false;
}

}  // namespace

std::string quoted_name(std::string_view name) {
    // Names come from the file: keep error messages on one line and bounded.
    std::string out = "'";
    size_t shown    = 0;
    for (unsigned char c : name) {
        if (++shown > 200) {
            out += "...";
            break;
        }
        if (c < 0x20 || c == 0x7f || c == '\'' || c == '\\') {
            static const char* hex = "0123456789abcdef";
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
        } else {
            out += static_cast<char>(c);
        }
    }
    return out + "'";
}

std::string_view dtype_name(DType dtype) {
    return row(dtype).name;
}

std::optional<DType> dtype_from_name(std::string_view name) {
    for (const auto& r : kDTypes)
        if (name == r.name) return r.dtype;
    return std::nullopt;
}

size_t dtype_size(DType dtype) {
    return row(dtype).size;
}

at::ScalarType to_scalar_type(DType dtype) {
    return row(dtype).scalar;
}

DType from_scalar_type(at::ScalarType type) {
    for (const auto& r : kDTypes)
        if (r.scalar == type) return r.dtype;
    throw Error(std::string("safetensors: LibTorch dtype ") + c10::toString(type) + " has no safetensors equivalent");
}

uint64_t TensorInfo::numel() const {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);  // validated against overflow when parsed
    return n;
}

const TensorInfo* Header::find(std::string_view name) const {
    auto it = index_.find(std::string(name));
    return it == index_.end() ? nullptr : &tensors[it->second];
}

Header parse_header(const uint8_t* file, size_t file_size, const std::string& source) {
    if (file_size < 8)
        fail(source, "file is " + std::to_string(file_size) + " bytes, too short for the 8-byte header length");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | file[i];  // little-endian on any host
    if (n > kMaxHeaderBytes)
        fail(source, "header length " + std::to_string(n) + " exceeds the " + std::to_string(kMaxHeaderBytes) +
                         "-byte limit (corrupt or not a safetensors file)");
    if (n > file_size - 8)
        fail(source, "header length " + std::to_string(n) + " runs past the end of the file (" +
                         std::to_string(file_size) + " bytes; truncated?)");
    if (n < 2 || file[8] != '{') fail(source, "header does not start with '{' (not a safetensors file?)");

    const char* text = reinterpret_cast<const char*>(file + 8);
    // Aborts the parse at once on deep nesting (a header is at most 3 levels deep, so a hostile `[[[[...` costs
    // nothing) and on duplicate keys (nlohmann would silently keep the last; a repeated tensor name is corrupt).
    struct ShapeError {
        std::string what;
    };
    std::vector<std::set<std::string>> keys_per_object;
    nlohmann::json::parser_callback_t callback = [&keys_per_object](int depth, nlohmann::json::parse_event_t event,
                                                                    nlohmann::json& parsed) {
        using E = nlohmann::json::parse_event_t;
        if (event == E::object_start || event == E::array_start) {
            if (depth >= 3) throw ShapeError{"header JSON nests deeper than a safetensors header can"};
            if (event == E::object_start) keys_per_object.emplace_back();
        } else if (event == E::object_end) {
            if (!keys_per_object.empty()) keys_per_object.pop_back();
        } else if (event == E::key && !keys_per_object.empty()) {
            const auto& key = parsed.get_ref<const std::string&>();
            if (!keys_per_object.back().insert(key).second)
                throw ShapeError{"duplicate key " + quoted_name(key) + " in header JSON"};
        }
        return true;
    };
    nlohmann::json root;
    try {
        root = nlohmann::json::parse(text, text + n, callback, /*allow_exceptions=*/true);
    } catch (const ShapeError& e) {
        fail(source, e.what);
    } catch (const nlohmann::json::exception& e) {
        fail(source, std::string("header is not valid JSON: ") + e.what());
    }
    if (!root.is_object()) fail(source, "header JSON is not an object");

    Header header;
    header.header_bytes      = n;
    header.data_start        = 8 + n;
    const uint64_t data_size = file_size - 8 - n;

    for (auto it = root.begin(); it != root.end(); ++it) {
        const std::string& name     = it.key();
        const nlohmann::json& value = it.value();
        if (name == "__metadata__") {
            if (!value.is_object()) fail(source, "__metadata__ is not an object of strings");
            for (auto m = value.begin(); m != value.end(); ++m) {
                if (!m.value().is_string())
                    fail(source, "__metadata__ value of key " + quoted_name(m.key()) + " is not a string");
                header.metadata[m.key()] = m.value().get<std::string>();
            }
            continue;
        }
        if (!value.is_object()) fail_tensor(source, name, "entry is not an object");
        for (auto f = value.begin(); f != value.end(); ++f)
            if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
                fail_tensor(source, name, "unexpected field " + quoted_name(f.key()));

        TensorInfo info;
        info.name     = name;
        auto dtype_it = value.find("dtype");
        if (dtype_it == value.end() || !dtype_it->is_string()) fail_tensor(source, name, "missing string 'dtype'");
        const auto dtype = dtype_from_name(dtype_it->get_ref<const std::string&>());
        if (!dtype) fail_tensor(source, name, "unsupported dtype " + quoted_name(dtype_it->get<std::string>()));
        info.dtype = *dtype;

        auto shape_it = value.find("shape");
        if (shape_it == value.end() || !shape_it->is_array()) fail_tensor(source, name, "missing array 'shape'");
        uint64_t numel = 1;
        for (const auto& dim : *shape_it) {
            uint64_t d = 0;
            if (!read_u64(dim, d) || d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
                fail_tensor(source, name, "shape has an entry that is not a non-negative integer");
            if (__builtin_mul_overflow(numel, d, &numel)) fail_tensor(source, name, "shape overflows 64 bits");
            info.shape.push_back(static_cast<int64_t>(d));
        }
        uint64_t nbytes = 0;
        if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(info.dtype)), &nbytes))
            fail_tensor(source, name, "shape x dtype size overflows 64 bits");

        auto offsets_it = value.find("data_offsets");
        if (offsets_it == value.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
            !read_u64((*offsets_it)[0], info.begin) || !read_u64((*offsets_it)[1], info.end))
            fail_tensor(source, name, "'data_offsets' is not a pair of non-negative integers");
        if (info.end < info.begin)
            fail_tensor(
                source, name,
                "data_offsets end " + std::to_string(info.end) + " is before begin " + std::to_string(info.begin));
        if (info.end > data_size)
            fail_tensor(source, name,
                        "data_offsets [" + std::to_string(info.begin) + ", " + std::to_string(info.end) +
                            ") run past the data buffer (" + std::to_string(data_size) + " bytes; truncated file?)");
        if (info.end - info.begin != nbytes)
            fail_tensor(source, name,
                        "byte range holds " + std::to_string(info.end - info.begin) + " bytes but " +
                            std::string(dtype_name(info.dtype)) + " shape needs " + std::to_string(nbytes));
        header.tensors.push_back(std::move(info));
    }

    // The byte ranges must tile the data buffer exactly, as the reference validator requires.
    std::sort(header.tensors.begin(), header.tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
        return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
    });
    uint64_t cursor            = 0;
    const TensorInfo* previous = nullptr;
    for (const auto& t : header.tensors) {
        if (t.begin < cursor)
            fail_tensor(source, t.name,
                        "byte range [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + ") overlaps tensor " +
                            quoted_name(previous->name));
        if (t.begin > cursor)
            fail_tensor(source, t.name, "gap of " + std::to_string(t.begin - cursor) + " unused bytes before it");
        cursor   = t.end;
        previous = &t;
    }
    if (cursor != data_size)
        fail(source,
             std::to_string(data_size - cursor) + " bytes after the last tensor are not described by the header");

    for (size_t i = 0; i < header.tensors.size(); ++i) header.index_.emplace(header.tensors[i].name, i);
    return header;
}

}  // namespace medllm::io
