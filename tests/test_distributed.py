"""cgh_ops.distributed: the median DDP communication hook, on real gloo process groups.

Each world size is one launch of fresh processes (forked from a forkserver; loopback only,
rendezvous through a TCPStore that the test process serves on a free port) that runs every
scenario in turn and saves what it saw; the tests below compare that with a
single-process computation made with ``cgh_ops.median_of_means``. Launches are bounded by
a deadline and then killed, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import cgh_ops
from cgh_ops.distributed import MedianState, all_reduce_median_, install_median_hook, median_hook

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

LAUNCH_DEADLINE_S = 120  # one launch (start + all scenarios) takes 5-15 s on 2 busy cores
PG_TIMEOUT_S = 30
KILL_PG_TIMEOUT_S = 5
STEPS = 3  # training steps; > 1 so that DDP's bucket rebuild after the first one is covered
LR = 0.1
BATCH = 8
# ~25 float32 per bucket: several buckets, most of a size that no world size divides.
BUCKET_CAP_MB = 1e-4
PIECE_SIZES = (1, 11, 12, 13, 16, 17, 48, 50)  # with piece_shard=4: one, several, padded last pieces
OTHER_DTYPES = (torch.float16, torch.bfloat16, torch.float64)


# ---------------------------------------------------------------------- shared helpers
def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 5), nn.Tanh(), nn.Linear(5, 3))


def batch(rank: int, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + 10 * rank + micro)
    return torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)


def loss_of(model: nn.Module, rank: int, step: int, micro: int = 0) -> torch.Tensor:
    x, y = batch(rank, step, micro)
    return nn.functional.mse_loss(model(x), y)


def local_grads(model: nn.Module, rank: int, step: int, micros: int = 1, scale: float = 1.0) -> list[torch.Tensor]:
    """The gradient rank ``rank`` computes on its own at ``step`` (summed over micro-batches)."""
    model.zero_grad(set_to_none=True)
    for micro in range(micros):
        (loss_of(model, rank, step, micro) * scale).backward()
    return [p.grad.clone() for p in model.parameters()]


def median_over_ranks(per_rank: list[list[torch.Tensor]], groups: int, nan: str = "propagate") -> list[torch.Tensor]:
    """Parameter by parameter: median_of_means of the ranks' gradients, computed on one process."""
    return [
        cgh_ops.median_of_means(torch.stack(gs), groups, nan=nan) for gs in zip(*per_rank)
    ]


def ddp(model: nn.Module, **kwargs) -> nn.parallel.DistributedDataParallel:
    return nn.parallel.DistributedDataParallel(model, bucket_cap_mb=BUCKET_CAP_MB, **kwargs)


def recording_hook(log: list):
    """median_hook that also records (iteration, bucket index, bucket size)."""

    def hook(state, bucket):  # unannotated: DDP rejects annotations other than GradBucket objects
        log.append((state.iteration, bucket.index(), bucket.buffer().numel()))
        return median_hook(state, bucket)

    return hook


# ---------------------------------------------------------------------- worker scenarios
def scenario_bitwise(rank: int, world: int) -> dict:
    """Two iterations (before and after the bucket rebuild), groups = world and groups = 2
    (the latter with gradient_as_bucket_view, where the bucket is the .grad storage, and
    with pieces of 5 elements per rank, so that buckets go in several pieces, the last padded)."""
    out = {"local": [], "ddp": [], "buckets": []}
    for groups in (None, 2):
        model = ddp(make_model(), gradient_as_bucket_view=groups is not None)
        state = MedianState(groups=groups) if groups is None else MedianState(groups=groups, piece_shard=5)
        log: list = []
        model.register_comm_hook(state, recording_hook(log))
        reference = make_model()
        for step in range(2):
            out["local"].append(local_grads(reference, rank, step))
            model.zero_grad(set_to_none=True)
            loss_of(model, rank, step).backward()
            out["ddp"].append([p.grad.clone() for p in model.parameters()])
        out["buckets"].append(log)
    return out


def piece_input(rank: int, n: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(100 + rank))


def scenario_pieces(rank: int, world: int) -> dict:
    """Direct calls: sizes around multiples of the piece size, with and without padding;
    then the other float dtypes DDP buckets can hold (mixed precision, float64)."""
    out = {}
    for n in PIECE_SIZES:
        t = piece_input(rank, n)
        out[n] = all_reduce_median_(t, MedianState(piece_shard=4), check=True).clone()
    for dtype in OTHER_DTYPES:
        t = piece_input(rank, 37).to(dtype)
        out[dtype] = all_reduce_median_(t, MedianState(piece_shard=4), check=True).clone()
    return out


def scenario_garbage(rank: int, world: int) -> dict:
    """The last rank scales its loss by 1e30 (then by NaN, with nan='omit')."""
    out = {}
    for name, scale, nan in (("huge", 1e30, "propagate"), ("nan", float("nan"), "omit")):
        model = ddp(make_model())
        install_median_hook(model, nan=nan)
        model.zero_grad(set_to_none=True)
        (loss_of(model, rank, 0) * (scale if rank == world - 1 else 1.0)).backward()
        out[name] = [p.grad.clone() for p in model.parameters()]
    out["honest"] = local_grads(make_model(), rank, 0)
    return out


def scenario_training(rank: int, world: int) -> dict:
    """STEPS SGD steps, each of two micro-batches, the first one under no_sync."""
    model = ddp(make_model())
    install_median_hook(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        with model.no_sync():
            loss_of(model, rank, step, 0).backward()
        loss_of(model, rank, step, 1).backward()
        opt.step()
    return {"params": [p.detach().clone() for p in model.parameters()]}


def scenario_mismatch(rank: int, world: int) -> dict:
    """Rank 0 disagrees (nan mode in DDP; tensor size in a direct call): all must raise, none hang.

    DDP itself syncs its bucket layout from rank 0 when it rebuilds the buckets, so a
    differently configured hook is the way ranks diverge under DDP.
    """
    out = {}
    model = ddp(make_model())
    install_median_hook(model, nan="omit" if rank == 0 else "propagate")
    try:
        loss_of(model, rank, 0).backward()
        out["ddp"] = None
    except RuntimeError as exc:
        out["ddp"] = str(exc)
    try:
        all_reduce_median_(torch.zeros(10 + (rank == 0)), MedianState(), check=True)
        out["direct"] = None
    except RuntimeError as exc:
        out["direct"] = str(exc)
    return out


SCENARIOS = {
    "bitwise": scenario_bitwise,
    "pieces": scenario_pieces,
    "garbage": scenario_garbage,
    "training": scenario_training,
    "mismatch": scenario_mismatch,  # last: it leaves a DDP model in a failed backward
}


def init_worker(rank: int, world: int, port: int, timeout_s: float) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    torch.set_num_threads(1)  # same float summation order as the single-process reference
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=datetime.timedelta(seconds=timeout_s))
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
    )


def scenarios_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    init_worker(rank, world, port, PG_TIMEOUT_S)
    results = {}
    for name, fn in SCENARIOS.items():
        try:
            results[name] = fn(rank, world)
        except Exception:  # recorded, so the test names the scenario and the rank
            results[name] = {"exception": traceback.format_exc()}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def failing_rank_worker(rank: int, world: int, port: int, out_dir: str, mode: str) -> None:
    """One good iteration; then the last rank dies ('kill') or stalls ('stall') and the
    others' next backward must fail: at once for a closed connection, at the timeout for a stall."""
    init_worker(rank, world, port, KILL_PG_TIMEOUT_S)
    model = ddp(make_model())
    install_median_hook(model)
    loss_of(model, rank, 0).backward()
    dist.barrier()
    if rank == world - 1:
        if mode == "kill":
            os._exit(0)
        # Stall until the others have reported (or long past their timeout), then vanish.
        others = [os.path.join(out_dir, f"rank{r}.pt") for r in range(world - 1)]
        end = time.monotonic() + 6 * KILL_PG_TIMEOUT_S
        while time.monotonic() < end and not all(map(os.path.exists, others)):
            time.sleep(0.1)
        os._exit(0)
    time.sleep(0.5)  # let a dying rank close its connections
    start = time.monotonic()
    try:
        loss_of(model, rank, 1).backward()
        error = None
    except Exception as exc:  # whatever the transport raises, it must be raised
        error = f"{type(exc).__name__}: {exc}"
    torch.save({"error": error, "seconds": time.monotonic() - start}, os.path.join(out_dir, f"rank{rank}.tmp"))
    os.replace(os.path.join(out_dir, f"rank{rank}.tmp"), os.path.join(out_dir, f"rank{rank}.pt"))
    os._exit(0)  # skip tearing down a broken process group


def launch(worker, world: int, out_dir: str, *args, deadline_s: float = LAUNCH_DEADLINE_S) -> list[dict | None]:
    """Run ``worker`` on ``world`` fresh processes; the results each saved (None if it saved none)."""
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
    # forkserver: a clean single-threaded server imports torch once (DDP's first
    # construction imports torch._dynamo, ~5 s per process on a busy machine) and forks
    # every rank of every launch from it; the ranks start as fresh as with spawn.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "torch.nn.parallel", "cgh_ops.distributed", __name__])
    procs = [ctx.Process(target=worker, args=(r, world, store.port, out_dir, *args), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    end = time.monotonic() + deadline_s
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} were still running after {deadline_s} s"
    results = []
    for r in range(world):
        path = os.path.join(out_dir, f"rank{r}.pt")
        results.append(torch.load(path) if os.path.exists(path) else None)
    return results


@pytest.fixture(scope="module", params=[3, 4], ids=lambda w: f"world{w}")
def run(request, tmp_path_factory):
    world = request.param
    results = launch(scenarios_worker, world, str(tmp_path_factory.mktemp(f"world{world}")))
    for r, res in enumerate(results):
        assert res is not None, f"rank {r} saved no results"
    return world, results


def scenario(run, name: str) -> tuple[int, list[dict]]:
    world, results = run
    per_rank = []
    for r, res in enumerate(results):
        got = res.get(name)
        assert got is not None, f"rank {r} did not reach scenario {name!r}"
        assert "exception" not in got, f"scenario {name!r} failed on rank {r}:\n{got['exception']}"
        per_rank.append(got)
    return world, per_rank


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: bitwise-comparable float sums
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------- tests
def test_every_rank_gets_bitwise_median_of_local_gradients(run, one_thread):
    """Core contract: DDP grads == median_of_means of the ranks' own grads, bit for bit."""
    world, res = scenario(run, "bitwise")
    n_iter = len(res[0]["local"])
    for it in range(n_iter):
        groups = world if it < n_iter // 2 else 2
        expected = median_over_ranks([r["local"][it] for r in res], groups)
        for rank, r in enumerate(res):
            for i, (got, want) in enumerate(zip(r["ddp"][it], expected)):
                assert torch.equal(got, want), f"rank {rank}, iteration {it}, param {i}, groups {groups}"


def test_pieces_give_bitwise_median(run):
    """Pipelining: a tensor cut into pieces (last one padded) still gets the exact median."""
    world, res = scenario(run, "pieces")
    for n in PIECE_SIZES:
        expected = cgh_ops.median_of_means(torch.stack([piece_input(r, n) for r in range(world)]), world)
        for rank, r in enumerate(res):
            assert torch.equal(r[n], expected), f"rank {rank}, n = {n}"


@pytest.mark.parametrize("dtype", OTHER_DTYPES, ids=str)
def test_other_dtypes_give_bitwise_median(run, dtype):
    """Mixed precision: float16/bfloat16 (and float64) buckets go through gloo and the op exactly."""
    world, res = scenario(run, "pieces")
    expected = cgh_ops.median_of_means(torch.stack([piece_input(r, 37).to(dtype) for r in range(world)]), world)
    for rank, r in enumerate(res):
        assert r[dtype].dtype == dtype and torch.equal(r[dtype], expected), f"rank {rank}"


def test_buckets_exercise_padding_and_rebuild(run):
    """Coverage: the bitwise case saw buckets no world size divides, before and after the rebuild."""
    world, res = scenario(run, "bitwise")
    log = res[0]["buckets"][0]
    sizes = {(it, size) for it, _, size in log}
    assert {it for it, _ in sizes} == {0, 1}
    assert any(size % world for _, size in sizes)
    assert len([1 for it, _, _ in log if it == 1]) > 1, "expected several buckets per iteration"


@pytest.mark.parametrize("case", ["huge", "nan"])
def test_garbage_rank_stays_within_honest_range(run, case):
    """Robustness: one rank sending 1e30-scaled (or NaN, nan='omit') grads cannot escape the honest range."""
    world, res = scenario(run, "garbage")
    honest = [r["honest"] for r in res[: world - 1]]
    for rank, r in enumerate(res):
        for i, got in enumerate(r[case]):
            stacked = torch.stack([h[i] for h in honest])
            lo, hi = stacked.min(0).values, stacked.max(0).values
            assert torch.isfinite(got).all(), f"rank {rank}, param {i}"
            assert ((got >= lo) & (got <= hi)).all(), f"rank {rank}, param {i}: outside the honest range"


def test_training_matches_single_process_simulation(run, one_thread):
    """End to end: SGD steps with no_sync accumulation == the same ranks simulated in one process."""
    world, res = scenario(run, "training")
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for step in range(STEPS):
        per_rank = [local_grads(model, rank, step, micros=2) for rank in range(world)]
        for p, g in zip(model.parameters(), median_over_ranks(per_rank, world)):
            p.grad = g
        opt.step()
    for rank, r in enumerate(res):
        for i, (got, want) in enumerate(zip(r["params"], model.parameters())):
            assert torch.equal(got, want.detach()), f"rank {rank}, param {i}"


@pytest.mark.parametrize("case", ["ddp", "direct"])
def test_mismatched_ranks_raise_on_every_rank(run, case):
    """Failure mode: ranks that disagree on settings or bucket sizes get a clear error, not a hang or garbage."""
    world, res = scenario(run, "mismatch")
    for rank, r in enumerate(res):
        assert r[case] is not None, f"rank {rank} did not raise"
        assert "ranks disagree on " + ("gradient bucket 0" if case == "ddp" else "argument 'tensor'") in r[case]


@pytest.mark.parametrize("mode", ["kill", "stall"])
def test_failed_rank_gives_error_in_bounded_time(tmp_path, mode):
    """Failure mode: a rank that dies or stalls makes the others' backward raise within the PG timeout."""
    world = 3
    results = launch(failing_rank_worker, world, str(tmp_path), mode, deadline_s=60)
    for rank, r in enumerate(results[: world - 1]):
        assert r is not None, f"surviving rank {rank} saved no result"
        assert r["error"] is not None, f"rank {rank}: backward succeeded without the last rank"
        assert r["seconds"] < KILL_PG_TIMEOUT_S + 10, f"rank {rank} took {r['seconds']:.1f} s to fail"
        print(f"{mode}: rank {rank} failed after {r['seconds']:.2f} s: {r['error'][:120]}")


# ---------------------------------------------------------------------- single-process checks
def test_state_rejects_bad_arguments():
    """Errors name the argument, before any communication."""
    with pytest.raises(ValueError, match="argument 'nan'"):
        MedianState(nan="ignore")
    with pytest.raises(ValueError, match="argument 'groups'"):
        MedianState(groups=0)
    with pytest.raises(TypeError, match="argument 'groups'"):
        MedianState(groups=2.0)
    with pytest.raises(TypeError, match="argument 'ddp_model'"):
        install_median_hook(nn.Linear(2, 2))


def test_world_size_one_is_identity(tmp_path):
    """Degenerate world: the median of one rank's gradient is that gradient, untouched."""
    if dist.is_initialized():
        pytest.skip("another test left a default process group in this process")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="argument 'groups'"):
            MedianState(groups=2)
        model = ddp(make_model())
        install_median_hook(model, nan="omit")
        loss_of(model, 0, 0).backward()
        for got, want in zip((p.grad for p in model.parameters()), local_grads(make_model(), 0, 0)):
            assert torch.equal(got, want)
        t = torch.tensor([1.0, float("nan")])
        assert all_reduce_median_(t, MedianState(), check=True) is t
    finally:
        dist.destroy_process_group()
