"""Pure-PyTorch reference kernels for every ``cgh`` op.

Registered as the ``CompositeExplicitAutograd`` kernel: the fallback on any device where
no native kernel was built, and the readable statement of the semantics that the native
kernels must reproduce. It favours clarity over speed (it sorts a stacked copy); the tests
check it against an independent float64 NumPy reference, and the native kernels against
both.

Numerical rules pinned here (and followed by the C++, CUDA and Triton kernels):

* Accumulation dtype: float32 for float16/bfloat16/float32 inputs, float64 for float64.
* Group means: rows of a group summed in order, then divided by the row count.
* Median of k values: the middle value for odd k; for even k ``(lo + hi) * 0.5`` in the
  accumulation dtype (``numpy.median``'s rule; ``torch.median`` returns ``lo``).
* NaN: ``omit_nan=False`` gives NaN wherever a NaN is among the values; ``omit_nan=True``
  takes the median of the non-NaN values (NaN if there are none).
* Trimmed/winsorized means: the values are sorted, then summed in ascending order (NaN
  wherever a NaN is among them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _checks
from ._ops import _lib


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def median_of_values(values: list[Tensor], omit_nan: bool) -> Tensor:
    """Coordinate-wise median of same-shape tensors (already in the accumulation dtype)."""
    v = torch.stack(values)
    k = v.shape[0]
    if k == 1:
        return v[0].clone()
    s = torch.sort(v, dim=0).values  # NaN sorts last
    nan_mask = torch.isnan(v)
    nan = torch.full((), float("nan"), dtype=v.dtype, device=v.device)
    if not omit_nan:
        lo, hi = s[(k - 1) // 2], s[k // 2]
        med = lo if k % 2 else (lo + hi) * 0.5
        return torch.where(nan_mask.any(0), nan, med)
    count = (~nan_mask).sum(0)
    lo_i = ((count - 1).clamp(min=0) // 2).unsqueeze(0)
    hi_i = (count // 2).clamp(max=k - 1).unsqueeze(0)
    lo, hi = s.gather(0, lo_i)[0], s.gather(0, hi_i)[0]
    med = torch.where(count % 2 == 1, lo, (lo + hi) * 0.5)
    return torch.where(count == 0, nan, med)


def group_means(x: Tensor, groups: int) -> list[Tensor]:
    """Means of ``groups`` contiguous row groups (``torch.tensor_split`` order)."""
    acc = acc_dtype(x.dtype)
    means = []
    for chunk in torch.tensor_split(x, groups, dim=0):
        total = chunk[0].to(acc)
        for row in chunk[1:]:
            total = total + row.to(acc)
        # A true division: dividing a CUDA tensor by a Python number multiplies by the
        # reciprocal instead, which can be one ulp off the native kernels.
        means.append(total / torch.full_like(total, chunk.shape[0]))
    return means


def median_of_means(x: Tensor, groups: int = 3, omit_nan: bool = False) -> Tensor:
    _checks.check_median_of_means(x, groups)
    return median_of_values(group_means(x, groups), omit_nan).to(x.dtype)


def median3(a: Tensor, b: Tensor, c: Tensor, omit_nan: bool = False) -> Tensor:
    _checks.check_same_floats({"a": a, "b": b, "c": c}, "median3")
    acc = acc_dtype(a.dtype)
    return median_of_values([a.to(acc), b.to(acc), c.to(acc)], omit_nan).to(a.dtype)


def foreach_median_of_means(xs: list[Tensor], groups: int = 3, omit_nan: bool = False) -> list[Tensor]:
    for i, x in enumerate(xs):
        _checks.check_median_of_means(x, groups, f"xs[{i}]", "foreach_median_of_means")
    return [median_of_means(x, groups, omit_nan) for x in xs]


def _sorted_rows(x: Tensor, trim: int, op: str) -> tuple[Tensor, Tensor]:
    _checks.check_trim(x, trim, op)
    v = x.to(acc_dtype(x.dtype))
    return torch.sort(v, dim=0).values, torch.isnan(v).any(0)


def _sum_rows_in_order(rows) -> Tensor:
    total = rows[0]
    for row in rows[1:]:
        total = total + row
    return total


def trimmed_mean(x: Tensor, trim: int) -> Tensor:
    s, has_nan = _sorted_rows(x, trim, "trimmed_mean")
    m = s.shape[0]
    total = _sum_rows_in_order(list(s[trim : m - trim]))
    mean = total / torch.full_like(total, m - 2 * trim)
    return torch.where(has_nan, float("nan"), mean).to(x.dtype)


def winsorized_mean(x: Tensor, trim: int) -> Tensor:
    s, has_nan = _sorted_rows(x, trim, "winsorized_mean")
    m = s.shape[0]
    rows = [s[trim]] * trim + list(s[trim : m - trim]) + [s[m - 1 - trim]] * trim
    total = _sum_rows_in_order(rows)
    mean = total / torch.full_like(total, m)
    return torch.where(has_nan, float("nan"), mean).to(x.dtype)


def running_median_(grad: Tensor, history: list[Tensor], slot: int, omit_nan: bool = False) -> None:
    foreach_running_median_([grad], history, slot, omit_nan, op="running_median_")


def foreach_running_median_(
    grads: list[Tensor], history: list[Tensor], slot: int, omit_nan: bool = False, op: str = "foreach_running_median_"
) -> None:
    R = _checks.check_running_median(grads, history, slot, op)
    for i, g in enumerate(grads):
        acc = acc_dtype(g.dtype)
        mine = history[i * R : (i + 1) * R]
        med = median_of_values([g.to(acc)] + [h.to(acc) for h in mine], omit_nan).to(g.dtype)
        if slot >= 0:
            mine[slot].copy_(g)
        g.copy_(med)


def ring_step_(
    params: list[Tensor],
    grads: list[Tensor],
    history: list[Tensor],
    slot: int,
    lr: float,
    weight_decay: float,
    reduce: str,
    omit_nan: bool = False,
) -> None:
    R = _checks.check_ring_step(params, grads, history, slot, reduce)
    for i, (p, grad) in enumerate(zip(params, grads)):
        acc = acc_dtype(p.dtype)
        mine = history[i * R : (i + 1) * R]
        g = grad.to(acc)
        if weight_decay != 0:
            g = g + p.to(acc) * weight_decay
        g = g.to(p.dtype)  # what the history stores, and what the reduction sees
        if reduce != "none":
            values = [g.to(acc)] + [h.to(acc) for h in mine]
            if reduce == "median":
                r = median_of_values(values, omit_nan)
            else:
                total = _sum_rows_in_order(values)
                r = total / torch.full_like(total, len(values))
            new_p = (p.to(acc) - r * lr).to(p.dtype)
        if slot >= 0:
            mine[slot].copy_(g)
        if reduce != "none":
            p.copy_(new_p)


# ------------------------------------------------------------------ out= overloads
def _with_out(fn, op_name: str, out_shape):
    def impl(*args, out):
        result = fn(*args)
        _checks.check_out(out, out_shape(*args), args[0], op_name)
        out.copy_(result)

    return impl


def _rows_dropped(x, *_):
    return x.shape[1:]


def _foreach_out(xs, groups=3, omit_nan=False, *, out):
    results = foreach_median_of_means(xs, groups, omit_nan)
    _checks.check_foreach_out(xs, groups, out)
    for o, r in zip(out, results):
        o.copy_(r)


_KERNELS = {
    "median_of_means": median_of_means,
    "median_of_means.out": _with_out(median_of_means, "median_of_means", _rows_dropped),
    "median3": median3,
    "median3.out": _with_out(median3, "median3", lambda a, *_: a.shape),
    "foreach_median_of_means": foreach_median_of_means,
    "foreach_median_of_means.out": _foreach_out,
    "trimmed_mean": trimmed_mean,
    "trimmed_mean.out": _with_out(trimmed_mean, "trimmed_mean", _rows_dropped),
    "winsorized_mean": winsorized_mean,
    "winsorized_mean.out": _with_out(winsorized_mean, "winsorized_mean", _rows_dropped),
    "running_median_": running_median_,
    "foreach_running_median_": foreach_running_median_,
    "ring_step_": ring_step_,
}
for _name, _fn in _KERNELS.items():
    _lib.impl(_name, _fn, "CompositeExplicitAutograd")
