// The error types every command throws and the exit codes the CLI maps them to.
#include "medllm/core/error.h"

namespace medllm {

std::string one_line(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
    std::string out;
    for (char c : text) {
        if (c == '\n') {
            while (!out.empty() && (out.back() == ' ' || out.back() == '\r')) out.pop_back();
            if (!out.empty()) out += "; ";
        } else if (!(c == ' ' && !out.empty() && out.back() == ' ' && out.size() >= 2 && out[out.size() - 2] == ';')) {
            out += c;
        }
    }
    return out;
}

}  // namespace medllm
