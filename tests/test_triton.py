"""The Triton kernels (``torch.ops.cgh.<name>_triton``) against the reference and float64 NumPy.

On a CUDA machine they run on the GPU; without one they run on CPU tensors under Triton's
interpreter (``TRITON_INTERPRET=1``, set by ``conftest.py`` before Triton is imported, and
here as a fallback). The interpreter is slow, so tensors are small; each case says why it
exists. The kernels follow the reference's rounding rules, so results are compared bit
for bit with :mod:`cgh_ops.reference` and within rounding with the float64 NumPy
statement of :mod:`numpy_reference`.
"""

import os
import sys
import warnings

import pytest
import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # no native extension: reference fallback
    import cgh_ops
    from cgh_ops import _ops, reference
    from cgh_ops import _triton  # noqa: F401  (defines the *_triton ops)
from cgh_ops.ops import TRITON_KERNELS

import numpy_reference as npref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_kernel = sys.modules["cgh_ops.triton_kernels.median"]._median3_kernel
if DEVICE == "cpu" and not isinstance(_kernel, triton.runtime.interpreter.InterpretedFunction):
    pytest.skip("no CUDA device and Triton was imported without TRITON_INTERPRET=1", allow_module_level=True)

ops = torch.ops.cgh
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def rand(*shape, dtype=torch.float32, gen=None):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(DEVICE)


def with_specials(x):
    """Plant a NaN, +inf and -inf in the first coordinates (the NaN/Inf policy cases)."""
    x = x.clone()
    flat = x.view(x.shape[0], -1)
    flat[0, 0] = float("nan")
    flat[1, 1] = float("inf")
    flat[0, 2] = float("-inf")
    flat[:, 3] = float("nan")  # an all-NaN coordinate
    return x


def assert_same(actual, expected):
    """Bitwise equality, NaN == NaN."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    a, e = actual.cpu(), expected.cpu()
    both_nan = torch.isnan(a) & torch.isnan(e)
    assert torch.equal(torch.where(both_nan, 0, a), torch.where(both_nan, 0, e)), (a - e).abs().max()


def np64(t):
    return t.detach().cpu().double().numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "m, groups",
    [(3, 3), (7, 3), (4, 2), (5, 1)],
    ids=["paper-k3", "uneven-groups", "even-median", "plain-mean"],
)
@pytest.mark.parametrize("omit_nan", [False, True], ids=["propagate", "omit"])
def test_median_of_means(dtype, m, groups, omit_nan):
    x = with_specials(rand(m, 5, 7, dtype=dtype))
    got = ops.median_of_means_triton(x, groups, omit_nan)
    assert_same(got, reference.median_of_means(x, groups, omit_nan))
    npref.assert_close(
        got, npref.median_of_means(np64(x), groups, omit_nan), terms=m, scale=npref.finite_scale(np64(x)), msg="mom"
    )


def test_median_of_means_equals_torch_median():
    # groups == m, odd: SPEC's bitwise promise against torch.median.
    x = rand(5, 40)
    assert_same(ops.median_of_means_triton(x, 5, False), torch.median(x, 0).values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("omit_nan", [False, True], ids=["propagate", "omit"])
def test_median3(dtype, omit_nan):
    a, b, c = with_specials(rand(3, 6, 5, dtype=dtype))
    got = ops.median3_triton(a, b, c, omit_nan)
    assert_same(got, reference.median3(a, b, c, omit_nan))
    if not omit_nan:  # exact middle value, as torch.median (NaN propagates in both)
        assert_same(got, torch.median(torch.stack([a, b, c]), 0).values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m, trim", [(5, 0), (5, 2), (6, 1)], ids=["plain-mean", "median", "even-m"])
@pytest.mark.parametrize("name", ["trimmed_mean", "winsorized_mean"])
def test_trimmed_and_winsorized(dtype, m, trim, name):
    x = with_specials(rand(m, 4, 9, dtype=dtype))
    got = getattr(ops, name + "_triton")(x, trim)
    assert_same(got, getattr(reference, name)(x, trim))
    npref.assert_close(
        got, getattr(npref, name)(np64(x), trim), terms=m, scale=npref.finite_scale(np64(x)), msg=name
    )


def test_strided_and_out_forms():
    # Rows far apart (a view), non-contiguous rows (a transpose), and out= into a strided view.
    base = rand(4, 2, 30)
    x = base[:3, 0]  # rows 60 elements apart, each contiguous
    assert_same(ops.median_of_means_triton(x, 3, False), reference.median_of_means(x, 3))
    xt = rand(3, 8, 6).transpose(1, 2)  # each row is itself strided
    out = torch.empty(12, 8, device=DEVICE)[::2]
    TRITON_KERNELS[("median_of_means", "out")](xt, 3, False, out=out)
    assert_same(out, reference.median_of_means(xt, 3))
    out = torch.empty(6, 8, device=DEVICE)
    assert TRITON_KERNELS[("trimmed_mean", "out")](xt, 1, out=out) is None
    assert_same(out, reference.trimmed_mean(xt, 1))


def test_empty_coordinates():
    # Empty *S gives an empty result, without a launch.
    x = rand(3, 0, 4)
    assert ops.median_of_means_triton(x, 3, False).shape == (0, 4)
    assert ops.median3_triton(x[0], x[1], x[2], False).shape == (0, 4)


def test_foreach_median_of_means():
    # Different shapes and row counts in one list, plus the out= form.
    xs = [rand(3, 10), rand(4, 2, 3), rand(3, 1)]
    got = ops.foreach_median_of_means_triton(xs, 3, False)
    for g, e in zip(got, reference.foreach_median_of_means(xs, 3)):
        assert_same(g, e)
    out = [torch.empty_like(g) for g in got]
    TRITON_KERNELS[("foreach_median_of_means", "out")](xs, 3, False, out=out)
    for o, g in zip(out, got):
        assert_same(o, g)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("R, slot", [(2, 0), (3, 2), (2, -1)], ids=["window3", "window4-even", "no-write"])
def test_foreach_running_median(dtype, R, slot):
    grads = [rand(17, dtype=dtype), with_specials(rand(3, 5, dtype=dtype))]
    history = [rand(*g.shape, dtype=dtype) for g in grads for _ in range(R)]
    g_ref, h_ref = [g.clone() for g in grads], [h.clone() for h in history]
    old, old_h = [g.clone() for g in grads], [h.clone() for h in history]
    ops.foreach_running_median_triton_(grads, history, slot, False)
    reference.foreach_running_median_(g_ref, h_ref, slot, False)
    for a, e in zip(grads + history, g_ref + h_ref):
        assert_same(a, e)
    new0, _ = npref.running_median(np64(old[0]), [np64(h) for h in old_h[:R]], slot)
    npref.assert_close(grads[0], new0, terms=1, scale=0.0, msg="running median")


def test_running_median_strided_grad():
    # A non-contiguous gradient goes through a buffer and is written back, history too.
    g = rand(6, 4).t()
    hist = [rand(4, 6), rand(4, 6)]
    g_ref, h_ref = g.clone(), [h.clone() for h in hist]
    ops.running_median_triton_(g, hist, 1, True)
    reference.running_median_(g_ref, h_ref, 1, True)
    assert_same(g, g_ref)
    assert_same(hist[1], h_ref[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize(
    "reduce, slot, wd",
    [("median", 1, 0.01), ("mean", 0, 0.0), ("none", 2, 0.1), ("median", -1, 0.0)],
    ids=["rm3", "ra3", "store-only", "m3-no-write"],
)
def test_ring_step(dtype, reduce, slot, wd):
    params = [rand(11, dtype=dtype), rand(2, 3, dtype=dtype)]
    grads = [rand(*p.shape, dtype=dtype) for p in params]
    history = [rand(*p.shape, dtype=dtype) for p in params for _ in range(3)]
    p_ref, h_ref = [p.clone() for p in params], [h.clone() for h in history]
    old_p, old_h = [p.clone() for p in params], [h.clone() for h in history]
    ops.ring_step_triton_(params, grads, history, slot, 0.1, wd, reduce, False)
    reference.ring_step_(p_ref, grads, h_ref, slot, 0.1, wd, reduce, False)
    for a, e in zip(params + history, p_ref + h_ref):
        assert_same(a, e)

    # The kernels round g = grad + wd * param to the parameter dtype before storing and
    # reducing it; hand NumPy that rounded g (and no decay) so only accumulation differs.
    g = (grads[0].double() + wd * old_p[0].double()).to(dtype)
    new_p, _ = npref.ring_step(np64(old_p[0]), np64(g), [np64(h) for h in old_h[:3]], slot, 0.1, 0.0, reduce)
    scale = npref.finite_scale(np64(old_p[0]), np64(grads[0]), *[np64(h) for h in old_h[:3]])
    npref.assert_close(params[0], new_p, terms=4, scale=scale, msg="ring_step")


def test_argument_errors_name_the_argument():
    # The same checks and wording as every other backend, before anything is written.
    x = rand(3, 4)
    with pytest.raises(ValueError, match="argument 'groups'"):
        ops.median_of_means_triton(x, 4, False)
    with pytest.raises(TypeError, match="argument 'b'"):
        ops.median3_triton(x[0], x[1].double(), x[2], False)
    with pytest.raises(ValueError, match="argument 'trim'"):
        ops.trimmed_mean_triton(x, 2)


def test_every_op_has_a_triton_kernel():
    # set_cuda_backend("triton") must cover each op overload of the schema table.
    wanted = {(name.split(".")[0], name.split(".")[1] if "." in name else "default") for name in _ops.SCHEMAS}
    assert wanted == set(TRITON_KERNELS)
    cgh_ops.set_cuda_backend("triton")
    try:
        assert cgh_ops.get_cuda_backend() == "triton"
    finally:
        cgh_ops.set_cuda_backend("cuda")
