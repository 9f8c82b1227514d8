// CUDA kernels of the row-wise reductions: median_of_means (and its foreach form) and
// trimmed_mean / winsorized_mean. x is [m, n] with unit-stride rows `row_stride` apart.
#include "cuda/common.cuh"

#include <ATen/Dispatch.h>

namespace cgh {
namespace cuda {
namespace {

template <typename T, int CAP, bool STREAMING>
__global__ void __launch_bounds__(kThreads) median_of_means_kernel(const ListMeta meta, int groups, bool omit_nan) {
  using A = at::opmath_type<T>;
  constexpr int VEC = vec_width<T, CAP>();
  for_each_piece<VEC>(meta, [&](int t, int64_t i, bool vec, int cnt) {
    const T* x = static_cast<const T*>(meta.ptr[t * meta.ptrs_per_tensor]);
    T* out = static_cast<T*>(const_cast<void*>(meta.ptr[t * meta.ptrs_per_tensor + 1]));
    const int64_t rs = meta.row_stride[t];
    const int m = meta.rows[t];
    Vec<T, VEC> res;
    if constexpr (!STREAMING) {
      // Every row in registers: all loads issue before the first use.
      Vec<T, VEC> row[CAP];
#pragma unroll
      for (int j = 0; j < CAP; ++j)
        if (j < m) row[j] = load<VEC>(x + j * rs, i, vec, cnt);
      const uint32_t smask = meta.start_mask[t], emask = meta.end_mask[t];
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        // A group's mean lands in the slot of its last row (emask); the median ignores
        // the order of its values, and the other slots are left out.
        A slot[CAP];
        A cur = A(0);
        int gstart = 0;
#pragma unroll
        for (int j = 0; j < CAP; ++j) {
          slot[j] = pad_value<A>();
          if (j < m) {
            const A v = static_cast<A>(row[j].v[e]);
            if ((smask >> j) & 1u) {
              cur = v;  // the first row itself, as the reference (not 0 + row)
              gstart = j;
            } else {
              cur = cur + v;
            }
            if ((emask >> j) & 1u) slot[j] = cur / static_cast<A>(j - gstart + 1);
          }
        }
        res.v[e] = static_cast<T>(median_of(slot, emask, groups, omit_nan));
      }
    } else {
      // Many rows: stream them group by group (torch.tensor_split's sizes).
      const int q = m / groups, r = m % groups;
      A mean[CAP][VEC];
#pragma unroll
      for (int g = 0; g < CAP; ++g) {
        if (g < groups) {
          const int64_t start = static_cast<int64_t>(g) * q + (g < r ? g : r);
          const int size = q + (g < r ? 1 : 0);
          const Vec<T, VEC> first = load<VEC>(x + start * rs, i, vec, cnt);
          A acc[VEC];
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[e] = static_cast<A>(first.v[e]);
          for (int j = 1; j < size; ++j) {
            const Vec<T, VEC> v = load<VEC>(x + (start + j) * rs, i, vec, cnt);
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[e] = acc[e] + static_cast<A>(v.v[e]);
          }
#pragma unroll
          for (int e = 0; e < VEC; ++e) mean[g][e] = acc[e] / static_cast<A>(size);
        }
      }
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        A vals[CAP];
#pragma unroll
        for (int g = 0; g < CAP; ++g) vals[g] = g < groups ? mean[g][e] : pad_value<A>();
        res.v[e] = static_cast<T>(median_of(vals, low_bits(groups), groups, omit_nan));
      }
    }
    store<VEC>(out, i, vec, cnt, res);
  });
}

// Sorted, then summed in ascending order: trimmed keeps s[trim .. m-trim), winsorized sums
// m values with the ends clamped to s[trim] and s[m-1-trim]. NaN anywhere gives NaN.
template <int N, typename A>
__device__ __forceinline__ A trimmed_of(A (&v)[N], int m, int trim, bool winsorize) {
  bool nan = false;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const bool here = i < m;
    const bool is_nan = here && v[i] != v[i];
    nan |= is_nan;
    if (!here || is_nan) v[i] = pad_value<A>();
  }
  sort_net(v);
  A total = A(0);
  if (winsorize) {
    const A low = select(v, trim), high = select(v, m - 1 - trim);
#pragma unroll
    for (int p = 0; p < N; ++p) {
      if (p < m) {
        const A x = p < trim ? low : (p > m - 1 - trim ? high : v[p]);
        total = p == 0 ? x : total + x;
      }
    }
    total = total / static_cast<A>(m);
  } else {
#pragma unroll
    for (int p = 0; p < N; ++p)
      if (p >= trim && p < m - trim) total = p == trim ? v[p] : total + v[p];
    total = total / static_cast<A>(m - 2 * trim);
  }
  return nan ? nan_value<A>() : total;
}

template <typename T, int CAP>
__global__ void __launch_bounds__(kThreads) trimmed_kernel(const ListMeta meta, int trim, bool winsorize) {
  using A = at::opmath_type<T>;
  constexpr int VEC = vec_width<T, CAP>();
  for_each_piece<VEC>(meta, [&](int t, int64_t i, bool vec, int cnt) {
    const T* x = static_cast<const T*>(meta.ptr[t * meta.ptrs_per_tensor]);
    T* out = static_cast<T*>(const_cast<void*>(meta.ptr[t * meta.ptrs_per_tensor + 1]));
    const int64_t rs = meta.row_stride[t];
    const int m = meta.rows[t];
    Vec<T, VEC> row[CAP];
#pragma unroll
    for (int j = 0; j < CAP; ++j)
      if (j < m) row[j] = load<VEC>(x + j * rs, i, vec, cnt);
    Vec<T, VEC> res;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      A v[CAP];
#pragma unroll
      for (int j = 0; j < CAP; ++j) v[j] = j < m ? static_cast<A>(row[j].v[e]) : pad_value<A>();
      res.v[e] = static_cast<T>(trimmed_of(v, m, trim, winsorize));
    }
    store<VEC>(out, i, vec, cnt, res);
  });
}

}  // namespace

void launch_median_of_means(const std::vector<Entry>& entries, c10::ScalarType dtype, int cap, bool streaming,
                            int groups, bool omit_nan) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cgh_median_of_means_cuda", [&] {
    auto go = [&](auto cap_c, auto streaming_c) {
      constexpr int CAP = decltype(cap_c)::value;
      constexpr bool STREAMING = decltype(streaming_c)::value;
      launch_list(entries, 2, vec_width<scalar_t, CAP>(), [&](const ListMeta& meta, int64_t grid) {
        median_of_means_kernel<scalar_t, CAP, STREAMING>
            <<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(meta, groups, omit_nan);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    };
    using F = std::false_type;
    using T = std::true_type;
    using C3 = std::integral_constant<int, 3>;
    using C8 = std::integral_constant<int, 8>;
    using C32 = std::integral_constant<int, kMaxCap>;
    if (cap == 3) streaming ? go(C3{}, T{}) : go(C3{}, F{});
    else if (cap == 8) streaming ? go(C8{}, T{}) : go(C8{}, F{});
    else if (cap == kMaxCap) streaming ? go(C32{}, T{}) : go(C32{}, F{});
    else TORCH_INTERNAL_ASSERT(false, "cgh: no median_of_means kernel for capacity ", cap);
  });
}

void launch_trimmed(const std::vector<Entry>& entries, c10::ScalarType dtype, int cap, int trim, bool winsorize) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "cgh_trimmed_cuda", [&] {
    auto go = [&](auto cap_c) {
      constexpr int CAP = decltype(cap_c)::value;
      launch_list(entries, 2, vec_width<scalar_t, CAP>(), [&](const ListMeta& meta, int64_t grid) {
        trimmed_kernel<scalar_t, CAP><<<static_cast<unsigned>(grid), kThreads, 0, stream>>>(meta, trim, winsorize);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    };
    if (cap == 3) go(std::integral_constant<int, 3>{});
    else if (cap == 8) go(std::integral_constant<int, 8>{});
    else if (cap == kMaxCap) go(std::integral_constant<int, kMaxCap>{});
    else TORCH_INTERNAL_ASSERT(false, "cgh: no trimmed kernel for capacity ", cap);
  });
}

}  // namespace cuda
}  // namespace cgh
