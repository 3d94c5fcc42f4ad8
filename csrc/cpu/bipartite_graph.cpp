#include "cpu/bipartite_graph.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "common.h"

namespace micro_fast {

template <typename T>
CSRArrays<T> bipartite_graph(const int64_t* users, const int64_t* items, int64_t nnz,
                             int64_t n_users, int64_t n_items, Normalization norm,
                             bool self_loops, bool sum_duplicates) {
  MF_CHECK(n_users >= 0 && n_items >= 0, "n_users and n_items must be non-negative");
  for (int64_t e = 0; e < nnz; ++e) {
    MF_CHECK(users[e] >= 0 && users[e] < n_users,
             "users: index " + std::to_string(users[e]) + " out of range [0, n_users)");
    MF_CHECK(items[e] >= 0 && items[e] < n_items,
             "items: index " + std::to_string(items[e]) + " out of range [0, n_items)");
  }
  // R by user rows: counting sort, then sort and merge each row's items.
  std::vector<int64_t> uptr(n_users + 1, 0);
  for (int64_t e = 0; e < nnz; ++e) ++uptr[users[e] + 1];
  for (int64_t u = 0; u < n_users; ++u) uptr[u + 1] += uptr[u];
  std::vector<int64_t> ucol(nnz), fill(uptr.begin(), uptr.end() - 1);
  for (int64_t e = 0; e < nnz; ++e) ucol[fill[users[e]]++] = items[e];
  std::vector<int64_t> rptr(n_users + 1, 0), rcol;
  std::vector<T> rval;
  rcol.reserve(nnz);
  rval.reserve(nnz);
  for (int64_t u = 0; u < n_users; ++u) {
    std::sort(ucol.begin() + uptr[u], ucol.begin() + uptr[u + 1]);
    for (int64_t e = uptr[u]; e < uptr[u + 1]; ++e) {
      if (e > uptr[u] && ucol[e] == ucol[e - 1]) {
        MF_CHECK(sum_duplicates, "users/items: duplicate interaction (user " + std::to_string(u) +
                                     ", item " + std::to_string(ucol[e]) + ")");
        rval.back() += T(1);
        continue;
      }
      rcol.push_back(ucol[e]);
      rval.push_back(T(1));
    }
    rptr[u + 1] = static_cast<int64_t>(rcol.size());
  }
  const int64_t r_nnz = static_cast<int64_t>(rcol.size());
  // R^T by item rows; scanning users in order leaves each item's users ascending.
  std::vector<int64_t> iptr(n_items + 1, 0);
  for (int64_t e = 0; e < r_nnz; ++e) ++iptr[rcol[e] + 1];
  for (int64_t i = 0; i < n_items; ++i) iptr[i + 1] += iptr[i];
  std::vector<int64_t> icol(r_nnz), ifill(iptr.begin(), iptr.end() - 1);
  std::vector<T> ival(r_nnz);
  for (int64_t u = 0; u < n_users; ++u) {
    for (int64_t e = rptr[u]; e < rptr[u + 1]; ++e) {
      const int64_t pos = ifill[rcol[e]]++;
      icol[pos] = u;
      ival[pos] = rval[e];
    }
  }
  // Assemble [[I?, R], [R^T, I?]] with sorted columns: a user's self loop precedes its items,
  // an item's self loop follows its users.
  const int64_t n = n_users + n_items;
  CSRArrays<T> out;
  out.indptr.assign(n + 1, 0);
  out.indices.reserve(2 * r_nnz + (self_loops ? n : 0));
  out.values.reserve(out.indices.capacity());
  for (int64_t u = 0; u < n_users; ++u) {
    if (self_loops) {
      out.indices.push_back(u);
      out.values.push_back(T(1));
    }
    for (int64_t e = rptr[u]; e < rptr[u + 1]; ++e) {
      out.indices.push_back(n_users + rcol[e]);
      out.values.push_back(rval[e]);
    }
    out.indptr[u + 1] = static_cast<int64_t>(out.indices.size());
  }
  for (int64_t i = 0; i < n_items; ++i) {
    for (int64_t e = iptr[i]; e < iptr[i + 1]; ++e) {
      out.indices.push_back(icol[e]);
      out.values.push_back(ival[e]);
    }
    if (self_loops) {
      out.indices.push_back(n_users + i);
      out.values.push_back(T(1));
    }
    out.indptr[n_users + i + 1] = static_cast<int64_t>(out.indices.size());
  }
  if (norm == Normalization::kNone) return out;
  std::vector<T> scale(n);
  for (int64_t r = 0; r < n; ++r) {
    T deg = T(0);
    for (int64_t e = out.indptr[r]; e < out.indptr[r + 1]; ++e) deg += out.values[e];
    scale[r] = deg == T(0) ? T(0) : (norm == Normalization::kSym ? T(1) / std::sqrt(deg)
                                                                 : T(1) / deg);
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t e = out.indptr[r]; e < out.indptr[r + 1]; ++e) {
      out.values[e] *= scale[r];
      if (norm == Normalization::kSym) out.values[e] *= scale[out.indices[e]];
    }
  }
  return out;
}

template CSRArrays<float> bipartite_graph<float>(const int64_t*, const int64_t*, int64_t, int64_t,
                                                 int64_t, Normalization, bool, bool);
template CSRArrays<double> bipartite_graph<double>(const int64_t*, const int64_t*, int64_t,
                                                   int64_t, int64_t, Normalization, bool, bool);

}  // namespace micro_fast
