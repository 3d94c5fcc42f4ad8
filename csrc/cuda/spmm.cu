// CSR products on the GPU (the contract is in csrc/cuda/spmm.cuh). The transpose a backward
// needs is built once per structure by CSRGraph, with a stable torch sort.
//
// spmm (y = A x) and sddmm (out[e] = <a[row(e)], b[col(e)]>) give each row a group of G lanes of
// one warp, G a power of two <= 32 chosen from the row width d: the lanes of a group split the
// features, in packs of V consecutive elements (V = 4 floats / 2 doubles when d and the pointers
// allow, so rows are read with 16-byte loads), and a warp runs 32 / G rows at once so narrow
// features (d = 1, 3, 16, ...) do not leave most lanes idle.
//
//   spmm_kernel   each lane accumulates its packs (NV of them per pass over the row's entries,
//                 NV > 1 only for wide rows) over the row's entries in CSR order, four entries
//                 per step for memory-level parallelism; no shuffles and no atomics, so every
//                 output element is summed in CSR order by one thread (fp32 for float):
//                 deterministic.
//   sddmm_kernel  per entry, each lane takes the partial dot product of its packs, then a
//                 butterfly over the group's lanes completes it (fixed order: deterministic).
//                 The loop over a warp's entries runs the longest row's count on every lane,
//                 because the shuffles span the whole warp.
//
// All offsets and loop counters that can exceed 2^31 are int64.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/spmm.cuh"

namespace micro_fast {
namespace cuda {
namespace {

constexpr int kThreads = 256;              // threads per block of the product kernels
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kUnroll = 4;                 // entries per step of the product loops

// V consecutive elements, aligned to their size, so a copy is one vector load / store.
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

__device__ __forceinline__ float mad(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double mad(double a, double b, double c) { return __fma_rn(a, b, c); }

// Blocks for `items` work items at `per_block` per block, capped at the grid's x limit (the
// kernels loop over the rest).
unsigned grid_for(int64_t items, int64_t per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, INT_MAX)));
}

bool aligned(const void* p, std::uintptr_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}

// Widest pack (elements) that d and both row pointers allow: 16-byte loads where possible.
template <typename T>
int pack_width(int64_t d, const void* p, const void* q) {
  constexpr int widest = 16 / static_cast<int>(sizeof(T));
  for (int v = widest; v > 1; v /= 2)
    if (d % v == 0 && aligned(p, sizeof(T) * v) && aligned(q, sizeof(T) * v)) return v;
  return 1;
}

// Calls launch(std::integral_constant<int, V>{}) with V = pack_width<T>(d, p, q), so each width
// is a compile-time template argument of the kernel (float packs 4, 2 or 1; double 2 or 1).
template <typename T, class Launch>
void with_pack_width(int64_t d, const void* p, const void* q, Launch launch) {
  const int v = pack_width<T>(d, p, q);
  if constexpr (sizeof(T) == 4) {
    if (v == 4) return launch(std::integral_constant<int, 4>{});
  }
  if (v == 2) return launch(std::integral_constant<int, 2>{});
  launch(std::integral_constant<int, 1>{});
}

// ---------------------------------------------------------------------------------------------
// spmm

// Groups of G lanes, one row each; a lane owns packs f0 + j G (j < NV) of the row per pass.
template <typename T, int V, int G, int NV>
__global__ void __launch_bounds__(kThreads)
spmm_kernel(const int64_t* __restrict__ indptr, const int64_t* __restrict__ indices,
            const T* __restrict__ values, int64_t m, const T* __restrict__ x, int64_t d,
            T* __restrict__ y) {
  using P = Pack<T, V>;
  constexpr int kRowsPerBlock = kThreads / G;
  const int64_t dv = d / V;  // packs per row
  const int sub = static_cast<int>(threadIdx.x % G);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / G;
       row < m; row += stride) {
    const int64_t start = indptr[row], end = indptr[row + 1];
    P* yrow = reinterpret_cast<P*>(y + row * d);
    for (int64_t f0 = sub; f0 < dv; f0 += static_cast<int64_t>(G) * NV) {
      bool ok[NV];
      T acc[NV][V];
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        ok[j] = f0 + static_cast<int64_t>(j) * G < dv;
#pragma unroll
        for (int k = 0; k < V; ++k) acc[j][k] = T(0);
      }
      int64_t e = start;
      for (; e + kUnroll <= end; e += kUnroll) {
        int64_t c[kUnroll];
        T w[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          c[u] = indices[e + u];
          w[u] = values[e + u];
        }
        P xv[kUnroll][NV];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const P* xr = reinterpret_cast<const P*>(x + c[u] * d) + f0;
#pragma unroll
          for (int j = 0; j < NV; ++j) xv[u][j] = ok[j] ? xr[j * G] : P{};
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)  // CSR order per output element
#pragma unroll
          for (int j = 0; j < NV; ++j)
#pragma unroll
            for (int k = 0; k < V; ++k) acc[j][k] = mad(w[u], xv[u][j].v[k], acc[j][k]);
      }
      for (; e < end; ++e) {
        const T w = values[e];
        const P* xr = reinterpret_cast<const P*>(x + indices[e] * d) + f0;
#pragma unroll
        for (int j = 0; j < NV; ++j) {
          const P xv = ok[j] ? xr[j * G] : P{};
#pragma unroll
          for (int k = 0; k < V; ++k) acc[j][k] = mad(w, xv.v[k], acc[j][k]);
        }
      }
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        if (!ok[j]) continue;
        P out;
#pragma unroll
        for (int k = 0; k < V; ++k) out.v[k] = acc[j][k];
        yrow[f0 + j * G] = out;
      }
    }
  }
}

template <typename T, int V, int G, int NV>
void run_spmm(const int64_t* indptr, const int64_t* indices, const T* values, int64_t m,
              const T* x, int64_t d, T* y, cudaStream_t stream) {
  const unsigned grid = grid_for(m, kThreads / G);
  spmm_kernel<T, V, G, NV><<<grid, kThreads, 0, stream>>>(indptr, indices, values, m, x, d, y);
  MF_CUDA_CHECK_LAUNCH("spmm_kernel");
}

template <typename T, int V>
void dispatch_spmm(const int64_t* indptr, const int64_t* indices, const T* values, int64_t m,
                   const T* x, int64_t d, T* y, cudaStream_t stream) {
  const int64_t dv = d / V;
  if (dv <= 1) return run_spmm<T, V, 1, 1>(indptr, indices, values, m, x, d, y, stream);
  if (dv <= 2) return run_spmm<T, V, 2, 1>(indptr, indices, values, m, x, d, y, stream);
  if (dv <= 4) return run_spmm<T, V, 4, 1>(indptr, indices, values, m, x, d, y, stream);
  if (dv <= 8) return run_spmm<T, V, 8, 1>(indptr, indices, values, m, x, d, y, stream);
  if (dv <= 16) return run_spmm<T, V, 16, 1>(indptr, indices, values, m, x, d, y, stream);
  if (dv <= 32) return run_spmm<T, V, 32, 1>(indptr, indices, values, m, x, d, y, stream);
  if (dv <= 64) return run_spmm<T, V, 32, 2>(indptr, indices, values, m, x, d, y, stream);
  return run_spmm<T, V, 32, 4>(indptr, indices, values, m, x, d, y, stream);
}

// ---------------------------------------------------------------------------------------------
// sddmm

// Groups of G lanes, one row each; the row loop is block-uniform and the entry loop runs the
// warp's longest row, so every lane reaches every (full-warp) shuffle.
template <typename T, int V, int G>
__global__ void __launch_bounds__(kThreads)
sddmm_kernel(const int64_t* __restrict__ indptr, const int64_t* __restrict__ indices, int64_t m,
             const T* __restrict__ a, const T* __restrict__ b, int64_t d, T* __restrict__ out) {
  using P = Pack<T, V>;
  constexpr int kRowsPerBlock = kThreads / G;
  const int64_t dv = d / V;
  const int sub = static_cast<int>(threadIdx.x % G);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; row0 < m;
       row0 += stride) {
    const int64_t row = row0 + threadIdx.x / G;
    const bool active = row < m;
    const int64_t start = active ? indptr[row] : 0;
    const int64_t len = active ? indptr[row + 1] - start : 0;
    long long steps = len;  // the longest row of the warp
#pragma unroll
    for (int o = 16; o >= G; o /= 2)
      steps = max(steps, __shfl_xor_sync(kFullMask, steps, o));
    const P* arow = reinterpret_cast<const P*>(a + (active ? row : 0) * d);
    for (int64_t it = 0; it < steps; it += kUnroll) {
      T part[kUnroll];
      bool has[kUnroll];
      const P* brow[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        part[u] = T(0);
        has[u] = it + u < len;
        brow[u] = reinterpret_cast<const P*>(b + (has[u] ? indices[start + it + u] : 0) * d);
      }
      for (int64_t f = sub; f < dv; f += G) {  // the a pack is read once for kUnroll entries
        const P pa = arow[f];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (!has[u]) continue;
          const P pb = brow[u][f];
#pragma unroll
          for (int k = 0; k < V; ++k) part[u] = mad(pa.v[k], pb.v[k], part[u]);
        }
      }
#pragma unroll
      for (int o = G / 2; o >= 1; o /= 2)
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) part[u] += __shfl_xor_sync(kFullMask, part[u], o);
      if (sub == 0) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u)
          if (it + u < len) out[start + it + u] = part[u];
      }
    }
  }
}

template <typename T, int V, int G>
void run_sddmm(const int64_t* indptr, const int64_t* indices, int64_t m, const T* a, const T* b,
               int64_t d, T* out, cudaStream_t stream) {
  const unsigned grid = grid_for(m, kThreads / G);
  sddmm_kernel<T, V, G><<<grid, kThreads, 0, stream>>>(indptr, indices, m, a, b, d, out);
  MF_CUDA_CHECK_LAUNCH("sddmm_kernel");
}

template <typename T, int V>
void dispatch_sddmm(const int64_t* indptr, const int64_t* indices, int64_t m, const T* a,
                    const T* b, int64_t d, T* out, cudaStream_t stream) {
  const int64_t dv = d / V;
  if (dv <= 1) return run_sddmm<T, V, 1>(indptr, indices, m, a, b, d, out, stream);
  if (dv <= 2) return run_sddmm<T, V, 2>(indptr, indices, m, a, b, d, out, stream);
  if (dv <= 4) return run_sddmm<T, V, 4>(indptr, indices, m, a, b, d, out, stream);
  if (dv <= 8) return run_sddmm<T, V, 8>(indptr, indices, m, a, b, d, out, stream);
  if (dv <= 16) return run_sddmm<T, V, 16>(indptr, indices, m, a, b, d, out, stream);
  return run_sddmm<T, V, 32>(indptr, indices, m, a, b, d, out, stream);
}

}  // namespace

template <typename T>
void spmm(const int64_t* indptr, const int64_t* indices, const T* values, int64_t m, int64_t nnz,
          const T* x, int64_t d, T* y, int device, cudaStream_t stream) {
  MF_CHECK(m >= 0 && nnz >= 0 && d >= 0, "shapes must be non-negative");
  if (m == 0 || d == 0) return;
  MF_CHECK(indptr != nullptr && y != nullptr, "indptr or output pointer is null");
  MF_CHECK(nnz == 0 || (indices != nullptr && values != nullptr && x != nullptr),
           "indices, values or x pointer is null");

  MF_CUDA_CHECK(cudaSetDevice(device));
  (void)cudaGetLastError();  // a stale launch error of an earlier call is not ours to report

  with_pack_width<T>(d, x, y, [&](auto v) {
    dispatch_spmm<T, decltype(v)::value>(indptr, indices, values, m, x, d, y, stream);
  });
}

template <typename T>
void sddmm(const int64_t* indptr, const int64_t* indices, int64_t m, int64_t nnz, const T* a,
           const T* b, int64_t d, T* out, int device, cudaStream_t stream) {
  MF_CHECK(m >= 0 && nnz >= 0 && d >= 0, "shapes must be non-negative");
  if (nnz == 0) return;
  MF_CHECK(m > 0, "a matrix with entries needs rows");
  MF_CHECK(indptr != nullptr && indices != nullptr && out != nullptr,
           "indptr, indices or output pointer is null");
  MF_CHECK(d == 0 || (a != nullptr && b != nullptr), "a or b pointer is null");

  MF_CUDA_CHECK(cudaSetDevice(device));
  (void)cudaGetLastError();  // a stale launch error of an earlier call is not ours to report

  if (d == 0) {  // empty inner products
    MF_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(T) * static_cast<size_t>(nnz), stream));
    return;
  }
  with_pack_width<T>(d, a, b, [&](auto v) {
    dispatch_sddmm<T, decltype(v)::value>(indptr, indices, m, a, b, d, out, stream);
  });
}

template void spmm<float>(const int64_t*, const int64_t*, const float*, int64_t, int64_t,
                          const float*, int64_t, float*, int, cudaStream_t);
template void spmm<double>(const int64_t*, const int64_t*, const double*, int64_t, int64_t,
                           const double*, int64_t, double*, int, cudaStream_t);
template void sddmm<float>(const int64_t*, const int64_t*, int64_t, int64_t, const float*,
                           const float*, int64_t, float*, int, cudaStream_t);
template void sddmm<double>(const int64_t*, const int64_t*, int64_t, int64_t, const double*,
                            const double*, int64_t, double*, int, cudaStream_t);

}  // namespace cuda
}  // namespace micro_fast
