"""Helpers shared by the Triton kernels: layouts, block sizes and the median of a tile.

Every kernel works on a tile of ``BLOCK`` output coordinates. The ``k`` values that meet at
a coordinate (group means, rows, history slots) are laid out as a ``[BLOCK, KP]`` tile,
``KP = next_power_of_2(k)`` (Triton shapes are powers of two), padded with ``+inf`` and
sorted along the last axis with ``tl.sort`` (a bitonic network in registers).

NaN policy, pinned explicitly: NaNs are replaced by ``+inf`` *before* sorting and counted
apart, so neither ``tl.sort`` nor ``tl.minimum``/``tl.maximum`` ever sees one (their NaN
behaviour is unspecified unless ``propagate_nan`` is given); the median is then taken over
the first ``count`` sorted values, and ``omit_nan=False`` turns any NaN into a NaN result.
Replacing NaN by ``+inf`` is exact: ``+inf`` sorts after every real value and ties with a
real ``+inf`` pick the same value.

Numerical rules are those of ``cgh_ops/reference.py``: float32 accumulation (float64 for
float64 input), sums in a fixed order, true division (``tl.div_rn``), and kernels launched
with ``enable_fp_fusion=False`` so that ``a * b + c`` is never contracted into an FMA.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Elements of a [BLOCK, KP] tile held by one program. 4096 fp32 values over 4 warps is 32
# registers a thread: enough independent loads in flight to saturate memory, few enough
# that tl.sort's network stays in registers.
TILE_ELEMENTS = 4096
NUM_WARPS = 4
# Launch options of every kernel: never fuse a multiply and an add (the reference rounds
# both), which LLVM would otherwise do on GPUs.
LAUNCH = {"num_warps": NUM_WARPS, "enable_fp_fusion": False}


# Under TRITON_INTERPRET=1 (CPU tests) a program runs as NumPy code whose cost grows with
# the tile, and the tests' tensors are tiny: small tiles keep them fast.
INTERPRET_TILE_ELEMENTS = 256


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def block_size(kp: int) -> int:
    """Output coordinates per program for a tile of ``kp`` values each (a power of two)."""
    tile = INTERPRET_TILE_ELEMENTS if interpreting() else TILE_ELEMENTS
    return max(16, tile // kp)


def next_pow2(k: int) -> int:
    return triton.next_power_of_2(max(int(k), 1))


def is_f64(t: torch.Tensor) -> bool:
    return t.dtype == torch.float64


def rows_2d(x: torch.Tensor) -> torch.Tensor:
    """``x [m, *S]`` as ``[m, n]`` with unit-stride rows (a view when possible, else a copy).

    Rows may sit at any distance from each other (``stride(0)`` is passed to the kernel);
    only a row that is not contiguous in itself forces the copy.
    """
    m = x.shape[0]
    x2 = x.reshape(m, -1)
    if x2.shape[1] > 1 and x2.stride(1) != 1:
        x2 = x2.contiguous()
    return x2


def flat(t: torch.Tensor) -> torch.Tensor:
    """A contiguous 1-D view of ``t`` (a copy only when ``t`` is not contiguous)."""
    return t.contiguous().view(-1)


@triton.jit
def to_acc(v, F64: tl.constexpr):
    """Upcast to the accumulation dtype: float64 for float64 input, else float32."""
    if F64:
        return v.to(tl.float64)
    else:
        return v.to(tl.float32)


@triton.jit
def pick(s, idx, i):
    """``s[:, i]`` of a ``[BLOCK, KP]`` tile (``i``: a per-row index or a constant).

    A masked max, not a sum: it returns the element bit for bit (-0.0 and +inf included).
    """
    return tl.max(tl.where(idx == i, s, float("-inf")), axis=1)


@triton.jit
def put(vals, idx, j: tl.constexpr, v):
    """``vals[:, j] = v`` for a ``[BLOCK, KP]`` tile."""
    return tl.where(idx == j, v[:, None], vals)


@triton.jit
def median_of_tile(vals, idx, K: tl.constexpr, OMIT_NAN: tl.constexpr):
    """Median along axis 1 of the first ``K`` columns of ``vals [BLOCK, KP]``.

    Columns ``>= K`` must hold ``+inf``. Odd count: the middle value; even count:
    ``(lo + hi) * 0.5``; NaN policy as in the module docs.
    """
    nan = vals != vals
    nan_count = tl.sum(nan.to(tl.int32), axis=1)
    s = tl.sort(tl.where(nan, float("inf"), vals), dim=1)
    count = K - nan_count
    lo_i = tl.maximum(count - 1, 0) // 2
    hi_i = tl.minimum(count // 2, K - 1)
    lo = pick(s, idx, lo_i[:, None])
    hi = pick(s, idx, hi_i[:, None])
    med = tl.where(count % 2 == 1, lo, (lo + hi) * 0.5)
    if OMIT_NAN:
        bad = count == 0
    else:
        bad = nan_count > 0
    return tl.where(bad, float("nan"), med)


@triton.jit
def to_dtype(v, DST: tl.constexpr):
    """Round ``v`` (float32 or float64) to the output dtype ``DST``, to nearest even.

    float32 -> bfloat16 is done on the bits (c10's rule: add 0x7FFF plus the lowest kept
    bit, then truncate; NaN stays NaN): the same result as the GPU's ``cvt.rn.bf16.f32``,
    and exact under ``TRITON_INTERPRET=1`` too, whose own bfloat16 cast truncates.
    """
    if DST == tl.bfloat16:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = (bits + (((bits >> 16) & 1) + 0x7FFF)) >> 16
        rounded = tl.where(v != v, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(DST)


@triton.jit
def true_div(total, count: tl.constexpr):
    """``total / count``, correctly rounded (the reference's division of a sum by a row count).

    ``tl.div_rn`` for float32, because Triton's plain ``/`` on float32 may be approximate;
    float64 division is always correctly rounded.
    """
    if total.dtype == tl.float64:
        return total / count
    else:
        return tl.div_rn(total, tl.full(total.shape, count, tl.float32))
