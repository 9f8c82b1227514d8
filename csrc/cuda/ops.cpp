// The CUDA kernels of every cgh op overload: argument checks (csrc/common/checks.h, the
// same wording as cgh_ops/_checks.py), layout handling, then one launch per list.
//
// Layouts: row-wise ops read x as [m, n] rows with unit stride that may sit any distance
// apart (a view); a row that is itself strided is copied first. A non-contiguous output is
// computed into a contiguous buffer and copied back. More than 32 values per coordinate
// (rare: the optimizers use 3 to 8) take a sort-based path built from ATen ops that
// mirrors cgh_ops/reference.py step by step, on the device and without synchronizing.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <map>
#include <tuple>

#include "common/checks.h"
#include "cuda/launch.h"

namespace cgh {
namespace cuda {
namespace {

using at::Tensor;

c10::ScalarType acc_type(c10::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

Tensor rows_2d(const Tensor& x) {
  Tensor x2 = x.reshape({x.size(0), -1});
  if (x2.size(1) > 1 && x2.stride(1) != 1) x2 = x2.contiguous();
  return x2;
}

// Contiguous `out`, or a fresh buffer whose result is copied into `out` afterwards.
Tensor contiguous_target(const Tensor& out) {
  return out.is_contiguous() ? out : at::empty(out.sizes(), out.options());
}

bool row_vec_ok(const Tensor& x2, const Tensor& out) {
  return aligned16(x2.data_ptr()) && aligned16(out.data_ptr()) && (x2.stride(0) * x2.element_size()) % 16 == 0;
}

// torch.tensor_split's groups of m rows as bit masks of their first and last rows (m <= 32).
std::pair<uint32_t, uint32_t> group_masks(int64_t m, int64_t groups) {
  const int64_t q = m / groups, r = m % groups;
  uint32_t start = 0, end = 0;
  int64_t row = 0;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t size = q + (g < r ? 1 : 0);
    start |= 1u << row;
    end |= 1u << (row + size - 1);
    row += size;
  }
  return {start, end};
}

// ------------------------------------------------------------------ ATen path (k > 32)
Tensor scalar_like(double v, const Tensor& t) {
  // A 0-dim tensor on t's device: dividing by it is a true division (dividing by a Python
  // number would multiply by its reciprocal on CUDA, unlike the reference on CPU).
  return at::scalar_tensor(v, t.options());
}

Tensor sum_rows_in_order(const std::vector<Tensor>& rows) {
  Tensor total = rows[0];
  for (size_t i = 1; i < rows.size(); ++i) total = total + rows[i];
  return total;
}

Tensor median_of_values(const std::vector<Tensor>& values, bool omit_nan) {
  const Tensor v = at::stack(values);
  const int64_t k = v.size(0);
  if (k == 1) return v[0].clone();
  const Tensor s = std::get<0>(at::sort(v, 0));  // NaN sorts last
  const Tensor nan_mask = at::isnan(v);
  const Tensor nan = at::full({}, std::numeric_limits<double>::quiet_NaN(), v.options());
  if (!omit_nan) {
    const Tensor lo = s[(k - 1) / 2], hi = s[k / 2];
    const Tensor med = k % 2 ? lo : (lo + hi) * 0.5;
    return at::where(nan_mask.any(0), nan, med);
  }
  const Tensor count = nan_mask.logical_not().sum(0);
  const Tensor lo_i = at::div(count - 1, 2, "floor").clamp_min(0).unsqueeze(0);
  const Tensor hi_i = at::div(count, 2, "floor").clamp_max(k - 1).unsqueeze(0);
  const Tensor lo = s.gather(0, lo_i)[0], hi = s.gather(0, hi_i)[0];
  const Tensor med = at::where(count.remainder(2) == 1, lo, (lo + hi) * 0.5);
  return at::where(count == 0, nan, med);
}

void median_of_means_aten(const Tensor& x, int64_t groups, bool omit_nan, Tensor& out) {
  const auto acc = acc_type(x.scalar_type());
  std::vector<Tensor> means;
  for (const Tensor& chunk : at::tensor_split(x, groups, 0)) {
    std::vector<Tensor> rows;
    for (int64_t j = 0; j < chunk.size(0); ++j) rows.push_back(chunk[j].to(acc));
    const Tensor total = sum_rows_in_order(rows);
    means.push_back(total / scalar_like(static_cast<double>(chunk.size(0)), total));
  }
  out.copy_(median_of_values(means, omit_nan));
}

void trimmed_aten(const Tensor& x, int64_t trim, bool winsorize, Tensor& out) {
  const Tensor v = x.to(acc_type(x.scalar_type()));
  const Tensor s = std::get<0>(at::sort(v, 0));
  const Tensor has_nan = at::isnan(v).any(0);
  const int64_t m = s.size(0);
  std::vector<Tensor> rows;
  for (int64_t p = 0; p < m; ++p) {
    if (winsorize) rows.push_back(s[std::min(std::max(p, trim), m - 1 - trim)]);
    else if (p >= trim && p < m - trim) rows.push_back(s[p]);
  }
  const Tensor total = sum_rows_in_order(rows);
  const Tensor mean = total / scalar_like(static_cast<double>(rows.size()), total);
  out.copy_(at::where(has_nan, std::numeric_limits<double>::quiet_NaN(), mean));
}

// ------------------------------------------------------------------ median_of_means
// One launch per (device, dtype, kernel variant) for the whole list.
void median_of_means_list(const std::vector<Tensor>& xs, int64_t groups, bool omit_nan,
                          const std::vector<Tensor>& outs) {
  using Key = std::tuple<int, int, int, bool>;  // device, dtype, capacity, streaming
  std::map<Key, std::vector<Entry>> batches;
  std::vector<std::pair<Tensor, Tensor>> copy_back;  // (out, buffer)
  std::vector<Tensor> keep_alive;                    // copies the launches read
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    Tensor out = outs[i];
    if (out.numel() == 0) continue;
    const int64_t m = x.size(0);
    const bool streaming = m > kMaxCap;
    const int cap = cap_for(streaming ? groups : m);
    if (cap == 0) {
      c10::cuda::CUDAGuard guard(x.device());
      median_of_means_aten(x, groups, omit_nan, out);
      continue;
    }
    const Tensor x2 = rows_2d(x);
    const Tensor dst = contiguous_target(out);
    if (!dst.is_same(out)) copy_back.emplace_back(out, dst);
    keep_alive.push_back(x2);
    keep_alive.push_back(dst);
    Entry e;
    e.ptrs = {x2.data_ptr(), dst.data_ptr()};
    e.numel = dst.numel();
    e.row_stride = x2.stride(0);
    e.rows = static_cast<int32_t>(std::min<int64_t>(m, std::numeric_limits<int32_t>::max()));
    if (!streaming) std::tie(e.start_mask, e.end_mask) = group_masks(m, groups);
    e.vec_ok = row_vec_ok(x2, dst);
    batches[Key{x.get_device(), static_cast<int>(x.scalar_type()), cap, streaming}].push_back(std::move(e));
  }
  for (const auto& [key, entries] : batches) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(std::get<0>(key)));
    launch_median_of_means(entries, static_cast<c10::ScalarType>(std::get<1>(key)), std::get<2>(key),
                           std::get<3>(key), static_cast<int>(groups), omit_nan);
  }
  for (auto& [out, buf] : copy_back) out.copy_(buf);
}

void median_of_means_out(const Tensor& x, int64_t groups, bool omit_nan, Tensor& out) {
  check_median_of_means(x, groups, "x", "median_of_means");
  check_out(out, x.sizes().slice(1), x, "median_of_means");
  median_of_means_list({x}, groups, omit_nan, {out});
}

Tensor median_of_means(const Tensor& x, int64_t groups, bool omit_nan) {
  check_median_of_means(x, groups, "x", "median_of_means");
  Tensor out = at::empty(x.sizes().slice(1), x.options());
  median_of_means_list({x}, groups, omit_nan, {out});
  return out;
}

std::vector<Tensor> foreach_median_of_means(at::TensorList xs, int64_t groups, bool omit_nan) {
  for (size_t i = 0; i < xs.size(); ++i)
    check_median_of_means(xs[i], groups, detail::indexed("xs", i).c_str(), "foreach_median_of_means");
  std::vector<Tensor> outs;
  for (const Tensor& x : xs) outs.push_back(at::empty(x.sizes().slice(1), x.options()));
  median_of_means_list(xs.vec(), groups, omit_nan, outs);
  return outs;
}

void foreach_median_of_means_out(at::TensorList xs, int64_t groups, bool omit_nan, at::TensorList out) {
  check_foreach_out(xs, groups, out);
  median_of_means_list(xs.vec(), groups, omit_nan, out.vec());
}

// ------------------------------------------------------------------ trimmed / winsorized
void trimmed_into(const Tensor& x, int64_t trim, bool winsorize, Tensor& out) {
  if (out.numel() == 0) return;
  c10::cuda::CUDAGuard guard(x.device());
  const int cap = cap_for(x.size(0));
  if (cap == 0) return trimmed_aten(x, trim, winsorize, out);
  const Tensor x2 = rows_2d(x);
  const Tensor dst = contiguous_target(out);
  Entry e;
  e.ptrs = {x2.data_ptr(), dst.data_ptr()};
  e.numel = dst.numel();
  e.row_stride = x2.stride(0);
  e.rows = static_cast<int32_t>(x.size(0));
  e.vec_ok = row_vec_ok(x2, dst);
  launch_trimmed({e}, x.scalar_type(), cap, static_cast<int>(trim), winsorize);
  if (!dst.is_same(out)) out.copy_(dst);
}

template <bool WINSORIZE>
Tensor trim_op(const Tensor& x, int64_t trim) {
  const char* op = WINSORIZE ? "winsorized_mean" : "trimmed_mean";
  check_trim(x, trim, op);
  Tensor out = at::empty(x.sizes().slice(1), x.options());
  trimmed_into(x, trim, WINSORIZE, out);
  return out;
}

template <bool WINSORIZE>
void trim_op_out(const Tensor& x, int64_t trim, Tensor& out) {
  const char* op = WINSORIZE ? "winsorized_mean" : "trimmed_mean";
  check_trim(x, trim, op);
  check_out(out, x.sizes().slice(1), x, op);
  trimmed_into(x, trim, WINSORIZE, out);
}

// ------------------------------------------------------------------ ring family
// params[i] (result), grads[i] (input), history[i*R .. i*R+R): one launch per
// (device, dtype). Strided tensors run through contiguous buffers copied back after.
void ring_list(const std::vector<Tensor>& results, const std::vector<Tensor>& grads, const std::vector<Tensor>& history,
               int64_t R, RingMode mode, int64_t slot, double lr, double wd, bool omit_nan) {
  const int cap = cap_for(R + 1);
  std::map<std::pair<int, int>, std::vector<Entry>> batches;
  std::vector<std::pair<Tensor, Tensor>> copy_back;
  std::vector<Tensor> keep_alive;
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i].numel() == 0) continue;
    std::vector<Tensor> ts = {results[i], grads[i]};
    for (int64_t j = 0; j < R; ++j) ts.push_back(history[i * R + j]);
    Entry e;
    e.vec_ok = true;
    for (size_t j = 0; j < ts.size(); ++j) {
      Tensor buf = ts[j].is_contiguous() ? ts[j] : ts[j].contiguous();
      const bool written = j == 0 ? mode != kStoreOnly : (j >= 2 && static_cast<int64_t>(j) - 2 == slot);
      if (!buf.is_same(ts[j]) && written) copy_back.emplace_back(ts[j], buf);
      if (j == 1 && mode == kStoreMedian && results[i].is_same(grads[i])) buf = keep_alive[keep_alive.size() - 1];
      keep_alive.push_back(buf);
      e.ptrs.push_back(buf.data_ptr());
      e.vec_ok = e.vec_ok && aligned16(buf.data_ptr());
    }
    e.numel = results[i].numel();
    batches[{results[i].get_device(), static_cast<int>(results[i].scalar_type())}].push_back(std::move(e));
  }
  for (const auto& [key, entries] : batches) {
    c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(key.first));
    launch_ring(entries, static_cast<c10::ScalarType>(key.second), cap, static_cast<int>(R), mode,
                static_cast<int>(slot), lr, wd, omit_nan);
  }
  for (auto& [dst, buf] : copy_back) dst.copy_(buf);
}

// The sort-based path for R + 1 > 32 values, step by step as the reference.
void ring_aten(const std::vector<Tensor>& results, const std::vector<Tensor>& grads,
               const std::vector<Tensor>& history, int64_t R, RingMode mode, int64_t slot, double lr, double wd,
               bool omit_nan) {
  for (size_t i = 0; i < results.size(); ++i) {
    c10::cuda::CUDAGuard guard(results[i].device());
    const Tensor& p = results[i];
    const auto acc = acc_type(p.scalar_type());
    Tensor g = grads[i].to(acc);
    if (mode != kStoreMedian && wd != 0) g = g + p.to(acc) * wd;
    g = g.to(p.scalar_type());
    Tensor new_p;
    if (mode != kStoreOnly) {
      std::vector<Tensor> values = {g.to(acc)};
      for (int64_t j = 0; j < R; ++j) values.push_back(history[i * R + j].to(acc));
      Tensor r;
      if (mode == kUpdateMean) {
        const Tensor total = sum_rows_in_order(values);
        r = total / scalar_like(static_cast<double>(values.size()), total);
      } else {
        r = median_of_values(values, omit_nan);
      }
      new_p = mode == kStoreMedian ? r.to(p.scalar_type()) : (p.to(acc) - r * lr).to(p.scalar_type());
    }
    if (slot >= 0) history[i * R + slot].copy_(g);
    if (mode != kStoreOnly) const_cast<Tensor&>(p).copy_(new_p);
  }
}

void ring_dispatch(const std::vector<Tensor>& results, const std::vector<Tensor>& grads,
                   const std::vector<Tensor>& history, int64_t R, RingMode mode, int64_t slot, double lr, double wd,
                   bool omit_nan) {
  if (cap_for(R + 1) == 0) return ring_aten(results, grads, history, R, mode, slot, lr, wd, omit_nan);
  ring_list(results, grads, history, R, mode, slot, lr, wd, omit_nan);
}

Tensor median3(const Tensor& a, const Tensor& b, const Tensor& c, bool omit_nan) {
  check_same_floats3(a, b, c, "median3");
  Tensor out = at::empty(a.sizes(), a.options());
  ring_dispatch({out}, {a}, {b, c}, 2, kStoreMedian, -1, 0.0, 0.0, omit_nan);
  return out;
}

void median3_out(const Tensor& a, const Tensor& b, const Tensor& c, bool omit_nan, Tensor& out) {
  check_same_floats3(a, b, c, "median3");
  check_out(out, a.sizes(), a, "median3");
  ring_dispatch({out}, {a}, {b, c}, 2, kStoreMedian, -1, 0.0, 0.0, omit_nan);
}

void running_median_(const Tensor& grad, at::TensorList history, int64_t slot, bool omit_nan) {
  const int64_t R = check_history({grad}, history, slot, "running_median_", "grad", /*indexed=*/false);
  ring_dispatch({grad}, {grad}, history.vec(), R, kStoreMedian, slot, 0.0, 0.0, omit_nan);
}

void foreach_running_median_(at::TensorList grads, at::TensorList history, int64_t slot, bool omit_nan) {
  const int64_t R = check_history(grads, history, slot, "foreach_running_median_", "grads");
  ring_dispatch(grads.vec(), grads.vec(), history.vec(), R, kStoreMedian, slot, 0.0, 0.0, omit_nan);
}

void ring_step_(at::TensorList params, at::TensorList grads, at::TensorList history, int64_t slot, double lr,
                double weight_decay, c10::string_view reduce, bool omit_nan) {
  const int64_t R = check_ring_step(params, grads, history, slot, reduce);
  const Reduce r = parse_reduce(reduce);
  const RingMode mode = r == Reduce::Median ? kUpdateMedian : r == Reduce::Mean ? kUpdateMean : kStoreOnly;
  ring_dispatch(params.vec(), grads.vec(), history.vec(), R, mode, slot, lr, weight_decay, omit_nan);
}

}  // namespace

TORCH_LIBRARY_IMPL(cgh, CUDA, m) {
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
  m.impl("running_median_", &running_median_);
  m.impl("foreach_running_median_", &foreach_running_median_);
  m.impl("ring_step_", &ring_step_);
}

}  // namespace cuda
}  // namespace cgh
