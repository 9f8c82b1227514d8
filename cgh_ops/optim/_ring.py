"""The ring-buffer optimizers of Coherent Gradients: M3, RM3 and RA3.

All three keep, per parameter, ``k - 1`` gradient-sized history buffers (the current
gradient is the k-th value) and step through one fused op, ``torch.ops.cgh.ring_step_``
(through :func:`cgh_ops.ring_step_`, so ``cgh_ops.set_cuda_backend`` applies):

    g = grad + weight_decay * param          (rounded to the param dtype)
    history[slot] <- g                       (slot == -1: nothing stored)
    param -= lr * reduce(g, *history)        (reduce == "none": no update)

It runs on whatever kernel the dispatcher picks (native CPU/CUDA, else the pure-PyTorch
reference): this file only decides *which* slot and *which* reduction each step uses.

Schedules, counted per parameter (as the official code counts per parameter, so a
parameter that gets no gradient at some step is skipped: no store, no update, and its
count does not advance):

* M3 (median of k means, taken at the same weights): steps 1..k-1 of each cycle of k store
  into slots 0..k-2; step k updates with the median of the k values and stores nothing.
* RM3 (running median over the last k steps): steps 1..k-1 store, no update (the official
  start-up, which fills the ring with the first gradient, is equivalent: those copies are
  overwritten before they are read); from step k on every step updates with the median of
  the current and the k-1 previous gradients and overwrites the oldest slot.
* RA3: RM3's schedule with the mean instead of the median (the control experiment).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable, Optional

import torch
from torch.optim import Optimizer

import cgh_ops
from cgh_ops._schedule import groups_of_k, running_window

__all__ = ["M3", "RM3", "RA3"]


def _check_hyper(name: str, value, cls: str, *, minimum: float = 0.0, integer: bool = False) -> None:
    kind = "an int" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, Real)
    if isinstance(value, bool) or not ok_type:
        raise TypeError(f"{cls}: argument '{name}' must be {kind}, got {type(value).__name__}")
    if math.isnan(value) or value < minimum:
        raise ValueError(f"{cls}: argument '{name}' must be >= {minimum:g}, got {value}")


class _RingOptimizer(Optimizer):
    """Shared machinery; subclasses set ``_reduce`` and ``_schedule``."""

    _reduce: str  # "median" or "mean"

    def __init__(self, params, lr: float, weight_decay: float = 0.0, k: int = 3):
        name = type(self).__name__
        _check_hyper("lr", lr, name)
        _check_hyper("weight_decay", weight_decay, name)
        _check_hyper("k", k, name, minimum=1, integer=True)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, k=k))

    def add_param_group(self, param_group: dict) -> None:
        # Per-group values (including those given for one group only) get the same checks.
        name = type(self).__name__
        for key, integer, minimum in (("lr", False, 0.0), ("weight_decay", False, 0.0), ("k", True, 1)):
            if key in param_group:
                _check_hyper(key, param_group[key], name, minimum=minimum, integer=integer)
        super().add_param_group(param_group)

    # -- schedule ----------------------------------------------------------------
    # (slot, ready) for a parameter that has already taken ``done`` steps: cgh_ops._schedule.
    _schedule: Callable[[int, int], tuple[int, bool]]

    # -- step ----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        """One step over every parameter that has a gradient; returns ``closure()``'s loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Parameters that share everything the fused op takes as scalars go in one call:
        # normally that is one call per (device, dtype).
        calls: dict[tuple, tuple[list, list, list]] = {}
        for group in self.param_groups:
            lr, wd, k = group["lr"], group["weight_decay"], group["k"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["history"] = [torch.zeros_like(p) for _ in range(k - 1)]
                if len(state["history"]) != k - 1:
                    raise ValueError(
                        f"{type(self).__name__}: param group 'k' is {k} but a parameter holds "
                        f"{len(state['history'])} history buffers (k - 1 expected); k cannot change "
                        "once training has started"
                    )
                slot, ready = self._schedule(state["step"], k)
                reduce = self._reduce if ready else "none"
                key = (p.device, p.dtype, float(lr), float(wd), k, slot, reduce)
                params, grads, history = calls.setdefault(key, ([], [], []))
                params.append(p)
                grads.append(p.grad)
                history.extend(state["history"])
                state["step"] += 1

        for (_, _, lr, wd, _, slot, reduce), (params, grads, history) in calls.items():
            cgh_ops.ring_step_(params, grads, history, slot, lr, wd, reduce)
        return loss


class M3(_RingOptimizer):
    """Median of ``k`` means: the paper's M3 (k = 3) with the exact median and general k.

    ``k`` consecutive calls of :meth:`step` form one update: the first ``k - 1`` only store
    ``grad + weight_decay * param`` (the weights do not move, so all ``k`` gradients are
    taken at the same weights), the k-th updates ``param -= lr * median`` of the ``k``
    stored values. Feed it ``k`` micro-batches per update (the effective batch is ``k``
    times the loader's). ``k=1`` is plain SGD.

    Args:
        params: parameters or param-group dicts (each group may set ``lr``,
            ``weight_decay`` and ``k``).
        lr: learning rate, >= 0.
        weight_decay: L2 penalty added to the gradient before the median, >= 0.
        k: values per median, >= 1; uses ``k - 1`` gradient-sized buffers per parameter.
    """

    _reduce = "median"
    _schedule = staticmethod(groups_of_k)


class RM3(_RingOptimizer):
    """Running median over the last ``k`` steps: the paper's RM3 (k = 3), exact median.

    Steps 1..k-1 only store; from step ``k`` on every step updates ``param -= lr *
    median`` of the current and the ``k - 1`` previous ``grad + weight_decay * param``
    (each taken at its own step's weights). Same arguments as :class:`M3`.
    """

    _reduce = "median"
    _schedule = staticmethod(running_window)


class RA3(RM3):
    """Running mean over the last ``k`` steps: the paper's RA3 control (RM3 with the mean)."""

    _reduce = "mean"
