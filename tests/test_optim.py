"""M3 / RM3 / RA3 against an independent float64 re-implementation of the official code."""

from __future__ import annotations

import io
import warnings
from unittest import mock

import numpy as np
import pytest
import torch

import cgh_ops

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the extension may not be built here
    import cgh_ops  # noqa: F401
from cgh_ops.optim import M3, RA3, RM3

OPTIMIZERS = {"M3": M3, "RM3": RM3, "RA3": RA3}


class OfficialRing:
    """The official m3.py / rm3.py / ra3.py in NumPy float64, generalized to k, exact median.

    Per parameter: a ring of k buffers filled with the first gradient, a counter, an update
    when the counter allows it (M3: every k-th call; RM3/RA3: from the k-th call on).
    A parameter without a gradient is skipped (no store, no count, no update).
    """

    def __init__(self, kind: str, k: int):
        self.kind, self.k = kind, k
        self.ring: dict[int, list[np.ndarray]] = {}
        self.counter: dict[int, int] = {}

    def step(self, i: int, p: np.ndarray, grad, lr: float, wd: float) -> np.ndarray:
        if grad is None:
            return p
        d = grad + wd * p if wd != 0 else grad
        if i not in self.ring:
            self.ring[i] = [d.copy() for _ in range(self.k)]
            self.counter[i] = 1
        else:
            self.ring[i][self.counter[i] % self.k] = d.copy()
            self.counter[i] += 1
        c = self.counter[i]
        due = c % self.k == 0 if self.kind == "M3" else c >= self.k
        if not due:
            return p
        stacked = np.stack(self.ring[i])
        r = stacked.mean(0) if self.kind == "RA3" else np.median(stacked, 0)
        return p - lr * r


def _run(kind: str, k: int, steps: int, dtype, skip=(1, 3)):
    """Two param groups (different lr), weight decay on; param 1 has no grad at step ``skip[1]``."""
    gen = torch.Generator().manual_seed(k * 100 + len(kind))
    shapes = [(4, 3), (5,), (2, 2, 2)]
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)]
    params = [torch.nn.Parameter(t.to(dtype).clone()) for t in init]
    groups = [
        {"params": params[:2], "lr": 0.1, "weight_decay": 0.05},
        {"params": params[2:], "lr": 0.03, "weight_decay": 0.2},
    ]
    opt = OPTIMIZERS[kind](groups, lr=0.5, k=k)
    ref = OfficialRing(kind, k)
    hyper = [(0.1, 0.05), (0.1, 0.05), (0.03, 0.2)]
    ref_p = [t.numpy().copy() for t in init]
    for s in range(steps):
        for i, p in enumerate(params):
            missing = (i, s) == skip
            p.grad = None if missing else grads[s][i].to(dtype)
            g = None if missing else grads[s][i].to(dtype).double().numpy()
            ref_p[i] = ref.step(i, ref_p[i], g, *hyper[i])
        opt.step()
    return params, ref_p


@pytest.mark.parametrize("kind", ["M3", "RM3", "RA3"])
@pytest.mark.parametrize("k", [3, 5])
def test_matches_official_float64(kind, k):
    # 11 steps: several full cycles of k=3 and two of k=5, plus the start-up and a skipped step.
    params, ref_p = _run(kind, k, steps=11, dtype=torch.float64)
    for p, r in zip(params, ref_p):
        # The median picks one of the same float64 values: exact. The mean may sum in a
        # different order: a few ulps.
        tol = 0 if kind != "RA3" else 1e-14
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["M3", "RM3", "RA3"])
def test_float32_close_to_float64_reference(kind):
    # float32 parameters: the fused op rounds g to float32 before storing, as the official code.
    params, ref_p = _run(kind, 3, steps=8, dtype=torch.float32)
    for p, r in zip(params, ref_p):
        np.testing.assert_allclose(p.detach().double().numpy(), r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["M3", "RM3"])
def test_k1_is_sgd(kind):
    # k=1 (edge): no buffers, every step is p -= lr * (grad + wd * p).
    p = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    expected = p.detach().clone()
    opt = OPTIMIZERS[kind]([p], lr=0.1, weight_decay=0.01, k=1)
    for _ in range(3):
        g = torch.randn(6, dtype=torch.float64)
        p.grad = g.clone()
        expected = expected - 0.1 * (g + 0.01 * expected)
        opt.step()
    assert opt.state[p]["history"] == []
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-15)


def _train(opt_cls, model, steps, start=0, opt=None, **kw):
    opt = opt or opt_cls(model.parameters(), **kw)
    gen = torch.Generator()
    for s in range(start, start + steps):
        gen.manual_seed(s)
        x = torch.randn(8, 5, generator=gen)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return opt


@pytest.mark.parametrize("kind", ["M3", "RM3", "RA3"])
def test_resume_bit_exact(kind):
    # Stop at step 5 (not a multiple of k=3: M3 is mid-cycle), save through torch.save and
    # load with weights_only=True into a fresh model + optimizer: the rest is bit-identical.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    cls = OPTIMIZERS[kind]
    opt = _train(cls, model, 5, lr=0.05, weight_decay=1e-3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    torch.manual_seed(1)  # a different init: everything must come from the checkpoint
    model2 = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    model2.load_state_dict(ckpt["model"])
    opt2 = cls(model2.parameters(), lr=1.0)
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.param_groups[0]["lr"] == 0.05 and opt2.param_groups[0]["k"] == 3

    _train(cls, model, 7, start=5, opt=opt)
    _train(cls, model2, 7, start=5, opt=opt2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_torch_optim_protocol():
    # What trainers rely on: closure + returned loss, zero_grad, hooks, an LR scheduler.
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = RM3([w], lr=0.1, k=3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    calls = []
    opt.register_step_pre_hook(lambda o, a, kw: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, kw: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = (w * torch.tensor([1.0, 1.0])).sum()  # gradient [1, 1] every step
        loss.backward()
        return loss

    before = w.detach().clone()
    lrs = []
    for _ in range(4):
        loss = opt.step(closure)
        assert isinstance(loss, torch.Tensor)
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert calls == ["pre", "post"] * 4
    # No update on steps 1-2; steps 3 and 4 use the scheduled lr of their step.
    torch.testing.assert_close(w.detach(), before - (lrs[2] + lrs[3]))
    opt.zero_grad()
    assert w.grad is None


def test_one_fused_call_per_device_dtype():
    # Five float32 params and two float64 ones in two groups with equal hyperparameters:
    # two calls of the fused op per step, not one per parameter.
    ps = [torch.nn.Parameter(torch.randn(3)) for _ in range(5)]
    qs = [torch.nn.Parameter(torch.randn(3, dtype=torch.float64)) for _ in range(2)]
    opt = RM3([{"params": ps[:3]}, {"params": ps[3:] + qs}], lr=0.1)
    for p in ps + qs:
        p.grad = torch.ones_like(p)
    real = cgh_ops.ring_step_
    seen = []
    with mock.patch.object(cgh_ops, "ring_step_", lambda *a: (seen.append(len(a[0])), real(*a))):
        opt.step()
    assert sorted(seen) == [2, 5]


def test_params_without_grad_are_skipped():
    # Official behaviour: no state, no count, no update for a parameter that never got a grad.
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = M3([a, b], lr=0.1)
    for _ in range(3):
        a.grad = torch.ones(2)
        opt.step()
    assert b not in opt.state and torch.equal(b.detach(), torch.ones(2))
    assert opt.state[a]["step"] == 3
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.9))


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay"),
        ({"lr": 0.1, "k": 0}, "k"),
        ({"lr": 0.1, "k": 2.5}, "k"),
        ({"lr": 0.1, "k": True}, "k"),
    ],
)
@pytest.mark.parametrize("kind", ["M3", "RM3", "RA3"])
def test_bad_arguments(kind, kwargs, arg):
    with pytest.raises((ValueError, TypeError), match=f"'{arg}'"):
        OPTIMIZERS[kind]([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def test_bad_param_group_and_k_change():
    p, q = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = RM3([p], lr=0.1)
    with pytest.raises(ValueError, match="'k'"):
        opt.add_param_group({"params": [q], "k": 0})
    p.grad = torch.ones(2)
    opt.step()
    opt.param_groups[0]["k"] = 5  # history was sized for k=3
    with pytest.raises(ValueError, match="k cannot change"):
        opt.step()


def test_per_group_k():
    # Each group may use its own k (its own buffer count and schedule).
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = M3([{"params": [p], "k": 2}, {"params": [q], "k": 4}], lr=1.0)
    for _ in range(4):
        p.grad, q.grad = torch.ones(1), torch.ones(1)
        opt.step()
    assert len(opt.state[p]["history"]) == 1 and len(opt.state[q]["history"]) == 3
    assert p.item() == -2.0 and q.item() == -1.0
