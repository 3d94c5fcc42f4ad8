// Contrastive loss of M views against their fused view, from the Gram blocks of the views.
#pragma once

#include <cstdint>

#include "cpu/contrastive.h"

namespace micro_fast {

// u: [m, n, d] L2-normalized views u_q; coef: [n, m] with the normalized fused view
//   f_j = sum_k coef[j, k] u_k[j].
// With P^{qk} = u_q u_k^T and S^q_ij = <u_q[i], f_j> = sum_k coef[j, k] P^{qk}_ij:
//   lse[q, i] = log(sum_{j != i} exp(P^{qq}_ij / tau) + sum_j exp(S^q_ij / tau))
// i.e. the lse1 of contrastive_forward(u_q, f) for every view q, computed from the m^2 Gram
// blocks alone: the Gram matrix of the stacked views is symmetric, so each unordered pair of
// row blocks is multiplied once, and f is never an operand. Needs tau >= kFixedShiftTau.
// `shard`: this process's every count-th block pair (see Shard).
template <typename T>
void contrastive_fusion_forward(const T* u, const T* coef, int64_t m, int64_t n, int64_t d,
                                double tau, int64_t block_size, int num_threads, T* lse,
                                Shard shard = {});

// Gradients of L = sum_{q,i} g[q, i] lse[q, i] w.r.t. u ([m, n, d]) and coef ([n, m]).
template <typename T>
void contrastive_fusion_backward(const T* u, const T* coef, int64_t m, int64_t n, int64_t d,
                                 double tau, const T* lse, const T* g, int64_t block_size,
                                 int num_threads, T* grad_u, T* grad_coef, Shard shard = {});

}  // namespace micro_fast
