"""Bad input: an error that names the argument, and nothing written.

Every case runs on the pure-PyTorch reference and on the native CPU kernel (skipped when
it is not built). Each case builds fresh tensors, records every tensor the op may write
(``out=`` and in-place arguments), calls the op, and checks the exception type (the C++
checks mirror the Python ones: TypeError for a dtype, ValueError for the rest), that the
message names the argument, and that the recorded tensors are bitwise unchanged.
Mismatched devices use the "meta" device, so they need no GPU.
"""

from __future__ import annotations

import re

import pytest
import torch

import cgh_ops

INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}


def f32(*shape):
    return torch.randn(shape)


def meta(*shape):
    return torch.empty(shape, device="meta")


class Case:
    """``run(op)`` calls the op (``op(name, overload)`` gives it); ``written`` may not change."""

    def __init__(self, exc, arg, run, written=()):
        self.exc, self.arg, self.run = exc, arg, run
        self.written = [t for t in written if t.device.type != "meta"]  # a meta tensor has no data


def _cases():
    """id -> zero-argument builder of a fresh :class:`Case`."""
    cases = {}

    def case(name):
        def register(builder):
            cases[name] = builder
            return builder

        return register

    # ---------------------------------------------------------------- median_of_means
    for dtype in (torch.int32, torch.complex64, torch.bool):
        @case(f"median_of_means-{str(dtype)[6:]}-input")
        def _(dtype=dtype):
            x = torch.ones(3, 4, dtype=dtype)
            return Case(TypeError, "x", lambda op: op("median_of_means")(x, 3, False))

    for groups, why in ((0, "zero"), (-1, "negative"), (4, "more-than-rows")):
        @case(f"median_of_means-groups-{why}")
        def _(groups=groups):
            x, out = f32(3, 4), f32(4)
            return Case(ValueError, "groups", lambda op: op("median_of_means", "out")(x, groups, False, out=out), [out])

    @case("median_of_means-no-rows")
    def _():
        x = f32(0, 4)
        return Case(ValueError, "x", lambda op: op("median_of_means")(x, 1, False))

    @case("median_of_means-zero-dim")
    def _():
        x = f32()
        return Case(ValueError, "x", lambda op: op("median_of_means")(x, 1, False))

    for why, make_out, exc in (
        ("shape", lambda: f32(5), ValueError),
        ("rows-kept", lambda: f32(3, 4), ValueError),
        ("dtype", lambda: torch.randn(4, dtype=torch.float64), TypeError),
        ("device", lambda: meta(4), ValueError),
    ):
        @case(f"median_of_means-out-{why}")
        def _(make_out=make_out, exc=exc):
            x, out = f32(3, 4), make_out()
            return Case(exc, "out", lambda op: op("median_of_means", "out")(x, 3, False, out=out), [out])

    # ------------------------------------------------------------------------ median3
    for why, build, exc, arg in (
        ("int-a", lambda: (torch.ones(4, dtype=torch.int64), f32(4), f32(4)), TypeError, "a"),
        ("complex-b", lambda: (f32(4), torch.ones(4, dtype=torch.complex64), f32(4)), TypeError, "b"),
        ("bool-c", lambda: (f32(4), f32(4), torch.ones(4, dtype=torch.bool)), TypeError, "c"),
        ("dtype-mismatch", lambda: (f32(4), f32(4), torch.randn(4, dtype=torch.float64)), TypeError, "c"),
        ("shape-mismatch", lambda: (f32(4), f32(5), f32(4)), ValueError, "b"),
        ("device-mismatch", lambda: (f32(4), f32(4), meta(4)), ValueError, "c"),
    ):
        @case(f"median3-{why}")
        def _(build=build, exc=exc, arg=arg):
            a, b, c = build()
            return Case(exc, arg, lambda op: op("median3")(a, b, c, False))

    for why, make_out, exc in (
        ("shape", lambda: f32(4, 1), ValueError),
        ("dtype", lambda: torch.randn(4, dtype=torch.float16), TypeError),
        ("device", lambda: meta(4), ValueError),
    ):
        @case(f"median3-out-{why}")
        def _(make_out=make_out, exc=exc):
            a, b, c, out = f32(4), f32(4), f32(4), make_out()
            return Case(exc, "out", lambda op: op("median3", "out")(a, b, c, False, out=out), [out])

    # ------------------------------------------------------------ foreach_median_of_means
    @case("foreach-int-second")
    def _():
        xs = [f32(3, 4), torch.ones(3, 2, dtype=torch.int32)]
        return Case(TypeError, "xs[1]", lambda op: op("foreach_median_of_means")(xs, 3, False))

    @case("foreach-groups-exceed-second")
    def _():
        xs, out = [f32(5, 4), f32(2, 3)], [f32(4), f32(3)]
        return Case(ValueError, "groups", lambda op: op("foreach_median_of_means", "out")(xs, 3, False, out=out), out)

    @case("foreach-out-length")
    def _():
        xs, out = [f32(3, 4), f32(3, 2)], [f32(4)]
        return Case(ValueError, "out", lambda op: op("foreach_median_of_means", "out")(xs, 3, False, out=out), out)

    for why, make_out, exc in (
        ("shape", lambda: f32(3), ValueError),
        ("dtype", lambda: torch.randn(2, dtype=torch.bfloat16), TypeError),
        ("device", lambda: meta(2), ValueError),
    ):
        # the second out is bad: the first must not have been written either
        @case(f"foreach-out1-{why}")
        def _(make_out=make_out, exc=exc):
            xs, out = [f32(3, 4), f32(3, 2)], [f32(4), make_out()]
            return Case(
                exc, "out[1]", lambda op: op("foreach_median_of_means", "out")(xs, 3, False, out=out), out[:1]
            )

    # ------------------------------------------------------- trimmed / winsorized mean
    for name in ("trimmed_mean", "winsorized_mean"):
        for m, trim, why in ((5, -1, "negative"), (5, 3, "too-large"), (4, 2, "half-of-even")):
            @case(f"{name}-trim-{why}")
            def _(name=name, m=m, trim=trim):
                x, out = f32(m, 3), f32(3)
                return Case(ValueError, "trim", lambda op: op(name, "out")(x, trim, out=out), [out])

        @case(f"{name}-int-input")
        def _(name=name):
            x = torch.ones(5, 3, dtype=torch.int16)
            return Case(TypeError, "x", lambda op: op(name)(x, 1))

        for why, make_out, exc in (
            ("shape", lambda: f32(5, 3), ValueError),
            ("dtype", lambda: torch.randn(3, dtype=torch.float64), TypeError),
            ("device", lambda: meta(3), ValueError),
        ):
            @case(f"{name}-out-{why}")
            def _(name=name, make_out=make_out, exc=exc):
                x, out = f32(5, 3), make_out()
                return Case(exc, "out", lambda op: op(name, "out")(x, 1, out=out), [out])

    # ------------------------------------------------------------- running medians
    @case("running_median-int-grad")
    def _():
        grad, history = torch.ones(4, dtype=torch.int32), [f32(4), f32(4)]
        return Case(TypeError, "grad", lambda op: op("running_median_")(grad, history, 0, False), [grad] + history)

    for slot, why in ((2, "past-end"), (-2, "below-minus-one")):
        @case(f"running_median-slot-{why}")
        def _(slot=slot):
            grad, history = f32(4), [f32(4), f32(4)]
            return Case(ValueError, "slot", lambda op: op("running_median_")(grad, history, slot, False), [grad] + history)

    for why, bad, exc in (
        ("shape", lambda: f32(5), ValueError),
        ("dtype", lambda: torch.randn(4, dtype=torch.float64), TypeError),
        ("device", lambda: meta(4), ValueError),
    ):
        @case(f"running_median-history1-{why}")
        def _(bad=bad, exc=exc):
            grad, history = f32(4), [f32(4), bad()]
            return Case(exc, "history[1]", lambda op: op("running_median_")(grad, history, 0, False), [grad, history[0]])

    @case("foreach_running_median-history-length")
    def _():
        grads, history = [f32(4), f32(3)], [f32(4), f32(4), f32(3)]
        return Case(
            ValueError, "history", lambda op: op("foreach_running_median_")(grads, history, 0, False), grads + history
        )

    @case("foreach_running_median-second-grad-dtype")
    def _():
        # grads[1] does not match its history: grads[0] and its history must stay untouched.
        grads, history = [f32(4), f32(3)], [f32(4), torch.randn(3, dtype=torch.float64)]
        return Case(
            TypeError, "history[1]", lambda op: op("foreach_running_median_")(grads, history, 0, False),
            [grads[0], history[0], grads[1]],
        )

    @case("foreach_running_median-slot")
    def _():
        grads, history = [f32(4)], [f32(4)]
        return Case(ValueError, "slot", lambda op: op("foreach_running_median_")(grads, history, 1, False), grads + history)

    # ------------------------------------------------------------------- ring_step_
    def ring(params, grads, history, slot=0, reduce="median"):
        return lambda op: op("ring_step_")(params, grads, history, slot, 0.1, 0.01, reduce, False)

    @case("ring_step-unknown-reduce")
    def _():
        p, g, h = [f32(4)], [f32(4)], [f32(4), f32(4)]
        return Case(ValueError, "reduce", ring(p, g, h, reduce="max"), p + h)

    @case("ring_step-grads-length")
    def _():
        p, g, h = [f32(4), f32(3)], [f32(4)], [f32(4), f32(3)]
        return Case(ValueError, "grads", ring(p, g, h), p + h)

    @case("ring_step-grads1-shape")
    def _():
        p, g, h = [f32(4), f32(3)], [f32(4), f32(2)], [f32(4), f32(3)]
        return Case(ValueError, "grads[1]", ring(p, g, h), p + h)

    @case("ring_step-history-length")
    def _():
        p, g, h = [f32(4), f32(3)], [f32(4), f32(3)], [f32(4), f32(3), f32(4)]
        return Case(ValueError, "history", ring(p, g, h), p + h)

    @case("ring_step-history1-dtype")
    def _():
        p, g, h = [f32(4), f32(3)], [f32(4), f32(3)], [f32(4), torch.randn(3, dtype=torch.float16)]
        return Case(TypeError, "history[1]", ring(p, g, h), p + h[:1])

    @case("ring_step-int-param")
    def _():
        p, g, h = [torch.ones(4, dtype=torch.int32)], [f32(4)], [f32(4)]
        return Case(TypeError, "params[0]", ring(p, g, h), h)

    @case("ring_step-slot-past-end")
    def _():
        p, g, h = [f32(4)], [f32(4)], [f32(4), f32(4)]
        return Case(ValueError, "slot", ring(p, g, h, slot=2), p + h)

    @case("ring_step-store-without-slot")
    def _():
        # reduce="none" only stores g: slot -1 would make the step do nothing at all
        p, g, h = [f32(4)], [f32(4)], [f32(4), f32(4)]
        return Case(ValueError, "slot", ring(p, g, h, slot=-1, reduce="none"), p + h)

    return cases


CASES = _cases()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_VIEW[t.dtype]).clone() if t.dtype in INT_VIEW else t.clone()


@pytest.mark.parametrize("case_id", list(CASES))
@pytest.mark.parametrize("backend", ["reference", "cpu"], indirect=True)
def test_bad_input(backend, case_id):
    case = CASES[case_id]()
    before = [_bits(t) for t in case.written]
    with pytest.raises(case.exc, match=re.escape(f"'{case.arg}'")):
        case.run(backend.op)
    for i, (t, b) in enumerate(zip(case.written, before)):
        assert torch.equal(_bits(t), b), f"{case_id}: written tensor #{i} changed although the call failed"


# ------------------------------------------------------------- public wrappers only
NAN_CALLS = {
    "median_of_means": lambda: cgh_ops.median_of_means(f32(3, 4), nan="ignore"),
    "median3": lambda: cgh_ops.median3(f32(4), f32(4), f32(4), nan="ignore"),
    "foreach_median_of_means": lambda: cgh_ops.foreach_median_of_means([f32(3, 4)], nan="ignore"),
    "running_median_": lambda: cgh_ops.running_median_(f32(4), [f32(4)], 0, nan="ignore"),
    "foreach_running_median_": lambda: cgh_ops.foreach_running_median_([f32(4)], [f32(4)], 0, nan="ignore"),
}


@pytest.mark.parametrize("name", list(NAN_CALLS))
def test_unknown_nan_mode(name):
    # the schema takes a bool; the wrappers must reject any mode but "propagate"/"omit".
    with pytest.raises(ValueError, match="'nan'"):
        NAN_CALLS[name]()


def test_unknown_nan_mode_writes_nothing():
    grad, history = f32(4), [f32(4)]
    before = [grad.clone(), history[0].clone()]
    with pytest.raises(ValueError, match="'nan'"):
        cgh_ops.running_median_(grad, history, 0, nan="median")
    assert torch.equal(grad, before[0]) and torch.equal(history[0], before[1])


def test_unknown_cuda_backend():
    with pytest.raises(ValueError, match="'backend'"):
        cgh_ops.set_cuda_backend("opencl")
    assert cgh_ops.get_cuda_backend() in ("cuda", "triton")
