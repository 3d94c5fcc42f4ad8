// Per-row bounded k-best lists for the similarity top-k kernels.
//
// Each row keeps a binary heap whose root is its current worst entry, so a candidate is
// accepted in O(1) when it loses and O(log k) when it wins. The order is total: a larger value
// wins, and on equal values the smaller key index wins, which makes the selected set (and so the
// result) independent of the order in which tiles are visited, hence of the thread count.
#pragma once

#include <cstdint>
#include <limits>

namespace micro_fast {

template <typename T>
struct RowHeaps {
  T* vals = nullptr;         // [rows * k], heap-ordered, root = worst
  int64_t* idx = nullptr;    // [rows * k]
  int32_t* count = nullptr;  // [rows]
  T* thr = nullptr;          // [rows + pad]: -inf until a row is full, then its root value
  int k = 0;
};

// Key indices to skip per query row (CSR, columns sorted ascending). Empty when indptr == null.
struct ExcludeCSR {
  const int64_t* indptr = nullptr;
  const int64_t* indices = nullptr;
};

// The functions below are compiled into translation units built for different ISAs; internal
// linkage keeps the linker from merging an AVX-512 copy into code that runs on any CPU.
namespace {

inline bool excluded(const ExcludeCSR& ex, int64_t row, int64_t col) {
  if (ex.indptr == nullptr) return false;
  int64_t lo = ex.indptr[row], hi = ex.indptr[row + 1];
  while (lo < hi) {
    int64_t mid = lo + ((hi - lo) >> 1);
    int64_t v = ex.indices[mid];
    if (v == col) return true;
    if (v < col) lo = mid + 1; else hi = mid;
  }
  return false;
}

template <typename T>
inline bool topk_better(T v, int64_t j, T rv, int64_t rj) {
  return v > rv || (v == rv && j < rj);
}

// Places (v, j) at the root of the heap hv/hi[0, end) and sifts it down to its place.
template <typename T>
inline void sift_down(T* hv, int64_t* hi, int end, T v, int64_t j) {
  int pos = 0;
  for (;;) {
    int c = 2 * pos + 1;
    if (c >= end) break;
    if (c + 1 < end && topk_better(hv[c], hi[c], hv[c + 1], hi[c + 1])) ++c;  // the worse child
    if (!topk_better(v, j, hv[c], hi[c])) break;
    hv[pos] = hv[c];
    hi[pos] = hi[c];
    pos = c;
  }
  hv[pos] = v;
  hi[pos] = j;
}

// Offers (v, j) to row `row`. Returns true when it was kept.
template <typename T>
inline bool heap_offer(RowHeaps<T>& h, int64_t row, T v, int64_t j, const ExcludeCSR& ex) {
  const int k = h.k;
  T* hv = h.vals + row * k;
  int64_t* hi = h.idx + row * k;
  int32_t n = h.count[row];
  if (n == k && !topk_better(v, j, hv[0], hi[0])) return false;
  if (excluded(ex, row, j)) return false;
  if (n < k) {
    int pos = n;
    while (pos > 0) {
      int parent = (pos - 1) >> 1;
      // the parent must stay the worse of the two
      if (!topk_better(hv[parent], hi[parent], v, j)) break;
      hv[pos] = hv[parent];
      hi[pos] = hi[parent];
      pos = parent;
    }
    hv[pos] = v;
    hi[pos] = j;
    h.count[row] = ++n;
    if (n == k) h.thr[row] = hv[0];
    return true;
  }
  sift_down(hv, hi, k, v, j);
  h.thr[row] = hv[0];
  return true;
}

// Sorts one row's heap best-first in place and pads the tail with (-inf, -1).
template <typename T>
inline void heap_finish_row(RowHeaps<T>& h, int64_t row) {
  const int k = h.k;
  T* hv = h.vals + row * k;
  int64_t* hi = h.idx + row * k;
  int n = h.count[row];
  // heap-sort: repeatedly move the worst to the end
  for (int end = n - 1; end > 0; --end) {
    const T v0 = hv[0], v = hv[end];
    const int64_t j0 = hi[0], j = hi[end];
    sift_down(hv, hi, end, v, j);
    hv[end] = v0;
    hi[end] = j0;
  }
  for (int r = n; r < k; ++r) {
    hv[r] = -std::numeric_limits<T>::infinity();
    hi[r] = -1;
  }
}

}  // namespace
}  // namespace micro_fast
