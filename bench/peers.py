"""The peers our kernels are measured against: other ways to compute the same statistics.

Each peer is what a user would write without cgh_ops:

* ``torch.median``: stack the values into one ``[k, n]`` tensor and take ``torch.median``
  along dim 0 (what robust-aggregation libraries do); group means are computed first.
* ``torch.quantile``: the same with ``torch.quantile(q=0.5)``, which only accepts float32/
  float64, so bfloat16 inputs are upcast (as those libraries do) and the result cast back.
* ``torch.sort``: for the trimmed/winsorized means, sort the stack and average the kept rows.
* ``official_loop``: a per-tensor loop in the style of the authors' optimizers
  (google-research ``coherent_gradients/weak_and_strong/optimizers/rm3.py``): ring buffers,
  ``functools.reduce`` over ``torch.add/min/max`` and the median as ``sum - min - max``.
  That formula exists only for three values, so this peer covers k = 3 only.
* ``foreach_minmax``: a min/max network over tensor lists with ``torch._foreach_minimum/
  _foreach_maximum`` (the multi-tensor machinery of ``torch.optim``).
* ``torch.compile``: the reference min/max network below, compiled (Inductor fuses it into
  one loop). Compilation happens in the warm-up calls, never in the timed ones.

Every factory here returns a zero-argument callable that runs one call of the peer on
prebuilt inputs (``out`` given: the peer writes into preallocated outputs where its API
allows that; otherwise it allocates, like the user's code would), or ``None`` when the
peer does not compute that statistic.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

PEERS = ("torch.median", "torch.quantile", "torch.sort", "official_loop", "foreach_minmax", "torch.compile")


# ----------------------------------------------------------------------------- networks
def group_bounds(m: int, groups: int) -> list[tuple[int, int]]:
    """Row ranges of ``groups`` contiguous groups of ``m`` rows, in ``torch.tensor_split`` order."""
    q, r = m // groups, m % groups  # (not divmod: Dynamo traces this with symbolic m)
    bounds, start = [], 0
    for g in range(groups):
        stop = start + q + (1 if g < r else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


@functools.lru_cache(maxsize=None)
def sorting_network(k: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, of odd-even transposition sort: after them, slot i holds
    the i-th smallest value. Simple and valid for every k (k*(k-1)/2 comparators)."""
    return tuple((i, i + 1) for rnd in range(k) for i in range(rnd % 2, k - 1, 2))


@functools.lru_cache(maxsize=None)
def selection_network(k: int, wanted: tuple[int, ...]) -> tuple[tuple[int, int, bool, bool], ...]:
    """The comparators of :func:`sorting_network` that the ``wanted`` output slots depend on,
    each as ``(i, j, need_min, need_max)``: dead outputs are not computed (for the median of 9
    this keeps 30 of 72 min/max operations)."""
    live = set(wanted)
    kept = []
    for i, j in reversed(sorting_network(k)):
        need_min, need_max = i in live, j in live
        if need_min or need_max:
            kept.append((i, j, need_min, need_max))
            live |= {i, j}
    return tuple(reversed(kept))


def run_network(values: list, comparators, minimum: Callable, maximum: Callable) -> list:
    """Apply a (selection) network to ``values`` with the given min/max functions."""
    v = list(values)
    for i, j, need_min, need_max in comparators:
        lo = minimum(v[i], v[j]) if need_min else None
        hi = maximum(v[i], v[j]) if need_max else None
        v[i], v[j] = lo, hi
    return v


def median_network(values: list, minimum: Callable = torch.minimum, maximum: Callable = torch.maximum):
    """Median of an odd number of values with a min/max network (exact, propagates NaN with
    ``torch.minimum/maximum``). Three values: ``max(min(a, b), min(max(a, b), c))``."""
    k = len(values)
    if k % 2 == 0:
        raise ValueError(f"median_network: needs an odd number of values, got {k}")
    if k == 1:
        return values[0]
    if k == 3:
        a, b, c = values
        return maximum(minimum(a, b), minimum(maximum(a, b), c))
    return run_network(values, selection_network(k, (k // 2,)), minimum, maximum)[k // 2]


def sort_values(values: list, minimum: Callable = torch.minimum, maximum: Callable = torch.maximum) -> list:
    """All order statistics of ``values`` (ascending) with the full sorting network."""
    full = tuple((i, j, True, True) for i, j in sorting_network(len(values)))
    return run_network(values, full, minimum, maximum)


def _acc(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float64 else t.float()


# ------------------------------------------------- the reference min/max networks (compiled)
def ref_median3(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return median_network([a, b, c])


def ref_median_of_means(x: Tensor, groups: int) -> Tensor:
    means = []
    for start, stop in group_bounds(x.shape[0], groups):
        total = _acc(x[start])
        for r in range(start + 1, stop):
            total = total + _acc(x[r])
        means.append(total / (stop - start))
    return median_network(means).to(x.dtype)


def ref_trimmed_mean(x: Tensor, trim: int) -> Tensor:
    m = x.shape[0]
    s = sort_values([_acc(x[r]) for r in range(m)])
    return (functools.reduce(torch.add, s[trim : m - trim]) / (m - 2 * trim)).to(x.dtype)


def ref_winsorized_mean(x: Tensor, trim: int) -> Tensor:
    m = x.shape[0]
    s = sort_values([_acc(x[r]) for r in range(m)])
    kept = functools.reduce(torch.add, s[trim : m - trim])
    return ((kept + trim * (s[trim] + s[m - 1 - trim])) / m).to(x.dtype)


# Inductor (torch 2.14, CPU) miscompiles ``h.copy_(grad); grad.copy_(f(grad, h))``: the history
# slot receives the new value of ``grad``. Copying ``grad + 0`` instead is fused all the same
# (no extra pass) and compiles correctly; bench/check in tests/test_bench_smoke.py guards it.
def ref_running_median_(grad: Tensor, history: list[Tensor], slot: int) -> None:
    med = median_network([grad, *history])
    history[slot].copy_(grad + 0)
    grad.copy_(med)


def ref_ring_step_(params, grads, history, slot: int, lr: float, weight_decay: float) -> None:
    R = len(history) // len(params)
    for i, (p, g) in enumerate(zip(params, grads)):
        mine = history[i * R : (i + 1) * R]
        d = (g + weight_decay * p) if weight_decay else g
        med = median_network([d, *mine])
        mine[slot].copy_(d)
        p.sub_(lr * med)


_COMPILED: dict[str, Callable] = {}


def compiled(name: str, fn: Callable) -> Callable:
    """One ``torch.compile`` object per reference function, reused across sizes (dynamic
    shapes), so that a sweep compiles each function a few times rather than once per size."""
    if name not in _COMPILED:
        # Guards still specialize on k, dtype and list length: allow those recompiles.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        torch._dynamo.config.accumulated_recompile_limit = max(
            torch._dynamo.config.accumulated_recompile_limit, 1 << 14
        )
        _COMPILED[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _COMPILED[name]


def _compiled_into(name: str, fn: Callable) -> Callable:
    def into(out, *args):
        out.copy_(fn(*args))

    return compiled(name + ".out", into)


# ------------------------------------------------------- the authors' style (official_loop)
def official_median3(buffers: Sequence[Tensor], out: Optional[Tensor] = None) -> Tensor:
    """``sum - min - max`` over a ring of three buffers, as the official M3/RM3 steps do."""
    s = functools.reduce(torch.add, buffers)
    lo = functools.reduce(torch.min, buffers)
    hi = functools.reduce(torch.max, buffers)
    if out is None:
        return s - lo - hi
    return torch.sub(s - lo, hi, out=out)


def official_group_means(x: Tensor, groups: int) -> list[Tensor]:
    """Each group's mean gradient, as the official trainer would hand it to ``step()``."""
    means = []
    for start, stop in group_bounds(x.shape[0], groups):
        rows = [x[r] for r in range(start, stop)]
        means.append(rows[0] if len(rows) == 1 else functools.reduce(torch.add, rows) / len(rows))
    return means


class OfficialStyleRM3(torch.optim.Optimizer):
    """The official RM3 ``step()`` (google-research ``optimizers/rm3.py``) with only the
    deprecated ``add(scalar, tensor)`` calls spelled in today's API: a per-parameter loop with
    a ring of 3 gradient copies and ``sum - min - max``. The baseline of issue 6's 5x target."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay))
        self.ringbuffer_size = 3

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            weight_decay = group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if weight_decay != 0:
                    d_p = d_p.add(p, alpha=weight_decay)
                state = self.state[p]
                if "gradients_buffer" not in state:
                    state["gradients_buffer"] = [torch.clone(d_p) for _ in range(self.ringbuffer_size)]
                    state["gradients_counter"] = 1
                else:
                    state["gradients_buffer"][state["gradients_counter"] % 3].copy_(d_p)
                    state["gradients_counter"] += 1
                if state["gradients_counter"] >= self.ringbuffer_size:
                    p.add_(official_median3(state["gradients_buffer"]), alpha=-group["lr"])


# ----------------------------------------------------------------------- the peer table
def _stack_median(values: list[Tensor], backend: str, out, scratch) -> Tensor:
    """Median of same-shape tensors through one stacked tensor (``torch.median`` or ``quantile``)."""
    if backend == "torch.median":
        if out is None:
            return torch.median(torch.stack(values), 0).values
        stack, idx = scratch
        torch.stack(values, out=stack)
        torch.median(stack, 0, out=(out, idx))
        return out
    dtype = values[0].dtype
    if dtype in (torch.float32, torch.float64):
        stack = torch.stack(values) if out is None else torch.stack(values, out=scratch[0])
        return torch.quantile(stack, 0.5, dim=0, out=out)
    # quantile only takes float32/float64: upcast, then cast back (into out if given)
    med = torch.quantile(torch.stack(values).float(), 0.5, dim=0).to(dtype)
    return med if out is None else out.copy_(med)


def _peer_stacked(backend: str, x: Tensor, out):
    if backend == "torch.median":
        if out is None:
            return lambda: torch.median(x, 0).values
        idx = torch.empty(x.shape[1:], dtype=torch.int64, device=x.device)
        return lambda: torch.median(x, 0, out=(out, idx))
    if x.dtype in (torch.float32, torch.float64):
        return lambda: torch.quantile(x, 0.5, dim=0, out=out)
    if out is None:
        return lambda: torch.quantile(x.float(), 0.5, dim=0).to(x.dtype)
    return lambda: out.copy_(torch.quantile(x.float(), 0.5, dim=0))


def _stack_scratch(backend: str, k: int, like: Tensor):
    """Preallocated stack (and median indices) for the ``out=`` variant of the stack peers."""
    stack = torch.empty((k, *like.shape), dtype=like.dtype, device=like.device)
    if backend == "torch.median":
        return stack, torch.empty(like.shape, dtype=torch.int64, device=like.device)
    return (stack,)


def _foreach_network(lists: list[list[Tensor]]) -> list[Tensor]:
    return median_network(lists, torch._foreach_minimum, torch._foreach_maximum)


def _foreach_group_means(xs: list[Tensor], groups: int) -> list[list[Tensor]]:
    means = []
    for start, stop in group_bounds(xs[0].shape[0], groups):
        total = [x[start] for x in xs]
        for r in range(start + 1, stop):
            total = torch._foreach_add(total, [x[r] for x in xs])
        if stop - start > 1:
            torch._foreach_div_(total, float(stop - start))
        means.append(total)
    return means


def peer(op: str, backend: str, data: dict, out) -> Optional[Callable[[], object]]:
    """A callable running ``backend``'s version of ``op`` on ``data`` (see ``bench.throughput``
    for the layout of each op's inputs), writing into ``out`` if it is not None; None when the
    peer does not compute this statistic or has no ``out=`` form."""
    if op == "median3":
        a, b, c = data["a"], data["b"], data["c"]
        return _peer_median(backend, [a, b, c], lambda: [a, b, c], out, ("median3", ref_median3), (a, b, c))
    if op == "median_of_means":
        x, groups = data["x"], data["groups"]
        if groups == x.shape[0] and backend in ("torch.median", "torch.quantile"):
            # each row is its own group and x is already the stack: no copy to make
            return _peer_stacked(backend, x, out)
        if groups == x.shape[0]:
            rows = list(x.unbind(0))
            values = lambda: rows  # noqa: E731  (each row is its own group)
        elif backend in ("torch.median", "torch.quantile") and out is not None:
            means_buf = torch.empty((groups, *x.shape[1:]), dtype=x.dtype, device=x.device)

            def values():
                for g, (s, e) in enumerate(group_bounds(x.shape[0], groups)):
                    torch.mean(x[s:e], 0, out=means_buf[g])
                return list(means_buf.unbind(0))

        elif backend == "official_loop":
            values = lambda: official_group_means(x, groups)  # noqa: E731
        else:
            values = lambda: [x[s:e].mean(0) for s, e in group_bounds(x.shape[0], groups)]  # noqa: E731
        if backend == "foreach_minmax":
            if out is not None:
                return None
            return lambda: _foreach_network(_foreach_group_means([x], groups))
        return _peer_median(backend, [x[0]] * groups, values, out, ("mom", ref_median_of_means), (x, groups))
    if op == "foreach_median_of_means":
        xs, groups = data["xs"], data["groups"]
        if backend == "foreach_minmax":
            return None if out is not None else (lambda: _foreach_network(_foreach_group_means(xs, groups)))
        if backend == "torch.compile":
            if out is None:
                fn = compiled("foreach_mom", lambda xs, g: [ref_median_of_means(x, g) for x in xs])
                return lambda: fn(xs, groups)
            fn = compiled("foreach_mom.out", _foreach_mom_into)
            return lambda: fn(out, xs, groups)
        # the others: a Python loop over the list
        calls = [
            peer("median_of_means", backend, {"x": x, "groups": groups}, None if out is None else out[i])
            for i, x in enumerate(xs)
        ]
        if any(c is None for c in calls):
            return None
        return lambda: [c() for c in calls]
    if op in ("trimmed_mean", "winsorized_mean"):
        return _peer_trim(op, backend, data["x"], data["trim"], out)
    if op == "running_median_":
        return _peer_running_median(backend, data["grad"], data["history"], data["slot"])
    if op == "ring_step_":
        return _peer_ring_step(backend, data)
    raise ValueError(f"unknown op {op!r}")


def _foreach_mom_into(out, xs, groups):
    for o, x in zip(out, xs):
        o.copy_(ref_median_of_means(x, groups))


def _peer_median(backend, like_values, values, out, ref, ref_args):
    """Median of ``values()`` (a list of same-shape tensors) by ``backend``."""
    k = len(like_values)
    if backend in ("torch.median", "torch.quantile"):
        scratch = None if out is None else _stack_scratch(backend, k, like_values[0])
        return lambda: _stack_median(values(), backend, out, scratch)
    if backend == "official_loop":
        if k != 3:
            return None
        return lambda: official_median3(values(), out)
    if backend == "foreach_minmax":
        if out is not None:
            return None  # _foreach ops have no out= form
        return lambda: _foreach_network([[v] for v in values()])
    if backend == "torch.compile":
        name, fn = ref
        if out is None:
            f = compiled(name, fn)
            return lambda: f(*ref_args)
        f = _compiled_into(name, fn)
        return lambda: f(out, *ref_args)
    return None


def _peer_trim(op, backend, x, trim, out):
    m = x.shape[0]
    ref = ref_trimmed_mean if op == "trimmed_mean" else ref_winsorized_mean
    if backend == "torch.sort":
        if op == "trimmed_mean" and out is not None:
            vals = torch.empty_like(x)
            idx = torch.empty(x.shape, dtype=torch.int64, device=x.device)

            def sort_trim_out():
                torch.sort(x, 0, out=(vals, idx))
                return torch.mean(vals[trim : m - trim], 0, out=out)

            return sort_trim_out
        if out is not None:
            return None
        if op == "trimmed_mean":
            return lambda: torch.sort(x, 0).values[trim : m - trim].mean(0)

        def sort_winsorize():
            s = torch.sort(x, 0).values
            s = s.clamp(min=s[trim], max=s[m - 1 - trim])
            return s.mean(0)

        return sort_winsorize
    if backend == "foreach_minmax":
        if out is not None:
            return None
        return lambda: _foreach_trim(op, x, trim)
    if backend == "torch.compile":
        if out is None:
            f = compiled(op, ref)
            return lambda: f(x, trim)
        f = _compiled_into(op, ref)
        return lambda: f(out, x, trim)
    return None


def _foreach_trim(op, x, trim):
    m = x.shape[0]
    s = sort_values([[x[r]] for r in range(m)], torch._foreach_minimum, torch._foreach_maximum)
    total = s[trim]
    for r in range(trim + 1, m - trim):
        total = torch._foreach_add(total, s[r])
    if op == "trimmed_mean":
        torch._foreach_div_(total, float(m - 2 * trim))
        return total
    ends = torch._foreach_add(s[trim], s[m - 1 - trim])
    torch._foreach_add_(total, ends, alpha=trim)
    torch._foreach_div_(total, float(m))
    return total


def _peer_running_median(backend, grad, history, slot):
    k = len(history) + 1
    if backend in ("torch.median", "torch.quantile"):

        def stacked():
            med = _stack_median([grad, *history], backend, None, None)
            history[slot].copy_(grad)
            grad.copy_(med)

        return stacked
    if backend == "official_loop":
        if k != 3:
            return None

        def official():
            med = official_median3([grad, *history])
            history[slot].copy_(grad)
            grad.copy_(med)

        return official
    if backend == "foreach_minmax":

        def foreach():
            med = _foreach_network([[grad]] + [[h] for h in history])
            torch._foreach_copy_([history[slot]], [grad])
            torch._foreach_copy_([grad], med)

        return foreach
    if backend == "torch.compile":
        f = compiled("running_median_", ref_running_median_)
        return lambda: f(grad, history, slot)
    return None


def _peer_ring_step(backend, d):
    params, grads, history, slot, lr, wd = d["params"], d["grads"], d["history"], d["slot"], d["lr"], d["wd"]
    R = len(history) // len(params)
    if backend in ("torch.median", "torch.quantile", "official_loop"):
        if backend == "official_loop" and R != 2:
            return None

        def loop():
            for i, (p, g) in enumerate(zip(params, grads)):
                mine = history[i * R : (i + 1) * R]
                dp = g.add(p, alpha=wd) if wd else g
                if backend == "official_loop":
                    med = official_median3([dp, *mine])
                else:
                    med = _stack_median([dp, *mine], backend, None, None)
                mine[slot].copy_(dp)
                p.add_(med, alpha=-lr)

        return loop
    if backend == "foreach_minmax":
        hist = [[history[i * R + j] for i in range(len(params))] for j in range(R)]

        def foreach():
            dp = torch._foreach_add(grads, params, alpha=wd) if wd else grads
            med = _foreach_network([dp, *hist])
            torch._foreach_copy_(hist[slot], dp)
            torch._foreach_add_(params, med, alpha=-lr)

        return foreach
    if backend == "torch.compile":
        f = compiled("ring_step_", ref_ring_step_)
        return lambda: f(params, grads, history, slot, lr, wd)
    return None
