// Blocked top-k inner-product search with a fused tile kernel (see topk_tile.h).
#pragma once

#include <cstdint>
#include <string>

namespace micro_fast {

// For each of the m query rows, the k largest inner products with the n key rows, sorted
// descending, ties to the smaller key index. keys == nullptr means keys are the queries (n == m),
// in which case each off-diagonal tile of Q Q^T is computed once and serves both its rows and
// its columns. Rows with fewer than k admissible keys (after `exclude`) are padded with
// (-inf, -1). All arrays are C-contiguous; `exclude` (indptr[m + 1], indices) may be null.
template <typename T>
void topk_similarity(const T* queries, int64_t m, const T* keys, int64_t n, int64_t d, int k,
                     const int64_t* exclude_indptr, const int64_t* exclude_indices,
                     int64_t block_size, int num_threads, T* out_values, int64_t* out_indices);

}  // namespace micro_fast
