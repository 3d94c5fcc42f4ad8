// A linear projection of some rows of a matrix, and its gradients (the trainable raw features
// of MMRec's models: only the rows a batch uses are projected).
#pragma once

#include <cstdint>

namespace micro_fast {

// z[r] = x[rows[r]] W^T (+ bias): x [n, d], rows [m] distinct, in [0, n), w [f, d],
// bias [f] or null, z [m, f].
template <typename T>
void project_rows_forward(const T* x, int64_t n, int64_t d, const int64_t* rows, int64_t m,
                          const T* w, int64_t f, const T* bias, int num_threads, T* z);

// For g = dL/dz [m, f]: grad_x [n, d] (when not null) = g W at the rows `rows`, zero elsewhere;
// grad_w [f, d] (when not null) = g^T x[rows].
template <typename T>
void project_rows_backward(const T* x, int64_t n, int64_t d, const int64_t* rows, int64_t m,
                           const T* w, int64_t f, const T* g, int num_threads, T* grad_x,
                           T* grad_w);

}  // namespace micro_fast
