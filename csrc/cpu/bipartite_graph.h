// The normalized user-item adjacency of LightGCN / MICRO.
#pragma once

#include <cstdint>
#include <vector>

namespace micro_fast {

enum class Normalization { kNone = 0, kSym = 1, kRw = 2 };

template <typename T>
struct CSRArrays {
  std::vector<int64_t> indptr, indices;
  std::vector<T> values;
};

// Rows 0..U-1 are users, U..U+I-1 items. A = [[0, R], [R^T, 0]] (+ I with self_loops), where
// R[u, i] counts the (u, i) interactions (sum_duplicates) or duplicates are an error.
// kSym: D^-1/2 A D^-1/2, kRw: D^-1 A, with D the row sums; zero-degree rows stay zero.
template <typename T>
CSRArrays<T> bipartite_graph(const int64_t* users, const int64_t* items, int64_t nnz,
                             int64_t n_users, int64_t n_items, Normalization norm,
                             bool self_loops, bool sum_duplicates);

}  // namespace micro_fast
