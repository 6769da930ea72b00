"""Evaluation and calibration data for the zoo: scikit-learn's bundled digits (no network) or
seeded random images. Images are float32 [B, C, H, W]; the integer path starts where
:func:`accel.models.quantize.quantize_images` turns them into int8."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    images: np.ndarray          # float32 [B, C, H, W]
    labels: np.ndarray | None   # int64 [B], or None for unlabeled random images


def digits_splits() -> tuple[Split, Split]:
    """(train, test): the fixed, stratified 80/20 split of the 1797 digits; pixels 0..16 mapped
    to [-1, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data.astype(np.float32) / 8.0 - 1.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=DIGITS_TEST_FRACTION,
                                          random_state=DIGITS_SPLIT_SEED, stratify=y)
    return Split(xtr, ytr), Split(xte, yte)


def random_images(cfg: ModelConfig, count: int, stream: int) -> np.ndarray:
    """Seeded standard-normal images; ``stream`` 0 is calibration, 1 is evaluation (disjoint)."""
    rng = np.random.default_rng([cfg.seed, 1000 + stream])
    return rng.standard_normal((count, cfg.in_chans, *cfg.image_size)).astype(np.float32)


def calibration_set(cfg: ModelConfig) -> np.ndarray:
    n = cfg.data.calibration_images
    if cfg.data.dataset == "digits":
        return digits_splits()[0].images[:n]
    return random_images(cfg, n, 0)


def eval_set(cfg: ModelConfig, limit: int | None = None) -> Split:
    """The held-out images (never used for calibration or training)."""
    n = cfg.data.eval_images if limit is None else min(limit, cfg.data.eval_images)
    if cfg.data.dataset == "digits":
        test = digits_splits()[1]
        return Split(test.images[:n], test.labels[:n])
    return Split(random_images(cfg, n, 1), None)
