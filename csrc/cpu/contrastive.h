// Blockwise all-pairs contrastive (InfoNCE) statistics and gradients, never N x N in memory.
#pragma once

#include <algorithm>
#include <cstdint>

namespace micro_fast {

// For tau >= kFixedShiftTau every term exp((s - 1) / tau), s in [-1, 1], is a normal float, so
// all sums can share the shift 1/tau (the largest possible score): one exp per entry serves the
// row and the column sums alike, and no maxima are needed. Smaller tau takes the running-max path.
constexpr double kFixedShiftTau = 0.05;

// A split of the tile work over cooperating processes (torch.distributed ranks): shard `index`
// of `count` visits every count-th task of the fixed task order, so the shards' partial row sums
// (and gradients) add up to the whole. A row no task of the shard touches gets lse = -inf.
struct Shard {
  int64_t index = 0, count = 1;
  bool owns(int64_t task) const { return task % count == index; }
};

// Raises for a shard index outside [0, count).
void check_shard(Shard shard);

// Threads worth starting for n x n x d work: one for small problems, where a team costs more
// than it saves.
inline int contrastive_team(int num_threads, int64_t n, int64_t d) {
  return double(n) * double(n) * double(d) < double(1 << 22) ? 1 : std::max(1, num_threads);
}

// n1, n2: [n, d] L2-normalized rows. With s11 = n1 n1^T, s12 = n1 n2^T, s22 = n2 n2^T:
//   lse1[i] = log(sum_{j != i} exp(s11_ij / tau) + sum_j exp(s12_ij / tau))
//   lse2[j] = log(sum_{i != j} exp(s22_ij / tau) + sum_i exp(s12_ij / tau))   (symmetric only)
// computed with running maxima (log-sum-exp), so any tau > 0 is safe.
template <typename T>
void contrastive_forward(const T* n1, const T* n2, int64_t n, int64_t d, double tau,
                         bool symmetric, int64_t block_size, int num_threads, T* lse1, T* lse2,
                         Shard shard = {});

// Gradients of L = sum_i g1[i] lse1[i] (+ sum_j g2[j] lse2[j]) w.r.t. n1 and n2, written to
// grad1, grad2 [n, d]. lse2/g2 are null unless symmetric.
template <typename T>
void contrastive_backward(const T* n1, const T* n2, int64_t n, int64_t d, double tau,
                          const T* lse1, const T* lse2, const T* g1, const T* g2,
                          int64_t block_size, int num_threads, T* grad1, T* grad2,
                          Shard shard = {});

}  // namespace micro_fast
