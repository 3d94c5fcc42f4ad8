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
// forward runs one code path per side.
//
// Backward: the gradient of L = sum_i g1_i lse1_i (+ sum_j g2_j lse2_j). With
// p_ij = e^{s11_ij/tau - lse1_i} and q_ij = e^{s12_ij/tau - lse1_i}, d lse1_i =
// sum_{j != i} p_ij d s11_ij / tau + sum_j q_ij d s12_ij / tau, where
// d s11_ij = <d n1_i, n1_j> + <n1_i, d n1_j> and d s12_ij = <d n1_i, n2_j> + <n1_i, d n2_j>
// (likewise for lse2 with s22 and s21 = s12^T). Collecting the coefficient of each d n1_a and
// d n2_b, and using the symmetry of s11 and s22:
//
//   grad_n1 = A11 n1 + W12 n2,   grad_n2 = A22 n2 + W12^T n1,
//   A11[a, b] = (g1_a e^{s11_ab/tau - lse1_a} + g1_b e^{s11_ab/tau - lse1_b}) / tau, 0 for a = b,
//   A22[a, b] = the same with (s22, lse2, g2)                     (symmetric only, else A22 = 0)
//   W12[a, b] = (g1_a e^{s12_ab/tau - lse1_a} + g2_b e^{s12_ab/tau - lse2_b}) / tau
//                                                  (second term only when symmetric)
//
// A11 and A22 are symmetric, so only their upper triangle of tiles is computed; W12 is computed
// once and used for both gradients. Multiply-adds (N = n): W12 tiles N^2 d plus its two
// products 2 N^2 d; per self part about N^2 d / 2 each for the weights, the direct and the
// transposed product (N chunk d / 2 more for the diagonal chunks): about 6 N^2 d in all when
// symmetric, 4.5 N^2 d when not (the old per-side scheme did 8 N^2 d and 6 N^2 d).
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
//   backward: grad1 and grad2 are zeroed (cudaMemsetAsync), then accumulated by
//     cross part, per row block [r0, r0 + mb) of n1 and column chunk [c0, c0 + nc) of n2:
//       weight_tile_kernel  scratch[mb, nc] = W12 of the tile: the same NT GEMM with an
//                           elementwise epilogue;
//       product_kernel      grad1[r0:r0+mb] += scratch @ n2[c0:c0+nc] (shared-memory NN GEMM);
//       product_kernel      grad2[c0:c0+nc] += scratch^T @ n1[r0:r0+mb] (its transposed form);
//       split_reduce_kernel after a split product (below): out += its slices' partials.
//     self part of each side with an LSE (x = n1, or n2 when symmetric), per column chunk
//     [c0, c0 + nc) and row block [a0, a0 + ma) of the rows [0, c0 + nc) (upper triangle):
//       weight_tile_kernel  scratch[ma, nc] = A_self of the tile (diagonal zeroed);
//       product_kernel      out[a0:a0+ma] += scratch @ x[c0:c0+nc];
//       product_kernel      out[c0:c0+nc] += scratch[0:k]^T @ x[a0:a0+k], k = clamp(c0 - a0,
//                           0, ma): the rows before the chunk (see the launcher for the proof).
//     Split-K: at d = 64 a product has only ceil(rows / 128) output tiles (float), a fraction
//     of the SMs, so a launch with fewer than 2 thread blocks per SM splits its reduction (K)
//     over grid z: slice z reduces k in [z ks, min((z + 1) ks, K)) and overwrites its partial
//     [out rows, d] in the partial area of the scratch (after the weights), then
//     split_reduce_kernel adds the slices to out in slice order z = 0, 1, ... (splits: the
//     fewest giving 2 blocks per SM, at most 32, K / splits >= 256, limited by the partial
//     area; unsplit launches accumulate into out directly).
//     Each output element of a product (or of a slice's partial) is owned by one thread block,
//     the slices are summed in a fixed order, and every launch is ordered on the stream, so no
//     atomics are used and the result is deterministic (bitwise, for a given GPU's SM count,
//     which decides the splits).
//
// Everything is enqueued on one stream; the score matrices exist only as register tiles
// (forward) or as one [block_rows, chunk] scratch tile at a time (backward, plus the split-K
// partials of one product at a time).
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
//
// The 16 lanes tx of a half-warp share a thread's TM rows, and after each butterfly they all
// hold the same tile maximum and sum; so the running (max, sum) of row r lives in one lane
// only, tx = r, and reaches the others by one shuffle per tile: 2 registers where a copy per
// lane took 2 TM, which keeps the kernel within two blocks per SM (128 registers).
// Two blocks per SM on every architecture: sm_80 needs the bound for it (129 registers without),
// while on sm_90 the kernel takes 128 registers unbounded and spills under the bound.
// (An explicit minimum of one block gave 145 registers on sm_90: the bound is left out there.)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MF_LSE_BOUNDS __launch_bounds__(kTileThreads)
#else
#define MF_LSE_BOUNDS __launch_bounds__(kTileThreads, kTileMinBlocks)
#endif
template <typename T>
__global__ void MF_LSE_BOUNDS
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

  const int half = threadIdx.x & 16;  // the first lane of this thread's half-warp
  T own_m = ninf;  // lane tx < TM: the running maximum and sum of its row r = tx
  T own_s = T(0);

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
      const T run_m = __shfl_sync(0xffffffffu, own_m, half + r);
      const T new_m = max_nan(run_m, tmax);
      T ps = T(0);
      if (new_m != ninf) {  // else every score seen so far is excluded: the sum stays 0
#pragma unroll
        for (int c = 0; c < TM; ++c) ps += dev_exp((acc[r][c] - new_m) * inv_tau);
      }
#pragma unroll
      for (int off = 1; off < 16; off <<= 1) ps += __shfl_xor_sync(0xffffffffu, ps, off);
      if (tx == r) {
        const T scale = run_m == new_m ? T(1) : dev_exp((run_m - new_m) * inv_tau);
        own_s = fma_rn(own_s, scale, ps);
        own_m = new_m;
      }
    }
  }

  if (tx < TM) {
    const int64_t il = i0 + owned<T>(tx, ty);
    if (il < mb) {
      const int64_t o = static_cast<int64_t>(blockIdx.y) * mb + il;
      pmax[o] = own_m;
      psum[o] = own_s;
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
// a term dropped when its l pointer is null, 0 where i == j when `self` (y is x). The columns'
// (l, g) pairs are staged in the shared buffers the product is done with, and a row's pair is
// read when its row is written: fewer live registers next to the accumulator tile, so two
// blocks fit an SM.
template <typename T>
__global__ void __launch_bounds__(kTileThreads, kTileMinBlocks)
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

  // score_mainloop ended with a barrier: its shared buffers are free
  T* lc = sm.b[0];  // l_col, g_col of the tile's columns
  T* gc = sm.b[1];
  static_assert(score_edge<T>() <= kTileThreads, "one thread per column");
  if (threadIdx.x < score_edge<T>()) {
    const int jl = threadIdx.x;
    const bool ok = l_col != nullptr && jl < b_rows;
    lc[jl] = ok ? l_col[c0 + j0 + jl] : T(0);
    gc[jl] = ok ? g_col[c0 + j0 + jl] : T(0);
  }
  __syncthreads();

  // A thread's columns come in runs of V consecutive ones: 16-byte stores (a half-warp writes
  // 256 contiguous bytes) when every row of w starts 16-byte aligned, else scalar ones.
  constexpr int V = Vec16<T>::n;
  const bool vec = nc % V == 0 && reinterpret_cast<std::uintptr_t>(w) % 16 == 0;
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int il = owned<T>(r, ty);
    if (il >= a_rows) continue;
    const int64_t i = r0 + i0 + il;
    const T lr = l_row != nullptr ? l_row[i] : T(0);
    const T gr = l_row != nullptr ? g_row[i] : T(0);
    T* wrow = w + (i0 + il) * nc + j0;
    T v[TM];
#pragma unroll
    for (int c = 0; c < TM; ++c) {
      const int jl = owned<T>(c, tx);
      const T s = acc[r][c];
      T e = T(0);
      if (l_row != nullptr) e = gr * dev_exp(fma_rn(s, inv_tau, -lr));
      if (l_col != nullptr) e = fma_rn(gc[jl], dev_exp(fma_rn(s, inv_tau, -lc[jl])), e);
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

// out[i, :] += sum_k A[i, k] b[k, :] for i < out_rows, over k < reduce, with A = w
// (kTransA = false: A[i, k] = w[i ldw + k], the product of a weight tile) or A = w^T
// (kTransA = true: A[i, k] = w[k ldw + i], the product over the tile's columns); b and out
// row-major with row stride d. Block (bx, by, z) owns the output tile of rows [bx BM, ...) and
// features [by BN, ...) and reduces over its K slice k in [z ks, min((z + 1) ks, reduce)) (ks a
// multiple of BK): each output element is written by one thread, once. partial == nullptr (one
// slice): accumulates into out; else overwrites its tile of slice z's partial [out_rows, d] at
// partial + z out_rows d (split_reduce_kernel then adds the slices to out). w is read in the
// layout it is stored in: consecutive threads read consecutive addresses of one of its rows.
template <typename T, bool kTransA>
__global__ void __launch_bounds__(kTileThreads)
    product_kernel(const T* __restrict__ w, int out_rows, int reduce, int ldw, int ks,
                   const T* __restrict__ b, int64_t d, T* __restrict__ out,
                   T* __restrict__ partial) {
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

  __shared__ __align__(16) T as[BK][BM + kTilePad];  // as[k][i] = A[i0 + i, k0 + k]
  __shared__ __align__(16) T bs[BK][BN + kTilePad];  // bs[k][n] = b[k0 + k, n0 + n]

  const int tid = threadIdx.x;
  const int tx = tid & 15;
  const int ty = tid >> 4;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * BN;
  const int kb = static_cast<int>(blockIdx.z) * ks;  // the slice: k in [kb, kb + kn)
  const int kn = min(ks, reduce - kb);
  w += kTransA ? static_cast<int64_t>(kb) * ldw : kb;
  b += static_cast<int64_t>(kb) * d;

  T ra[LOADS_A], rb[LOADS_B];
  // A element e of a stage: (row e / BK, k e % BK) of w, or (k e / BM, column e % BM) of w
  // transposed; B element e: (k e / BN, feature e % BN).
  auto load_stage = [&](int k0) {
#pragma unroll
    for (int l = 0; l < LOADS_A; ++l) {
      const int e = tid + l * kTileThreads;
      if constexpr (kTransA) {
        const int k = k0 + e / BM;
        const int64_t i = i0 + e % BM;
        ra[l] = (k < kn && i < out_rows) ? w[static_cast<int64_t>(k) * ldw + i] : T(0);
      } else {
        const int64_t i = i0 + e / BK;
        const int k = k0 + e % BK;
        ra[l] = (i < out_rows && k < kn) ? w[i * ldw + k] : T(0);
      }
    }
#pragma unroll
    for (int l = 0; l < LOADS_B; ++l) {
      const int e = tid + l * kTileThreads;
      const int k = k0 + e / BN;
      const int64_t f = n0 + e % BN;
      rb[l] = (k < kn && f < d) ? b[k * d + f] : T(0);
    }
  };

  T acc[TM][TN];
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TN; ++c) acc[r][c] = T(0);

  load_stage(0);
  for (int k0 = 0; k0 < kn; k0 += BK) {
#pragma unroll
    for (int l = 0; l < LOADS_A; ++l) {
      const int e = tid + l * kTileThreads;
      if constexpr (kTransA) as[e / BM][e % BM] = ra[l];
      else as[e % BK][e / BK] = ra[l];
    }
#pragma unroll
    for (int l = 0; l < LOADS_B; ++l) {
      const int e = tid + l * kTileThreads;
      bs[e / BN][e % BN] = rb[l];
    }
    __syncthreads();
    if (k0 + BK < kn) load_stage(k0 + BK);
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

  const bool split = partial != nullptr;
  T* dst = split ? partial + static_cast<int64_t>(blockIdx.z) * out_rows * d : out;
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int64_t i = i0 + owned<T>(r, ty);
    if (i >= out_rows) continue;
#pragma unroll
    for (int c = 0; c < TN; ++c) {
      const int64_t f = n0 + owned<T>(c, tx);
      if (f < d) {
        T* o = dst + i * d + f;
        *o = split ? acc[r][c] : *o + acc[r][c];
      }
    }
  }
}

constexpr int kReduceThreads = 256;

// out[e] += (p_0[e] + p_1[e] + ... + p_{splits-1}[e]) for e < elems, p_z = partial + z elems:
// the split-K slices summed in slice order (a fixed order: bitwise the same result every run).
// vec: 16-byte loads and stores (elems a multiple of V, partial and out 16-byte aligned).
template <typename T>
__global__ void __launch_bounds__(kReduceThreads)
    split_reduce_kernel(const T* __restrict__ partial, int splits, int64_t elems, bool vec,
                        T* __restrict__ out) {
  constexpr int V = Vec16<T>::n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kReduceThreads;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * kReduceThreads + threadIdx.x;
  if (vec) {
    for (int64_t q = start * V; q < elems; q += stride * V) {
      T s[V], p[V];
      Vec16<T>::load(partial + q, s);
      // (ptxas keeps this kernel at 32 registers: indexing partial + z * elems here, or
      // unrolling the scalar loop below, spilled 4 to 8 bytes)
      const T* pz = partial + q;
#pragma unroll 4
      for (int z = 1; z < splits; ++z) {
        pz += elems;
        Vec16<T>::load(pz, p);
#pragma unroll
        for (int u = 0; u < V; ++u) s[u] += p[u];
      }
      Vec16<T>::load(out + q, p);
#pragma unroll
      for (int u = 0; u < V; ++u) p[u] += s[u];
      Vec16<T>::store(out + q, p);
    }
  } else {
    for (int64_t e = start; e < elems; e += stride) {
      T s = partial[e];
      const T* pz = partial + e;
      for (int z = 1; z < splits; ++z) {
        pz += elems;
        s += *pz;
      }
      out[e] += s;
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
// Backward products' split-K: at most kMaxKSplits slices (grid z), each of at least
// kMinSliceK reduction elements on average (K / splits >= kMinSliceK).
constexpr int64_t kMaxKSplits = 32;
constexpr int64_t kMinSliceK = 256;

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
  int sms = 0;
  MF_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));

  // The split-K partials: whatever scratch lies beyond the [rows, cols] weights, from its first
  // 16-byte aligned element (none: every product runs unsplit).
  int64_t part_off = rows * cols;
  while (part_off < scratch_elems && reinterpret_cast<std::uintptr_t>(scratch + part_off) % 16)
    ++part_off;
  T* const partial = scratch + part_off;
  const int64_t partial_elems = std::max<int64_t>(0, scratch_elems - part_off);

  constexpr int64_t edge = score_edge<T>();
  constexpr int64_t prod_rows = 16 * Tile<T>::TM;
  constexpr int64_t prod_cols = 16 * Tile<T>::TN;
  const unsigned feature_tiles = static_cast<unsigned>((d + prod_cols - 1) / prod_cols);
  // scratch[ma, nc] = the weights of rows [a0, a0 + ma) of x against rows [c0, c0 + nc) of y.
  auto weights = [&](const T* x, const T* y, int64_t a0, int ma, int64_t c0, int nc, bool self,
                     const T* l_row, const T* g_row, const T* l_col, const T* g_col) {
    const dim3 grid(static_cast<unsigned>((ma + edge - 1) / edge),
                    static_cast<unsigned>((nc + edge - 1) / edge));
    weight_tile_kernel<T><<<grid, kTileThreads, 0, stream>>>(
        x, y, d, a0, ma, c0, nc, self, l_row, g_row, l_col, g_col, inv_tau, scratch);
    MF_CUDA_CHECK_LAUNCH("weight_tile_kernel");
  };
  // Split-K of a product launch with `tiles` output tiles of `out_rows` rows in all, reducing
  // over k: the fewest slices giving at least 2 thread blocks per SM, at most kMaxKSplits, at
  // least kMinSliceK reduction elements per slice on average, and slices' [out_rows, d]
  // partials that fit the partial area. Slice z reduces over [z ks, min((z + 1) ks, k)) (ks a
  // multiple of kTileBK; the last slice may be shorter; none is empty).
  struct KSplit {
    int splits;
    int ks;
  };
  auto k_split = [&](int64_t tiles, int64_t out_rows, int k) -> KSplit {
    int64_t s = (2 * static_cast<int64_t>(sms) + tiles - 1) / tiles;
    s = std::min<int64_t>({s, kMaxKSplits, k / kMinSliceK, partial_elems / (out_rows * d)});
    if (s < 2) return {1, k};
    const int64_t ks = ((k + s - 1) / s + kTileBK - 1) / kTileBK * kTileBK;
    s = (k + ks - 1) / ks;
    if (s < 2) return {1, k};
    return {static_cast<int>(s), static_cast<int>(ks)};
  };
  // out[0:elems] += the sum of the `splits` slices' partials, in slice order.
  auto reduce = [&](int splits, int64_t elems, T* out) {
    constexpr int V = Vec16<T>::n;
    const bool vec = elems % V == 0 && reinterpret_cast<std::uintptr_t>(partial) % 16 == 0 &&
                     reinterpret_cast<std::uintptr_t>(out) % 16 == 0;
    const int64_t items = vec ? elems / V : elems;
    const int64_t blocks = std::clamp<int64_t>((items + kReduceThreads - 1) / kReduceThreads, 1,
                                               int64_t(32) * sms);
    split_reduce_kernel<T><<<static_cast<unsigned>(blocks), kReduceThreads, 0, stream>>>(
        partial, splits, elems, vec, out);
    MF_CUDA_CHECK_LAUNCH("split_reduce_kernel");
  };
  // out[0:ma] += scratch[ma, nc] @ b[0:nc] or, transposed, out[0:nc] += scratch[0:ma, 0:nc]^T
  // @ b[0:ma] (the first ma rows of the [*, nc] scratch tile)
  auto product = [&](bool transposed, int ma, int nc, const T* b, T* out) {
    const int out_rows = transposed ? nc : ma;
    const int k = transposed ? ma : nc;
    const int64_t row_tiles = (out_rows + prod_rows - 1) / prod_rows;
    const KSplit sp = k_split(row_tiles * feature_tiles, out_rows, k);
    T* const part = sp.splits > 1 ? partial : nullptr;
    const dim3 grid(static_cast<unsigned>(row_tiles), feature_tiles,
                    static_cast<unsigned>(sp.splits));
    if (transposed)
      product_kernel<T, true><<<grid, kTileThreads, 0, stream>>>(scratch, out_rows, k, nc, sp.ks,
                                                                 b, d, out, part);
    else
      product_kernel<T, false><<<grid, kTileThreads, 0, stream>>>(scratch, out_rows, k, nc,
                                                                  sp.ks, b, d, out, part);
    MF_CUDA_CHECK_LAUNCH("product_kernel");
    if (part != nullptr) reduce(sp.splits, static_cast<int64_t>(out_rows) * d, out);
  };

  const size_t grad_bytes = sizeof(T) * static_cast<size_t>(n) * static_cast<size_t>(d);
  MF_CUDA_CHECK(cudaMemsetAsync(grad1, 0, grad_bytes, stream));
  MF_CUDA_CHECK(cudaMemsetAsync(grad2, 0, grad_bytes, stream));

  // Cross part, once: W = W12[r0:r0+mb, c0:c0+nc] (both terms when symmetric, no diagonal),
  // grad1[r0:r0+mb] += W n2[c0:c0+nc], grad2[c0:c0+nc] += W^T n1[r0:r0+mb].
  for (int64_t r0 = 0; r0 < n; r0 += rows) {
    const int mb = static_cast<int>(std::min(rows, n - r0));
    for (int64_t c0 = 0; c0 < n; c0 += cols) {
      const int nc = static_cast<int>(std::min(cols, n - c0));
      weights(n1, n2, r0, mb, c0, nc, false, lse1, g1, lse2, g2);
      product(false, mb, nc, n2 + c0 * d, grad1 + r0 * d);
      product(true, mb, nc, n1 + r0 * d, grad2 + c0 * d);
    }
  }

  // Self parts, upper triangle only (A = A_self of the side, symmetric, zero diagonal). For
  // each column chunk [c0, c0 + nc), the rows [0, c0 + nc) are cut into blocks [a0, a0 + ma)
  // of at most `rows` rows; W = A[a0:a0+ma, c0:c0+nc] (self: diagonal zeroed), then
  //   out[a0:a0+ma] += W x[c0:c0+nc]                                   (every row)
  //   out[c0:c0+nc] += W[0:strict]^T x[a0:a0+strict], strict = clamp(c0 - a0, 0, ma)
  // (the rows a < c0 of the block, which lie before every column of the chunk). Exact: an
  // entry (i, j) of A is visited only in the chunk holding column j, at most once there (row
  // blocks are disjoint). Take a pair a < b, b in chunk q. If a < c0(q): (a, b) is visited in
  // chunk q (a < end) in a strict row, so out[a] gets A[a,b] x[b] and, from the transposed
  // product, out[b] gets A[a,b] x[a]; (b, a) is never visited (a's chunk ends at or before
  // c0(q) <= b). If c0(q) <= a: both (a, b) and (b, a) are visited in chunk q in non-strict
  // rows, out[a] gets A[a,b] x[b] and out[b] gets A[b,a] x[a] = A[a,b] x[a]. Diagonal entries
  // are 0. So out += A x exactly, from about N^2 / 2 + N chunk / 2 weights per side.
  struct SelfPart {
    const T* x;
    const T* l;
    const T* g;
    T* out;
  };
  const SelfPart parts[2] = {{n1, lse1, g1, grad1}, {n2, lse2, g2, grad2}};
  for (const SelfPart& part : parts) {
    if (part.l == nullptr) continue;  // side 2, not symmetric: no A_self
    for (int64_t c0 = 0; c0 < n; c0 += cols) {
      const int nc = static_cast<int>(std::min(cols, n - c0));
      const int64_t end = c0 + nc;  // rows [0, end) meet the chunk in the upper triangle
      for (int64_t a0 = 0; a0 < end; a0 += rows) {
        const int ma = static_cast<int>(std::min(rows, end - a0));
        const int strict = static_cast<int>(std::clamp<int64_t>(c0 - a0, 0, ma));
        weights(part.x, part.x, a0, ma, c0, nc, true, part.l, part.g, part.l, part.g);
        product(false, ma, nc, part.x + c0 * d, part.out + a0 * d);
        if (strict > 0) product(true, strict, nc, part.x + a0 * d, part.out + c0 * d);
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
