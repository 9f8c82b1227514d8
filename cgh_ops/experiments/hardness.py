"""Hardness of examples: easy examples are learned earlier and generalize better among themselves.

    python -m cgh_ops.experiments.hardness --out runs/hardness          # the full protocol
    python -m cgh_ops.experiments.hardness --quick --out runs/hard-q    # CI size

The protocol of the paper (PAPER.md, "Hardness"), per seed, on the clean training set:
  1. Warm-up: SGD with momentum 0.9 on all training examples, evaluated after every step; stop
     at the first step where at least ``--split-acc`` of them are classified correctly (the
     paper's two ImageNet epochs left about half of ImageNet easy; digits are learned within
     the first epoch, so the split is placed by accuracy rather than by a count of epochs).
     "Easy": classified correctly at that point; "hard": not. On 10 classes this rule puts
     whole classes on one side early on; ``--split balanced`` instead takes, per class, the
     examples with the highest probability of their label (as many as were correct).
  2. Each kind is shuffled and cut into a training part and a held-out part of equal sizes,
     the same for both kinds (so that size does not decide the comparison); a random sample
     of the same sizes is the control.
  3. A fresh model is trained (SGD with momentum 0.9) on each training part and tested on the
     held-out part of the same kind, of the other kind, and on the real test set.
  4. Learning times: an independent SGD run (another seed, so that "easy" is not learned
     early by construction) on all training examples, evaluated ``--evals-per-epoch`` times
     per epoch, gives each example's first-learned epoch and the start of its last unbroken
     run of correct predictions; their distributions are compared for easy and hard.

Writes to ``--out``:
  splits.csv    per seed: the warm-up step and epoch, the numbers of easy and hard examples,
                how many classes each side holds and how unevenly (std of the per-class easy share)
  summary.csv   one row per (seed, trained_on in easy/hard/random): n_train, train_acc,
                heldout_acc (same kind), other_acc (the other kind; random: n/a), test_acc
  learned.csv   one row per (seed, example): kind, first_learned, last_learned (epochs)
  table.md      the same aggregated over seeds (mean ± std) and the learned-epoch statistics
  hardness.png  histograms of first- and last-learned epochs of easy and hard examples, and
                the held-out accuracies
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Dict, List, Sequence

import torch

from .common import (
    experiment_parser,
    int_list,
    Method,
    TrainConfig,
    aggregate,
    fit,
    learned_epochs,
    load_data,
    markdown_table,
    mean_std,
    predict,
    prepare_out,
    pyplot,
    write_csv,
)

OUTPUTS = ("splits.csv", "summary.csv", "learned.csv", "table.md", "hardness.png")
SPLIT_STATS = ("warmup_epoch", "warmup_train_acc", "n_easy", "n_hard", "n_train_per_kind", "classes_easy",
               "classes_hard", "class_share_std")
SGD = Method("sgd-m0.9", "sgd", momentum=0.9)  # the paper's baseline optimizer



def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = experiment_parser("python -m cgh_ops.experiments.hardness", __doc__)
    p.add_argument("--width", type=int, default=512, help="hidden width of the mlp")
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2, 3, 4], help="seeds, comma-separated")
    p.add_argument("--split-acc", type=float, default=0.5,
                   help="end the warm-up when this fraction of the training set is classified correctly")
    p.add_argument("--split", choices=("correct", "balanced"), default="correct",
                   help="correct: easy = classified correctly after the warm-up (the paper's rule); "
                        "balanced: per class, the examples with the highest warm-up probability of their "
                        "label, as many as were correct (removes the class imbalance of the split)")
    p.add_argument("--warmup-epochs", type=int, default=2, help="the most warm-up epochs (then split anyway)")
    p.add_argument("--epochs", type=int, default=50, help="epochs of the easy/hard/random trainings")
    p.add_argument("--curve-epochs", type=int, default=20, help="epochs of the learning-time run")
    p.add_argument("--evals-per-epoch", type=int, default=8, help="resolution of the learning times")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--quick", action="store_true",
                   help="CI size: width 128, 2 seeds, 10 training epochs, 5 learning-time epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.seeds, args.epochs, args.curve_epochs = 128, [0, 1], 10, 5
    if not 0.0 < args.split_acc < 1.0:
        p.error(f"--split-acc must be in (0, 1), got {args.split_acc}")
    return args


def warm_up_split(data, cfg: TrainConfig, split_acc: float, warmup_epochs: int, rule: str) -> Dict:
    """Step 1: SGD evaluated after every step until ``split_acc`` of the examples are right
    (or ``warmup_epochs`` are over), then the easy mask by ``rule``."""
    steps = math.ceil(len(data.y_train) / cfg.batch_size)
    warm = TrainConfig(**{**cfg.__dict__, "epochs": warmup_epochs, "evals_per_epoch": steps})
    res = fit(data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes, SGD, warm,
              until=lambda correct: correct.float().mean().item() >= split_acc)
    correct = res.train_correct[-1]
    easy = correct
    if rule == "balanced":
        # Per class, the examples with the highest probability of their label are easy, as many
        # in total as were classified correctly: the same sizes, every class on both sides.
        p_true = torch.softmax(predict(res.model, data.x_train), 1).gather(1, data.y_train[:, None])[:, 0]
        easy = torch.zeros_like(correct)
        fraction = correct.float().mean().item()
        for c in range(data.num_classes):
            idx = (data.y_train == c).nonzero().flatten()
            top = idx[p_true[idx].argsort(descending=True)][: round(fraction * len(idx))]
            easy[top] = True
    classes_easy = len(torch.unique(data.y_train[easy]))
    classes_hard = len(torch.unique(data.y_train[~easy]))
    return {"easy": easy, "step": len(res.eval_epochs) - 1, "epoch": res.eval_epochs[-1],
            "train_acc": correct.float().mean().item(), "classes_easy": classes_easy, "classes_hard": classes_hard,
            # How unevenly the classes fall on the easy side (0: each class easy in the same share).
            "class_share_std": _class_share_std(easy, data.y_train, data.num_classes)}


def _class_share_std(easy: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    shares = [easy[y == c].float().mean().item() for c in range(num_classes) if (y == c).any()]
    return mean_std(shares)[1]


def run(args: argparse.Namespace):
    from tqdm import tqdm

    data = load_data(args.data, args.image_size)
    splits, summary, learned = [], [], []
    for seed in tqdm(args.seeds, desc="hardness", unit="seed", file=sys.stderr):
        cfg = TrainConfig(arch=args.arch, width=args.width, epochs=args.epochs, batch_size=args.batch_size,
                          lr=args.lr, seed=seed)
        split = warm_up_split(data, cfg, args.split_acc, args.warmup_epochs, args.split)
        easy = split["easy"]
        g = torch.Generator().manual_seed(20_000 + seed)
        pools = {"easy": easy.nonzero().flatten(), "hard": (~easy).nonzero().flatten(),
                 "random": torch.arange(len(easy))}
        pools = {k: v[torch.randperm(len(v), generator=g)] for k, v in pools.items()}
        half = min(len(pools["easy"]), len(pools["hard"])) // 2  # equal sizes for every kind
        parts = {k: (v[:half], v[half:2 * half]) for k, v in pools.items()}
        splits.append({"seed": seed, "warmup_step": split["step"], "warmup_epoch": round(split["epoch"], 4),
                       "warmup_train_acc": split["train_acc"], "n_easy": len(pools["easy"]),
                       "n_hard": len(pools["hard"]), "n_train_per_kind": half, "split": args.split,
                       "classes_easy": split["classes_easy"], "classes_hard": split["classes_hard"],
                       "class_share_std": split["class_share_std"]})

        # Step 3: train on each kind, test on held-out examples of each kind.
        for kind in ("easy", "hard", "random"):
            tr, _ = parts[kind]
            res = fit(data.x_train[tr], data.y_train[tr], data.x_test, data.y_test, data.num_classes, SGD, cfg)

            def held_acc(of: str) -> float:
                idx = parts[of][1]
                return (predict(res.model, data.x_train[idx]).argmax(1) == data.y_train[idx]).float().mean().item()

            other = {"easy": "hard", "hard": "easy"}.get(kind)
            summary.append({"seed": seed, "trained_on": kind, "n_train": half,
                            "train_acc": res.train_correct[-1].float().mean().item(),
                            "heldout_acc": held_acc(kind),
                            "other_acc": held_acc(other) if other else float("nan"),
                            "test_acc": res.test_acc[-1]})

        # Step 4: learning times from an independent run on all examples.
        curve = TrainConfig(**{**cfg.__dict__, "epochs": args.curve_epochs, "evals_per_epoch": args.evals_per_epoch,
                               "seed": 1_000 + seed})
        res = fit(data.x_train, data.y_train, data.x_test, data.y_test, data.num_classes, SGD, curve)
        first, last = learned_epochs(res.train_correct, res.eval_epochs)
        for i in range(len(easy)):
            learned.append({"seed": seed, "example": i, "kind": "easy" if easy[i] else "hard",
                            "first_learned": first[i].item(), "last_learned": last[i].item()})
    return splits, summary, learned


def learned_table(learned: List[Dict]) -> str:
    """Per kind: mean and median first/last-learned epoch, and the fraction never learned or
    not learned at the end (NaN times), pooled over seeds."""
    lines = ["| kind | examples | first learned: mean | median | last learned: mean | median | not learned at the end |",
             "|---|---|---|---|---|---|---|"]
    for kind in ("easy", "hard"):
        rows = [r for r in learned if r["kind"] == kind]
        if not rows:
            continue
        cells = [kind, str(len(rows))]
        for key in ("first_learned", "last_learned"):
            v = sorted(r[key] for r in rows if not math.isnan(r[key]))
            cells += [f"{mean_std(v)[0]:.3f}", f"{v[len(v) // 2]:.3f}"] if v else ["n/a", "n/a"]
        cells.append(f"{sum(math.isnan(r['last_learned']) for r in rows) / len(rows):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(learned: List[Dict], summary: List[Dict], path: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, key in zip(axes[:2], ("first_learned", "last_learned")):
        finite = [r[key] for r in learned if not math.isnan(r[key])]
        top = max(finite) if finite else 1.0
        bins = [top * j / 40 for j in range(41)] if top > 0 else 10
        for kind, color in (("easy", "tab:blue"), ("hard", "tab:red")):
            v = [r[key] for r in learned if r["kind"] == kind and not math.isnan(r[key])]
            if v:
                ax.hist(v, bins=bins, alpha=0.55, color=color, label=f"{kind} ({len(v)})", density=True)
        ax.set_xlabel("epoch")
        ax.set_title(key.replace("_", " ") + " (independent SGD run)", fontsize=9)
        ax.legend(fontsize=8)
    ax = axes[2]
    kinds = ("easy", "hard", "random")
    metrics = ("train_acc", "heldout_acc", "other_acc", "test_acc")
    for j, m in enumerate(metrics):
        vals = [mean_std([r[m] for r in summary if r["trained_on"] == k]) for k in kinds]
        xs = [i + (j - 1.5) * 0.2 for i in range(len(kinds))]
        ax.bar(xs, [v[0] for v in vals], width=0.2, yerr=[v[1] for v in vals], label=m, capsize=2)
    ax.set_xticks(range(len(kinds)), [f"trained on {k}" for k in kinds], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("accuracy (mean ± std over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    prepare_out(args.out, args.overwrite, OUTPUTS)
    splits, summary, learned = run(args)
    write_csv(f"{args.out}/splits.csv", splits)
    write_csv(f"{args.out}/summary.csv", summary)
    write_csv(f"{args.out}/learned.csv", learned)
    metrics = ("train_acc", "heldout_acc", "other_acc", "test_acc")
    table = ("Split after the warm-up (per seed):\n\n" + markdown_table(
        aggregate(splits, (), SPLIT_STATS), (), SPLIT_STATS)
        + "\nTrained on one kind, tested on held-out examples of the same kind (heldout_acc) and "
          "of the other kind (other_acc):\n\n"
        + markdown_table(aggregate(summary, ("trained_on",), metrics), ("trained_on",), metrics)
        + "\nLearning times (epochs) in an independent SGD run on all training examples:\n\n"
        + learned_table(learned))
    with open(f"{args.out}/table.md", "w") as f:
        f.write(table)
    plot(learned, summary, f"{args.out}/hardness.png")
    print(table)
    print("wrote " + ", ".join(f"{args.out}/{o}" for o in OUTPUTS))


if __name__ == "__main__":
    main()
