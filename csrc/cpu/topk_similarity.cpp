// Driver of the fused top-k similarity kernel: blocking, threading, and merging of the per-thread
// k-best lists. The arithmetic lives in the per-ISA tile kernels (topk_kernels_*.cpp).
#include "cpu/topk_similarity.h"

#include <omp.h>

#include <algorithm>
#include <limits>
#include <mutex>
#include <utility>
#include <vector>

#include "common.h"
#include "cpu/isa.h"
#include "cpu/packed_panels.h"

namespace micro_fast {
namespace {

template <typename T>
const TileKernel<T>& kernel_for() {
  return isa_kernels<T>().tile;
}

// Threshold arrays are read a whole vector at a time past the last row: pad with +inf so the
// padding never passes the filter.
constexpr int64_t kThrPad = 64;
// Private per-thread lists (symmetric mode) are used only while they stay this small.
constexpr int64_t kPrivateListBudget = int64_t(256) << 20;

template <typename T>
struct ListStore {
  std::vector<T> vals;
  std::vector<int64_t> idx;
  std::vector<int32_t> count;
  std::vector<T> thr;
  RowHeaps<T> h;

  void init(int64_t rows, int k, T* ext_vals, int64_t* ext_idx) {
    count.assign(rows, 0);
    thr.assign(rows + kThrPad, -std::numeric_limits<T>::infinity());
    std::fill(thr.begin() + rows, thr.end(), std::numeric_limits<T>::infinity());
    if (ext_vals == nullptr) {
      vals.resize(rows * k);
      idx.resize(rows * k);
      ext_vals = vals.data();
      ext_idx = idx.data();
    }
    h.vals = ext_vals;
    h.idx = ext_idx;
    h.count = count.data();
    h.thr = thr.data();
    h.k = k;
  }
};

template <typename T>
struct Geometry {
  int64_t m, n, d;
  int64_t block;   // rows (and keys) per block, a multiple of both MR and NR
  int64_t pad_a;   // rows of a packed A block
  int64_t pad_b;   // columns of a packed B block
  int nchunks;
};

// Per-thread scratch: packed A block (all chunks), partial-sum tile. The keys' B panels are
// packed once per call (PackedPanels): every row block meets every key block.
template <typename T>
struct Workspace {
  std::vector<T> a, acc;
  int64_t packed_block = -1;

  explicit Workspace(const Geometry<T>& g) {
    a.resize(g.pad_a * g.d);
    if (g.nchunks > 1) acc.resize(g.pad_a * g.pad_b);
  }
};

template <typename T>
void run_pair(const TileKernel<T>& kern, const Geometry<T>& g, Workspace<T>& w, const T* q,
              const PackedPanels<T>& keys, int64_t bi, int64_t bj, RowHeaps<T>* rows,
              RowHeaps<T>* cols, const ExcludeCSR& ex) {
  const int64_t i0 = bi * g.block, j0 = bj * g.block;
  const int mb = static_cast<int>(std::min(g.block, g.m - i0));
  const int nb = static_cast<int>(std::min(g.block, g.n - j0));
  if (w.packed_block != bi) {
    for (int c = 0; c < g.nchunks; ++c) {
      const int64_t p0 = int64_t(c) * kChunk;
      const int kc = static_cast<int>(std::min<int64_t>(kChunk, g.d - p0));
      kern.pack_a(q, g.d, i0, mb, p0, kc, w.a.data() + p0 * g.pad_a);
    }
    w.packed_block = bi;
  }
  for (int c = 0; c < g.nchunks; ++c) {
    const int64_t p0 = int64_t(c) * kChunk;
    const int kc = keys.kc(c);
    TileArgs<T> args{w.a.data() + p0 * g.pad_a,
                     keys.pb(c, 0, bj),
                     kc,
                     i0,
                     mb,
                     j0,
                     nb,
                     c == 0,
                     c == g.nchunks - 1,
                     w.acc.empty() ? nullptr : w.acc.data(),
                     static_cast<int>(g.pad_b),
                     rows,
                     cols,
                     &ex};
    kern.tile(args);
  }
}

int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

}  // namespace

template <typename T>
void topk_similarity(const T* q, int64_t m, const T* keys, int64_t n, int64_t d, int k,
                     const int64_t* exclude_indptr, const int64_t* exclude_indices,
                     int64_t block_size, int num_threads, T* out_values, int64_t* out_indices,
                     int64_t shard, int64_t num_shards) {
  MF_CHECK(m > 0 && d > 0, "queries must be non-empty");
  MF_CHECK(k > 0, "k must be positive");
  MF_CHECK(num_shards >= 1 && shard >= 0 && shard < num_shards,
           "shard must be in [0, num_shards)");
  const bool symmetric = keys == nullptr;
  if (symmetric) {
    keys = q;
    n = m;
  }
  MF_CHECK(n > 0, "keys must be non-empty");
  const TileKernel<T>& kern = kernel_for<T>();
  // Waking a team costs more than a small problem: below ~4M multiply-adds run on one thread.
  const double work = double(m) * double(n) * double(d);
  const int threads = work < double(1 << 22) ? 1 : std::max(1, num_threads);

  Geometry<T> g;
  g.m = m;
  g.n = n;
  g.d = d;
  g.block = quantized_block(block_size, 256);
  g.pad_a = round_up(g.block, kern.mr);
  g.pad_b = round_up(g.block, kern.nr);
  g.nchunks = static_cast<int>((d + kChunk - 1) / kChunk);
  const ExcludeCSR ex{exclude_indptr, exclude_indices};

  const PackedPanels<T> packed(kern, &keys, 1, n, d, g.block, threads, /*want_a=*/false);
  const int64_t row_blocks = (m + g.block - 1) / g.block;
  const int64_t key_blocks = (n + g.block - 1) / g.block;
  const int64_t list_bytes = m * int64_t(k) * int64_t(sizeof(T) + sizeof(int64_t));
  const bool private_fits = (threads - 1) * list_bytes <= kPrivateListBudget;
  const bool use_private =
      private_fits && (symmetric || (threads > 1 && row_blocks < 4 * threads));

  if (!use_private) {
    // Row-parallel: each row block belongs to one thread, whose lists are the outputs.
    ListStore<T> store;
    store.init(m, k, out_values, out_indices);
#pragma omp parallel num_threads(threads)
    {
      Workspace<T> w(g);
#pragma omp for schedule(dynamic, 1)
      for (int64_t bi = 0; bi < row_blocks; ++bi) {
        if (bi % num_shards == shard)  // other shards' rows stay padded
          for (int64_t bj = 0; bj < key_blocks; ++bj)
            run_pair<T>(kern, g, w, q, packed, bi, bj, &store.h, nullptr, ex);
        const int64_t end = std::min(m, (bi + 1) * g.block);
        for (int64_t r = bi * g.block; r < end; ++r) heap_finish_row(store.h, r);
      }
    }
    return;
  }

  // Pair-parallel with private lists: needed when a tile updates rows of two blocks (symmetric)
  // or when there are too few row blocks to keep every thread busy.
  std::vector<std::pair<int32_t, int32_t>> tasks;
  tasks.reserve(symmetric ? row_blocks * (row_blocks + 1) / 2 : row_blocks * key_blocks);
  int64_t pair = 0;
  for (int64_t bi = 0; bi < row_blocks; ++bi)
    for (int64_t bj = symmetric ? bi : 0; bj < key_blocks; ++bj, ++pair)
      if (pair % num_shards == shard) tasks.emplace_back(bi, bj);
  std::vector<ListStore<T>> stores(threads);
  stores[0].init(m, k, out_values, out_indices);
  for (int t = 1; t < threads; ++t) stores[t].init(m, k, nullptr, nullptr);
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
#pragma omp parallel num_threads(threads)
  {
    Workspace<T> w(g);
    RowHeaps<T>* h = &stores[omp_get_thread_num()].h;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntasks; ++t) {
      const int64_t bi = tasks[t].first, bj = tasks[t].second;
      RowHeaps<T>* cols = (symmetric && bi != bj) ? h : nullptr;
      run_pair<T>(kern, g, w, q, packed, bi, bj, h, cols, ex);
    }
  }
  const ExcludeCSR none{};
  RowHeaps<T>& out = stores[0].h;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < m; ++r) {
    for (int t = 1; t < threads; ++t) {
      const RowHeaps<T>& o = stores[t].h;
      for (int e = 0; e < o.count[r]; ++e)
        heap_offer(out, r, o.vals[r * k + e], o.idx[r * k + e], none);
    }
    heap_finish_row(out, r);
  }
}

template void topk_similarity<float>(const float*, int64_t, const float*, int64_t, int64_t, int,
                                     const int64_t*, const int64_t*, int64_t, int, float*,
                                     int64_t*, int64_t, int64_t);
template void topk_similarity<double>(const double*, int64_t, const double*, int64_t, int64_t,
                                      int, const int64_t*, const int64_t*, int64_t, int, double*,
                                      int64_t*, int64_t, int64_t);

}  // namespace micro_fast
