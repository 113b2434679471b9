// Summary statistics of a sample: what the tests in stats_test.cc check.
#pragma once
#include <vector>

namespace stats {
// The arithmetic mean; 0 for an empty sample.
double mean(const std::vector<double>& xs);
// The median (the mean of the two middle values for an even count); 0 for an empty sample.
double median(std::vector<double> xs);
// The p-th percentile (0 <= p <= 100) by linear interpolation between closest ranks.
double percentile(std::vector<double> xs, double p);
}  // namespace stats
