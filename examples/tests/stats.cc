#include "stats.h"

#include <algorithm>
#include <numeric>

namespace stats {
double mean(const std::vector<double>& xs) {
  if (xs.empty()) return 0;
  return std::accumulate(xs.begin(), xs.end(), 0.0) / xs.size();
}

double median(std::vector<double> xs) { return percentile(std::move(xs), 50); }

double percentile(std::vector<double> xs, double p) {
  if (xs.empty()) return 0;
  std::sort(xs.begin(), xs.end());
  double rank = p / 100 * (xs.size() - 1);
  auto below = static_cast<size_t>(rank);
  if (below + 1 >= xs.size()) return xs.back();
  return xs[below] + (rank - below) * (xs[below + 1] - xs[below]);
}
}  // namespace stats
