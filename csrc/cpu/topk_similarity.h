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
//
// With num_shards > 1 only every num_shards-th block pair (from `shard`) is searched, and each
// row gets the top k of its candidates in those pairs: the lists of all shards, merged by the
// same order, are the full result. Processes sharing a search this way keep the symmetric
// saving (each pair of Q Q^T is still computed once, by one shard).
template <typename T>
void topk_similarity(const T* queries, int64_t m, const T* keys, int64_t n, int64_t d, int k,
                     const int64_t* exclude_indptr, const int64_t* exclude_indices,
                     int64_t block_size, int num_threads, T* out_values, int64_t* out_indices,
                     int64_t shard = 0, int64_t num_shards = 1);

}  // namespace micro_fast
