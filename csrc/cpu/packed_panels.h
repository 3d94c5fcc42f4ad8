// Row blocks of one or more [n, d] matrices packed once per call as the tile kernel's left (A)
// and right (B) operands, chunk by chunk of the feature dimension. In an all-pairs product every
// block meets every other block, so packing per tile would repeat the same (scalar, transposing)
// copy nblocks times; packed once it costs O(n d) per call.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include "cpu/large_buffer.h"
#include "cpu/topk_tile.h"

namespace micro_fast {

// Feature-dimension chunk. Few, long chunks keep the tile kernel's register tiles in its inner
// loop (each chunk reloads and stores them); at 512 rows an NR-wide B panel still fits in L2 and
// an MR-wide A panel in L1 on every supported CPU (4096-d kNN 10% faster than at 128 on Zen 5).
constexpr int kChunk = 512;

template <typename T>
struct PackedPanels {
  int64_t n, d, block, nblocks, nviews;
  int nchunks;
  int64_t sa, sb;  // elements of one packed block of one chunk (A and B layouts)
  bool want_a;
  // not value-initialized: every element is written by the packing before it is read
  LargeBuffer<T> a, b;

  // views[v] points at [n, d] row-major data; `want_a = false` packs only the B operands
  PackedPanels(const TileKernel<T>& kern, const T* const* views, int64_t nviews_, int64_t n_,
               int64_t d_, int64_t block_, int threads, bool want_a_ = true)
      : n(n_), d(d_), block(block_), nblocks((n_ + block_ - 1) / block_), nviews(nviews_),
        nchunks(static_cast<int>((d_ + kChunk - 1) / kChunk)), want_a(want_a_) {
    const int64_t kc_max = std::min<int64_t>(d, kChunk);
    sa = (block + kern.mr - 1) / kern.mr * kern.mr * kc_max;
    sb = (block + kern.nr - 1) / kern.nr * kern.nr * kc_max;
    const int64_t jobs = int64_t(nchunks) * nviews * nblocks;
    if (want_a) a.reset(jobs * sa);
    b.reset(jobs * sb);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < jobs; ++t) {
      const int64_t blk = t % nblocks, v = (t / nblocks) % nviews, c = t / (nblocks * nviews);
      const int64_t p0 = c * kChunk, r0 = blk * block;
      const int kc = static_cast<int>(std::min<int64_t>(kChunk, d - p0));
      const int rows = static_cast<int>(std::min(block, n - r0));
      if (want_a) kern.pack_a(views[v], d, r0, rows, p0, kc, a.get() + t * sa);
      kern.pack_b(views[v], d, r0, rows, p0, kc, b.get() + t * sb);
    }
  }
  int kc(int c) const { return static_cast<int>(std::min<int64_t>(kChunk, d - int64_t(c) * kChunk)); }
  const T* pa(int c, int64_t v, int64_t blk) const {
    return a.get() + ((c * nviews + v) * nblocks + blk) * sa;
  }
  const T* pb(int c, int64_t v, int64_t blk) const {
    return b.get() + ((c * nviews + v) * nblocks + blk) * sb;
  }
};

}  // namespace micro_fast
