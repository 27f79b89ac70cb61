// Checkpoint-vs-config validation shared by every command that reads a checkpoint (see checkpoint_check.h).
#include "medllm/model/checkpoint_check.h"

#include <sstream>

#include <c10/core/ScalarType.h>

#include "medllm/core/error.h"
#include "medllm/model/memory.h"

namespace medllm::model {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_text(const std::vector<int64_t>& shape) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? "," : "") << shape[i];
    s << "]";
    return s.str();
}

// bitsandbytes NF4: "<weight>" holds the packed codes, its statistics sit beside it under these suffixes (the
// same names quant/nf4_serialize.h writes; model/ cannot depend on quant/).
const std::string kNf4State      = ".quant_state.bitsandbytes__nf4";
const char* const kNf4Required[] = {".absmax", ".quant_map"};
const char* const kNf4Optional[] = {".nested_absmax", ".nested_quant_map"};

}  // namespace

std::string CheckpointCheck::summary() const {
    if (problems.empty()) return "";
    return std::to_string(problems.size()) + " problem(s), first: " + problems.front();
}

CheckpointCheck check_checkpoint(const io::CheckpointReader& reader, const Qwen2Config& config) {
    std::map<std::string, std::vector<int64_t>> expected;
    for (auto& [name, shape] : expected_tensors(config)) expected.emplace(name, shape);
    const std::vector<int64_t> lm_head_shape = {config.vocab_size, config.hidden_size};

    CheckpointCheck check;
    auto& problems     = check.problems;
    const auto names   = reader.names();
    auto is_nf4_weight = [&](const std::string& name) {
        return expected.count(name) > 0 && reader.contains(name + kNf4State);
    };
    std::map<std::string, bool> found;  // expected name -> seen
    for (const auto& name : names) {
        const io::TensorInfo& info = reader.info(name);
        check.dtype_bytes[std::string(io::dtype_name(info.dtype))] += info.nbytes();

        // A statistic of an NF4 weight: "<weight><suffix>" where <weight> is an expected NF4 weight.
        bool is_statistic = false;
        for (const std::string& suffix : {kNf4State, std::string(kNf4Required[0]), std::string(kNf4Required[1]),
                                          std::string(kNf4Optional[0]), std::string(kNf4Optional[1])}) {
            if (ends_with(name, suffix) && is_nf4_weight(name.substr(0, name.size() - suffix.size())))
                is_statistic = true;
        }
        if (is_statistic) continue;

        auto it = expected.find(name);
        if (it == expected.end()) {
            if (ends_with(name, ".rotary_emb.inv_freq")) continue;  // old checkpoints; recomputed, never loaded
            if (name == "lm_head.weight" && config.tie_word_embeddings) {
                if (info.shape != lm_head_shape)
                    problems.push_back("tensor 'lm_head.weight' has shape " + shape_text(info.shape) +
                                       ", config implies " + shape_text(lm_head_shape));
                continue;  // tied: the embeddings are used, as transformers does
            }
            problems.push_back("unexpected tensor '" + name + "' (not a parameter of this Qwen2 config)");
            continue;
        }
        found[name]         = true;
        const auto& shape   = it->second;
        const int64_t numel = [&] {
            int64_t n = 1;
            for (int64_t d : shape) n *= d;
            return n;
        }();
        check.parameters += static_cast<uint64_t>(numel);
        if (is_nf4_weight(name)) {
            ++check.nf4_weights;
            if (info.dtype != io::DType::U8 || info.shape != std::vector<int64_t>{(numel + 1) / 2, 1})
                problems.push_back("4-bit tensor '" + name + "' is " + std::string(io::dtype_name(info.dtype)) + " " +
                                   shape_text(info.shape) + ", not " + std::to_string(numel) +
                                   " packed NF4 values (U8 [" + std::to_string((numel + 1) / 2) + ",1])");
            for (const char* suffix : kNf4Required) {
                if (!reader.contains(name + suffix))
                    problems.push_back("4-bit tensor '" + name + "' has no '" + name + suffix + "'");
            }
            continue;
        }
        if (info.shape != shape) {
            problems.push_back("tensor '" + name + "' has shape " + shape_text(info.shape) + ", config implies " +
                               shape_text(shape));
        } else if (!at::isFloatingType(io::to_scalar_type(info.dtype))) {
            problems.push_back("tensor '" + name + "' has dtype " + std::string(io::dtype_name(info.dtype)) +
                               ", expected a floating-point type");
        }
    }
    for (const auto& [name, shape] : expected) {
        if (!found.count(name)) problems.push_back("missing tensor '" + name + "'");
    }
    return check;
}

void validate_checkpoint(const io::CheckpointReader& reader, const Qwen2Config& config, const std::string& where) {
    const CheckpointCheck check = check_checkpoint(reader, config);
    if (!check.ok()) throw Error(where + ": checkpoint does not match " + config.source + ": " + check.summary());
}

}  // namespace medllm::model
