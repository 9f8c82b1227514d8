"""The experiments' --quick runs end to end (small, through the Python entry points), plus the
pieces whose mistakes would silently change the science: label noise, learned epochs, the
aggregation over seeds and the method/control definitions."""

import csv
import math
import os

import pytest
import torch

from cgh_ops.experiments import common, hardness, memorization


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_fractions(rows, columns, allow_nan=()):
    for r in rows:
        for c in columns:
            v = float(r[c])
            if c in allow_nan and math.isnan(v):
                continue
            assert 0.0 <= v <= 1.0, (c, r)


# ---------------------------------------------------------------------------- building blocks


def test_corrupt_labels_follow_the_recipe_and_the_seed():
    y = torch.arange(10).repeat(500)  # 5000 examples, 10 classes
    noisy, mask = common.corrupt_labels(y, 0.5, 10, seed=3)
    again, mask_again = common.corrupt_labels(y, 0.5, 10, seed=3)
    assert torch.equal(noisy, again) and torch.equal(mask, mask_again)
    assert not torch.equal(mask, common.corrupt_labels(y, 0.5, 10, seed=4)[1])
    # "Corrupt" means the label changed; a label is redrawn with probability 0.5 and then
    # uniformly from all 10 classes, so about 0.5 * 9/10 of the examples are corrupt.
    assert torch.equal(noisy[~mask], y[~mask]) and bool((noisy[mask] != y[mask]).all())
    assert abs(mask.float().mean().item() - 0.45) < 0.03
    assert not common.corrupt_labels(y, 0.0, 10, seed=0)[1].any()
    with pytest.raises(ValueError, match="corrupt fraction"):
        common.corrupt_labels(y, 1.5, 10, seed=0)


def test_learned_epochs_first_and_last_run():
    # Columns: learned at 1 and kept; learned at 1, forgotten at 2, relearned at 3; never; lost at the end.
    correct = torch.tensor([
        [False, False, False, False],
        [True, True, False, True],
        [True, False, False, True],
        [True, True, False, False],
    ])
    first, last = common.learned_epochs(correct, [0.0, 1.0, 2.0, 3.0])
    assert first[:2].tolist() == [1.0, 1.0] and math.isnan(first[2]) and first[3] == 1.0
    assert last[:2].tolist() == [1.0, 3.0] and math.isnan(last[2]) and math.isnan(last[3])


def test_aggregate_mean_and_sample_std():
    rows = [{"m": "a", "x": 0.2}, {"m": "a", "x": 0.4}, {"m": "b", "x": 0.5}]
    agg = common.aggregate(rows, ("m",), ("x",))
    assert [r["m"] for r in agg] == ["a", "b"] and [r["n"] for r in agg] == [2, 1]
    assert agg[0]["x_mean"] == pytest.approx(0.3) and agg[0]["x_std"] == pytest.approx(math.sqrt(0.02))
    assert agg[1]["x_std"] == 0.0
    assert "0.300 ± 0.141" in common.markdown_table(agg, ("m",), ("x",))


def test_controls_match_m3_samples_per_update_and_distance():
    methods = {m.name: m for m in common.standard_methods(k=5)}
    assert methods["sgd-m0-bx5"].batch_mult == 5 and methods["sgd-m0-bx5"].momentum == 0
    assert methods["sgd-m0-lr/5"].lr_div == 5
    assert methods["mom5+sgd-m0.9"].median_of_means and methods["mom5+sgd-m0.9"].momentum == 0.9
    with pytest.raises(ValueError, match="unknown method"):
        common.method_by_name(["adam"], 3)


def test_median_of_means_with_k1_is_plain_sgd():
    # The transform with one group is a pass-through: the loop must then match plain SGD exactly.
    data = common.load_digits()
    cfg = common.TrainConfig(width=32, epochs=1, k=1, seed=0)
    x, y = data.x_train[:200], data.y_train[:200]
    plain = common.fit(x, y, data.x_test, data.y_test, 10, common.Method("sgd", "sgd", momentum=0.9), cfg)
    mom = common.fit(x, y, data.x_test, data.y_test, 10,
                     common.Method("mom", "sgd", momentum=0.9, median_of_means=True), cfg)
    for a, b in zip(plain.model.parameters(), mom.model.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------- the --quick runs


def test_memorization_quick(tmp_path):
    out = str(tmp_path / "mem")
    memorization.main(["--quick", "--out", out])
    for name in memorization.OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0, name

    summary = read_csv(os.path.join(out, "summary.csv"))
    methods = [m.name for m in common.standard_methods(3)]
    assert len(summary) == len(methods) * 2 * 2  # methods x noise {0, 0.5} x seeds {0, 1}
    assert {r["method"] for r in summary} == set(methods)
    assert {float(r["corrupt_fraction"]) for r in summary} == {0.0, 0.5}
    for col in ("method", "corrupt_fraction", "seed", "pristine_acc", "corrupt_acc", "test_acc", "gap"):
        assert col in summary[0]
    assert_fractions(summary, ("pristine_acc", "corrupt_acc", "train_acc", "test_acc"), allow_nan=("corrupt_acc",))
    for r in summary:  # no corrupt examples without noise, about half with 50%
        assert (float(r["corrupt_fraction"]) == 0) == math.isnan(float(r["corrupt_acc"]))
        assert float(r["gap"]) == pytest.approx(float(r["train_acc"]) - float(r["test_acc"]), abs=1e-5)
    # Learning happened: the baseline beats chance on the test set.
    base = [float(r["test_acc"]) for r in summary if r["method"] == "sgd-m0.9"]
    assert min(base) > 0.5

    table = read_csv(os.path.join(out, "table.csv"))
    assert len(table) == len(methods) * 2 and all(r["n"] == "2" for r in table)
    epochs = read_csv(os.path.join(out, "epochs.csv"))
    assert len(epochs) == len(summary) * (15 + 1)  # evaluated before training and after each epoch
    assert_fractions(epochs, ("test_acc",))

    with pytest.raises(FileExistsError, match="--overwrite"):
        memorization.main(["--quick", "--out", out])


def test_hardness_quick(tmp_path):
    out = str(tmp_path / "hard")
    hardness.main(["--quick", "--out", out])
    for name in hardness.OUTPUTS:
        assert os.path.getsize(os.path.join(out, name)) > 0, name

    n_train = len(common.load_digits().y_train)
    splits = read_csv(os.path.join(out, "splits.csv"))
    assert len(splits) == 2
    for s in splits:
        assert int(s["n_easy"]) + int(s["n_hard"]) == n_train
        assert float(s["warmup_train_acc"]) >= 0.5  # the split happens at the requested accuracy
    summary = read_csv(os.path.join(out, "summary.csv"))
    assert sorted(r["trained_on"] for r in summary) == ["easy", "easy", "hard", "hard", "random", "random"]
    assert_fractions(summary, ("train_acc", "heldout_acc", "other_acc", "test_acc"), allow_nan=("other_acc",))
    learned = read_csv(os.path.join(out, "learned.csv"))
    assert len(learned) == 2 * n_train
    assert {r["kind"] for r in learned} == {"easy", "hard"}
    for r in learned:
        for key in ("first_learned", "last_learned"):
            v = float(r[key])
            assert math.isnan(v) or 0.0 <= v <= 5.0


def test_memorization_on_an_image_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in ("cat", "dog", "fox"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(10, 10, 3, generator=g) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    out = str(tmp_path / "mem")
    memorization.main(["--data", str(root), "--image-size", "8", "--arch", "cnn", "--epochs", "2",
                       "--seeds", "0", "--noise", "0.5", "--methods", "sgd-m0.9,m3", "--batch-sizes", "6",
                       "--out", out])
    summary = read_csv(os.path.join(out, "summary.csv"))
    assert [r["method"] for r in summary] == ["sgd-m0.9", "m3"]
    assert all(r["data"] == "imgs" and r["arch"] == "cnn" for r in summary)
    assert all(int(r["n_pristine"]) + int(r["n_corrupt"]) == 36 for r in summary)
    assert_fractions(summary, ("pristine_acc", "corrupt_acc", "test_acc"))
