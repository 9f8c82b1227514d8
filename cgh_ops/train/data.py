"""Data sets (scikit-learn digits, ImageFolder roots) and the label noise of PAPER.md."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch
from torch import Tensor

from .config import Config, ConfigError, is_digits

DIGITS_TRAIN = 1400  # of 1797; the remaining 397 are the test set (PAPER.md's numbers)
DIGITS_SPLIT_SEED = 0  # the split is fixed, independent of --seed
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _IndexedImages(torch.utils.data.Dataset):
    """An ImageFolder returning (image, index): labels are looked up by index (noisy or not)."""

    def __init__(self, folder):
        self.folder = folder

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        return self.folder[i][0], i


@dataclass
class Split:
    """Examples of one split: in memory (``x``) or an ImageFolder (``folder``), with labels."""

    labels: Tensor  # int64 [n], the clean labels
    x: Optional[Tensor] = None
    folder: Optional[object] = None

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, indices: Tensor, batch_size: int, workers: int = 0, pin: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """(inputs, indices) batches in the order of ``indices``."""
        if self.x is not None:
            for s in range(0, len(indices), batch_size):
                idx = indices[s : s + batch_size]
                yield self.x[idx], idx
            return
        loader = torch.utils.data.DataLoader(
            _IndexedImages(self.folder),
            batch_size=batch_size,
            sampler=indices.tolist(),
            num_workers=workers,
            pin_memory=pin,
        )
        yield from loader


@dataclass
class Dataset:
    train: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]


def _load_digits(subset: Optional[int]) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [1797, 1, 8, 8] in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.int64)
    perm = torch.from_numpy(np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(y)))
    tr, te = perm[:DIGITS_TRAIN], perm[DIGITS_TRAIN:]
    if subset is not None:
        tr = tr[:subset]
    return Dataset(Split(y[tr], x=x[tr]), Split(y[te], x=x[te]), 10, (1, 8, 8))


def _check_image_root(root: str) -> None:
    if not os.path.isdir(root):
        raise ConfigError(f"--data: {root!r} is neither 'digits' nor an existing folder")
    for sub in ("train", "val"):
        d = os.path.join(root, sub)
        if not os.path.isdir(d):
            raise ConfigError(f"--data: an ImageFolder root needs {sub}/ (with one folder per class), missing {d!r}")
        if not any(e.is_dir() for e in os.scandir(d)):
            raise ConfigError(f"--data: {d!r} has no class folders")


def _load_image_folder(root: str, image_size: int, subset: Optional[int]) -> Dataset:
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    _check_image_root(root)
    # The official trainer's default (no augmentation): resize, center crop, normalize.
    tf = T.Compose(
        [T.Resize(image_size * 256 // 224), T.CenterCrop(image_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    folders = {}
    for sub in ("train", "val"):
        try:
            folders[sub] = ImageFolder(os.path.join(root, sub), tf)
        except (FileNotFoundError, RuntimeError) as exc:  # no images of a known extension
            raise ConfigError(f"--data: {os.path.join(root, sub)!r}: {exc}") from None
    train, val = folders["train"], folders["val"]
    if not set(val.classes) <= set(train.classes):
        extra = sorted(set(val.classes) - set(train.classes))
        raise ConfigError(f"--data: val/ has classes that train/ lacks: {extra[:5]}")
    # Index val labels by the train folder's class order.
    val.samples = [(path, train.class_to_idx[val.classes[t]]) for path, t in val.samples]
    val.targets = [t for _, t in val.samples]
    train_labels = torch.tensor(train.targets, dtype=torch.int64)
    if subset is not None and subset < len(train):
        keep = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(len(train))[:subset]
        train.samples = [train.samples[i] for i in sorted(keep)]
        train.targets = [t for _, t in train.samples]
        train_labels = torch.tensor(train.targets, dtype=torch.int64)
    return Dataset(
        Split(train_labels, folder=train),
        Split(torch.tensor(val.targets, dtype=torch.int64), folder=val),
        len(train.classes),
        (3, image_size, image_size),
    )


def check_data(cfg: Config) -> None:
    """Fails early (before anything is written) on a missing or malformed data folder."""
    if not is_digits(cfg):
        _check_image_root(cfg.data)


def load(cfg: Config) -> Dataset:
    if is_digits(cfg):
        return _load_digits(cfg.train_subset)
    return _load_image_folder(cfg.data, cfg.image_size, cfg.train_subset)


def corrupt_labels(labels: Tensor, num_classes: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """PAPER.md's label noise (the official ``VisionDatasetWithCorruption``).

    Each example, with probability ``fraction``, gets a label drawn uniformly from all
    classes (so it may draw its own label). An example is *corrupt* when its label changed.
    Returns ``(noisy_labels, corrupt_mask)``; seeded by ``seed`` alone.
    """
    rng = np.random.RandomState(seed)
    n = len(labels)
    should = rng.uniform(0, 1, size=n) < fraction
    drawn = rng.randint(0, num_classes, size=n)
    noisy = torch.from_numpy(np.where(should, drawn, labels.numpy())).to(torch.int64)
    return noisy, noisy != labels


def eval_samples(corrupt: Tensor, sample_size: Optional[int], seed: int) -> tuple[Tensor, Tensor]:
    """Indices of the pristine and corrupt training examples evaluated each epoch."""
    perm = torch.from_numpy(np.random.RandomState(seed + 1).permutation(len(corrupt)))
    pristine = perm[~corrupt[perm]]
    bad = perm[corrupt[perm]]
    if sample_size is not None:
        pristine, bad = pristine[:sample_size], bad[:sample_size]
    return pristine.sort().values, bad.sort().values
