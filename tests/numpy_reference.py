"""An independent float64 NumPy statement of what every ``cgh`` op computes.

Written from SPEC.md, not from ``cgh_ops.reference`` (which it must not import): the tests
check the PyTorch reference and every native backend against these functions. Inputs are
NumPy arrays (any float dtype; they are widened to float64 first, which is exact), outputs
are float64 arrays: the exact answer before the one final rounding to the op's dtype.

Conventions (SPEC "Semantics"):

* rows are split into groups as ``numpy.array_split`` does, the same order as
  ``torch.tensor_split``: the first ``m % groups`` groups get one row more;
* median: ``numpy.median`` (the mean of the two middle values for an even count);
  ``omit_nan=False`` gives NaN wherever a NaN is among the values, ``omit_nan=True`` is
  ``numpy.nanmedian`` (NaN where every value is NaN);
* trimmed / winsorized means give NaN wherever a NaN is among the values.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch

def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def median(values: np.ndarray, omit_nan: bool = False) -> np.ndarray:
    """Median over axis 0 of ``values [k, *S]``."""
    v = _f64(values)
    # inf + -inf and all-NaN slices warn in NumPy; the NaN they give is the answer we want.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(v, axis=0) if omit_nan else np.median(v, axis=0)


def group_means(x: np.ndarray, groups: int) -> np.ndarray:
    """``[groups, *S]``: the mean of each contiguous row group of ``x [m, *S]``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf inside a group
        return np.stack([chunk.mean(axis=0) for chunk in np.array_split(_f64(x), groups, axis=0)])


def median_of_means(x: np.ndarray, groups: int, omit_nan: bool = False) -> np.ndarray:
    return median(group_means(x, groups), omit_nan)


def median3(a: np.ndarray, b: np.ndarray, c: np.ndarray, omit_nan: bool = False) -> np.ndarray:
    return median(np.stack([_f64(a), _f64(b), _f64(c)]), omit_nan)


def trimmed_mean(x: np.ndarray, trim: int) -> np.ndarray:
    """Mean of the rows left after dropping the ``trim`` smallest and largest per coordinate."""
    v = _f64(x)
    m = v.shape[0]
    s = np.sort(v, axis=0)  # NaN sorts last; those coordinates become NaN below anyway
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = s[trim : m - trim].mean(axis=0)
    return np.where(np.isnan(v).any(axis=0), np.nan, mean)


def winsorized_mean(x: np.ndarray, trim: int) -> np.ndarray:
    """Mean of the rows after clamping each coordinate to its ``trim``-th smallest and largest value."""
    v = _f64(x)
    m = v.shape[0]
    s = np.sort(v, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.clip(v, s[trim], s[m - 1 - trim]).mean(axis=0)
    return np.where(np.isnan(v).any(axis=0), np.nan, mean)


def running_median(
    grad: np.ndarray, history: Sequence[np.ndarray], slot: int, omit_nan: bool = False
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One ``running_median_`` update: returns (new grad, new history).

    The new grad is the median of the grad and every history slot (all read before any
    write); slot ``slot`` of the history then holds the raw grad (``slot == -1``: unchanged).
    """
    g = _f64(grad)
    hist = [_f64(h) for h in history]
    new_grad = median(np.stack([g] + hist), omit_nan)
    if slot >= 0:
        hist[slot] = g.copy()
    return new_grad, hist


def ring_step(
    param: np.ndarray,
    grad: np.ndarray,
    history: Sequence[np.ndarray],
    slot: int,
    lr: float,
    weight_decay: float,
    reduce: str,
    omit_nan: bool = False,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """One parameter's share of ``ring_step_`` (the fused M3 / RM3 / RA3 step).

    ``g = grad + weight_decay * param``; ``reduce="median"|"mean"`` over ``g`` and the
    history *before* the write gives ``r`` and the parameter becomes ``param - lr * r``;
    ``reduce="none"`` leaves it alone. Slot ``slot`` of the history then holds ``g``
    (``slot == -1``: no write). Returns (new param, new history) in exact float64: the
    kernels also round ``g`` to the parameter dtype before storing and reducing it, which
    the tests allow for in their tolerance.
    """
    p = _f64(param)
    # weight_decay == 0 means no decay term at all (0 * inf would make NaN of an inf param).
    g = _f64(grad) + weight_decay * p if weight_decay else _f64(grad).copy()
    hist = [_f64(h) for h in history]
    values = np.stack([g] + hist)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if reduce == "median":
            new_p = p - lr * median(values, omit_nan)
        elif reduce == "mean":
            new_p = p - lr * values.mean(axis=0)
        elif reduce == "none":
            new_p = p.copy()
        else:
            raise ValueError(f"unknown reduce {reduce!r}")
    if slot >= 0:
        hist[slot] = g
    return new_p, hist


# ------------------------------------------------------------- how close is close enough
# A kernel accumulates in float32 (float64 for float64 input) and rounds once to the
# output dtype at the end. Its distance from the exact float64 answer is therefore at most
#   * the accumulation error: about one unit roundoff u of the accumulation dtype per
#     addition, relative to the magnitude of the values summed (``terms`` additions of
#     values no larger than ``scale``), and
#   * the final rounding: half an ulp of the output dtype (float16: 2^-11, bfloat16: 2^-8
#     relative); for float32/float64 outputs the last operation's rounding, u.
# ``tiny`` covers results that round into the subnormal range of the output dtype.
_UNIT_ROUNDOFF = {torch.float64: 2.0**-53}
_FINAL_ROUNDING = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


def tolerance(dtype: torch.dtype, terms: int, scale: float) -> tuple[float, float]:
    """(rtol, atol) for a ``dtype`` result of ``terms`` accumulated values of size <= ``scale``."""
    u = _UNIT_ROUNDOFF.get(dtype, 2.0**-24)
    rtol = _FINAL_ROUNDING.get(dtype, 0.0) + u
    atol = terms * u * scale + torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
    return rtol, atol


def assert_close(actual: torch.Tensor, expected: np.ndarray, *, terms: int, scale: float, msg: str = "") -> None:
    """``actual`` (any float dtype, any device) equals the float64 ``expected`` up to :func:`tolerance`.

    NaN must be NaN and +-Inf must be the same infinity, exactly.
    """
    expected = torch.from_numpy(np.array(expected, dtype=np.float64))
    assert tuple(actual.shape) == tuple(expected.shape), f"{msg}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    rtol, atol = tolerance(actual.dtype, terms, scale)
    torch.testing.assert_close(
        actual.detach().cpu().double(), expected, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{msg}\n{m}"
    )


def finite_scale(*arrays) -> float:
    """Largest finite magnitude among the inputs (the ``scale`` of :func:`tolerance`)."""
    best = 0.0
    for a in arrays:
        a = _f64(a)
        finite = a[np.isfinite(a)]
        if finite.size:
            best = max(best, float(np.abs(finite).max()))
    return best
