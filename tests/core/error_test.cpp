// The one-line form of error messages that main() prints.
#include <gtest/gtest.h>

#include "medllm/core/error.h"

namespace medllm {
namespace {

TEST(OneLine, JoinsLinesAndDropsTrailingBlanks) {
    EXPECT_EQ(one_line("plain message"), "plain message");
    EXPECT_EQ(one_line("first\nsecond\n\n"), "first; second");
    // LibTorch's what_without_backtrace(): the check's text and a location line
    EXPECT_EQ(one_line("Expected a.dim() == 2 to be true, but got false.\n  (Could this error message be improved?)\n"),
              "Expected a.dim() == 2 to be true, but got false.; (Could this error message be improved?)");
    EXPECT_EQ(one_line("a \r\nb"), "a; b");
    EXPECT_EQ(one_line("\nleading"), "leading");
    EXPECT_EQ(one_line(""), "");
}

}  // namespace
}  // namespace medllm
