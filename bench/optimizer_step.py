"""One full optimizer step over ResNet-50's parameter list: time and peak memory.

``python -m bench.optimizer_step`` (also run by ``python -m bench.throughput`` unless
``--no-optimizer-step``). The parameters are those of ``torchvision.models.resnet50()``
(161 tensors, 25.6 M values) with random gradients; no forward or backward pass is run, so
the numbers are the optimizer's own cost. Contenders:

* ``sgd``, ``sgd_foreach``, ``sgd_fused``: ``torch.optim.SGD`` (momentum 0, as the paper's
  M3/RM3 runs) with its per-tensor loop, its ``_foreach`` path and ``fused=True``;
* ``cgh.M3``, ``cgh.RM3``, ``cgh.RA3``: ours (``cgh_ops.optim``), skipped with a note if
  that module is not there;
* ``official_loop``: the authors' RM3 ``step()`` (``bench.peers.OfficialStyleRM3``).

Steps are timed in cycles of 3 (M3 updates the weights on every third step only), after
3 warm-up steps (RM3's start-up); ``seconds`` is the median cycle divided by 3 (at least 3
cycles, 1 with ``--quick``, more while the time budget lasts). ``bytes``
is the minimum traffic per step (SGD reads p and g and writes p; the window-3 medians also
read two history tensors and write one), averaged over the cycle for M3.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable

import torch

from .peers import OfficialStyleRM3

CYCLE = 3
LR, WEIGHT_DECAY = 0.1, 1e-4


def resnet50_params(device: torch.device, seed: int = 0) -> list[torch.nn.Parameter]:
    import torchvision

    torch.manual_seed(seed)
    params = [p.detach().to(device).requires_grad_() for p in torchvision.models.resnet50().parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


def contenders() -> dict[str, tuple[Callable, float, str]]:
    """name -> (factory(params), bytes moved per step in units of P * element size, note)."""
    table: dict[str, tuple[Callable, float, str]] = {
        "sgd": (lambda ps: torch.optim.SGD(ps, lr=LR, weight_decay=WEIGHT_DECAY, foreach=False), 3, ""),
        "sgd_foreach": (lambda ps: torch.optim.SGD(ps, lr=LR, weight_decay=WEIGHT_DECAY, foreach=True), 3, ""),
        "sgd_fused": (lambda ps: torch.optim.SGD(ps, lr=LR, weight_decay=WEIGHT_DECAY, fused=True), 3, ""),
    }
    try:
        from cgh_ops import optim as cgh_optim

        for name, units in (("M3", 3), ("RM3", 6), ("RA3", 6)):
            cls = getattr(cgh_optim, name)
            table[f"cgh.{name}"] = (lambda ps, cls=cls: cls(ps, lr=LR, weight_decay=WEIGHT_DECAY), units, "")
    except (ImportError, AttributeError) as exc:
        table["cgh.*"] = (None, 0, f"cgh_ops.optim unavailable: {exc}")
    table["official_loop"] = (lambda ps: OfficialStyleRM3(ps, lr=LR, weight_decay=WEIGHT_DECAY), 6, "")
    return table


def _state_bytes(opt: torch.optim.Optimizer) -> int:
    total = 0
    for state in opt.state.values():
        for v in state.values():
            for t in v if isinstance(v, (list, tuple)) else [v]:
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    return total


def run(device: torch.device, quick: bool = False, log: Callable[[str], None] = print, budget: float = 3.0) -> list[dict]:
    from .throughput import PeakMemory, synchronizer

    params = resnet50_params(device)
    n = sum(p.numel() for p in params)
    e = params[0].element_size()
    sync = synchronizer(device)
    budget = 1.0 if quick else budget
    records = []
    for name, (factory, units, note) in contenders().items():
        if factory is None:
            log(f"[bench] optimizer_step {name}: skipped ({note})")
            continue
        try:
            opt = factory(params)
            with torch.no_grad():
                for _ in range(CYCLE):  # warm-up: allocates state, passes RM3's start-up
                    opt.step()
        except (RuntimeError, TypeError, ValueError) as exc:
            log(f"[bench] optimizer_step {name}: skipped ({type(exc).__name__}: {exc})")
            continue
        mem = PeakMemory(device)
        mem.start()
        cycles = []
        t_end = time.perf_counter() + budget
        min_cycles = 1 if quick else 3
        while len(cycles) < min_cycles or (time.perf_counter() < t_end and len(cycles) < 50):
            sync()
            t0 = time.perf_counter()
            with torch.no_grad():
                for _ in range(CYCLE):
                    opt.step()
            sync()
            cycles.append(time.perf_counter() - t0)
        peak = mem.stop()
        seconds = statistics.median(cycles) / CYCLE
        rec = dict(op="optimizer_step", backend=name, variant="step", kernel="optimizer", device=device.type,
                   model="resnet50", n=n, k=CYCLE, dtype=str(params[0].dtype).replace("torch.", ""),
                   list_len=len(params), seconds=seconds, seconds_min=min(cycles) / CYCLE, repeats=len(cycles) * CYCLE,
                   bytes=int(units * n * e), gbps=units * n * e / seconds / 1e9, frac_of_copy=None,
                   peak_bytes=peak, mem_method=mem.method, state_bytes=_state_bytes(opt))
        records.append(rec)
        log(f"[bench] optimizer_step {name}: {seconds * 1e3:.2f} ms/step, state {rec['state_bytes'] / 2**20:.0f} MiB")
        del opt
    by_name = {r["backend"]: r for r in records}
    for r in records:
        if "official_loop" in by_name:
            r["speedup_vs_official"] = by_name["official_loop"]["seconds"] / r["seconds"]
        if "sgd_fused" in by_name:
            r["time_vs_sgd_fused"] = r["seconds"] / by_name["sgd_fused"]["seconds"]
    return records


def print_table(records: list[dict], file=None) -> None:
    file = file or sys.stdout
    if not records:
        return
    print(f"\noptimizer step over resnet50 ({records[0]['n']} values in {records[0]['list_len']} tensors)", file=file)
    header = f"{'device':<7}{'optimizer':<15}{'ms/step':>10}{'x official':>12}{'x sgd_fused':>13}{'peak MB':>10}{'state MB':>10}"
    print(header, file=file)
    print("-" * len(header), file=file)
    for r in records:
        peak = "" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.1f}"
        sp = f"{r['speedup_vs_official']:.2f}" if "speedup_vs_official" in r else ""
        rel = f"{r['time_vs_sgd_fused']:.2f}" if "time_vs_sgd_fused" in r else ""
        print(f"{r['device']:<7}{r['backend']:<15}{r['seconds'] * 1e3:>10.2f}{sp:>12}{rel:>13}{peak:>10}"
              f"{r['state_bytes'] / 2**20:>10.1f}", file=file)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.optimizer_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--budget", type=float, default=3.0, help="seconds of timed cycles per optimizer")
    args = p.parse_args(argv)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        import cgh_ops  # noqa: F401
    print_table(run(torch.device(args.device), quick=args.quick, budget=args.budget,
                    log=lambda m: print(m, file=sys.stderr, flush=True)))


if __name__ == "__main__":
    main()
