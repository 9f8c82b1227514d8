"""Run outputs: metrics.csv, summary.json, examples.csv, plots, and the comparison table."""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from typing import Iterable, Optional

METRIC_COLUMNS = [
    "epoch", "lr", "train_loss",
    "pristine_acc", "pristine_loss", "corrupt_acc", "corrupt_loss", "train_acc", "test_acc", "test_loss",
    "seconds",
]
SETS = ("pristine", "corrupt", "test")
FINAL_KEYS = ("pristine_acc", "corrupt_acc", "test_acc")


def atomic_write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_metrics(path: str, rows: list[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    os.replace(tmp, path)


def write_json(path: str, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_table(path: str, header: list[str], rows: Iterable[Iterable]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def load_summaries(root: str) -> list[dict]:
    """Every ``summary.json`` under ``root`` (a run, or a folder of runs), sorted by path."""
    paths = sorted(glob.glob(os.path.join(root, "**", "summary.json"), recursive=True))
    out = []
    for p in paths:
        with open(p) as f:
            out.append(json.load(f))
    return out


def fmt(v: Optional[float]) -> str:
    return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def comparison_table(summaries: list[dict]) -> str:
    """Final pristine / corrupt / test accuracy per method, as a Markdown table."""
    lines = ["| method | pristine | corrupt | test | epochs | seconds |", "|---|---|---|---|---|---|"]
    for s in summaries:
        f = s["final"]
        name = s["method"] + (f" (momentum {s['momentum']:g})" if s["method"] == "sgd" else f" (k={s['k']})")
        lines.append(
            f"| {name} | {fmt(f['pristine_acc'])} | {fmt(f['corrupt_acc'])} | {fmt(f['test_acc'])} "
            f"| {f['epoch']} | {s['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_run(path: str, rows: list[dict], title: str) -> None:
    """Accuracy and loss per epoch on pristine, corrupt (vs noisy labels) and test examples."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in rows]
    for name in SETS:
        for ax, metric in zip(axes, ("acc", "loss")):
            ys = [r.get(f"{name}_{metric}") for r in rows]
            if any(y is not None for y in ys):
                ax.plot(epochs, [math.nan if y is None else y for y in ys], label=name)
    axes[0].set_ylabel("accuracy")
    axes[0].set_ylim(0, 1)
    axes[1].set_ylabel("loss")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(path: str, runs: list[tuple[str, list[dict]]], title: str) -> None:
    """One panel per example set (pristine, corrupt, test), one line per method."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    for ax, name in zip(axes, SETS):
        for label, rows in runs:
            ys = [r.get(f"{name}_acc") for r in rows]
            ax.plot([r["epoch"] for r in rows], [math.nan if y is None else y for y in ys], label=label)
        ax.set_title(f"{name} accuracy" + (" (vs noisy labels)" if name == "corrupt" else ""))
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
