// Fresh outputs of the functional CPU ops (median_of_means, median3, ... without out=).
//
// A freshly allocated large tensor costs a page fault per 4 KiB page when it is first
// written, and on virtual machines a fault is expensive: median3 of 3 x 2^24 floats took
// 45 ms into a fresh tensor and 10 ms into a preallocated one on this project's CPU
// machine. So outputs of 2 MiB or more come from OutputAllocator:
// * blocks are 2 MiB-aligned and advised onto transparent huge pages (posix_memalign +
//   madvise(MADV_HUGEPAGE), what c10's CPU allocator does only when THP_MEM_ALLOC_ENABLE=1
//   is set): one fault per 2 MiB;
// * a freed block is kept for the next output of the same (2 MiB-rounded) size, up to
//   1 GiB of the most recently freed blocks (CGH_OPS_OUTPUT_CACHE_MB sets the limit): an
//   op called in a loop, as in a training step, then writes into memory that is already
//   mapped. glibc's heap does that for blocks below its mmap threshold, but only while the
//   heap is not trimmed: in a long benchmark run a list of 32 fresh 2 MiB outputs faulted
//   on every call in some phases (66 ms, against 42 ms out=) and not in others.
// With CGH_OPS_OUTPUT_CACHE_MB=0 nothing is kept and only outputs of 32 MiB or more take
// huge pages (below that glibc's heap reuse beat fresh huge pages: median3 of 2^21 floats,
// 1.4 ms from the heap, 2.6 ms on fresh huge pages, 1.3 ms out=). CGH_OPS_HUGE_PAGES=0 sends
// every output to the default allocator. The tensors are ordinary (resizable) CPU tensors;
// only their storage's allocator differs.
#pragma once

#include <ATen/EmptyTensor.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace cgh::cpu {

class OutputAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kHugePage = size_t{2} << 20;
  static constexpr size_t kMinCachedBytes = kHugePage;                // with the cache on
  static constexpr size_t kMinUncachedBytes = size_t{32} << 20;       // glibc's largest mmap threshold (64-bit)
  static constexpr size_t kDefaultCacheBytes = size_t{1024} << 20;

  c10::DataPtr allocate(size_t nbytes) override {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const Settings& s = settings();
    if (s.huge_pages && nbytes >= (s.cache_limit > 0 ? kMinCachedBytes : kMinUncachedBytes)) {
      const size_t bytes = (nbytes + kHugePage - 1) / kHugePage * kHugePage;
      Block* block = take_cached(bytes);
      if (block == nullptr) {
        void* data = nullptr;
        TORCH_CHECK(posix_memalign(&data, kHugePage, bytes) == 0, "cgh: out of CPU memory allocating ", bytes,
                    " bytes for an output");
        madvise(data, bytes, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KiB
        block = new Block{data, bytes};
      }
      return {block->data, block, &release, c10::Device(c10::DeviceType::CPU)};
    }
#endif
    return c10::GetDefaultCPUAllocator()->allocate(nbytes);
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

 private:
  struct Block {
    void* data;
    size_t bytes;
  };
  struct Settings {
    bool huge_pages;
    size_t cache_limit;  // bytes of freed blocks kept for reuse
  };
  struct Cache {
    std::mutex mutex;
    std::vector<Block*> blocks;  // most recently freed last
    size_t bytes = 0;
  };

  static const Settings& settings() {
    static const Settings s = [] {
      const char* huge = std::getenv("CGH_OPS_HUGE_PAGES");
      const char* limit_mb = std::getenv("CGH_OPS_OUTPUT_CACHE_MB");
      Settings r{huge == nullptr || std::strcmp(huge, "0") != 0, kDefaultCacheBytes};
      if (limit_mb != nullptr && limit_mb[0] != '\0') r.cache_limit = size_t(std::strtoull(limit_mb, nullptr, 10)) << 20;
      return r;
    }();
    return s;
  }

  // Never destroyed: tensors may be freed while the process exits.
  static Cache& cache() {
    static Cache* c = new Cache();
    return *c;
  }

  // The most recently freed kept block of exactly `bytes`, or nullptr.
  static Block* take_cached(size_t bytes) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    for (size_t i = c.blocks.size(); i-- > 0;) {
      if (c.blocks[i]->bytes == bytes) {
        Block* b = c.blocks[i];
        c.blocks.erase(c.blocks.begin() + static_cast<std::ptrdiff_t>(i));
        c.bytes -= bytes;
        return b;
      }
    }
    return nullptr;
  }

  // Keeps a freed block, dropping the least recently freed ones beyond the limit (so that
  // blocks of sizes no longer in use make room for the current ones).
  static void release(void* ctx) {
    std::vector<Block*> dropped{static_cast<Block*>(ctx)};
    if (dropped[0]->bytes <= settings().cache_limit) {
      Cache& c = cache();
      std::lock_guard<std::mutex> lock(c.mutex);
      c.blocks.push_back(dropped[0]);
      c.bytes += dropped[0]->bytes;
      dropped.clear();
      size_t oldest = 0;
      while (c.bytes > settings().cache_limit) {
        c.bytes -= c.blocks[oldest]->bytes;
        dropped.push_back(c.blocks[oldest++]);
      }
      c.blocks.erase(c.blocks.begin(), c.blocks.begin() + static_cast<std::ptrdiff_t>(oldest));
    }
    for (Block* b : dropped) {  // outside the lock
      std::free(b->data);
      delete b;
    }
  }
};

// An uninitialised CPU tensor for an op's output (contiguous, `like`'s dtype).
inline at::Tensor fresh_output(c10::IntArrayRef sizes, const at::Tensor& like) {
  static OutputAllocator allocator;
  return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU), like.scalar_type(),
                                   std::nullopt);
}

}  // namespace cgh::cpu
