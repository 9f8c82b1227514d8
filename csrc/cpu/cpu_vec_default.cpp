// The CPU kernels for the baseline ISA of the build (x86-64: SSE2), with at::vec's
// portable Vectorized. vec_avx2.cpp holds the AVX2 build of the same code. (This file's
// name sorts before the others of csrc/cpu, so that for inline functions of shared headers
// the linker keeps the baseline copy; see vec_avx2.cpp.)
#define CGH_CAP DEFAULT
#include "cpu/vec_kernels.h"
