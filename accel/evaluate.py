"""Float model vs integer reference on a model's held-out evaluation images."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from accel.models.data import eval_set
from accel.models.quantize import load_pair

BATCH = 16


@dataclass(frozen=True)
class EvalResult:
    model: str
    task: int
    samples: int
    fp_accuracy: float | None     # labelled data only (digits)
    int_accuracy: float | None
    cosine: float                 # mean cosine of dequantized integer vs float final features
    cosine_min: float
    top1_agreement: float | None  # integer argmax == float argmax (None: the model has no head)
    routing_agreement: float | None  # share of (token, MoE layer) with the float model's expert set
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)


def evaluate(name: str, task: int = 0, images: int | None = None,
             progress: Callable[[str], None] | None = None) -> EvalResult:
    t0 = time.perf_counter()
    if progress:
        progress(f"{name}: building the float model and calibrating the integer reference")
    fm, im = load_pair(name, task)
    data = eval_set(fm.cfg, images)
    n = len(data.images)
    cos, agree, fp_hit, int_hit, route_same, route_all = [], [], 0, 0, 0, 0
    k = fm.cfg.moe.top_k if fm.cfg.moe else 0
    for start in range(0, n, BATCH):
        x = data.images[start:start + BATCH]
        gate_logits = []
        rec = lambda name, t: gate_logits.append(t.numpy()) if name.endswith(".gate_logits") else None
        with torch.no_grad():
            feats = fm.features(torch.from_numpy(x), task, rec)
            logits = fm.classify(feats).numpy()
        feats = feats.numpy().astype(np.float64)
        out = im.run(im.quantize_images(x))
        fi, li = im.dequantize(out)
        for fl, chosen in zip(gate_logits, out.routing):
            f_set = np.sort(np.argsort(-fl, axis=-1, kind="stable")[:, :k], axis=-1)
            i_set = np.sort(chosen.reshape(-1, k), axis=-1)
            route_same += int((f_set == i_set).all(axis=-1).sum())
            route_all += len(f_set)
        cos.append((feats * fi).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(fi, axis=1) + 1e-30))
        if logits.shape[1]:
            agree.append(logits.argmax(1) == li.argmax(1))
        if data.labels is not None:
            y = data.labels[start:start + BATCH]
            fp_hit += int((logits.argmax(1) == y).sum())
            int_hit += int((li.argmax(1) == y).sum())
        done = min(start + BATCH, n)
        if progress and (done == n or (start // BATCH) % max(1, n // BATCH // 8) == 0):
            progress(f"{name}: {done}/{n} images")
    cos_all = np.concatenate(cos)
    labelled = data.labels is not None
    return EvalResult(
        model=fm.cfg.name, task=task, samples=n,
        fp_accuracy=fp_hit / n if labelled else None,
        int_accuracy=int_hit / n if labelled else None,
        cosine=float(cos_all.mean()), cosine_min=float(cos_all.min()),
        top1_agreement=float(np.concatenate(agree).mean()) if agree else None,
        routing_agreement=route_same / route_all if route_all else None,
        seconds=round(time.perf_counter() - t0, 3))
