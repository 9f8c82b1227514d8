"""The cgh ops as PyTorch ops: ``torch.library.opcheck`` and ``torch.compile``.

opcheck exercises the schema (aliasing and mutation annotations), the fake kernels, and
AOT dispatch with dynamic shapes, for every op and overload on a few samples. The compile
tests trace whole groups of ops at once (compiling is slow on a 2-core machine) with
``fullgraph=True`` and compare with eager bit for bit.
"""

from __future__ import annotations

import pytest
import torch

import cgh_ops  # noqa: F401  (defines the ops and loads the native kernels)
from cgh_ops._ops import SCHEMAS

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def randn(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, dtype=dtype, device=device)


def _samples(device):
    """(op name, overload) -> list of (args, kwargs); a few per op: dtypes, NaN modes, layouts."""
    r = lambda *shape, dtype=torch.float32: randn(*shape, dtype=dtype, device=device)  # noqa: E731
    x, xh = r(5, 3, 4), r(4, 6, dtype=torch.float16)
    xt = r(6, 5).t()  # non-contiguous [5, 6]
    a, b, c = r(3, 4), r(3, 4), r(3, 4)
    return {
        ("median_of_means", "default"): [((x, 3, False), {}), ((xh, 2, True), {}), ((xt, 5, False), {})],
        ("median_of_means", "out"): [((x, 3, False), {"out": r(3, 4)}), ((xh, 4, True), {"out": r(6, dtype=torch.float16)})],
        ("median3", "default"): [((a, b, c, False), {}), ((a.double(), b.double(), c.double(), True), {})],
        ("median3", "out"): [((a, b, c, False), {"out": r(3, 4)})],
        ("foreach_median_of_means", "default"): [(([x, xh, xt], 2, False), {}), (([], 3, False), {})],
        ("foreach_median_of_means", "out"): [
            (([x, xh], 3, True), {"out": [r(3, 4), r(6, dtype=torch.float16)]}),
        ],
        ("trimmed_mean", "default"): [((x, 1), {}), ((xh, 0), {})],
        ("trimmed_mean", "out"): [((x, 2), {"out": r(3, 4)})],
        ("winsorized_mean", "default"): [((x, 1), {}), ((xt, 2), {})],
        ("winsorized_mean", "out"): [((xh, 1), {"out": r(6, dtype=torch.float16)})],
        ("running_median_", "default"): [
            ((r(3, 4), [r(3, 4), r(3, 4)], 1, False), {}),
            ((r(7, dtype=torch.bfloat16), [r(7, dtype=torch.bfloat16)], -1, True), {}),
        ],
        ("foreach_running_median_", "default"): [
            (([r(3, 4), r(5)], [r(3, 4), r(3, 4), r(5), r(5)], 0, False), {}),
        ],
        ("ring_step_", "default"): [
            (([r(3, 4), r(5)], [r(3, 4), r(5)], [r(3, 4), r(3, 4), r(5), r(5)], 0, 0.1, 0.01, "median", False), {}),
            (([r(4, dtype=torch.float64)], [r(4, dtype=torch.float64)], [r(4, dtype=torch.float64)], 0, 0.5, 0.0, "mean", True), {}),
            (([r(4)], [r(4)], [r(4), r(4)], 1, 0.1, 0.0, "none", False), {}),
        ],
    }


def test_samples_cover_every_overload():
    covered = {f"{n}.{o}" if o != "default" else n for n, o in _samples("cpu")}
    assert covered == set(SCHEMAS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("key", list(_samples("cpu")), ids=lambda k: f"{k[0]}.{k[1]}")
def test_opcheck(device, key):
    op = getattr(getattr(torch.ops.cgh, key[0]), key[1])
    for args, kwargs in _samples(device)[key]:
        torch.library.opcheck(op, args, kwargs)


# ------------------------------------------------------------------- torch.compile
def _functional(x, a, b, c, xs):
    """Every op that returns a new result."""
    return [
        torch.ops.cgh.median_of_means(x, 3, False),
        torch.ops.cgh.median_of_means(x, 4, True),
        torch.ops.cgh.median3(a, b, c, False),
        torch.ops.cgh.trimmed_mean(x, 2),
        torch.ops.cgh.winsorized_mean(x, 2),
        *torch.ops.cgh.foreach_median_of_means(xs, 3, True),
    ]


def _out_forms(x, a, b, c, xs):
    """Every out= overload, into fresh outputs (what the optimizers and transforms call)."""
    results = [torch.empty_like(a) for _ in range(4)]
    torch.ops.cgh.median_of_means.out(x, 3, False, out=results[0])
    torch.ops.cgh.median3.out(a, b, c, True, out=results[1])
    torch.ops.cgh.trimmed_mean.out(x, 1, out=results[2])
    torch.ops.cgh.winsorized_mean.out(x, 1, out=results[3])
    outs = [torch.empty_like(t[0]) for t in xs]
    torch.ops.cgh.foreach_median_of_means.out(xs, 3, False, out=outs)
    return results + outs


def _in_place(grad, grads, params, step_grads, history, ring):
    """The in-place ops, as an optimizer step would call them."""
    torch.ops.cgh.running_median_(grad, history, 0, False)
    torch.ops.cgh.foreach_running_median_(grads, history, 1, True)
    torch.ops.cgh.ring_step_(params, step_grads, ring, 0, 0.1, 0.01, "median", False)
    torch.ops.cgh.ring_step_(params, step_grads, ring, 1, 0.1, 0.0, "mean", False)


def _assert_same_bits(got, expected, what):
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == e.dtype and g.shape == e.shape, f"{what}[{i}]"
        assert torch.equal(torch.isnan(g), torch.isnan(e)), f"{what}[{i}]: NaN positions"
        assert torch.equal(g.nan_to_num(0.0), e.nan_to_num(0.0)), f"{what}[{i}] differs from eager"


def _reduction_inputs(device):
    x = randn(7, 5, 3, device=device)
    x[0, 0, 0] = float("nan")  # both NaN modes see a NaN
    a, b, c = randn(5, 3, device=device), randn(5, 3, device=device), randn(5, 3, device=device)
    xs = [randn(4, 6, device=device), randn(5, 2, dtype=torch.float16, device=device)]
    return x, a, b, c, xs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fn", [_functional, _out_forms], ids=["functional", "out-forms"])
def test_compile_equal_eager(device, fn):
    torch._dynamo.reset()
    inputs = _reduction_inputs(device)
    compiled = torch.compile(fn, fullgraph=True, dynamic=False)
    _assert_same_bits(compiled(*inputs), fn(*inputs), fn.__name__)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_in_place_equal_eager(device):
    torch._dynamo.reset()

    def make():
        g = torch.Generator().manual_seed(0)
        r = lambda *s: torch.randn(s, generator=g).to(device)  # noqa: E731
        grad, grads = r(5, 3), [r(5, 3)]
        history = [r(5, 3), r(5, 3)]  # R = 2 for the single grad and for grads
        params, step_grads, ring = [r(5, 3), r(4)], [r(5, 3), r(4)], [r(5, 3), r(5, 3), r(4), r(4)]
        return grad, grads, params, step_grads, history, ring

    eager, traced = make(), make()
    _in_place(*eager)
    torch.compile(_in_place, fullgraph=True, dynamic=False)(*traced)
    flat = lambda state: [state[0], *state[1], *state[2], *state[3], *state[4], *state[5]]  # noqa: E731
    _assert_same_bits(flat(traced), flat(eager), "in-place state")
