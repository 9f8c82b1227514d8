"""MedianOfMeans / RunningMedian: the step() -> ready contract, values, resume, any optimizer."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the extension may not be built here
    import cgh_ops  # noqa: F401
from cgh_ops.aggregate import MedianOfMeans, RunningMedian


def _grads(n, shapes, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(n)]


@pytest.mark.parametrize("groups", [1, 3, 4])
def test_median_of_means_pattern_and_values(groups):
    # groups=4 (even): numpy's median (mean of the two middle values); 1: pass-through.
    shapes = [(3, 2), (5,)]
    params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]
    t = MedianOfMeans(params, groups=groups)
    seq = _grads(2 * groups, shapes)
    for call, gs in enumerate(seq, start=1):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        ready = t.step()
        assert ready == (call % groups == 0)
        if not ready:
            assert all(p.grad is None for p in params)
            continue
        window = seq[call - groups : call]
        for i, p in enumerate(params):
            expected = np.median(np.stack([w[i].numpy() for w in window]), 0)
            np.testing.assert_array_equal(p.grad.numpy(), expected)
    assert all(len(h) == groups - 1 for h in t.history)


@pytest.mark.parametrize("window", [2, 3, 5])
def test_running_median_pattern_and_values(window):
    # window 2: the mean of two; 3: the paper's; 5: general; 9 calls cover the ring wrap.
    shapes = [(4,), (2, 3)]
    params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]
    t = RunningMedian(params, window=window)
    seq = _grads(9, shapes, seed=window)
    for call, gs in enumerate(seq, start=1):
        for p, g in zip(params, gs):
            p.grad = g.clone()
        ready = t.step()
        assert ready == (call >= window)
        if not ready:
            assert all(p.grad is None for p in params)
            continue
        for i, p in enumerate(params):
            expected = np.median(np.stack([w[i].numpy() for w in seq[call - window : call]]), 0)
            np.testing.assert_allclose(p.grad.numpy(), expected, rtol=1e-15, atol=0)
    assert all(len(h) == window - 1 for h in t.history)


def test_param_without_grad_stays_without():
    # A frozen parameter is never touched: no buffers, grad stays None.
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    t = MedianOfMeans([a, b], groups=3)
    for _ in range(3):
        a.grad = torch.ones(2)
        ready = t.step()
    assert ready and b.grad is None and t.history[1] is None
    torch.testing.assert_close(a.grad, torch.ones(2))


def _model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _batch(step):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(4, 6, generator=gen), torch.randint(0, 3, (4,), generator=gen)


def _loss(model, step):
    x, y = _batch(step)
    return torch.nn.functional.cross_entropy(model(x), y)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
        lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.01),
    ],
    ids=["sgd_momentum", "adamw"],
)
@pytest.mark.parametrize("kind", ["mom", "running"])
def test_with_stateful_optimizers(make_opt, kind):
    # The documented loop drives momentum / Adam state exactly as if the optimizer had been
    # handed the median by hand (computed here with numpy from per-step gradients).
    size = 3
    model, twin = _model(0), _model(0)
    opt, opt_twin = make_opt(model.parameters()), make_opt(twin.parameters())
    transform = (MedianOfMeans if kind == "mom" else RunningMedian)(model.parameters(), size)
    past = []
    for step in range(8):
        _loss(model, step).backward()
        grads_twin = torch.autograd.grad(_loss(twin, step), list(twin.parameters()))
        past.append([g.numpy() for g in grads_twin])
        if transform.step():
            opt.step()
            opt.zero_grad()
            for i, p in enumerate(twin.parameters()):
                med = np.median(np.stack([g[i] for g in past[-size:]]), 0)
                p.grad = torch.from_numpy(med).to(p.dtype)
            opt_twin.step()
            opt_twin.zero_grad()
        if kind == "mom" and len(past) == size:
            past = []
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [MedianOfMeans, RunningMedian])
def test_resume_bit_exact(cls):
    # Save after 4 calls (mid-cycle for MedianOfMeans, mid-ring for RunningMedian), reload
    # with weights_only=True into fresh objects: the next calls give identical gradients.
    shapes = [(3,), (2, 2)]
    seq = _grads(9, shapes, seed=7, dtype=torch.float32)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    t = cls(params, 3)
    for gs in seq[:4]:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        t.step()
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    buf.seek(0)
    params2 = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    t2 = cls(params2, 3)
    t2.load_state_dict(torch.load(buf, weights_only=True))
    for gs in seq[4:]:
        for p, q, g in zip(params, params2, gs):
            p.grad, q.grad = g.clone(), g.clone()
        assert t.step() == t2.step()
        for p, q in zip(params, params2):
            assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)


def test_load_state_dict_mismatch():
    p = torch.nn.Parameter(torch.zeros(2))
    state = RunningMedian([p], window=3).state_dict()
    with pytest.raises(ValueError, match="window"):
        RunningMedian([p], window=5).load_state_dict(state)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: MedianOfMeans([p], groups=0), "'groups'"),
        (lambda p: MedianOfMeans([p], groups=2.0), "'groups'"),
        (lambda p: RunningMedian([p], window=0), "'window'"),
        (lambda p: RunningMedian([p], nan="skip"), "'nan'"),
        (lambda p: RunningMedian(p), "'params'"),
        (lambda p: RunningMedian([]), "'params'"),
        (lambda p: MedianOfMeans([p, p]), "'params'"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call(torch.nn.Parameter(torch.zeros(2)))
