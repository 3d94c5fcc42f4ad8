// Weighted sampling without replacement (FREEDOM's degree-sensitive edge pruning).
#pragma once

#include <cstdint>
#include <vector>

namespace micro_fast {

// m distinct ids of [0, n), drawn one after another with probability proportional to the
// weights of those not yet drawn (the law of torch.multinomial(weights, m) without
// replacement), as the m smallest exponential keys -log(u_i) / w_i (Efraimidis and Spirakis).
// u_i is a counter-based hash of (seed, i): the draw depends on the seed only, not on the
// thread count. Zero weights are never drawn while positive ones remain. Returned ascending.
std::vector<int64_t> sample_edges(const double* weights, int64_t n, int64_t m, uint64_t seed,
                                  int num_threads);

}  // namespace micro_fast
