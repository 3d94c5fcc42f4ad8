// Uninitialized scratch arrays for the kernels' large per-call buffers (packed panels,
// per-thread gradients). A buffer of 16 MiB or more is aligned to 2 MiB and, on Linux, marked
// for transparent huge pages: where THP is "madvise" (a common default), a fresh 100 MB buffer
// otherwise costs tens of thousands of page faults on first touch, a sizeable share of a call
// that reads it only a few times. Smaller ones stay on 4 KiB pages: physically contiguous
// 64 KiB-strided blocks map onto the same L2 sets, which cost the fused-view kernel 5% in an
// A/B on Zen 5, while scattered page frames spread them.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <new>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace micro_fast {

template <typename T>
class LargeBuffer {
 public:
  LargeBuffer() = default;
  explicit LargeBuffer(size_t count) { reset(count); }
  LargeBuffer(const LargeBuffer&) = delete;
  LargeBuffer& operator=(const LargeBuffer&) = delete;
  LargeBuffer(LargeBuffer&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  LargeBuffer& operator=(LargeBuffer&& o) noexcept {
    std::swap(p_, o.p_);
    return *this;
  }
  ~LargeBuffer() { std::free(p_); }

  void reset(size_t count) {
    std::free(p_);
    p_ = nullptr;
    const size_t bytes = count * sizeof(T);
    if (bytes == 0) return;
    const bool huge = bytes >= kHugeFrom;
    const size_t align = huge ? kHuge : 64;
    p_ = static_cast<T*>(std::aligned_alloc(align, (bytes + align - 1) / align * align));
    if (p_ == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (huge) madvise(p_, (bytes + align - 1) / align * align, MADV_HUGEPAGE);
#endif
  }
  T* get() const { return p_; }
  T* data() const { return p_; }
  T& operator[](size_t i) const { return p_[i]; }

 private:
  static constexpr size_t kHuge = size_t(2) << 20;
  static constexpr size_t kHugeFrom = size_t(16) << 20;
  T* p_ = nullptr;
};

// `copies` zero-filled buffers of `count` elements (per-thread accumulators).
template <typename T>
std::vector<LargeBuffer<T>> zeroed_buffers(size_t copies, size_t count) {
  std::vector<LargeBuffer<T>> out;
  out.reserve(copies);
  for (size_t c = 0; c < copies; ++c) {
    out.emplace_back(count);
    std::fill(out.back().get(), out.back().get() + count, T(0));
  }
  return out;
}

}  // namespace micro_fast
