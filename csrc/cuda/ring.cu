// CUDA kernel of the ring-buffer family: median3, running_median_ (and foreach) and the
// fused optimizer step ring_step_ (M3 / RM3 / RA3). Per coordinate it reads the gradient
// (and the parameter), every history slot, reduces, then writes the result and the raw
// (weight-decayed, rounded) gradient into history[slot]: one pass, every read before any
// write, so the gradient may be its own output (running median).
#include "cuda/common.cuh"

#include <ATen/Dispatch.h>

namespace cgh {
namespace cuda {
namespace {

template <typename T, int CAP>
__global__ void __launch_bounds__(kThreads)
    ring_kernel(const ListMeta meta, int R, int mode, int slot, double lr, double weight_decay, bool omit_nan) {
  using A = at::opmath_type<T>;
  constexpr int VEC = vec_width<T, CAP>();
  // Scalars in the accumulation dtype, as PyTorch rounds a Python float for a float tensor.
  const A lr_a = static_cast<A>(lr), wd_a = static_cast<A>(weight_decay);
  const bool decay = weight_decay != 0.0;
  for_each_piece<VEC>(meta, [&](int t, int64_t i, bool vec, int cnt) {
    const void* const* P = meta.ptr + t * meta.ptrs_per_tensor;
    T* p = static_cast<T*>(const_cast<void*>(P[0]));
    Vec<T, VEC> gv = load<VEC>(static_cast<const T*>(P[1]), i, vec, cnt);
    Vec<T, VEC> pv;
    if (mode != kStoreMedian) {
      pv = load<VEC>(p, i, vec, cnt);
      if (decay) {  // g = round(grad + weight_decay * param): what history stores and the reduction reads
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          gv.v[e] = static_cast<T>(static_cast<A>(gv.v[e]) + static_cast<A>(pv.v[e]) * wd_a);
      }
    }
    if (mode != kStoreOnly) {
      Vec<T, VEC> hv[CAP - 1];
#pragma unroll
      for (int j = 0; j < CAP - 1; ++j)
        if (j < R) hv[j] = load<VEC>(static_cast<const T*>(P[2 + j]), i, vec, cnt);
      Vec<T, VEC> res;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        A r;
        if (mode == kUpdateMean) {
          A total = static_cast<A>(gv.v[e]);  // g, then the slots in order
#pragma unroll
          for (int j = 0; j < CAP - 1; ++j)
            if (j < R) total = total + static_cast<A>(hv[j].v[e]);
          r = total / static_cast<A>(R + 1);
        } else {
          A vals[CAP];
          vals[0] = static_cast<A>(gv.v[e]);
#pragma unroll
          for (int j = 0; j < CAP - 1; ++j) vals[j + 1] = j < R ? static_cast<A>(hv[j].v[e]) : pad_value<A>();
          r = median_of(vals, low_bits(R + 1), R + 1, omit_nan);
        }
        res.v[e] = mode == kStoreMedian ? static_cast<T>(r) : static_cast<T>(static_cast<A>(pv.v[e]) - r * lr_a);
      }
      if (slot >= 0) store<VEC>(static_cast<T*>(const_cast<void*>(P[2 + slot])), i, vec, cnt, gv);
      store<VEC>(p, i, vec, cnt, res);
    } else {
      store<VEC>(static_cast<T*>(const_cast<void*>(P[2 + slot])), i, vec, cnt, gv);
    }
  });
}

}  // namespace

void launch_ring(const std::vector<Entry>& entries, c10::ScalarType dtype, int cap, int R, RingMode mode, int slot,
                 double lr, double weight_decay, bool omit_nan) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cgh_ring_cuda", [&] {
    auto go = [&](auto cap_c) {
      constexpr int CAP = decltype(cap_c)::value;
      launch_list(entries, R + 2, vec_width<scalar_t, CAP>(), [&](const ListMeta& meta, int64_t grid) {
        ring_kernel<scalar_t, CAP><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(
            meta, R, static_cast<int>(mode), slot, lr, weight_decay, omit_nan);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    };
    if (cap == 3) go(std::integral_constant<int, 3>{});
    else if (cap == 8) go(std::integral_constant<int, 8>{});
    else if (cap == kMaxCap) go(std::integral_constant<int, kMaxCap>{});
    else TORCH_INTERNAL_ASSERT(false, "cgh: no ring kernel for capacity ", cap);
  });
}

}  // namespace cuda
}  // namespace cgh
