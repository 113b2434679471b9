#include "stats.h"

#include <gtest/gtest.h>

TEST(Mean, OfNothingIsZero) { EXPECT_EQ(stats::mean({}), 0); }
TEST(Mean, OfOneIsIt) { EXPECT_EQ(stats::mean({4}), 4); }
TEST(Mean, OfSeveral) { EXPECT_DOUBLE_EQ(stats::mean({1, 2, 3, 4}), 2.5); }

TEST(Median, OddCount) { EXPECT_EQ(stats::median({5, 1, 3}), 3); }
TEST(Median, EvenCountTakesTheMiddlePair) { EXPECT_EQ(stats::median({4, 1, 3, 2}), 2.5); }

class Percentile : public testing::TestWithParam<std::pair<double, double>> {};
TEST_P(Percentile, InterpolatesBetweenRanks) {
  auto [p, want] = GetParam();
  EXPECT_DOUBLE_EQ(stats::percentile({10, 20, 30, 40, 50}, p), want);
}
INSTANTIATE_TEST_SUITE_P(Ranks, Percentile,
                         testing::Values(std::make_pair(0.0, 10.0), std::make_pair(25.0, 20.0),
                                         std::make_pair(90.0, 46.0), std::make_pair(100.0, 50.0)));

TEST(Percentile, NeedsASample) { GTEST_SKIP() << "an empty sample has no percentile to check"; }
