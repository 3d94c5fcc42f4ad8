// CSR products on the GPU (the contract is in csrc/cuda/spmm.cuh). The transpose a backward
// needs is built once per structure by CSRGraph, with a stable torch sort.
//
// Work is split by nonzeros, not by rows: both products walk the segments of a CsrPartition
// (spmm.cuh; built once per structure in torch by micro_fast.backends.cuda.csr_partition and
// cached with the CSRGraph), at most S entries each (S = PARTITION_SEGMENT = 256 there; the
// kernels take the bounds as given): long rows are cut in ceil(len / S) pieces, short rows stay
// whole, so on a power-law graph the longest row no longer sets the kernel time.
//
// spmm (y = A x) and sddmm (out[e] = <a[row(e)], b[col(e)]>) give each segment a group of G
// lanes of one warp, G a power of two <= 32 chosen from the row width d: the lanes of a group
// split the features, in packs of V consecutive elements (V = 4 floats / 2 doubles when d and the
// pointers allow, so rows are read with 16-byte loads), and a warp runs 32 / G segments at once
// so narrow features (d = 1, 3, 16, ...) do not leave most lanes idle.
//
//   spmm_kernel   each lane accumulates its packs (NV of them per pass over the segment's
//                 entries, NV > 1 only for wide rows) over the segment's entries in CSR order,
//                 four entries per step with independent loads (gathers in flight); no shuffles
//                 and no atomics. A row's only segment writes y; a segment of a split row writes
//                 its partial to a scratch slot, and spmm_combine_kernel then sums each split
//                 row's partials in segment order into y (one thread per output element). Every
//                 sum has a fixed order (fp32 for float): deterministic, and a row of <= S
//                 entries is summed exactly as before (one CSR-order chain).
//   sddmm_kernel  per entry, each lane takes the partial dot product of its packs, then a
//                 butterfly over the group's lanes completes it (fixed order: deterministic).
//                 The loop over a warp's entries runs its longest segment's count (<= S) on
//                 every lane, because the shuffles span the whole warp.
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

// Widest pack (elements) that d and the row pointers allow (r may be null: not read):
// 16-byte loads where possible.
template <typename T>
int pack_width(int64_t d, const void* p, const void* q, const void* r) {
  constexpr int widest = 16 / static_cast<int>(sizeof(T));
  for (int v = widest; v > 1; v /= 2)
    if (d % v == 0 && aligned(p, sizeof(T) * v) && aligned(q, sizeof(T) * v) &&
        aligned(r, sizeof(T) * v))
      return v;
  return 1;
}

// Calls launch(std::integral_constant<int, V>{}) with V = pack_width<T>(d, p, q, r), so each
// width is a compile-time template argument of the kernel (float packs 4, 2 or 1; double 2 or 1).
template <typename T, class Launch>
void with_pack_width(int64_t d, const void* p, const void* q, const void* r, Launch launch) {
  const int v = pack_width<T>(d, p, q, r);
  if constexpr (sizeof(T) == 4) {
    if (v == 4) return launch(std::integral_constant<int, 4>{});
  }
  if (v == 2) return launch(std::integral_constant<int, 2>{});
  launch(std::integral_constant<int, 1>{});
}

// ---------------------------------------------------------------------------------------------
// spmm

// Groups of G lanes, one segment each; a lane owns packs f0 + j G (j < NV) of the row per pass.
// The segment's sum goes to y[row] (the row's only segment) or to its partials slot.
template <typename T, int V, int G, int NV>
__global__ void __launch_bounds__(kThreads)
spmm_kernel(const int64_t* __restrict__ seg_row, const int64_t* __restrict__ seg_bounds,
            const int64_t* __restrict__ seg_slot, int64_t segments,
            const int64_t* __restrict__ indices, const T* __restrict__ values, int64_t m,
            const T* __restrict__ x, int64_t d, T* __restrict__ partials, T* __restrict__ y) {
  using P = Pack<T, V>;
  constexpr int kSegsPerBlock = kThreads / G;
  const int64_t dv = d / V;  // packs per row
  const int sub = static_cast<int>(threadIdx.x % G);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kSegsPerBlock;
  for (int64_t seg = static_cast<int64_t>(blockIdx.x) * kSegsPerBlock + threadIdx.x / G;
       seg < segments; seg += stride) {
    // Only the entry range is held over the loops: the row and slot are read at the store (a
    // padding segment's range is empty). With fewer live values here and the loop bound end4,
    // nvcc 13.0 spills nothing at its 40 to 48 registers.
    const int64_t start = seg_bounds[seg], end = seg_bounds[seg + 1];
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
      const int64_t end4 = end - kUnroll;
      for (; e <= end4; e += kUnroll) {
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
      const int64_t row = seg_row[seg];
      if (row >= m) break;  // a padding segment (after the last row's): nothing to write
      const int64_t slot = seg_slot[seg];  // -1: the row's only segment, which writes y
      P* yrow = reinterpret_cast<P*>(slot < 0 ? y + row * d : partials + slot * d);
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

// Groups of G lanes, one split row each: y[row] = the row's partials summed in segment order
// (one thread per output element, no atomics).
template <typename T, int V, int G>
__global__ void __launch_bounds__(kThreads)
spmm_combine_kernel(const int64_t* __restrict__ split_row,
                    const int64_t* __restrict__ split_slots, int64_t splits,
                    const T* __restrict__ partials, int64_t m, int64_t d, T* __restrict__ y) {
  using P = Pack<T, V>;
  constexpr int kRowsPerBlock = kThreads / G;
  const int64_t dv = d / V;
  const int sub = static_cast<int>(threadIdx.x % G);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  const P* part = reinterpret_cast<const P*>(partials);
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / G;
       s < splits; s += stride) {
    const int64_t row = split_row[s];
    if (row >= m) continue;  // padding after the last split row
    const int64_t p0 = split_slots[s], p1 = split_slots[s + 1];  // p1 - p0 >= 2
    P* yrow = reinterpret_cast<P*>(y + row * d);
    for (int64_t f = sub; f < dv; f += G) {
      P acc = part[p0 * dv + f];
#pragma unroll 4
      for (int64_t p = p0 + 1; p < p1; ++p) {  // loads independent of acc: several in flight
        const P v = part[p * dv + f];
#pragma unroll
        for (int k = 0; k < V; ++k) acc.v[k] += v.v[k];
      }
      yrow[f] = acc;
    }
  }
}

template <typename T, int V, int G, int NV>
void run_spmm(const CsrPartition& part, const int64_t* indices, const T* values, int64_t m,
              const T* x, int64_t d, T* partials, T* y, cudaStream_t stream) {
  const unsigned grid = grid_for(part.segments, kThreads / G);
  spmm_kernel<T, V, G, NV><<<grid, kThreads, 0, stream>>>(
      part.seg_row, part.seg_bounds, part.seg_slot, part.segments, indices, values, m, x, d,
      partials, y);
  MF_CUDA_CHECK_LAUNCH("spmm_kernel");
  if (part.splits == 0) return;
  // same stream: runs after every partial is written
  const unsigned combine_grid = grid_for(part.splits, kThreads / G);
  spmm_combine_kernel<T, V, G><<<combine_grid, kThreads, 0, stream>>>(
      part.split_row, part.split_slots, part.splits, partials, m, d, y);
  MF_CUDA_CHECK_LAUNCH("spmm_combine_kernel");
}

template <typename T, int V>
void dispatch_spmm(const CsrPartition& part, const int64_t* indices, const T* values, int64_t m,
                   const T* x, int64_t d, T* partials, T* y, cudaStream_t stream) {
  const int64_t dv = d / V;
  if (dv <= 1) return run_spmm<T, V, 1, 1>(part, indices, values, m, x, d, partials, y, stream);
  if (dv <= 2) return run_spmm<T, V, 2, 1>(part, indices, values, m, x, d, partials, y, stream);
  if (dv <= 4) return run_spmm<T, V, 4, 1>(part, indices, values, m, x, d, partials, y, stream);
  if (dv <= 8) return run_spmm<T, V, 8, 1>(part, indices, values, m, x, d, partials, y, stream);
  if (dv <= 16)
    return run_spmm<T, V, 16, 1>(part, indices, values, m, x, d, partials, y, stream);
  if (dv <= 32)
    return run_spmm<T, V, 32, 1>(part, indices, values, m, x, d, partials, y, stream);
  if (dv <= 64)
    return run_spmm<T, V, 32, 2>(part, indices, values, m, x, d, partials, y, stream);
  return run_spmm<T, V, 32, 4>(part, indices, values, m, x, d, partials, y, stream);
}

// ---------------------------------------------------------------------------------------------
// sddmm

// Groups of G lanes, one segment each; the segment loop is block-uniform and the entry loop runs
// the warp's longest segment (<= S entries), so every lane reaches every (full-warp) shuffle.
template <typename T, int V, int G>
__global__ void __launch_bounds__(kThreads)
sddmm_kernel(const int64_t* __restrict__ seg_row, const int64_t* __restrict__ seg_bounds,
             int64_t segments, const int64_t* __restrict__ indices, int64_t m,
             const T* __restrict__ a, const T* __restrict__ b, int64_t d, T* __restrict__ out) {
  using P = Pack<T, V>;
  constexpr int kSegsPerBlock = kThreads / G;
  const int64_t dv = d / V;
  const int sub = static_cast<int>(threadIdx.x % G);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kSegsPerBlock;
  const int group = static_cast<int>(threadIdx.x / G);
  // seg - group is block-uniform, so the loop is too and every lane reaches the shuffles (a
  // per-lane segment index, not a block one plus group: nvcc 13.0 spilled that one on sm_90)
  for (int64_t seg = static_cast<int64_t>(blockIdx.x) * kSegsPerBlock + group;
       seg - group < segments; seg += stride) {
    const int64_t row = seg < segments ? seg_row[seg] : m;
    const bool active = row < m;  // not past the end, not a padding segment
    const int64_t start = active ? seg_bounds[seg] : 0;
    const int64_t len = active ? seg_bounds[seg + 1] - start : 0;
    long long steps = len;  // the longest segment of the warp
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
void run_sddmm(const CsrPartition& part, const int64_t* indices, int64_t m, const T* a,
               const T* b, int64_t d, T* out, cudaStream_t stream) {
  const unsigned grid = grid_for(part.segments, kThreads / G);
  sddmm_kernel<T, V, G><<<grid, kThreads, 0, stream>>>(part.seg_row, part.seg_bounds,
                                                       part.segments, indices, m, a, b, d, out);
  MF_CUDA_CHECK_LAUNCH("sddmm_kernel");
}

template <typename T, int V>
void dispatch_sddmm(const CsrPartition& part, const int64_t* indices, int64_t m, const T* a,
                    const T* b, int64_t d, T* out, cudaStream_t stream) {
  const int64_t dv = d / V;
  if (dv <= 1) return run_sddmm<T, V, 1>(part, indices, m, a, b, d, out, stream);
  if (dv <= 2) return run_sddmm<T, V, 2>(part, indices, m, a, b, d, out, stream);
  if (dv <= 4) return run_sddmm<T, V, 4>(part, indices, m, a, b, d, out, stream);
  if (dv <= 8) return run_sddmm<T, V, 8>(part, indices, m, a, b, d, out, stream);
  if (dv <= 16) return run_sddmm<T, V, 16>(part, indices, m, a, b, d, out, stream);
  return run_sddmm<T, V, 32>(part, indices, m, a, b, d, out, stream);
}

}  // namespace

template <typename T>
void spmm(const CsrPartition& part, const int64_t* indices, const T* values, int64_t m,
          int64_t nnz, const T* x, int64_t d, T* partials, int64_t partial_rows, T* y,
          int device, cudaStream_t stream) {
  MF_CHECK(m >= 0 && nnz >= 0 && d >= 0, "shapes must be non-negative");
  if (m == 0 || d == 0) return;
  MF_CHECK(y != nullptr, "output pointer is null");
  MF_CHECK(part.segments >= m && part.splits >= 0,
           "the partition must have at least one segment per row");
  MF_CHECK(part.seg_row != nullptr && part.seg_bounds != nullptr && part.seg_slot != nullptr,
           "partition segment pointer is null");
  MF_CHECK(part.splits == 0 ||
               (part.split_row != nullptr && part.split_slots != nullptr &&
                partials != nullptr && partial_rows > 0),
           "a partition with split rows needs its split arrays and a partials buffer");
  MF_CHECK(nnz == 0 || (indices != nullptr && values != nullptr && x != nullptr),
           "indices, values or x pointer is null");

  MF_CUDA_CHECK(cudaSetDevice(device));
  (void)cudaGetLastError();  // a stale launch error of an earlier call is not ours to report

  T* scratch = part.splits > 0 ? partials : nullptr;
  with_pack_width<T>(d, x, y, scratch, [&](auto v) {
    dispatch_spmm<T, decltype(v)::value>(part, indices, values, m, x, d, scratch, y, stream);
  });
}

template <typename T>
void sddmm(const CsrPartition& part, const int64_t* indices, int64_t m, int64_t nnz, const T* a,
           const T* b, int64_t d, T* out, int device, cudaStream_t stream) {
  MF_CHECK(m >= 0 && nnz >= 0 && d >= 0, "shapes must be non-negative");
  if (nnz == 0) return;
  MF_CHECK(m > 0, "a matrix with entries needs rows");
  MF_CHECK(indices != nullptr && out != nullptr, "indices or output pointer is null");
  MF_CHECK(part.segments >= m && part.seg_row != nullptr && part.seg_bounds != nullptr,
           "the partition must have at least one segment per row");
  MF_CHECK(d == 0 || (a != nullptr && b != nullptr), "a or b pointer is null");

  MF_CUDA_CHECK(cudaSetDevice(device));
  (void)cudaGetLastError();  // a stale launch error of an earlier call is not ours to report

  if (d == 0) {  // empty inner products
    MF_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(T) * static_cast<size_t>(nnz), stream));
    return;
  }
  with_pack_width<T>(d, a, b, nullptr, [&](auto v) {
    dispatch_sddmm<T, decltype(v)::value>(part, indices, m, a, b, d, out, stream);
  });
}

template void spmm<float>(const CsrPartition&, const int64_t*, const float*, int64_t, int64_t,
                          const float*, int64_t, float*, int64_t, float*, int, cudaStream_t);
template void spmm<double>(const CsrPartition&, const int64_t*, const double*, int64_t, int64_t,
                           const double*, int64_t, double*, int64_t, double*, int,
                           cudaStream_t);
template void sddmm<float>(const CsrPartition&, const int64_t*, int64_t, int64_t, const float*,
                           const float*, int64_t, float*, int, cudaStream_t);
template void sddmm<double>(const CsrPartition&, const int64_t*, int64_t, int64_t,
                            const double*, const double*, int64_t, double*, int, cudaStream_t);

}  // namespace cuda
}  // namespace micro_fast
