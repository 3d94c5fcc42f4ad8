// Fused all-pairs contrastive loss (MICRO's GRACE-style InfoNCE) on the GPU.
//
// Inputs n1, n2 [N, d] (row-normalized by the caller), tau > 0. With s11 = n1 n1^T,
// s12 = n1 n2^T, s22 = n2 n2^T (never stored whole):
//
//   lse1_i = log( sum_{j != i} exp(s11_ij / tau) + sum_j exp(s12_ij / tau) )
//   lse2_j = log( sum_{i != j} exp(s22_ij / tau) + sum_i exp(s12_ij / tau) )   (symmetric only)
//
// Both are the same computation for a "side" (x, z) = (n1, n2) or (n2, n1): the row LSE of
// [x x^T with the diagonal removed | x z^T] (s12 columns are rows of s21 = n2 n1^T), so the
// launchers run one code path per side. The backward pass is organized the same way: for the
// gradient of L = sum_i g1_i lse1_i (+ sum_j g2_j lse2_j),
//
//   grad_x = A_self x + W_cross z,
//   A_self[a, b]  = (g_s[a] e^{s_xx[a,b]/tau - l_s[a]} + g_s[b] e^{s_xx[a,b]/tau - l_s[b]}) / tau,
//                   0 on the diagonal                          (the side's own LSE, if it has one)
//   W_cross[a, b] = (g_s[a] e^{s_xz[a,b]/tau - l_s[a]} + g_o[b] e^{s_xz[a,b]/tau - l_o[b]}) / tau
//
// where (l_s, g_s) is the side's own (lse, weight) and (l_o, g_o) the other side's; a missing
// pair (lse2, g2 when not symmetric) drops its term. Side 1: (l_s, l_o) = (lse1, lse2), side 2:
// (lse2, lse1). This is exactly grad_n1 = W12 n2 + (W11 + W11^T) n1 and
// grad_n2 = W12^T n1 + (W22 + W22^T) n2, using the symmetry of s11 and s22.
//
// Kernels (fp32 accumulation and sums for float, fp64 for double):
//
//   forward, per side and row block of at most block_rows rows:
//     lse_partial_kernel  grid (row tiles, splits): a thread block owns one tile of BM rows and
//                         walks the column tiles t = split, split + splits, ... of the 2 N
//                         virtual columns [x x^T | x z^T]; each tile is the shared-memory NT
//                         GEMM of tile_gemm.cuh, whose epilogue folds the scores into per-row
//                         running (max, sum of exp((s - max) / tau)) pairs in registers (online
//                         log-sum-exp with the real maxima, so any tau is safe). Writes
//                         (max, sum) per row and split into the caller's scratch
//                         [2, splits, rows].
//     lse_merge_kernel    one thread per row combines the splits and writes the LSE.
//   backward, per side, row block [r0, r0 + mb) and column chunk [c0, c0 + nc):
//     weight_tile_kernel  scratch[mb, nc] = A_self (then W_cross) of the block: the same NT GEMM
//                         with an elementwise epilogue;
//     product_kernel      grad_x[r0:r0+mb] (+)= scratch @ x[c0:c0+nc] (then z[c0:c0+nc]): a
//                         shared-memory NN GEMM. Each output tile is owned by one thread block
//                         and the launches of a row block are ordered on the stream, so no atomics
//                         are used and the result is deterministic.
//
// Everything is enqueued on one stream; the score matrices exist only as register tiles
// (forward) or as one [block_rows, chunk] scratch tile at a time (backward).
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cuda/common.cuh"
#include "cuda/contrastive.cuh"
#include "cuda/tile_gemm.cuh"

namespace micro_fast {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// helpers

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }

// max that propagates NaN (a NaN score makes its row's LSE NaN, as in the reference).
template <typename T>
__device__ __forceinline__ T max_nan(T a, T b) {
  return (a > b || a != a) ? a : b;
}

// ---------------------------------------------------------------------------------------------
// forward

// Block (bx, split) handles rows [r0 + bx BM, ...) of x (at most mb rows from r0) against the
// virtual column tiles t = split, split + gridDim.y, ... < 2 T (T = ceil(n / BM)): tile t < T is
// x[t BM, ...) with the diagonal excluded, tile t >= T is z[(t - T) BM, ...). Writes, for each of
// its rows, the running maximum score (raw, not divided by tau; -inf when no column was seen) to
// pmax[split * mb + row] and sum exp((s - max) / tau) to psum[split * mb + row].
template <typename T>
__global__ void __launch_bounds__(kTileThreads)
    lse_partial_kernel(const T* __restrict__ x, const T* __restrict__ z, int64_t n, int64_t d,
                       int64_t r0, int mb, T inv_tau, T* __restrict__ pmax,
                       T* __restrict__ psum) {
  constexpr int TM = Tile<T>::TM;
  constexpr int BM = score_edge<T>();
  __shared__ ScoreSmem<T> sm;

  const int tid = threadIdx.x;
  const int tx = tid & 15;
  const int ty = tid >> 4;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * BM;  // < mb
  const int a_rows = static_cast<int>(std::min<int64_t>(BM, mb - i0));
  const T* a = x + (r0 + i0) * d;
  const int64_t tiles = (n + BM - 1) / BM;
  const T ninf = neg_inf<T>();

  T run_m[TM], run_s[TM];
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    run_m[r] = ninf;
    run_s[r] = T(0);
  }

  for (int64_t t = blockIdx.y; t < 2 * tiles; t += gridDim.y) {
    const bool cross = t >= tiles;
    const int64_t j0 = (cross ? t - tiles : t) * BM;
    const int b_rows = static_cast<int>(std::min<int64_t>(BM, n - j0));
    T acc[TM][TM];
    score_mainloop<T>(a, a_rows, (cross ? z : x) + j0 * d, b_rows, d, sm, acc);

#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int64_t i = r0 + i0 + owned<T>(r, ty);  // global row (may be past the block's end)
      T tmax = ninf;
#pragma unroll
      for (int c = 0; c < TM; ++c) {
        const int jl = owned<T>(c, tx);
        const bool ok = jl < b_rows && (cross || j0 + jl != i);
        if (!ok) acc[r][c] = ninf;
        tmax = max_nan(tmax, acc[r][c]);
      }
      // The 16 lanes tx = 0..15 of a half-warp share this row: butterfly over them. Every lane
      // of the warp executes every shuffle (no divergence around them).
#pragma unroll
      for (int off = 1; off < 16; off <<= 1)
        tmax = max_nan(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
      const T new_m = max_nan(run_m[r], tmax);
      T ps = T(0);
      if (new_m != ninf) {  // else every score seen so far is excluded: the sum stays 0
#pragma unroll
        for (int c = 0; c < TM; ++c) ps += dev_exp((acc[r][c] - new_m) * inv_tau);
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
      const T scale = run_m[r] == new_m ? T(1) : dev_exp((run_m[r] - new_m) * inv_tau);
      run_s[r] = fma_rn(run_s[r], scale, ps);
      run_m[r] = new_m;
    }
  }

  if (tx == 0) {
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int64_t il = i0 + owned<T>(r, ty);
      if (il < mb) {
        const int64_t o = static_cast<int64_t>(blockIdx.y) * mb + il;
        pmax[o] = run_m[r];
        psum[o] = run_s[r];
      }
    }
  }
}

constexpr int kMergeThreads = 256;

// lse[r0 + row] = max / tau + log(sum) over the splits' (max, sum) pairs of each row.
template <typename T>
__global__ void __launch_bounds__(kMergeThreads)
    lse_merge_kernel(const T* __restrict__ pmax, const T* __restrict__ psum, int splits, int mb,
                     int64_t r0, T tau, T inv_tau, T* __restrict__ lse) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kMergeThreads + threadIdx.x;
  if (row >= mb) return;
  T m = neg_inf<T>();
  for (int g = 0; g < splits; ++g) m = max_nan(m, pmax[static_cast<int64_t>(g) * mb + row]);
  T s = T(0);
  for (int g = 0; g < splits; ++g) {
    const int64_t o = static_cast<int64_t>(g) * mb + row;
    const T pm = pmax[o];
    s = fma_rn(psum[o], pm == m ? T(1) : dev_exp((pm - m) * inv_tau), s);
  }
  lse[r0 + row] = m / tau + dev_log(s);
}

// ---------------------------------------------------------------------------------------------
// backward

// w[i, j] (row stride nc) for the tile (bx, by) of the block's rows [r0, r0 + mb) of x and
// columns [c0, c0 + nc) of y, s = <x_i, y_j>:
//   w = (g_row[i] e^{s/tau - l_row[i]} + g_col[j] e^{s/tau - l_col[j]}) / tau,
// a term dropped when its l pointer is null, 0 where i == j when `self` (y is x).
template <typename T>
__global__ void __launch_bounds__(kTileThreads)
    weight_tile_kernel(const T* __restrict__ x, const T* __restrict__ y, int64_t d, int64_t r0,
                       int mb, int64_t c0, int nc, bool self, const T* __restrict__ l_row,
                       const T* __restrict__ g_row, const T* __restrict__ l_col,
                       const T* __restrict__ g_col, T inv_tau, T* __restrict__ w) {
  constexpr int TM = Tile<T>::TM;
  __shared__ ScoreSmem<T> sm;
  T acc[TM][TM];
  const ScoreTile tile = grid_score_tile<T>(x + r0 * d, mb, y + c0 * d, nc, d, sm, acc);
  const int64_t i0 = tile.i0;  // rows [i0, i0 + a_rows) of the block, columns [j0, j0 + b_rows)
  const int64_t j0 = tile.j0;  // of the chunk
  const int a_rows = tile.a_rows;
  const int b_rows = tile.b_rows;
  const int tx = threadIdx.x & 15;
  const int ty = threadIdx.x >> 4;

  T lr[TM], gr[TM], lc[TM], gc[TM];
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int il = owned<T>(r, ty);
    const bool ok = l_row != nullptr && il < a_rows;
    lr[r] = ok ? l_row[r0 + i0 + il] : T(0);
    gr[r] = ok ? g_row[r0 + i0 + il] : T(0);
  }
#pragma unroll
  for (int c = 0; c < TM; ++c) {
    const int jl = owned<T>(c, tx);
    const bool ok = l_col != nullptr && jl < b_rows;
    lc[c] = ok ? l_col[c0 + j0 + jl] : T(0);
    gc[c] = ok ? g_col[c0 + j0 + jl] : T(0);
  }

  // A thread's columns come in runs of V consecutive ones: 16-byte stores (a half-warp writes
  // 256 contiguous bytes) when every row of w starts 16-byte aligned, else scalar ones.
  constexpr int V = Vec16<T>::n;
  const bool vec = nc % V == 0 && reinterpret_cast<std::uintptr_t>(w) % 16 == 0;
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int il = owned<T>(r, ty);
    if (il >= a_rows) continue;
    const int64_t i = r0 + i0 + il;
    T* wrow = w + (i0 + il) * nc + j0;
    T v[TM];
#pragma unroll
    for (int c = 0; c < TM; ++c) {
      const int jl = owned<T>(c, tx);
      const T s = acc[r][c];
      T e = T(0);
      if (l_row != nullptr) e = gr[r] * dev_exp(fma_rn(s, inv_tau, -lr[r]));
      if (l_col != nullptr) e = fma_rn(gc[c], dev_exp(fma_rn(s, inv_tau, -lc[c])), e);
      v[c] = (self && c0 + j0 + jl == i) ? T(0) : e * inv_tau;
    }
#pragma unroll
    for (int g = 0; g < TM / V; ++g) {
      const int jl = owned<T>(g * V, tx);  // first of V consecutive columns
      if (vec && jl + V <= b_rows) {
        Vec16<T>::store(wrow + jl, v + g * V);
      } else {
#pragma unroll
        for (int u = 0; u < V; ++u)
          if (jl + u < b_rows) wrow[jl + u] = v[g * V + u];
      }
    }
  }
}

// out[i, :] (+)= sum_k w[i, k] b[k, :] for i < mb: w row-major [mb, nc], b and out row-major
// with row stride d. Block (bx, by) owns the output tile of rows [bx BM, ...) and features
// [by BN, ...) and reduces over all nc: each output element is written by one thread, once.
// accumulate = false overwrites out (the first product of a row block).
template <typename T>
__global__ void __launch_bounds__(kTileThreads)
    product_kernel(const T* __restrict__ w, int mb, int nc, const T* __restrict__ b, int64_t d,
                   T* __restrict__ out, bool accumulate) {
  constexpr int TM = Tile<T>::TM;
  constexpr int TN = Tile<T>::TN;
  constexpr int BM = 16 * TM;
  constexpr int BN = 16 * TN;
  constexpr int BK = kTileBK;
  constexpr int V = Vec16<T>::n;
  constexpr int LOADS_A = BM * BK / kTileThreads;
  constexpr int LOADS_B = BK * BN / kTileThreads;
  static_assert(BM * BK % kTileThreads == 0 && BK * BN % kTileThreads == 0, "even tile loads");
  static_assert(TM % V == 0 && TN % V == 0 && (BM + kTilePad) % V == 0 &&
                    (BN + kTilePad) % V == 0,
                "16-byte aligned operand loads");

  __shared__ __align__(16) T as[BK][BM + kTilePad];  // as[k][i] = w[i0 + i, k0 + k]
  __shared__ __align__(16) T bs[BK][BN + kTilePad];  // bs[k][n] = b[k0 + k, n0 + n]

  const int tid = threadIdx.x;
  const int tx = tid & 15;
  const int ty = tid >> 4;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;

  T ra[LOADS_A], rb[LOADS_B];
  // A element e: (row e / BK, k e % BK); B element e: (k e / BN, feature e % BN): consecutive
  // threads read consecutive addresses of a row.
  auto load_stage = [&](int k0) {
#pragma unroll
    for (int l = 0; l < LOADS_A; ++l) {
      const int e = tid + l * kTileThreads;
      const int64_t i = i0 + e / BK;
      const int k = k0 + e % BK;
      ra[l] = (i < mb && k < nc) ? w[i * nc + k] : T(0);
    }
#pragma unroll
    for (int l = 0; l < LOADS_B; ++l) {
      const int e = tid + l * kTileThreads;
      const int k = k0 + e / BN;
      const int64_t f = n0 + e % BN;
      rb[l] = (k < nc && f < d) ? b[k * d + f] : T(0);
    }
  };

  T acc[TM][TN];
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c) acc[r][c] = T(0);

  load_stage(0);
  for (int k0 = 0; k0 < nc; k0 += BK) {
#pragma unroll
    for (int l = 0; l < LOADS_A; ++l) {
      const int e = tid + l * kTileThreads;
      as[e % BK][e / BK] = ra[l];
    }
#pragma unroll
    for (int l = 0; l < LOADS_B; ++l) {
      const int e = tid + l * kTileThreads;
      bs[e / BN][e % BN] = rb[l];
    }
    __syncthreads();
    if (k0 + BK < nc) load_stage(k0 + BK);
#pragma unroll
    for (int p = 0; p < BK; ++p) {
      T av[TM], bv[TN];
#pragma unroll
      for (int g = 0; g < TM / V; ++g) Vec16<T>::load(&as[p][g * 16 * V + ty * V], av + g * V);
#pragma unroll
      for (int g = 0; g < TN / V; ++g) Vec16<T>::load(&bs[p][g * 16 * V + tx * V], bv + g * V);
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TN; ++c) acc[r][c] = fma_rn(av[r], bv[c], acc[r][c]);
    }
    __syncthreads();  // the next stage overwrites as / bs
  }

#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = i0 + owned<T>(r, ty);
    if (i >= mb) continue;
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      const int64_t f = n0 + owned<T>(c, tx);
      if (f < d) {
        T* o = out + i * d + f;
        *o = accumulate ? *o + acc[r][c] : acc[r][c];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// host helpers

constexpr int64_t kMaxSplits = 65535;             // forward grid's y dimension
// product grid's y dimension is ceil(d / (16 TN)), 16 TN = 32 for double, and gridDim.y is at
// most 65535: 2^21 features (65536 double tiles) failed at launch, so the bound is 65535 * 32.
constexpr int64_t kMaxFeatures = int64_t(65535) * 32;
constexpr int64_t kMaxRows = int64_t(1) << 30;    // row offsets within a block stay in int

template <typename T>
T checked_inv_tau(double tau) {
  MF_CHECK(std::isfinite(tau) && tau > 0, "tau must be positive and finite");
  const double inv = 1.0 / tau;
  MF_CHECK(inv <= static_cast<double>(std::numeric_limits<T>::max()),
           "tau is too small for the dtype (1 / tau overflows)");
  return static_cast<T>(inv);
}

// One side of the problem: the rows of x against [x (diagonal excluded) | z].
template <typename T>
struct Side {
  const T* x;
  const T* z;
  const T* l_self;   // the side's own LSE (null: the side has none, it only receives gradient)
  const T* g_self;
  const T* l_other;  // the other side's LSE (null: not symmetric)
  const T* g_other;
  T* out;            // forward: the side's LSE; backward: its gradient
};

}  // namespace

// Forward (see the top of the file); the contract is in contrastive.cuh.
template <typename T>
void contrastive_forward(const T* n1, const T* n2, int64_t n, int64_t d, double tau,
                         int64_t block_rows, int64_t splits, T* scratch, int64_t scratch_elems,
                         T* lse1, T* lse2, int device, cudaStream_t stream) {
  MF_CHECK(n >= 0 && d >= 0, "shapes must be non-negative");
  const T inv_tau = checked_inv_tau<T>(tau);
  if (n == 0) return;
  MF_CHECK(d == 0 || (n1 != nullptr && n2 != nullptr), "input pointers are null");
  MF_CHECK(lse1 != nullptr, "lse1 pointer is null");
  MF_CHECK(block_rows >= 1 && splits >= 1, "block_rows and splits must be positive");
  constexpr int64_t edge = score_edge<T>();
  const int64_t rows = std::min<int64_t>({block_rows, n, kMaxRows});
  const int64_t col_tiles = 2 * ((n + edge - 1) / edge);
  const int64_t used_splits = std::min<int64_t>({splits, col_tiles, kMaxSplits});
  MF_CHECK(scratch != nullptr && scratch_elems / 2 / rows >= used_splits,
           "scratch must hold 2 * min(block_rows, n) * splits elements");

  MF_CUDA_CHECK(cudaSetDevice(device));
  (void)cudaGetLastError();  // a stale launch error of an earlier call is not ours to report

  const Side<T> sides[2] = {{n1, n2, nullptr, nullptr, nullptr, nullptr, lse1},
                            {n2, n1, nullptr, nullptr, nullptr, nullptr, lse2}};
  const T tau_t = static_cast<T>(tau);
  for (const Side<T>& side : sides) {
    if (side.out == nullptr) continue;  // not symmetric: no lse2
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
      const int mb = static_cast<int>(std::min(rows, n - r0));
      T* pmax = scratch;
      T* psum = scratch + used_splits * mb;
      const dim3 grid(static_cast<unsigned>((mb + edge - 1) / edge),
                      static_cast<unsigned>(used_splits));
      lse_partial_kernel<T><<<grid, kTileThreads, 0, stream>>>(side.x, side.z, n, d, r0, mb,
                                                               inv_tau, pmax, psum);
      MF_CUDA_CHECK_LAUNCH("lse_partial_kernel");
      const unsigned merge_blocks = static_cast<unsigned>((mb + kMergeThreads - 1) / kMergeThreads);
      lse_merge_kernel<T><<<merge_blocks, kMergeThreads, 0, stream>>>(
          pmax, psum, static_cast<int>(used_splits), mb, r0, tau_t, inv_tau, side.out);
      MF_CUDA_CHECK_LAUNCH("lse_merge_kernel");
    }
  }
}

// Backward (see the top of the file); the contract is in contrastive.cuh.
template <typename T>
void contrastive_backward(const T* n1, const T* n2, int64_t n, int64_t d, double tau,
                          const T* lse1, const T* lse2, const T* g1, const T* g2,
                          int64_t block_rows, int64_t chunk, T* scratch, int64_t scratch_elems,
                          T* grad1, T* grad2, int device, cudaStream_t stream) {
  MF_CHECK(n >= 0 && d >= 0, "shapes must be non-negative");
  const T inv_tau = checked_inv_tau<T>(tau);
  if (n == 0 || d == 0) return;  // the gradients are empty
  MF_CHECK(n1 != nullptr && n2 != nullptr, "input pointers are null");
  MF_CHECK(lse1 != nullptr && g1 != nullptr, "lse1 and g1 pointers are null");
  MF_CHECK((lse2 == nullptr) == (g2 == nullptr), "lse2 and g2 must be given together");
  MF_CHECK(grad1 != nullptr && grad2 != nullptr, "gradient pointers are null");
  MF_CHECK(d <= kMaxFeatures, "at most 65535 * 32 features");
  MF_CHECK(block_rows >= 1 && chunk >= 1, "block_rows and chunk must be positive");
  const int64_t rows = std::min<int64_t>({block_rows, n, kMaxRows});
  const int64_t cols = std::min<int64_t>({chunk, n, kMaxChunk});
  MF_CHECK(scratch != nullptr && scratch_elems / rows >= cols,
           "scratch must hold min(block_rows, n) * min(chunk, n) elements");

  MF_CUDA_CHECK(cudaSetDevice(device));
  (void)cudaGetLastError();  // a stale launch error of an earlier call is not ours to report

  constexpr int64_t edge = score_edge<T>();
  constexpr int64_t prod_rows = 16 * Tile<T>::TM;
  constexpr int64_t prod_cols = 16 * Tile<T>::TN;
  const Side<T> sides[2] = {{n1, n2, lse1, g1, lse2, g2, grad1},
                            {n2, n1, lse2, g2, lse1, g1, grad2}};
  for (const Side<T>& side : sides) {
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
      const int mb = static_cast<int>(std::min(rows, n - r0));
      const dim3 prod_grid(static_cast<unsigned>((mb + prod_rows - 1) / prod_rows),
                           static_cast<unsigned>((d + prod_cols - 1) / prod_cols));
      bool accumulate = false;  // the first product of the row block overwrites it
      for (int64_t c0 = 0; c0 < n; c0 += cols) {
        const int nc = static_cast<int>(std::min(cols, n - c0));
        const dim3 grid(static_cast<unsigned>((mb + edge - 1) / edge),
                        static_cast<unsigned>((nc + edge - 1) / edge));
        for (int part = 0; part < 2; ++part) {
          const bool self = part == 0;
          if (self && side.l_self == nullptr) continue;  // side 2, not symmetric: no A_self
          const T* y = self ? side.x : side.z;
          weight_tile_kernel<T><<<grid, kTileThreads, 0, stream>>>(
              side.x, y, d, r0, mb, c0, nc, self, side.l_self, side.g_self,
              self ? side.l_self : side.l_other, self ? side.g_self : side.g_other, inv_tau,
              scratch);
          MF_CUDA_CHECK_LAUNCH("weight_tile_kernel");
          product_kernel<T><<<prod_grid, kTileThreads, 0, stream>>>(
              scratch, mb, nc, y + c0 * d, d, side.out + r0 * d, accumulate);
          MF_CUDA_CHECK_LAUNCH("product_kernel");
          accumulate = true;
        }
      }
    }
  }
}

template void contrastive_forward<float>(const float*, const float*, int64_t, int64_t, double,
                                         int64_t, int64_t, float*, int64_t, float*, float*, int,
                                         cudaStream_t);
template void contrastive_forward<double>(const double*, const double*, int64_t, int64_t, double,
                                          int64_t, int64_t, double*, int64_t, double*, double*,
                                          int, cudaStream_t);
template void contrastive_backward<float>(const float*, const float*, int64_t, int64_t, double,
                                          const float*, const float*, const float*, const float*,
                                          int64_t, int64_t, float*, int64_t, float*, float*, int,
                                          cudaStream_t);
template void contrastive_backward<double>(const double*, const double*, int64_t, int64_t,
                                           double, const double*, const double*, const double*,
                                           const double*, int64_t, int64_t, double*, int64_t,
                                           double*, double*, int, cudaStream_t);

}  // namespace cuda
}  // namespace micro_fast
