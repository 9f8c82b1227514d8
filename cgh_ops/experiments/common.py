"""Shared pieces of the experiments: data in memory, label noise, models, the methods compared,
one training loop, aggregation over seeds, CSV and plots.

Why a loop of its own instead of ``python -m cgh_ops.train``: a grid is hundreds of short
trainings on a small data set, and on two CPU cores a DataLoader, checkpoints and a process
per run would cost more than the training. Here every run of a grid shares the tensors, the
split and the noise recipe, and differs only in the method; the loop drives the package's own
optimizers (:mod:`cgh_ops.optim`) and gradient transform (:mod:`cgh_ops.aggregate`) exactly as
a ``torch.optim`` trainer would. It also trains on a subset of the examples, which the
hardness protocol needs.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class Data:
    """A classification data set held in memory: inputs as float tensors, labels as int64."""

    name: str
    x_train: Tensor
    y_train: Tensor  # the true labels; noise is applied per run
    x_test: Tensor
    y_test: Tensor
    num_classes: int


def load_digits() -> Data:
    """scikit-learn's bundled 8x8 digits with the fixed split of ``python -m cgh_ops.train``
    (1400 training, 397 test images, pixels in [0, 1])."""
    from cgh_ops.train import data as train_data
    from cgh_ops.train.config import Config

    ds = train_data.load(Config(data="digits"))
    return Data("digits", ds.train.x, ds.train.labels, ds.test.x, ds.test.labels, ds.num_classes)


def load_image_folder(root: str, image_size: int = 32) -> Data:
    """An ImageFolder tree (``root/train/<class>/*``, ``root/val/<class>/*``) resized to
    ``image_size`` and held in memory, normalized by the training mean and std per channel.
    Meant for small data sets; ImageNet itself goes through ``python -m cgh_ops.train``."""
    from torchvision import datasets, transforms

    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise FileNotFoundError(f"--data {root!r}: expected an ImageFolder tree with {split}/ inside")
    tf = transforms.Compose([transforms.Resize(image_size), transforms.CenterCrop(image_size), transforms.ToTensor()])

    def stack(split: str) -> Tuple[Tensor, Tensor, List[str]]:
        ds = datasets.ImageFolder(os.path.join(root, split), transform=tf)
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs), torch.tensor(ys, dtype=torch.int64), ds.classes

    x_tr, y_tr, classes = stack("train")
    x_te, y_te, val_classes = stack("val")
    if val_classes != classes:
        raise ValueError(f"--data {root!r}: train/ and val/ have different class folders")
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return Data(os.path.basename(os.path.normpath(root)), (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te, len(classes))


def load_data(spec: str, image_size: int = 32) -> Data:
    return load_digits() if spec == "digits" else load_image_folder(spec, image_size)


def corrupt_labels(y: Tensor, fraction: float, num_classes: int, seed: int) -> Tuple[Tensor, Tensor]:
    """The label noise of ``python -m cgh_ops.train`` (PAPER.md's recipe): each example, with
    probability ``fraction``, gets a label drawn uniformly from all classes. Returns the noisy
    labels and the mask of the "corrupt" examples, those whose label changed."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"corrupt fraction must be in [0, 1], got {fraction}")
    from cgh_ops.train.data import corrupt_labels as train_corrupt_labels

    return train_corrupt_labels(y, num_classes, fraction, seed)


# ----------------------------------------------------------------------------------------------
# Models


def build_model(arch: str, input_shape: Sequence[int], num_classes: int, width: int = 512) -> nn.Module:
    """The models of ``python -m cgh_ops.train``: ``mlp`` (two hidden layers of ``width``, the
    64-512-512-10 net of PAPER.md on digits), ``cnn`` (fixed size; ``width`` is ignored) or a
    torchvision architecture for image folders."""
    from cgh_ops.train import models

    if arch == "mlp":
        return models.mlp(tuple(input_shape), num_classes, width)
    try:
        return models.build(arch, tuple(input_shape), num_classes)
    except ValueError as e:
        raise ValueError(f"--arch {arch!r}: not mlp, cnn or a torchvision model name") from e


# ----------------------------------------------------------------------------------------------
# Methods


@dataclass(frozen=True)
class Method:
    """One column of the comparison: an optimizer and how its batch and lr relate to the base.

    ``batch_mult`` and ``lr_div`` express the step-size controls: M3 with k groups of batch B
    takes one step per k*B samples with a step of about lr * (mean gradient), so SGD at batch
    k*B sees the same samples per update, and SGD at lr/k moves as far per epoch as M3 does.
    ``median_of_means``: the :class:`cgh_ops.aggregate.MedianOfMeans` transform in front of
    the optimizer (one micro-batch of size B per call, a step every k calls), which is how
    the median combines with momentum.
    """

    name: str
    optimizer: str  # sgd | m3 | rm3 | ra3
    momentum: float = 0.0
    batch_mult: int = 1
    lr_div: int = 1
    median_of_means: bool = False


def standard_methods(k: int = 3) -> List[Method]:
    """The paper's comparison plus the controls that separate the median from the step size."""
    return [
        Method("sgd-m0.9", "sgd", momentum=0.9),  # the paper's baseline
        Method("sgd-m0", "sgd"),  # same lr, no momentum: what M3/RM3 run with
        Method("m3", "m3"),
        Method("rm3", "rm3"),
        Method("ra3", "ra3"),  # running mean: the control for RM3's running median
        Method(f"mom{k}+sgd-m0.9", "sgd", momentum=0.9, median_of_means=True),
        Method(f"sgd-m0.9-bx{k}", "sgd", momentum=0.9, batch_mult=k),  # its control: same samples per update
        Method(f"sgd-m0-bx{k}", "sgd", batch_mult=k),  # M3's samples per update
        Method(f"sgd-m0-lr/{k}", "sgd", lr_div=k),  # M3's distance per epoch
    ]


def method_by_name(names: Iterable[str], k: int) -> List[Method]:
    known = {m.name: m for m in standard_methods(k)}
    out = []
    for n in names:
        if n not in known:
            raise ValueError(f"--methods: unknown method {n!r}; known: {', '.join(known)}")
        out.append(known[n])
    return out


class _Stepper:
    """``backward`` then ``step()`` for every batch, whatever the method."""

    def __init__(self, params: List[nn.Parameter], method: Method, lr: float, k: int, weight_decay: float):
        if method.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=lr, momentum=method.momentum, weight_decay=weight_decay)
        else:
            from cgh_ops import optim as cgh_optim

            cls = {"m3": cgh_optim.M3, "rm3": cgh_optim.RM3, "ra3": cgh_optim.RA3}[method.optimizer]
            self.opt = cls(params, lr=lr, weight_decay=weight_decay, k=k)
        self.transform = None
        if method.median_of_means:
            from cgh_ops.aggregate import MedianOfMeans

            self.transform = MedianOfMeans(params, groups=k)

    def step(self) -> None:
        # A transform that only stored this micro-batch's gradient has cleared p.grad already.
        if self.transform is None or self.transform.step():
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    arch: str = "mlp"
    width: int = 512
    epochs: int = 100
    batch_size: int = 32  # the base batch; a method's batch_mult scales it
    lr: float = 0.1
    weight_decay: float = 0.0
    k: int = 3
    seed: int = 0
    evals_per_epoch: int = 1  # > 1 gives finer first-learned times (hardness)


@dataclass
class RunResult:
    eval_epochs: List[float]  # the (fractional) epoch of each evaluation, 0.0 = before training
    train_correct: Tensor  # [n_evals, n_train] bool, against the labels trained on
    test_acc: List[float]
    test_loss: List[float]
    train_loss: List[float]  # mean batch loss of each epoch (one per epoch, not per eval)
    seconds: float
    model: nn.Module = field(repr=False)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, chunk: int = 2048) -> Tensor:
    """Logits in eval mode, in chunks so that large sets fit."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)])
    model.train(was_training)
    return out


def fit(
    x: Tensor,
    y: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    num_classes: int,
    method: Method,
    cfg: TrainConfig,
    progress: Optional[Callable[[int], None]] = None,
    until: Optional[Callable[[Tensor], bool]] = None,
) -> RunResult:
    """Trains a fresh model on (x, y) and evaluates it before training and ``evals_per_epoch``
    times per epoch: which training examples it classifies as labeled, and test accuracy.
    ``until(correct)``: stop right after the first evaluation for which it returns True (the
    returned model is then the one of that evaluation)."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, tuple(x.shape[1:]), num_classes, cfg.width)
    stepper = _Stepper(list(model.parameters()), method, cfg.lr / method.lr_div, cfg.k, cfg.weight_decay)
    order = torch.Generator().manual_seed(cfg.seed)
    # A MedianOfMeans method keeps the base batch: each call is one micro-batch (group mean).
    batch = cfg.batch_size * method.batch_mult
    n = len(y)
    steps_per_epoch = math.ceil(n / batch)
    eval_at = {round(steps_per_epoch * j / cfg.evals_per_epoch) for j in range(1, cfg.evals_per_epoch + 1)}

    eval_epochs: List[float] = []
    correct: List[Tensor] = []
    test_acc: List[float] = []
    test_loss: List[float] = []
    train_loss: List[float] = []

    def evaluate(epoch: float) -> None:
        eval_epochs.append(epoch)
        correct.append(predict(model, x).argmax(1) == y)
        logits = predict(model, x_test)
        test_acc.append((logits.argmax(1) == y_test).float().mean().item())
        test_loss.append(F.cross_entropy(logits, y_test).item())

    def done() -> bool:
        return until is not None and until(correct[-1])

    start = time.perf_counter()
    evaluate(0.0)
    model.train()
    for epoch in range(0 if done() else cfg.epochs):
        perm = torch.randperm(n, generator=order)
        total, batches = 0.0, 0
        for s in range(steps_per_epoch):
            idx = perm[s * batch:(s + 1) * batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            stepper.step()
            total += loss.item()
            batches += 1
            if s + 1 in eval_at:
                evaluate(epoch + (s + 1) / steps_per_epoch)
                if done():
                    break
        train_loss.append(total / batches)
        if not math.isfinite(train_loss[-1]):
            raise FloatingPointError(f"{method.name}: training loss is {train_loss[-1]} at epoch {epoch + 1}")
        if progress is not None:
            progress(epoch + 1)
        if done():
            break
    return RunResult(eval_epochs, torch.stack(correct), test_acc, test_loss, train_loss,
                     time.perf_counter() - start, model)


def learned_epochs(correct: Tensor, eval_epochs: Sequence[float]) -> Tuple[Tensor, Tensor]:
    """Per example, from ``correct [n_evals, n]``: the first evaluation epoch at which it is
    classified correctly, and the start of its last unbroken run of correct predictions up to
    the end (the ICLR 2020 code's "first" and "last learned"). NaN where never / not at the end."""
    e = torch.tensor(list(eval_epochs), dtype=torch.float64)
    n_evals, n = correct.shape
    any_correct = correct.any(0)
    first = torch.where(any_correct, e[correct.float().argmax(0)], torch.full((n,), math.nan, dtype=torch.float64))
    # The last wrong evaluation; the last run of correct ones starts right after it.
    wrong = ~correct
    idx = torch.arange(n_evals).unsqueeze(1).expand(n_evals, n)
    last_wrong = torch.where(wrong, idx, torch.full_like(idx, -1)).max(0).values
    start = (last_wrong + 1).clamp(max=n_evals - 1)
    last = torch.where(correct[-1], e[start], torch.full((n,), math.nan, dtype=torch.float64))
    return first, last


# ----------------------------------------------------------------------------------------------
# Tables and plots


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    v = [float(x) for x in values]
    m = sum(v) / len(v)
    s = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, s


def aggregate(rows: Sequence[Dict], keys: Sequence[str], metrics: Sequence[str]) -> List[Dict]:
    """One row per distinct value of ``keys`` (first-seen order): n, and ``<metric>_mean``,
    ``<metric>_std``, ``<metric>_min``, ``<metric>_max`` over the grouped rows."""
    groups: Dict[Tuple, List[Dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    out = []
    for key, rs in groups.items():
        row = dict(zip(keys, key))
        row["n"] = len(rs)
        for m in metrics:
            vals = [r[m] for r in rs]
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std(vals)
            row[f"{m}_min"], row[f"{m}_max"] = min(vals), max(vals)
        out.append(row)
    return out


def fmt(x: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def markdown_table(agg: Sequence[Dict], keys: Sequence[str], metrics: Sequence[str], digits: int = 3) -> str:
    """``mean ± std`` per metric, one line per aggregated row."""
    head = list(keys) + ["n"] + list(metrics)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in agg:
        cells = [str(r[k]) for k in keys] + [str(r["n"])]
        cells += ["n/a" if math.isnan(r[m + "_mean"]) else f"{fmt(r[m + '_mean'], digits)} ± {fmt(r[m + '_std'], digits)}"
                  for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: str, rows: Sequence[Dict]) -> None:
    if not rows:
        raise ValueError(f"{path}: nothing to write")
    fields: List[str] = []
    for r in rows:  # the union of the keys, in first-seen order
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def prepare_out(path: str, overwrite: bool, expected: Sequence[str]) -> None:
    """Creates ``path``; refuses to overwrite files of an earlier run unless asked."""
    os.makedirs(path, exist_ok=True)
    clash = [f for f in expected if os.path.exists(os.path.join(path, f))]
    if clash and not overwrite:
        raise FileExistsError(f"--out {path!r} already holds {', '.join(clash)}; pass --overwrite to replace")


def pyplot():
    """matplotlib with a file-only backend (no display on CI or the cluster)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------ command lines
def int_list(s: str) -> List[int]:
    return [int(v) for v in s.split(",") if v]


def float_list(s: str) -> List[float]:
    return [float(v) for v in s.split(",") if v]


def experiment_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The flags every experiment shares: where to write, and which data and model."""
    p = argparse.ArgumentParser(prog=prog, description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    p.add_argument("--data", default="digits", help="'digits' or an ImageFolder root with train/ and val/")
    p.add_argument("--image-size", type=int, default=32, help="side of the resized images (ImageFolder)")
    p.add_argument("--arch", default="mlp", help="mlp, cnn or a torchvision model name")
    return p
