// Fresh outputs of the functional CPU ops (median_of_means, median3, ... without out=).
//
// A freshly allocated large tensor costs a page fault per 4 KiB page when it is first
// written, and on virtual machines a fault is expensive: median3 of 3 x 2^24 floats took
// 45 ms into a fresh tensor and 10 ms into a preallocated one on this project's CPU
// machine. Outputs of 32 MiB or more therefore go on transparent huge pages
// (posix_memalign to 2 MiB + madvise(MADV_HUGEPAGE), what c10's CPU allocator does only
// when THP_MEM_ALLOC_ENABLE=1 is set): one fault per 2 MiB. Smaller outputs come from the
// default CPU allocator: glibc serves them from its heap, which reuses freed memory without
// faults (its mmap threshold adapts up to 32 MiB), and that beat huge pages (median3 of
// 2^21 floats: 1.4 ms fresh from the heap, 2.6 ms on fresh huge pages, 1.3 ms out=).
// CGH_OPS_HUGE_PAGES=0 sends every output to the default allocator. The tensors are
// ordinary (resizable) CPU tensors; only their storage's allocator differs.
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace cgh::cpu {

class HugePageAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kHugePage = size_t{2} << 20;
  static constexpr size_t kMinBytes = size_t{32} << 20;  // glibc's largest mmap threshold (64-bit)

  c10::DataPtr allocate(size_t nbytes) override {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (nbytes >= kMinBytes && enabled()) {
      void* data = nullptr;
      TORCH_CHECK(posix_memalign(&data, kHugePage, nbytes) == 0, "cgh: out of CPU memory allocating ", nbytes,
                  " bytes for an output");
      madvise(data, nbytes, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KiB
      return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
    }
#endif
    return c10::GetDefaultCPUAllocator()->allocate(nbytes);
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

 private:
  static void release(void* data) { std::free(data); }

  static bool enabled() {
    static const bool on = [] {
      const char* env = std::getenv("CGH_OPS_HUGE_PAGES");
      return env == nullptr || std::strcmp(env, "0") != 0;
    }();
    return on;
  }
};

// An uninitialised CPU tensor for an op's output (contiguous, `like`'s dtype).
inline at::Tensor fresh_output(c10::IntArrayRef sizes, const at::Tensor& like) {
  static HugePageAllocator allocator;
  return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU), like.scalar_type(),
                                   std::nullopt);
}

}  // namespace cgh::cpu
