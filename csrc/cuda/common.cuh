// Device helpers and the tensor-list launch machinery shared by the CUDA kernels of cgh_ops.
//
// Every kernel walks a *list* of tensors (one tensor is a list of one) in tiles: a tile is
// kThreads vectors of VEC elements of one tensor, and a grid sized to the GPU
// (SMs x resident blocks) strides over the tiles of all tensors of the launch. The tensor
// list travels in the kernel arguments (ListMeta, under the 4 KB argument limit that
// PyTorch's MultiTensorApply also respects); a list too long for one ListMeta is split into
// several launches. All offsets are 64-bit.
//
// Numerical rules (cgh_ops/reference.py): accumulation in float (double for double),
// rows summed in order then divided with a true division, even-count medians (lo+hi)*0.5,
// and no FMA contraction (setup.py compiles with --fmad=false). NaN policy: NaNs are
// counted and replaced by +inf *before* sorting, so the comparisons below never see a NaN
// (fminf/fmaxf would silently drop it); omit_nan=false then turns any NaN into NaN.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "cuda/launch.h"

namespace cgh {
namespace cuda {

struct ListMeta {
  const void* ptr[kMaxPtrs];        // tensor t's pointers: ptr[t * ptrs_per_tensor + j]
  int64_t numel[kMaxTensors];       // output coordinates of tensor t
  int64_t row_stride[kMaxTensors];  // elements between rows of x (row-wise ops)
  int64_t tile_end[kMaxTensors];    // prefix sums of the tiles of tensors 0..t
  int32_t rows[kMaxTensors];        // m of tensor t (row-wise ops)
  uint32_t start_mask[kMaxTensors]; // median_of_means, m <= 32: bit j set if row j starts a group
  uint32_t end_mask[kMaxTensors];   // ... and if row j ends one
  uint64_t vec_ok;                  // bit t: all of t's pointers (and row stride) allow 16-byte access
  int32_t ntensors;
  int32_t ptrs_per_tensor;
};
static_assert(sizeof(ListMeta) <= 3200, "ListMeta must leave room in the 4 KB kernel-argument space");

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

// 16-byte accesses for the small capacities; one element per thread for the 32-value
// kernels, whose 32-wide sorting network already needs the registers.
template <typename T, int CAP>
constexpr int vec_width() {
  return CAP >= kMaxCap ? 1 : static_cast<int>(16 / sizeof(T));
}

// Loads VEC elements at p[i..]: one vector access when `vec`, else `cnt` scalar loads
// (the tail of a tensor, or a misaligned one).
template <int VEC, typename T>
__device__ __forceinline__ Vec<T, VEC> load(const T* p, int64_t i, bool vec, int cnt) {
  Vec<T, VEC> r;
  if (vec) {
    r = *reinterpret_cast<const Vec<T, VEC>*>(p + i);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) r.v[e] = e < cnt ? p[i + e] : T(0);
  }
  return r;
}

template <int VEC, typename T>
__device__ __forceinline__ void store(T* p, int64_t i, bool vec, int cnt, const Vec<T, VEC>& r) {
  if (vec) {
    *reinterpret_cast<Vec<T, VEC>*>(p + i) = r;
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e)
      if (e < cnt) p[i + e] = r.v[e];
  }
}

// Calls body(t, i, vec, cnt) for each thread's VEC-element piece [i, i + cnt) of tensor t.
template <int VEC, typename Body>
__device__ __forceinline__ void for_each_piece(const ListMeta& meta, Body body) {
  const int64_t total = meta.tile_end[meta.ntensors - 1];
  int t = 0;
  for (int64_t tile = blockIdx.x; tile < total; tile += gridDim.x) {
    while (tile >= meta.tile_end[t]) ++t;  // tiles only grow: amortized O(1)
    const int64_t first = t ? meta.tile_end[t - 1] : 0;
    const int64_t i = (tile - first) * (int64_t)(kThreads * VEC) + (int64_t)threadIdx.x * VEC;
    const int64_t n = meta.numel[t];
    if (i >= n) continue;
    const int cnt = n - i < VEC ? static_cast<int>(n - i) : VEC;
    const bool vec = VEC > 1 && cnt == VEC && ((meta.vec_ok >> t) & 1);
    body(t, i, vec, cnt);
  }
}

template <typename A>
__device__ __forceinline__ A pad_value() {
  return std::numeric_limits<A>::infinity();
}

template <typename A>
__device__ __forceinline__ A nan_value() {
  return std::numeric_limits<A>::quiet_NaN();
}

template <typename A>
__device__ __forceinline__ void cswap(A& a, A& b) {
  const bool s = b < a;  // never NaN here (see the file comment)
  const A lo = s ? b : a, hi = s ? a : b;
  a = lo;
  b = hi;
}

// Sorts v ascending with a network of compile-time indices (registers, no local memory):
// odd-even transposition for small N, bitonic for powers of two above 8.
template <int N, typename A>
__device__ __forceinline__ void sort_net(A (&v)[N]) {
  if constexpr (N > 8 && (N & (N - 1)) == 0) {
#pragma unroll
    for (int k = 2; k <= N; k <<= 1) {
#pragma unroll
      for (int j = k >> 1; j > 0; j >>= 1) {
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const int l = i ^ j;
          if (l > i) {
            if ((i & k) == 0) cswap(v[i], v[l]);
            else cswap(v[l], v[i]);
          }
        }
      }
    }
  } else {
#pragma unroll
    for (int round = 0; round < N; ++round) {
#pragma unroll
      for (int i = round & 1; i + 1 < N; i += 2) cswap(v[i], v[i + 1]);
    }
  }
}

// v[i] for a run-time i, by compile-time selects (a run-time index would spill v).
template <int N, typename A>
__device__ __forceinline__ A select(const A (&v)[N], int i) {
  A r = v[0];
#pragma unroll
  for (int j = 1; j < N; ++j)
    if (j == i) r = v[j];
  return r;
}

// Median of the k values v[i] with bit i of `present` set; the other entries are ignored.
// Odd count: the middle value; even: (lo + hi) * 0.5; NaN policy as in the file comment.
template <int N, typename A>
__device__ __forceinline__ A median_of(A (&v)[N], uint32_t present, int k, bool omit_nan) {
  int nans = 0;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const bool here = (present >> i) & 1u;
    const bool nan = here && v[i] != v[i];
    nans += nan;
    if (!here || nan) v[i] = pad_value<A>();  // +inf sorts after every real value
  }
  const int c = k - nans;
  if (c == 0 || (nans && !omit_nan)) return nan_value<A>();
  sort_net(v);
  const A lo = select(v, (c - 1) >> 1);
  const A hi = select(v, c >> 1);
  return (c & 1) ? lo : (lo + hi) * A(0.5);
}

__host__ __device__ constexpr uint32_t low_bits(int k) {
  return k >= 32 ? 0xffffffffu : ((1u << k) - 1u);
}

// ------------------------------------------------------------------------- host side
// Resident blocks the whole GPU holds: the grid of a grid-stride launch.
inline int64_t grid_limit() {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  return static_cast<int64_t>(prop->multiProcessorCount) * (prop->maxThreadsPerMultiProcessor / kThreads);
}

// Packs `entries` (ptrs_per_tensor pointers each) into as few ListMeta as fit, and calls
// launch(meta, grid) for each; a tensor never straddles two launches.
template <typename Launch>
void launch_list(const std::vector<Entry>& entries, int ptrs_per_tensor, int vec, Launch launch) {
  const int per_launch = std::min(kMaxTensors, kMaxPtrs / ptrs_per_tensor);
  TORCH_INTERNAL_ASSERT(per_launch >= 1 && per_launch <= 64);
  const int64_t tile_elems = static_cast<int64_t>(kThreads) * vec;
  ListMeta meta{};
  meta.ptrs_per_tensor = ptrs_per_tensor;
  int64_t tiles = 0;
  auto flush = [&]() {
    if (meta.ntensors == 0) return;
    launch(meta, std::min(tiles, grid_limit()));
    meta = ListMeta{};
    meta.ptrs_per_tensor = ptrs_per_tensor;
    tiles = 0;
  };
  for (const Entry& e : entries) {
    if (e.numel == 0) continue;
    const int t = meta.ntensors;
    for (int j = 0; j < ptrs_per_tensor; ++j) meta.ptr[t * ptrs_per_tensor + j] = e.ptrs[j];
    meta.numel[t] = e.numel;
    meta.row_stride[t] = e.row_stride;
    meta.rows[t] = e.rows;
    meta.start_mask[t] = e.start_mask;
    meta.end_mask[t] = e.end_mask;
    if (e.vec_ok) meta.vec_ok |= uint64_t{1} << t;
    tiles += (e.numel + tile_elems - 1) / tile_elems;
    meta.tile_end[t] = tiles;
    meta.ntensors = t + 1;
    if (meta.ntensors == per_launch) flush();
  }
  flush();
}

}  // namespace cuda
}  // namespace cgh
