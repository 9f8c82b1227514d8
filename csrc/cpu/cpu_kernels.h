// The op layer's side of the native CPU kernels (csrc/cpu/*_kernels.cpp): walking the
// coordinates of tensors in parallel, and the per-capability kernel table.
//
// * for_each_run: walks the coordinates of same-shape operands (outputs first, then
//   inputs) in parallel, handing a body "runs" of coordinates with one pointer and one
//   byte stride per operand. Contiguous operands (the common case, including rows x[i] of
//   a row-sliced x) go straight to at::parallel_for with raw base pointers; any other
//   layout goes through at::TensorIterator, which reads and writes the strided memory in
//   place (no hidden copy of an input, no temporary output).
// * kernels(): the vectorized kernels (vec_kernels.h) for the best ISA this CPU runs
//   (capability()).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "cpu/kernel_table.h"

namespace cgh::cpu {

// The kernels of the best capability this CPU runs: AVX-512 when it has AVX512F/BW/VL/DQ,
// AVX2 when it has AVX2 and FMA (the sets ATen requires for its own kernels of those
// names), else the baseline. ATEN_CPU_CAPABILITY=avx2 or =default caps the choice, as it
// does for ATen (tests use it to run every build on one machine).
struct Capability {
  const char* name;
  const KernelTable* table;
};

inline const Capability& capability() {
  static const Capability chosen = [] {
    bool avx2 = false, avx512 = false;
#if defined(__x86_64__) && defined(__GNUC__)
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    const char* env = std::getenv("ATEN_CPU_CAPABILITY");
    const std::string forced = env != nullptr ? env : "";
    if (forced == "default") avx2 = avx512 = false;
    if (forced == "avx2") avx512 = false;
    // kernel_table() is nullptr where the build has no kernels of that capability
    if (avx512 && AVX512::kernel_table() != nullptr) return Capability{"AVX512", AVX512::kernel_table()};
    if (avx2 && AVX2::kernel_table() != nullptr) return Capability{"AVX2", AVX2::kernel_table()};
    return Capability{"DEFAULT", DEFAULT::kernel_table()};
  }();
  return chosen;
}

inline const KernelTable& kernels() { return *capability().table; }

// Whether the kernels stage input rows that lie a nonzero multiple of 256 MiB apart through
// a per-thread buffer (vec_kernels.h, run_contiguous). Measured, median_of_means k = 5 on
// such rows (python -m bench.row_aliasing): on an AMD EPYC VM their pages collide and
// staging took it from 0.42 to 0.58 of a copy; on an Intel Xeon VM they do not collide
// (1.2 of a copy, like padded rows) and staging cost half of that. So it is on for AMD
// CPUs only; CGH_OPS_STAGE_ROWS=1 or 0 forces it either way (read per call: tests set it).
inline bool stage_colliding_rows() {
  const char* forced = std::getenv("CGH_OPS_STAGE_ROWS");
  if (forced != nullptr && forced[0] != '\0') return forced[0] != '0';
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool amd = __builtin_cpu_is("amd");
  return amd;
#else
  return false;
#endif
}

inline RunFn kernel(KernelKind kind, c10::ScalarType dtype) {
  int d = 0;
  switch (dtype) {
    case c10::kFloat: d = kFloat; break;
    case c10::kDouble: d = kDouble; break;
    case c10::kHalf: d = kHalf; break;
    case c10::kBFloat16: d = kBFloat16; break;
    default: TORCH_INTERNAL_ASSERT(false, "cgh: no CPU kernel for dtype ", dtype);  // checks ran first
  }
  return kernels().fn[kind][d];
}

// About 128K operand elements per parallel task: a 2^24-coordinate problem splits evenly
// over the threads, and problems that take well under a millisecond stay single-threaded.
inline int64_t grain_for(int64_t n_operands) {
  return std::max<int64_t>(2048, (int64_t{1} << 17) / std::max<int64_t>(n_operands, 1));
}

// Runs body(data, strides, n) over n coordinates of n_ops contiguous operands that start at
// base[0..n_ops) (elem bytes per coordinate), in parallel. Raw base pointers: no iterator
// set-up, which matters for lists of small tensors.
template <typename Body>
void for_each_contiguous_run(char* const* base, int64_t n_ops, int64_t n, int64_t elem, const Body& body) {
  if (n == 0) return;
  const c10::SmallVector<int64_t, 16> strides(n_ops, elem);
  at::parallel_for(0, n, grain_for(n_ops), [&](int64_t begin, int64_t end) {
    c10::SmallVector<char*, 16> data(n_ops);
    for (int64_t j = 0; j < n_ops; ++j) data[j] = base[j] + begin * elem;
    body(data.data(), strides.data(), end - begin);
  });
}

// Runs body(data, strides, n) over all coordinates of the same-shape operands `ops`
// (n_out outputs first, then inputs), in parallel. An operand may appear both as an
// output and as an input (in-place update): bodies read a coordinate's inputs before
// writing its outputs.
template <typename Body>
void for_each_run(c10::ArrayRef<at::Tensor> ops, int64_t n_out, const Body& body) {
  const int64_t n = ops[0].numel();
  if (n == 0) return;
  const int64_t n_ops = static_cast<int64_t>(ops.size());
  const int64_t grain = grain_for(n_ops);
  bool contiguous = true;
  for (const auto& t : ops) contiguous = contiguous && t.is_contiguous();
  if (contiguous) {
    c10::SmallVector<char*, 16> base(n_ops);
    for (int64_t j = 0; j < n_ops; ++j) base[j] = static_cast<char*>(ops[j].data_ptr());
    for_each_contiguous_run(base.data(), n_ops, n, ops[0].element_size(), body);
    return;
  }
  // Any other layout: TensorIterator coalesces and orders the dimensions and hands us
  // strided 2-D tiles of the operands' own memory.
  at::TensorIteratorConfig config;
  config.set_check_mem_overlap(false)  // in-place operands are intended (see above)
      .check_all_same_dtype(true)
      .resize_outputs(false);
  for (int64_t j = 0; j < n_ops; ++j) {
    if (j < n_out) config.add_output(ops[j]);
    else config.add_const_input(ops[j]);
  }
  at::TensorIterator iter = config.build();
  iter.for_each(
      [&](char** data, const int64_t* strides, int64_t size0, int64_t size1) {
        c10::SmallVector<char*, 16> ptrs(data, data + n_ops);
        for (int64_t o = 0; o < size1; ++o) {
          body(ptrs.data(), strides, size0);
          for (int64_t j = 0; j < n_ops; ++j) ptrs[j] += strides[n_ops + j];
        }
      },
      grain);
}

// Runs kernel `fn` with `args` over n coordinates of contiguous operands at base[0..n_out +
// n_in) (outputs first), elem bytes per coordinate.
inline void run_kernel_contiguous(RunFn fn, const KernelArgs& args, char* const* base, int64_t n, int64_t elem) {
  KernelArgs a = args;
  a.total = n;
  a.stage_rows = stage_colliding_rows();
  for_each_contiguous_run(base, a.n_out + a.n_in, n, elem,
                          [&](char** data, const int64_t* strides, int64_t len) { fn(a, data, strides, len); });
}

// Runs kernel `fn` with `args` over all coordinates of `ops` (args.n_out outputs first).
inline void run_kernel(RunFn fn, const KernelArgs& args, c10::ArrayRef<at::Tensor> ops) {
  KernelArgs a = args;
  a.total = ops[0].numel();
  a.stage_rows = stage_colliding_rows();
  for_each_run(ops, a.n_out, [&](char** data, const int64_t* strides, int64_t n) { fn(a, data, strides, n); });
}

}  // namespace cgh::cpu
