"""``python -m cgh_ops.train``: the command line over :func:`cgh_ops.train.run`."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from typing import Optional, Sequence

from .config import DIST_AGGREGATES, SCHEDULES, Config, ConfigError


def parser() -> argparse.ArgumentParser:
    d = Config()
    p = argparse.ArgumentParser(
        prog="python -m cgh_ops.train",
        description="Train with SGD or the Coherent Gradients optimizers (M3/RM3/RA3) under label noise, "
        "recording memorization (accuracy on corrupt examples against their noisy labels).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--data", default=d.data, help="'digits' (scikit-learn's 8x8 digits, no download) or an ImageFolder root with train/ and val/")
    a("--arch", default=None, help="mlp or cnn for digits (default mlp); resnet18, resnet50, vgg13_bn, inception_v3 for ImageFolder (default resnet18)")
    a("--method", default=d.method, help="sgd, m3, rm3 or ra3; a comma-separated list runs each and compares them")
    a("--k", type=int, default=d.k, help="values per median (M3: micro-batches per update; RM3/RA3: steps in the window)")
    a("--corrupt-fraction", type=float, default=d.corrupt_fraction, help="probability that a training label is redrawn uniformly")
    a("--epochs", type=int, default=None, help="default 100 on digits, 90 on ImageFolder")
    a("--batch-size", type=int, default=None, help="global batch per step; default 32 on digits, 256 on ImageFolder")
    a("--lr", type=float, default=d.lr)
    a("--momentum", type=float, default=None, help="default 0.9 for sgd (the paper's baseline), 0 for m3/rm3/ra3 (which refuse momentum)")
    a("--weight-decay", type=float, default=d.weight_decay)
    a("--seed", type=int, default=d.seed, help="seeds the label noise, the init and the batch order")
    a("--out", default=None, help="output folder (default: runs/<timestamp>, new on every run)")
    a("--overwrite", action="store_true", help="write into an existing non-empty --out")
    a("--resume", action="store_true", help="continue the run in --out from its last checkpoint (same configuration; --epochs may grow)")
    a("--train-subset", type=int, default=None, help="train on this many examples only (quick runs)")
    a("--sample-size", type=int, default=None, help="pristine/corrupt examples scored each epoch (default: all)")
    a("--image-size", type=int, default=None, help="ImageFolder crop size (default 224, 299 for inception_v3)")
    a("--lr-schedule", choices=SCHEDULES, default=None, help="default: none on digits; step (x0.1 every --lr-step epochs) for resnets, cosine otherwise")
    a("--lr-step", type=int, default=d.lr_step)
    a("--workers", type=int, default=d.workers, help="DataLoader workers (ImageFolder)")
    a("--threads", type=int, default=None, help="CPU threads (default: 1 on digits, where more only add overhead; else torch's default)")
    a("--device", default=d.device, help="auto, cpu or cuda[:N]")
    a("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    a("--no-channels-last", dest="channels_last", action="store_false", help="keep NCHW on CUDA")
    a("--dist-aggregate", choices=DIST_AGGREGATES, default=d.dist_aggregate,
      help="under torchrun: DDP's mean all-reduce, or the coordinate-wise median across ranks")
    a("--log-every", type=int, default=d.log_every, help="print a line every N epochs")
    a("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def config_from_args(ns: argparse.Namespace) -> Config:
    fields = {k: v for k, v in vars(ns).items() if k != "method"}
    return Config(method=ns.method, **fields)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ns = parser().parse_args(argv)
    methods = [m.strip() for m in ns.method.split(",")]
    cfg = config_from_args(ns)
    from . import loop, report

    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            # Without the native extension every op still runs (on the reference kernels).
            warnings.filterwarnings("ignore", message="cgh_ops: the native extension")
            if len(methods) == 1:
                summary = loop.run(Config(**{**cfg.to_dict(), "method": methods[0]}))
                summaries = [summary]
            else:
                summaries = loop.run_comparison(cfg, methods)
    except ConfigError as exc:
        print(f"python -m cgh_ops.train: error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 alone prints the table
    s0 = summaries[0]
    print(
        f"\n{s0['data']} / {s0['arch']}, corrupt fraction {s0['corrupt_fraction']:g} "
        f"({s0['n_corrupt']} of {s0['n_train']} training labels changed), seed {s0['seed']}, "
        f"lr {s0['lr']:g}, batch {s0['batch_size']}, {s0['epochs']} epochs; final accuracy "
        "(corrupt: against the noisy labels = memorization):"
    )
    print(report.comparison_table(summaries))
    out = s0["out"] if len(summaries) == 1 else s0["out"].rsplit("/", 1)[0]
    print(f"wall time {time.perf_counter() - t0:.0f} s; results in {out}/")
    return 0
