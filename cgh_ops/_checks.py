"""Argument checks shared by the fake kernels, the reference and the public wrappers.

Every error names the op and the offending argument, and is raised before anything is
written. ``csrc/common/checks.h`` mirrors these for direct calls into the native kernels.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
NAN_MODES = ("propagate", "omit")
REDUCTIONS = ("none", "median", "mean")


def _fail(op: str, msg: str, exc=ValueError):
    raise exc(f"cgh.{op}: {msg}")


def check_float(t, arg: str, op: str) -> None:
    if not isinstance(t, Tensor):
        _fail(op, f"argument '{arg}' must be a Tensor, got {type(t).__name__}", TypeError)
    if t.dtype not in FLOAT_DTYPES:
        _fail(
            op,
            f"argument '{arg}' must be float16, bfloat16, float32 or float64, got {t.dtype}",
            TypeError,
        )


def check_like(t: Tensor, arg: str, ref: Tensor, ref_arg: str, op: str) -> None:
    """``t`` must have the shape, dtype and device of ``ref``."""
    check_float(t, arg, op)
    if t.shape != ref.shape:
        _fail(op, f"argument '{arg}' has shape {tuple(t.shape)}, expected {tuple(ref.shape)} (the shape of '{ref_arg}')")
    if t.dtype != ref.dtype:
        _fail(op, f"argument '{arg}' has dtype {t.dtype}, expected {ref.dtype} (the dtype of '{ref_arg}')", TypeError)
    if t.device != ref.device:
        _fail(op, f"argument '{arg}' is on {t.device}, expected {ref.device} (the device of '{ref_arg}')")


def check_same_floats(tensors: Mapping[str, Tensor], op: str) -> None:
    items = list(tensors.items())
    first_arg, first = items[0]
    check_float(first, first_arg, op)
    for arg, t in items[1:]:
        check_like(t, arg, first, first_arg, op)


def check_rows(x: Tensor, arg: str, op: str) -> int:
    """``x`` is ``[m, *S]`` with m >= 1; returns m."""
    check_float(x, arg, op)
    if x.dim() < 1 or x.shape[0] < 1:
        _fail(op, f"argument '{arg}' must have shape [m, *S] with m >= 1, got {tuple(x.shape)}")
    return x.shape[0]


def check_median_of_means(x: Tensor, groups: int, arg: str = "x", op: str = "median_of_means") -> None:
    m = check_rows(x, arg, op)
    if not 1 <= groups <= m:
        _fail(op, f"argument 'groups' must be in [1, m] with m = {m} rows of '{arg}', got {groups}")


def check_trim(x: Tensor, trim: int, op: str) -> None:
    m = check_rows(x, "x", op)
    if trim < 0 or 2 * trim >= m:
        _fail(op, f"argument 'trim' must satisfy 0 <= 2*trim < m = {m}, got {trim}")


def check_out(out, shape, like: Tensor, op: str, arg: str = "out") -> None:
    if not isinstance(out, Tensor):
        _fail(op, f"argument '{arg}' must be a Tensor, got {type(out).__name__}", TypeError)
    if tuple(out.shape) != tuple(shape):
        _fail(op, f"argument '{arg}' has shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype != like.dtype:
        _fail(op, f"argument '{arg}' has dtype {out.dtype}, expected {like.dtype}", TypeError)
    if out.device != like.device:
        _fail(op, f"argument '{arg}' is on {out.device}, expected {like.device}")


def history_size(grads: Sequence[Tensor], history: Sequence[Tensor], op: str) -> int:
    """Number R of history slots per gradient; checks the list layout."""
    n = len(grads)
    if n == 0:
        if len(history):
            _fail(op, f"argument 'history' must be empty when there are no gradients, got {len(history)} tensors")
        return 0
    if len(history) % n:
        _fail(op, f"argument 'history' must hold R tensors per gradient ({n} gradients), got {len(history)} tensors")
    return len(history) // n


def check_history(
    grads: Sequence[Tensor], history: Sequence[Tensor], slot: int, op: str, grads_arg: str, indexed: bool = True
) -> int:
    """``indexed``: ``grads_arg`` names a list (errors say ``grads[i]``), else the one tensor."""
    R = history_size(grads, history, op)
    if grads and not -1 <= slot < R:
        _fail(op, f"argument 'slot' must be -1 (no write) or in [0, {R}), got {slot}")
    for i, g in enumerate(grads):
        g_arg = f"{grads_arg}[{i}]" if indexed else grads_arg
        check_float(g, g_arg, op)
        for j in range(R):
            check_like(history[i * R + j], f"history[{i * R + j}]", g, g_arg, op)
    return R


def check_running_median(grads, history, slot: int, op: str) -> int:
    # running_median_ takes one tensor named 'grad'; the foreach op a list named 'grads'.
    single = op == "running_median_"
    return check_history(grads, history, slot, op, "grad" if single else "grads", indexed=not single)


def check_ring_step(params, grads, history, slot: int, reduce: str) -> int:
    op = "ring_step_"
    if reduce not in REDUCTIONS:
        _fail(op, f"argument 'reduce' must be one of {REDUCTIONS}, got {reduce!r}")
    if len(params) != len(grads):
        _fail(op, f"arguments 'params' and 'grads' must have the same length, got {len(params)} and {len(grads)}")
    for i, (p, g) in enumerate(zip(params, grads)):
        check_float(p, f"params[{i}]", op)
        check_like(g, f"grads[{i}]", p, f"params[{i}]", op)
    R = check_history(params, history, slot, op, "params")
    if reduce == "none" and params and slot < 0:
        _fail(op, "argument 'slot' must be a history slot when reduce='none' (the step only stores)")
    return R


def nan_mode(nan: str, op: str) -> bool:
    """Public ``nan=`` policy -> the schema's ``omit_nan`` flag."""
    if nan not in NAN_MODES:
        _fail(op, f"argument 'nan' must be 'propagate' or 'omit', got {nan!r}")
    return nan == "omit"


def check_foreach_out(xs, groups: int, out) -> None:
    op = "foreach_median_of_means"
    for i, x in enumerate(xs):
        check_median_of_means(x, groups, f"xs[{i}]", op)
    if len(out) != len(xs):
        _fail(op, f"argument 'out' must hold one tensor per input ({len(xs)}), got {len(out)}")
    for i, (x, o) in enumerate(zip(xs, out)):
        check_out(o, x.shape[1:], x, op, f"out[{i}]")
