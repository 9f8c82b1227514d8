"""The cgh ops on every backend against the independent float64 NumPy reference.

Each test runs once per backend of ``conftest.BACKENDS`` (reference, native CPU, CUDA,
Triton; those not available here are skipped). Case ids say why a case exists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cgh_ops
import numpy_reference as npref
from cgh_ops import reference
from cgh_ops._ops import SCHEMAS
from conftest import NATIVE_CPU, has_native_kernel

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
DTYPE_IDS = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32", torch.float64: "f64"}
INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}
NAN_MODES = (False, True)


# ------------------------------------------------------------------------- helpers
def as_np(t: torch.Tensor) -> np.ndarray:
    """Exact float64 copy (every float16/bfloat16/float32 value is a float64 value)."""
    return t.detach().cpu().double().numpy()


def randn(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape).to(dtype)


def with_specials(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x [m, *S]`` whose coordinates hold the cases a median must get right.

    The first coordinates hold one pattern each (as many as fit); every other value is
    NaN, +Inf or -Inf with a small probability, so most coordinates stay finite.
    """
    y = x.clone()
    m = y.shape[0]
    flat = y.view(m, -1)
    n = flat.shape[1]
    sprinkle = torch.rand(flat.shape)
    flat[sprinkle < 0.02] = float("nan")
    flat[(sprinkle >= 0.02) & (sprinkle < 0.04)] = float("inf")
    flat[(sprinkle >= 0.04) & (sprinkle < 0.06)] = float("-inf")
    patterns = [
        lambda c: c.fill_(0.5),  # every value tied
        lambda c: c.__setitem__(0, float("nan")),  # one NaN
        lambda c: c.fill_(float("nan")),  # all NaN: NaN in both modes
        lambda c: c.__setitem__(slice(0, (m + 1) // 2), float("nan")),  # NaN majority
        lambda c: c.__setitem__(m - 1, float("inf")),  # one +Inf
        lambda c: c.__setitem__(0, float("-inf")),  # one -Inf
        lambda c: (c.__setitem__(0, float("inf")), c.__setitem__(m - 1, float("-inf"))),  # both infinities
        lambda c: c.copy_(torch.arange(m, dtype=c.dtype)),  # sorted ascending
        lambda c: c.copy_(torch.arange(m, 0, -1, dtype=c.dtype)),  # sorted descending
    ]
    for j, pattern in enumerate(patterns[:n]):
        col = flat[:, j].clone()
        col.copy_(torch.randn(m).to(col.dtype))
        pattern(col)
        flat[:, j] = col
    return y


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, msg: str = "") -> None:
    """Bitwise equality; NaN only has to be NaN (its payload is not part of any promise)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, msg
    actual, expected = actual.cpu(), expected.cpu()
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(actual), nan), f"{msg}: NaN positions differ"
    a_bits = actual.view(INT_VIEW[actual.dtype])[~nan]
    e_bits = expected.view(INT_VIEW[expected.dtype])[~nan]
    bad = (a_bits != e_bits).nonzero()
    assert bad.numel() == 0, (
        f"{msg}: {bad.numel()} values differ, first: got {actual[~nan][bad[0]].item()!r}, "
        f"expected {expected[~nan][bad[0]].item()!r}"
    )


def check_median_of_means(backend, x, groups, omit_nan, msg=""):
    """Runs median_of_means (default and out= overloads) and compares with NumPy."""
    expected = npref.median_of_means(as_np(x), groups, omit_nan)
    scale = npref.finite_scale(as_np(x))
    terms = x.shape[0] + 2  # the row sums, the division, and (lo + hi) * 0.5
    got = backend.op("median_of_means")(x, groups, omit_nan)
    assert got.dtype == x.dtype and got.device == x.device
    npref.assert_close(got, expected, terms=terms, scale=scale, msg=f"{msg} groups={groups} omit_nan={omit_nan}")
    return got


# ------------------------------------------------------------------ median_of_means
GRID = [(m, g) for m in range(1, 14) for g in range(1, min(m, 9) + 1)]


@pytest.mark.parametrize("m, groups", GRID, ids=[f"m{m}-g{g}" for m, g in GRID])
def test_median_of_means_grid(backend, m, groups):
    # coverage: every group count 1..9 with every row count up to 13 (even/odd counts,
    # uneven group sizes), 67 coordinates (not a multiple of any vector width), specials.
    x = backend.put(with_specials(randn(m, 67)))
    for omit_nan in NAN_MODES:
        check_median_of_means(backend, x, groups, omit_nan)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("omit_nan", NAN_MODES, ids=["propagate", "omit"])
@pytest.mark.parametrize("m, groups", [(3, 3), (10, 4)], ids=["rows-odd", "uneven-groups"])
def test_median_of_means_dtypes(backend, dtype, omit_nan, m, groups):
    # dtype: fp32 accumulation and one final rounding for f16/bf16, fp64 throughout.
    x = backend.put(with_specials(randn(m, 3, 5, 7, dtype=dtype)))
    check_median_of_means(backend, x, groups, omit_nan, msg=str(dtype))


ODD_SHAPES = [
    pytest.param((5, 65537), id="vector-tail"),
    pytest.param((4, 3, 5, 7), id="odd-3d"),
    pytest.param((7,), id="scalar-result"),
    pytest.param((9, 1), id="one-coordinate"),
    pytest.param((1, 33), id="one-row"),
]


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_median_of_means_odd_sizes(backend, shape):
    x = backend.put(with_specials(randn(*shape)) if len(shape) > 1 else randn(*shape))
    for groups in sorted({1, min(3, shape[0]), shape[0]}):
        got = check_median_of_means(backend, x, groups, omit_nan=False, msg=str(shape))
        assert got.shape == shape[1:]


VIEW_NAMES = ["transposed", "strided-cols", "strided-rows", "rows-of-bigger", "broadcast", "permuted-3d"]


def make_view(view: str, values: torch.Tensor) -> torch.Tensor:
    """A non-contiguous view holding ``values [m, 35]`` (on their device), laid out as named.

    ``broadcast`` repeats the first column (stride 0); ``permuted-3d`` is ``[m, 5, 7]``.
    """
    m, n = values.shape
    empty = lambda *shape: values.new_empty(shape)  # noqa: E731
    if view == "broadcast":
        return values[:, :1].clone().expand(m, n)
    if view == "permuted-3d":
        x = empty(5, 7, m).permute(2, 0, 1)
        return x.copy_(values.view(m, 5, 7))
    x = {
        "transposed": lambda: empty(n, m).t(),
        "strided-cols": lambda: empty(m, 3 * n)[:, ::3],
        "strided-rows": lambda: empty(2 * m, n)[::2],
        "rows-of-bigger": lambda: empty(m + 5, n + 3)[2 : 2 + m, 1 : 1 + n],
    }[view]()
    return x.copy_(values)


@pytest.mark.parametrize("view", VIEW_NAMES)
def test_median_of_means_non_contiguous(backend, view):
    # layout: the kernels must follow strides (or copy), never assume row-major.
    x = make_view(view, backend.put(with_specials(randn(7, 35))))
    assert not x.is_contiguous()
    for omit_nan in NAN_MODES:
        check_median_of_means(backend, x, 3, omit_nan, msg=view)


@pytest.mark.parametrize("shape", [(3, 0), (4, 2, 0)], ids=["empty", "empty-3d"])
def test_median_of_means_empty(backend, shape):
    # empty *S: an empty result of the right shape, nothing read.
    x = backend.put(torch.empty(shape))
    got = backend.op("median_of_means")(x, 3, False)
    assert got.shape == shape[1:] and got.dtype == x.dtype
    out = backend.put(torch.empty(shape[1:]))
    # the .out overloads return nothing (the public wrappers return `out`)
    assert backend.op("median_of_means", "out")(x, 3, False, out=out) is None


# ---------------------------------------------------------------- torch.median parity
def _ties_and_signed_zeros(k: int, n: int, dtype) -> torch.Tensor:
    """``[k, n]`` values from {-1, -0.0, 0.0, 1}: many exact ties, and zeros of both signs."""
    v = torch.randint(-1, 2, (k, n)).to(dtype)
    flip = torch.rand(k, n) < 0.5
    return torch.where(flip & (v == 0), torch.tensor(-0.0, dtype=dtype), v)


PARITY_DATA = {
    "random": lambda k, n, dtype: with_specials(randn(k, n, dtype=dtype)),
    # torch.median picks, among equal values, the middle one of a stable sort; with
    # zeros of both signs that choice is visible in the bits.
    "signed-zeros": _ties_and_signed_zeros,
}


@pytest.mark.parametrize("data", list(PARITY_DATA))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
def test_median3_bitwise_equals_torch_median(backend, dtype, data):
    # SPEC promise: median3 == torch.median(torch.stack(...), 0).values bit for bit.
    x = PARITY_DATA[data](3, 1001, dtype)
    expected = torch.median(x, 0).values
    x = backend.put(x)
    got = backend.op("median3")(x[0], x[1], x[2], False)
    assert_same_bits(got, expected, f"median3 {data} {dtype}")


@pytest.mark.parametrize("data", list(PARITY_DATA))
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
def test_median_of_means_rows_bitwise_equals_torch_median(backend, dtype, data):
    # SPEC promise: with m == groups odd, median_of_means == torch.median(x, 0) bit for bit.
    for m in (1, 3, 5, 7, 9, 11, 13):
        x = PARITY_DATA[data](m, 257, dtype)
        expected = torch.median(x, 0).values
        got = backend.op("median_of_means")(backend.put(x), m, False)
        assert_same_bits(got, expected, f"median_of_means m={m} {data} {dtype}")


@pytest.mark.parametrize("m", [2, 4, 6])
def test_even_count_is_numpy_median_not_torch_median(backend, m):
    # documented difference: the mean of the two middle values (numpy.median), while
    # torch.median returns the lower one.
    x = torch.arange(m * 5, dtype=torch.float64).view(5, m).t().contiguous()  # distinct values per column
    got = backend.op("median_of_means")(backend.put(x), m, False).cpu()
    np.testing.assert_array_equal(got.numpy(), np.median(x.numpy(), axis=0))
    lower = torch.median(x, 0).values
    assert torch.all(got > lower)
    assert torch.equal(lower, torch.sort(x, 0).values[(m - 1) // 2])


# ------------------------------------------------------------------------- median3
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("omit_nan", NAN_MODES, ids=["propagate", "omit"])
def test_median3(backend, dtype, omit_nan):
    # exact middle of three, NaN policy, every dtype; 3x5x7 is an odd shape.
    x = with_specials(randn(3, 3, 5, 7, dtype=dtype))
    expected = npref.median3(*as_np(x), omit_nan=omit_nan)
    a, b, c = backend.put(x)
    got = backend.op("median3")(a, b, c, omit_nan)
    assert got.shape == a.shape and got.dtype == dtype
    # median3 only selects: no arithmetic, so exact (terms=0, and the value is representable).
    npref.assert_close(got, expected, terms=0, scale=0.0, msg=f"median3 {dtype}")


@pytest.mark.parametrize("view", VIEW_NAMES)
def test_median3_non_contiguous(backend, view):
    # layout: a, b, c as strided views (rows of a transposed/sliced/broadcast tensor).
    x = make_view(view, backend.put(with_specials(randn(3, 35))))
    a, b, c = x[0], x[1], x[2]
    got = backend.op("median3")(a, b, c, False)
    npref.assert_close(got, npref.median3(as_np(a), as_np(b), as_np(c)), terms=0, scale=0.0, msg=view)


@pytest.mark.parametrize("shape", [(), (0,), (65537,)], ids=["scalar", "empty", "vector-tail"])
def test_median3_shapes(backend, shape):
    a, b, c = (backend.put(randn(*shape)) for _ in range(3))
    got = backend.op("median3")(a, b, c, False)
    assert got.shape == shape
    npref.assert_close(got, npref.median3(as_np(a), as_np(b), as_np(c)), terms=0, scale=0.0)


# --------------------------------------------------------------- trimmed / winsorized
TRIM_GRID = [(m, t) for m in range(1, 14) for t in range((m - 1) // 2 + 1)]


@pytest.mark.parametrize("m, trim", TRIM_GRID, ids=[f"m{m}-t{t}" for m, t in TRIM_GRID])
def test_trimmed_and_winsorized_grid(backend, m, trim):
    # coverage: every legal trim for m up to 13 (trim 0: plain mean; max trim: median).
    x = backend.put(with_specials(randn(m, 67)))
    scale, terms = npref.finite_scale(as_np(x)), m + 1
    got = backend.op("trimmed_mean")(x, trim)
    npref.assert_close(got, npref.trimmed_mean(as_np(x), trim), terms=terms, scale=scale, msg="trimmed_mean")
    got = backend.op("winsorized_mean")(x, trim)
    npref.assert_close(got, npref.winsorized_mean(as_np(x), trim), terms=terms, scale=scale, msg="winsorized_mean")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
@pytest.mark.parametrize("name", ["trimmed_mean", "winsorized_mean"])
def test_trimmed_and_winsorized_dtypes(backend, dtype, name):
    # dtype: fp32 accumulation of the sorted values, one final rounding.
    x = backend.put(with_specials(randn(7, 3, 5, 7, dtype=dtype)))
    got = backend.op(name)(x, 2)
    assert got.shape == (3, 5, 7) and got.dtype == dtype
    expected = getattr(npref, name)(as_np(x), 2)
    npref.assert_close(got, expected, terms=8, scale=npref.finite_scale(as_np(x)), msg=f"{name} {dtype}")


@pytest.mark.parametrize("view", VIEW_NAMES)
@pytest.mark.parametrize("name", ["trimmed_mean", "winsorized_mean"])
def test_trimmed_and_winsorized_non_contiguous(backend, view, name):
    x = make_view(view, backend.put(with_specials(randn(7, 35))))
    expected = getattr(npref, name)(as_np(x), 1)
    got = backend.op(name)(x, 1)
    npref.assert_close(got, expected, terms=8, scale=npref.finite_scale(as_np(x)), msg=view)


@pytest.mark.parametrize("name", ["trimmed_mean", "winsorized_mean"])
@pytest.mark.parametrize("shape", [(5,), (5, 0), (5, 65537)], ids=["scalar-result", "empty", "vector-tail"])
def test_trimmed_and_winsorized_shapes(backend, name, shape):
    x = backend.put(randn(*shape))
    got = backend.op(name)(x, 1)
    assert got.shape == shape[1:]
    expected = getattr(npref, name)(as_np(x), 1)
    npref.assert_close(got, expected, terms=6, scale=npref.finite_scale(as_np(x)))


# ------------------------------------------------------------------ out= and poisoning
def _out_cases():
    """(op name, args without out, out shape) for every op with an out= overload."""
    x = with_specials(randn(9, 3, 5, 7))
    return {
        "median_of_means": ((x, 3, False), x.shape[1:]),
        "median_of_means-omit": ((x, 4, True), x.shape[1:]),
        "median3": ((x[0], x[1], x[2], False), x.shape[1:]),
        "median3-omit": ((x[0], x[1], x[2], True), x.shape[1:]),
        "trimmed_mean": ((x, 2), x.shape[1:]),
        "winsorized_mean": ((x, 2), x.shape[1:]),
    }


OUT_CASES = list(_out_cases())


@pytest.mark.parametrize("case", OUT_CASES)
def test_out_is_written_and_returned(backend, case):
    # out=: a NaN-poisoned output must be fully overwritten; the overload returns nothing.
    args, shape = _out_cases()[case]
    name = case.split("-")[0]
    args = tuple(backend.put(a) if isinstance(a, torch.Tensor) else a for a in args)
    expected = backend.op(name)(*args)
    out = backend.put(torch.full(shape, float("nan")))
    result = backend.op(name, "out")(*args, out=out)
    assert result is None
    assert_same_bits(out, expected, case)


@pytest.mark.parametrize("case", OUT_CASES)
def test_out_non_contiguous(backend, case):
    # layout: out= may itself be a strided view; only its own elements are written.
    args, shape = _out_cases()[case]
    name = case.split("-")[0]
    args = tuple(backend.put(a) if isinstance(a, torch.Tensor) else a for a in args)
    expected = backend.op(name)(*args)
    storage = backend.put(torch.full((*shape, 2), float("nan")))
    out = storage[..., 0]
    assert backend.op(name, "out")(*args, out=out) is None
    assert_same_bits(out, expected, case)
    assert torch.isnan(storage[..., 1]).all(), "wrote outside the out= view"


# ---------------------------------------------------------------------- foreach
def _mixed_list():
    """Tensors of mixed shapes, dtypes and row counts, as a parameter list would be."""
    return [
        with_specials(randn(5, 3, 4)),
        with_specials(randn(7, 65, dtype=torch.float16)),
        randn(4, dtype=torch.bfloat16),  # scalar result
        randn(3, 0, dtype=torch.float64),  # empty
        with_specials(randn(6, 9, dtype=torch.float64)),
        randn(8, 2, 3).transpose(1, 2),  # non-contiguous
    ]


@pytest.mark.parametrize("omit_nan", NAN_MODES, ids=["propagate", "omit"])
def test_foreach_median_of_means(backend, omit_nan):
    # mixed shapes/dtypes/row counts in one call: each tensor its own median of means.
    xs = [backend.put(x) for x in _mixed_list()]
    groups = 3
    got = backend.op("foreach_median_of_means")(xs, groups, omit_nan)
    assert len(got) == len(xs)
    outs = [backend.put(torch.full(x.shape[1:], float("nan"), dtype=x.dtype)) for x in xs]
    assert backend.op("foreach_median_of_means", "out")(xs, groups, omit_nan, out=outs) is None
    for i, (x, g, o) in enumerate(zip(xs, got, outs)):
        assert g.dtype == x.dtype and g.shape == x.shape[1:]
        expected = npref.median_of_means(as_np(x), groups, omit_nan)
        npref.assert_close(g, expected, terms=x.shape[0] + 2, scale=npref.finite_scale(as_np(x)), msg=f"xs[{i}]")
        assert_same_bits(o, g, f"out[{i}]")


def test_foreach_median_of_means_empty_list(backend):
    assert backend.op("foreach_median_of_means")([], 3, False) == []


# --------------------------------------------------------------- running median
def _check_running_median(backend, name, grads, history, slot, omit_nan):
    R = len(history) // max(len(grads), 1)
    expected = [
        npref.running_median(as_np(g), [as_np(h) for h in history[i * R : (i + 1) * R]], slot, omit_nan)
        for i, g in enumerate(grads)
    ]
    grads = [backend.put(g) for g in grads]
    history = [backend.put(h) for h in history]
    if name == "running_median_":
        assert backend.op(name)(grads[0], history, slot, omit_nan) is None
    else:
        assert backend.op(name)(grads, history, slot, omit_nan) is None
    for i, (g, (new_grad, new_hist)) in enumerate(zip(grads, expected)):
        # a median of values of the gradient's dtype: exact for odd counts, one
        # (lo + hi) * 0.5 in the accumulation dtype for even counts.
        npref.assert_close(g, new_grad, terms=1, scale=0.0, msg=f"grads[{i}] R={R} slot={slot}")
        for j in range(R):
            npref.assert_close(history[i * R + j], new_hist[j], terms=0, scale=0.0, msg=f"history[{i * R + j}]")


RUNNING_CASES = [(R, slot) for R in range(0, 5) for slot in range(-1, R)]


@pytest.mark.parametrize("R, slot", RUNNING_CASES, ids=[f"R{R}-slot{s}" for R, s in RUNNING_CASES])
def test_running_median_(backend, R, slot):
    # window R + 1 = 1..5 (odd and even counts), every slot, and slot -1 (no history write).
    x = with_specials(randn(R + 1, 67))
    grad, history = x[0].clone(), [x[j + 1].clone() for j in range(R)]
    for omit_nan in NAN_MODES:
        _check_running_median(backend, "running_median_", [grad.clone()], [h.clone() for h in history], slot, omit_nan)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS.get)
def test_running_median_dtypes(backend, dtype):
    # dtype: the median of 3 is exact, of 4 one rounding of (lo + hi) * 0.5.
    for R in (2, 3):
        x = with_specials(randn(R + 1, 3, 5, 7, dtype=dtype))
        _check_running_median(backend, "running_median_", [x[0].clone()], [h.clone() for h in x[1:]], 0, False)


@pytest.mark.parametrize("omit_nan", NAN_MODES, ids=["propagate", "omit"])
@pytest.mark.parametrize("slot", [-1, 1])
def test_foreach_running_median_(backend, omit_nan, slot):
    # a parameter list of mixed shapes/dtypes; history[i * R + j] is slot j of grads[i].
    R = 2
    shapes = [((3, 4), torch.float32), ((65,), torch.float16), ((), torch.bfloat16), ((0,), torch.float64), ((5, 7), torch.float64)]
    grads, history = [], []
    for shape, dtype in shapes:
        x = randn(R + 1, *shape, dtype=dtype)
        if x.numel():
            x = with_specials(x.reshape(R + 1, -1)).reshape(R + 1, *shape)
        grads.append(x[0].clone())
        history += [x[j + 1].clone() for j in range(R)]
    _check_running_median(backend, "foreach_running_median_", grads, history, slot, omit_nan)


def test_foreach_running_median_empty_list(backend):
    backend.op("foreach_running_median_")([], [], -1, False)


# ------------------------------------------------------------------- ring_step_
RING_CASES = [
    pytest.param("median", 0.0, 0, id="rm3"),
    pytest.param("median", 0.1, 1, id="rm3-decay"),
    pytest.param("median", 0.1, -1, id="median-no-write"),
    pytest.param("mean", 0.0, 1, id="ra3"),
    pytest.param("mean", 0.1, -1, id="ra3-decay-no-write"),
    pytest.param("none", 0.0, 0, id="store-only"),
    pytest.param("none", 0.1, 1, id="store-only-decay"),
]


@pytest.mark.parametrize("reduce, weight_decay, slot", RING_CASES)
@pytest.mark.parametrize("R", [2, 3], ids=["window3", "window4"])
def test_ring_step_(backend, reduce, weight_decay, slot, R):
    # the fused M3/RM3/RA3 step over a mixed parameter list, in place.
    lr = 0.25
    specs = [((3, 4), torch.float32), ((65,), torch.float16), ((), torch.bfloat16), ((5, 7), torch.float64), ((0,), torch.float32)]
    params, grads, history = [], [], []
    for shape, dtype in specs:
        params.append(randn(*shape, dtype=dtype))
        grads.append(randn(*shape, dtype=dtype))
        history += [randn(*shape, dtype=dtype) for _ in range(R)]
    # NaN in a gradient: the median reduction's NaN policy must apply to it.
    if grads[1].numel():
        grads[1][0] = float("nan")
    for omit_nan in NAN_MODES:
        expected = [
            npref.ring_step(
                as_np(p), as_np(g), [as_np(h) for h in history[i * R : (i + 1) * R]], slot, lr, weight_decay,
                reduce, omit_nan,
            )
            for i, (p, g) in enumerate(zip(params, grads))
        ]
        P = [backend.put(p.clone()) for p in params]
        G = [backend.put(g.clone()) for g in grads]
        H = [backend.put(h.clone()) for h in history]
        assert backend.op("ring_step_")(P, G, H, slot, lr, weight_decay, reduce, omit_nan) is None
        for i, (p, (new_p, new_hist)) in enumerate(zip(P, expected)):
            msg = f"params[{i}] {reduce} wd={weight_decay} slot={slot} omit_nan={omit_nan}"
            assert_same_bits(G[i], grads[i], "grads must not be written")
            if reduce == "none":
                assert_same_bits(p, params[i], msg)
            # g = grad + weight_decay * param, computed in the accumulation dtype and
            # rounded once to the dtype: two additions' errors plus that rounding.
            scale_g = npref.finite_scale(as_np(grads[i]), weight_decay * as_np(params[i]))
            for j in range(R):
                npref.assert_close(H[i * R + j], new_hist[j], terms=2, scale=scale_g, msg=f"history[{i * R + j}] {msg}")
            # p - lr * r: the reduction of R + 1 values and the update accumulate in the
            # accumulation dtype; r reads the g's rounded to the dtype, which moves it by at
            # most that rounding (half an ulp of g for float16/bfloat16).
            scale_p = npref.finite_scale(as_np(params[i]), lr * scale_g)
            rtol, atol = npref.tolerance(p.dtype, R + 3, scale_p)
            atol += lr * npref.tolerance(p.dtype, 0, 0.0)[0] * scale_g
            torch.testing.assert_close(
                p.cpu().double(), torch.from_numpy(np.asarray(new_p)), rtol=rtol, atol=atol, equal_nan=True,
                msg=lambda m, msg=msg: f"{msg}\n{m}",
            )


# ------------------------------------------------------- every op, one small case
def _small_case(name: str, backend, x: torch.Tensor):
    """(callable running op ``name`` on ``backend``, NumPy expectation, terms) for ``x [6, 5, 7]``."""
    xn = as_np(x)
    d = backend.put
    if name == "median_of_means":  # 3 groups of 2 rows: averaged means, odd count
        return lambda: backend.op(name)(d(x), 3, True), npref.median_of_means(xn, 3, True), 8
    if name == "median_of_means-even":  # 4 groups: mean of the two middle means
        return lambda: backend.op("median_of_means")(d(x), 4, False), npref.median_of_means(xn, 4), 8
    if name == "median3":
        return lambda: backend.op(name)(d(x[0]), d(x[1]), d(x[2]), True), npref.median3(*xn[:3], omit_nan=True), 0
    if name in ("trimmed_mean", "winsorized_mean"):
        return lambda: backend.op(name)(d(x), 2), getattr(npref, name)(xn, 2), 7
    if name == "foreach_median_of_means":
        return lambda: backend.op(name)([d(x), d(x[:3, 0])], 3, False)[1], npref.median_of_means(xn[:3, 0], 3), 5
    if name in ("running_median_", "foreach_running_median_"):
        grad, history = d(x[0].clone()), [d(h.clone()) for h in x[1:4]]

        def run():
            if name == "running_median_":
                backend.op(name)(grad, history, 2, False)
            else:
                backend.op(name)([grad], history, 2, False)
            assert_same_bits(history[2], x[0].to(history[2].device), "history[2] holds the raw grad")
            return grad

        return run, npref.running_median(xn[0], list(xn[1:4]), 2)[0], 1
    if name == "ring_step_":
        param, grad, history = d(x[0].clone()), d(x[1].clone()), [d(x[2].clone()), d(x[3].clone())]

        def step():
            backend.op(name)([param], [grad], history, 0, 0.5, 0.0, "median", False)
            return param

        new_p, _ = npref.ring_step(xn[0], xn[1], list(xn[2:4]), 0, 0.5, 0.0, "median")
        return step, new_p, 2
    raise AssertionError(name)


SMALL_CASES = [
    "median_of_means", "median_of_means-even", "median3", "trimmed_mean", "winsorized_mean",
    "foreach_median_of_means", "running_median_", "foreach_running_median_", "ring_step_",
]


@pytest.mark.small
@pytest.mark.parametrize("name", SMALL_CASES)
def test_every_op_small_case(backend, name):
    # smoke: one tiny case per op, cheap enough for every backend (Triton's interpreter too).
    x = with_specials(randn(6, 5, 7))
    run, expected, terms = _small_case(name, backend, x)
    npref.assert_close(run(), expected, terms=terms, scale=npref.finite_scale(as_np(x)), msg=name)


# ------------------------------------------------------------------- determinism
def test_determinism(backend):
    # run-to-run: the same input gives bitwise the same output (NaN bits included).
    x = backend.put(with_specials(randn(9, 65537)))
    op = backend.op("median_of_means")
    for omit_nan in NAN_MODES:
        first, second = op(x, 3, omit_nan), op(x, 3, omit_nan)
        assert torch.equal(first.view(torch.int32), second.view(torch.int32))
    first, second = backend.op("trimmed_mean")(x, 2), backend.op("trimmed_mean")(x, 2)
    assert torch.equal(first.view(torch.int32), second.view(torch.int32))


# ------------------------------------------------------------------- public wrappers
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_public_wrappers(device):
    # the documented API: nan="omit"/"propagate" and out= map onto the op schemas.
    x = with_specials(randn(9, 5, 7)).to(device)
    xn = as_np(x)
    scale = npref.finite_scale(xn)
    for nan in ("propagate", "omit"):
        omit = nan == "omit"
        expected = npref.median_of_means(xn, 3, omit)
        npref.assert_close(cgh_ops.median_of_means(x, 3, nan=nan), expected, terms=11, scale=scale)
        out = torch.full((5, 7), float("nan"), device=device)
        assert cgh_ops.median_of_means(x, 3, nan=nan, out=out) is out
        npref.assert_close(out, expected, terms=11, scale=scale)

        expected = npref.median3(xn[0], xn[1], xn[2], omit)
        npref.assert_close(cgh_ops.median3(x[0], x[1], x[2], nan=nan), expected, terms=0, scale=0.0)
        out = torch.full((5, 7), float("nan"), device=device)
        assert cgh_ops.median3(x[0], x[1], x[2], nan=nan, out=out) is out
        npref.assert_close(out, expected, terms=0, scale=0.0)

        xs = [x, x[:4, 0]]
        got = cgh_ops.foreach_median_of_means(xs, 2, nan=nan)
        outs = [torch.full(t.shape[1:], float("nan"), device=device) for t in xs]
        returned = cgh_ops.foreach_median_of_means(xs, 2, nan=nan, out=outs)
        assert all(r is o for r, o in zip(returned, outs)) and len(returned) == 2
        for t, g, o in zip(xs, got, outs):
            expected = npref.median_of_means(as_np(t), 2, omit)
            npref.assert_close(g, expected, terms=11, scale=scale)
            npref.assert_close(o, expected, terms=11, scale=scale)

        grad, hist = x[0].clone(), [x[1].clone(), x[2].clone()]
        new_grad, new_hist = npref.running_median(as_np(grad), [as_np(h) for h in hist], 1, omit)
        assert cgh_ops.running_median_(grad, hist, 1, nan=nan) is grad
        npref.assert_close(grad, new_grad, terms=0, scale=0.0)
        npref.assert_close(hist[1], new_hist[1], terms=0, scale=0.0)

        grads, hist = [x[0].clone(), x[3, 0].clone()], [x[1].clone(), x[4, 0].clone()]
        expected = [npref.running_median(as_np(g), [as_np(h)], 0, omit) for g, h in zip(grads, hist)]
        assert cgh_ops.foreach_running_median_(grads, hist, 0, nan=nan) is None
        for g, h, (new_grad, new_hist) in zip(grads, hist, expected):
            npref.assert_close(g, new_grad, terms=1, scale=scale)
            npref.assert_close(h, new_hist[0], terms=0, scale=0.0)

    for name in ("trimmed_mean", "winsorized_mean"):
        expected = getattr(npref, name)(xn, 3)
        npref.assert_close(getattr(cgh_ops, name)(x, 3), expected, terms=10, scale=scale)
        out = torch.full((5, 7), float("nan"), device=device)
        assert getattr(cgh_ops, name)(x, 3, out=out) is out
        npref.assert_close(out, expected, terms=10, scale=scale)


# ----------------------------------------------------------------- dispatch (native CPU)
def _overloads():
    for key in SCHEMAS:
        name, _, overload = key.partition(".")
        yield name, overload or "default"


@pytest.mark.skipif(not NATIVE_CPU, reason="native CPU kernels not built")
def test_native_cpu_kernel_registered_for_every_op():
    missing = [f"{n}.{o}" for n, o in _overloads() if not has_native_kernel(n, o, "CPU")]
    assert not missing, f"no native CPU kernel for: {missing}"


@pytest.mark.skipif(not NATIVE_CPU, reason="native CPU kernels not built")
def test_native_cpu_kernel_is_what_runs(monkeypatch):
    # With the reference's computational core made to raise, every op still works on
    # CPU tensors: the dispatcher sends them to the native kernel, not the fallback.
    def refuse(*args, **kwargs):
        raise AssertionError("the Python reference kernel ran")

    for helper in ("median_of_values", "group_means", "_sorted_rows", "_sum_rows_in_order"):
        monkeypatch.setattr(reference, helper, refuse)
    x = with_specials(randn(5, 3, 7))
    with pytest.raises(AssertionError, match="reference kernel ran"):
        reference.median3(x[0], x[1], x[2])

    xn = as_np(x)
    scale = npref.finite_scale(xn)
    npref.assert_close(torch.ops.cgh.median_of_means(x, 3), npref.median_of_means(xn, 3), terms=7, scale=scale)
    npref.assert_close(torch.ops.cgh.median3(x[0], x[1], x[2]), npref.median3(*xn[:3]), terms=0, scale=0.0)
    out = torch.empty(3, 7)
    torch.ops.cgh.median_of_means.out(x, 3, out=out)
    npref.assert_close(out, npref.median_of_means(xn, 3), terms=7, scale=scale)
    torch.ops.cgh.median3.out(x[0], x[1], x[2], out=out)
    npref.assert_close(out, npref.median3(*xn[:3]), terms=0, scale=0.0)
    [got] = torch.ops.cgh.foreach_median_of_means([x], 3)
    npref.assert_close(got, npref.median_of_means(xn, 3), terms=7, scale=scale)
    torch.ops.cgh.foreach_median_of_means.out([x], 3, out=[out])
    npref.assert_close(out, npref.median_of_means(xn, 3), terms=7, scale=scale)
    for name in ("trimmed_mean", "winsorized_mean"):
        expected = getattr(npref, name)(xn, 1)
        npref.assert_close(getattr(torch.ops.cgh, name)(x, 1), expected, terms=6, scale=scale)
        getattr(torch.ops.cgh, name).out(x, 1, out=out)
        npref.assert_close(out, expected, terms=6, scale=scale)
    grad, hist = x[0].clone(), [x[1].clone(), x[2].clone()]
    torch.ops.cgh.running_median_(grad, hist, 0)
    npref.assert_close(grad, npref.median3(*xn[:3]), terms=0, scale=0.0)
    grad, hist = x[0].clone(), [x[1].clone(), x[2].clone()]
    torch.ops.cgh.foreach_running_median_([grad], hist, 0)
    npref.assert_close(grad, npref.median3(*xn[:3]), terms=0, scale=0.0)
    param, hist = torch.zeros(3, 7), [x[1].clone(), x[2].clone()]
    torch.ops.cgh.ring_step_([param], [x[0].clone()], hist, 0, 1.0, 0.0, "median")
    npref.assert_close(param, -npref.median3(*xn[:3]), terms=0, scale=0.0)
