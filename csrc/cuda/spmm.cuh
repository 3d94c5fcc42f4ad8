// Host launchers of the CSR products and the CSR transpose (defined in csrc/cuda/spmm.cu; the
// products are instantiated for float and double; called by csrc/cuda/bindings.cu).
//
// A CSR matrix is indptr [m + 1] (int64, non-decreasing, from 0 to nnz) and indices [nnz]
// (int64 columns in range). The kernels trust the structure (micro_fast.CSRGraph validates it);
// every pointer is a device address and everything is enqueued on `stream` of `device`, nothing
// is synchronized.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace micro_fast {
namespace cuda {

// y [m, d] = A x for A = (indptr, indices, values [nnz]) and x [n, d] (row-major, contiguous).
// y is fully written (rows without entries are 0). Each output element sums its row's entries in
// CSR order in one thread (fp32 for float), so the result is deterministic.
template <typename T>
void spmm(const int64_t* indptr, const int64_t* indices, const T* values, int64_t m, int64_t nnz,
          const T* x, int64_t d, T* y, int device, cudaStream_t stream);

// out [nnz]: out[e] = <a[row(e)], b[indices[e]]> for a [m, d], b [n, d] (row-major, contiguous).
// Deterministic (fixed reduction order; fp32 for float).
template <typename T>
void sddmm(const int64_t* indptr, const int64_t* indices, int64_t m, int64_t nnz, const T* a,
           const T* b, int64_t d, T* out, int device, cudaStream_t stream);

// int64 scratch elements csr_transpose needs for nnz entries (host arithmetic only).
int64_t csr_transpose_scratch_elems(int64_t nnz, int64_t n_cols);

// The transpose's structure: t_indptr [n_cols + 1], t_indices [nnz] (the source rows, ascending
// within each column) and perm [nnz] with t_values = values[perm]. A stable LSD radix sort of
// the entries by column (8-bit digits, only the bits n_cols - 1 needs), so entries of one column
// keep their CSR (row) order; deterministic. scratch: csr_transpose_scratch_elems(nnz, n_cols)
// int64 elements.
void csr_transpose(const int64_t* indptr, const int64_t* indices, int64_t m, int64_t nnz,
                   int64_t n_cols, int64_t* scratch, int64_t scratch_elems, int64_t* t_indptr,
                   int64_t* t_indices, int64_t* perm, int device, cudaStream_t stream);

}  // namespace cuda
}  // namespace micro_fast
