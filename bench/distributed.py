"""The median DDP hook against its peers, per gradient bucket: ``python -m bench.distributed``.

Three ways to combine one flat float32 bucket of ``n`` elements across ``W`` ranks:

* ``allreduce``: DDP's default hook (divide by ``W``, all-reduce): the mean, the baseline cost;
* ``median_hook``: ours (:func:`cgh_ops.distributed.all_reduce_median_`, the body of
  ``median_hook``): all-to-all, fused median of the ``[W, n/W]`` shard, all-gather;
* ``allgather_median``: the naive median: all-gather every rank's whole bucket into
  ``[W, n]``, then :func:`cgh_ops.median_of_means` of all of it on every rank.

By default it spawns ``W`` gloo ranks on this machine (loopback) for each ``--worlds`` entry.
Under ``torchrun`` it runs as one rank of that job instead (``--backend nccl`` on GPUs).

Reported per (method, W, n): ``seconds``, the median over the timed calls of the slowest
rank's time (a collective is done when its last rank is); ``sent_bytes``, the bytes each
rank hands to the transport per call: measured as the growth of ``wchar`` in
``/proc/self/io`` (gloo writes to its TCP sockets with ``write``/``writev``, which count
there) when it is available and the backend is gloo, else ``model_bytes``, the bytes the
algorithm must send (ring all-reduce and ours: ``2 (W-1)/W n b``; all-gather: ``(W-1) n b``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import cgh_ops
from cgh_ops.distributed import MedianState, all_reduce_median_

METHODS = ("allreduce", "median_hook", "allgather_median")
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def wchar() -> Optional[int]:
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def model_bytes(method: str, world: int, n: int, itemsize: int) -> int:
    if method == "allgather_median":
        return (world - 1) * n * itemsize
    shard = -(-n // world)  # ours pads to W * ceil(n / W); the ring all-reduce does not
    per_rank = shard if method == "median_hook" else n / world
    return int(2 * (world - 1) * per_rank * itemsize)


def make_methods(bucket: torch.Tensor, world: int) -> dict[str, Callable[[], None]]:
    state = MedianState()
    gathered = bucket.new_empty(world * bucket.numel())

    def allreduce():
        bucket.div_(world)
        dist.all_reduce(bucket)

    def median_hook():
        all_reduce_median_(bucket, state)

    def allgather_median():
        _all_gather(gathered, bucket)
        cgh_ops.median_of_means(gathered.view(world, -1), world, out=bucket)

    return {"allreduce": allreduce, "median_hook": median_hook, "allgather_median": allgather_median}


def bench_rank(args, rank: int, world: int, device: torch.device) -> list[dict]:
    """Time every method on every size; every rank calls this, rank 0 returns the records."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    measure_wire = args.backend == "gloo" and wchar() is not None
    records = []
    for log2n in args.sizes:
        n = 1 << log2n
        g = torch.Generator().manual_seed(rank)
        source = torch.randn(n, generator=g).to(device)
        bucket = torch.empty_like(source)
        methods = make_methods(bucket, world)
        for name in args.methods:
            fn = methods[name]
            times, sent = [], []
            for i in range(args.warmup + args.repeats):
                bucket.copy_(source)  # every call sees the same honest gradients
                sync()
                dist.barrier()
                w0, t0 = wchar() if measure_wire else 0, time.perf_counter()
                fn()
                sync()
                dt, dw = time.perf_counter() - t0, (wchar() - w0 if measure_wire else 0)
                if i >= args.warmup:
                    times.append(dt)
                    sent.append(dw)
            # The slowest rank's time per call, and the largest per-rank byte count.
            stats = torch.tensor([times, [float(s) for s in sent]], dtype=torch.float64, device=device)
            dist.all_reduce(stats, op=dist.ReduceOp.MAX)
            seconds = statistics.median(stats[0].tolist())
            itemsize = source.element_size()
            record = {
                "method": name,
                "backend": args.backend,
                "world": world,
                "n": n,
                "dtype": str(source.dtype).replace("torch.", ""),
                "seconds": seconds,
                "model_bytes": model_bytes(name, world, n, itemsize),
                "sent_bytes": int(statistics.median(stats[1].tolist())) if measure_wire else None,
                "native_kernels": cgh_ops._extension.NATIVE,
            }
            records.append(record)
            if rank == 0:
                log(f"W={world} n=2^{log2n} {name}: {seconds * 1e3:.2f} ms")
    return records


def spawned_rank(rank: int, world: int, port: int, args, out_path: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(args.threads)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=datetime.timedelta(seconds=300))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    records = bench_rank(args, rank, world, torch.device("cpu"))
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(records, f)
    dist.destroy_process_group()


def run_local(args, world: int) -> list[dict]:
    """``world`` gloo ranks on this machine, rendezvous through a TCPStore on a free loopback port."""
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
    out_path = os.path.join(args.tmp, f"bench_distributed_{os.getpid()}_{world}.json")
    mp.start_processes(
        spawned_rank, args=(world, store.port, args, out_path), nprocs=world, start_method="spawn"
    )
    with open(out_path) as f:
        records = json.load(f)
    os.remove(out_path)
    return records


def run_torchrun(args) -> list[dict]:
    """One rank of a torchrun job: ``torchrun --nproc-per-node W -m bench.distributed --backend nccl``."""
    if args.backend == "nccl":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group(args.backend)
    records = bench_rank(args, dist.get_rank(), dist.get_world_size(), device)
    rank = dist.get_rank()
    dist.destroy_process_group()
    return records if rank == 0 else []


def table(records: list[dict]) -> str:
    head = (
        f"{'backend':7} {'W':>2} {'n':>9} {'method':16} {'ms':>9} {'x allreduce':>11} "
        f"{'MB sent/rank':>12} {'MB model':>9}"
    )
    lines = [head, "-" * len(head)]
    base = {(r["world"], r["n"]): r["seconds"] for r in records if r["method"] == "allreduce"}
    for r in records:
        ratio = r["seconds"] / base[(r["world"], r["n"])] if (r["world"], r["n"]) in base else float("nan")
        sent = f"{r['sent_bytes'] / 1e6:12.2f}" if r["sent_bytes"] is not None else f"{'-':>12}"
        lines.append(
            f"{r['backend']:7} {r['world']:>2} {r['n']:>9} {r['method']:16} {r['seconds'] * 1e3:9.2f} "
            f"{ratio:11.2f} {sent} {r['model_bytes'] / 1e6:9.2f}"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 3, 4], help="world sizes to spawn (local gloo runs)")
    p.add_argument("--sizes", type=int, nargs="+", default=[18, 22], help="log2 of the bucket size n (elements)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--backend", default="gloo", choices=("gloo", "nccl"), help="nccl: run under torchrun")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch threads per spawned rank")
    p.add_argument("--tmp", default="/tmp", help="where spawned ranks leave their results")
    p.add_argument("--json", metavar="PATH", help="write the records (a JSON list) here")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        records = run_torchrun(args)
        if not records:
            return []
    else:
        if args.backend != "gloo":
            raise SystemExit("bench.distributed: --backend nccl runs under torchrun (one process per GPU)")
        records = []
        for world in args.worlds:
            records += run_local(args, world)
    print(table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    main()
