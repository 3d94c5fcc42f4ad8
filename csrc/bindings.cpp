// pybind11 bindings of the CPU kernels: NumPy arrays in, NumPy arrays out, no libtorch.
// Argument errors raise ValueError; the GIL is released while kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <optional>
#include <string>

#include "common.h"
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
                          int num_threads) {
  MF_CHECK(queries.ndim() == 2, "queries must be 2-D");
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
    micro_fast::topk_similarity<T>(qp, m, kp, n, d, k, ep, ei, block_size, num_threads, vp, ip);
  }
  return py::make_tuple(values, indices);
}

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "micro_fast compiled CPU kernels (C++17, OpenMP)";
  py::register_exception<InvalidArgument>(mod, "KernelArgumentError", PyExc_ValueError);

  mod.def("topk_similarity", &topk_similarity<float>, py::arg("queries").noconvert(),
          py::arg("keys").noconvert(), py::arg("k"), py::arg("exclude_indptr").noconvert(),
          py::arg("exclude_indices").noconvert(),
          py::arg("block_size") = 0, py::arg("num_threads") = 1);
  mod.def("topk_similarity", &topk_similarity<double>, py::arg("queries").noconvert(),
          py::arg("keys").noconvert(), py::arg("k"), py::arg("exclude_indptr").noconvert(),
          py::arg("exclude_indices").noconvert(),
          py::arg("block_size") = 0, py::arg("num_threads") = 1);
  mod.def("simd_isa", &micro_fast::simd_isa, "Instruction set of the tile kernels in use.");
  mod.def("set_simd_isa", &micro_fast::set_simd_isa, py::arg("name"),
          "Force 'avx512', 'avx2' or 'generic' tile kernels ('auto' restores the default).");
  mod.def("openmp_max_threads", []() { return omp_get_max_threads(); });
}
