// CSR products and the CSR transpose on the GPU (the contract is in csrc/cuda/spmm.cuh).
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
// csr_transpose is a stable LSD radix sort of the entry ids 0..nnz-1 by column (keys are read
// as indices[e], never stored), 8-bit digits, only as many passes as the bits of n_cols - 1:
//
//   radix_histogram_kernel  one warp per tile of kSortTile consecutive (current-order) entries:
//                           digit counts of the tile, hist[digit][tile];
//   exclusive_scan_kernel   one block scans hist in place (digit-major, so the scan gives each
//                           (digit, tile) its first output slot);
//   radix_scatter_kernel    the same warp per tile walks its entries in order, 32 at a time:
//                           lanes with equal digits find each other with __match_any_sync, an
//                           entry's slot is the tile's running count of its digit plus its rank
//                           among the lower lanes with that digit. Entries keep their order
//                           within a digit, so every pass is stable and the final order is
//                           (column, entry id) = (column, row): the rows of a column ascend.
//   transpose_rows_kernel / transpose_indptr_kernel
//                           t_indices[p] = row of perm[p] (binary search of indptr) and
//                           t_indptr[c] = first p whose column is >= c (binary search of the
//                           sorted columns). No atomics anywhere: deterministic.
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

// ---------------------------------------------------------------------------------------------
// csr_transpose

constexpr int kRadixBits = 8;
constexpr int kRadix = 1 << kRadixBits;
constexpr int kSortWarps = 8;                        // tiles per block (one per warp)
constexpr int kSortRounds = 64;                      // 32 entries per round
constexpr int64_t kSortTile = 32 * kSortRounds;      // entries per tile
constexpr int kScanThreads = 1024;                   // exclusive_scan_kernel needs exactly this
constexpr int kScanItems = 4;
constexpr int kFinishThreads = 256;

int64_t sort_tiles(int64_t nnz) { return (nnz + kSortTile - 1) / kSortTile; }

// The digit of entry e's column for the pass at bit `shift`.
__device__ __forceinline__ unsigned digit_of(const int64_t* __restrict__ indices, int64_t e,
                                             int shift) {
  return static_cast<unsigned>(static_cast<uint64_t>(indices[e]) >> shift) & (kRadix - 1);
}

// hist[digit * n_tiles + tile] = entries of the tile whose digit it is. The current order is
// vals_in (entry ids), or 0..nnz-1 when vals_in is null (the first pass).
__global__ void __launch_bounds__(kSortWarps * 32)
radix_histogram_kernel(const int64_t* __restrict__ indices, const int64_t* __restrict__ vals_in,
                       int64_t nnz, int shift, int64_t n_tiles, int64_t* __restrict__ hist) {
  __shared__ int32_t counts[kSortWarps][kRadix];
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kSortWarps + warp;
  if (tile >= n_tiles) return;  // the whole warp; the kernel has no block-wide barrier
  int32_t* cnt = counts[warp];
  for (int i = lane; i < kRadix; i += 32) cnt[i] = 0;
  __syncwarp();
  const int64_t base = tile * kSortTile;
  for (int r = 0; r < kSortRounds && base + 32 * r < nnz; ++r) {  // warp-uniform
    const int64_t i = base + 32 * r + lane;
    const bool valid = i < nnz;
    const unsigned digit =
        valid ? digit_of(indices, vals_in ? vals_in[i] : i, shift) : unsigned(kRadix);
    const unsigned peers = __match_any_sync(kFullMask, digit);
    if (valid && lane == __ffs(peers) - 1) cnt[digit] += __popc(peers);
    __syncwarp();
  }
  for (int i = lane; i < kRadix; i += 32) hist[static_cast<int64_t>(i) * n_tiles + tile] = cnt[i];
}

// Stable scatter of the tile's entries: vals_out[offsets[digit][tile] + rank] = entry id.
__global__ void __launch_bounds__(kSortWarps * 32)
radix_scatter_kernel(const int64_t* __restrict__ indices, const int64_t* __restrict__ vals_in,
                     int64_t nnz, int shift, int64_t n_tiles,
                     const int64_t* __restrict__ offsets, int64_t* __restrict__ vals_out) {
  __shared__ int64_t next_slot[kSortWarps][kRadix];
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  const int64_t tile = static_cast<int64_t>(blockIdx.x) * kSortWarps + warp;
  if (tile >= n_tiles) return;
  int64_t* next = next_slot[warp];
  for (int i = lane; i < kRadix; i += 32) next[i] = offsets[static_cast<int64_t>(i) * n_tiles + tile];
  __syncwarp();
  const unsigned lower_lanes = (1u << lane) - 1u;
  const int64_t base = tile * kSortTile;
  for (int r = 0; r < kSortRounds && base + 32 * r < nnz; ++r) {  // warp-uniform
    const int64_t i = base + 32 * r + lane;
    const bool valid = i < nnz;
    const int64_t e = valid ? (vals_in ? vals_in[i] : i) : 0;
    const unsigned digit = valid ? digit_of(indices, e, shift) : unsigned(kRadix);
    const unsigned peers = __match_any_sync(kFullMask, digit);
    const int64_t slot = valid ? next[digit] + __popc(peers & lower_lanes) : 0;
    __syncwarp();  // every lane has read next[] before the leaders advance it
    if (valid && lane == __ffs(peers) - 1) next[digit] += __popc(peers);
    __syncwarp();
    if (valid) vals_out[slot] = e;
  }
}

// In-place exclusive prefix sum of data[0, n) by one block of kScanThreads threads, in chunks of
// kScanThreads * kScanItems with a running carry.
__global__ void __launch_bounds__(kScanThreads)
exclusive_scan_kernel(int64_t* __restrict__ data, int64_t n) {
  __shared__ int64_t warp_sums[kScanThreads / 32];
  __shared__ int64_t chunk_sum;
  const int warp = static_cast<int>(threadIdx.x / 32), lane = static_cast<int>(threadIdx.x % 32);
  int64_t carry = 0;
  for (int64_t base = 0; base < n; base += static_cast<int64_t>(kScanThreads) * kScanItems) {
    const int64_t i0 = base + static_cast<int64_t>(threadIdx.x) * kScanItems;
    int64_t v[kScanItems];
    int64_t own = 0;  // this thread's items, exclusive prefix in v
#pragma unroll
    for (int j = 0; j < kScanItems; ++j) {
      const int64_t t = i0 + j < n ? data[i0 + j] : 0;
      v[j] = own;
      own += t;
    }
    long long inc = own;  // inclusive scan over the warp
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const long long up = __shfl_up_sync(kFullMask, inc, o);
      if (lane >= o) inc += up;
    }
    if (lane == 31) warp_sums[warp] = inc;
    __syncthreads();
    if (warp == 0) {
      const long long w = warp_sums[lane];
      long long winc = w;
#pragma unroll
      for (int o = 1; o < 32; o *= 2) {
        const long long up = __shfl_up_sync(kFullMask, winc, o);
        if (lane >= o) winc += up;
      }
      warp_sums[lane] = winc - w;  // exclusive over warps
      if (lane == 31) chunk_sum = winc;
    }
    __syncthreads();
    const int64_t first = carry + warp_sums[warp] + (inc - own);
#pragma unroll
    for (int j = 0; j < kScanItems; ++j)
      if (i0 + j < n) data[i0 + j] = first + v[j];
    carry += chunk_sum;
    __syncthreads();  // warp_sums and chunk_sum are rewritten by the next chunk
  }
}

__global__ void iota_kernel(int64_t* __restrict__ out, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride)
    out[i] = i;
}

// t_indices[p] = the row owning entry perm[p]: the last r < m with indptr[r] <= perm[p].
__global__ void transpose_rows_kernel(const int64_t* __restrict__ indptr, int64_t m,
                                      const int64_t* __restrict__ perm, int64_t nnz,
                                      int64_t* __restrict__ t_indices) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < nnz;
       p += stride) {
    const int64_t e = perm[p];
    int64_t lo = 0, hi = m;  // indptr[lo] <= e < indptr[hi]
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (indptr[mid] <= e) lo = mid; else hi = mid;
    }
    t_indices[p] = lo;
  }
}

// t_indptr[c] = the first position p whose column indices[perm[p]] is >= c, for c <= n_cols.
__global__ void transpose_indptr_kernel(const int64_t* __restrict__ indices,
                                        const int64_t* __restrict__ perm, int64_t nnz,
                                        int64_t n_cols, int64_t* __restrict__ t_indptr) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; c <= n_cols;
       c += stride) {
    int64_t lo = 0, hi = nnz;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (indices[perm[mid]] < c) lo = mid + 1; else hi = mid;
    }
    t_indptr[c] = lo;
  }
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

int64_t csr_transpose_scratch_elems(int64_t nnz, int64_t n_cols) {
  MF_CHECK(nnz >= 0 && n_cols >= 0, "nnz and n_cols must be non-negative");
  if (nnz == 0) return 0;
  return nnz + kRadix * sort_tiles(nnz);  // the ping-pong order + the tile histograms
}

void csr_transpose(const int64_t* indptr, const int64_t* indices, int64_t m, int64_t nnz,
                   int64_t n_cols, int64_t* scratch, int64_t scratch_elems, int64_t* t_indptr,
                   int64_t* t_indices, int64_t* perm, int device, cudaStream_t stream) {
  MF_CHECK(m >= 0 && nnz >= 0 && n_cols >= 0, "shapes must be non-negative");
  MF_CHECK(t_indptr != nullptr, "t_indptr pointer is null");
  if (nnz > 0) {
    MF_CHECK(m > 0 && n_cols > 0, "a matrix with entries needs rows and columns");
    MF_CHECK(indptr != nullptr && indices != nullptr, "indptr or indices pointer is null");
    MF_CHECK(t_indices != nullptr && perm != nullptr, "t_indices or perm pointer is null");
    MF_CHECK(scratch != nullptr && scratch_elems >= csr_transpose_scratch_elems(nnz, n_cols),
             "scratch must hold csr_transpose_scratch_elems(nnz, n_cols) elements");
    MF_CHECK(sort_tiles(nnz) <= static_cast<int64_t>(INT_MAX) * kSortWarps,
             "too many entries");
  }

  MF_CUDA_CHECK(cudaSetDevice(device));
  (void)cudaGetLastError();  // a stale launch error of an earlier call is not ours to report

  if (nnz == 0) {  // every column is empty
    MF_CUDA_CHECK(cudaMemsetAsync(t_indptr, 0, sizeof(int64_t) * static_cast<size_t>(n_cols + 1),
                                  stream));
    return;
  }

  // Only the bits that n_cols - 1 (the largest column) has are sorted.
  int bits = 0;
  for (uint64_t top = static_cast<uint64_t>(n_cols - 1); top != 0; top >>= 1) ++bits;
  const int passes = (bits + kRadixBits - 1) / kRadixBits;
  const int64_t n_tiles = sort_tiles(nnz);
  int64_t* tmp = scratch;         // [nnz]
  int64_t* hist = scratch + nnz;  // [kRadix, n_tiles]

  if (passes == 0) {  // one column: the order is the CSR order
    const unsigned grid = grid_for(nnz, kFinishThreads);
    iota_kernel<<<grid, kFinishThreads, 0, stream>>>(perm, nnz);
    MF_CUDA_CHECK_LAUNCH("iota_kernel");
  }
  const unsigned sort_grid = grid_for(n_tiles, kSortWarps);
  const int64_t* vals_in = nullptr;  // pass 0 reads the identity order
  for (int pass = 0; pass < passes; ++pass) {
    // The last pass writes perm: passes alternate between perm and tmp backwards from it.
    int64_t* vals_out = (passes - 1 - pass) % 2 == 0 ? perm : tmp;
    const int shift = pass * kRadixBits;
    radix_histogram_kernel<<<sort_grid, kSortWarps * 32, 0, stream>>>(indices, vals_in, nnz,
                                                                      shift, n_tiles, hist);
    MF_CUDA_CHECK_LAUNCH("radix_histogram_kernel");
    exclusive_scan_kernel<<<1, kScanThreads, 0, stream>>>(hist, kRadix * n_tiles);
    MF_CUDA_CHECK_LAUNCH("exclusive_scan_kernel");
    radix_scatter_kernel<<<sort_grid, kSortWarps * 32, 0, stream>>>(indices, vals_in, nnz, shift,
                                                                    n_tiles, hist, vals_out);
    MF_CUDA_CHECK_LAUNCH("radix_scatter_kernel");
    vals_in = vals_out;
  }

  const unsigned rows_grid = grid_for(nnz, kFinishThreads);
  transpose_rows_kernel<<<rows_grid, kFinishThreads, 0, stream>>>(indptr, m, perm, nnz,
                                                                  t_indices);
  MF_CUDA_CHECK_LAUNCH("transpose_rows_kernel");
  const unsigned cols_grid = grid_for(n_cols + 1, kFinishThreads);
  transpose_indptr_kernel<<<cols_grid, kFinishThreads, 0, stream>>>(indices, perm, nnz, n_cols,
                                                                    t_indptr);
  MF_CUDA_CHECK_LAUNCH("transpose_indptr_kernel");
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
