"""Triton kernels of the ring-buffer family: ``running_median_``, ``foreach_running_median_``
and the fused optimizer step ``ring_step_`` (M3 / RM3 / RA3).

One kernel serves all three. Per coordinate it reads the gradient (plus the parameter for
an optimizer step) and the ``R`` history slots, reduces them, and writes the result and the
raw gradient into ``history[slot]``, in one pass. History slots are separate tensors, so
each is a pointer argument: ``h0 .. h7`` (``R <= MAX_HISTORY``; unused ones repeat the
gradient and are never read). Longer histories run on the CUDA C++ kernels. The foreach
forms launch once per parameter. Ops of their own for the reason given in ``median.py``.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from cgh_ops import _checks

from ._common import LAUNCH, block_size, is_f64, median_of_tile, next_pow2, put, to_acc, to_dtype, true_div

MAX_HISTORY = 8

# What the kernel does with the reduction r of (g, *history):
STORE_MEDIAN = 0  # running median: grad <- median
UPDATE_MEDIAN = 1  # optimizer step: param <- param - lr * median
UPDATE_MEAN = 2  # optimizer step: param <- param - lr * mean (rows summed in order)
STORE_ONLY = 3  # optimizer step with reduce="none": history[slot] <- g only


def _f64_bits(v: float) -> int:
    """A Python float as the int64 of its bits. Triton passes float arguments as float32
    (and so does its interpreter, whatever the annotation); the bits keep float64 exact."""
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


@triton.jit
def _bits_to_f64(bits):
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _slot(j: tl.constexpr, h0, h1, h2, h3, h4, h5, h6, h7):
    """History pointer ``j`` (a compile-time choice, no pointer table in memory)."""
    if j == 0:
        return h0
    elif j == 1:
        return h1
    elif j == 2:
        return h2
    elif j == 3:
        return h3
    elif j == 4:
        return h4
    elif j == 5:
        return h5
    elif j == 6:
        return h6
    else:
        return h7


@triton.jit
def _ring_kernel(
    p_ptr,  # (n,) result: the gradient (STORE_MEDIAN) or the parameter (updates)
    g_ptr,  # (n,) the new gradient (the same tensor as p_ptr for STORE_MEDIAN)
    h0, h1, h2, h3, h4, h5, h6, h7,  # (n,) history slots 0..R-1 of this parameter
    n,
    lr_bits,  # step size (updates only), the bits of a float64 (see _f64_bits)
    wd_bits,  # weight decay (updates only): g = round(grad + weight_decay * param)
    MODE: tl.constexpr,  # STORE_MEDIAN, UPDATE_MEDIAN, UPDATE_MEAN or STORE_ONLY
    R: tl.constexpr,  # history slots (<= 8)
    KP: tl.constexpr,  # next_power_of_2(R + 1), the tile width
    SLOT: tl.constexpr,  # slot that receives g, or -1
    WEIGHT_DECAY: tl.constexpr,  # weight_decay != 0
    OMIT_NAN: tl.constexpr,
    F64: tl.constexpr,
    BLOCK: tl.constexpr,  # coordinates per program (see _common.block_size)
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g_raw = tl.load(g_ptr + offs, mask=mask)
    if MODE != STORE_MEDIAN:
        p = to_acc(tl.load(p_ptr + offs, mask=mask), F64)
        if WEIGHT_DECAY:
            if F64:
                wd = _bits_to_f64(wd_bits)
            else:
                wd = _bits_to_f64(wd_bits).to(tl.float32)
            # Rounded to the parameter dtype: what the history stores and the reduction reads.
            g_raw = to_dtype(to_acc(g_raw, F64) + p * wd, g_raw.dtype)
    if MODE != STORE_ONLY:
        g = to_acc(g_raw, F64)
        if MODE == UPDATE_MEAN:
            total = g
            for j in tl.static_range(R):
                total = total + to_acc(tl.load(_slot(j, h0, h1, h2, h3, h4, h5, h6, h7) + offs, mask=mask), F64)
            r = true_div(total, R + 1)
        else:
            idx = tl.arange(0, KP)[None, :]
            vals = tl.full([BLOCK, KP], float("inf"), g.dtype)
            vals = put(vals, idx, 0, g)
            for j in tl.static_range(R):
                vals = put(vals, idx, j + 1, to_acc(tl.load(_slot(j, h0, h1, h2, h3, h4, h5, h6, h7) + offs, mask=mask), F64))
            r = median_of_tile(vals, idx, R + 1, OMIT_NAN)
        # Every history read above precedes the write below (the slot's old value counts).
        if SLOT >= 0:
            tl.store(_slot(SLOT, h0, h1, h2, h3, h4, h5, h6, h7) + offs, g_raw, mask=mask)
        if MODE == STORE_MEDIAN:
            tl.store(p_ptr + offs, to_dtype(r, p_ptr.dtype.element_ty), mask=mask)
        else:
            if F64:
                step = _bits_to_f64(lr_bits)
            else:
                step = _bits_to_f64(lr_bits).to(tl.float32)
            tl.store(p_ptr + offs, to_dtype(p - r * step, p_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(_slot(SLOT, h0, h1, h2, h3, h4, h5, h6, h7) + offs, g_raw, mask=mask)


def _launch(mode: int, p: Tensor, g: Tensor, hist: list[Tensor], slot: int, lr: float, wd: float, omit_nan: bool):
    """One parameter's update; copies through contiguous buffers when a tensor is strided."""
    n = p.numel()
    if n == 0:
        return
    work = [p, g] + list(hist)
    contiguous = all(t.is_contiguous() for t in work)
    bufs = work if contiguous else [t.contiguous() for t in work]
    pb, gb, hb = bufs[0], bufs[1], bufs[2:]
    if mode == STORE_MEDIAN:
        gb = pb  # the gradient is both input and output
    R = len(hb)
    kp = next_pow2(R + 1)
    block = block_size(kp)
    slots = hb + [gb] * (MAX_HISTORY - R)  # unused pointers: never read
    wrap_triton(_ring_kernel)[(triton.cdiv(n, block),)](
        pb, gb, *slots, n, _f64_bits(lr), _f64_bits(wd),
        MODE=mode, R=R, KP=kp, SLOT=slot, WEIGHT_DECAY=wd != 0, OMIT_NAN=omit_nan, F64=is_f64(p), BLOCK=block,
        **LAUNCH,
    )
    if not contiguous:  # write back what the kernel wrote
        if mode != STORE_ONLY:
            p.copy_(pb)
        if slot >= 0:
            hist[slot].copy_(hb[slot])


def _fallback_op(name: str):
    # R > MAX_HISTORY: the CUDA C++ (or reference) kernel of the same op.
    return getattr(torch.ops.cgh, name).default


@triton_op("cgh::running_median_triton_", mutates_args={"grad", "history"})
def running_median_(grad: Tensor, history: list[Tensor], slot: int, omit_nan: bool = False) -> None:
    R = _checks.check_running_median([grad], history, slot, "running_median_")
    if R > MAX_HISTORY:
        _fallback_op("running_median_")(grad, history, slot, omit_nan)
        return
    _launch(STORE_MEDIAN, grad, grad, list(history), slot, 0.0, 0.0, omit_nan)


@triton_op("cgh::foreach_running_median_triton_", mutates_args={"grads", "history"})
def foreach_running_median_(grads: list[Tensor], history: list[Tensor], slot: int, omit_nan: bool = False) -> None:
    R = _checks.check_running_median(grads, history, slot, "foreach_running_median_")
    if R > MAX_HISTORY:
        _fallback_op("foreach_running_median_")(grads, history, slot, omit_nan)
        return
    for i, g in enumerate(grads):
        _launch(STORE_MEDIAN, g, g, list(history[i * R : (i + 1) * R]), slot, 0.0, 0.0, omit_nan)


_MODES = {"median": UPDATE_MEDIAN, "mean": UPDATE_MEAN, "none": STORE_ONLY}


@triton_op("cgh::ring_step_triton_", mutates_args={"params", "history"})
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
    if R > MAX_HISTORY:
        _fallback_op("ring_step_")(params, grads, history, slot, lr, weight_decay, reduce, omit_nan)
        return
    mode = _MODES[reduce]
    for i, (p, g) in enumerate(zip(params, grads)):
        _launch(mode, p, g, list(history[i * R : (i + 1) * R]), slot, lr, weight_decay, omit_nan)
