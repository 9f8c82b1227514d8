// The CPU kernels compiled for AVX2 (+FMA, F16C, as ATen's AVX2 kernels) with at::vec's
// AVX2 Vectorized types, in namespace cgh::cpu::AVX2. cpu_kernels.h uses them only when
// the CPU reports AVX2 and FMA at run time, so the extension still
// loads and runs (on the DEFAULT kernels) on a plain x86-64 machine.
//
// The ISA is switched for this file only, by `#pragma GCC target` before any header, so
// setup.py needs no per-file flags. The kernels have internal linkage (vec_kernels.h);
// what this file shares with the others are inline functions of the c10/ATen/std headers,
// of which the linker keeps the first copy in link order: setup.py links the sources
// sorted by name, and cpu_vec_default.cpp and the op files sort before this file, so the
// baseline copies win. (FMA only makes the intrinsics available: the build passes
// -ffp-contract=off and the kernels call no fmadd, so no multiply-add is fused.)
#include "cpu/kernel_table.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(CGH_NO_AVX2)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// sleef.h (included by ATen's AVX2 vectors) declares its AVX2 entry points only under
// __AVX__/__AVX2__, which the target pragma does not define: define them just for it.
// The kernels call no Sleef function.
#include <x86intrin.h>
#if !defined(__AVX2__)
#define __AVX__ 1
#define __AVX2__ 1
#include <sleef.h>
#undef __AVX2__
#undef __AVX__
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define CGH_CAP AVX2
#include "cpu/vec_kernels.h"
#pragma GCC pop_options

#else

namespace cgh::cpu::AVX2 {
const KernelTable* kernel_table() { return nullptr; }
}  // namespace cgh::cpu::AVX2

#endif
