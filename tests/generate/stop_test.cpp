// Stop strings: matches across token boundaries and partial matches held back until decided.
#include <gtest/gtest.h>

#include "medllm/generate/stop.h"

using medllm::generate::StopStringMatcher;

TEST(StopStrings, FoundAcrossPiecesAndCutFromTheText) {
    StopStringMatcher m({"\n\n問題", "###"});
    std::string streamed;
    for (const char* piece : {"答え: a", "\n", "\n", "問", "題 2"}) {
        bool stopped = m.feed(piece);
        streamed += m.take_safe();
        if (stopped) break;
    }
    ASSERT_TRUE(m.stopped());
    EXPECT_EQ(*m.matched(), "\n\n問題");
    EXPECT_EQ(m.text(), "答え: a");
    streamed += m.take_rest();
    EXPECT_EQ(streamed, "答え: a");  // the held-back "\n\n問" never leaked out
}

TEST(StopStrings, HoldsBackOnlyWhatCouldStartAStop) {
    StopStringMatcher m({"END"});
    m.feed("abc E");
    EXPECT_EQ(m.take_safe(), "abc ");  // "E" may begin "END"
    m.feed("X");
    EXPECT_EQ(m.take_safe(), "EX");  // it did not
    m.feed("EN");
    EXPECT_EQ(m.take_safe(), "");
    EXPECT_FALSE(m.stopped());
    EXPECT_EQ(m.take_rest(), "EN");  // sequence ended without the stop: the held text is output after all
    EXPECT_EQ(m.text(), "abc EXEN");
}

TEST(StopStrings, EarliestMatchWinsAndLaterTextIsIgnored) {
    StopStringMatcher m({"cd", "bcdef"});
    EXPECT_TRUE(m.feed("abcdefg"));
    EXPECT_EQ(*m.matched(), "bcdef");  // starts at 1, before "cd" at 2
    EXPECT_EQ(m.text(), "a");
    EXPECT_TRUE(m.feed("more"));
    EXPECT_EQ(m.text(), "a");
}

TEST(StopStrings, StopAtTheVeryStartGivesEmptyText) {
    StopStringMatcher m({"x"});
    EXPECT_TRUE(m.feed("xyz"));
    EXPECT_EQ(m.text(), "");
    EXPECT_EQ(m.take_rest(), "");
}

TEST(StopStrings, NoStopsPassEverythingThrough) {
    StopStringMatcher m({});
    EXPECT_FALSE(m.feed("a"));
    EXPECT_FALSE(m.feed("b"));
    EXPECT_EQ(m.take_safe(), "ab");
}
