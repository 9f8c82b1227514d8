"""Memorization under label noise: how much of the mislabeled training data each method fits.

    python -m cgh_ops.experiments.memorization --out runs/memorization          # the full grid
    python -m cgh_ops.experiments.memorization --quick --out runs/mem-quick     # CI size
    python -m cgh_ops.experiments.memorization --merge runs/a runs/b --out runs/ab  # combine grids

A grid of (model width) x (base batch size) x (label noise) x (seed) x (method); every cell is
one training run on the same in-memory data. Methods: the paper's SGD baseline (momentum 0.9),
SGD without momentum, M3, RM3, RA3, MedianOfMeans in front of SGD with momentum, and the
step-size controls: for M3, SGD at k times the batch and SGD at lr / k; for MedianOfMeans with
momentum, SGD with momentum at k times the batch; see
:func:`cgh_ops.experiments.common.standard_methods`.

Writes to ``--out``:
  summary.csv   one row per run: method, corrupt_fraction, seed, pristine_acc, corrupt_acc
                (against the noisy labels: memorization), train_acc, test_acc, gap
                (train_acc - test_acc), the configuration and the wall time
  epochs.csv    one row per run and epoch: the same accuracies and the losses
  table.csv     mean, std, min and max over seeds per (width, batch, epochs, noise, method)
  table.md      the same as mean ± std (sample std over seeds)
  curves.png    corrupt and test accuracy per epoch, mean over seeds with the min-max band
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Dict, List, Sequence, Tuple

import torch

from .common import (
    experiment_parser,
    float_list,
    int_list,
    Method,
    TrainConfig,
    aggregate,
    corrupt_labels,
    fit,
    load_data,
    markdown_table,
    method_by_name,
    prepare_out,
    pyplot,
    standard_methods,
    write_csv,
)

OUTPUTS = ("summary.csv", "epochs.csv", "table.csv", "table.md", "curves.png")
GROUP_KEYS = ("width", "base_batch", "epochs", "corrupt_fraction", "method")
METRICS = ("pristine_acc", "corrupt_acc", "test_acc", "gap")




def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = experiment_parser("python -m cgh_ops.experiments.memorization", __doc__)
    p.add_argument("--widths", type=int_list, default=[256], help="hidden width(s) of the mlp, comma-separated")
    p.add_argument("--batch-sizes", type=int_list, default=[32], help="base batch size(s), comma-separated")
    p.add_argument("--noise", type=float_list, default=[0.5, 0.25, 0.0], help="label noise fractions")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of: " + ", ".join(m.name for m in standard_methods(3)))
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="seeds, comma-separated")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--k", type=int, default=3, help="groups of M3 / window of RM3, RA3")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--merge", nargs="+", metavar="DIR", default=None,
                   help="train nothing: combine the summary.csv and epochs.csv of earlier runs into --out "
                        "(tables and plots over all of them)")
    p.add_argument("--quick", action="store_true",
                   help="a small grid for CI: width 128, noise 0 and 0.5, 2 seeds, 15 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.widths, args.noise, args.seeds, args.epochs = [128], [0.0, 0.5], [0, 1], 15
    for f in args.noise:
        if not 0.0 <= f <= 1.0:
            p.error(f"--noise: {f} is outside [0, 1]")
    if args.k < 1:
        p.error("--k must be >= 1")
    args.method_list = (method_by_name(args.methods.split(","), args.k) if args.methods
                        else standard_methods(args.k))
    return args


def run_grid(args: argparse.Namespace) -> Tuple[List[Dict], List[Dict]]:
    """Runs every cell of the grid; rewrites summary.csv and epochs.csv after each run, so an
    interrupted grid leaves what it finished."""
    from tqdm import tqdm

    data = load_data(args.data, args.image_size)
    cells = [(w, b, f, s, m) for w in args.widths for b in args.batch_sizes for f in args.noise
             for s in args.seeds for m in args.method_list]
    summary: List[Dict] = []
    epochs: List[Dict] = []
    bar = tqdm(cells, desc="memorization", unit="run", file=sys.stderr)
    for width, base_batch, fraction, seed, method in bar:
        bar.set_postfix_str(f"w{width} b{base_batch} p{fraction} s{seed} {method.name}")
        y_noisy, corrupt = corrupt_labels(data.y_train, fraction, data.num_classes, seed)
        cfg = TrainConfig(arch=args.arch, width=width, epochs=args.epochs, batch_size=base_batch, lr=args.lr,
                          weight_decay=args.weight_decay, k=args.k, seed=seed)
        res = fit(data.x_train, y_noisy, data.x_test, data.y_test, data.num_classes, method, cfg)
        run = _describe(data.name, method, cfg, fraction)
        for i, ep in enumerate(res.eval_epochs):
            epochs.append({**run, "epoch": ep, **_accuracies(res.train_correct[i], corrupt),
                           "test_acc": res.test_acc[i], "test_loss": res.test_loss[i],
                           "train_loss": res.train_loss[i - 1] if i > 0 else float("nan")})
        final = epochs[-1]
        summary.append({**run, "pristine_acc": final["pristine_acc"], "corrupt_acc": final["corrupt_acc"],
                        "train_acc": final["train_acc"], "test_acc": final["test_acc"],
                        "gap": final["train_acc"] - final["test_acc"], "best_test_acc": max(res.test_acc),
                        "n_pristine": int((~corrupt).sum()), "n_corrupt": int(corrupt.sum()),
                        "seconds": round(res.seconds, 2)})
        write_csv(f"{args.out}/summary.csv", summary)
        write_csv(f"{args.out}/epochs.csv", epochs)
    return summary, epochs


def _describe(data_name: str, method: Method, cfg: TrainConfig, fraction: float) -> Dict:
    return {"method": method.name, "corrupt_fraction": fraction, "seed": cfg.seed, "data": data_name,
            "arch": cfg.arch, "width": cfg.width, "base_batch": cfg.batch_size,
            "optimizer": method.optimizer, "momentum": method.momentum, "median_of_means": method.median_of_means,
            "batch_size": cfg.batch_size * method.batch_mult, "lr": cfg.lr / method.lr_div, "k": cfg.k,
            "weight_decay": cfg.weight_decay, "epochs": cfg.epochs}


def _accuracies(correct: torch.Tensor, corrupt: torch.Tensor) -> Dict[str, float]:
    """Accuracy against the labels trained on: on the pristine examples, on the corrupt ones
    (memorization), on all. NaN for an empty group (no corrupt examples at 0% noise)."""
    def acc(mask: torch.Tensor) -> float:
        return correct[mask].float().mean().item() if mask.any() else float("nan")

    return {"pristine_acc": acc(~corrupt), "corrupt_acc": acc(corrupt), "train_acc": correct.float().mean().item()}


def plot_curves(epochs: List[Dict], path: str, k: int = 3) -> None:
    """Rows: (width, batch, epochs, noise) settings with corrupt examples; columns: corrupt and
    test accuracy per epoch; a line per method (mean over seeds) with its min-max band."""
    plt = pyplot()
    def setting(r: Dict):
        return r["width"], r["base_batch"], r["epochs"], r["corrupt_fraction"]

    settings = sorted({setting(r) for r in epochs}, key=lambda s: (s[0], s[1], s[2], -s[3]))
    settings = [s for s in settings if s[3] > 0] or settings  # corrupt accuracy needs noise
    # One color per method across all panels, in the order of the comparison.
    order = {m.name: i for i, m in enumerate(standard_methods(k))}
    methods = sorted(dict.fromkeys(r["method"] for r in epochs), key=lambda m: order.get(m, len(order)))
    fig, axes = plt.subplots(len(settings), 2, figsize=(11, 3.2 * len(settings) + 0.6), squeeze=False)
    colors = plt.get_cmap("tab10")
    for row, (w, b, e, f) in enumerate(settings):
        for col, metric in enumerate(("corrupt_acc", "test_acc")):
            ax = axes[row][col]
            for mi, m in enumerate(methods):
                rs = [r for r in epochs if setting(r) == (w, b, e, f) and r["method"] == m]
                if not rs:
                    continue
                by_epoch: Dict[float, List[float]] = {}
                for r in rs:
                    by_epoch.setdefault(r["epoch"], []).append(r[metric])
                xs = sorted(by_epoch)
                mean = [sum(by_epoch[x]) / len(by_epoch[x]) for x in xs]
                ax.plot(xs, mean, label=m, color=colors(mi % 10), lw=1.4,
                        ls="--" if m.startswith("sgd") else "-")
                ax.fill_between(xs, [min(by_epoch[x]) for x in xs], [max(by_epoch[x]) for x in xs],
                                color=colors(mi % 10), alpha=0.12, lw=0)
            what = "corrupt train accuracy (noisy labels)" if metric == "corrupt_acc" else "test accuracy"
            ax.set_title(f"{what}\nwidth {w}, batch {b}, noise {f:g}", fontsize=9)
            ax.set_xlim(0, e)
            ax.set_xlabel("epoch")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
    handles: Dict[str, object] = {}
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 5), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _read_csv(path: str) -> List[Dict]:
    """Rows of a CSV written by :func:`write_csv`, numbers parsed back."""
    def parse(v: str):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: parse(v) for k, v in r.items()} for r in csv.DictReader(f)]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prepare_out(args.out, args.overwrite, OUTPUTS)
    if args.merge:
        # Settings in grid order, noise from high to low, methods in the order of the comparison.
        order = {m.name: i for i, m in enumerate(standard_methods(args.k))}

        def key(r: Dict):
            return (r["width"], r["base_batch"], r["epochs"], -r["corrupt_fraction"],
                    order.get(r["method"], len(order)), r["seed"])

        summary = sorted((r for d in args.merge for r in _read_csv(os.path.join(d, "summary.csv"))), key=key)
        epochs = sorted((r for d in args.merge for r in _read_csv(os.path.join(d, "epochs.csv"))),
                        key=lambda r: (key(r), r["epoch"]))
        write_csv(f"{args.out}/summary.csv", summary)
        write_csv(f"{args.out}/epochs.csv", epochs)
    else:
        summary, epochs = run_grid(args)
    agg = aggregate(summary, GROUP_KEYS, METRICS + ("train_acc", "best_test_acc", "seconds"))
    write_csv(f"{args.out}/table.csv", agg)
    table = markdown_table(agg, GROUP_KEYS, METRICS)
    with open(f"{args.out}/table.md", "w") as f:
        f.write(table)
    plot_curves(epochs, f"{args.out}/curves.png", args.k)
    print(table)
    print(f"{len(summary)} runs, {sum(r['seconds'] for r in summary):.0f} s of training; wrote "
          + ", ".join(f"{args.out}/{o}" for o in OUTPUTS))


if __name__ == "__main__":
    main()
