"""GPU timings for bench/gpu_check.sh: every op x CUDA backend at n = 10^6 .. 10^9, fp32 and bf16.

Peers on the same inputs: ``torch.median`` of the stacked rows and ``torch.compile`` of
the min/max network of three rows. Each op writes into preallocated outputs (``out=`` or in
place). Bytes moved count each input read once and each output written once; the ceiling
is a same-run ``dst.copy_(src)`` of 10^9 fp32 values (read + write). Times are medians of
``triton.testing.do_bench`` (CUDA events). Prints one short table and writes JSON records
(``op, backend, n, k, dtype, seconds, gbps, frac_of_copy``).

    python bench/gpu_check.py --json bench/results/gpu.json [--sizes 6,7,8,9]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import triton.testing

import cgh_ops
from cgh_ops import _triton  # noqa: F401  (the Triton backend)
from cgh_ops.ops import TRITON_KERNELS

ops = torch.ops.cgh


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") / 1e3


def copy_bandwidth(n: int) -> float:
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    s = bench(lambda: dst.copy_(src))
    del src, dst
    return 2 * n * 4 / s


def minmax_network(a, b, c):
    return torch.maximum(torch.minimum(a, b), torch.minimum(torch.maximum(a, b), c))


def cases(n: int, dtype: torch.dtype):
    """(op, k, bytes, {backend: fn}) for each op at size n; builds the inputs lazily."""
    size = torch.tensor([], dtype=dtype).element_size()
    x = torch.randn(3, n, device="cuda", dtype=torch.float32).to(dtype)
    out = torch.empty(n, device="cuda", dtype=dtype)
    a, b, c = x[0], x[1], x[2]

    def backends(name, overload, *args, **kw):
        cuda_fn = getattr(getattr(ops, name), overload)
        tri_fn = TRITON_KERNELS[(name, overload)]
        return {"cuda": lambda: cuda_fn(*args, **kw), "triton": lambda: tri_fn(*args, **kw)}

    compiled = torch.compile(minmax_network, dynamic=False)
    yield "median_of_means", 3, 4 * n * size, {
        **backends("median_of_means", "out", x, 3, False, out=out),
        "torch.median": lambda: torch.median(x, 0),  # fresh values + indices: what users call
    }
    yield "median3", 3, 4 * n * size, {
        **backends("median3", "out", a, b, c, False, out=out),
        "torch.compile": lambda: compiled(a, b, c),
    }
    yield "trimmed_mean", 3, 4 * n * size, backends("trimmed_mean", "out", x, 1, out=out)
    yield "winsorized_mean", 3, 4 * n * size, backends("winsorized_mean", "out", x, 1, out=out)
    # Running median over a window of 3: read grad + 2 slots, write grad + 1 slot.
    hist = [x[1], x[2]]
    grad = x[0]
    yield "running_median_", 3, 5 * n * size, {
        "cuda": lambda: ops.running_median_(grad, hist, 0, False),
        "triton": lambda: TRITON_KERNELS[("running_median_", "default")](grad, hist, 0, False),
    }
    # RM3 step: read param, grad, 2 slots; write param and a slot.
    param = out
    yield "ring_step_", 3, 6 * n * size, {
        "cuda": lambda: ops.ring_step_([param], [grad], hist, 1, 1e-6, 0.0, "median", False),
        "triton": lambda: TRITON_KERNELS[("ring_step_", "default")]([param], [grad], hist, 1, 1e-6, 0.0, "median", False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--sizes", default="6,7,8,9", help="powers of ten")
    args = parser.parse_args()
    t_start = time.time()
    props = torch.cuda.get_device_properties(0)
    copy_gbps = copy_bandwidth(10**9) / 1e9
    print(f"{props.name}, {props.multi_processor_count} SMs; copy bandwidth {copy_gbps:.0f} GB/s (read + write)")
    records = []
    for dtype in (torch.float32, torch.bfloat16):
        for p in (int(s) for s in args.sizes.split(",")):
            n = 10**p
            for op, k, nbytes, fns in cases(n, dtype):
                for backend, fn in fns.items():
                    try:
                        s = bench(fn)
                    except Exception as exc:  # a backend failing must not hide the others
                        print(f"{op} {backend} {dtype} 1e{p}: FAILED {type(exc).__name__}: {exc}")
                        continue
                    gbps = nbytes / s / 1e9
                    records.append(
                        dict(op=op, backend=backend, n=n, k=k, dtype=str(dtype).replace("torch.", ""),
                             seconds=s, gbps=gbps, frac_of_copy=gbps / copy_gbps)
                    )
            torch.cuda.empty_cache()
    with open(args.json, "w") as f:
        json.dump({"device": props.name, "copy_gbps": copy_gbps, "records": records}, f, indent=1)
    # One short table: n = largest size, every op and backend, fraction of copy bandwidth
    # and speed-up over torch.median of the stacked rows.
    n_max = max(r["n"] for r in records)
    print(f"\nn = {n_max:.0e}: GB/s (fraction of copy), speed-up vs torch.median(stack)")
    print(f"{'op':18s} {'backend':14s} {'float32':>24s} {'bfloat16':>24s}")
    ref = {(r["dtype"]): r["seconds"] for r in records if r["backend"] == "torch.median" and r["n"] == n_max}
    keys = dict.fromkeys((r["op"], r["backend"]) for r in records)
    for op, backend in keys:
        cells = []
        for dt in ("float32", "bfloat16"):
            r = next((r for r in records if (r["op"], r["backend"], r["dtype"], r["n"]) == (op, backend, dt, n_max)), None)
            cells.append("-" if r is None else f"{r['gbps']:6.0f} ({r['frac_of_copy']:.2f}) x{ref.get(dt, float('nan')) / r['seconds']:.1f}")
        print(f"{op:18s} {backend:14s} {cells[0]:>24s} {cells[1]:>24s}")
    print(f"wrote {args.json} ({len(records)} records) in {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
