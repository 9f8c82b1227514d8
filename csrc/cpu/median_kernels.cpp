// Native CPU kernels of the functional cgh ops: median_of_means, median3,
// foreach_median_of_means, trimmed_mean, winsorized_mean (and their out= forms).
//
// Each op reads its inputs once and writes its output once: a block of coordinates is
// loaded from every row, reduced in registers (group sums, then an exact min/max network)
// and stored. Rows x[i] are separate operands, so a row-sliced x (x = big[:, :n]) needs no
// copy; other layouts are walked in place by for_each_run (cpu_kernels.h).
#include <torch/library.h>

#include <string>
#include <vector>

#include "common/checks.h"
#include "cpu/cpu_kernels.h"
#include "cpu/fresh_output.h"

namespace cgh::cpu {
namespace {

// Runs a reduction over the rows x[0], ..., x[m-1] into out. Contiguous x and out (the
// common case) go straight from x's data pointer (no view tensor per row: they cost
// about as much as the kernel for a list of small tensors); any other layout walks the
// row views in place (cpu_kernels.h).
void run_on_rows(RunFn fn, const KernelArgs& args, const at::Tensor& out, const at::Tensor& x) {
  const int64_t m = x.size(0);
  if (x.is_contiguous() && out.is_contiguous()) {
    const int64_t n = out.numel(), elem = x.element_size();
    c10::SmallVector<char*, 17> base(m + 1);
    base[0] = static_cast<char*>(out.data_ptr());
    char* rows = static_cast<char*>(x.data_ptr());
    for (int64_t i = 0; i < m; ++i) base[i + 1] = rows + i * n * elem;
    run_kernel_contiguous(fn, args, base.data(), n, elem);
    return;
  }
  std::vector<at::Tensor> ops;
  ops.reserve(static_cast<size_t>(m) + 1);
  ops.push_back(out);
  for (int64_t i = 0; i < m; ++i) ops.push_back(x.select(0, i));
  run_kernel(fn, args, ops);
}

// ------------------------------------------------------------------ median of means
// Group g holds rows [first[g], first[g + 1]): torch.tensor_split's order, the first
// m % groups groups one row longer.
std::vector<int64_t> group_bounds(int64_t m, int64_t groups) {
  std::vector<int64_t> first(static_cast<size_t>(groups) + 1, 0);
  for (int64_t g = 0; g < groups; ++g) first[g + 1] = first[g] + m / groups + (g < m % groups ? 1 : 0);
  return first;
}

void median_of_means_into(const at::Tensor& x, int64_t groups, bool omit_nan, const at::Tensor& out) {
  const int64_t m = x.size(0);
  const std::vector<int64_t> first = group_bounds(m, groups);
  KernelArgs args;
  args.n_in = m;
  args.k = groups;
  args.first = first.data();
  args.omit_nan = omit_nan;
  run_on_rows(kernel(kMedianOfMeans, x.scalar_type()), args, out, x);
}

at::Tensor median_of_means(const at::Tensor& x, int64_t groups, bool omit_nan) {
  check_median_of_means(x, groups, "x", "median_of_means");
  at::Tensor out = fresh_output(x.sizes().slice(1), x);
  median_of_means_into(x, groups, omit_nan, out);
  return out;
}

void median_of_means_out(const at::Tensor& x, int64_t groups, bool omit_nan, at::Tensor& out) {
  check_median_of_means(x, groups, "x", "median_of_means");
  check_out(out, x.sizes().slice(1), x, "median_of_means");
  median_of_means_into(x, groups, omit_nan, out);
}

std::vector<at::Tensor> foreach_median_of_means(at::TensorList xs, int64_t groups, bool omit_nan) {
  const char* op = "foreach_median_of_means";
  for (size_t i = 0; i < xs.size(); ++i)
    check_median_of_means(xs[i], groups, ("xs[" + std::to_string(i) + "]").c_str(), op);
  std::vector<at::Tensor> outs;
  outs.reserve(xs.size());
  for (const auto& x : xs) {
    outs.push_back(fresh_output(x.sizes().slice(1), x));
    median_of_means_into(x, groups, omit_nan, outs.back());
  }
  return outs;
}

void foreach_median_of_means_out(at::TensorList xs, int64_t groups, bool omit_nan, at::TensorList out) {
  check_foreach_out(xs, groups, out);  // every tensor checked before any is written
  for (size_t i = 0; i < xs.size(); ++i) median_of_means_into(xs[i], groups, omit_nan, out[i]);
}

// ------------------------------------------------------------------ median3
void median3_into(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool omit_nan,
                  const at::Tensor& out) {
  const std::vector<at::Tensor> ops{out, a, b, c};
  KernelArgs args;
  args.n_in = 3;
  args.k = 3;
  args.omit_nan = omit_nan;
  run_kernel(kernel(kMedian3, a.scalar_type()), args, ops);
}

at::Tensor median3(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool omit_nan) {
  check_same_floats3(a, b, c, "median3");
  at::Tensor out = fresh_output(a.sizes(), a);
  median3_into(a, b, c, omit_nan, out);
  return out;
}

void median3_out(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, bool omit_nan,
                 at::Tensor& out) {
  check_same_floats3(a, b, c, "median3");
  check_out(out, a.sizes(), a, "median3");
  median3_into(a, b, c, omit_nan, out);
}

// ------------------------------------------------------------------ trimmed / winsorized
void sorted_mean_into(const at::Tensor& x, int64_t trim, bool winsorize, const at::Tensor& out) {
  const int64_t m = x.size(0);
  KernelArgs args;
  args.n_in = m;
  args.k = m;
  args.trim = trim;
  args.winsorize = winsorize;
  run_on_rows(kernel(kSortedMean, x.scalar_type()), args, out, x);
}

template <bool kWinsorize>
at::Tensor trim_op(const at::Tensor& x, int64_t trim) {
  const char* op = kWinsorize ? "winsorized_mean" : "trimmed_mean";
  check_trim(x, trim, op);
  at::Tensor out = fresh_output(x.sizes().slice(1), x);
  sorted_mean_into(x, trim, kWinsorize, out);
  return out;
}

template <bool kWinsorize>
void trim_op_out(const at::Tensor& x, int64_t trim, at::Tensor& out) {
  const char* op = kWinsorize ? "winsorized_mean" : "trimmed_mean";
  check_trim(x, trim, op);
  check_out(out, x.sizes().slice(1), x, op);
  sorted_mean_into(x, trim, kWinsorize, out);
}

}  // namespace

const char* kernel_capability() { return capability().name; }

TORCH_LIBRARY_IMPL(cgh, CPU, m) {
  m.impl("median_of_means", &median_of_means);
  m.impl("median_of_means.out", &median_of_means_out);
  m.impl("median3", &median3);
  m.impl("median3.out", &median3_out);
  m.impl("foreach_median_of_means", &foreach_median_of_means);
  m.impl("foreach_median_of_means.out", &foreach_median_of_means_out);
  m.impl("trimmed_mean", &trim_op<false>);
  m.impl("trimmed_mean.out", &trim_op_out<false>);
  m.impl("winsorized_mean", &trim_op<true>);
  m.impl("winsorized_mean.out", &trim_op_out<true>);
}

}  // namespace cgh::cpu
