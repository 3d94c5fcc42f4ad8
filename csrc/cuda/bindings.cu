// pybind11 bindings of the CUDA kernels (micro_fast._cuda): raw device pointers and a stream
// handle in, nothing out; the Python side (micro_fast/backends/cuda.py) allocates every buffer
// with torch. Links the static CUDA runtime and no libtorch, so the module imports on machines
// without a GPU or driver; the CUDA calls fail (RuntimeError) only when a function is called.
// Argument errors raise ValueError; the GIL is released while kernels are enqueued.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common.h"
#include "cuda/common.cuh"
#include "cuda/contrastive.cuh"
#include "cuda/spmm.cuh"
#include "cuda/topk_similarity.cuh"

namespace py = pybind11;

namespace {

template <typename P>
P* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<P*>(address);
}

template <typename T>
void topk_similarity(std::uintptr_t queries, int64_t m, std::uintptr_t keys, int64_t n, int64_t d,
                     int64_t k, std::uintptr_t exclude_indptr, std::uintptr_t exclude_indices,
                     int64_t block_rows, int64_t chunk, std::uintptr_t scratch,
                     int64_t scratch_elems, std::uintptr_t counts, int64_t counts_elems,
                     std::uintptr_t out_values, std::uintptr_t out_indices, int device,
                     std::uintptr_t stream) {
  micro_fast::cuda::topk_similarity<T>(
      as_ptr<const T>(queries), m, as_ptr<const T>(keys), n, d, k,
      as_ptr<const int64_t>(exclude_indptr), as_ptr<const int64_t>(exclude_indices), block_rows,
      chunk, as_ptr<T>(scratch), scratch_elems, as_ptr<int32_t>(counts), counts_elems,
      as_ptr<T>(out_values), as_ptr<int64_t>(out_indices), device,
      reinterpret_cast<cudaStream_t>(stream));
}

template <typename T>
void contrastive_forward(std::uintptr_t n1, std::uintptr_t n2, int64_t n, int64_t d, double tau,
                         int64_t block_rows, int64_t splits, std::uintptr_t scratch,
                         int64_t scratch_elems, std::uintptr_t lse1, std::uintptr_t lse2,
                         int device, std::uintptr_t stream) {
  micro_fast::cuda::contrastive_forward<T>(
      as_ptr<const T>(n1), as_ptr<const T>(n2), n, d, tau, block_rows, splits, as_ptr<T>(scratch),
      scratch_elems, as_ptr<T>(lse1), as_ptr<T>(lse2), device,
      reinterpret_cast<cudaStream_t>(stream));
}

template <typename T>
void contrastive_backward(std::uintptr_t n1, std::uintptr_t n2, int64_t n, int64_t d, double tau,
                          std::uintptr_t lse1, std::uintptr_t lse2, std::uintptr_t g1,
                          std::uintptr_t g2, int64_t block_rows, int64_t chunk,
                          std::uintptr_t scratch, int64_t scratch_elems, std::uintptr_t grad1,
                          std::uintptr_t grad2, int device, std::uintptr_t stream) {
  micro_fast::cuda::contrastive_backward<T>(
      as_ptr<const T>(n1), as_ptr<const T>(n2), n, d, tau, as_ptr<const T>(lse1),
      as_ptr<const T>(lse2), as_ptr<const T>(g1), as_ptr<const T>(g2), block_rows, chunk,
      as_ptr<T>(scratch), scratch_elems, as_ptr<T>(grad1), as_ptr<T>(grad2), device,
      reinterpret_cast<cudaStream_t>(stream));
}

template <typename T>
void spmm(std::uintptr_t seg_row, std::uintptr_t seg_bounds, std::uintptr_t seg_slot,
          int64_t segments, std::uintptr_t split_row, std::uintptr_t split_slots, int64_t splits,
          std::uintptr_t indices, std::uintptr_t values, int64_t m, int64_t nnz, std::uintptr_t x,
          int64_t d, std::uintptr_t partials, int64_t partial_rows, std::uintptr_t y, int device,
          std::uintptr_t stream) {
  micro_fast::cuda::CsrPartition part;
  part.seg_row = as_ptr<const int64_t>(seg_row);
  part.seg_bounds = as_ptr<const int64_t>(seg_bounds);
  part.seg_slot = as_ptr<const int64_t>(seg_slot);
  part.segments = segments;
  part.split_row = as_ptr<const int64_t>(split_row);
  part.split_slots = as_ptr<const int64_t>(split_slots);
  part.splits = splits;
  micro_fast::cuda::spmm<T>(part, as_ptr<const int64_t>(indices), as_ptr<const T>(values), m,
                            nnz, as_ptr<const T>(x), d, as_ptr<T>(partials), partial_rows,
                            as_ptr<T>(y), device, reinterpret_cast<cudaStream_t>(stream));
}

template <typename T>
void sddmm(std::uintptr_t seg_row, std::uintptr_t seg_bounds, int64_t segments,
           std::uintptr_t indices, int64_t m, int64_t nnz, std::uintptr_t a, std::uintptr_t b,
           int64_t d, std::uintptr_t out, int device, std::uintptr_t stream) {
  micro_fast::cuda::CsrPartition part;
  part.seg_row = as_ptr<const int64_t>(seg_row);
  part.seg_bounds = as_ptr<const int64_t>(seg_bounds);
  part.segments = segments;
  micro_fast::cuda::sddmm<T>(part, as_ptr<const int64_t>(indices), m, nnz, as_ptr<const T>(a),
                             as_ptr<const T>(b), d, as_ptr<T>(out), device,
                             reinterpret_cast<cudaStream_t>(stream));
}

int device_count() {
  int count = 0;
  MF_CUDA_CHECK(cudaGetDeviceCount(&count));
  return count;
}

int driver_version() {
  int version = 0;  // 0 when no driver is installed
  MF_CUDA_CHECK(cudaDriverGetVersion(&version));
  return version;
}

int runtime_version() {
  int version = 0;
  MF_CUDA_CHECK(cudaRuntimeGetVersion(&version));
  return version;
}

// Registers every kernel of scalar type T under its name plus `suffix` ("_f32", "_f64").
template <typename T>
void def_kernels(py::module_& mod, const std::string& suffix) {
  // pybind11 copies the name
  auto name = [&](const char* op) { return std::string(op) + suffix; };
  const char* topk_doc =
      "Enqueues the blocked top-k inner-product search on `stream` of `device`.\n\n"
      "All pointers are device addresses (tensor.data_ptr()); keys = 0 means keys are the\n"
      "queries, exclude_* = 0 means no exclusions. scratch holds at least\n"
      "min(block_rows, m) * min(chunk, n) elements, counts at least min(block_rows, m) int32.\n"
      "Outputs [m, k] are fully written (best first, padded with (-inf, -1)).";
  mod.def(name("topk_similarity").c_str(), &topk_similarity<T>, topk_doc, py::arg("queries"),
          py::arg("m"), py::arg("keys"), py::arg("n"), py::arg("d"), py::arg("k"),
          py::arg("exclude_indptr"), py::arg("exclude_indices"), py::arg("block_rows"),
          py::arg("chunk"), py::arg("scratch"), py::arg("scratch_elems"), py::arg("counts"),
          py::arg("counts_elems"), py::arg("out_values"), py::arg("out_indices"),
          py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  const char* fwd_doc =
      "Enqueues the fused contrastive forward on `stream` of `device`.\n\n"
      "n1, n2: [n, d] device addresses (rows L2-normalized by the caller), tau > 0. Writes\n"
      "lse1[i] = log(sum_{j != i} exp(s11_ij / tau) + sum_j exp(s12_ij / tau)) and, when\n"
      "lse2 != 0, lse2[j] = log(sum_{i != j} exp(s22_ij / tau) + sum_i exp(s12_ij / tau)).\n"
      "scratch holds at least 2 * min(block_rows, n) * splits elements (splits: column\n"
      "splits per row tile, clamped to the number of column tiles).";
  const char* bwd_doc =
      "Enqueues the fused contrastive backward on `stream` of `device`.\n\n"
      "Writes grad1, grad2 [n, d] (fully overwritten) of sum_i g1_i lse1_i, plus\n"
      "sum_j g2_j lse2_j when lse2 / g2 != 0 (both or neither). scratch holds at least\n"
      "min(block_rows, n) * min(chunk, n) elements.";
  mod.def(name("contrastive_forward").c_str(), &contrastive_forward<T>, fwd_doc, py::arg("n1"),
          py::arg("n2"), py::arg("n"), py::arg("d"), py::arg("tau"), py::arg("block_rows"),
          py::arg("splits"), py::arg("scratch"), py::arg("scratch_elems"), py::arg("lse1"),
          py::arg("lse2"), py::arg("device"), py::arg("stream"),
          py::call_guard<py::gil_scoped_release>());
  mod.def(name("contrastive_backward").c_str(), &contrastive_backward<T>, bwd_doc, py::arg("n1"),
          py::arg("n2"), py::arg("n"), py::arg("d"), py::arg("tau"), py::arg("lse1"),
          py::arg("lse2"), py::arg("g1"), py::arg("g2"), py::arg("block_rows"), py::arg("chunk"),
          py::arg("scratch"), py::arg("scratch_elems"), py::arg("grad1"), py::arg("grad2"),
          py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  const char* spmm_doc =
      "Enqueues y = A x on `stream` of `device`.\n\n"
      "A: indices [nnz] (int64) and values [nnz], its rows given by the work partition\n"
      "seg_row / seg_bounds / seg_slot [segments (+1)], split_row / split_slots [splits (+1)]\n"
      "(int64, micro_fast.backends.cuda.csr_partition); x [n, d] and y [m, d] row-major,\n"
      "contiguous; partials: scratch of partial_rows x d (used when splits > 0). All pointers\n"
      "are device addresses (tensor.data_ptr()). y is fully written; deterministic.";
  mod.def(name("spmm").c_str(), &spmm<T>, spmm_doc, py::arg("seg_row"), py::arg("seg_bounds"),
          py::arg("seg_slot"), py::arg("segments"), py::arg("split_row"),
          py::arg("split_slots"), py::arg("splits"), py::arg("indices"), py::arg("values"),
          py::arg("m"), py::arg("nnz"), py::arg("x"), py::arg("d"), py::arg("partials"),
          py::arg("partial_rows"), py::arg("y"), py::arg("device"), py::arg("stream"),
          py::call_guard<py::gil_scoped_release>());
  const char* sddmm_doc =
      "Enqueues out[e] = <a[row(e)], b[indices[e]]> on `stream` of `device`.\n\n"
      "indices [nnz] (int64), the rows given by the partition's seg_row / seg_bounds\n"
      "[segments (+1)]; a [m, d], b [n, d] row-major, contiguous; out [nnz] is fully written.\n"
      "Deterministic.";
  mod.def(name("sddmm").c_str(), &sddmm<T>, sddmm_doc, py::arg("seg_row"),
          py::arg("seg_bounds"), py::arg("segments"), py::arg("indices"), py::arg("m"),
          py::arg("nnz"), py::arg("a"), py::arg("b"), py::arg("d"), py::arg("out"),
          py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace

PYBIND11_MODULE(_cuda, mod) {
  mod.doc() = "micro_fast compiled CUDA kernels (static CUDA runtime, no libtorch)";
  py::register_local_exception<micro_fast::InvalidArgument>(mod, "KernelArgumentError",
                                                            PyExc_ValueError);
  py::register_local_exception<micro_fast::cuda::CudaError>(mod, "CudaError",
                                                            PyExc_RuntimeError);

  def_kernels<float>(mod, "_f32");
  def_kernels<double>(mod, "_f64");
  mod.def("device_count", &device_count,
          "Number of CUDA devices visible to this module's runtime; raises CudaError when the "
          "runtime cannot initialize (no driver, driver too old, no device).");
  mod.def("driver_version", &driver_version, "CUDA driver version (e.g. 12040), 0 if none.");
  mod.def("runtime_version", &runtime_version, "Version of the statically linked CUDA runtime.");
  mod.attr("compiled_runtime_version") = CUDART_VERSION;
  // Virtual architectures compiled in (e.g. (800, 900)); the last one also ships as PTX.
  static const int archs[] = {__CUDA_ARCH_LIST__};
  py::tuple arch_tuple(sizeof(archs) / sizeof(archs[0]));
  for (size_t i = 0; i < sizeof(archs) / sizeof(archs[0]); ++i) arch_tuple[i] = archs[i];
  mod.attr("cuda_archs") = arch_tuple;
}
