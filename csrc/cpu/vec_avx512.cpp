// The CPU kernels compiled for AVX-512 (F, BW, VL, DQ, + FMA: the set ATen requires for its
// own AVX512 kernels) with at::vec's 512-bit Vectorized types, in namespace
// cgh::cpu::AVX512: 16 float lanes per block, twice AVX2's. cpu_kernels.h uses them only
// when the CPU reports all of these at run time. Built the way vec_avx2.cpp is (see there:
// target pragma before any header, internal linkage, baseline copies of shared inline
// functions first in link order).
#include "cpu/kernel_table.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CGH_NO_AVX512)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")
// sleef.h declares its AVX-512 entry points only under __AVX512F__ (and its AVX2 ones
// under __AVX2__), which the target pragma does not define: define them just for it. The
// kernels call no Sleef function.
#include <x86intrin.h>
#if !defined(__AVX512F__)
#define __AVX__ 1
#define __AVX2__ 1
#define __AVX512F__ 1
#include <sleef.h>
#undef __AVX512F__
#undef __AVX2__
#undef __AVX__
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define CGH_CAP AVX512
#include "cpu/vec_kernels.h"
#pragma GCC pop_options

#else

namespace cgh::cpu::AVX512 {
const KernelTable* kernel_table() { return nullptr; }
}  // namespace cgh::cpu::AVX512

#endif
