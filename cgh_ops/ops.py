"""Public, documented entry points of the ``cgh`` ops.

Each wrapper translates the friendly keyword arguments (``nan=``, ``out=``) to the op
schema and calls ``torch.ops.cgh.<name>``, which the dispatcher sends to the native kernel
of the input's device (CPU C++, CUDA C++) or to the pure-PyTorch reference. On CUDA the
Triton kernels can be chosen instead with :func:`set_cuda_backend`.

Median conventions, shared by every op here:

* odd count: the exact middle value (bitwise equal to ``torch.median``);
* even count: the mean of the two middle values, as ``numpy.median`` and
  ``torch.quantile(q=0.5)`` do; ``torch.median`` returns the lower one instead;
* ``nan="propagate"`` (default): NaN wherever a NaN is among the values, as
  ``torch.median``; ``nan="omit"``: NaNs are left out, all-NaN gives NaN;
* means accumulate in float32 (float64 for float64 input); the result has the input dtype.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from . import _checks
from ._ops import op

__all__ = [
    "median_of_means",
    "median3",
    "foreach_median_of_means",
    "trimmed_mean",
    "winsorized_mean",
    "running_median_",
    "foreach_running_median_",
    "ring_step_",
    "set_cuda_backend",
    "get_cuda_backend",
]

CUDA_BACKENDS = ("cuda", "triton")
_cuda_backend = "cuda"
# (op name, overload) -> callable with the op's signature, filled by the Triton package.
TRITON_KERNELS: dict[tuple[str, str], Callable] = {}


def set_cuda_backend(backend: str) -> None:
    """Choose the kernels used for CUDA tensors: ``"cuda"`` (CUDA C++, default) or ``"triton"``.

    The Triton kernels are ops of their own (``torch.ops.cgh.<name>_triton``) so that
    ``torch.compile`` can trace into them; this switch routes the wrappers to them.
    """
    global _cuda_backend
    if backend not in CUDA_BACKENDS:
        raise ValueError(f"cgh.set_cuda_backend: argument 'backend' must be one of {CUDA_BACKENDS}, got {backend!r}")
    if backend == "triton":
        from . import _triton  # noqa: F401  (registers TRITON_KERNELS)

        if not TRITON_KERNELS:
            raise RuntimeError("cgh.set_cuda_backend: Triton is not importable here")
    _cuda_backend = backend


def get_cuda_backend() -> str:
    return _cuda_backend


def _kernel(name: str, overload: str, device: torch.device) -> Callable:
    if _cuda_backend == "triton" and device.type == "cuda":
        fn = TRITON_KERNELS.get((name, overload))
        if fn is not None:
            return fn
    return op(name, overload)


def _first_device(tensors) -> torch.device:
    for t in tensors:
        if isinstance(t, Tensor):
            return t.device
    return torch.device("cpu")


def median_of_means(x: Tensor, groups: int = 3, *, nan: str = "propagate", out: Optional[Tensor] = None) -> Tensor:
    """Coordinate-wise median of the means of ``groups`` contiguous row groups of ``x``.

    Args:
        x: ``[m, *S]`` float16/bfloat16/float32/float64; any strides.
        groups: number of groups, ``1 <= groups <= m``; their sizes differ by at most one
            (the split of ``torch.tensor_split(x, groups)``).
        nan: ``"propagate"`` or ``"omit"`` (see the module docs).
        out: optional ``[*S]`` tensor of ``x``'s dtype and device to write into.

    Returns:
        ``[*S]`` tensor of ``x.dtype``. With ``groups == m`` this is the median of the rows,
        bitwise equal to ``torch.median(x, 0).values`` for odd ``m``.
    """
    omit = _checks.nan_mode(nan, "median_of_means")
    if out is None:
        return _kernel("median_of_means", "default", x.device)(x, groups, omit)
    _kernel("median_of_means", "out", x.device)(x, groups, omit, out=out)
    return out


def median3(a: Tensor, b: Tensor, c: Tensor, *, nan: str = "propagate", out: Optional[Tensor] = None) -> Tensor:
    """Exact elementwise median of three same-shape, same-dtype tensors, without stacking them.

    Bitwise equal to ``torch.median(torch.stack([a, b, c]), 0).values``.
    """
    omit = _checks.nan_mode(nan, "median3")
    if out is None:
        return _kernel("median3", "default", a.device)(a, b, c, omit)
    _kernel("median3", "out", a.device)(a, b, c, omit, out=out)
    return out


def foreach_median_of_means(
    xs: Sequence[Tensor], groups: int = 3, *, nan: str = "propagate", out: Optional[Sequence[Tensor]] = None
) -> list[Tensor]:
    """:func:`median_of_means` over a list of tensors (each ``[m_i, *S_i]``).

    On CUDA this is at most one kernel launch per (device, dtype).
    """
    omit = _checks.nan_mode(nan, "foreach_median_of_means")
    xs = list(xs)
    device = _first_device(xs)
    if out is None:
        return _kernel("foreach_median_of_means", "default", device)(xs, groups, omit)
    out = list(out)
    _kernel("foreach_median_of_means", "out", device)(xs, groups, omit, out=out)
    return out


def trimmed_mean(x: Tensor, trim: int, *, out: Optional[Tensor] = None) -> Tensor:
    """Coordinate-wise mean of the rows of ``x [m, *S]`` after cutting ``trim`` values at each end.

    ``0 <= 2 * trim < m``. ``trim = 0`` is the plain mean; ``trim = (m - 1) // 2`` the median.
    NaN wherever a NaN is among the values.
    """
    if out is None:
        return _kernel("trimmed_mean", "default", x.device)(x, trim)
    _kernel("trimmed_mean", "out", x.device)(x, trim, out=out)
    return out


def winsorized_mean(x: Tensor, trim: int, *, out: Optional[Tensor] = None) -> Tensor:
    """Coordinate-wise mean of the rows of ``x [m, *S]`` after clamping the ``trim`` smallest and
    largest values to the nearest kept value (the original Coherent Gradients technique).

    ``0 <= 2 * trim < m``. NaN wherever a NaN is among the values.
    """
    if out is None:
        return _kernel("winsorized_mean", "default", x.device)(x, trim)
    _kernel("winsorized_mean", "out", x.device)(x, trim, out=out)
    return out


def running_median_(grad: Tensor, history: Sequence[Tensor], slot: int, *, nan: str = "propagate") -> Tensor:
    """In place, in one pass: ``grad <- median(grad, *history)`` and ``history[slot] <- old grad``.

    ``history`` holds the previous ``window - 1`` gradients (any order: the median does not
    care); ``slot`` is the oldest one, which the raw gradient replaces; ``slot=-1`` writes
    no history (a plain median of ``len(history) + 1`` tensors into ``grad``). Returns ``grad``.
    """
    omit = _checks.nan_mode(nan, "running_median_")
    _kernel("running_median_", "default", grad.device)(grad, list(history), slot, omit)
    return grad


def foreach_running_median_(
    grads: Sequence[Tensor], history: Sequence[Tensor], slot: int, *, nan: str = "propagate"
) -> None:
    """:func:`running_median_` over a parameter list; ``history[i * R + j]`` is slot ``j`` of ``grads[i]``."""
    omit = _checks.nan_mode(nan, "foreach_running_median_")
    grads = list(grads)
    _kernel("foreach_running_median_", "default", _first_device(grads))(grads, list(history), slot, omit)


def ring_step_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    history: Sequence[Tensor],
    slot: int,
    lr: float,
    weight_decay: float,
    reduce: str,
    *,
    nan: str = "propagate",
) -> None:
    """One fused M3/RM3/RA3 step over a parameter list (what :mod:`cgh_ops.optim` calls).

    Per parameter ``i`` with ``R = len(history) // len(params)`` history slots
    ``history[i * R : (i + 1) * R]``: ``g = grad + weight_decay * param`` (rounded to the
    parameter dtype); ``reduce="median"`` or ``"mean"`` sets ``param -= lr * reduce(g, *history)``
    (``"none"`` leaves it); then ``history[slot] <- g`` unless ``slot == -1``.
    """
    omit = _checks.nan_mode(nan, "ring_step_")
    params = list(params)
    _kernel("ring_step_", "default", _first_device(params))(
        params, list(grads), list(history), slot, lr, weight_decay, reduce, omit
    )
