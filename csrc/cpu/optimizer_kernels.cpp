// Native CPU kernels of the in-place optimizer ops: running_median_,
// foreach_running_median_ and the fused step ring_step_ (M3 / RM3 / RA3).
//
// history[i * R + j] is slot j of grads[i] (or params[i]). Per coordinate, every value is
// read first, then the history slot and the gradient/parameter are written, so one pass
// over the tensors does the whole update and the slot's old value is still part of the
// reduction (cgh_ops/reference.py).
#include <torch/library.h>

#include <vector>

#include "common/checks.h"
#include "cpu/cpu_kernels.h"

namespace cgh::cpu {
namespace {

// ------------------------------------------------------------------ running median
void running_median_one(const at::Tensor& grad, at::TensorList mine, int64_t slot, bool omit_nan) {
  const int64_t R = static_cast<int64_t>(mine.size());
  std::vector<at::Tensor> ops{grad};
  if (slot >= 0) ops.push_back(mine[slot]);
  const int64_t n_out = static_cast<int64_t>(ops.size());
  ops.push_back(grad);
  ops.insert(ops.end(), mine.begin(), mine.end());
  KernelArgs args;
  args.n_out = n_out;
  args.n_in = R + 1;
  args.k = R + 1;
  args.omit_nan = omit_nan;
  args.write_slot = slot >= 0;
  run_kernel(kernel(kRunningMedian, grad.scalar_type()), args, ops);
}

void running_median_(const at::Tensor& grad, at::TensorList history, int64_t slot, bool omit_nan) {
  const int64_t R = check_history(at::TensorList(grad), history, slot, "running_median_", "grad", /*indexed=*/false);
  running_median_one(grad, history.slice(0, R), slot, omit_nan);
}

void foreach_running_median_(at::TensorList grads, at::TensorList history, int64_t slot, bool omit_nan) {
  const int64_t R = check_history(grads, history, slot, "foreach_running_median_", "grads");
  for (size_t i = 0; i < grads.size(); ++i) running_median_one(grads[i], history.slice(i * R, R), slot, omit_nan);
}

// ------------------------------------------------------------------ ring step
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
    KernelArgs args;
    args.n_out = n_out;
    args.n_in = n_in;
    args.k = R + 1;
    args.omit_nan = omit_nan;
    args.write_slot = slot >= 0;
    args.reduce = reduce == Reduce::None ? RingReduce::None
                  : reduce == Reduce::Median ? RingReduce::Median
                                             : RingReduce::Mean;
    args.lr = lr;
    args.weight_decay = weight_decay;
    run_kernel(kernel(kRingStep, params[i].scalar_type()), args, ops);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(cgh, CPU, m) {
  m.impl("running_median_", &running_median_);
  m.impl("foreach_running_median_", &foreach_running_median_);
  m.impl("ring_step_", &ring_step_);
}

}  // namespace cgh::cpu
