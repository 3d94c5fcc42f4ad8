// Blocked top-k inner-product search on the GPU.
//
// The host launcher walks the problem in (row block x key chunk) steps, so nothing of size M x N
// is ever allocated: per step, on one stream,
//
//   1. similarity_tile_kernel  S[mb, nc] = Q[r0:r0+mb] K[c0:c0+nc]^T, the shared-memory tiled NT
//      GEMM of tile_gemm.cuh (fp32 accumulation for float, fp64 for double) into the caller's
//      scratch buffer;
//   2. select_kernel           one thread block per query row merges that row of S into the row's
//      running k-best list, which lives in the output arrays themselves.
//
// The running list of a row is kept sorted best-first (value descending, then key index
// ascending: a strict total order, so the result does not depend on the visiting order). The
// select kernel reads the row of S in sub-chunks of kSelCap entries; an entry survives when it
// is admissible (not -inf, not NaN, not excluded) and, once the list holds k entries, better
// than the current k-th. Survivors are compacted into shared memory (warp-aggregated atomics),
// bitonic-sorted there, and merged into the list in place with a merge path (co-rank binary
// search per thread segment), highest positions first so that no entry is overwritten before it
// has been read. For small k almost every sub-chunk is rejected by the threshold test alone;
// for k up to N the same code stays correct (it then merges long lists, which is slower).
// Excluded (row, key) pairs are overwritten with -inf in S before the scan, which is exactly how
// the torch reference treats them. On the last key chunk the list tail [count, k) is padded with
// (-inf, -1).
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "cuda/common.cuh"
#include "cuda/tile_gemm.cuh"
#include "cuda/topk_similarity.cuh"

namespace micro_fast {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------------------------
// helpers

// The order of the result: a larger value wins, on equal values the smaller key index wins.
template <typename T>
__device__ __forceinline__ bool better(T v, int64_t j, T w, int64_t i) {
  return v > w || (v == w && j < i);
}

// ---------------------------------------------------------------------------------------------
// 1. similarity tile: S = Q_blk K_chunk^T

// q: the block's first query row, keys: the chunk's first key row, both row-major with row
// stride d. Writes s[i * nc + j] for i < mb, j < nc: each thread block computes its score tile
// with the shared NT GEMM (tile_gemm.cuh) and stores it; the stores of a half-warp are
// contiguous runs.
template <typename T>
__global__ void __launch_bounds__(kTileThreads, kTileMinBlocks)
    similarity_tile_kernel(const T* __restrict__ q, const T* __restrict__ keys, int64_t d, int mb,
                           int nc, T* __restrict__ s) {
  constexpr int TM = Tile<T>::TM;
  __shared__ ScoreSmem<T> sm;
  T acc[TM][TM];
  const ScoreTile t = grid_score_tile<T>(q, mb, keys, nc, d, sm, acc);

  const int tx = threadIdx.x & 15;
  const int ty = threadIdx.x >> 4;
#pragma unroll
  for (int r = 0; r < TM; ++r) {
    const int il = owned<T>(r, ty);
    if (il >= t.a_rows) continue;
    T* srow = s + (t.i0 + il) * nc + t.j0;
#pragma unroll
    for (int c = 0; c < TM; ++c) {
      const int jl = owned<T>(c, tx);
      if (jl < t.b_rows) srow[jl] = acc[r][c];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 2. per-row selection: merge one row of S into the row's running k-best list

constexpr int kSelThreads = 256;
constexpr int kSelCap = 2048;     // entries of S per sub-chunk (power of two, sort capacity)
constexpr int kMergeItems = 4;    // consecutive merged positions per thread
static_assert((kSelCap & (kSelCap - 1)) == 0, "kSelCap must be a power of two");
static_assert(kSelCap % kSelThreads == 0, "sub-chunk scan must be uniform");

// Block b handles query row r0 + b of the current row block against keys [c0, c0 + nc).
//   s:       the row block's similarity tile [mb, nc] (row b is modified: excluded -> -inf)
//   counts:  entries held by each row's list so far (row-block local)
//   out_*:   [m, k] running lists, sorted best-first in [0, counts[b]), finished (padded) when
//            last_chunk is set.
template <typename T>
__global__ void __launch_bounds__(kSelThreads)
    select_kernel(T* s, int nc, int64_t r0, int64_t c0, int k, bool last_chunk,
                  const int64_t* __restrict__ ex_indptr, const int64_t* __restrict__ ex_indices,
                  int32_t* __restrict__ counts, T* out_values, int64_t* out_indices) {
  __shared__ T sv[kSelCap];    // survivors' values
  __shared__ int sj[kSelCap];  // survivors' key offsets from c0
  __shared__ int s_count[2];   // survivor counters, alternating between sub-chunks
  __shared__ int s_start;      // first list position a merge changes

  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int64_t row = blockIdx.x;
  const int64_t grow = r0 + row;
  T* srow = s + row * nc;
  T* lv = out_values + grow * k;
  int64_t* li = out_indices + grow * k;
  const T ninf = neg_inf<T>();

  // Excluded pairs of this row that fall in [c0, c0 + nc) become -inf (never admissible).
  if (ex_indptr != nullptr) {
    const int64_t lo = ex_indptr[grow];
    const int64_t hi = ex_indptr[grow + 1];
    int64_t a = lo, b = hi;  // first column >= c0
    while (a < b) {
      const int64_t mid = a + ((b - a) >> 1);
      if (ex_indices[mid] < c0) a = mid + 1; else b = mid;
    }
    for (int64_t e = a + tid; e < hi; e += kSelThreads) {
      const int64_t col = ex_indices[e];
      if (col >= c0 + nc) break;
      if (col >= c0) srow[col - c0] = ninf;
    }
  }
  if (tid == 0) {
    s_count[0] = 0;
    s_count[1] = 0;
  }
  int cnt = counts[row];  // identical in every thread, updated identically below
  __syncthreads();        // exclusion writes and counter resets are visible

  int buf = 0;
  for (int s0 = 0; s0 < nc; s0 += kSelCap) {
    const int sn = min(kSelCap, nc - s0);
    const bool full = cnt >= k;
    T tv = ninf;
    int64_t ti = 0;
    if (full) {
      tv = lv[k - 1];
      ti = li[k - 1];
    }

    // --- filter and compact the survivors into shared memory
    for (int base = 0; base < sn; base += kSelThreads) {  // uniform trip count: full-warp ballot
      const int j = base + tid;
      T v = ninf;
      bool ok = false;
      if (j < sn) {
        v = srow[s0 + j];
        ok = v > ninf && (!full || better(v, c0 + s0 + j, tv, ti));  // NaN fails v > ninf
      }
      const unsigned mask = __ballot_sync(0xffffffffu, ok);
      if (mask != 0u) {
        int wbase = 0;
        if (lane == 0) wbase = atomicAdd(&s_count[buf], __popc(mask));
        wbase = __shfl_sync(0xffffffffu, wbase, 0);
        if (ok) {
          const int pos = wbase + __popc(mask & ((1u << lane) - 1u));
          sv[pos] = v;
          sj[pos] = s0 + j;
        }
      }
    }
    __syncthreads();
    const int ns = s_count[buf];
    if (tid == 0) s_count[buf ^ 1] = 0;  // its last readers passed the barrier above
    buf ^= 1;
    __syncthreads();  // the reset is visible before the next sub-chunk counts into it
    if (ns == 0) continue;

    // --- bitonic sort of the survivors, best first; padding sorts last
    int pw = 1;
    while (pw < ns) pw <<= 1;
    for (int i = ns + tid; i < pw; i += kSelThreads) {
      sv[i] = ninf;
      sj[i] = INT_MAX;
    }
    __syncthreads();
    for (int size = 2; size <= pw; size <<= 1) {
      for (int stride = size >> 1; stride > 0; stride >>= 1) {
        for (int t = tid; t < (pw >> 1); t += kSelThreads) {
          const int lo = 2 * stride * (t / stride) + (t % stride);
          const int hi = lo + stride;
          const bool best_first = (lo & size) == 0;
          const T vlo = sv[lo], vhi = sv[hi];
          const int jlo = sj[lo], jhi = sj[hi];
          const bool hi_better = better(vhi, static_cast<int64_t>(jhi), vlo,
                                        static_cast<int64_t>(jlo));
          // swap when the pair is out of this subsequence's direction (keys are unique)
          if (hi_better == best_first) {
            sv[lo] = vhi;
            sv[hi] = vlo;
            sj[lo] = jhi;
            sj[hi] = jlo;
          }
        }
        __syncthreads();
      }
    }

    // --- merge list[0, cnt) with survivors[0, ns) into list[0, new_cnt)
    const int new_cnt = ns < k - cnt ? cnt + ns : k;  // min(k, cnt + ns) without overflow
    if (tid == 0) {  // positions before the first one the best survivor beats stay as they are
      const T v0 = sv[0];
      const int64_t j0 = c0 + sj[0];
      int a = 0, b = cnt;
      while (a < b) {
        const int mid = a + ((b - a) >> 1);
        if (better(lv[mid], li[mid], v0, j0)) a = mid + 1; else b = mid;
      }
      s_start = a;
    }
    __syncthreads();
    const int start = s_start;
    // Tiles of positions, highest first: a merged position p only reads list entries at
    // indices <= p, and every tile reads before it writes (barrier in between), so the merge
    // can be done in place.
    constexpr int kSpan = kSelThreads * kMergeItems;
    for (int tile_hi = new_cnt; tile_hi > start;) {
      const int tile_lo = max(start, tile_hi - kSpan);
      const int p0 = tile_lo + tid * kMergeItems;
      const int p1 = min(p0 + kMergeItems, tile_hi);
      T ov[kMergeItems];
      int64_t oi[kMergeItems];
      if (p0 < p1) {
        // co-rank: how many of the first p0 merged entries come from the list
        int a_lo = max(0, p0 - ns), a_hi = min(p0, cnt);
        while (a_lo < a_hi) {
          const int a = a_lo + ((a_hi - a_lo) >> 1);
          const int b = p0 - a;  // 1 <= b <= ns here
          if (better(lv[a], li[a], sv[b - 1], c0 + sj[b - 1])) a_lo = a + 1; else a_hi = a;
        }
        int a = a_lo, b = p0 - a_lo;
#pragma unroll
        for (int t = 0; t < kMergeItems; ++t) {
          if (p0 + t < p1) {
            bool take_list;
            if (a >= cnt) take_list = false;
            else if (b >= ns) take_list = true;
            else take_list = better(lv[a], li[a], sv[b], c0 + sj[b]);
            if (take_list) {
              ov[t] = lv[a];
              oi[t] = li[a];
              ++a;
            } else {
              ov[t] = sv[b];
              oi[t] = c0 + sj[b];
              ++b;
            }
          }
        }
      }
      __syncthreads();  // every read of this tile happened
      if (p0 < p1) {
#pragma unroll
        for (int t = 0; t < kMergeItems; ++t) {
          if (p0 + t < p1) {
            lv[p0 + t] = ov[t];
            li[p0 + t] = oi[t];
          }
        }
      }
      __syncthreads();  // the writes are visible to the next tile / sub-chunk
      tile_hi = tile_lo;
    }
    cnt = new_cnt;
  }

  if (last_chunk) {
    for (int64_t p = cnt + tid; p < k; p += kSelThreads) {
      lv[p] = ninf;
      li[p] = -1;
    }
  } else if (tid == 0) {
    counts[row] = cnt;
  }
}

constexpr int64_t kMaxK = int64_t(1) << 30;      // list positions (+ a merge tile) stay in int

}  // namespace

template <typename T>
void topk_similarity(const T* queries, int64_t m, const T* keys, int64_t n, int64_t d, int64_t k,
                     const int64_t* exclude_indptr, const int64_t* exclude_indices,
                     int64_t block_rows, int64_t chunk, T* scratch, int64_t scratch_elems,
                     int32_t* counts, int64_t counts_elems, T* out_values, int64_t* out_indices,
                     int device, cudaStream_t stream) {
  if (keys == nullptr) {
    keys = queries;
    n = m;
  }
  MF_CHECK(m >= 0 && n >= 0 && d >= 0, "shapes must be non-negative");
  if (m == 0) return;
  MF_CHECK(n > 0, "keys must be non-empty");
  MF_CHECK(k >= 1 && k <= n, "k must be in [1, number of keys]");
  MF_CHECK(k <= kMaxK, "k must be at most 2^30");
  MF_CHECK(d == 0 || queries != nullptr, "queries pointer is null");
  MF_CHECK(out_values != nullptr && out_indices != nullptr, "output pointers are null");
  MF_CHECK((exclude_indptr == nullptr) == (exclude_indices == nullptr),
           "exclude: indptr and indices must be given together");
  MF_CHECK(block_rows >= 1 && chunk >= 1, "block_rows and chunk must be positive");
  const int64_t rows = std::min<int64_t>({block_rows, m, INT_MAX});
  const int64_t cols = std::min<int64_t>({chunk, n, kMaxChunk});
  MF_CHECK(scratch != nullptr && scratch_elems >= rows * cols,
           "scratch must hold min(block_rows, m) * min(chunk, n) elements");
  MF_CHECK(counts != nullptr && counts_elems >= rows,
           "counts must hold min(block_rows, m) entries");

  MF_CUDA_CHECK(cudaSetDevice(device));
  (void)cudaGetLastError();  // a stale launch error of an earlier call is not ours to report

  constexpr int edge = score_edge<T>();
  for (int64_t r0 = 0; r0 < m; r0 += rows) {
    const int mb = static_cast<int>(std::min(rows, m - r0));
    MF_CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(int32_t) * mb, stream));
    for (int64_t c0 = 0; c0 < n; c0 += cols) {
      const int nc = static_cast<int>(std::min(cols, n - c0));
      const dim3 grid(static_cast<unsigned>((mb + edge - 1) / edge),
                      static_cast<unsigned>((nc + edge - 1) / edge));
      similarity_tile_kernel<T><<<grid, kTileThreads, 0, stream>>>(queries + r0 * d,
                                                                   keys + c0 * d, d, mb, nc,
                                                                   scratch);
      MF_CUDA_CHECK_LAUNCH("similarity_tile_kernel");
      const bool last = c0 + nc >= n;
      select_kernel<T><<<static_cast<unsigned>(mb), kSelThreads, 0, stream>>>(
          scratch, nc, r0, c0, static_cast<int>(k), last, exclude_indptr, exclude_indices, counts,
          out_values, out_indices);
      MF_CUDA_CHECK_LAUNCH("select_kernel");
    }
  }
}

template void topk_similarity<float>(const float*, int64_t, const float*, int64_t, int64_t,
                                     int64_t, const int64_t*, const int64_t*, int64_t, int64_t,
                                     float*, int64_t, int32_t*, int64_t, float*, int64_t*, int,
                                     cudaStream_t);
template void topk_similarity<double>(const double*, int64_t, const double*, int64_t, int64_t,
                                      int64_t, const int64_t*, const int64_t*, int64_t, int64_t,
                                      double*, int64_t, int32_t*, int64_t, double*, int64_t*, int,
                                      cudaStream_t);

}  // namespace cuda
}  // namespace micro_fast
