// Host launchers of the CSR products and the CSR transpose (defined in csrc/cuda/spmm.cu; the
// products are instantiated for float and double; called by csrc/cuda/bindings.cu).
//
// A CSR matrix is indptr [m + 1] (int64, non-decreasing, from 0 to nnz) and indices [nnz]
// (int64 columns in range); the products see its rows through a CsrPartition derived from
// indptr. The kernels trust the structure and the partition (micro_fast.CSRGraph validates the
// one, builds and caches the other); every pointer is a device address and everything is
// enqueued on `stream` of `device`, nothing is synchronized.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace micro_fast {
namespace cuda {

// A work partition of a CSR structure (built by micro_fast.backends.cuda.csr_partition, in torch,
// once per structure; see there for the definition). Segments tile the entries [0, nnz) in CSR
// order: segment k is entries [seg_bounds[k], seg_bounds[k + 1]) of row seg_row[k], at most S
// of them; every row has >= 1 segment (an empty row one empty segment), a row longer than S is
// cut into ceil(len / S). Trailing padding segments (seg_row = m, empty) make the counts static.
// A segment of a split row writes its partial sum to partials slot seg_slot[k] (-1: the row's
// only segment, written to y directly); split row s (split_row[s] = m for padding) owns the slots
// [split_slots[s], split_slots[s + 1]), in segment order. All int64.
struct CsrPartition {
  const int64_t* seg_row = nullptr;      // [segments]
  const int64_t* seg_bounds = nullptr;   // [segments + 1]
  const int64_t* seg_slot = nullptr;     // [segments] (spmm only)
  int64_t segments = 0;
  const int64_t* split_row = nullptr;    // [splits] (spmm only)
  const int64_t* split_slots = nullptr;  // [splits + 1] (spmm only)
  int64_t splits = 0;
};

// y [m, d] = A x for A = (indices, values [nnz]) partitioned by `part`, x [n, d] (row-major,
// contiguous). y is fully written (rows without entries are 0). partials: scratch of
// partial_rows >= the largest slot + 1 rows of d (unused when part.splits == 0). Each segment's
// partial is summed in CSR order by one thread, the partials of a split row in segment order by
// one thread (fp32 for float): deterministic, and a row of at most S entries is summed exactly as
// one CSR-order sum.
template <typename T>
void spmm(const CsrPartition& part, const int64_t* indices, const T* values, int64_t m,
          int64_t nnz, const T* x, int64_t d, T* partials, int64_t partial_rows, T* y,
          int device, cudaStream_t stream);

// out [nnz]: out[e] = <a[row(e)], b[indices[e]]> for a [m, d], b [n, d] (row-major, contiguous),
// with the entries' rows taken from `part` (seg_row, seg_bounds). Deterministic (fixed reduction
// order; fp32 for float).
template <typename T>
void sddmm(const CsrPartition& part, const int64_t* indices, int64_t m, int64_t nnz, const T* a,
           const T* b, int64_t d, T* out, int device, cudaStream_t stream);

}  // namespace cuda
}  // namespace micro_fast
