"""Throughput of the cgh ops against their peers: ``python -m bench.throughput``.

For every op, k, dtype and size n, the same inputs go through every backend of ours
(``cpu``: the kernels behind ``torch.ops.cgh`` on CPU; ``cuda`` and ``triton`` on a GPU)
and every peer of :mod:`bench.peers`. Each variant is warmed up (``torch.compile`` compiles
there), then called ``repeats`` times; ``seconds`` is the median call.

Bytes moved = each input read once + each output written once (the minimum any
implementation must move), so ``gbps = bytes / seconds``. ``frac_of_copy`` divides by the
GB/s of ``dst.copy_(src)`` into a preallocated tensor moving the same number of bytes (the
same working set, so caches treat both alike), measured right before and right after each
case's variants; the faster of the two is the reference.

Our ops run twice: ``variant="out"`` writes into preallocated outputs (``out=``), and
``variant="fresh"`` allocates them (on the CPU a fresh large tensor costs page faults that
can take longer than the copy itself; our native CPU ops put fresh outputs of 2 MiB or more
on transparent huge pages, see ``thp`` in the run's metadata). In-place ops (``running_median_``, ``ring_step_``)
have one ``variant="inplace"``. Peers get an ``out`` row where their API allows one.

Peak memory (``peak_bytes``): on CUDA ``torch.cuda.max_memory_allocated`` minus the memory
allocated before the timed calls; on the CPU the growth of the process's resident-set
high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over the resident set
before the timed calls. The CPU figure counts pages touched, so memory that the allocator
reuses without returning it to the system is not seen; ``mem_method`` says which was used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional

# torch.compile's on-disk cache of compiled kernels: one per ATEN_CPU_CAPABILITY. A sweep
# run with ATEN_CPU_CAPABILITY=avx2 (to time our AVX2 build) and a default-capability sweep
# after it on the same cache ended in "double free or corruption" when a compiled peer's
# fresh output was freed, on an AVX-512 machine (torch 2.14.1); clearing the cache cured it.
if os.environ.get("ATEN_CPU_CAPABILITY") and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"torchinductor_cgh_bench_{os.environ['ATEN_CPU_CAPABILITY']}"
    )

import torch  # noqa: E402

from . import peers as peers_mod  # noqa: E402

OPS = (
    "median3",
    "median_of_means",
    "foreach_median_of_means",
    "trimmed_mean",
    "winsorized_mean",
    "running_median_",
    "ring_step_",
)
GROUPS = 3
LIST_LEN = 32  # tensors in the list of the foreach / ring_step_ ops
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
# Peers that sort or stack: memory grows with k*n (int64 indices), so they get a memory check.
STACKING_PEERS = ("torch.median", "torch.quantile", "torch.sort")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of the calls between ``start()`` and ``stop()`` (see the module docs)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.base = 0
        if device.type == "cuda":
            self.method = "torch.cuda.max_memory_allocated"
        elif _can_reset_hwm():
            self.method = "VmHWM delta (/proc)"
        else:
            self.method = "unavailable"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        elif self.method != "unavailable":
            _reset_hwm()
            self.base = _proc_status_kib("VmRSS") * 1024

    def stop(self) -> Optional[int]:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.base
        if self.method == "unavailable":
            return None
        return max(0, _proc_status_kib("VmHWM") * 1024 - self.base)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # 5: reset the peak resident set size to the current one


def _can_reset_hwm() -> bool:
    try:
        _reset_hwm()
        _proc_status_kib("VmHWM")
        return True
    except OSError:
        return False


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


# ---------------------------------------------------------------------------- timing
def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure(fn: Callable, device: torch.device, args, warmup: Optional[int] = None) -> dict:
    """Warm ``fn`` up, then time ``repeats`` calls; repeats fill ``args.budget`` seconds
    (at least ``args.min_repeats``, at most ``args.max_repeats``). A call slower than
    ``args.slow_call`` seconds (the sort-based peers at large n) ends the warm-up and gets
    ``args.slow_repeats`` timed calls, so that one slow peer does not eat the run."""
    sync = synchronizer(device)
    warm_times = []
    for _ in range(max(1, args.warmup if warmup is None else warmup)):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        warm_times.append(time.perf_counter() - t0)
        if warm_times[-1] > args.slow_call and len(warm_times) >= (warmup or 1):
            break
    per_call = max(warm_times[-1], 1e-7)
    if per_call > args.slow_call:
        repeats = args.slow_repeats
    else:
        repeats = int(min(args.max_repeats, max(args.min_repeats, args.budget // per_call)))
    mem = PeakMemory(device)
    mem.start()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {
        "seconds": statistics.median(times),
        "seconds_min": min(times),
        "repeats": repeats,
        "first_call_seconds": warm_times[0],
        "peak_bytes": mem.stop(),
        "mem_method": mem.method,
    }


# ---------------------------------------------------------------------------- problems
def split_sizes(n: int, parts: int) -> list[int]:
    """``n`` split into ``parts`` uneven sizes (weights 1, 2, 4, ..., 128, repeating), like a
    model's parameter list of small and large tensors."""
    parts = max(1, min(parts, n))
    weights = [2 ** (i % 8) for i in range(parts)]
    sizes = [max(1, n * w // sum(weights)) for w in weights]
    sizes[-1] += n - sum(sizes)
    return sizes


def trim_for(k: int) -> int:
    """Values cut at each end for the trimmed/winsorized means: 1 of 3 or 5, 2 of 9."""
    return max(1, k // 4)


def make_problem(op: str, n: int, k: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """Inputs (``data``), preallocated outputs (``out``) and bytes moved for one case."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype, device=device)

    e = torch.empty((), dtype=dtype).element_size()
    if op == "median3":
        data = {"a": randn(n), "b": randn(n), "c": randn(n)}
        return {"data": data, "out": torch.empty(n, dtype=dtype, device=device), "bytes": 4 * n * e}
    if op in ("median_of_means", "trimmed_mean", "winsorized_mean"):
        data = {"x": randn(k, n), "groups": GROUPS, "trim": trim_for(k)}
        return {"data": data, "out": torch.empty(n, dtype=dtype, device=device), "bytes": (k + 1) * n * e}
    if op == "foreach_median_of_means":
        xs = [randn(k, s) for s in split_sizes(n, LIST_LEN)]
        out = [torch.empty(x.shape[1:], dtype=dtype, device=device) for x in xs]
        return {"data": {"xs": xs, "groups": GROUPS}, "out": out, "bytes": (k + 1) * n * e}
    if op == "running_median_":
        data = {"grad": randn(n), "history": [randn(n) for _ in range(k - 1)], "slot": 0}
        # reads grad and k-1 history tensors; writes grad and one history slot
        return {"data": data, "out": None, "bytes": (k + 2) * n * e}
    if op == "ring_step_":
        sizes = split_sizes(n, LIST_LEN)
        params = [randn(s) for s in sizes]
        grads = [randn(s) for s in sizes]
        history = [randn(s) for s in sizes for _ in range(k - 1)]  # history[i * R + j]
        data = {"params": params, "grads": grads, "history": history, "slot": 0, "lr": 1e-4, "wd": 1e-4}
        # reads param, grad and k-1 history tensors; writes param and one history slot
        return {"data": data, "out": None, "bytes": (k + 3) * n * e}
    raise ValueError(f"unknown op {op!r}")


def ours(op: str, data: dict, out) -> Callable[[], object]:
    """Our op on ``data`` through the public wrappers (which honour ``set_cuda_backend``)."""
    import cgh_ops

    if op == "median3":
        return lambda: cgh_ops.median3(data["a"], data["b"], data["c"], out=out)
    if op == "median_of_means":
        return lambda: cgh_ops.median_of_means(data["x"], data["groups"], out=out)
    if op == "foreach_median_of_means":
        return lambda: cgh_ops.foreach_median_of_means(data["xs"], data["groups"], out=out)
    if op == "trimmed_mean":
        return lambda: cgh_ops.trimmed_mean(data["x"], data["trim"], out=out)
    if op == "winsorized_mean":
        return lambda: cgh_ops.winsorized_mean(data["x"], data["trim"], out=out)
    if op == "running_median_":
        return lambda: cgh_ops.running_median_(data["grad"], data["history"], data["slot"])
    if op == "ring_step_":
        d = data
        return lambda: cgh_ops.ring_step_(d["params"], d["grads"], d["history"], d["slot"], d["lr"], d["wd"], "median")
    raise ValueError(f"unknown op {op!r}")


def in_place(op: str) -> bool:
    return op in ("running_median_", "ring_step_")


def kernel_kind(op: str, backend: str) -> str:
    """Which implementation ``backend`` runs for ``op``: ``native`` or the ``reference`` fallback."""
    if backend == "triton":
        from cgh_ops import ops as cgh_public

        return "triton" if (op, "default") in cgh_public.TRITON_KERNELS else "reference"
    key = "CPU" if backend == "cpu" else "CUDA"
    return "native" if torch._C._dispatch_has_kernel_for_dispatch_key(f"cgh::{op}", key) else "reference"


def our_backends(device: torch.device) -> list[str]:
    if device.type == "cpu":
        return ["cpu"]
    backends = ["cuda"]
    try:
        import cgh_ops

        cgh_ops.set_cuda_backend("triton")
        cgh_ops.set_cuda_backend("cuda")
        backends.append("triton")
    except (RuntimeError, ImportError) as exc:
        log(f"[bench] triton backend unavailable: {exc}")
    return backends


def peer_memory_estimate(op: str, backend: str, n: int, k: int, e: int) -> int:
    """Generous upper bound of a stacking peer's temporaries (stack, int64 indices, upcast)."""
    if backend not in STACKING_PEERS:
        return 0
    return k * n * (e + 8 + 4) + n * 8


# ---------------------------------------------------------------------------- the run
class Runner:
    def __init__(self, args):
        self.args = args
        self.records: list[dict] = []
        self.skipped: list[str] = []

    def copy_reference(self, device, dtype, nbytes: int) -> dict:
        """Time ``dst.copy_(src)`` moving ``nbytes`` (read + write). Measured for every case,
        right before and right after its variants (a shared machine drifts within minutes)."""
        e = torch.empty((), dtype=dtype).element_size()
        numel = max(1, nbytes // (2 * e))
        src = torch.randn(numel, dtype=dtype, device=device)
        dst = torch.empty_like(src)
        m = measure(lambda: dst.copy_(src), device, self.args)
        del src, dst
        gbps = 2 * numel * e / m["seconds"] / 1e9
        return dict(op="copy", backend="torch", variant="out", kernel="aten", device=device.type, n=numel, k=1,
                    dtype=_dtype_name(dtype), bytes=2 * numel * e, gbps=gbps, frac_of_copy=1.0, **m)

    def run_case(self, op, n, k, dtype, device, backends, peer_names):
        args = self.args
        e = torch.empty((), dtype=dtype).element_size()
        prob = make_problem(op, n, k, dtype, device, seed=args.seed)
        copy_before = self.copy_reference(device, dtype, prob["bytes"])
        copy = copy_before["gbps"]  # until the copy after the variants is measured
        variants: list[tuple[str, str, str, Callable]] = []  # (backend, variant, kernel, fn)
        for b in backends:
            kind = kernel_kind(op, b)
            if in_place(op):
                variants.append((b, "inplace", kind, ours(op, prob["data"], None)))
            else:
                variants.append((b, "out", kind, ours(op, prob["data"], prob["out"])))
                variants.append((b, "fresh", kind, ours(op, prob["data"], None)))
        for p in peer_names:
            for variant, out in ((("inplace", None),) if in_place(op) else (("out", prob["out"]), ("fresh", None))):
                fn = peers_mod.peer(op, p, prob["data"], out)
                if fn is not None:
                    variants.append((p, variant, "peer", fn))
        avail = available_memory(device)
        case_records: list[dict] = []
        for backend, variant, kind, fn in variants:
            label = f"{op} k={k} {_dtype_name(dtype)} n=2^{int(math.log2(n))} {backend}/{variant}"
            need = peer_memory_estimate(op, backend, n, k, e)
            if need > args.mem_fraction * avail:
                self._skip(label, f"needs ~{need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available")
                continue
            cap = args.peer_max_log2.get(backend)
            if cap is not None and n > 1 << cap:
                self._skip(label, f"{backend} runs up to n=2^{cap} in this run (--peer-max-log2)")
                continue
            if backend in ("cuda", "triton"):
                import cgh_ops

                cgh_ops.set_cuda_backend(backend)
            try:
                # torch.compile compiles in its first call: always warm it twice
                m = measure(fn, device, args, warmup=max(2, args.warmup) if backend == "torch.compile" else None)
            except (RuntimeError, MemoryError, NotImplementedError) as exc:
                self._skip(label, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                continue
            finally:
                if backend in ("cuda", "triton"):
                    cgh_ops.set_cuda_backend("cuda")
            gbps = prob["bytes"] / m["seconds"] / 1e9
            rec = dict(op=op, backend=backend, variant=variant, kernel=kind, device=device.type, n=n, k=k,
                       dtype=_dtype_name(dtype), bytes=prob["bytes"], gbps=gbps, **m)
            if op in ("median_of_means", "foreach_median_of_means"):
                rec["groups"] = GROUPS
            if op in ("trimmed_mean", "winsorized_mean"):
                rec["trim"] = trim_for(k)
            if op in ("foreach_median_of_means", "ring_step_"):
                rec["list_len"] = min(LIST_LEN, n)
            case_records.append(rec)
            log(f"[bench] {label}: {m['seconds'] * 1e3:.3f} ms  {gbps:.2f} GB/s  {gbps / copy:.2f} of copy"
                f"  (x{m['repeats']})")
        del prob
        # The case's copy reference: the faster of the copies before and after its variants
        # (the harder bar), so that a slow spell of the machine cannot flatter a fraction.
        copy_after = self.copy_reference(device, dtype, copy_before["bytes"])
        ref = max(copy_before, copy_after, key=lambda c: c["gbps"])
        self.records.append(dict(ref, case=f"{op} k={k} n={n}", gbps_before=copy_before["gbps"],
                                 gbps_after=copy_after["gbps"]))
        for rec in case_records:
            rec.update(copy_gbps=ref["gbps"], frac_of_copy=rec["gbps"] / ref["gbps"])
        self.records += case_records

    def _skip(self, label: str, why: str) -> None:
        self.skipped.append(f"{label}: {why}")
        log(f"[bench] skip {label}: {why}")


def _thp_setting() -> Optional[str]:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


def _machine() -> Optional[str]:
    """CPU model, core count and cache sizes, as lscpu reports them (the results depend on them)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    get = lambda key: fields.get(key, "?").strip()
    return (f"{get('Model name')}, {get('CPU(s)')} CPUs, L2 {get('L2 cache')}, L3 {get('L3 cache')}, "
            f"hypervisor: {get('Hypervisor vendor')}")


def _cpu_kernels() -> Optional[str]:
    """Which ISA build of our CPU kernels ran (cgh_ops._C.cpu_capability), if the extension loaded."""
    try:
        from cgh_ops import _C
    except ImportError:
        return None
    return _C.cpu_capability


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def print_table(records: list[dict], file=None) -> None:
    file = file or sys.stdout
    header = f"{'op':<24}{'k':>3} {'dtype':<9}{'n':>6}  {'backend':<15}{'variant':<8}{'kernel':<10}" \
             f"{'ms':>11}{'GB/s':>9}{'of copy':>9}{'peak MB':>10}"
    print(header, file=file)
    print("-" * len(header), file=file)
    for r in records:
        if r["op"] == "optimizer_step":
            continue
        peak = "" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.1f}"
        print(f"{r['op']:<24}{r['k']:>3} {r['dtype']:<9}{'2^' + str(int(math.log2(r['n']))) if r['n'] & (r['n'] - 1) == 0 else r['n']:>6}  "
              f"{r['backend']:<15}{r['variant']:<8}{r['kernel']:<10}{r['seconds'] * 1e3:>11.3f}{r['gbps']:>9.2f}"
              f"{r['frac_of_copy']:>9.3f}{peak:>10}", file=file)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="small sweep (n = 2^16 and 2^24; k = 3; float32; every op, backend and peer)")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated ops (default: all)")
    p.add_argument("--peers", default=",".join(peers_mod.PEERS), help="comma-separated peers, '' for none")
    p.add_argument("--sizes", type=int, nargs="+", help="log2 of n (default: 16..27 on CPU, 16..30 on GPU)")
    p.add_argument("--ks", type=int, nargs="+", default=[3, 5, 9], help="values per coordinate (groups = 3)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=sorted(DTYPES))
    p.add_argument("--devices", nargs="+", help="cpu and/or cuda (default: cpu, and cuda when present)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (torch.compile compiles there)")
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--slow-call", type=float, default=0.5, help="seconds: a call slower than this is 'slow'")
    p.add_argument("--slow-repeats", type=int, default=3, help="timed calls of a slow variant")
    p.add_argument("--max-repeats", type=int, default=50)
    p.add_argument("--budget", type=float, default=0.5, help="seconds of timed calls per variant (before clamping)")
    p.add_argument("--mem-fraction", type=float, default=0.5,
                   help="skip a stacking peer whose temporaries would exceed this fraction of free memory")
    p.add_argument("--peer-max-log2", nargs="*", default=[], metavar="PEER=LOG2",
                   help="largest log2(n) for a peer, e.g. torch.quantile=22 (the sorting peers are 100x slower "
                        "than a copy; this keeps a long sweep short)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the records (a JSON list) here")
    p.add_argument("--append", action="store_true",
                   help="add the records to those already in --json (each record keeps its run's command)")
    p.add_argument("--no-optimizer-step", action="store_true", help="skip the ResNet-50 optimizer-step benchmark")
    args = p.parse_args(argv)
    try:
        args.peer_max_log2 = {k: int(v) for k, v in (item.split("=") for item in args.peer_max_log2)}
    except ValueError:
        p.error("--peer-max-log2 takes PEER=LOG2 items, e.g. torch.quantile=22")
    if args.quick:
        args.sizes = args.sizes or [16, 24]
        args.ks = [3]
        args.dtypes = ["float32"]
        args.budget = 0.15
        args.max_repeats = 20
        args.slow_repeats = 1
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "extension not built": recorded per row instead
        import cgh_ops  # noqa: F401  (defines torch.ops.cgh)

    devices = [torch.device(d) for d in (args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])))]
    ops = [o for o in args.ops.split(",") if o]
    peer_names = [p for p in args.peers.split(",") if p]
    for o in ops:
        if o not in OPS:
            raise SystemExit(f"unknown op {o!r}; choose from {OPS}")
    for p in peer_names:
        if p not in peers_mod.PEERS:
            raise SystemExit(f"unknown peer {p!r}; choose from {peers_mod.PEERS}")

    runner = Runner(args)
    started = time.perf_counter()
    log(f"[bench] torch {torch.__version__}, {torch.get_num_threads()} threads, devices {[str(d) for d in devices]}")
    for device in devices:
        sizes = args.sizes or list(range(16, 31 if device.type == "cuda" else 28))
        backends = our_backends(device)
        for log_n in sizes:
            for dtype_name in args.dtypes:
                for op in ops:
                    for k in ([3] if op == "median3" else args.ks):
                        runner.run_case(op, 1 << log_n, k, DTYPES[dtype_name], device, backends, peer_names)
    if not args.no_optimizer_step:
        from . import optimizer_step

        for device in devices:
            runner.records += optimizer_step.run(device, quick=args.quick, log=log)

    print_table(runner.records)
    if not args.no_optimizer_step:
        from . import optimizer_step

        optimizer_step.print_table([r for r in runner.records if r["op"] == "optimizer_step"])
    if runner.skipped:
        print(f"\nskipped ({len(runner.skipped)}):", *runner.skipped, sep="\n  ")
    log(f"[bench] done in {time.perf_counter() - started:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                "argv": sys.argv[1:] if argv is None else argv, "thp": _thp_setting(),
                "machine": _machine(), "cpu_kernels": _cpu_kernels(),
                "CGH_OPS_HUGE_PAGES": os.environ.get("CGH_OPS_HUGE_PAGES"),
                "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE")}
        for r in runner.records:
            r.setdefault("run", meta)
        records = runner.records
        if args.append and os.path.exists(args.json):
            with open(args.json) as f:
                records = json.load(f) + records
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
        log(f"[bench] wrote {len(runner.records)} records to {args.json}")
    return runner.records


if __name__ == "__main__":
    main()
