// Host launchers of the fused all-pairs contrastive loss (defined, with the formulation, in
// csrc/cuda/contrastive.cu, instantiated for float and double; called by csrc/cuda/bindings.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace micro_fast {
namespace cuda {

// Forward: lse1 (and lse2 when lse2 != nullptr) of the n x d inputs n1, n2 (rows L2-normalized by
// the caller), tau > 0. Scratch (device, caller-owned): at least 2 * min(block_rows, n) * splits
// elements of T; `splits` column splits per row tile (clamped to the number of column tiles and
// 65535). Everything is enqueued on `stream` of `device`; nothing is synchronized.
template <typename T>
void contrastive_forward(const T* n1, const T* n2, int64_t n, int64_t d, double tau,
                         int64_t block_rows, int64_t splits, T* scratch, int64_t scratch_elems,
                         T* lse1, T* lse2, int device, cudaStream_t stream);

// Backward: grad1, grad2 [n, d] (fully overwritten) of sum_i g1_i lse1_i (+ sum_j g2_j lse2_j
// when lse2 / g2 are given). Scratch: [weights | partials]: at least rows * cols elements
// (rows = min(block_rows, n), cols = min(chunk, n)) for the weight tiles; any elements beyond
// them, from the first 16-byte aligned one, hold the split-K partials of the gradient products
// (a split product of out_rows output rows needs splits * out_rows * d of them; with too few,
// or none, the products run with fewer or no splits: same result up to rounding).
template <typename T>
void contrastive_backward(const T* n1, const T* n2, int64_t n, int64_t d, double tau,
                          const T* lse1, const T* lse2, const T* g1, const T* g2,
                          int64_t block_rows, int64_t chunk, T* scratch, int64_t scratch_elems,
                          T* grad1, T* grad2, int device, cudaStream_t stream);

}  // namespace cuda
}  // namespace micro_fast
