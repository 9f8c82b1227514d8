"""python -m cgh_ops.train: end to end on digits and an ImageFolder tree, resume, noise, bad input."""

from __future__ import annotations

import csv
import json
import os
import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the extension may not be built here
    import cgh_ops  # noqa: F401
from cgh_ops.train import Config, ConfigError, run
from cgh_ops.train.cli import main
from cgh_ops.train.data import corrupt_labels

pytestmark = pytest.mark.filterwarnings("ignore:cgh_ops. the native extension")

# Tiny but real: 150 digits, batch 32 -> 5 steps per epoch (not a multiple of k = 3).
QUICK = dict(train_subset=150, epochs=2, corrupt_fraction=0.5, progress=False)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_digits_end_to_end(tmp_path):
    out = tmp_path / "rm3"
    s = run(Config(method="rm3", out=str(out), **QUICK))
    for name in ("metrics.csv", "summary.json", "labels.csv", "examples.csv", "curves.png", "checkpoint.pt"):
        assert (out / name).is_file(), name
    rows = _rows(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]  # epoch 0: before training
    for col in ("pristine_acc", "corrupt_acc", "test_acc", "pristine_loss", "corrupt_loss", "test_loss", "train_loss"):
        assert col in rows[0]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["method"] == "rm3" and on_disk["seed"] == 0 and on_disk["corrupt_fraction"] == 0.5
    for key in ("pristine_acc", "corrupt_acc", "test_acc"):
        assert 0.0 <= on_disk["final"][key] <= 1.0
        assert on_disk["final"][key] == pytest.approx(float(rows[-1][key]))
    assert s["n_train"] == 150 and s["n_test"] == 397 and s["n_corrupt"] + s["n_pristine"] == 150
    # Per-example hardness: first <= last learned wherever the example is learned at the end.
    ex = _rows(out / "examples.csv")
    assert len(ex) == 150
    for r in ex:
        f, last = int(r["first_learned"]), int(r["last_learned"])
        assert f in (-1, 1, 2) and last in (-1, 1, 2)
        assert last == -1 or (f != -1 and f <= last)
    # The saved noise is the seeded noise.
    labels = _rows(out / "labels.csv")
    noisy, corrupt = corrupt_labels(torch.tensor([int(r["original"]) for r in labels]), 10, 0.5, 0)
    assert [int(r["label"]) for r in labels] == noisy.tolist()
    assert [int(r["corrupt"]) for r in labels] == corrupt.int().tolist()


def test_cli_comparison(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["--method", "sgd,m3", "--epochs", "1", "--train-subset", "96", "--corrupt-fraction", "0.5",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| sgd (momentum 0.9) |" in printed and "| m3 (k=3) |" in printed
    table = _rows(out / "comparison.csv")
    assert [r["method"] for r in table] == ["sgd", "m3"]
    assert (out / "comparison.png").is_file() and (out / "sgd" / "summary.json").is_file()


def _image_tree(root, classes=3, train=4, val=2, size=40):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


def test_image_folder_resnet18(tmp_path):
    # Torchvision architecture on a generated ImageFolder tree, at a tiny image size.
    data = _image_tree(tmp_path / "imgs")
    s = run(Config(data=str(data), arch="resnet18", image_size=32, epochs=1, batch_size=4, workers=0, threads=1,
                   corrupt_fraction=0.5, out=str(tmp_path / "out"), progress=False))
    assert s["arch"] == "resnet18" and s["num_classes"] == 3 and s["n_train"] == 12 and s["n_test"] == 6
    assert s["config"]["lr_schedule"] == "step"  # the official ResNet schedule is the default
    assert len(_rows(tmp_path / "out" / "metrics.csv")) == 2


def test_noise_reproducible_by_seed():
    labels = torch.arange(2000) % 10
    a, ca = corrupt_labels(labels, 10, 0.5, seed=3)
    b, cb = corrupt_labels(labels, 10, 0.5, seed=3)
    c, _ = corrupt_labels(labels, 10, 0.5, seed=4)
    assert torch.equal(a, b) and torch.equal(ca, cb) and not torch.equal(a, c)
    assert torch.equal(ca, a != labels)
    # Redrawn with probability 0.5, and a redraw keeps its label 1 time in 10: ~45% corrupt.
    assert 0.40 < ca.float().mean() < 0.50
    assert not corrupt_labels(labels, 10, 0.0, 3)[1].any()


def test_resume_is_bit_exact(tmp_path):
    # M3 over 5 steps per epoch: the checkpoint falls mid-cycle of k = 3.
    whole, split = tmp_path / "whole", tmp_path / "split"
    run(Config(method="m3", out=str(whole), **QUICK))
    run(Config(method="m3", out=str(split), **{**QUICK, "epochs": 1}))
    run(Config(method="m3", out=str(split), resume=True, **QUICK))
    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    b = torch.load(split / "checkpoint.pt", weights_only=True)
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(_rows(whole / "metrics.csv")) == strip(_rows(split / "metrics.csv"))


def test_existing_out_refused_then_overwritten(tmp_path):
    out = tmp_path / "run"
    run(Config(out=str(out), **{**QUICK, "epochs": 1}))
    before = (out / "metrics.csv").read_bytes()
    with pytest.raises(ConfigError, match="--out"):
        run(Config(out=str(out), **{**QUICK, "epochs": 1, "lr": 0.05}))
    assert (out / "metrics.csv").read_bytes() == before  # nothing overwritten
    run(Config(out=str(out), overwrite=True, **{**QUICK, "epochs": 1, "lr": 0.05}))
    assert json.loads((out / "summary.json").read_text())["lr"] == 0.05


def test_resume_from_other_config_refused(tmp_path):
    out = tmp_path / "run"
    run(Config(out=str(out), **{**QUICK, "epochs": 1}))
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="--lr"):
        run(Config(out=str(out), resume=True, **{**QUICK, "lr": 0.05}))
    assert (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--data", "/nonexistent/folder"], "--data"),  # missing folder
        (["--data", "{empty}"], "--data"),  # a folder without train/ and val/
        (["--method", "adam"], "--method"),
        (["--method", "sgd,bogus"], "--method"),  # checked before the first run starts
        (["--arch", "resnet18"], "--arch"),  # not an arch for digits
        (["--corrupt-fraction", "1.5"], "--corrupt-fraction"),
        (["--corrupt-fraction", "-0.1"], "--corrupt-fraction"),
        (["--method", "m3", "--momentum", "0.9"], "--momentum"),
        (["--method", "sgd,rm3", "--momentum", "0.9"], "--momentum"),
        (["--k", "0"], "--k"),
        (["--lr", "-1"], "--lr"),
        (["--resume"], "--resume"),  # nothing to resume from
    ],
)
def test_bad_input(tmp_path, capsys, args, flag):
    out = tmp_path / "out"
    args = [a.replace("{empty}", str(tmp_path)) for a in args]
    rc = main(args + ["--out", str(out), "--no-progress", "--epochs", "1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"error: {flag}" in err
    assert not out.exists()  # nothing written


def test_momentum_error_says_why():
    with pytest.raises(ConfigError, match="instability"):
        run(Config(method="rm3", momentum=0.5))


def test_unknown_arch_for_image_folder(tmp_path):
    data = _image_tree(tmp_path / "imgs", classes=2, train=1, val=1, size=8)
    with pytest.raises(ConfigError, match="--arch"):
        run(Config(data=str(data), arch="mlp", out=str(tmp_path / "out")))


@pytest.mark.slow
@pytest.mark.parametrize("aggregate", ["median"])
def test_torchrun_two_processes(tmp_path, aggregate):
    # DDP on gloo/CPU: batch split over 2 ranks, evaluation sharded and gathered, the median
    # comm hook installed by --dist-aggregate median. One run (~20 s): the slow path of CI.
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "cgh_ops.train", "--method", "rm3", "--train-subset", "64", "--epochs", "2",
           "--corrupt-fraction", "0.5", "--device", "cpu", "--dist-aggregate", aggregate,
           "--no-progress", "--out", str(out)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["config"]["dist_aggregate"] == aggregate
    assert len(_rows(out / "examples.csv")) == 64  # every scored example gathered from both ranks
