"""Triton kernels of the trimmed family: ``trimmed_mean`` and ``winsorized_mean``.

One kernel for both: the ``m`` rows of a tile of coordinates are loaded as ``[BLOCK, MP]``,
sorted along the rows, and summed in ascending order (trimmed: the middle ``m - 2*trim``
values; winsorized: the ``m`` values clamped to the kept range, i.e. ``trim`` copies of the
lowest kept value, the middle, ``trim`` copies of the highest), then divided. Ops of their
own for the reason given in ``median.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from cgh_ops import _checks

from ._common import LAUNCH, block_size, is_f64, next_pow2, pick, rows_2d, to_acc, to_dtype, true_div


@triton.jit
def _trimmed_kernel(
    x_ptr,  # (M, n) rows of x, unit stride within a row
    out_ptr,  # (n,) contiguous
    n,
    row_stride,  # elements between consecutive rows of x
    M: tl.constexpr,  # rows: values per coordinate
    MP: tl.constexpr,  # next_power_of_2(M), the tile width
    TRIM: tl.constexpr,  # values cut (or clamped) at each end
    WINSORIZE: tl.constexpr,  # False: trimmed mean; True: winsorized mean
    F64: tl.constexpr,
    BLOCK: tl.constexpr,  # coordinates per program (see _common.block_size)
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    idx = tl.arange(0, MP)[None, :]
    ptrs = x_ptr + idx.to(tl.int64) * row_stride + offs[:, None]
    v = to_acc(tl.load(ptrs, mask=mask[:, None] & (idx < M), other=float("inf")), F64)
    nan = v != v
    has_nan = tl.sum(nan.to(tl.int32), axis=1) > 0
    s = tl.sort(tl.where(nan, float("inf"), v), dim=1)  # padding (+inf) sorts last
    if WINSORIZE:
        low = pick(s, idx, TRIM)
        high = pick(s, idx, M - 1 - TRIM)
        total = low
        for p in tl.static_range(1, M):
            if p < TRIM:
                total = total + low
            elif p > M - 1 - TRIM:
                total = total + high
            else:
                total = total + pick(s, idx, p)
        mean = true_div(total, M)
    else:
        total = pick(s, idx, TRIM)
        for p in tl.static_range(TRIM + 1, M - TRIM):
            total = total + pick(s, idx, p)
        mean = true_div(total, M - 2 * TRIM)
    mean = tl.where(has_nan, float("nan"), mean)
    tl.store(out_ptr + offs, to_dtype(mean, out_ptr.dtype.element_ty), mask=mask)


def _trimmed_into(x: Tensor, trim: int, winsorize: bool, out: Tensor) -> None:
    n = out.numel()
    if n == 0:
        return
    m = x.shape[0]
    x2 = rows_2d(x)
    dst = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    mp = next_pow2(m)
    block = block_size(mp)
    wrap_triton(_trimmed_kernel)[(triton.cdiv(n, block),)](
        x2, dst, n, x2.stride(0), M=m, MP=mp, TRIM=trim, WINSORIZE=winsorize, F64=is_f64(x), BLOCK=block, **LAUNCH
    )
    if dst is not out:
        out.copy_(dst)


@triton_op("cgh::trimmed_mean_triton", mutates_args={})
def trimmed_mean(x: Tensor, trim: int) -> Tensor:
    _checks.check_trim(x, trim, "trimmed_mean")
    out = x.new_empty(x.shape[1:])
    _trimmed_into(x, trim, False, out)
    return out


@triton_op("cgh::trimmed_mean_out_triton", mutates_args={"out"})
def trimmed_mean_out(x: Tensor, trim: int, out: Tensor) -> None:
    _checks.check_trim(x, trim, "trimmed_mean")
    _checks.check_out(out, x.shape[1:], x, "trimmed_mean")
    _trimmed_into(x, trim, False, out)


@triton_op("cgh::winsorized_mean_triton", mutates_args={})
def winsorized_mean(x: Tensor, trim: int) -> Tensor:
    _checks.check_trim(x, trim, "winsorized_mean")
    out = x.new_empty(x.shape[1:])
    _trimmed_into(x, trim, True, out)
    return out


@triton_op("cgh::winsorized_mean_out_triton", mutates_args={"out"})
def winsorized_mean_out(x: Tensor, trim: int, out: Tensor) -> None:
    _checks.check_trim(x, trim, "winsorized_mean")
    _checks.check_out(out, x.shape[1:], x, "winsorized_mean")
    _trimmed_into(x, trim, True, out)
