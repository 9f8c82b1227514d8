// Host side of the CUDA kernels (reduce.cu, ring.cu): the launch entry points that ops.cpp
// calls and what it hands them. Plain C++: ops.cpp is compiled by the host compiler.
// Callers have checked the arguments, set the device guard and built the Entry lists;
// these launch on the current stream and never synchronize.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <vector>

namespace cgh {
namespace cuda {

constexpr int kThreads = 256;
// Kernel-argument budget: ListMeta is about 3 KB, leaving room for the scalar arguments.
constexpr int kMaxTensors = 48;
constexpr int kMaxPtrs = 160;
// Values per coordinate handled in registers: 3 (the paper's k), up to 8, up to 32.
// Larger counts take the sort-based ATen path of ops.cpp.
constexpr int kMaxCap = 32;

// One tensor of a list launch, as the host describes it.
struct Entry {
  std::vector<const void*> ptrs;
  int64_t numel = 0;
  int64_t row_stride = 0;
  int32_t rows = 0;
  uint32_t start_mask = 0, end_mask = 0;
  bool vec_ok = false;
};

inline bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Register capacity for k values per coordinate: 3, 8 or 32; 0 when k > 32 (ATen path).
inline int cap_for(int64_t k) {
  return k <= 3 ? 3 : k <= 8 ? 8 : k <= kMaxCap ? kMaxCap : 0;
}

// Entries: ptrs {x rows, out}; rows, row_stride, start/end masks set.
// streaming=false: m <= cap, every row in registers; true: m > 32, groups <= cap.
void launch_median_of_means(const std::vector<Entry>& entries, c10::ScalarType dtype, int cap, bool streaming,
                            int groups, bool omit_nan);

// Entries: ptrs {x rows, out}; m <= cap.
void launch_trimmed(const std::vector<Entry>& entries, c10::ScalarType dtype, int cap, int trim, bool winsorize);

enum RingMode : int {
  kStoreMedian = 0,   // running median / median3: ptr[0] <- median(ptr[1], history)
  kUpdateMedian = 1,  // ring_step_: param -= lr * median(g, history)
  kUpdateMean = 2,    // ring_step_: param -= lr * mean(g, history)
  kStoreOnly = 3,     // ring_step_ with reduce="none": history[slot] <- g only
};

// Entries: ptrs {result/param, grad, history 0..R-1}; R + 1 <= cap.
void launch_ring(const std::vector<Entry>& entries, c10::ScalarType dtype, int cap, int R, RingMode mode, int slot,
                 double lr, double weight_decay, bool omit_nan);

}  // namespace cuda
}  // namespace cgh
