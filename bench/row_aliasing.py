"""Rows a large power of two apart: ``python -m bench.row_aliasing``.

The rows of one ``[k, n]`` tensor are ``n * itemsize`` bytes apart. At n = 2^26 float32
(256 MiB apart) every kernel that reads the rows in lockstep -- ours and torch.compile's --
ran at well under half of a copy on an AMD EPYC VM, while the same rows padded apart by
4 KiB (``big[:, :n]`` of a ``[k, n + 1024]`` tensor) ran near copy speed; on an Intel Xeon
VM they did not collide. This script measures that on the machine at hand:
``median_of_means`` (k = 5, groups = 3) on the aliased rows with our kernels' row staging
forced on (``staged``) and off (``direct``; ``CGH_OPS_STAGE_ROWS``, the default is on for
AMD CPUs only), on the padded rows, torch.compile's min/max network on both, and a copy
moving the same bytes, in one process, alternating the variants.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _with_staging(stage: str, fn) -> None:
    """Runs fn with CGH_OPS_STAGE_ROWS set to stage ('' leaves the default), then restores it."""
    old = os.environ.get("CGH_OPS_STAGE_ROWS")
    if stage:
        os.environ["CGH_OPS_STAGE_ROWS"] = stage
    try:
        fn()
    finally:
        if old is None:
            os.environ.pop("CGH_OPS_STAGE_ROWS", None)
        else:
            os.environ["CGH_OPS_STAGE_ROWS"] = old


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.row_aliasing", description=__doc__.split("\n\n")[0])
    p.add_argument("--log2n", type=int, nargs="+", default=[24, 26])
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    import cgh_ops
    from bench import peers

    k = args.k
    print(f"{'n':>6} {'rows':<9}{'variant':<16}{'ms':>9}{'of copy':>9}")
    for log2n in args.log2n:
        n = 1 << log2n
        layouts = {"aliased": torch.randn(k, n), "padded": torch.randn(k, n + 1024)[:, :n]}
        out = torch.empty(n)
        src = torch.randn((k + 1) * n // 2)
        dst = torch.empty_like(src)
        fns = {("-", "copy"): lambda: dst.copy_(src)}
        for name, x in layouts.items():
            for stage in ("1", "0") if name == "aliased" else ("",):
                variant = {"1": "cgh_ops staged", "0": "cgh_ops direct", "": "cgh_ops"}[stage]
                fns[(name, variant)] = lambda x=x, stage=stage: _with_staging(
                    stage, lambda: cgh_ops.median_of_means(x, 3, out=out))
            if not args.no_compile:
                f = peers.peer("median_of_means", "torch.compile", {"x": x, "groups": 3}, out)
                if f is not None:
                    fns[(name, "torch.compile")] = f
        for f in fns.values():
            f()  # warm-up (torch.compile compiles here)
        times = {key: [] for key in fns}
        for _ in range(args.repeats):
            for key, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[key].append(time.perf_counter() - t0)
        copy = statistics.median(times[("-", "copy")])
        for (rows, variant), ts in times.items():
            t = statistics.median(ts)
            print(f"{'2^' + str(log2n):>6} {rows:<9}{variant:<16}{t * 1e3:>9.2f}{copy / t:>9.2f}")


if __name__ == "__main__":
    main()
