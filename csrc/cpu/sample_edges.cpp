#include "cpu/sample_edges.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace micro_fast {

namespace {

// SplitMix64: a bijective 64-bit mixer, so distinct (seed, i) give independent-looking words.
inline uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<int64_t> sample_edges(const double* weights, int64_t n, int64_t m, uint64_t seed,
                                  int num_threads) {
  std::vector<double> keys(static_cast<size_t>(n));
  const uint64_t base = mix(seed);
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t i = 0; i < n; ++i) {
    // u in (0, 1): 53 random bits, offset by half a step so that log(u) is finite
    const double u = (static_cast<double>(mix(base ^ mix(static_cast<uint64_t>(i))) >> 11) + 0.5)
                     * 0x1.0p-53;
    const double w = weights[i];
    keys[static_cast<size_t>(i)] =
        w > 0 ? -std::log(u) / w : std::numeric_limits<double>::infinity();
  }
  std::vector<int64_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), int64_t{0});
  // ties (two equal keys, or infinite ones) go to the smaller id: the result is a function of
  // the seed alone
  auto before = [&](int64_t a, int64_t b) {
    const double ka = keys[static_cast<size_t>(a)], kb = keys[static_cast<size_t>(b)];
    return ka < kb || (ka == kb && a < b);
  };
  if (m < n) std::nth_element(ids.begin(), ids.begin() + m, ids.end(), before);
  ids.resize(static_cast<size_t>(m));
  std::sort(ids.begin(), ids.end());
  return ids;
}

}  // namespace micro_fast
