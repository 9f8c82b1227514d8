"""Tests specific to the native CPU kernels (csrc/cpu): the places where their
implementation can go wrong that a black-box matrix (test_ops.py) may not hit.

* vector/tail boundaries: the kernels work in blocks of Vectorized<acc>::size()
  coordinates (8 for float32/float16/bfloat16 here, 4 for float64) plus a partial tail;
* chunk boundaries of at::parallel_for (the grain is about 2^17 / operands coordinates);
* the layouts: contiguous rows with an arbitrary row stride (raw pointers), and any other
  layout (TensorIterator, strided blocks gathered and scattered);
* the omit-mode fallback of a block that holds a NaN (scalar selection per coordinate);
* every k path: compile-time register kernels for k = 2..9 (the shorter, unstable k = 9
  networks with their stable redo of blocks with a zero result), a run-time sorting
  network up to 16, scalar beyond;
* bitwise equality with cgh_ops.reference, which the kernels reproduce operation by
  operation (accumulation dtype, order of the sums, (lo + hi) * 0.5, rounding).

All of them compare against the reference kernels bit for bit (NaN matches any NaN).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import cgh_ops
from cgh_ops import _ops, reference

NATIVE_CPU = torch._C._dispatch_has_kernel_for_dispatch_key("cgh::median3", "CPU")
pytestmark = pytest.mark.skipif(not NATIVE_CPU, reason="the native CPU kernels are not built")

ops = torch.ops.cgh
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INT_OF = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def vec_width(dtype) -> int:
    """Coordinates per block: 32-byte vectors of the accumulation dtype."""
    return 4 if dtype == torch.float64 else 8


def assert_bitwise(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, msg
    a, e = actual.contiguous().reshape(-1), expected.contiguous().reshape(-1)
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{msg}: NaN positions differ"
    ia, ie = a[~nan_a].view(INT_OF[a.element_size()]), e[~nan_e].view(INT_OF[e.element_size()])
    bad = (ia != ie).nonzero()
    assert bad.numel() == 0, f"{msg}: {bad.numel()} coordinates differ, first at {bad[0].item()}"


def sprinkle(x: torch.Tensor, frac: float = 0.05, seed: int = 0) -> torch.Tensor:
    """x with NaN, +Inf and -Inf at a few random places (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(x.shape, generator=g)
    x = x.clone()
    x[u < frac] = float("nan")
    x[(u >= frac) & (u < 2 * frac)] = float("inf")
    x[(u >= 2 * frac) & (u < 3 * frac)] = float("-inf")
    return x


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ----------------------------------------------------------------------------- dispatch
@pytest.mark.parametrize("qualname", sorted(_ops.SCHEMAS))
def test_every_overload_has_a_cpu_kernel(qualname):
    # coverage: the CPU dispatch key must never fall back to the slow reference
    name = "cgh::" + qualname
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name


def test_extension_loaded_after_schemas():
    # load order: cgh_ops/__init__ defines the schemas, then loads the .so
    assert cgh_ops._extension.NATIVE, cgh_ops._extension.LOAD_ERROR


# ----------------------------------------------------------------------------- boundaries
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocks,extra", [(0, 1), (0, 3), (1, -1), (1, 0), (1, 1), (2, -1), (2, 0), (2, 3)])
def test_vector_tail_boundaries(dtype, blocks, extra):
    # tail: n = blocks * W + extra covers no full block, exact blocks, and partial tails
    n = blocks * vec_width(dtype) + extra
    x = sprinkle(randn(9, n, dtype=dtype, seed=n), 0.04, seed=n)
    for omit in (False, True):
        assert_bitwise(ops.median_of_means(x, 3, omit), reference.median_of_means(x, 3, omit), f"mom n={n}")
        a, b, c = x[0], x[1], x[2]
        assert_bitwise(ops.median3(a, b, c, omit), reference.median3(a, b, c, omit), f"median3 n={n}")
    assert_bitwise(ops.trimmed_mean(x, 2), reference.trimmed_mean(x, 2), f"trimmed n={n}")
    assert_bitwise(ops.winsorized_mean(x, 2), reference.winsorized_mean(x, 2), f"winsorized n={n}")


@pytest.mark.parametrize("m", [3, 9])
def test_parallel_chunk_boundaries(m):
    # chunks: two or more parallel_for chunks whose boundary is not a block multiple
    grain = max(2048, (1 << 17) // (m + 1))
    n = 2 * grain + 5
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = sprinkle(randn(m, n, seed=m), 0.001, seed=m)
        for omit in (False, True):
            assert_bitwise(ops.median_of_means(x, 3, omit), reference.median_of_means(x, 3, omit), "mom")
        # the same problem single-threaded gives the same bits (determinism across splits)
        two = ops.median_of_means(x, 3, True)
        torch.set_num_threads(1)
        assert_bitwise(ops.median_of_means(x, 3, True), two, "threads")
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("dtype,offset", [(torch.float32, 1), (torch.float64, 3), (torch.bfloat16, 1),
                                          (torch.bfloat16, 9), (torch.float16, 15), (torch.bfloat16, 8)])
def test_large_output_streamed_from_unaligned_start(dtype, offset):
    # streaming: float32/float64 runs of >= 4 MB of output use non-temporal stores after a
    # head of fewer than one block (8 or 4 lanes: 32 bytes) that reaches the block
    # boundary; float16/bfloat16 outputs take normal stores, and once overran an 8-lane
    # block with a head of up to 15 lanes: their offsets cover every head length class
    n = (1 << 22) + 5
    x = randn(3, n, seed=12, dtype=dtype)
    buf = torch.empty(n + 16, dtype=dtype)
    out = buf[offset:offset + n]  # `offset` elements past a 64-byte boundary
    ops.median_of_means.out(x, 3, False, out=out)
    assert_bitwise(out, reference.median_of_means(x, 3), "median_of_means")
    ops.median3.out(x[0], x[1], x[2], False, out=out)
    assert_bitwise(out, torch.median(x, 0).values, "median3")


@pytest.mark.parametrize(
    "m,groups", [(9, 3), (8, 3), (7, 3), (6, 3), (5, 3), (4, 3), (5, 4), (9, 5), (11, 2), (13, 5), (12, 4), (4, 4)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_group_mean_tile_boundaries(m, groups, dtype):
    # m <= 9 rows in 3 to 5 groups (or m == groups): group means and median in registers,
    # with compile-time group sizes, for every dtype and layout. Otherwise (11/2, 13/5,
    # 12/4) contiguous float/double rows are averaged into tiles of up to 32768 coordinates
    # (at most 4 rows per pass): several tiles plus a partial one.
    n = 3 * 32768 + 13
    x = sprinkle(randn(m, n, dtype=dtype, seed=m), 0.001, seed=m)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for omit in (False, True):
            want = reference.median_of_means(x, groups, omit)
            assert_bitwise(ops.median_of_means(x, groups, omit), want, f"m={m} groups={groups} omit={omit}")
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize(
    "k,trim", [(2, 0), (3, 0), (3, 1), (4, 1), (5, 0), (5, 2), (6, 2), (7, 3), (8, 1), (9, 0), (9, 2), (9, 4), (10, 3)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sorted_mean_register_paths(k, trim, dtype):
    # k <= 9: a register kernel per k with a run-time trim (k = 9: the unstable 25-exchange
    # sort, redone stably where the result is a zero); k = 10: the run-time network.
    # Ties of +0/-0 (the zero a stable sort keeps), NaN, +-Inf, tails.
    g = torch.Generator().manual_seed(k * 10 + trim)
    v = torch.randint(-1, 2, (k, 333), generator=g).float()
    zeros = torch.where((v == 0) & (torch.rand(k, 333, generator=g) < 0.5), torch.tensor(-0.0), v)
    x = torch.cat([zeros, sprinkle(randn(k, 333, seed=k), 0.02, seed=trim)], 1).to(dtype)
    assert_bitwise(ops.trimmed_mean(x, trim), reference.trimmed_mean(x, trim), f"trimmed k={k} trim={trim}")
    assert_bitwise(ops.winsorized_mean(x, trim), reference.winsorized_mean(x, trim), f"winsorized k={k} trim={trim}")


# ----------------------------------------------------------------------------- layouts
def test_row_sliced_input_uses_rows_in_place():
    # fast path: each row contiguous, row stride larger than the row (x = big[:, :n])
    big = randn(7, 1000, seed=1)
    x = big[:, 3:903]
    assert not x.is_contiguous() and x[0].is_contiguous()
    for groups in (3, 7):
        assert_bitwise(ops.median_of_means(x, groups), reference.median_of_means(x, groups), f"g={groups}")
    assert_bitwise(ops.trimmed_mean(x, 1), reference.trimmed_mean(x, 1), "trimmed")


@pytest.mark.parametrize(
    "view",
    [
        "transposed",  # rows with a non-unit stride: strided blocks, gathered
        "inner_step",  # rows strided inside: x[:, ::2]
        "expanded",  # stride 0 along the coordinates
        "channels_last",  # a permuted 4-d layout that TensorIterator reorders
    ],
)
def test_strided_inputs(view):
    if view == "transposed":
        x = randn(37, 5, seed=2).t()
    elif view == "inner_step":
        x = randn(5, 74, seed=2)[:, ::2]
    elif view == "expanded":
        x = randn(5, 1, seed=2).expand(5, 37)
    else:
        x = randn(5, 2, 3, 7, seed=2).contiguous(memory_format=torch.channels_last)
    x = sprinkle(x, 0.05, seed=3)
    for omit in (False, True):
        assert_bitwise(ops.median_of_means(x, 5, omit), reference.median_of_means(x, 5, omit), view)
    assert_bitwise(ops.winsorized_mean(x, 1), reference.winsorized_mean(x, 1), view)


def test_non_contiguous_out_is_written_in_place():
    # out layout: a strided out= view is written directly (its gaps untouched)
    x = randn(3, 21, seed=4)
    buf = torch.full((42,), -7.0)
    out = buf[::2]
    assert ops.median_of_means.out(x, 3, False, out=out) is None
    assert_bitwise(out, reference.median_of_means(x, 3), "out")
    assert torch.all(buf[1::2] == -7.0)


def test_empty_coordinates():
    # empty *S: nothing to compute, an empty result of the right shape
    x = torch.empty(5, 0, 3)
    assert ops.median_of_means(x, 3).shape == (0, 3)
    assert ops.trimmed_mean(x, 1).shape == (0, 3)


# ----------------------------------------------------------------------------- k paths, NaN
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 8, 15, 16, 17, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_k_path_matches_reference(k, dtype):
    # k: 3/5 min/max networks, even counts, sorting network to 16, scalar selection beyond
    x = sprinkle(randn(k, 203, dtype=dtype, seed=k), 0.03, seed=k)
    for omit in (False, True):
        assert_bitwise(ops.median_of_means(x, k, omit), reference.median_of_means(x, k, omit), f"k={k} {omit}")
    trim = (k - 1) // 2
    for t in sorted({0, trim // 2, trim}):
        assert_bitwise(ops.trimmed_mean(x, t), reference.trimmed_mean(x, t), f"trimmed k={k} t={t}")
        assert_bitwise(ops.winsorized_mean(x, t), reference.winsorized_mean(x, t), f"winsorized k={k} t={t}")


@pytest.mark.parametrize("k", [3, 4, 5, 9, 20])
def test_omit_nan_block_fallback(k):
    # NaN chunk: a block with NaN in some lanes takes the scalar path, its neighbours not
    W = 8
    x = randn(k, 4 * W + 3, seed=k)
    x[0, W + 1] = float("nan")  # one NaN in the second block
    x[: k - 1, 2 * W + 2] = float("nan")  # one value left: the median is that value
    x[:, 3 * W + 1] = float("nan")  # all NaN: NaN
    x[1, -1] = float("nan")  # NaN in the tail
    got = ops.median_of_means(x, k, True)
    assert_bitwise(got, reference.median_of_means(x, k, True), f"k={k}")
    assert got[2 * W + 2] == x[k - 1, 2 * W + 2]
    assert torch.isnan(got[3 * W + 1]) and not torch.isnan(got[W + 1])
    propagate = ops.median_of_means(x, k, False)
    assert torch.isnan(propagate[W + 1]) and not torch.isnan(propagate[W])


def test_median3_equals_torch_median_bitwise():
    # SPEC: median3 is torch.median of the stack, bit for bit (odd count, no NaN)
    a, b, c = randn(3, 1001, seed=5)
    want = torch.median(torch.stack([a, b, c]), 0).values
    assert_bitwise(ops.median3(a, b, c), want, "median3")


@pytest.mark.parametrize("k", [3, 5, 7, 17, 21])
def test_signed_zero_ties_follow_stable_sort(k):
    # ties: +0/-0 pick the element torch.median (a stable sort) picks, on every k path
    g = torch.Generator().manual_seed(k)
    v = torch.randint(-1, 2, (k, 301), generator=g).float()
    x = torch.where((v == 0) & (torch.rand(k, 301, generator=g) < 0.5), torch.tensor(-0.0), v)
    assert_bitwise(ops.median_of_means(x, k), torch.median(x, 0).values, f"k={k}")


def test_group_means_are_summed_in_order_then_divided():
    # order: (a + b) + c then / 3, not a reciprocal multiply nor a pairwise sum
    x = torch.tensor([[1e8], [1.0], [-1e8], [3.0], [5.0], [7.0], [2.0], [2.0], [2.0]])
    assert_bitwise(ops.median_of_means(x, 3), reference.median_of_means(x, 3), "order")


# ----------------------------------------------------------------------------- in-place ops
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R,slot", [(0, -1), (2, 0), (2, 1), (2, -1), (3, 2), (4, 3), (8, 7), (9, 0), (17, 5)])
def test_running_median_matches_reference(dtype, R, slot):
    # R: k = R + 1 = 3, 5, 9 (register kernels), 4 (even), 10 (run-time network), 18
    # (scalar k > 16); slot -1: no write
    n = 2 * vec_width(dtype) + 3
    grads = [sprinkle(randn(n, dtype=dtype, seed=1), 0.05, 1), randn(3, 5, dtype=dtype, seed=2)]
    history = [randn(*g.shape, dtype=dtype, seed=10 + j) for g in grads for j in range(R)]
    g2, h2 = [g.clone() for g in grads], [h.clone() for h in history]
    ops.foreach_running_median_(grads, history, slot, True)
    reference.foreach_running_median_(g2, h2, slot, True)
    for a, b in zip(grads + history, g2 + h2):
        assert_bitwise(a, b, f"R={R} slot={slot}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["none", "median", "mean"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_ring_step_matches_reference(dtype, reduce, weight_decay):
    # ring step: g rounded to dtype before history and reduction; mean order g then history
    R, slot = 2, 1
    n = 3 * vec_width(dtype) + 1
    params = [randn(n, dtype=dtype, seed=1), randn(4, 3, dtype=dtype, seed=2)[:, ::2]]  # one strided
    grads = [randn(*p.shape, dtype=dtype, seed=3 + i) for i, p in enumerate(params)]
    history = [randn(*p.shape, dtype=dtype, seed=10 + j) for p in params for j in range(R)]
    p2, h2 = [p.clone() for p in params], [h.clone() for h in history]
    ops.ring_step_(params, grads, history, slot, 0.1, weight_decay, reduce, False)
    reference.ring_step_(p2, grads, h2, slot, 0.1, weight_decay, reduce, False)
    for a, b in zip(params + history, p2 + h2):
        assert_bitwise(a, b, f"{reduce} wd={weight_decay}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("omit", [False, True])
def test_register_medians_of_in_place_ops_with_nan(dtype, omit):
    # k = 3 in registers (running median, ring step median): NaN/Inf blocks, both NaN modes
    n = 5 * vec_width(dtype) + 3
    g = sprinkle(randn(n, dtype=dtype, seed=4), 0.1, 4)
    hist = [sprinkle(randn(n, dtype=dtype, seed=5 + j), 0.1, 5 + j) for j in range(2)]
    g1, h1, g2, h2 = g.clone(), [h.clone() for h in hist], g.clone(), [h.clone() for h in hist]
    ops.running_median_(g1, h1, 1, omit)
    reference.running_median_(g2, h2, 1, omit)
    for a, b in zip([g1] + h1, [g2] + h2):
        assert_bitwise(a, b, f"running_median_ omit={omit}")
    p = randn(n, dtype=dtype, seed=9)
    for wd in (0.0, 0.01):
        p1, p2, h1, h2 = p.clone(), p.clone(), [h.clone() for h in hist], [h.clone() for h in hist]
        ops.ring_step_([p1], [g], h1, 0, 0.1, wd, "median", omit)
        reference.ring_step_([p2], [g], h2, 0, 0.1, wd, "median", omit)
        for a, b in zip([p1] + h1, [p2] + h2):
            assert_bitwise(a, b, f"ring_step_ wd={wd} omit={omit}")


def _signed_zero_ties(k: int, n: int, seed: int) -> torch.Tensor:
    """[k, n] values from {-1, -0.0, +0.0, 1}: ties everywhere, zeros of both signs."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(-1, 2, (k, n), generator=g).float()
    return torch.where((v == 0) & (torch.rand(k, n, generator=g) < 0.5), torch.tensor(-0.0), v)


@pytest.mark.parametrize("k", [3, 5, 8, 9])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_in_place_medians_pick_the_stable_zero(k, dtype):
    # running_median_ and ring_step_ on every register k: the zero (+0/-0) a stable sort of
    # (grad, history[0], ...) puts in the middle, as the reference; the first half of the
    # coordinates ties, the second half random values (the fast k = 9 network's path)
    n = 6 * vec_width(dtype) + 5
    vals = torch.cat([_signed_zero_ties(k, n, seed=k), randn(k, n, seed=k)], 1).to(dtype)
    g1, g2 = vals[0].clone(), vals[0].clone()
    h1, h2 = [v.clone() for v in vals[1:]], [v.clone() for v in vals[1:]]
    ops.running_median_(g1, h1, k - 2, False)
    reference.running_median_(g2, h2, k - 2, False)
    for a, b in zip([g1] + h1, [g2] + h2):
        assert_bitwise(a, b, f"running_median_ k={k}")
    p1 = randn(2 * n, dtype=dtype, seed=1)
    p2 = p1.clone()
    h1, h2 = [v.clone() for v in vals[1:]], [v.clone() for v in vals[1:]]
    ops.ring_step_([p1], [vals[0]], h1, 0, 0.5, 0.0, "median", False)
    reference.ring_step_([p2], [vals[0]], h2, 0, 0.5, 0.0, "median", False)
    for a, b in zip([p1] + h1, [p2] + h2):
        assert_bitwise(a, b, f"ring_step_ k={k}")


def test_running_median_in_place_on_strided_grad():
    # aliasing: grad is both input and output, through the strided (gathered) path
    base = randn(4, 30, seed=7)
    grad = base[:, ::3]
    history = [randn(4, 10, seed=8), randn(4, 10, seed=9)]
    want_g, want_h = grad.clone(), [h.clone() for h in history]
    reference.running_median_(want_g, want_h, 0)
    raw = grad.clone()
    ops.running_median_(grad, history, 0)
    assert_bitwise(grad, want_g, "grad")
    assert_bitwise(history[0], raw, "slot")
    assert_bitwise(history[1], want_h[1], "other slot")


# ----------------------------------------------------------------------------- ISA builds
# The kernels are compiled per ISA (csrc/cpu/vec_*.cpp) and this process runs only the best
# one the CPU has (cgh_ops._C.cpu_capability); the other builds run in a subprocess with
# ATEN_CPU_CAPABILITY capping the choice, on every op and dtype, bit for bit against the
# reference. n = 37: full blocks and a tail for 8 and 16 lanes, every op; n = 2^20 + 3:
# float32/float64 outputs of >= 4 MiB, which stream (from an aligned start, to a tail),
# and the in-place ops walking the two halves of a long run in lockstep (then a tail);
# the strided view goes through the gather path; NaN and +-Inf sit at random places, and
# coordinates 5..12 are scaled into the dtype's subnormal range.
_ISA_SCRIPT = """
import sys
import torch, cgh_ops
from cgh_ops import _C, reference
assert _C.cpu_capability == sys.argv[1], _C.cpu_capability
ops = torch.ops.cgh
BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}

def same(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    g, w = got.reshape(-1), want.reshape(-1)
    assert torch.equal(g.isnan(), w.isnan()), what
    keep = ~g.isnan()
    assert torch.equal(g[keep].view(BITS[g.element_size()]), w[keep].view(BITS[w.element_size()])), what

def values(k, n, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(k, n, generator=gen, dtype=torch.float64)
    flat = x.view(-1)
    where = torch.randint(0, flat.numel(), (max(3, flat.numel() // 50),), generator=gen)
    flat[where[0::3]], flat[where[1::3]], flat[where[2::3]] = float("nan"), float("inf"), -float("inf")
    x[:, 5:13] *= torch.finfo(dtype).smallest_normal  # subnormal values, means and roundings
    return x.to(dtype)

seed = 0
for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    streams = dtype in (torch.float32, torch.float64)
    for n in (37, (1 << 20) + 3):
        for k in (3, 4, 5, 9, 20) if n < 100 else (3, 5):
            seed += 1
            x = values(k, n, dtype, seed)
            for view in (x, x[:, ::2]) if n < 100 else (x,) if streams else ():
                what = (dtype, n, k, view.is_contiguous())
                for omit in (False, True):
                    for groups in sorted({3, k}):
                        same(ops.median_of_means(view, groups, omit), reference.median_of_means(view, groups, omit), ("mom", groups, omit) + what)
                    if k == 3:
                        same(ops.median3(view[0], view[1], view[2], omit), reference.median3(view[0], view[1], view[2], omit), ("median3", omit) + what)
                for trim in range((k - 1) // 2 + 1):
                    same(ops.trimmed_mean(view, trim), reference.trimmed_mean(view, trim), ("trimmed", trim) + what)
                    same(ops.winsorized_mean(view, trim), reference.winsorized_mean(view, trim), ("winsorized", trim) + what)
            if k > 9:
                continue
            grad, history = x[0], list(x[1:])
            for omit in (False, True):
                got_g, got_h = grad.clone(), [h.clone() for h in history]
                want_g, want_h = grad.clone(), [h.clone() for h in history]
                ops.running_median_(got_g, got_h, 1, omit)
                reference.running_median_(want_g, want_h, 1, omit)
                for got, want in zip([got_g] + got_h, [want_g] + want_h):
                    same(got, want, ("running_median_", omit) + what)
            param = values(1, n, dtype, seed + 1000)[0]
            for reduce in ("median", "mean", "none"):
                for wd in (0.0, 0.01):
                    got_p, got_h = [param.clone()], [h.clone() for h in history]
                    want_p, want_h = [param.clone()], [h.clone() for h in history]
                    ops.ring_step_(got_p, [grad], got_h, 0, 0.1, wd, reduce)
                    reference.ring_step_(want_p, [grad], want_h, 0, 0.1, wd, reduce)
                    for got, want in zip(got_p + got_h, want_p + want_h):
                        same(got, want, ("ring_step_", reduce, wd) + what)
print("ok")
"""


def _cpu_has(*flags: str) -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            have = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return all(flag in have for flag in flags)


@pytest.mark.parametrize(
    "forced, capability, flags",
    [
        ("default", "DEFAULT", ()),
        ("avx2", "AVX2", ("avx2", "fma")),
        ("", "AVX512", ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq")),
    ],
    ids=["DEFAULT", "AVX2", "AVX512"],
)
def test_each_isa_build_matches_reference(forced, capability, flags):
    # ISA: each build of the kernels the CPU can run, picked as ATen's own switch does
    import platform

    if capability != "DEFAULT" and (platform.machine() != "x86_64" or not _cpu_has(*flags)):
        pytest.skip(f"this CPU cannot run the {capability} kernels")
    root = os.path.dirname(os.path.dirname(os.path.abspath(cgh_ops.__file__)))  # where cgh_ops is imported from
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("ATEN_CPU_CAPABILITY", None)
    if forced:
        env["ATEN_CPU_CAPABILITY"] = forced
    done = subprocess.run(
        [sys.executable, "-c", _ISA_SCRIPT, capability], env=env, capture_output=True, text=True, timeout=600, cwd=root
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


# ----------------------------------------------------------------------------- errors, opcheck
def test_errors_raised_before_any_write():
    # nothing written: a bad later tensor stops the whole foreach call
    xs = [randn(3, 4), randn(3, 4).to(torch.int32)]
    out = [torch.full((4,), 5.0), torch.full((4,), 5, dtype=torch.int32)]
    with pytest.raises(TypeError, match=r"cgh.foreach_median_of_means: argument 'xs\[1\]'"):
        ops.foreach_median_of_means.out(xs, 3, False, out=out)
    assert torch.all(out[0] == 5.0)
    params = [randn(4), randn(4)]
    before = [p.clone() for p in params]
    with pytest.raises(ValueError, match=r"argument 'history\[3\]'"):
        ops.ring_step_(params, [randn(4), randn(4)], [randn(4), randn(4), randn(4), randn(5)], 0, 0.1, 0.0, "median")
    assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize(
    "case",
    ["median_of_means", "median3", "foreach_median_of_means", "trimmed_mean", "winsorized_mean",
     "running_median_", "foreach_running_median_", "ring_step_"],
)
def test_opcheck_on_cpu_kernels(case):
    # opcheck: schema, fake kernel and dispatcher agree with what the CPU kernels do
    x = randn(5, 3, 4, seed=11)
    samples = {
        "median_of_means": (ops.median_of_means.default, (x, 3, True)),
        "median3": (ops.median3.default, (x[0], x[1], x[2])),
        "foreach_median_of_means": (ops.foreach_median_of_means.default, ([x, x[:3, :2]], 2)),
        "trimmed_mean": (ops.trimmed_mean.default, (x, 1)),
        "winsorized_mean": (ops.winsorized_mean.default, (x, 2)),
        "running_median_": (ops.running_median_.default, (x[0].clone(), [x[1].clone(), x[2].clone()], 1)),
        "foreach_running_median_": (ops.foreach_running_median_.default, ([x[0].clone()], [x[1].clone()], 0)),
        "ring_step_": (
            ops.ring_step_.default,
            ([x[0].clone()], [x[1].clone()], [x[2].clone(), x[3].clone()], 0, 0.1, 0.01, "median"),
        ),
    }
    op, args = samples[case]
    torch.library.opcheck(op, args)
    if case in ("median_of_means", "median3", "trimmed_mean", "winsorized_mean"):
        # The out= overloads return an aliased Tensor(a!), which AOT dispatch cannot
        # functionalize for custom ops: check schema, fake kernel and autograd only.
        out_op = getattr(ops, case).out
        expected = op(*args)
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
        torch.library.opcheck(out_op, args, {"out": torch.empty_like(expected)}, test_utils=utils)


# ----------------------------------------------------------------------------- fresh outputs
def _smaps_field(address: int, field: str):
    """The value of `field` in /proc/self/smaps for the mapping that holds `address`."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == field + ":":
                return line.split()[1]
    return None


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "never"


def test_large_fresh_outputs_are_ordinary_resizable_tensors():
    # fresh outputs >= 2 MiB come from our huge-page allocator: same values, a normal
    # contiguous CPU tensor whose storage resizes and frees like any other
    n = (1 << 23) + 3  # 32 MiB of float32 output
    x = randn(3, n, seed=21)
    out = ops.median_of_means(x, 3, False)
    assert out.is_contiguous() and out.device.type == "cpu" and out.shape == (n,)
    assert_bitwise(out, reference.median_of_means(x, 3), "fresh")
    keep = out.clone()
    out.resize_(3 * n)  # the storage grows through the same allocator
    assert_bitwise(out[:n], keep, "after resize_")
    outs = ops.foreach_median_of_means([x, x[:, :5]], 3, False)
    assert_bitwise(outs[0], keep, "foreach fresh")
    del out, outs


@pytest.mark.skipif(_thp_mode() == "never", reason="transparent huge pages are off on this machine")
def test_large_fresh_outputs_are_advised_onto_huge_pages():
    # why: page faults dominated fresh outputs (median3 2^24: 45 ms fresh vs 10 ms out=)
    out = ops.median3(*randn(3, 1 << 23, seed=22), False)  # 32 MiB
    assert _smaps_field(out.data_ptr(), "THPeligible") == "1"
    small = ops.median3(*randn(3, 1000, seed=22), False)  # default allocator below 2 MiB
    assert_bitwise(small, torch.median(randn(3, 1000, seed=22), 0).values, "small")


def test_freed_fresh_outputs_are_reused():
    # why: freed fresh outputs of >= 2 MiB are kept for the next output of the same size
    # (in phases of a long run, glibc's heap faulted a list of 32 fresh 2 MiB outputs on
    # every call: 66 ms against 42 ms out=); a reused block holds the old values, so the
    # kernel must overwrite all of them
    x = randn(3, (1 << 20) + 5, seed=23)  # 4 MiB + 20 bytes: a 6 MiB block
    first = ops.median3(x[0], x[1], x[2], False)
    address = first.data_ptr()
    first.fill_(float("nan"))  # poison
    del first
    again = ops.median3(x[0], x[1], x[2], False)
    assert again.data_ptr() == address
    assert_bitwise(again, reference.median3(x[0], x[1], x[2]), "reused block")
    many = ops.foreach_median_of_means([x] * 4, 3, False)  # one live output per block
    assert len({t.data_ptr() for t in many + [again]}) == 5
    for t in many:
        assert_bitwise(t, again, "foreach fresh")


@pytest.mark.parametrize(
    "env",
    [
        {"CGH_OPS_HUGE_PAGES": "0"},
        {"CGH_OPS_OUTPUT_CACHE_MB": "0"},
        {"CGH_OPS_OUTPUT_CACHE_MB": "5"},
        {"CGH_OPS_OUTPUT_CACHE_MB": "10"},
    ],
    ids=["no-huge-pages", "no-cache", "cache-smaller-than-an-output", "cache-for-one-of-two-outputs"],
)
def test_output_allocator_settings(env):
    # CGH_OPS_HUGE_PAGES=0: every fresh output from the default CPU allocator;
    # CGH_OPS_OUTPUT_CACHE_MB: how much freed output memory is kept (0: none). Two 8 MiB
    # outputs live at a time, so that a 10 MiB cache drops the older of the two.
    script = (
        "import torch, cgh_ops\n"
        "x = torch.randn(3, 1 << 21)\n"
        "want = torch.median(x, 0).values\n"
        "for _ in range(3):\n"
        "    outs = [torch.ops.cgh.median3(x[0], x[1], x[2], False) for _ in range(2)]\n"
        "    assert all(torch.equal(out, want) for out in outs)\n"
        "    for out in outs:\n"
        "        out.fill_(float('nan'))\n"
        "    del out, outs\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], env=dict(os.environ, **env), capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


@pytest.mark.parametrize("stage", ["1", "0"], ids=["staged", "direct"])
def test_rows_256_mib_apart_are_exact(stage, monkeypatch):
    # why: rows of one [k, 2^26] float32 tensor are 256 MiB apart, and on AMD CPUs their
    # pages collide (python -m bench.row_aliasing); there the kernels copy 64 KiB of each
    # row into a per-thread buffer before computing (CGH_OPS_STAGE_ROWS forces it on or off
    # on any CPU). Every op family on both paths, in-place ones too, with a tail that is not
    # a whole chunk and a NaN.
    monkeypatch.setenv("CGH_OPS_STAGE_ROWS", stage)
    n = (1 << 26)
    g = torch.Generator().manual_seed(26)
    x = torch.randint(-3, 4, (3, n), generator=g, dtype=torch.int8).float()  # 768 MiB
    x[1, n - 7] = float("nan")
    want = reference.median_of_means(x, 3)
    assert_bitwise(ops.median_of_means(x, 3, False), want, "median_of_means")
    assert_bitwise(ops.trimmed_mean(x, 1), want, "trimmed_mean (k = 3, trim 1: the median)")
    del want
    grad, history = x[0], [x[1], x[2]]
    want_grad, want_hist = grad.clone(), [h.clone() for h in history]
    reference.running_median_(want_grad, want_hist, 1)
    raw = grad.clone()
    ops.running_median_(grad, history, 1, False)
    assert_bitwise(grad, want_grad, "running_median_ grad")
    assert_bitwise(history[1], raw, "running_median_ slot")
