// Shared host pieces of the CUDA core (micro_fast._cuda): error checking. The launchers are
// declared in topk_similarity.cuh, contrastive.cuh and spmm.cuh.
//
// The launchers take raw device pointers and a stream, never torch objects: the Python side owns
// every allocation (torch's caching allocator) and this library links only the static CUDA
// runtime, so it imports on machines without a GPU and fails only when a launcher is called.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common.h"

namespace micro_fast {
namespace cuda {

// A failed CUDA runtime call or kernel launch; surfaces in Python as RuntimeError.
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string cuda_version_string(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* what, const char* file,
                                          int line) {
  std::string msg = std::string("micro_fast._cuda: ") + what + " failed: " +
                    cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") at " + file +
                    ":" + std::to_string(line);
  if (err == cudaErrorInsufficientDriver || err == cudaErrorNoDevice) {
    int driver = 0;
    if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
    if (driver == 0)
      msg += "; no CUDA driver is installed (no GPU?)";
    else if (err == cudaErrorInsufficientDriver)
      msg += "; the driver supports CUDA " + cuda_version_string(driver) +
             ", this module's static runtime is CUDA " + cuda_version_string(CUDART_VERSION);
    else
      msg += "; no CUDA device is visible (check CUDA_VISIBLE_DEVICES)";
  } else if (err == cudaErrorNoKernelImageForDevice) {
    msg += "; the device's architecture is not among those micro_fast._cuda was built for "
           "(set MICRO_FAST_CUDA_ARCHS and rebuild)";
  }
  throw CudaError(msg);
}

#define MF_CUDA_CHECK(call)                                                         \
  do {                                                                              \
    const cudaError_t mf_err_ = (call);                                             \
    if (mf_err_ != cudaSuccess)                                                     \
      ::micro_fast::cuda::throw_cuda_error(mf_err_, #call, __FILE__, __LINE__);     \
  } while (0)

// Checks the launch that was just enqueued (bad configuration, missing kernel image, ...).
#define MF_CUDA_CHECK_LAUNCH(name)                                                  \
  do {                                                                              \
    const cudaError_t mf_err_ = cudaGetLastError();                                 \
    if (mf_err_ != cudaSuccess)                                                     \
      ::micro_fast::cuda::throw_cuda_error(mf_err_, "launch of " name, __FILE__,    \
                                           __LINE__);                               \
  } while (0)

}  // namespace cuda
}  // namespace micro_fast
