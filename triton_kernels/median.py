"""Triton kernels of the median family: ``median_of_means`` (and its foreach form) and ``median3``.

Each launcher is an op of its own, ``torch.ops.cgh.<name>_triton``, defined with
``torch.library.triton_op`` and launching through ``wrap_triton``. Separate ops, rather
than a second CUDA kernel behind ``torch.ops.cgh.<name>``, because a ``triton_op`` is
transparent to ``torch.compile``: Inductor sees the Triton kernel itself and can schedule
it with the surrounding graph, whereas a kernel registered behind the dispatcher would be
an opaque call. ``cgh_ops.set_cuda_backend("triton")`` routes the public wrappers here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from cgh_ops import _checks

from ._common import LAUNCH, block_size, flat, is_f64, median_of_tile, next_pow2, put, rows_2d, to_acc, to_dtype, true_div


@triton.jit
def _median_of_means_kernel(
    x_ptr,  # (M, n) rows of x, unit stride within a row
    out_ptr,  # (n,) contiguous
    n,  # coordinates per row
    row_stride,  # elements between consecutive rows of x
    M: tl.constexpr,  # rows
    Q: tl.constexpr,  # rows of a small group: M // groups
    BIG: tl.constexpr,  # rows in the first M % groups groups, which have Q + 1 rows each
    START_MASK: tl.constexpr,  # bit j: row j starts a group
    END_MASK: tl.constexpr,  # bit j: row j ends a group
    K: tl.constexpr,  # groups: values whose median is taken
    MP: tl.constexpr,  # next_power_of_2(M): a group's mean sits in the column of its last row
    OMIT_NAN: tl.constexpr,
    F64: tl.constexpr,  # accumulate in float64 (float64 input)
    BLOCK: tl.constexpr,  # coordinates per program (see _common.block_size)
):
    pid = tl.program_id(0).to(tl.int64)  # 64-bit offsets: n may exceed 2^31
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    idx = tl.arange(0, MP)[None, :]
    # Group means go to the column of the group's last row; the other columns stay +inf,
    # so after sorting the first K columns are exactly the K means (median order-free).
    vals = tl.full([BLOCK, MP], float("inf"), tl.float64 if F64 else tl.float32)
    total = tl.zeros([BLOCK], tl.float64 if F64 else tl.float32)
    for j in tl.static_range(M):
        v = to_acc(tl.load(x_ptr + j * row_stride + offs, mask=mask, other=0.0), F64)
        if (START_MASK >> j) & 1:
            total = v  # the first row itself, as the reference (not 0 + row)
        else:
            total = total + v
        if (END_MASK >> j) & 1:
            if j < BIG:
                mean = true_div(total, Q + 1)
            else:
                mean = true_div(total, Q)
            vals = put(vals, idx, j, mean)
    # NaN means must not be mistaken for padding: median_of_tile counts them over K values
    # because padding is +inf, never NaN.
    med = median_of_tile(vals, idx, K, OMIT_NAN)
    tl.store(out_ptr + offs, to_dtype(med, out_ptr.dtype.element_ty), mask=mask)


def _group_masks(m: int, groups: int) -> tuple[int, int, int, int]:
    """(Q, BIG, START_MASK, END_MASK) of torch.tensor_split(range(m), groups)."""
    q, r = divmod(m, groups)
    start = end = 0
    row = 0
    for g in range(groups):
        size = q + 1 if g < r else q
        start |= 1 << row
        end |= 1 << (row + size - 1)
        row += size
    return q, r * (q + 1), start, end


def _median_of_means_into(x: Tensor, groups: int, omit_nan: bool, out: Tensor) -> None:
    m = x.shape[0]
    n = out.numel()
    if n == 0:
        return
    x2 = rows_2d(x)
    dst = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    q, big, start, end = _group_masks(m, groups)
    mp = next_pow2(m)
    block = block_size(mp)
    wrap_triton(_median_of_means_kernel)[(triton.cdiv(n, block),)](
        x2, dst, n, x2.stride(0),
        M=m, Q=q, BIG=big, START_MASK=start, END_MASK=end, K=groups, MP=mp,
        OMIT_NAN=omit_nan, F64=is_f64(x), BLOCK=block, **LAUNCH,
    )
    if dst is not out:
        out.copy_(dst)


@triton_op("cgh::median_of_means_triton", mutates_args={})
def median_of_means(x: Tensor, groups: int = 3, omit_nan: bool = False) -> Tensor:
    """Triton form of ``cgh::median_of_means`` (one program per ``BLOCK`` coordinates).

    ``M`` and ``groups`` are compile-time constants: the row loop unrolls, all loads of a
    program are in flight at once, and a new (m, groups) compiles once.
    """
    _checks.check_median_of_means(x, groups)
    out = x.new_empty(x.shape[1:])
    _median_of_means_into(x, groups, omit_nan, out)
    return out


@triton_op("cgh::median_of_means_out_triton", mutates_args={"out"})
def median_of_means_out(x: Tensor, groups: int, omit_nan: bool, out: Tensor) -> None:
    _checks.check_median_of_means(x, groups)
    _checks.check_out(out, x.shape[1:], x, "median_of_means")
    _median_of_means_into(x, groups, omit_nan, out)


@triton_op("cgh::foreach_median_of_means_triton", mutates_args={})
def foreach_median_of_means(xs: list[Tensor], groups: int = 3, omit_nan: bool = False) -> list[Tensor]:
    """One launch per tensor (the CUDA C++ kernel does the whole list in one launch)."""
    for i, x in enumerate(xs):
        _checks.check_median_of_means(x, groups, f"xs[{i}]", "foreach_median_of_means")
    outs = [x.new_empty(x.shape[1:]) for x in xs]
    for x, o in zip(xs, outs):
        _median_of_means_into(x, groups, omit_nan, o)
    return outs


@triton_op("cgh::foreach_median_of_means_out_triton", mutates_args={"out"})
def foreach_median_of_means_out(xs: list[Tensor], groups: int, omit_nan: bool, out: list[Tensor]) -> None:
    _checks.check_foreach_out(xs, groups, out)
    for x, o in zip(xs, out):
        _median_of_means_into(x, groups, omit_nan, o)


@triton.jit
def _median3_kernel(
    a_ptr,  # (n,) contiguous
    b_ptr,  # (n,) contiguous
    c_ptr,  # (n,) contiguous
    out_ptr,  # (n,) contiguous
    n,
    OMIT_NAN: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    idx = tl.arange(0, 4)[None, :]
    vals = tl.full([BLOCK, 4], float("inf"), tl.float64 if F64 else tl.float32)
    vals = put(vals, idx, 0, to_acc(tl.load(a_ptr + offs, mask=mask), F64))
    vals = put(vals, idx, 1, to_acc(tl.load(b_ptr + offs, mask=mask), F64))
    vals = put(vals, idx, 2, to_acc(tl.load(c_ptr + offs, mask=mask), F64))
    med = median_of_tile(vals, idx, 3, OMIT_NAN)
    tl.store(out_ptr + offs, to_dtype(med, out_ptr.dtype.element_ty), mask=mask)


def _median3_into(a: Tensor, b: Tensor, c: Tensor, omit_nan: bool, out: Tensor) -> None:
    n = out.numel()
    if n == 0:
        return
    dst = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    block = block_size(4)
    wrap_triton(_median3_kernel)[(triton.cdiv(n, block),)](
        flat(a), flat(b), flat(c), dst, n, OMIT_NAN=omit_nan, F64=is_f64(a), BLOCK=block, **LAUNCH
    )
    if dst is not out:
        out.copy_(dst)


@triton_op("cgh::median3_triton", mutates_args={})
def median3(a: Tensor, b: Tensor, c: Tensor, omit_nan: bool = False) -> Tensor:
    _checks.check_same_floats({"a": a, "b": b, "c": c}, "median3")
    out = torch.empty_like(a, memory_format=torch.contiguous_format)
    _median3_into(a, b, c, omit_nan, out)
    return out


@triton_op("cgh::median3_out_triton", mutates_args={"out"})
def median3_out(a: Tensor, b: Tensor, c: Tensor, omit_nan: bool, out: Tensor) -> None:
    _checks.check_same_floats({"a": a, "b": b, "c": c}, "median3")
    _checks.check_out(out, a.shape, a, "median3")
    _median3_into(a, b, c, omit_nan, out)
