// Host launcher of the top-k inner-product search (defined in csrc/cuda/topk_similarity.cu,
// instantiated for float and double; called by csrc/cuda/bindings.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace micro_fast {
namespace cuda {

// For each of the m query rows, the k largest inner products with the n key rows, best first,
// ties to the smaller key index, rows with fewer than k admissible keys padded with (-inf, -1).
// keys == nullptr means keys are the queries (n is then taken as m). exclude_indptr [m + 1] /
// exclude_indices (int64, device) may be null. Scratch (device, caller-owned):
//   scratch: at least tile = min(block_rows, m) * min(chunk, n) elements of T; with
//            ceil(tile / 32) * 32 + tile or more (and more than one step), the products and
//            the selections of consecutive steps overlap on two streams (see the .cu file),
//   counts:  at least min(block_rows, m) int32.
// Everything is enqueued on `stream` of `device` (and a selection stream of the device that
// `stream` waits for before the launcher returns); nothing is synchronized on the host.
template <typename T>
void topk_similarity(const T* queries, int64_t m, const T* keys, int64_t n, int64_t d, int64_t k,
                     const int64_t* exclude_indptr, const int64_t* exclude_indices,
                     int64_t block_rows, int64_t chunk, T* scratch, int64_t scratch_elems,
                     int32_t* counts, int64_t counts_elems, T* out_values, int64_t* out_indices,
                     int device, cudaStream_t stream);

}  // namespace cuda
}  // namespace micro_fast
