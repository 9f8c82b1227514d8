// The interface between the CPU op layer (cpu_kernels.h, *_kernels.cpp: checks, layouts,
// threads) and the vectorized kernels (vec_kernels.h, compiled once per CPU capability).
// Plain data only, so that the capability translation units need no Tensor headers.
//
// A kernel call fn(args, data, strides, n) handles n coordinates of one problem: data[j]
// points at operand j's first coordinate (outputs first, then inputs) and strides[j] is
// its stride in bytes; all operands have the op's dtype.
#pragma once

#include <cstdint>

namespace cgh::cpu {

enum class RingReduce : int8_t { None, Median, Mean };

struct KernelArgs {
  int64_t n_out = 1;  // operands: n_out outputs, then n_in inputs
  int64_t n_in = 0;
  int64_t total = 0;  // coordinates of the whole problem (set by run_kernel)
  int64_t k = 0;                   // values per coordinate that the reduction sees
  const int64_t* first = nullptr;  // median_of_means: group g is inputs [first[g], first[g + 1])
  bool omit_nan = false;
  int64_t trim = 0;  // trimmed / winsorized mean
  bool winsorize = false;
  bool write_slot = false;  // running median / ring step: write the history slot
  RingReduce reduce = RingReduce::Median;  // ring step
  double lr = 0.0, weight_decay = 0.0;     // ring step
  bool stage_rows = false;  // stage inputs a multiple of 256 MiB apart (set by run_kernel)
};

using RunFn = void (*)(const KernelArgs&, char** data, const int64_t* strides, int64_t n);

enum KernelKind : int { kMedianOfMeans, kMedian3, kSortedMean, kRunningMedian, kRingStep, kNumKinds };
enum DTypeIndex : int { kFloat, kDouble, kHalf, kBFloat16, kNumDTypes };

struct KernelTable {
  RunFn fn[kNumKinds][kNumDTypes];
};

namespace DEFAULT {
const KernelTable* kernel_table();
}
namespace AVX2 {
// nullptr when this build has no AVX2 kernels (not x86-64 GCC).
const KernelTable* kernel_table();
}
namespace AVX512 {
// nullptr when this build has no AVX-512 kernels (not x86-64 GCC).
const KernelTable* kernel_table();
}

// The capability whose kernels this process runs: "AVX512", "AVX2" or "DEFAULT"
// (cpu_kernels.h: kernels()).
const char* kernel_capability();

}  // namespace cgh::cpu
