// Blocked top-k inner-product search on the GPU.
//
// The host launcher walks the problem in (row block x key chunk) steps, so nothing of size M x N
// is ever allocated. Per step:
//
//   1. similarity_tile_kernel  S[mb, nc] = Q[r0:r0+mb] K[c0:c0+nc]^T, the shared-memory tiled NT
//      GEMM of tile_gemm.cuh (fp32 accumulation for float, fp64 for double), stored with 16-byte
//      stores into one of two score buffers of the caller's scratch;
//   2. select_kernel           one thread block per query row merges that row of S into the row's
//      running k-best list, which lives in the output arrays themselves.
//
// With two buffers the products run on the caller's stream and the selections on a second
// stream of the device, ordered by events: the product of step t + 1 (arithmetic-bound) overlaps
// the selection of step t (memory-bound), and a product waits only for the selection that last
// read its buffer. With one buffer (a single step, or a small scratch) both run on the caller's
// stream.
//
// The running list of a row is kept sorted best-first (value descending, then key index
// ascending: a strict total order, so the result does not depend on the visiting order). The
// select kernel reads the row of S in sub-chunks of kSelCap entries; an entry survives when it
// is admissible (not -inf, not NaN, not excluded) and, once the list holds k entries, better
// than the current k-th. Survivors are compacted into shared memory (warp-aggregated atomics).
// When more than max(k, kSortDirect) survive (the first sub-chunk of every row, while its list
// is not full), a radix select over order-preserving integer keys of the values (8-bit digits,
// one histogram bin per thread) finds the k-th largest survivor, and only the survivors at
// least that large are kept: the sub-chunk's top k and the ties of its k-th value, which is all
// the merged list can take from it. The rest are bitonic-sorted in shared memory and merged
// into the list in place with a merge path (co-rank binary search per thread segment), highest
// positions first so that no entry is overwritten before it has been read. For small k almost
// every later sub-chunk is rejected by the threshold test alone; for k up to N the same code
// stays correct (it then merges long lists, which is slower). Excluded (row, key) pairs are
// overwritten with -inf in S before the scan, which is exactly how the torch reference treats
// them. On the last key chunk the list tail [count, k) is padded with (-inf, -1).
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <mutex>

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
  // A thread's columns come in runs of V consecutive ones: 16-byte stores (a half-warp writes
  // 256 contiguous bytes) for a full-width tile when every row of s starts 16-byte aligned,
  // else scalar ones (two plain branches: one with a bounds test per run spilled on sm_80).
  constexpr int V = Vec16<T>::n;
  const bool vec = nc % V == 0 && reinterpret_cast<std::uintptr_t>(s) % 16 == 0;
  if (vec && t.b_rows == score_edge<T>()) {  // a full-width tile: every run is whole
#pragma unroll
    for (int r = 0; r < TM; ++r) {
      const int il = owned<T>(r, ty);
      if (il >= t.a_rows) continue;
      T* srow = s + (t.i0 + il) * nc + t.j0;
#pragma unroll
      for (int g = 0; g < TM / V; ++g)
        Vec16<T>::store(srow + owned<T>(g * V, tx), acc[r] + g * V);
    }
  } else {
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
}

// ---------------------------------------------------------------------------------------------
// 2. per-row selection: merge one row of S into the row's running k-best list

constexpr int kSelThreads = 256;
constexpr int kSelWarps = kSelThreads / 32;
constexpr int kSelCap = 2048;     // entries of S per sub-chunk (power of two, sort capacity)
constexpr int kSelPerThread = kSelCap / kSelThreads;
constexpr int kMergeItems = 4;    // consecutive merged positions per thread
constexpr int kRadixBits = 8;     // digit of one radix-select pass
constexpr int kRadixBins = 1 << kRadixBits;
// More survivors than this (and than k) are first cut to the sub-chunk's own k best by a radix
// select, so that the sort sees about k entries: the first sub-chunk of a row, whose entries
// all survive while the list is not full yet, would otherwise sort kSelCap of them.
constexpr int kSortDirect = 64;
static_assert((kSelCap & (kSelCap - 1)) == 0, "kSelCap must be a power of two");
static_assert(kSelCap % kSelThreads == 0, "sub-chunk scan must be uniform");
static_assert(kRadixBins == kSelThreads, "one radix bin per thread");

// An unsigned key in the order of the value (a larger value, a larger key) for the radix
// select. -0.0 takes the key of +0.0 because the two compare equal (the tie then goes to the
// smaller index, like any tie). Keys are only taken of admissible values, never of NaN.
template <typename T>
struct KeyOf;
template <>
struct KeyOf<float> {
  using type = uint32_t;
  static __device__ __forceinline__ uint32_t of(float v) {
    const uint32_t u = __float_as_uint(v + 0.0f);  // -0 + 0 = +0 when rounding to nearest
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
};
template <>
struct KeyOf<double> {
  using type = uint64_t;
  static __device__ __forceinline__ uint64_t of(double v) {
    const uint64_t u = static_cast<uint64_t>(__double_as_longlong(v + 0.0));
    return (u >> 63) ? ~u : (u | (uint64_t(1) << 63));
  }
};

// Shared scratch of the radix select.
struct RadixSmem {
  int hist[kRadixBins];
  int warp_sums[kSelWarps];
  int digit;
  int above;
};

// The key of the r-th largest (1 <= r <= count) of the values sv[0, count): a radix select,
// most significant digit first. Each pass counts the next digit of the keys that share the
// digits found so far, then finds the bin that holds the r-th largest from the bins' suffix
// sums (thread b owns bin b). Run by every thread of the block; returns the same key in all.
template <typename T>
__device__ typename KeyOf<T>::type radix_kth_key(const T* sv, int count, int r, RadixSmem& rs) {
  using K = typename KeyOf<T>::type;
  constexpr int kBits = 8 * static_cast<int>(sizeof(K));
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  K prefix = 0, mask = 0;
  for (int shift = kBits - kRadixBits; shift >= 0; shift -= kRadixBits) {
    rs.hist[tid] = 0;
    __syncthreads();
    for (int i = tid; i < count; i += kSelThreads) {
      const K key = KeyOf<T>::of(sv[i]);
      if ((key & mask) == prefix)
        atomicAdd(&rs.hist[static_cast<int>((key >> shift) & K(kRadixBins - 1))], 1);
    }
    __syncthreads();
    const int own = rs.hist[tid];
    int ge = own;  // keys of the prefix whose digit is >= tid: first within the warp ...
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int up = __shfl_down_sync(0xffffffffu, ge, off);
      if (lane + off < 32) ge += up;
    }
    if (lane == 0) rs.warp_sums[warp] = ge;
    __syncthreads();
    for (int w = warp + 1; w < kSelWarps; ++w) ge += rs.warp_sums[w];  // ... then the warps above
    // ge is non-increasing in the bin and ge(0) >= r > 0 = ge(kRadixBins): one bin qualifies
    if (ge >= r && ge - own < r) {
      rs.digit = tid;
      rs.above = ge - own;
    }
    __syncthreads();
    r -= rs.above;  // 1 <= r <= the keys of the extended prefix
    prefix |= static_cast<K>(rs.digit) << shift;
    mask |= static_cast<K>(kRadixBins - 1) << shift;
    // hist, warp_sums and the result are rewritten only after the next pass's first barrier,
    // which every thread reaches after these reads
  }
  return prefix;
}

// Block b handles query row r0 + b of the current row block against keys [c0, c0 + nc).
//   s:       the row block's similarity tile [mb, nc] (row b is modified: excluded -> -inf)
//   counts:  entries held by each row's list so far (row-block local)
//   out_*:   [m, k] running lists, sorted best-first in [0, counts[b]), finished (padded) when
//            last_chunk is set.
// Four blocks per SM: without the bound ptxas kept the float kernel at 40 registers and spilled
// (sm_80); the shared arrays of four blocks fit every supported architecture.
template <typename T>
__global__ void __launch_bounds__(kSelThreads, 4)
    select_kernel(T* s, int nc, int64_t r0, int64_t c0, int k, bool last_chunk,
                  const int64_t* __restrict__ ex_indptr, const int64_t* __restrict__ ex_indices,
                  int32_t* __restrict__ counts, T* out_values, int64_t* out_indices) {
  using K = typename KeyOf<T>::type;
  __shared__ T sv[kSelCap];    // survivors' values
  __shared__ int sj[kSelCap];  // survivors' key offsets from c0
  __shared__ int s_count[2];   // survivor counters, alternating between sub-chunks
  __shared__ int s_kept;       // survivors kept by the radix cut
  __shared__ int s_start;      // first list position a merge changes
  __shared__ RadixSmem rs;

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
    int ns = s_count[buf];
    if (tid == 0) {
      s_count[buf ^ 1] = 0;  // its last readers passed the barrier above
      s_kept = 0;
    }
    buf ^= 1;
    __syncthreads();  // the resets are visible before anything counts into them
    if (ns == 0) continue;

    // --- many survivors: keep only those at least as large as the k-th largest of them (all
    // of the sub-chunk's top k, plus the ties of the k-th value)
    if (ns > k && ns > kSortDirect) {
      const K cut = radix_kth_key(sv, ns, k, rs);
      T kv[kSelPerThread];
      int kj[kSelPerThread];
      bool keep[kSelPerThread];
#pragma unroll
      for (int l = 0; l < kSelPerThread; ++l) {  // read every survivor before any is moved
        const int i = tid + l * kSelThreads;
        keep[l] = i < ns && KeyOf<T>::of(sv[i]) >= cut;
        kv[l] = keep[l] ? sv[i] : ninf;
        kj[l] = keep[l] ? sj[i] : 0;
      }
      __syncthreads();
#pragma unroll
      for (int l = 0; l < kSelPerThread; ++l) {
        const unsigned mask = __ballot_sync(0xffffffffu, keep[l]);
        if (mask != 0u) {
          int wbase = 0;
          if (lane == 0) wbase = atomicAdd(&s_kept, __popc(mask));
          wbase = __shfl_sync(0xffffffffu, wbase, 0);
          if (keep[l]) {
            const int pos = wbase + __popc(mask & ((1u << lane) - 1u));
            sv[pos] = kv[l];
            sj[pos] = kj[l];
          }
        }
      }
      __syncthreads();
      ns = s_kept;  // >= k; reset by thread 0 only after the next sub-chunk's filter barrier
    }

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
          // the t-th compared pair: 2 stride (t / stride) + t % stride, stride a power of two
          const int lo = ((t & ~(stride - 1)) << 1) | (t & (stride - 1));
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
constexpr int kMaxDevices = 64;
constexpr int64_t kScratchAlign = 32;             // elements between the two score buffers

// The selection stream of a device and the events that order it against the caller's stream,
// created on first use and kept for the process (like torch's own stream pool). The mutex
// keeps the events of one call from being re-recorded by another host thread mid-call.
struct SelectStream {
  std::mutex mu;
  bool ready = false;
  cudaStream_t stream = nullptr;
  cudaEvent_t fork = nullptr, join = nullptr, scored = nullptr, selected[2] = {nullptr, nullptr};
};

SelectStream& select_stream(int device) {
  static SelectStream streams[kMaxDevices];
  return streams[device];
}

void make_ready(SelectStream& ss) {
  if (ss.ready) return;
  MF_CUDA_CHECK(cudaStreamCreateWithFlags(&ss.stream, cudaStreamNonBlocking));
  for (cudaEvent_t* e : {&ss.fork, &ss.join, &ss.scored, &ss.selected[0], &ss.selected[1]})
    MF_CUDA_CHECK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  ss.ready = true;
}

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
  MF_CHECK(device >= 0 && device < kMaxDevices, "device index out of range");
  const int64_t rows = std::min<int64_t>({block_rows, m, INT_MAX});
  const int64_t cols = std::min<int64_t>({chunk, n, kMaxChunk});
  const int64_t tile = rows * cols;
  MF_CHECK(scratch != nullptr && scratch_elems >= tile,
           "scratch must hold min(block_rows, m) * min(chunk, n) elements");
  MF_CHECK(counts != nullptr && counts_elems >= rows,
           "counts must hold min(block_rows, m) entries");

  MF_CUDA_CHECK(cudaSetDevice(device));
  (void)cudaGetLastError();  // a stale launch error of an earlier call is not ours to report

  // Two score buffers (when the scratch holds them) let the product of step t + 1 run on the
  // caller's stream while the selection of step t runs on the selection stream: the selection
  // is bound by memory and the product by arithmetic, so they share the GPU well. The second
  // buffer starts kScratchAlign elements past a multiple of them, keeping 16-byte stores.
  const int64_t second = (tile + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
  const bool overlap = scratch_elems >= second + tile && (m > rows || n > cols);
  T* buffers[2] = {scratch, overlap ? scratch + second : scratch};

  SelectStream& ss = select_stream(device);
  std::unique_lock<std::mutex> lock(ss.mu, std::defer_lock);
  cudaStream_t sel = stream;
  if (overlap) {
    lock.lock();
    make_ready(ss);
    sel = ss.stream;
    MF_CUDA_CHECK(cudaEventRecord(ss.fork, stream));  // inputs, outputs and counts are ready
    MF_CUDA_CHECK(cudaStreamWaitEvent(sel, ss.fork, 0));
  }

  constexpr int edge = score_edge<T>();
  int64_t step = 0;
  try {
    for (int64_t r0 = 0; r0 < m; r0 += rows) {
      const int mb = static_cast<int>(std::min(rows, m - r0));
      MF_CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(int32_t) * mb, sel));
      for (int64_t c0 = 0; c0 < n; c0 += cols, ++step) {
        const int nc = static_cast<int>(std::min(cols, n - c0));
        const int b = static_cast<int>(step & 1);
        T* buf = buffers[b];
        // the buffer's previous selection (step - 2) is done before the product overwrites it
        if (overlap && step >= 2) MF_CUDA_CHECK(cudaStreamWaitEvent(stream, ss.selected[b], 0));
        const dim3 grid(static_cast<unsigned>((mb + edge - 1) / edge),
                        static_cast<unsigned>((nc + edge - 1) / edge));
        similarity_tile_kernel<T><<<grid, kTileThreads, 0, stream>>>(queries + r0 * d,
                                                                     keys + c0 * d, d, mb, nc, buf);
        MF_CUDA_CHECK_LAUNCH("similarity_tile_kernel");
        if (overlap) {
          MF_CUDA_CHECK(cudaEventRecord(ss.scored, stream));
          MF_CUDA_CHECK(cudaStreamWaitEvent(sel, ss.scored, 0));
        }
        const bool last = c0 + nc >= n;
        select_kernel<T><<<static_cast<unsigned>(mb), kSelThreads, 0, sel>>>(
            buf, nc, r0, c0, static_cast<int>(k), last, exclude_indptr, exclude_indices, counts,
            out_values, out_indices);
        MF_CUDA_CHECK_LAUNCH("select_kernel");
        if (overlap) MF_CUDA_CHECK(cudaEventRecord(ss.selected[b], sel));
      }
    }
  } catch (...) {
    // a failed launch: the caller's stream still waits for what was enqueued on the selection
    // stream, so its scratch is not reused under a running kernel
    if (overlap && cudaEventRecord(ss.join, sel) == cudaSuccess)
      (void)cudaStreamWaitEvent(stream, ss.join, 0);
    throw;
  }
  if (overlap) {  // the caller's stream sees the results (and may reuse the scratch) after this
    MF_CUDA_CHECK(cudaEventRecord(ss.join, sel));
    MF_CUDA_CHECK(cudaStreamWaitEvent(stream, ss.join, 0));
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
