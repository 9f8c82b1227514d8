// Native CPU kernels of the in-place optimizer ops: running_median_,
// foreach_running_median_ and the fused step ring_step_ (M3 / RM3 / RA3).
//
// history[i * R + j] is slot j of grads[i] (or params[i]). Per coordinate, every value is
// read first, then the history slot and the gradient/parameter are written, so one pass
// over the tensors does the whole update and the slot's old value is still part of the
// reduction (cgh_ops/reference.py).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

#include "common/checks.h"
#include "cpu/cpu_kernels.h"

namespace cgh::cpu {
namespace {

// ------------------------------------------------------------------ running median
// in: grad, history[0..R); out: grad, then history[slot] if write_slot.
template <typename scalar_t, int K>  // K: R + 1 when fixed at compile time (3), else 0
struct RunningMedianStep {
  using acc_t = acc_type<scalar_t>;
  bool omit_nan;
  bool write_slot;
  ValueBlock<acc_t>& block;

  template <bool kFull>
  void apply(const scalar_t* const* in, scalar_t* const* out, int64_t i, int64_t count) {
    const int64_t k = K ? K : block.k;
    for (int64_t j = 0; j < k; ++j) block.template set<K>(j, load_acc<scalar_t, kFull>(in[j] + i, count));
    const auto med = median<K>(block, omit_nan, count);
    // The raw gradient, bit for bit, before the gradient is overwritten.
    if (write_slot) std::memcpy(out[1] + i, in[0] + i, static_cast<size_t>(count) * sizeof(scalar_t));
    store_acc<scalar_t, kFull>(out[0] + i, med, count);
  }
};

void running_median_one(const at::Tensor& grad, at::TensorList mine, int64_t slot, bool omit_nan) {
  const int64_t R = static_cast<int64_t>(mine.size());
  std::vector<at::Tensor> ops{grad};
  if (slot >= 0) ops.push_back(mine[slot]);
  const int64_t n_out = static_cast<int64_t>(ops.size());
  ops.push_back(grad);
  ops.insert(ops.end(), mine.begin(), mine.end());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "cgh::running_median_ (CPU)", [&] {
    for_each_run(ops, n_out, [&](char** data, const int64_t* strides, int64_t n) {
      ValueBlock<acc_type<scalar_t>> block(R + 1);
      if (R == 2) {
        RunningMedianStep<scalar_t, 3> step{omit_nan, slot >= 0, block};
        run_blocks<scalar_t>(data, strides, n, n_out, R + 1, step);
      } else {
        RunningMedianStep<scalar_t, 0> step{omit_nan, slot >= 0, block};
        run_blocks<scalar_t>(data, strides, n, n_out, R + 1, step);
      }
    });
  });
}

void running_median_(const at::Tensor& grad, at::TensorList history, int64_t slot, bool omit_nan) {
  const int64_t R = check_history(at::TensorList(grad), history, slot, "running_median_", "grad");
  running_median_one(grad, history.slice(0, R), slot, omit_nan);
}

void foreach_running_median_(at::TensorList grads, at::TensorList history, int64_t slot, bool omit_nan) {
  const int64_t R = check_history(grads, history, slot, "foreach_running_median_", "grads");
  for (size_t i = 0; i < grads.size(); ++i) running_median_one(grads[i], history.slice(i * R, R), slot, omit_nan);
}

// ------------------------------------------------------------------ ring step
// in: param, grad, then (reduce != None) history[0..R); out: param if reduce != None, then
// history[slot] if write_slot.
template <typename scalar_t>
struct RingStep {
  using acc_t = acc_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  Reduce reduce;
  bool omit_nan;
  bool write_slot;
  bool decay;  // weight_decay != 0
  acc_t lr;
  acc_t weight_decay;
  ValueBlock<acc_t>& block;  // k = R + 1 values: g, then the history

  template <bool kFull>
  void apply(const scalar_t* const* in, scalar_t* const* out, int64_t i, int64_t count) {
    const bool update = reduce != Reduce::None;
    const Vec p = (update || decay) ? load_acc<scalar_t, kFull>(in[0] + i, count) : Vec(acc_t(0));
    Vec g = load_acc<scalar_t, kFull>(in[1] + i, count);
    __at_align__ scalar_t g_rounded[Vec::size()];
    if (decay) {
      // g = round_to_dtype(grad + weight_decay * param): what the history stores and the
      // reduction sees.
      g = g + p * Vec(weight_decay);
      store_acc<scalar_t, kFull>(g_rounded, g, count);
      if constexpr (!std::is_same_v<scalar_t, acc_t>) g = load_acc<scalar_t, kFull>(g_rounded, count);
    }
    Vec r;
    if (reduce == Reduce::Median) {
      block.set(0, g);
      for (int64_t j = 1; j < block.k; ++j) block.set(j, load_acc<scalar_t, kFull>(in[1 + j] + i, count));
      r = median<0>(block, omit_nan, count);
    } else if (reduce == Reduce::Mean) {
      r = g;  // summed in order g, history[0], ..., then divided by the count
      for (int64_t j = 1; j < block.k; ++j) r = r + load_acc<scalar_t, kFull>(in[1 + j] + i, count);
      r = r / Vec(static_cast<acc_t>(block.k));
    }
    if (write_slot) {
      scalar_t* slot = out[update ? 1 : 0] + i;
      const scalar_t* src = decay ? g_rounded : in[1] + i;  // without decay g is grad, bit for bit
      std::memcpy(slot, src, static_cast<size_t>(count) * sizeof(scalar_t));
    }
    if (update) store_acc<scalar_t, kFull>(out[0] + i, p - r * Vec(lr), count);
  }
};

void ring_step_(at::TensorList params, at::TensorList grads, at::TensorList history, int64_t slot, double lr,
                double weight_decay, c10::string_view reduce_name, bool omit_nan) {
  const int64_t R = check_ring_step(params, grads, history, slot, reduce_name);  // all checks first
  const Reduce reduce = parse_reduce(reduce_name);
  const bool update = reduce != Reduce::None;
  for (size_t i = 0; i < params.size(); ++i) {
    const at::TensorList mine = history.slice(i * R, R);
    std::vector<at::Tensor> ops;
    if (update) ops.push_back(params[i]);
    if (slot >= 0) ops.push_back(mine[slot]);
    const int64_t n_out = static_cast<int64_t>(ops.size());
    ops.push_back(params[i]);
    ops.push_back(grads[i]);
    if (update) ops.insert(ops.end(), mine.begin(), mine.end());  // read only when reduced
    const int64_t n_in = static_cast<int64_t>(ops.size()) - n_out;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[i].scalar_type(), "cgh::ring_step_ (CPU)", [&] {
      using acc_t = acc_type<scalar_t>;
      for_each_run(ops, n_out, [&](char** data, const int64_t* strides, int64_t n) {
        ValueBlock<acc_t> block(R + 1);
        RingStep<scalar_t> step{reduce,
                                omit_nan,
                                slot >= 0,
                                weight_decay != 0,
                                static_cast<acc_t>(lr),
                                static_cast<acc_t>(weight_decay),
                                block};
        run_blocks<scalar_t>(data, strides, n, n_out, n_in, step);
      });
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(cgh, CPU, m) {
  m.impl("running_median_", &running_median_);
  m.impl("foreach_running_median_", &foreach_running_median_);
  m.impl("ring_step_", &ring_step_);
}

}  // namespace cgh::cpu
