// CSR sparse x dense products.
#pragma once

#include <cstdint>

namespace micro_fast {

// y [m, d] = A x with A in CSR (indptr [m + 1], indices, values), x [n, d].
template <typename T>
void spmm(const int64_t* indptr, const int64_t* indices, const T* values, int64_t m, const T* x,
          int64_t d, T* y, int num_threads);

// out[e] = <a[row(e)], b[indices[e]]> for every stored entry: the gradient of spmm w.r.t. values.
template <typename T>
void sddmm(const int64_t* indptr, const int64_t* indices, int64_t m, const T* a, const T* b,
           int64_t d, T* out, int num_threads);

}  // namespace micro_fast
