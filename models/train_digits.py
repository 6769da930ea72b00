"""Train the digits-moe float model on scikit-learn's digits and write its weights.

    python -m accel.models.train_digits [--epochs N] [--out models/weights/digits-moe.npz]

Seeded and CPU-only (a few minutes on 2 cores). The loss adds a small load-balancing term (the
squared coefficient of variation of each MoE layer's expert importance, as in V-MoE) so that no
expert starves. Weights are stored as float16; the shipped float model is exactly those values.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import WEIGHTS_DIR, load_config
from .data import digits_splits
from .float_model import MoEViT, load_weights, save_weights


def shift_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel (zero padding at the background value -1)."""
    b = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy = torch.randint(0, 3, (b,), generator=gen)
    dx = torch.randint(0, 3, (b,), generator=gen)
    out = torch.empty_like(x)
    for i in range(b):
        out[i] = padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8]
    return out


def train(epochs: int, seed: int, out: Path, log=print) -> dict:
    cfg = load_config("digits-moe")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MoEViT(cfg)
    train_split, test_split = digits_splits()
    xtr, ytr = torch.from_numpy(train_split.images), torch.from_numpy(train_split.labels)
    xte, yte = torch.from_numpy(test_split.images), torch.from_numpy(test_split.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * ((len(xtr) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = perm[i:i + 64]
            importance: list[torch.Tensor] = []

            def rec(name, t):
                if name.endswith(".gate_logits"):
                    importance.append(t.softmax(-1).sum(0))

            logits = model(shift_augment(xtr[idx], gen), 0, rec)
            loss = F.cross_entropy(logits, ytr[idx], label_smoothing=0.05)
            for imp in importance:
                loss = loss + 0.01 * (imp.std() / imp.mean()) ** 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if epoch % 10 == 9 or epoch == epochs - 1:
            model.eval()
            with torch.no_grad():
                acc = (model(xte).argmax(-1) == yte).float().mean().item()
            log(f"epoch {epoch + 1}/{epochs} loss {loss.item():.3f} test accuracy {acc:.4f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, out)
    # measure the shipped (float16-rounded) weights, not the training copy
    shipped = load_weights(MoEViT(cfg), out).eval()
    with torch.no_grad():
        acc = (shipped(xte).argmax(-1) == yte).float().mean().item()
    return {"epochs": epochs, "seed": seed, "test_accuracy": acc, "weights": str(out),
            "bytes": out.stat().st_size}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR / "digits-moe.npz")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    result = train(args.epochs, args.seed, args.out, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
