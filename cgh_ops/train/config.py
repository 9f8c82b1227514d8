"""The training configuration: one dataclass that mirrors the command-line flags.

``None`` in a field means "the default for this data set / method", resolved by
:func:`resolve` (digits: the MLP of PAPER.md's table, 100 epochs, batch 32, no schedule;
an ImageFolder root: resnet18, 90 epochs, batch 256, the official schedule).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Optional

METHODS = ("sgd", "m3", "rm3", "ra3")
DIGITS_ARCHS = ("mlp", "cnn")
IMAGEFOLDER_ARCHS = ("resnet18", "resnet50", "vgg13_bn", "inception_v3")
SCHEDULES = ("none", "step", "cosine")
DIST_AGGREGATES = ("mean", "median")

# Fields that may differ between a run and its --resume (they do not change the result).
RESUMABLE = ("epochs", "resume", "overwrite", "workers", "threads", "progress", "log_every")


class ConfigError(ValueError):
    """A bad flag or input; the message starts with the flag's name."""


@dataclass
class Config:
    data: str = "digits"
    arch: Optional[str] = None
    method: str = "sgd"
    k: int = 3
    corrupt_fraction: float = 0.0
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: float = 0.1
    momentum: Optional[float] = None  # None: 0.9 for sgd (the paper's baseline), 0 for m3/rm3/ra3
    weight_decay: float = 0.0
    seed: int = 0
    out: Optional[str] = None  # None: runs/<timestamp>
    overwrite: bool = False
    resume: bool = False
    train_subset: Optional[int] = None  # use only this many training examples (quick runs, tests)
    sample_size: Optional[int] = None  # pristine/corrupt examples evaluated each epoch (None: all)
    image_size: Optional[int] = None  # ImageFolder crop size (None: 224, 299 for inception_v3)
    lr_schedule: Optional[str] = None
    lr_step: int = 30
    workers: int = 4
    threads: Optional[int] = None  # CPU threads (None: 1 for digits, whose tiny steps only lose from more; else torch's default)
    device: str = "auto"
    amp: bool = True  # bf16 autocast, on CUDA only
    channels_last: bool = True  # on CUDA only, convolutional models
    dist_aggregate: str = "mean"
    log_every: int = 10
    progress: bool = True
    extra: dict = field(default_factory=dict)  # free-form tags copied to summary.json (experiments)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _need(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{_flag(name)}: {msg}")


def is_digits(cfg: Config) -> bool:
    return cfg.data == "digits"


def resolve(cfg: Config) -> Config:
    """Checks every field and fills the defaults; returns a new Config. Touches no file."""
    c = dataclasses.replace(cfg, extra=dict(cfg.extra))
    _need(isinstance(c.method, str) and c.method in METHODS, "method", f"must be one of {', '.join(METHODS)}, got {c.method!r}")
    digits = is_digits(c)
    if not digits:
        _need(isinstance(c.data, str) and c.data != "", "data", "must be 'digits' or an ImageFolder root")
    if c.arch is None:
        c.arch = "mlp" if digits else "resnet18"
    archs = DIGITS_ARCHS if digits else IMAGEFOLDER_ARCHS
    _need(c.arch in archs, "arch", f"must be one of {', '.join(archs)} for {'digits' if digits else 'an ImageFolder root'}, got {c.arch!r}")

    for name in ("k", "lr_step", "log_every"):
        v = getattr(c, name)
        _need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, f"must be an integer >= 1, got {v!r}")
    for name in ("epochs", "batch_size", "train_subset", "sample_size", "image_size", "threads"):
        v = getattr(c, name)
        _need(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1), name, f"must be an integer >= 1, got {v!r}")
    _need(isinstance(c.workers, int) and c.workers >= 0, "workers", f"must be an integer >= 0, got {c.workers!r}")
    _need(isinstance(c.seed, int) and 0 <= c.seed < 2**31, "seed", f"must be an integer in [0, 2^31), got {c.seed!r}")
    cf = c.corrupt_fraction
    _need(isinstance(cf, (int, float)) and 0.0 <= cf <= 1.0, "corrupt_fraction", f"must be in [0, 1], got {cf!r}")
    _need(isinstance(c.lr, (int, float)) and math.isfinite(c.lr) and c.lr >= 0, "lr", f"must be a finite number >= 0, got {c.lr!r}")
    wd = c.weight_decay
    _need(isinstance(wd, (int, float)) and math.isfinite(wd) and wd >= 0, "weight_decay", f"must be a finite number >= 0, got {wd!r}")

    if c.momentum is None:
        c.momentum = 0.9 if c.method == "sgd" else 0.0
    m = c.momentum
    _need(isinstance(m, (int, float)) and 0.0 <= m < 1.0, "momentum", f"must be in [0, 1), got {m!r}")
    _need(
        c.method == "sgd" or m == 0,
        "momentum",
        f"must be 0 with --method {c.method}: momentum causes instability with the median "
        "optimizers (the official trainer refuses it too); use --method sgd for momentum, or "
        "cgh_ops.aggregate with any optimizer",
    )

    if c.epochs is None:
        c.epochs = 100 if digits else 90
    if c.batch_size is None:
        c.batch_size = 32 if digits else 256
    if c.image_size is None:
        c.image_size = 299 if c.arch == "inception_v3" else 224
    if c.lr_schedule is None:
        # The official trainer: StepLR x0.1 every 30 epochs for ResNet, cosine otherwise.
        c.lr_schedule = "none" if digits else ("step" if c.arch.startswith("resnet") else "cosine")
    _need(c.lr_schedule in SCHEDULES, "lr_schedule", f"must be one of {', '.join(SCHEDULES)}, got {c.lr_schedule!r}")
    _need(c.dist_aggregate in DIST_AGGREGATES, "dist_aggregate", f"must be 'mean' or 'median', got {c.dist_aggregate!r}")
    _need(c.device in ("auto", "cpu") or c.device.startswith("cuda"), "device", f"must be auto, cpu or cuda[:N], got {c.device!r}")
    _need(not (c.resume and c.overwrite), "resume", "cannot be combined with --overwrite")
    if c.out is not None:
        c.out = os.fspath(c.out)
    return c
