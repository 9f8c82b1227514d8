// The vectorized CPU kernels of the cgh ops, written once against at::vec::Vectorized and
// compiled once per CPU capability, as ATen compiles its own kernels:
// cpu_vec_default.cpp for the baseline ISA (namespace DEFAULT), vec_avx2.cpp for AVX2
// (namespace AVX2) and vec_avx512.cpp for AVX-512 (namespace AVX512); cpu_kernels.h picks
// the best one the CPU runs. The including file defines CGH_CAP (and, for AVX2/AVX-512,
// ATen's capability macros) first.
//
// This header holds raw-pointer code only (no Tensor): the op layer (cpu_kernels.h and the
// *_kernels.cpp files) checks arguments, picks layouts and threads, and calls
// kernel_table().fn[kind][dtype](args, data, strides, n) on runs of coordinates.
//
// * run_blocks: turns one run into calls of a per-op `step` on blocks of at most
//   Vectorized<acc_t>::size() coordinates, always on contiguous memory: contiguous runs
//   are used in place, strided runs are gathered into (and scattered from) a small buffer.
// * ValueBlock + median / sorted_mean: the k values of a block of coordinates and the
//   exact selection on them: a 4-op min/max network for k = 3, a stable sorting network
//   up to k = 16, and std::nth_element / std::sort per coordinate beyond that or where
//   omit mode meets a NaN. Ties of +0 and -0 resolve as in a stable sort (torch.median).
//
// Numerical rules (cgh_ops/reference.py): values are in the accumulation type acc_t
// (at::opmath_type: float for float16/bfloat16/float32, double for float64); an even count
// gives (lo + hi) * 0.5 in acc_t; propagate mode gives NaN wherever a NaN is among the
// values; omit mode the median of the non-NaN values (NaN if there are none). The min/max
// networks below assume no NaN: NaN is handled explicitly around them, never left to
// whatever a min/max instruction does with it. The build uses -ffp-contract=off and the
// kernels call no fmadd, so no multiply-add is fused, whatever the ISA.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/kernel_table.h"

#ifndef CGH_CAP
#error "define CGH_CAP (the capability namespace) before including vec_kernels.h"
#endif

// Everything but kernel_table() has internal linkage, so nothing compiled for one ISA can
// be picked by the linker for another.
namespace cgh::cpu::CGH_CAP {
namespace {

using at::vec::Vectorized;

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

// Sorting networks run on up to this many values per coordinate; beyond it, selection is
// scalar per coordinate (a network's cost grows as k^2, nth_element's as k).
constexpr int kMaxNet = 16;

// Values per coordinate up to which the hot kernels hold them in named registers with a
// compile-time count (loops over them unroll; a run-time count keeps them in memory and
// ran at a quarter of the speed). Covers the k = 3, 5, 9 of the benchmarks.
constexpr int kMaxRegs = 9;

// Calls f(std::integral_constant<int, K>{}) with K = k when kLo <= k <= kHi, else
// f(std::integral_constant<int, 0>{}) (the run-time-k path; callers whose k is always in
// range, such as a checked trim, may use kLo = 0).
template <int kLo, int kHi, typename F>
C10_ALWAYS_INLINE void with_static_k(int64_t k, const F& f) {
  if constexpr (kLo > kHi) {
    f(std::integral_constant<int, 0>{});
  } else {
    if (k == kLo) f(std::integral_constant<int, kLo>{});
    else with_static_k<kLo + 1, kHi>(k, f);
  }
}

// ------------------------------------------------------------------ loads and stores
// The x86 SIMD builds (AVX2: 8 float lanes in __m256; AVX-512: 16 in __m512) handle a block
// of float16/bfloat16 values as one integer register of half the width (Bits16) and
// convert it with ATen's one-register conversions; the portable build goes through
// Vectorized<BFloat16>/<Half>, which converts two registers and stores through a stack buffer.
#if defined(CPU_CAPABILITY_AVX512)
#define CGH_X86_SIMD 1
using FloatReg = __m512;
using Bits16 = __m256i;  // 16 float16/bfloat16 values
C10_ALWAYS_INLINE Bits16 load_bits16(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
C10_ALWAYS_INLINE void store_bits16(void* p, const Bits16& b) { _mm256_storeu_si256(static_cast<__m256i*>(p), b); }
#elif defined(CPU_CAPABILITY_AVX2)
#define CGH_X86_SIMD 1
using FloatReg = __m256;
using Bits16 = __m128i;  // 8 float16/bfloat16 values
C10_ALWAYS_INLINE Bits16 load_bits16(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
C10_ALWAYS_INLINE void store_bits16(void* p, const Bits16& b) { _mm_storeu_si128(static_cast<__m128i*>(p), b); }
#endif

#if defined(CGH_X86_SIMD)
static_assert(sizeof(Bits16) == Vectorized<float>::size() * 2);

// The lanes of v rounded to float16/bfloat16 (round to nearest even, as the scalar cast;
// a NaN may get another payload: it stays a NaN). ATen's software rounding, also on CPUs
// with AVX512_BF16: vcvtneps2bf16 treats subnormal inputs as zero.
template <typename scalar_t>
C10_ALWAYS_INLINE Bits16 round_to_16bit(const Vectorized<float>& v) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) return at::vec::cvtfp32_bf16(FloatReg(v));
  else return at::vec::cvtfp32_fp16(FloatReg(v));
}

// The float16/bfloat16 values in bits, widened to float (exact).
template <typename scalar_t>
C10_ALWAYS_INLINE Vectorized<float> widen_16bit(const Bits16& bits) {
  FloatReg v;
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) at::vec::cvtbf16_fp32(bits, v);
  else at::vec::cvtfp16_fp32(bits, v);
  return v;
}
#endif

// Loads `count` (<= W) values at p into the accumulation type; lanes past count are 0.
template <typename scalar_t, bool kFull>
C10_ALWAYS_INLINE Vectorized<acc_type<scalar_t>> load_acc(const scalar_t* p, int64_t count) {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return kFull ? Vec::loadu(p) : Vec::loadu(p, count);
  } else if (kFull) {
    // exact: every float16/bfloat16 value is a float
#if defined(CGH_X86_SIMD)
    return widen_16bit<scalar_t>(load_bits16(p));
#else
    Vec v;
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) at::vec::load_fp32_from_bf16(p, v);
    else at::vec::load_fp32_from_fp16(p, v);
    return v;
#endif
  } else {
    __at_align__ acc_t buf[Vec::size()];
    const int64_t n = kFull ? Vec::size() : count;
    for (int64_t l = 0; l < n; ++l) buf[l] = static_cast<acc_t>(p[l]);
    for (int64_t l = n; l < Vec::size(); ++l) buf[l] = acc_t(0);
    return Vec::loadu(buf);
  }
}

// Stores the first `count` lanes of v at p, rounded to scalar_t (round to nearest even,
// as Tensor.to()).
template <typename scalar_t, bool kFull>
C10_ALWAYS_INLINE void store_acc(scalar_t* p, const Vectorized<acc_type<scalar_t>>& v, int64_t count) {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (kFull) v.store(p);
    else v.store(p, static_cast<int>(count));
  } else if (kFull) {
    // ATen's vector conversions: round to nearest even, as the scalar cast (a NaN may get
    // another payload: it stays a NaN)
#if defined(CGH_X86_SIMD)
    store_bits16(p, round_to_16bit<scalar_t>(v));
#else
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) at::vec::convert_float_bfloat16(v, v).store(p, Vec::size());
    else at::vec::convert_float_half(v, v).store(p, Vec::size());
#endif
  } else {
    __at_align__ acc_t buf[Vec::size()];
    v.store(buf);
    const int64_t n = kFull ? Vec::size() : count;
    for (int64_t l = 0; l < n; ++l) p[l] = static_cast<scalar_t>(buf[l]);
  }
}

// Copies count values bit for bit. A full float/double block is a vector load and store
// (moves keep every bit, NaN payloads included): a memcpy may alias anything, which made
// the compiler reload the operand pointers after it in every block.
template <typename scalar_t, bool kFull>
C10_ALWAYS_INLINE void copy_raw(scalar_t* dst, const scalar_t* src, int64_t count) {
  using Vec = Vectorized<acc_type<scalar_t>>;
  constexpr int64_t W = Vec::size();
  if constexpr (!kFull) {
    for (int64_t l = 0; l < count; ++l) dst[l] = src[l];
  } else if constexpr (std::is_same_v<scalar_t, acc_type<scalar_t>>) {
    Vec::loadu(src).store(dst);
  } else {
#if defined(CGH_X86_SIMD)
    static_assert(W * sizeof(scalar_t) == sizeof(Bits16));
    store_bits16(dst, load_bits16(src));
#else
    std::memcpy(dst, src, W * sizeof(scalar_t));
#endif
  }
}

// Large float32/float64 outputs are written with non-temporal (streaming) stores in the
// x86 SIMD builds: they skip the read-for-ownership of each output cache line, as memcpy
// does for large copies, so the op moves only the bytes it must. Below this many output
// bytes per problem, normal stores (the result may be read again soon).
constexpr int64_t kStreamBytes = int64_t{1} << 22;

// Which outputs this build can stream. float16/bfloat16 ones take normal stores: 16-byte
// streaming stores made median3 bfloat16 slower (0.64 -> 0.47 of a copy at 2^24, AVX2).
template <typename scalar_t>
constexpr bool kCanStream =
#if defined(CGH_X86_SIMD)
    std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
#else
    false;
#endif

// Whether a run of n coordinates of a problem (a.total coordinates, split into runs by
// the op layer) writes its output with streaming stores.
template <typename scalar_t>
C10_ALWAYS_INLINE bool streamed(const KernelArgs& a, int64_t n) {
  return kCanStream<scalar_t> && std::max(n, a.total) * int64_t(sizeof(scalar_t)) >= kStreamBytes;
}

// Streams a full block (one register) to a register-aligned p.
template <typename scalar_t>
C10_ALWAYS_INLINE void stream_store(scalar_t* p, const Vectorized<scalar_t>& v) {
  static_assert(kCanStream<scalar_t>);
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float>) _mm512_stream_ps(p, v);
  else _mm512_stream_pd(p, v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) _mm256_stream_ps(p, v);
  else _mm256_stream_pd(p, v);
#endif
}

// Makes streamed stores visible before the run returns.
inline void stream_fence() {
#if defined(CGH_X86_SIMD)
  _mm_sfence();
#endif
}

// store_acc, streamed when `stream` (set by run_blocks for aligned, large outputs).
template <typename scalar_t, bool kFull>
C10_ALWAYS_INLINE void store_out(scalar_t* p, const Vectorized<acc_type<scalar_t>>& v, int64_t count, bool stream) {
  if constexpr (kFull && kCanStream<scalar_t>) {
    if (stream) return stream_store(p, v);
  }
  store_acc<scalar_t, kFull>(p, v, count);
}

// ------------------------------------------------------------------ exact networks
// min/max for NaN-free lanes (one instruction each with AVX; NaN is handled by callers).
// On ties (+0 vs -0) vmin(x, y) keeps x and vmax(x, y) keeps y, so a compare-exchange of
// x before y is stable: the networks then pick, among equal values, the one a stable sort
// would (torch.median's choice, visible in the sign of a zero).
template <typename V>
C10_ALWAYS_INLINE V vmin(const V& x, const V& y) { return at::vec::clamp_max(x, y); }
template <typename V>
C10_ALWAYS_INLINE V vmax(const V& x, const V& y) { return at::vec::clamp_min(y, x); }
template <typename V>
C10_ALWAYS_INLINE void cswap(V& a, V& b) {
  const V lo = vmin(a, b);
  b = vmax(a, b);
  a = lo;
}

template <typename V>
C10_ALWAYS_INLINE V median3_net(const V& a, const V& b, const V& c) {
  return vmax(vmin(a, b), vmin(vmax(a, b), c));
}

// Sorts v[0..k) ascending (odd-even transposition: k rounds of neighbour exchanges, each
// stable, so the whole sort is stable).
template <typename V>
C10_ALWAYS_INLINE void sort_net(V* v, int k) {
  for (int round = 0; round < k; ++round)
    for (int j = round & 1; j + 1 < k; j += 2) cswap(v[j], v[j + 1]);
}

// Shorter networks than sort_net's for K = 9 (checked on all 2^9 0/1 inputs, which by the
// 0-1 principle proves them): a full sort in 25 exchanges (Floyd) and the median in 19
// (Paeth), against 36 for odd-even transposition; at k = 9 the kernels were compute-bound.
// They are not stable: among equal values a -0 may pass a +0. That can change a result
// only where the result is a zero (x + 0 == x - 0 for x != 0, and a nonzero median or
// sum does not depend on which zero sits where), so the callers use them first and redo
// a block whose result has a zero lane with the stable sort_net.
template <int K>
constexpr bool kHasFastNet = K == 9;

template <typename V>
C10_ALWAYS_INLINE void sort9_fast(V* v) {
  cswap(v[0], v[3]); cswap(v[1], v[7]); cswap(v[2], v[5]); cswap(v[4], v[8]);
  cswap(v[0], v[7]); cswap(v[2], v[4]); cswap(v[3], v[8]); cswap(v[5], v[6]);
  cswap(v[0], v[2]); cswap(v[1], v[3]); cswap(v[4], v[5]); cswap(v[7], v[8]);
  cswap(v[1], v[4]); cswap(v[3], v[6]); cswap(v[5], v[7]);
  cswap(v[0], v[1]); cswap(v[2], v[4]); cswap(v[3], v[5]); cswap(v[6], v[8]);
  cswap(v[2], v[3]); cswap(v[4], v[5]); cswap(v[6], v[7]);
  cswap(v[1], v[2]); cswap(v[3], v[4]); cswap(v[5], v[6]);
}

// The median of v[0..9) (v is clobbered; only the exchanges that reach v[4] are kept).
template <typename V>
C10_ALWAYS_INLINE V median9_fast(V* v) {
  cswap(v[1], v[2]); cswap(v[4], v[5]); cswap(v[7], v[8]);
  cswap(v[0], v[1]); cswap(v[3], v[4]); cswap(v[6], v[7]);
  cswap(v[1], v[2]); cswap(v[4], v[5]); cswap(v[7], v[8]);
  cswap(v[0], v[3]); cswap(v[5], v[8]); cswap(v[4], v[7]);
  cswap(v[3], v[6]); cswap(v[1], v[4]); cswap(v[2], v[5]);
  cswap(v[4], v[7]); cswap(v[4], v[2]); cswap(v[6], v[4]);
  cswap(v[4], v[2]);
  return v[4];
}

template <typename V>
C10_ALWAYS_INLINE bool any_zero_lane(const V& x) {
  return (x == V(0)).zero_mask() != (1 << V::size()) - 1;
}

// ------------------------------------------------------------------ scalar selection
template <typename acc_t>
inline acc_t nan_value() { return std::numeric_limits<acc_t>::quiet_NaN(); }

// The value at position pos of a stable sort of kept[0..n), given val, the value there.
// Equal values have equal bits except +0 and -0: for a zero, take the zero that a stable
// sort puts at pos (torch.median's choice), counting zeros in index order.
template <typename acc_t>
inline acc_t stable_pick(const acc_t* kept, int64_t n, int64_t pos, acc_t val) {
  if (val != acc_t(0)) return val;
  int64_t zero_rank = pos;  // pos minus the number of negative values
  for (int64_t j = 0; j < n; ++j)
    if (kept[j] < acc_t(0)) --zero_rank;
  for (int64_t j = 0; j < n; ++j)
    if (kept[j] == acc_t(0) && zero_rank-- == 0) return kept[j];
  return val;
}

// Median of v[0..k) with the reference's NaN and even-count rules (v is compacted in
// omit mode; work, of size k, is scratch for the selection).
template <typename acc_t>
inline acc_t median_scalar(acc_t* v, acc_t* work, int64_t k, bool omit_nan) {
  int64_t n = k;
  if (omit_nan) {
    n = 0;
    for (int64_t j = 0; j < k; ++j)
      if (!std::isnan(v[j])) v[n++] = v[j];  // keeps the order
    if (n == 0) return nan_value<acc_t>();
  } else {
    for (int64_t j = 0; j < k; ++j)
      if (std::isnan(v[j])) return nan_value<acc_t>();
  }
  std::copy(v, v + n, work);
  std::nth_element(work, work + n / 2, work + n);
  const acc_t hi = stable_pick(v, n, n / 2, work[n / 2]);
  if (n % 2) return hi;
  const acc_t lo = stable_pick(v, n, n / 2 - 1, *std::max_element(work, work + n / 2));
  return (lo + hi) * acc_t(0.5);
}

// Trimmed (winsorize=false) or winsorized mean of v[0..k) (v is sorted): the kept values
// summed in ascending order, then divided by the count; NaN if any value is NaN.
template <typename acc_t>
inline acc_t sorted_mean_scalar(acc_t* v, int64_t k, int64_t trim, bool winsorize) {
  for (int64_t j = 0; j < k; ++j)
    if (std::isnan(v[j])) return nan_value<acc_t>();
  std::sort(v, v + k);
  if (!winsorize) {
    acc_t total = v[trim];
    for (int64_t j = trim + 1; j < k - trim; ++j) total = total + v[j];
    return total / static_cast<acc_t>(k - 2 * trim);
  }
  // [v[trim]] * trim + v[trim : k - trim] + [v[k - 1 - trim]] * trim, in that order.
  acc_t total = v[trim];
  for (int64_t p = 1; p < k; ++p) total = total + v[std::clamp(p, trim, k - 1 - trim)];
  return total / static_cast<acc_t>(k);
}

// ------------------------------------------------------------------ value blocks
// The k values (in acc_t) of a block of up to W coordinates. Up to kMaxNet values live in
// vector registers/stack for the networks; more go to a per-run buffer lanes[j * W + l].
template <typename acc_t>
struct ValueBlock {
  using Vec = Vectorized<acc_t>;
  static constexpr int64_t W = Vec::size();

  explicit ValueBlock(int64_t k_) : k(k_) {
    if (k > kMaxNet) {
      lanes.resize(static_cast<size_t>(k * W));
      tmp_big.resize(static_cast<size_t>(k));
      work_big.resize(static_cast<size_t>(k));
    }
  }
  bool small() const { return k <= kMaxNet; }
  C10_ALWAYS_INLINE void set(int64_t j, const Vec& x) {
    if (small()) v[j] = x;
    else x.store(lanes.data() + j * W);
  }
  // Makes the network-held values readable per lane (before gather on a small block).
  void spill() {
    for (int64_t j = 0; j < k; ++j) v[j].store(small_lanes + j * W);
  }
  // Copies lane l's k values into a scratch array (for the scalar fallbacks).
  acc_t* gather(int64_t l) {
    const acc_t* src = small() ? small_lanes : lanes.data();
    acc_t* dst = small() ? tmp_small : tmp_big.data();
    for (int64_t j = 0; j < k; ++j) dst[j] = src[j * W + l];
    return dst;
  }
  // Whether a lane of a (network-held) value may be NaN: a cheap test that is also true
  // for +-Inf (v - v is +0 for finite v, NaN for NaN and +-Inf), so that only a block
  // holding a NaN or an Inf pays for the exact per-lane test (nan_mask).
  C10_ALWAYS_INLINE bool may_have_nan() const {
    Vec t = v[0] - v[0];
    for (int64_t j = 1; j < k; ++j) t = t + (v[j] - v[j]);
    return t.zero_mask() != (1 << W) - 1;  // t's lanes are +0 or NaN
  }
  // Scratch of k values for the scalar selection.
  acc_t* work() { return small() ? work_small : work_big.data(); }
  // Lanes where any of the k (network-held) values is NaN: all-ones bits there.
  Vec nan_mask() const {
    Vec m = v[0].isnan();
    for (int64_t j = 1; j < k; ++j) m = m | v[j].isnan();
    return m;
  }

  int64_t k;
  Vec v[kMaxNet];
  __at_align__ acc_t small_lanes[kMaxNet * W];
  acc_t tmp_small[kMaxNet];
  acc_t work_small[kMaxNet];
  std::vector<acc_t> lanes;    // k > kMaxNet only
  std::vector<acc_t> tmp_big;   // k > kMaxNet only
  std::vector<acc_t> work_big;  // k > kMaxNet only
};

template <typename Vec>
inline bool any_lane(const Vec& mask) {
  return mask.zero_mask() != (1 << Vec::size()) - 1;
}

// Applies a scalar per-coordinate function to lanes [0, count) of a block.
template <typename acc_t, typename F>
inline Vectorized<acc_t> per_lane(ValueBlock<acc_t>& b, int64_t count, F f) {
  __at_align__ acc_t res[Vectorized<acc_t>::size()] = {};
  if (b.small()) b.spill();
  for (int64_t l = 0; l < count; ++l) res[l] = f(b.gather(l));
  return Vectorized<acc_t>::loadu(res);
}

// The median of a block's k values, coordinate-wise (b.v is clobbered): the run-time-k
// path (median_regs holds k values known at compile time).
template <typename acc_t>
C10_ALWAYS_INLINE Vectorized<acc_t> median(ValueBlock<acc_t>& b, bool omit_nan, int64_t count) {
  using Vec = Vectorized<acc_t>;
  const int64_t k = b.k;
  if (!b.small())
    return per_lane(b, count, [&](acc_t* v) { return median_scalar(v, b.work(), k, omit_nan); });
  if (k == 1) return b.v[0];
  Vec nan;
  bool has_nan = false;
  if (b.may_have_nan()) {
    nan = b.nan_mask();
    has_nan = any_lane(nan);
  }
  // Omit mode: a block with a NaN takes the scalar path (the count of kept values varies
  // per coordinate); NaN-free blocks, the common case, stay on the network.
  if (omit_nan && has_nan)
    return per_lane(b, count, [&](acc_t* v) { return median_scalar(v, b.work(), k, true); });
  Vec med;
  if (k == 3) {
    med = median3_net(b.v[0], b.v[1], b.v[2]);
  } else {
    // k = 5 too: the classic 7-exchange median-of-5 network is not stable (it can pick
    // the other zero of a +0/-0 tie than torch.median does); this one is, at 10 exchanges.
    sort_net(b.v, static_cast<int>(k));
    med = (k % 2) ? b.v[k / 2] : (b.v[(k - 1) / 2] + b.v[k / 2]) * Vec(acc_t(0.5));
  }
  return has_nan ? Vec::blendv(med, Vec(nan_value<acc_t>()), nan) : med;
}

// Trimmed / winsorized mean of a block's k values, coordinate-wise (b.v is clobbered).
template <typename acc_t>
C10_ALWAYS_INLINE Vectorized<acc_t> sorted_mean(ValueBlock<acc_t>& b, int64_t trim, bool winsorize, int64_t count) {
  using Vec = Vectorized<acc_t>;
  const int64_t k = b.k;
  if (!b.small())
    return per_lane(b, count, [&](acc_t* v) { return sorted_mean_scalar(v, k, trim, winsorize); });
  Vec nan;
  bool has_nan = false;
  if (b.may_have_nan()) {
    nan = b.nan_mask();
    has_nan = any_lane(nan);
  }
  sort_net(b.v, static_cast<int>(k));
  Vec total;
  if (!winsorize) {
    total = b.v[trim];
    for (int64_t j = trim + 1; j < k - trim; ++j) total = total + b.v[j];
    total = total / Vec(static_cast<acc_t>(k - 2 * trim));
  } else {
    total = b.v[trim];
    for (int64_t p = 1; p < k; ++p) total = total + b.v[std::clamp(p, trim, k - 1 - trim)];
    total = total / Vec(static_cast<acc_t>(k));
  }
  return has_nan ? Vec::blendv(total, Vec(nan_value<acc_t>()), nan) : total;
}

// ------------------------------------------------------------------ runs and blocks
// Rows of one [k, n] tensor are n * itemsize bytes apart. When that distance is a multiple
// of a large power of two (n = 2^26 floats: 256 MiB), reading the rows in lockstep ran at
// 0.3-0.5 of a copy on an AMD EPYC VM (torch.compile's kernels too), while the same rows
// padded apart by 4 KiB ran at 0.9; a 64-byte pad did not help, so their pages collide,
// most likely in the set-associative TLB (python -m bench.row_aliasing measures it). For
// such inputs, when the op layer asks (KernelArgs::stage_rows: AMD CPUs, see
// stage_colliding_rows), run_contiguous copies each row's next chunk into a per-thread
// buffer, one row after the other, and computes from there: one page in flight at a time.
constexpr int64_t kCollidingBytes = int64_t{1} << 28;  // 256 MiB
constexpr int64_t kStageBytes = int64_t{64} << 10;     // per row and chunk

// Whether an input lies a nonzero multiple of kCollidingBytes away from the first one.
template <typename scalar_t>
inline bool pages_collide(const scalar_t* const* in, int64_t n_in) {
  for (int64_t j = 1; j < n_in; ++j) {
    const int64_t d = std::abs(reinterpret_cast<intptr_t>(in[j]) - reinterpret_cast<intptr_t>(in[0]));
    if (d != 0 && d % kCollidingBytes == 0) return true;
  }
  return false;
}

// Runs of in-place steps whose halves are at least this long walk both halves at once
// (run_contiguous); shorter ones stay in cache.
constexpr int64_t kLockstepBytes = int64_t{64} << 10;
constexpr int64_t kLockstepStreams = 8;  // operands (inputs + outputs) of the run

// Calls step on the blocks of n coordinates of contiguous operands (n_in inputs, n_out
// outputs); `stream`: write the output with streaming stores (where the step allows it and
// the ISA has them); `stage`: stage inputs whose pages collide (KernelArgs::stage_rows).
template <typename scalar_t, typename Step>
C10_ALWAYS_INLINE void run_contiguous(const scalar_t* const* in, scalar_t* const* out, int64_t n, bool stream,
                                      bool stage, int64_t n_in, int64_t n_out, Step& step) {
  constexpr int64_t W = Vectorized<acc_type<scalar_t>>::size();
  int64_t i = 0;
  if constexpr (Step::kStreamOut) {
    // First the coordinates before the output's block boundary (fewer than W), then
    // aligned full blocks.
    constexpr uintptr_t kBlockBytes = W * sizeof(scalar_t);  // one register of float/double values
    const auto addr = reinterpret_cast<uintptr_t>(out[0]);
    step.stream = stream && addr % sizeof(scalar_t) == 0;
    if (step.stream && addr % kBlockBytes != 0) {
      i = std::min<int64_t>(n, static_cast<int64_t>((kBlockBytes - addr % kBlockBytes) / sizeof(scalar_t)));
      step.template apply<false>(in, out, 0, i);
    }
  }
  constexpr int64_t C = kStageBytes / int64_t(sizeof(scalar_t));  // a multiple of W
  if (stage && n_in > 1 && n_out <= 4 && n - i >= C && pages_collide(in, n_in)) {
    thread_local std::vector<scalar_t> buffer;  // grows once per thread, not per call
    if (int64_t(buffer.size()) < n_in * C) buffer.resize(static_cast<size_t>(n_in * C));
    c10::SmallVector<const scalar_t*, 16> staged(n_in);
    for (int64_t j = 0; j < n_in; ++j) staged[j] = buffer.data() + j * C;
    scalar_t* dst[4];
    for (; i < n;) {
      const int64_t len = std::min(C, n - i);
      // Every input of the chunk is read before any output is written (in-place operands).
      for (int64_t j = 0; j < n_in; ++j) std::memcpy(buffer.data() + j * C, in[j] + i, len * sizeof(scalar_t));
      for (int64_t j = 0; j < n_out; ++j) dst[j] = out[j] + i;
      int64_t b = 0;
      for (; b + W <= len; b += W) step.template apply<true>(staged.data(), dst, b, W);
      if (b < len) step.template apply<false>(staged.data(), dst, b, len - b);
      i += len;
    }
  }
  if constexpr (!Step::kStreamOut) {
    // The in-place steps (running median, ring step) read and write few streams; one thread
    // walking them once kept too few cache misses in flight (ring_step_ bfloat16 k = 3,
    // 2^24: 12.1 ms, torch.compile's kernel, which walks two tensors at once, 9.1 ms).
    // Walking the two halves of the run in lockstep doubles the streams: where there are at
    // most kLockstepStreams (k = 3 and 5); with more, twice as many ran slower (k = 9:
    // running_median_ bfloat16 2^24 19.7 -> 23.0 ms).
    const int64_t half = (n - i) / (2 * W) * W;
    if (n_in + n_out <= kLockstepStreams && half * int64_t(sizeof(scalar_t)) >= kLockstepBytes) {
      for (const int64_t end = i + half; i < end; i += W) {
        step.template apply<true>(in, out, i, W);
        step.template apply<true>(in, out, i + half, W);
      }
      i += half;
    }
  }
  for (; i + W <= n; i += W) step.template apply<true>(in, out, i, W);
  if (i < n) step.template apply<false>(in, out, i, n - i);
  if constexpr (Step::kStreamOut) {
    if (step.stream) stream_fence();
  }
}

template <typename scalar_t, typename Step>
void run_blocks(const KernelArgs& a, char** data, const int64_t* strides, int64_t n, Step& step) {
  constexpr int64_t W = Vectorized<acc_type<scalar_t>>::size();
  const int64_t n_out = a.n_out, n_in = a.n_in;
  const int64_t n_ops = n_out + n_in;
  bool contiguous = true;
  for (int64_t j = 0; j < n_ops; ++j) contiguous = contiguous && strides[j] == int64_t(sizeof(scalar_t));
  c10::SmallVector<scalar_t*, 4> out(n_out);
  c10::SmallVector<const scalar_t*, 16> in(n_in);
  if (contiguous) {
    for (int64_t j = 0; j < n_out; ++j) out[j] = reinterpret_cast<scalar_t*>(data[j]);
    for (int64_t j = 0; j < n_in; ++j) in[j] = reinterpret_cast<const scalar_t*>(data[n_out + j]);
    run_contiguous<scalar_t>(in.data(), out.data(), n, streamed<scalar_t>(a, n), a.stage_rows, n_in, n_out, step);
    return;
  }
  // Strided run: gather W coordinates of every input into a small buffer, compute, and
  // scatter the outputs (all inputs are read before any output is written, so in-place
  // operands stay correct).
  std::vector<scalar_t> buf(static_cast<size_t>(n_ops * W));
  for (int64_t j = 0; j < n_out; ++j) out[j] = buf.data() + j * W;
  for (int64_t j = 0; j < n_in; ++j) in[j] = buf.data() + (n_out + j) * W;
  for (int64_t i = 0; i < n; i += W) {
    const int64_t count = std::min(W, n - i);
    for (int64_t j = 0; j < n_in; ++j) {
      const char* src = data[n_out + j] + i * strides[n_out + j];
      scalar_t* dst = buf.data() + (n_out + j) * W;
      for (int64_t l = 0; l < count; ++l)
        dst[l] = *reinterpret_cast<const scalar_t*>(src + l * strides[n_out + j]);
    }
    step.template apply<false>(in.data(), out.data(), 0, count);
    for (int64_t j = 0; j < n_out; ++j) {
      char* dst = data[j] + i * strides[j];
      for (int64_t l = 0; l < count; ++l)
        *reinterpret_cast<scalar_t*>(dst + l * strides[j]) = out[j][l];
    }
  }
}

// ------------------------------------------------------------------ per-op steps
// Group bounds known at run time only (the general case; see RowsMedianStep for the
// compiled counts).
template <typename scalar_t>
struct MedianOfMeansStep {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  const int64_t* first;  // group g is inputs [first[g], first[g + 1])
  bool omit_nan;
  ValueBlock<acc_t>& block;
  bool stream = false;  // set by run_blocks
  static constexpr bool kStreamOut = true;

  template <bool kFull>
  C10_ALWAYS_INLINE void apply(const scalar_t* const* in, scalar_t* const* out, int64_t i, int64_t count) {
    for (int64_t g = 0; g < block.k; ++g) {
      // Rows summed in order, then divided by the row count (the reference's rule).
      Vec sum = load_acc<scalar_t, kFull>(in[first[g]] + i, count);
      for (int64_t r = first[g] + 1; r < first[g + 1]; ++r) sum = sum + load_acc<scalar_t, kFull>(in[r] + i, count);
      const int64_t rows = first[g + 1] - first[g];
      // x / 1 == x exactly: a one-row group skips the division.
      block.set(g, rows == 1 ? sum : sum / Vec(static_cast<acc_t>(rows)));
    }
    store_out<scalar_t, kFull>(out[0] + i, median(block, omit_nan, count), count, stream);
  }
};

// The exact median of K values per lane, in registers (`net`: the NaN-free network
// result), for blocks that may hold a NaN: kept out of line, the hot loop only tests.
template <typename acc_t>
C10_NOINLINE Vectorized<acc_t> median_nan_block(const Vectorized<acc_t>* v, int64_t k, bool omit_nan,
                                               Vectorized<acc_t> net) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  Vec nan = v[0].isnan();
  for (int64_t j = 1; j < k; ++j) nan = nan | v[j].isnan();
  if (!omit_nan) return Vec::blendv(net, Vec(nan_value<acc_t>()), nan);
  // Omit mode: the lanes with a NaN take the scalar selection (their count of kept values varies).
  __at_align__ acc_t lanes[kMaxNet * W];
  __at_align__ acc_t res[W];
  __at_align__ acc_t is_nan[W];
  acc_t vals[kMaxNet], work[kMaxNet];
  for (int64_t j = 0; j < k; ++j) v[j].store(lanes + j * W);
  net.store(res);
  nan.store(is_nan);
  for (int64_t l = 0; l < W; ++l) {
    if (!std::isnan(is_nan[l])) continue;  // all-ones bits: a NaN pattern
    for (int64_t j = 0; j < k; ++j) vals[j] = lanes[j * W + l];
    res[l] = median_scalar(vals, work, k, true);
  }
  return Vec::loadu(res);
}

// The median of K (3 to kMaxRegs) values per lane, all in registers (v is kept). Only the
// middle outputs of the sorting network are used: the compiler drops the exchanges that
// cannot reach them.
template <int K, typename acc_t>
C10_ALWAYS_INLINE Vectorized<acc_t> median_regs(const Vectorized<acc_t>* v, bool omit_nan) {
  using Vec = Vectorized<acc_t>;
  // A NaN (or an Inf minus an Inf) makes the sum NaN: one test for the whole block.
  Vec sum = v[0];
  for (int j = 1; j < K; ++j) sum = sum + v[j];
  const bool may_nan = any_lane(sum.isnan());
  Vec med;
  Vec w[K];
  for (int j = 0; j < K; ++j) w[j] = v[j];
  if constexpr (K == 3) {
    med = median3_net(v[0], v[1], v[2]);
  } else if constexpr (kHasFastNet<K>) {
    static_assert(K == 9);
    med = median9_fast(w);
  }
  if (K != 3 && (!kHasFastNet<K> || C10_UNLIKELY(any_zero_lane(med)))) {
    for (int j = 0; j < K; ++j) w[j] = v[j];
    sort_net(w, K);  // stable (see median())
    med = (K % 2) ? w[K / 2] : (w[(K - 1) / 2] + w[K / 2]) * Vec(acc_t(0.5));
  }
  if (C10_UNLIKELY(may_nan)) {
    // A copy made on this path only: handing out v's own address kept every block's
    // values (and the result) in stack memory on the hot path too.
    Vec spilled[K];
    for (int j = 0; j < K; ++j) spilled[j] = v[j];
    med = median_nan_block<acc_t>(spilled, K, omit_nan, med);
  }
  return med;
}

// The median of K (3 to kMaxRegs) input rows, coordinate-wise, with all values in
// registers; with M > K (M <= kMaxRegs), of the means of the K groups of M rows that
// tensor_split makes (the first M % K groups one row longer; sizes fixed at compile time,
// so that the loops unroll: with run-time group bounds this loop ran at a quarter of the
// speed).
template <typename scalar_t, int K, int M = K>
struct RowsMedianStep {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  bool omit_nan;
  bool stream = false;  // set by run_blocks
  static constexpr bool kStreamOut = true;

  template <bool kFull>
  C10_ALWAYS_INLINE void apply(const scalar_t* const* in, scalar_t* const* out, int64_t i, int64_t count) {
    Vec v[K];
    if constexpr (M > K) {
      int r = 0;
      for (int g = 0; g < K; ++g) {
        // Rows summed in order, then divided by the row count (the reference's rule).
        const int size = M / K + (g < M % K ? 1 : 0);
        v[g] = load_acc<scalar_t, kFull>(in[r] + i, count);
        for (int j = 1; j < size; ++j) v[g] = v[g] + load_acc<scalar_t, kFull>(in[r + j] + i, count);
        if (size > 1) v[g] = v[g] / Vec(static_cast<acc_t>(size));
        r += size;
      }
    } else {
      for (int j = 0; j < K; ++j) v[j] = load_acc<scalar_t, kFull>(in[j] + i, count);
    }
    store_out<scalar_t, kFull>(out[0] + i, median_regs<K>(v, omit_nan), count, stream);
  }
};

template <typename scalar_t>
using Median3Step = RowsMedianStep<scalar_t, 3>;

// K: k when fixed at compile time (2 to kMaxRegs: the values stay in registers, which
// takes constant indices), else 0. TR: trim, fixed at compile time with K (the tests of a
// run-time trim in the loops below cost as much as the sort at k = 3), else -1.
template <typename scalar_t, int K, int TR = -1>
struct SortedMeanStep {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  int64_t trim;
  bool winsorize;
  ValueBlock<acc_t>& block;
  bool stream = false;  // set by run_blocks
  static constexpr bool kStreamOut = true;

  // The trimmed / winsorized mean of the sorted v[0..K): the kept values v[trim..K-trim)
  // summed in ascending order (the reference's order), each of the outer ones replaced by
  // its nearest kept one when winsorizing; then divided by the count.
  C10_ALWAYS_INLINE Vec mean_of_sorted(const Vec* v) const {
    const int64_t t = TR >= 0 ? TR : trim;
    const int64_t lo = t, hi = K - 1 - t;
    Vec v_lo = v[0], v_hi = v[K - 1];
    for (int j = 0; j < K; ++j) {
      if (j == lo) v_lo = v[j];
      if (j == hi) v_hi = v[j];
    }
    Vec total = v_lo;
    if (!winsorize) {
      for (int j = 0; j < K; ++j)
        if (j > lo && j <= hi) total = total + v[j];
      return total / Vec(static_cast<acc_t>(K - 2 * t));
    }
    for (int p = 1; p < K; ++p) total = total + (p < lo ? v_lo : p > hi ? v_hi : v[p]);
    return total / Vec(static_cast<acc_t>(K));
  }

  template <bool kFull>
  C10_ALWAYS_INLINE void apply(const scalar_t* const* in, scalar_t* const* out, int64_t i, int64_t count) {
    if constexpr (K > 0) {
      Vec v[K];
      for (int j = 0; j < K; ++j) v[j] = load_acc<scalar_t, kFull>(in[j] + i, count);
      Vec nan = v[0].isnan();
      for (int j = 1; j < K; ++j) nan = nan | v[j].isnan();
      Vec total;
      if constexpr (kHasFastNet<K>) {
        static_assert(K == 9);
        sort9_fast(v);
        total = mean_of_sorted(v);
      }
      if (!kHasFastNet<K> || C10_UNLIKELY(any_zero_lane(total))) {
        for (int j = 0; j < K; ++j) v[j] = load_acc<scalar_t, kFull>(in[j] + i, count);
        sort_net(v, K);  // stable: the zero a stable sort keeps (see the fast networks)
        total = mean_of_sorted(v);
      }
      if (any_lane(nan)) total = Vec::blendv(total, Vec(nan_value<acc_t>()), nan);
      store_out<scalar_t, kFull>(out[0] + i, total, count, stream);
    } else {
      for (int64_t j = 0; j < block.k; ++j) block.set(j, load_acc<scalar_t, kFull>(in[j] + i, count));
      store_out<scalar_t, kFull>(out[0] + i, sorted_mean(block, trim, winsorize, count), count, stream);
    }
  }
};

// in: grad, history[0..R); out: grad, then history[slot] if write_slot.
template <typename scalar_t, int K>  // K: R + 1 when fixed at compile time (2 to kMaxRegs), else 0
struct RunningMedianStep {
  using acc_t = acc_type<scalar_t>;
  bool omit_nan;
  bool write_slot;
  ValueBlock<acc_t>& block;
  static constexpr bool kStreamOut = false;  // outputs are also inputs: keep them cached

  template <bool kFull>
  C10_ALWAYS_INLINE void apply(const scalar_t* const* in, scalar_t* const* out, int64_t i, int64_t count) {
    Vectorized<acc_t> med;
    if constexpr (K > 0) {
      Vectorized<acc_t> v[K];
      for (int j = 0; j < K; ++j) v[j] = load_acc<scalar_t, kFull>(in[j] + i, count);
      med = median_regs<K>(v, omit_nan);
    } else {
      for (int64_t j = 0; j < block.k; ++j) block.set(j, load_acc<scalar_t, kFull>(in[j] + i, count));
      med = median(block, omit_nan, count);
    }
    // The raw gradient, bit for bit, before the gradient is overwritten.
    if (write_slot) copy_raw<scalar_t, kFull>(out[1] + i, in[0] + i, count);
    store_acc<scalar_t, kFull>(out[0] + i, med, count);
  }
};

// in: param, grad, then (reduce != None) history[0..R); out: param if reduce != None, then
// history[slot] if write_slot.
template <typename scalar_t, int K>  // K: R + 1 for a median reduction in registers (2 to kMaxRegs), else 0
struct RingStep {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  RingReduce reduce;
  bool omit_nan;
  bool write_slot;
  bool decay;  // weight_decay != 0
  acc_t lr;
  acc_t weight_decay;
  ValueBlock<acc_t>& block;  // k = R + 1 values: g, then the history
  static constexpr bool kStreamOut = false;  // outputs are also inputs: keep them cached

  template <bool kFull>
  C10_ALWAYS_INLINE void apply(const scalar_t* const* in, scalar_t* const* out, int64_t i, int64_t count) {
    const bool update = reduce != RingReduce::None;
    const Vec p = (update || decay) ? load_acc<scalar_t, kFull>(in[0] + i, count) : Vec(acc_t(0));
    Vec g = load_acc<scalar_t, kFull>(in[1] + i, count);
    __at_align__ scalar_t g_rounded[Vec::size()];
    if (decay) {
      // g = round_to_dtype(grad + weight_decay * param): what the history stores and the
      // reduction sees.
      g = g + p * Vec(weight_decay);
#if defined(CGH_X86_SIMD)
      if constexpr (kFull && !std::is_same_v<scalar_t, acc_t>) {
        // A full 16-bit block rounds in registers, keeping the stack round trip below off
        // the path to the median.
        const Bits16 bits = round_to_16bit<scalar_t>(g);
        g = widen_16bit<scalar_t>(bits);
        store_bits16(g_rounded, bits);  // for the slot, off the critical path
      } else
#endif
      {
        store_acc<scalar_t, kFull>(g_rounded, g, count);
        if constexpr (!std::is_same_v<scalar_t, acc_t>) g = load_acc<scalar_t, kFull>(g_rounded, count);
      }
    }
    Vec r;
    if constexpr (K > 0) {  // run_ring_step picks K > 0 for the median reduction only
      Vec v[K];
      v[0] = g;
      for (int j = 1; j < K; ++j) v[j] = load_acc<scalar_t, kFull>(in[1 + j] + i, count);
      r = median_regs<K>(v, omit_nan);
    } else if (reduce == RingReduce::Median) {
      block.set(0, g);
      for (int64_t j = 1; j < block.k; ++j) block.set(j, load_acc<scalar_t, kFull>(in[1 + j] + i, count));
      r = median(block, omit_nan, count);
    } else if (reduce == RingReduce::Mean) {
      r = g;  // summed in order g, history[0], ..., then divided by the count
      for (int64_t j = 1; j < block.k; ++j) r = r + load_acc<scalar_t, kFull>(in[1 + j] + i, count);
      r = r / Vec(static_cast<acc_t>(block.k));
    }
    if (write_slot) {
      scalar_t* slot = out[update ? 1 : 0] + i;
      const scalar_t* src = decay ? g_rounded : in[1] + i;  // without decay g is grad, bit for bit
      copy_raw<scalar_t, kFull>(slot, src, count);
    }
    if (update) store_acc<scalar_t, kFull>(out[0] + i, p - r * Vec(lr), count);
  }
};

// ------------------------------------------------------------------ entry points
// One pass of group_mean_tile over C rows p[0..C) (kFirst: the group's first rows, else
// added to dst; kLast: then divided by div). C fixed at compile time, so that the loop
// unrolls and keeps the sum in a register.
template <int C, bool kFirst, bool kLast, typename acc_t>
void group_pass(const acc_t* const* p, int64_t len, acc_t* dst, acc_t div) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec vdiv(div);
  auto pass = [&](int64_t j, int64_t c, auto full) {
    constexpr bool kFull = decltype(full)::value;
    auto load = [&](const acc_t* q) { return kFull ? Vec::loadu(q) : Vec::loadu(q, c); };
    Vec acc = kFirst ? load(p[0] + j) : load(dst + j);
    for (int r = kFirst ? 1 : 0; r < C; ++r) acc = acc + load(p[r] + j);
    if (kLast) acc = acc / vdiv;
    if (kFull) acc.store(dst + j);
    else acc.store(dst + j, static_cast<int>(c));
  };
  int64_t j = 0;
  for (; j + W <= len; j += W) pass(j, W, std::true_type{});
  if (j < len) pass(j, len - j, std::false_type{});
}

// dst[0, len) <- the mean of the `size` (>= 2) rows rows[r][t0, t0 + len): added in order,
// then divided by size (the reference's group mean). At most 4 rows per pass,
// accumulating in dst (a cache-resident tile): rows of an [m, n] input are a large power
// of two apart, and reading many of them at once makes their loads contend for the same
// L1 sets.
template <typename acc_t>
void group_mean_tile(const acc_t* const* rows, int64_t size, int64_t t0, int64_t len, acc_t* dst) {
  const acc_t div = static_cast<acc_t>(size);
  for (int64_t i = 0; i < size;) {
    const bool first = i == 0;
    const int64_t cnt = std::min<int64_t>(first ? 4 : 3, size - i);
    const bool last = i + cnt == size;
    const acc_t* p[4];
    for (int64_t r = 0; r < cnt; ++r) p[r] = rows[i + r] + t0;
    if (first) {
      if (cnt == 4) last ? group_pass<4, true, true>(p, len, dst, div) : group_pass<4, true, false>(p, len, dst, div);
      else if (cnt == 3) group_pass<3, true, true>(p, len, dst, div);
      else group_pass<2, true, true>(p, len, dst, div);
    } else if (last) {
      if (cnt == 3) group_pass<3, false, true>(p, len, dst, div);
      else if (cnt == 2) group_pass<2, false, true>(p, len, dst, div);
      else group_pass<1, false, true>(p, len, dst, div);
    } else {
      group_pass<3, false, false>(p, len, dst, div);
    }
    i += cnt;
  }
}

// Median of means of contiguous float/double rows: the means of groups of several rows
// go to per-thread tiles (group_mean_tile), one-row groups are read in place, then the
// median over the G tiles/rows streams the output, tile by tile.
template <typename scalar_t>
void median_of_means_tiled(const KernelArgs& a, scalar_t* out, const scalar_t* const* rows, int64_t n) {
  using acc_t = scalar_t;
  constexpr int64_t W = Vectorized<acc_t>::size();
  const int64_t G = a.k;
  int64_t staged = 0;
  for (int64_t g = 0; g < G; ++g) staged += a.first[g + 1] - a.first[g] > 1;
  const bool stream = streamed<scalar_t>(a, n);
  // Tiles of all staged groups fill about 384 KiB (L2); long tiles keep each pass reading
  // long runs of each row. Tiles 5 cache lines more than their size apart (no shared L1 sets).
  int64_t T = n;
  if (staged > 0) {
    T = std::clamp<int64_t>((int64_t{384} << 10) / int64_t(sizeof(acc_t)) / staged / W * W, 1024, 32768);
    T = std::min(T, n);
  }
  const int64_t pitch = T + 5 * 64 / int64_t(sizeof(acc_t));
  thread_local std::vector<acc_t> tiles;  // grows once per thread, not per call
  if (int64_t(tiles.size()) < staged * pitch) tiles.resize(static_cast<size_t>(staged * pitch));
  c10::SmallVector<const acc_t*, 16> vals(G);
  c10::SmallVector<int64_t, 17> ident(G + 1);  // the median sees G one-row "groups"
  for (int64_t g = 0; g <= G; ++g) ident[g] = g;
  ValueBlock<acc_t> block(G);
  for (int64_t t0 = 0; t0 < n; t0 += T) {
    const int64_t len = std::min(T, n - t0);
    int64_t s = 0;
    for (int64_t g = 0; g < G; ++g) {
      const int64_t size = a.first[g + 1] - a.first[g];
      if (size == 1) {
        vals[g] = rows[a.first[g]] + t0;
      } else {
        acc_t* dst = tiles.data() + (s++) * pitch;
        group_mean_tile(rows + a.first[g], size, t0, len, dst);
        vals[g] = dst;
      }
    }
    scalar_t* o = out + t0;
    with_static_k<3, kMaxRegs>(G, [&](auto k_const) {
      constexpr int K = decltype(k_const)::value;
      if constexpr (K > 0) {
        RowsMedianStep<scalar_t, K> step{a.omit_nan};
        run_contiguous<scalar_t>(vals.data(), &o, len, stream, /*stage=*/false, G, 1, step);
      } else {
        MedianOfMeansStep<scalar_t> step{ident.data(), a.omit_nan, block};
        run_contiguous<scalar_t>(vals.data(), &o, len, stream, /*stage=*/false, G, 1, step);
      }
    });
  }
}

// The median of means with every value in registers (RowsMedianStep), for the group and
// row counts it is compiled for: G = M one-row groups (a plain median of G rows), or 3 to 5
// groups of up to kMaxRegs rows in all. False for other counts.
template <typename scalar_t>
bool run_median_of_means_in_registers(const KernelArgs& a, char** data, const int64_t* strides, int64_t n) {
  const int64_t G = a.k, M = a.n_in;
  bool done = false;
  auto run = [&](auto g_const, auto m_const) {
    constexpr int kG = decltype(g_const)::value, kM = decltype(m_const)::value;
    if constexpr (kG > 0 && kM > 0) {
      RowsMedianStep<scalar_t, kG, kM> step{a.omit_nan};
      run_blocks<scalar_t>(a, data, strides, n, step);
      done = true;
    }
  };
  using I3 = std::integral_constant<int, 3>;
  using I4 = std::integral_constant<int, 4>;
  using I5 = std::integral_constant<int, 5>;
  if (G == M) with_static_k<3, kMaxRegs>(G, [&](auto g) { run(g, g); });
  else if (G == 3) with_static_k<4, kMaxRegs>(M, [&](auto m) { run(I3{}, m); });
  else if (G == 4) with_static_k<5, kMaxRegs>(M, [&](auto m) { run(I4{}, m); });
  else if (G == 5) with_static_k<6, kMaxRegs>(M, [&](auto m) { run(I5{}, m); });
  return done;
}

template <typename scalar_t>
void run_median_of_means(const KernelArgs& a, char** data, const int64_t* strides, int64_t n) {
  if (run_median_of_means_in_registers<scalar_t>(a, data, strides, n)) return;
  if constexpr (std::is_same_v<scalar_t, acc_type<scalar_t>>) {
    bool contiguous = true;
    for (int64_t j = 0; j < a.n_out + a.n_in; ++j) contiguous = contiguous && strides[j] == int64_t(sizeof(scalar_t));
    if (contiguous) {
      c10::SmallVector<const scalar_t*, 16> rows(a.n_in);
      for (int64_t j = 0; j < a.n_in; ++j) rows[j] = reinterpret_cast<const scalar_t*>(data[a.n_out + j]);
      return median_of_means_tiled<scalar_t>(a, reinterpret_cast<scalar_t*>(data[0]), rows.data(), n);
    }
  }
  ValueBlock<acc_type<scalar_t>> block(a.k);
  MedianOfMeansStep<scalar_t> step{a.first, a.omit_nan, block};
  run_blocks<scalar_t>(a, data, strides, n, step);
}

template <typename scalar_t>
void run_median3(const KernelArgs& a, char** data, const int64_t* strides, int64_t n) {
  Median3Step<scalar_t> step{a.omit_nan};
  run_blocks<scalar_t>(a, data, strides, n, step);
}

template <typename scalar_t>
void run_sorted_mean(const KernelArgs& a, char** data, const int64_t* strides, int64_t n) {
  ValueBlock<acc_type<scalar_t>> block(a.k);
  auto run = [&](auto k_const, auto trim_const) {
    SortedMeanStep<scalar_t, decltype(k_const)::value, decltype(trim_const)::value> step{a.trim, a.winsorize, block};
    run_blocks<scalar_t>(a, data, strides, n, step);
  };
  with_static_k<2, kMaxRegs>(a.k, [&](auto k_const) {
    constexpr int K = decltype(k_const)::value;
    if constexpr (K == 0) {
      run(k_const, std::integral_constant<int, -1>{});
    } else {
      // every trim the checks allow, 0 .. (k - 1) / 2, compiled
      with_static_k<0, (K - 1) / 2>(a.trim, [&](auto trim_const) { run(k_const, trim_const); });
    }
  });
}

template <typename scalar_t>
void run_running_median(const KernelArgs& a, char** data, const int64_t* strides, int64_t n) {
  ValueBlock<acc_type<scalar_t>> block(a.k);
  with_static_k<2, kMaxRegs>(a.k, [&](auto k_const) {
    RunningMedianStep<scalar_t, decltype(k_const)::value> step{a.omit_nan, a.write_slot, block};
    run_blocks<scalar_t>(a, data, strides, n, step);
  });
}

template <typename scalar_t>
void run_ring_step(const KernelArgs& a, char** data, const int64_t* strides, int64_t n) {
  using acc_t = acc_type<scalar_t>;
  ValueBlock<acc_t> block(a.k);
  auto run = [&](auto k_const) {
    RingStep<scalar_t, decltype(k_const)::value> step{a.reduce,
                                                      a.omit_nan,
                                                      a.write_slot,
                                                      a.weight_decay != 0,
                                                      static_cast<acc_t>(a.lr),
                                                      static_cast<acc_t>(a.weight_decay),
                                                      block};
    run_blocks<scalar_t>(a, data, strides, n, step);
  };
  if (a.reduce == RingReduce::Median) return with_static_k<2, kMaxRegs>(a.k, run);
  run(std::integral_constant<int, 0>{});
}

#define CGH_ROW(fn) {&fn<float>, &fn<double>, &fn<c10::Half>, &fn<c10::BFloat16>}
const KernelTable table = {{
    CGH_ROW(run_median_of_means),  // kMedianOfMeans
    CGH_ROW(run_median3),          // kMedian3
    CGH_ROW(run_sorted_mean),      // kSortedMean
    CGH_ROW(run_running_median),   // kRunningMedian
    CGH_ROW(run_ring_step),        // kRingStep
}};
#undef CGH_ROW

}  // namespace

const KernelTable* kernel_table() { return &table; }

}  // namespace cgh::cpu::CGH_CAP
