// pybind11 bindings of the CPU kernels: NumPy arrays in, NumPy arrays out, no libtorch.
// Argument errors raise ValueError; the GIL is released while kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "cpu/bipartite_graph.h"
#include "cpu/contrastive.h"
#include "cpu/contrastive_fusion.h"
#include "cpu/isa.h"
#include "cpu/project_rows.h"
#include "cpu/sample_edges.h"
#include "cpu/spmm.h"
#include "cpu/topk_similarity.h"

namespace py = pybind11;
using micro_fast::InvalidArgument;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style>;
using IndexArray = py::array_t<int64_t, py::array::c_style>;

void check_exclude(const std::optional<IndexArray>& indptr, const std::optional<IndexArray>& indices,
                   int64_t rows, int64_t cols) {
  if (!indptr && !indices) return;
  MF_CHECK(indptr && indices, "exclude: indptr and indices must be given together");
  MF_CHECK(indptr->ndim() == 1 && indptr->shape(0) == rows + 1,
           "exclude: indptr must have one entry per query row plus one");
  MF_CHECK(indices->ndim() == 1, "exclude: indices must be 1-D");
  const int64_t* p = indptr->data();
  const int64_t* ix = indices->data();
  const int64_t nnz = indices->shape(0);
  MF_CHECK(p[0] == 0 && p[rows] == nnz, "exclude: indptr must start at 0 and end at nnz");
  for (int64_t r = 0; r < rows; ++r) {
    MF_CHECK(p[r] <= p[r + 1], "exclude: indptr must be non-decreasing");
    for (int64_t e = p[r]; e < p[r + 1]; ++e) {
      MF_CHECK(ix[e] >= 0 && ix[e] < cols, "exclude: column index out of range");
      MF_CHECK(e == p[r] || ix[e - 1] < ix[e], "exclude: columns must be sorted and unique per row");
    }
  }
}

template <typename T>
py::tuple topk_similarity(const CArray<T>& queries, const std::optional<CArray<T>>& keys, int k,
                          const std::optional<IndexArray>& exclude_indptr,
                          const std::optional<IndexArray>& exclude_indices, int64_t block_size,
                          int num_threads, int64_t shard, int64_t num_shards) {
  MF_CHECK(queries.ndim() == 2, "queries must be 2-D");
  MF_CHECK(num_shards >= 1 && shard >= 0 && shard < num_shards,
           "shard must be in [0, num_shards)");
  const int64_t m = queries.shape(0), d = queries.shape(1);
  int64_t n = m;
  const T* kp = nullptr;
  if (keys) {
    MF_CHECK(keys->ndim() == 2, "keys must be 2-D");
    MF_CHECK(keys->shape(1) == d, "keys must have the same number of columns as queries");
    n = keys->shape(0);
    kp = keys->data();
  }
  MF_CHECK(m > 0 && n > 0 && d > 0, "queries and keys must be non-empty");
  MF_CHECK(k >= 1 && k <= n, "k must be in [1, number of keys]");
  check_exclude(exclude_indptr, exclude_indices, m, n);
  CArray<T> values({m, static_cast<int64_t>(k)});
  IndexArray indices({m, static_cast<int64_t>(k)});
  const int64_t* ep = exclude_indptr ? exclude_indptr->data() : nullptr;
  const int64_t* ei = exclude_indices ? exclude_indices->data() : nullptr;
  const T* qp = queries.data();
  T* vp = values.mutable_data();
  int64_t* ip = indices.mutable_data();
  {
    py::gil_scoped_release release;
    micro_fast::topk_similarity<T>(qp, m, kp, n, d, k, ep, ei, block_size, num_threads, vp, ip,
                                   shard, num_shards);
  }
  return py::make_tuple(values, indices);
}

// O(m + nnz) structural checks, so a malformed graph is an exception, never a wild read.
// `full == false` keeps the O(1) ones: for structures the caller has already validated
// (CSRGraph does, once per structure), a hot-path call then reads nothing twice.
void check_csr(const IndexArray& indptr, const IndexArray& indices, int64_t n_cols,
               bool full = true) {
  MF_CHECK(indptr.ndim() == 1 && indptr.shape(0) >= 1, "graph: indptr must be 1-D, non-empty");
  MF_CHECK(indices.ndim() == 1, "graph: indices must be 1-D");
  const int64_t m = indptr.shape(0) - 1, nnz = indices.shape(0);
  const int64_t* p = indptr.data();
  MF_CHECK(p[0] == 0 && p[m] == nnz, "graph: indptr must start at 0 and end at nnz");
  if (!full) return;
  for (int64_t r = 0; r < m; ++r) MF_CHECK(p[r] <= p[r + 1], "graph: indptr must be non-decreasing");
  const int64_t* ix = indices.data();
  uint64_t worst = 0;
  for (int64_t e = 0; e < nnz; ++e) worst = std::max(worst, static_cast<uint64_t>(ix[e]));
  MF_CHECK(nnz == 0 || worst < static_cast<uint64_t>(n_cols),
           "graph: column index out of range [0, " + std::to_string(n_cols) + ")");
}

// Outputs may be passed in by the caller: the torch adapter allocates them with torch's
// allocator, which reuses freed blocks where NumPy's huge-page advice makes every fresh
// multi-megabyte output fault its pages in again.
template <typename T>
CArray<T> output_array(const std::optional<CArray<T>>& out, std::vector<int64_t> shape,
                       const char* what) {
  if (!out) return CArray<T>(shape);
  MF_CHECK(out->ndim() == static_cast<py::ssize_t>(shape.size()),
           std::string(what) + ": out has the wrong number of dimensions");
  for (size_t i = 0; i < shape.size(); ++i)
    MF_CHECK(out->shape(i) == shape[i], std::string(what) + ": out has the wrong shape");
  MF_CHECK(out->writeable(), std::string(what) + ": out must be writeable");
  return *out;
}

template <typename T>
CArray<T> spmm(const IndexArray& indptr, const IndexArray& indices, const CArray<T>& values,
               const CArray<T>& x, int num_threads, bool checked,
               const std::optional<CArray<T>>& out) {
  MF_CHECK(x.ndim() == 2, "x must be 2-D");
  check_csr(indptr, indices, x.shape(0), checked);
  MF_CHECK(values.ndim() == 1 && values.shape(0) == indices.shape(0),
           "graph: values must have one entry per stored index");
  const int64_t m = indptr.shape(0) - 1, d = x.shape(1);
  CArray<T> y = output_array<T>(out, {m, d}, "spmm");
  const int64_t *p = indptr.data(), *ix = indices.data();
  const T *v = values.data(), *xp = x.data();
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release release;
    micro_fast::spmm<T>(p, ix, v, m, xp, d, yp, num_threads);
  }
  return y;
}

template <typename T>
CArray<T> sddmm(const IndexArray& indptr, const IndexArray& indices, const CArray<T>& a,
                const CArray<T>& b, int num_threads, bool checked,
                const std::optional<CArray<T>>& out_values) {
  MF_CHECK(a.ndim() == 2 && b.ndim() == 2 && a.shape(1) == b.shape(1),
           "a and b must be 2-D with the same number of columns");
  check_csr(indptr, indices, b.shape(0), checked);
  const int64_t m = indptr.shape(0) - 1, d = a.shape(1);
  MF_CHECK(a.shape(0) == m, "a must have one row per graph row");
  CArray<T> out = output_array<T>(out_values, {indices.shape(0)}, "sddmm");
  const int64_t *p = indptr.data(), *ix = indices.data();
  const T *ap = a.data(), *bp = b.data();
  T* op = out.mutable_data();
  {
    py::gil_scoped_release release;
    micro_fast::sddmm<T>(p, ix, m, ap, bp, d, op, num_threads);
  }
  return out;
}

template <typename T>
CArray<T> project_rows_forward(const CArray<T>& x, const IndexArray& rows, const CArray<T>& w,
                               const std::optional<CArray<T>>& bias, int num_threads,
                               const std::optional<CArray<T>>& out) {
  MF_CHECK(x.ndim() == 2 && w.ndim() == 2 && x.shape(1) == w.shape(1),
           "x [n, d] and weight [f, d] must be 2-D with the same number of columns");
  MF_CHECK(rows.ndim() == 1, "rows must be 1-D");
  const int64_t n = x.shape(0), d = x.shape(1), f = w.shape(0), m = rows.shape(0);
  MF_CHECK(!bias || (bias->ndim() == 1 && bias->shape(0) == f), "bias must be [f]");
  CArray<T> z = output_array<T>(out, {m, f}, "project_rows");
  const T *xp = x.data(), *wp = w.data(), *bp = bias ? bias->data() : nullptr;
  const int64_t* rp = rows.data();
  T* zp = z.mutable_data();
  {
    py::gil_scoped_release release;
    micro_fast::project_rows_forward<T>(xp, n, d, rp, m, wp, f, bp, num_threads, zp);
  }
  return z;
}

template <typename T>
void project_rows_backward(const CArray<T>& x, const IndexArray& rows, const CArray<T>& w,
                           const CArray<T>& g, int num_threads,
                           const std::optional<CArray<T>>& grad_x,
                           const std::optional<CArray<T>>& grad_w) {
  MF_CHECK(x.ndim() == 2 && w.ndim() == 2 && x.shape(1) == w.shape(1),
           "x [n, d] and weight [f, d] must be 2-D with the same number of columns");
  MF_CHECK(rows.ndim() == 1, "rows must be 1-D");
  const int64_t n = x.shape(0), d = x.shape(1), f = w.shape(0), m = rows.shape(0);
  MF_CHECK(g.ndim() == 2 && g.shape(0) == m && g.shape(1) == f, "grad must be [len(rows), f]");
  T* gx = nullptr;
  T* gw = nullptr;
  if (grad_x) gx = output_array<T>(grad_x, {n, d}, "project_rows grad_x").mutable_data();
  if (grad_w) gw = output_array<T>(grad_w, {f, d}, "project_rows grad_w").mutable_data();
  const T *xp = x.data(), *wp = w.data(), *gp = g.data();
  const int64_t* rp = rows.data();
  {
    py::gil_scoped_release release;
    micro_fast::project_rows_backward<T>(xp, n, d, rp, m, wp, f, gp, num_threads, gx, gw);
  }
}

IndexArray sample_edges(const py::array_t<double, py::array::c_style>& weights, int64_t m,
                        uint64_t seed, int num_threads) {
  MF_CHECK(weights.ndim() == 1, "weights must be 1-D");
  const int64_t n = weights.shape(0);
  MF_CHECK(m >= 0 && m <= n, "m must be in [0, len(weights)]");
  std::vector<int64_t> ids;
  {
    py::gil_scoped_release release;
    ids = micro_fast::sample_edges(weights.data(), n, m, seed, std::max(1, num_threads));
  }
  IndexArray out(static_cast<py::ssize_t>(ids.size()));
  std::copy(ids.begin(), ids.end(), out.mutable_data());
  return out;
}

template <typename T>
py::tuple bipartite_graph_impl(const IndexArray& users, const IndexArray& items, int64_t n_users,
                               int64_t n_items, micro_fast::Normalization norm, bool self_loops,
                               bool sum_duplicates) {
  micro_fast::CSRArrays<T> g;
  const int64_t *u = users.data(), *i = items.data();
  const int64_t nnz = users.shape(0);
  {
    py::gil_scoped_release release;
    g = micro_fast::bipartite_graph<T>(u, i, nnz, n_users, n_items, norm, self_loops,
                                       sum_duplicates);
  }
  auto to_numpy = [](auto& vec) {
    using V = typename std::decay_t<decltype(vec)>::value_type;
    py::array_t<V> arr(static_cast<py::ssize_t>(vec.size()));
    std::copy(vec.begin(), vec.end(), arr.mutable_data());
    return arr;
  };
  return py::make_tuple(to_numpy(g.indptr), to_numpy(g.indices), to_numpy(g.values));
}

py::tuple bipartite_graph(const IndexArray& users, const IndexArray& items, int64_t n_users,
                          int64_t n_items, const std::string& normalization, bool self_loops,
                          const std::string& duplicates, const std::string& dtype) {
  MF_CHECK(users.ndim() == 1 && items.ndim() == 1 && users.shape(0) == items.shape(0),
           "users and items must be 1-D and of equal length");
  micro_fast::Normalization norm;
  if (normalization == "sym") norm = micro_fast::Normalization::kSym;
  else if (normalization == "rw") norm = micro_fast::Normalization::kRw;
  else if (normalization == "none") norm = micro_fast::Normalization::kNone;
  else throw InvalidArgument("normalization must be 'sym', 'rw' or 'none'");
  MF_CHECK(duplicates == "sum" || duplicates == "error", "duplicates must be 'sum' or 'error'");
  const bool sum = duplicates == "sum";
  if (dtype == "float32")
    return bipartite_graph_impl<float>(users, items, n_users, n_items, norm, self_loops, sum);
  MF_CHECK(dtype == "float64", "dtype must be 'float32' or 'float64'");
  return bipartite_graph_impl<double>(users, items, n_users, n_items, norm, self_loops, sum);
}

template <typename T>
void check_pair(const CArray<T>& n1, const CArray<T>& n2) {
  MF_CHECK(n1.ndim() == 2 && n2.ndim() == 2, "z1 and z2 must be 2-D");
  MF_CHECK(n1.shape(0) == n2.shape(0) && n1.shape(1) == n2.shape(1),
           "z1 and z2 must have the same shape");
  MF_CHECK(n1.shape(0) > 0 && n1.shape(1) > 0, "z1 and z2 must be non-empty");
}

template <typename T>
void check_vector(const CArray<T>& v, int64_t n, const char* name) {
  MF_CHECK(v.ndim() == 1 && v.shape(0) == n, std::string(name) + " must have one entry per row");
}

template <typename T>
py::tuple contrastive_forward(const CArray<T>& n1, const CArray<T>& n2, double tau,
                              bool symmetric, int64_t block_size, int num_threads, int64_t shard,
                              int64_t num_shards) {
  check_pair(n1, n2);
  const int64_t n = n1.shape(0), d = n1.shape(1);
  CArray<T> lse1({n});
  CArray<T> lse2({symmetric ? n : 0});
  const T *a = n1.data(), *b = n2.data();
  T *l1 = lse1.mutable_data(), *l2 = symmetric ? lse2.mutable_data() : nullptr;
  {
    py::gil_scoped_release release;
    micro_fast::contrastive_forward<T>(a, b, n, d, tau, symmetric, block_size, num_threads, l1, l2,
                                       {shard, num_shards});
  }
  if (!symmetric) return py::make_tuple(lse1, py::none());
  return py::make_tuple(lse1, lse2);
}

template <typename T>
py::tuple contrastive_backward(const CArray<T>& n1, const CArray<T>& n2, double tau,
                               const CArray<T>& lse1, const std::optional<CArray<T>>& lse2,
                               const CArray<T>& g1, const std::optional<CArray<T>>& g2,
                               int64_t block_size, int num_threads,
                               const std::optional<CArray<T>>& out1,
                               const std::optional<CArray<T>>& out2, int64_t shard,
                               int64_t num_shards) {
  check_pair(n1, n2);
  const int64_t n = n1.shape(0), d = n1.shape(1);
  check_vector(lse1, n, "lse1");
  check_vector(g1, n, "g1");
  MF_CHECK(lse2.has_value() == g2.has_value(), "lse2 and g2 must be given together");
  if (lse2) {
    check_vector(*lse2, n, "lse2");
    check_vector(*g2, n, "g2");
  }
  CArray<T> grad1 = output_array<T>(out1, {n, d}, "contrastive_backward");
  CArray<T> grad2 = output_array<T>(out2, {n, d}, "contrastive_backward");
  const T *a = n1.data(), *b = n2.data(), *l1 = lse1.data(), *w1 = g1.data();
  const T* l2 = lse2 ? lse2->data() : nullptr;
  const T* w2 = g2 ? g2->data() : nullptr;
  T *o1 = grad1.mutable_data(), *o2 = grad2.mutable_data();
  {
    py::gil_scoped_release release;
    micro_fast::contrastive_backward<T>(a, b, n, d, tau, l1, l2, w1, w2, block_size, num_threads,
                                        o1, o2, {shard, num_shards});
  }
  return py::make_tuple(grad1, grad2);
}

template <typename T>
void check_fusion(const CArray<T>& u, const CArray<T>& coef) {
  MF_CHECK(u.ndim() == 3, "views must be 3-D [m, n, d]");
  MF_CHECK(coef.ndim() == 2 && coef.shape(0) == u.shape(1) && coef.shape(1) == u.shape(0),
           "coef must be [n, m] for views [m, n, d]");
  MF_CHECK(u.shape(0) > 0 && u.shape(1) > 0 && u.shape(2) > 0, "views must be non-empty");
}

template <typename T>
void check_stats(const CArray<T>& v, int64_t m, int64_t n, const char* name) {
  MF_CHECK(v.ndim() == 2 && v.shape(0) == m && v.shape(1) == n,
           std::string(name) + " must be [m, n]");
}

template <typename T>
CArray<T> contrastive_fusion_forward(const CArray<T>& u, const CArray<T>& coef, double tau,
                                     int64_t block_size, int num_threads, int64_t shard,
                                     int64_t num_shards) {
  check_fusion(u, coef);
  const int64_t m = u.shape(0), n = u.shape(1), d = u.shape(2);
  CArray<T> lse({m, n});
  const T *pu = u.data(), *pc = coef.data();
  T* pl = lse.mutable_data();
  {
    py::gil_scoped_release release;
    micro_fast::contrastive_fusion_forward<T>(pu, pc, m, n, d, tau, block_size, num_threads, pl,
                                              {shard, num_shards});
  }
  return lse;
}

template <typename T>
py::tuple contrastive_fusion_backward(const CArray<T>& u, const CArray<T>& coef, double tau,
                                      const CArray<T>& lse, const CArray<T>& g,
                                      int64_t block_size, int num_threads,
                                      const std::optional<CArray<T>>& out_u,
                                      const std::optional<CArray<T>>& out_coef, int64_t shard,
                                      int64_t num_shards) {
  check_fusion(u, coef);
  const int64_t m = u.shape(0), n = u.shape(1), d = u.shape(2);
  check_stats(lse, m, n, "lse");
  check_stats(g, m, n, "g");
  CArray<T> grad_u = output_array<T>(out_u, {m, n, d}, "contrastive_fusion_backward");
  CArray<T> grad_coef = output_array<T>(out_coef, {n, m}, "contrastive_fusion_backward");
  const T *pu = u.data(), *pc = coef.data(), *pl = lse.data(), *pg = g.data();
  T *ou = grad_u.mutable_data(), *oc = grad_coef.mutable_data();
  {
    py::gil_scoped_release release;
    micro_fast::contrastive_fusion_backward<T>(pu, pc, m, n, d, tau, pl, pg, block_size,
                                               num_threads, ou, oc, {shard, num_shards});
  }
  return py::make_tuple(grad_u, grad_coef);
}

// The kernels of scalar type T: pybind11 picks the overload from the arrays' dtype (noconvert:
// an array of another dtype raises instead of being copied).
template <typename T>
void def_kernels(py::module_& mod) {
  mod.def("topk_similarity", &topk_similarity<T>, py::arg("queries").noconvert(),
          py::arg("keys").noconvert(), py::arg("k"), py::arg("exclude_indptr").noconvert(),
          py::arg("exclude_indices").noconvert(), py::arg("block_size") = 0,
          py::arg("num_threads") = 1, py::arg("shard") = 0, py::arg("num_shards") = 1);
  // checked=false: the caller vouches for the CSR structure (a validated CSRGraph)
  mod.def("spmm", &spmm<T>, py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
          py::arg("values").noconvert(), py::arg("x").noconvert(), py::arg("num_threads") = 1,
          py::kw_only(), py::arg("checked") = true, py::arg("out").noconvert() = py::none());
  mod.def("sddmm", &sddmm<T>, py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
          py::arg("a").noconvert(), py::arg("b").noconvert(), py::arg("num_threads") = 1,
          py::kw_only(), py::arg("checked") = true, py::arg("out").noconvert() = py::none());
  mod.def("project_rows_forward", &project_rows_forward<T>, py::arg("x").noconvert(),
          py::arg("rows").noconvert(), py::arg("weight").noconvert(),
          py::arg("bias").noconvert(), py::arg("num_threads") = 1,
          py::arg("out").noconvert() = py::none());
  mod.def("project_rows_backward", &project_rows_backward<T>, py::arg("x").noconvert(),
          py::arg("rows").noconvert(), py::arg("weight").noconvert(),
          py::arg("grad").noconvert(), py::arg("num_threads") = 1,
          py::arg("grad_x").noconvert() = py::none(), py::arg("grad_w").noconvert() = py::none());
  mod.def("contrastive_forward", &contrastive_forward<T>, py::arg("n1").noconvert(),
          py::arg("n2").noconvert(), py::arg("tau"), py::arg("symmetric"),
          py::arg("block_size") = 0, py::arg("num_threads") = 1, py::arg("shard") = 0,
          py::arg("num_shards") = 1);
  mod.def("contrastive_backward", &contrastive_backward<T>, py::arg("n1").noconvert(),
          py::arg("n2").noconvert(), py::arg("tau"), py::arg("lse1").noconvert(),
          py::arg("lse2").noconvert(), py::arg("g1").noconvert(), py::arg("g2").noconvert(),
          py::arg("block_size") = 0, py::arg("num_threads") = 1,
          py::arg("out1").noconvert() = py::none(), py::arg("out2").noconvert() = py::none(),
          py::arg("shard") = 0, py::arg("num_shards") = 1);
  mod.def("contrastive_fusion_forward", &contrastive_fusion_forward<T>,
          py::arg("u").noconvert(), py::arg("coef").noconvert(), py::arg("tau"),
          py::arg("block_size") = 0, py::arg("num_threads") = 1, py::arg("shard") = 0,
          py::arg("num_shards") = 1);
  mod.def("contrastive_fusion_backward", &contrastive_fusion_backward<T>,
          py::arg("u").noconvert(), py::arg("coef").noconvert(), py::arg("tau"),
          py::arg("lse").noconvert(), py::arg("g").noconvert(), py::arg("block_size") = 0,
          py::arg("num_threads") = 1, py::arg("out_u").noconvert() = py::none(),
          py::arg("out_coef").noconvert() = py::none(), py::arg("shard") = 0,
          py::arg("num_shards") = 1);
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "micro_fast compiled CPU kernels (C++17, OpenMP)";
  py::register_exception<InvalidArgument>(mod, "KernelArgumentError", PyExc_ValueError);

  def_kernels<float>(mod);
  def_kernels<double>(mod);
  mod.def("bipartite_graph", &bipartite_graph, py::arg("users").noconvert(),
          py::arg("items").noconvert(), py::arg("n_users"), py::arg("n_items"),
          py::arg("normalization"), py::arg("self_loops"), py::arg("duplicates"),
          py::arg("dtype"));
  mod.def("sample_edges", &sample_edges, py::arg("weights").noconvert(), py::arg("m"),
          py::arg("seed"), py::arg("num_threads") = 1);
  mod.def("simd_isa", &micro_fast::simd_isa, "Instruction set of the kernels in use.");
  mod.def("set_simd_isa", &micro_fast::set_simd_isa, py::arg("name"),
          "Force 'avx512', 'avx2' or 'generic' tile kernels ('auto' restores the default).");
  mod.def("openmp_max_threads", []() { return omp_get_max_threads(); });
}
