"""The thin training loop: one method on one data set, with memorization monitoring.

Each epoch: train on the noisy labels, then score the model on pristine training examples,
on corrupt ones against their noisy labels (memorization), and on the test set; record
per example the epoch it was first learned and the start of its last unbroken run of
correct predictions; write metrics.csv and a checkpoint. ``run(config)`` returns the
summary dict that it also writes to ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Optional

import torch
import torch.nn.functional as F

from . import data as data_mod
from . import models, report
from .config import RESUMABLE, Config, ConfigError, resolve

CHECKPOINT = "checkpoint.pt"
OUTPUT_FILES = ("metrics.csv", "summary.json", "labels.csv", "examples.csv", "curves.png", CHECKPOINT)


# ------------------------------------------------------------------ distributed set-up
def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(cfg: Config, local_rank: int, world: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if cfg.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device: {cfg.device} requested but CUDA is not available")
        return torch.device("cuda", local_rank) if world > 1 else torch.device(cfg.device)
    return torch.device("cpu")


def _broadcast(obj, world: int):
    if world == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------ output folder
def default_out() -> str:
    """runs/<timestamp>, with a suffix if that exists: reruns never collide."""
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    out, n = base, 1
    while os.path.exists(out):
        out, n = f"{base}-{n}", n + 1
    return out


def check_out(out: str, resume: bool, overwrite: bool) -> None:
    """Refuses to write into a non-empty folder unless resuming or overwriting."""
    if resume:
        if not os.path.isfile(os.path.join(out, CHECKPOINT)):
            raise ConfigError(f"--resume: no {CHECKPOINT} in --out {out!r}")
        return
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out: {out!r} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ConfigError(f"--out: {out!r} exists and is not empty; pass --overwrite to replace its results, or --resume")


def _clear_outputs(out: str) -> None:
    """--overwrite: remove what an earlier run wrote here (and nothing else)."""
    for name in OUTPUT_FILES:
        path = os.path.join(out, name)
        if os.path.isfile(path):
            os.remove(path)


def _check_resume_config(saved: dict, cfg: Config) -> None:
    now = cfg.to_dict()
    for key, value in saved.items():
        if key in RESUMABLE or key == "out":
            continue
        if now.get(key) != value:
            raise ConfigError(
                f"--{key.replace('_', '-')}: the checkpoint was made with {value!r}, this run has {now.get(key)!r}; "
                "--resume continues the same configuration (start a new --out to change it)"
            )
    if cfg.lr_schedule == "cosine" and saved["epochs"] != cfg.epochs:
        raise ConfigError("--epochs: cannot change on --resume with --lr-schedule cosine (the schedule spans the run)")


# ------------------------------------------------------------------ pieces
def build_optimizer(cfg: Config, params):
    if cfg.method == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    from cgh_ops.optim import M3, RA3, RM3

    cls = {"m3": M3, "rm3": RM3, "ra3": RA3}[cfg.method]
    return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, k=cfg.k)


def build_scheduler(cfg: Config, optimizer):
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=0.1)
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs)
    return None


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> torch.Tensor:
    """This rank's training indices for ``epoch``: a permutation that depends only on
    (seed, epoch), padded so every rank gets the same count (as DistributedSampler)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100003 + epoch))
    total = math.ceil(n / world) * world
    if total > n:
        perm = torch.cat([perm, perm[: total - n]])
    return perm[rank::world]


@torch.no_grad()
def _score(model, split, indices, labels, batch_size, device, autocast, workers, rank, world):
    """Per-example (loss, correct) for ``indices``, computed in shards across ranks."""
    model.eval()
    shard = indices[rank::world]
    losses, correct = [], []
    for x, idx in split.batches(shard, batch_size, workers, device.type == "cuda"):
        x = x.to(device, non_blocking=True)
        y = labels[idx].to(device)
        with autocast():
            logits = model(x)
        losses.append(F.cross_entropy(logits.float(), y, reduction="none").cpu())
        correct.append((logits.argmax(1) == y).cpu())
    loss = torch.cat(losses) if losses else torch.zeros(0)
    ok = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
    if world > 1:
        parts = [None] * world
        torch.distributed.all_gather_object(parts, (loss, ok))
        full_loss, full_ok = torch.empty(len(indices)), torch.empty(len(indices), dtype=torch.bool)
        for r, (l_r, c_r) in enumerate(parts):
            full_loss[r::world], full_ok[r::world] = l_r, c_r
        loss, ok = full_loss, full_ok
    return loss, ok


def _mean(t: torch.Tensor) -> Optional[float]:
    return float(t.double().mean()) if len(t) else None


# ------------------------------------------------------------------ run
def _setup(cfg: Config) -> tuple[int, int, torch.device]:
    """Checks the data and the process layout, joins torchrun's process group; (rank, world, device)."""
    rank, world, local_rank = _distributed()
    data_mod.check_data(cfg)
    if world > 1 and cfg.batch_size < world:
        raise ConfigError(f"--batch-size: {cfg.batch_size} is smaller than the {world} processes (it is the global batch)")
    device = _device(cfg, local_rank, world)
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def run(config: Config) -> dict:
    """Trains one method as configured; writes the outputs; returns the summary dict."""
    cfg = resolve(config)
    threads = cfg.threads or (1 if cfg.data == "digits" else None)
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(saved_threads)


def _run(cfg: Config) -> dict:
    rank, world, device = _setup(cfg)
    if cfg.out is None:
        cfg.out = _broadcast(default_out() if rank == 0 else None, world)
    check_out(cfg.out, cfg.resume, cfg.overwrite)
    if world > 1:
        torch.distributed.barrier()  # every rank has checked --out before rank 0 writes there

    ckpt = None
    if cfg.resume:
        ckpt = torch.load(os.path.join(cfg.out, CHECKPOINT), map_location="cpu", weights_only=True)
        _check_resume_config(ckpt["config"], cfg)
    elif rank == 0:
        os.makedirs(cfg.out, exist_ok=True)
        if cfg.overwrite:
            _clear_outputs(cfg.out)

    t_start = time.perf_counter()
    ds = data_mod.load(cfg)
    noisy, corrupt = data_mod.corrupt_labels(ds.train.labels, ds.num_classes, cfg.corrupt_fraction, cfg.seed)
    pristine_idx, corrupt_idx = data_mod.eval_samples(corrupt, cfg.sample_size, cfg.seed)
    if rank == 0 and ckpt is None:
        report.write_table(
            os.path.join(cfg.out, "labels.csv"),
            ["index", "original", "label", "corrupt"],
            zip(range(len(noisy)), ds.train.labels.tolist(), noisy.tolist(), corrupt.int().tolist()),
        )

    torch.manual_seed(cfg.seed)  # model init
    model = models.build(cfg.arch, ds.input_shape, ds.num_classes).to(device)
    conv = models.is_convolutional(model)
    channels_last = cfg.channels_last and device.type == "cuda" and conv
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model.parameters())
    scheduler = build_scheduler(cfg, optimizer)

    n_train = len(ds.train)
    first = torch.full((n_train,), -1, dtype=torch.int64)  # epoch first classified correctly
    last = torch.full((n_train,), -1, dtype=torch.int64)  # start of the final unbroken correct run
    rows: list[dict] = []
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        first, last = ckpt["first_learned"].clone(), ckpt["last_learned"].clone()
        rows = list(ckpt["metrics"])
        start_epoch = int(ckpt["epoch"])
        elapsed_before = float(ckpt["wall_seconds"])
    else:
        elapsed_before = 0.0

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
        if cfg.dist_aggregate == "median":
            from cgh_ops.distributed import install_median_hook  # only needed (and importable) here

            install_median_hook(train_model, groups=None)

    use_amp = cfg.amp and device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)

    per_rank_batch = cfg.batch_size // world
    eval_batch = max(per_rank_batch, 512) if ds.train.x is not None else per_rank_batch
    frac_corrupt = float(corrupt.double().mean()) if n_train else 0.0

    def evaluate(epoch: int, lr: float, train_loss: Optional[float], seconds: float) -> dict:
        args = (eval_batch, device, autocast, cfg.workers, rank, world)
        p_loss, p_ok = _score(model, ds.train, pristine_idx, noisy, *args)
        c_loss, c_ok = _score(model, ds.train, corrupt_idx, noisy, *args)
        t_loss, t_ok = _score(model, ds.test, torch.arange(len(ds.test)), ds.test.labels, *args)
        if epoch >= 1:  # learning events count from the first trained epoch
            for idx, ok in ((pristine_idx, p_ok), (corrupt_idx, c_ok)):
                newly = idx[ok & (first[idx] < 0)]
                first[newly] = epoch
                started = idx[ok & (last[idx] < 0)]
                last[started] = epoch
                last[idx[~ok]] = -1
        row = {
            "epoch": epoch, "lr": lr, "train_loss": train_loss,
            "pristine_acc": _mean(p_ok), "pristine_loss": _mean(p_loss),
            "corrupt_acc": _mean(c_ok), "corrupt_loss": _mean(c_loss),
            "test_acc": _mean(t_ok), "test_loss": _mean(t_loss), "seconds": round(seconds, 3),
        }
        # Accuracy on the (noisy) training set, estimated from the two samples by their shares.
        parts = [(w, a) for w, a in ((1 - frac_corrupt, row["pristine_acc"]), (frac_corrupt, row["corrupt_acc"]))
                 if a is not None and w > 0]
        row["train_acc"] = sum(w * a for w, a in parts) / sum(w for w, _ in parts) if parts else None
        return row

    if not rows:
        rows.append(evaluate(0, optimizer.param_groups[0]["lr"], None, 0.0))

    steps_per_epoch = math.ceil(math.ceil(n_train / world) / per_rank_batch)
    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
                   desc=f"{cfg.method}", unit="step", dynamic_ncols=True, file=sys.stderr)

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_model.train()
        lr = optimizer.param_groups[0]["lr"]
        total, count = torch.zeros((), dtype=torch.float64), 0
        order = epoch_order(n_train, cfg.seed, epoch, rank, world)
        for x, idx in ds.train.batches(order, per_rank_batch, cfg.workers, device.type == "cuda"):
            x = x.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = noisy[idx].to(device, non_blocking=True)
            with autocast():
                loss = F.cross_entropy(train_model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double().cpu() * len(idx)
            count += len(idx)
            if bar is not None:
                bar.update(1)
        if scheduler is not None:
            scheduler.step()
        row = evaluate(epoch, lr, float(total / max(count, 1)), time.perf_counter() - t0)
        rows.append(row)
        if bar is not None:
            bar.set_postfix(pristine=row["pristine_acc"], corrupt=row["corrupt_acc"], test=row["test_acc"], refresh=False)
        if rank == 0 and (epoch % cfg.log_every == 0 or epoch == cfg.epochs):
            line = (f"[{cfg.method}] epoch {epoch}/{cfg.epochs}  loss {row['train_loss']:.4f}  "
                    + "  ".join(f"{s} {report.fmt(row[s + '_acc'])}" for s in report.SETS))
            if bar is not None:
                bar.write(line)  # above the bar, without breaking it
            else:
                print(line, flush=True)
        if rank == 0:
            wall = elapsed_before + time.perf_counter() - t_start
            report.write_metrics(os.path.join(cfg.out, "metrics.csv"), rows)
            state = {
                "config": cfg.to_dict(), "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "metrics": rows, "first_learned": first, "last_learned": last, "wall_seconds": wall,
            }
            tmp = os.path.join(cfg.out, CHECKPOINT + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, os.path.join(cfg.out, CHECKPOINT))
    if bar is not None:
        bar.close()

    wall = elapsed_before + time.perf_counter() - t_start
    summary = _summary(cfg, rows, ds, corrupt, pristine_idx, corrupt_idx, first, last, wall, device, world)
    if rank == 0:
        report.write_metrics(os.path.join(cfg.out, "metrics.csv"), rows)
        report.write_table(
            os.path.join(cfg.out, "examples.csv"),
            ["index", "label", "corrupt", "first_learned", "last_learned"],
            ((int(i), int(noisy[i]), int(corrupt[i]), int(first[i]), int(last[i]))
             for i in torch.cat([pristine_idx, corrupt_idx]).sort().values),
        )
        report.plot_run(os.path.join(cfg.out, "curves.png"), rows,
                        f"{cfg.method} on {os.path.basename(cfg.data.rstrip('/'))}, {cfg.arch}, "
                        f"noise {cfg.corrupt_fraction:g}, seed {cfg.seed}")
        report.write_json(os.path.join(cfg.out, "summary.json"), summary)
    return summary


def _learned_stats(idx, first, last) -> dict:
    f = first[idx]
    ever = f >= 0
    return {
        "count": int(len(idx)),
        "ever_learned": _mean(ever),
        "first_learned_mean": _mean(f[ever].double()),
        "learned_at_end": _mean(last[idx] >= 0),
        "last_learned_mean": _mean(last[idx][last[idx] >= 0].double()),
    }


def _summary(cfg, rows, ds, corrupt, pristine_idx, corrupt_idx, first, last, wall, device, world) -> dict:
    from cgh_ops import _extension

    final = rows[-1]
    best = max(rows[1:] or rows, key=lambda r: -1 if r["test_acc"] is None else r["test_acc"])
    return {
        "method": cfg.method, "corrupt_fraction": cfg.corrupt_fraction, "seed": cfg.seed,
        "data": cfg.data, "arch": cfg.arch, "k": cfg.k, "lr": cfg.lr, "momentum": cfg.momentum,
        "batch_size": cfg.batch_size, "weight_decay": cfg.weight_decay, "epochs": cfg.epochs,
        "final": {k: final[k] for k in report.METRIC_COLUMNS if k != "seconds"},
        "best_test_acc": best["test_acc"], "best_test_epoch": best["epoch"],
        "n_train": len(ds.train), "n_test": len(ds.test), "num_classes": ds.num_classes,
        "n_corrupt": int(corrupt.sum()), "n_pristine": int((~corrupt).sum()),
        "learned": {"pristine": _learned_stats(pristine_idx, first, last),
                    "corrupt": _learned_stats(corrupt_idx, first, last)},
        "wall_seconds": round(wall, 2), "device": str(device), "world_size": world,
        "native_kernels": bool(_extension.NATIVE), "torch": torch.__version__,
        "out": cfg.out, "config": cfg.to_dict(), **({"extra": cfg.extra} if cfg.extra else {}),
    }


def run_comparison(config: Config, methods: list[str]) -> list[dict]:
    """Runs ``config`` once per method into ``<out>/<method>/``; writes comparison.{csv,json,png}
    and returns the summaries. Every method's configuration is checked before any run starts."""
    if not methods:
        raise ConfigError("--method: empty list")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"--method: a method is listed twice: {','.join(methods)}")
    cfgs = [resolve(dataclasses.replace(config, method=m)) for m in methods]
    rank, world, _ = _setup(cfgs[0])
    out = config.out or _broadcast(default_out() if rank == 0 else None, world)
    if not config.resume:
        check_out(out, False, config.overwrite)
    elif not os.path.isdir(out):
        raise ConfigError(f"--resume: --out {out!r} does not exist")
    summaries = []
    for m, cfg in zip(methods, cfgs):
        sub = dataclasses.replace(config, method=m, out=os.path.join(out, m))
        if rank == 0 and config.overwrite and os.path.isdir(sub.out):
            _clear_outputs(sub.out)
        summaries.append(run(sub))
    if rank == 0:
        report.write_json(os.path.join(out, "comparison.json"), summaries)
        report.write_table(
            os.path.join(out, "comparison.csv"),
            ["method", "k", "momentum", "corrupt_fraction", "seed", "epochs", "pristine_acc", "corrupt_acc", "test_acc", "wall_seconds"],
            ([s["method"], s["k"], s["momentum"], s["corrupt_fraction"], s["seed"], s["final"]["epoch"],
              *(s["final"][k] for k in report.FINAL_KEYS), s["wall_seconds"]] for s in summaries),
        )
        runs = [(s["method"], report_rows(os.path.join(out, s["method"]))) for s in summaries]
        c = cfgs[0]
        report.plot_comparison(os.path.join(out, "comparison.png"), runs,
                               f"{os.path.basename(c.data.rstrip('/'))}, {c.arch}, noise {c.corrupt_fraction:g}, "
                               f"lr {c.lr:g}, batch {c.batch_size}, seed {c.seed}")
    return summaries


def report_rows(run_dir: str) -> list[dict]:
    """metrics.csv of a run as a list of dicts (numbers parsed; empty cells are None)."""
    import csv

    with open(os.path.join(run_dir, "metrics.csv")) as f:
        return [{k: (None if v == "" else (int(v) if k == "epoch" else float(v))) for k, v in r.items()}
                for r in csv.DictReader(f)]
