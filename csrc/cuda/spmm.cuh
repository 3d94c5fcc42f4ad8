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

}  // namespace cuda
}  // namespace micro_fast
