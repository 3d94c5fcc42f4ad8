// Device pieces shared by the tile kernels of the CUDA core (topk_similarity.cu, contrastive.cu):
// scalar helpers, the tile configuration, and the shared-memory NT GEMM main loop that computes
// one thread block's tile of scores A B^T into registers (fp32 accumulation for float, fp64 for
// double). The kernels differ only in what their epilogues do with the tile.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace micro_fast {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// helpers

template <typename T>
__device__ __forceinline__ T neg_inf();
template <>
__device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <>
__device__ __forceinline__ double neg_inf<double>() {
  return __longlong_as_double(static_cast<long long>(0xfff0000000000000ULL));
}

__device__ __forceinline__ float fma_rn(float a, float b, float c) { return __fmaf_rn(a, b, c); }
__device__ __forceinline__ double fma_rn(double a, double b, double c) { return __fma_rn(a, b, c); }

// ---------------------------------------------------------------------------------------------
// tile configuration

constexpr int kTileThreads = 256;  // 16 x 16 threads per tile kernel
// two tile blocks per SM: ptxas keeps a thread at 64K / (2 x 256) = 128 registers. The score
// tile of the top-k search and the backward's weight tile fit without spilling under this
// bound; the forward's LSE tile comes to 128 registers without it and spills under it (sm_90),
// so it goes unbounded at the same occupancy (benchmarks/cuda_resources.py)
constexpr int kTileMinBlocks = 2;
constexpr int kTileBK = 8;         // reduction elements per shared-memory stage
constexpr int kTilePad = 4;        // breaks the bank pattern of transposed stores; keeps shared
                                   // rows 16-byte aligned

template <typename T>
struct Tile;
template <>
struct Tile<float> {
  static constexpr int TM = 8;  // score tile: 8 x 8 per thread, 128 x 128 per block
  static constexpr int TN = 4;  // product tile (contrastive.cu): 8 x 4 per thread, 128 rows x
                                // 64 features
};
template <>
struct Tile<double> {
  static constexpr int TM = 4;  // 64 x 64 score tile
  static constexpr int TN = 2;  // 64 x 32 product tile
};

// Widest column chunk of a score-tile launch: the grid's y dimension, ceil(chunk / edge), stays
// in range.
constexpr int64_t kMaxChunk = int64_t(1) << 21;

// 16-byte shared-memory loads (and stores): V consecutive elements to / from registers.
template <typename T>
struct Vec16;
template <>
struct Vec16<float> {
  static constexpr int n = 4;
  static __device__ __forceinline__ void load(const float* src, float* dst) {
    const float4 v = *reinterpret_cast<const float4*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
    dst[2] = v.z;
    dst[3] = v.w;
  }
  static __device__ __forceinline__ void store(float* dst, const float* src) {
    *reinterpret_cast<float4*>(dst) = float4{src[0], src[1], src[2], src[3]};
  }
};
template <>
struct Vec16<double> {
  static constexpr int n = 2;
  static __device__ __forceinline__ void load(const double* src, double* dst) {
    const double2 v = *reinterpret_cast<const double2*>(src);
    dst[0] = v.x;
    dst[1] = v.y;
  }
  static __device__ __forceinline__ void store(double* dst, const double* src) {
    *reinterpret_cast<double2*>(dst) = double2{src[0], src[1]};
  }
};

// Rows (and columns) of a score tile per thread block.
template <typename T>
constexpr int score_edge() {
  return 16 * Tile<T>::TM;
}

// Thread t (tx or ty) owns, among a tile's rows / columns, the entries
// (r / V) * 16 V + t * V + r % V for its register index r: 16-byte shared loads that are
// broadcasts (rows) or cover consecutive banks (columns), and global stores of a half-warp that
// are contiguous runs.
template <typename T>
__device__ __forceinline__ int owned(int r, int t) {
  constexpr int V = Vec16<T>::n;
  return (r / V) * 16 * V + t * V + r % V;
}

template <typename T>
struct ScoreSmem {
  __align__(16) T a[kTileBK][score_edge<T>() + kTilePad];  // a[p][i] = A[i, p0 + p]
  __align__(16) T b[kTileBK][score_edge<T>() + kTilePad];  // b[p][j] = B[j, p0 + p]
};

// acc[r][c] = <A[owned(r, ty)], B[owned(c, tx)]> (NT product over d features, fma in T) for the
// row-major A (a_rows valid rows) and B (b_rows valid rows), row stride d; rows past the valid
// ones read as 0. Run by all kTileThreads threads of the block (tx = tid & 15, ty = tid >> 4).
// Ends with a barrier, so the shared buffers may be reused right away. The next stage's global
// loads are issued before the current stage's arithmetic (register prefetch).
template <typename T>
__device__ __forceinline__ void score_mainloop(const T* __restrict__ a, int a_rows,
                                               const T* __restrict__ b, int b_rows, int64_t d,
                                               ScoreSmem<T>& sm,
                                               T (&acc)[Tile<T>::TM][Tile<T>::TM]) {
  constexpr int TM = Tile<T>::TM;
  constexpr int BM = score_edge<T>();
  constexpr int BK = kTileBK;
  constexpr int LOADS = BM * BK / kTileThreads;
  constexpr int V = Vec16<T>::n;
  static_assert(BM * BK % kTileThreads == 0, "tile loads must divide evenly");
  static_assert(TM % V == 0 && (BM + kTilePad) % V == 0, "16-byte aligned operand loads");

  const int tid = threadIdx.x;
  const int tx = tid & 15;
  const int ty = tid >> 4;

  T ra[LOADS], rb[LOADS];
  // Element e of a stage is (row e / BK, feature e % BK): BK consecutive threads read one row's
  // BK consecutive features.
  auto load_stage = [&](int64_t p0) {
#pragma unroll
    for (int l = 0; l < LOADS; ++l) {
      const int e = tid + l * kTileThreads;
      const int r = e / BK;
      const int64_t p = p0 + e % BK;
      ra[l] = (r < a_rows && p < d) ? a[r * d + p] : T(0);
      rb[l] = (r < b_rows && p < d) ? b[r * d + p] : T(0);
    }
  };

#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < TM; ++c) acc[r][c] = T(0);

  load_stage(0);
  for (int64_t p0 = 0; p0 < d; p0 += BK) {
#pragma unroll
    for (int l = 0; l < LOADS; ++l) {
      const int e = tid + l * kTileThreads;
      sm.a[e % BK][e / BK] = ra[l];
      sm.b[e % BK][e / BK] = rb[l];
    }
    __syncthreads();
    if (p0 + BK < d) load_stage(p0 + BK);
#pragma unroll
    for (int p = 0; p < BK; ++p) {
      T av[TM], bv[TM];
#pragma unroll
      for (int g = 0; g < TM / V; ++g) {
        Vec16<T>::load(&sm.a[p][g * 16 * V + ty * V], av + g * V);
        Vec16<T>::load(&sm.b[p][g * 16 * V + tx * V], bv + g * V);
      }
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < TM; ++c) acc[r][c] = fma_rn(av[r], bv[c], acc[r][c]);
    }
    __syncthreads();  // the next stage (or tile) overwrites the shared buffers
  }
}

// Where the score tile of a thread block lies: rows [i0, i0 + a_rows) of A against rows
// [j0, j0 + b_rows) of B.
struct ScoreTile {
  int64_t i0, j0;
  int a_rows, b_rows;
};

// The score tile (blockIdx.x, blockIdx.y) of the a_total x b_total product A B^T (A, B row-major
// with row stride d; a grid of ceil(a_total / edge) x ceil(b_total / edge) blocks of
// kTileThreads threads), computed into acc by score_mainloop.
template <typename T>
__device__ __forceinline__ ScoreTile grid_score_tile(const T* __restrict__ a, int a_total,
                                                     const T* __restrict__ b, int b_total,
                                                     int64_t d, ScoreSmem<T>& sm,
                                                     T (&acc)[Tile<T>::TM][Tile<T>::TM]) {
  constexpr int BM = score_edge<T>();
  ScoreTile t;
  t.i0 = static_cast<int64_t>(blockIdx.x) * BM;  // < a_total
  t.j0 = static_cast<int64_t>(blockIdx.y) * BM;  // < b_total
  t.a_rows = static_cast<int>(std::min<int64_t>(BM, a_total - t.i0));
  t.b_rows = static_cast<int>(std::min<int64_t>(BM, b_total - t.j0));
  score_mainloop<T>(a + t.i0 * d, t.a_rows, b + t.j0 * d, t.b_rows, d, sm, acc);
  return t;
}

}  // namespace cuda
}  // namespace micro_fast
