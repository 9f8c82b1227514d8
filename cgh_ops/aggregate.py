"""Optimizer-agnostic gradient transforms: median of means and a running median.

Used between ``backward()`` and any optimizer::

    loss.backward()
    if transform.step():        # True: p.grad now holds the median
        optimizer.step()
        optimizer.zero_grad()

``step()`` returns ``False`` when it only stored the gradients; it then sets ``p.grad`` to
``None`` so that the next backward starts clean. Parameters without a gradient are left
alone (their count does not advance), as the optimizers of :mod:`cgh_ops.optim` do.

Both run one fused ``cgh_ops.foreach_running_median_`` call per (device, dtype) on the
steps that produce a median; stores are one ``torch._foreach_copy_`` per (device, dtype).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor

from ._schedule import groups_of_k, running_window
from .ops import foreach_running_median_

__all__ = ["MedianOfMeans", "RunningMedian"]


def _check_count(value, arg: str, cls: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{cls}: argument '{arg}' must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{cls}: argument '{arg}' must be >= 1, got {value}")
    return value


class _GradientRing:
    """``size - 1`` history buffers per parameter and a per-parameter call count."""

    def __init__(self, params: Iterable[Tensor], size: int, arg: str, nan: str):
        cls = type(self).__name__
        self._size = _check_count(size, arg, cls)
        self._arg = arg
        if nan not in ("propagate", "omit"):
            raise ValueError(f"{cls}: argument 'nan' must be 'propagate' or 'omit', got {nan!r}")
        self.nan = nan
        if isinstance(params, Tensor):
            raise TypeError(f"{cls}: argument 'params' must be an iterable of Tensors, got a Tensor")
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{cls}: argument 'params' is empty")
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{cls}: argument 'params' must hold Tensors, item {i} is {type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError(f"{cls}: argument 'params' lists a tensor more than once")
        self.count = [0] * len(self.params)
        self.history: list[list[Tensor] | None] = [None] * len(self.params)

    # (slot, produce a median?) for a parameter that has seen ``done`` gradients, out of
    # ``_size``: cgh_ops._schedule.
    _schedule: Callable[[int, int], tuple[int, bool]]

    @torch.no_grad()
    def step(self) -> bool:
        """Store this call's gradients or replace them by the median; True if any median was written."""
        R = self._size - 1
        stores: dict[tuple, tuple[list, list]] = {}
        medians: dict[tuple, tuple[list, list]] = {}
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if self.history[i] is None:
                self.history[i] = [torch.zeros_like(g) for _ in range(R)]
            slot, ready = self._schedule(self.count[i], self._size)
            self.count[i] += 1
            if ready:
                grads, hist = medians.setdefault((g.device, g.dtype, slot), ([], []))
                grads.append(g)
                hist.extend(self.history[i])
            else:
                dst, src = stores.setdefault((g.device, g.dtype, slot), ([], []))
                dst.append(self.history[i][slot])
                src.append(g)
                p.grad = None  # stored: the next backward starts from zero
        for (_, _, slot), (dst, src) in stores.items():
            torch._foreach_copy_(dst, src)
        for (_, _, slot), (grads, hist) in medians.items():
            foreach_running_median_(grads, hist, slot, nan=self.nan)
        return bool(medians)

    def state_dict(self) -> dict:
        """Counts and buffers (tensors, ints and strings only: loads with ``weights_only=True``)."""
        return {
            self._arg: self._size,
            "count": list(self.count),
            "history": {i: [h.clone() for h in hist] for i, hist in enumerate(self.history) if hist is not None},
        }

    def load_state_dict(self, state: dict) -> None:
        cls = type(self).__name__
        if state.get(self._arg) != self._size:
            raise ValueError(f"{cls}.load_state_dict: saved {self._arg}={state.get(self._arg)}, this one has {self._size}")
        if len(state["count"]) != len(self.params):
            raise ValueError(
                f"{cls}.load_state_dict: saved state has {len(state['count'])} parameters, this one {len(self.params)}"
            )
        history: list[list[Tensor] | None] = [None] * len(self.params)
        for i, hist in state["history"].items():
            p = self.params[int(i)]
            if len(hist) != self._size - 1 or any(h.shape != p.shape for h in hist):
                raise ValueError(f"{cls}.load_state_dict: saved buffers of parameter {i} do not match its shape")
            history[int(i)] = [h.to(device=p.device, dtype=p.dtype, copy=True) for h in hist]
        self.history = history
        self.count = [int(c) for c in state["count"]]


class MedianOfMeans(_GradientRing):
    """Median of ``groups`` micro-batch gradients, gradient-accumulation style.

    Each call takes ``p.grad`` as one group's mean gradient (one micro-batch per call). Calls
    1..groups-1 store it (``step()`` returns False, ``p.grad`` becomes None); every
    ``groups``-th call replaces ``p.grad`` by the coordinate-wise median of the ``groups``
    gradients and returns True. Holds ``groups - 1`` gradient-sized buffers per parameter.
    All ``groups`` gradients should be taken at the same weights: step the optimizer only
    when ``step()`` returns True.

    Args:
        params: the parameters whose ``.grad`` to transform (e.g. ``model.parameters()``).
        groups: micro-batches per median, >= 1 (1: pass-through).
        nan: ``"propagate"`` (default) or ``"omit"``: NaN policy of the median.
    """

    def __init__(self, params: Iterable[Tensor], groups: int = 3, *, nan: str = "propagate"):
        super().__init__(params, groups, "groups", nan)

    @property
    def groups(self) -> int:
        return self._size

    _schedule = staticmethod(groups_of_k)


class RunningMedian(_GradientRing):
    """Median of the last ``window`` gradients (the start-up of the official RM3).

    Calls 1..window-1 store (return False, ``p.grad`` becomes None); from the ``window``-th
    call on every call replaces ``p.grad`` by the median of it and the ``window - 1``
    previous gradients and returns True. Holds ``window - 1`` buffers per parameter.

    Args:
        params: the parameters whose ``.grad`` to transform.
        window: gradients per median, >= 1 (1: pass-through).
        nan: ``"propagate"`` (default) or ``"omit"``.
    """

    def __init__(self, params: Iterable[Tensor], window: int = 3, *, nan: str = "propagate"):
        super().__init__(params, window, "window", nan)

    @property
    def window(self) -> int:
        return self._size

    _schedule = staticmethod(running_window)
