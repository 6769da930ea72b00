"""The float MoE-ViT in PyTorch, built from a :class:`ModelConfig`.

Parameter names follow timm's VisionTransformer and M3ViT's MoE blocks, so checkpoints in those
layouts map onto it: ``patch_embed.proj`` (Conv2d), ``cls_token``, ``pos_embed``,
``blocks.{i}.norm1/attn.qkv/attn.proj/norm2``, dense ``blocks.{i}.mlp.fc1/fc2``, MoE
``blocks.{i}.mlp.experts.htoh4/h4toh`` ([E, out, in] weights) and ``blocks.{i}.mlp.gate.{t}.w_gate``
([D, E], no bias, one per task), ``norm``, ``head``.

``forward(images, task, rec)`` takes an optional recorder ``rec(name, tensor)`` that sees every
quantization point; calibration uses it to find activation ranges.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .errors import ConfigError, ShapeError

Recorder = Callable[[str, torch.Tensor], None]

LN_EPS = 1e-6


def _noop(name: str, t: torch.Tensor) -> None:
    return None


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch_size, cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, patches, D], row-major over the grid


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rec: Recorder, prefix: str) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x)
        q, k, v = qkv.split(d, dim=-1)
        rec(prefix + ".q", q), rec(prefix + ".k", k), rec(prefix + ".v", v)
        hd = d // self.heads

        def split(t):
            return t.reshape(b, n, self.heads, hd).transpose(1, 2)

        scores = split(q) @ split(k).transpose(-1, -2) * hd ** -0.5
        out = (scores.softmax(dim=-1) @ split(v)).transpose(1, 2).reshape(b, n, d)
        rec(prefix + ".attn", out)
        out = self.proj(out)
        rec(prefix + ".proj", out)
        return out


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, rec: Recorder, prefix: str, task: int = 0) -> torch.Tensor:
        h = self.fc1(x)
        rec(prefix + ".fc1", h)
        g = F.gelu(h)
        rec(prefix + ".gelu", g)
        y = self.fc2(g)
        rec(prefix + ".fc2", y)
        return y


class ExpertLinear(nn.Module):
    """E independent linears stored as weight [E, out, in], bias [E, out] (M3ViT's FMoE layout)."""

    def __init__(self, experts: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(experts, d_out))
        bound = 1 / math.sqrt(d_in)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, expert: int) -> torch.Tensor:
        return x @ self.weight[expert].T + self.bias[expert]


class Experts(nn.Module):
    def __init__(self, experts: int, dim: int, hidden: int):
        super().__init__()
        self.htoh4 = ExpertLinear(experts, dim, hidden)
        self.h4toh = ExpertLinear(experts, hidden, dim)


class Gate(nn.Module):
    def __init__(self, dim: int, experts: int):
        super().__init__()
        self.w_gate = nn.Parameter(torch.randn(dim, experts) / math.sqrt(dim))


def top_k_stable(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along the last axis, best first, ties to the lower index."""
    values, index = torch.sort(probs, dim=-1, descending=True, stable=True)
    return values[..., :k], index[..., :k]


class MoEMlp(nn.Module):
    """V-MoE/M3ViT gate: softmax over all experts, top-k, optional renormalization;
    output = sum over the k chosen experts of p * expert(x)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.top_k, self.renormalize, self.n_experts = m.top_k, m.renormalize, m.experts
        self.experts = Experts(m.experts, cfg.dim, m.expert_hidden)
        self.gate = nn.ModuleList(Gate(cfg.dim, m.experts) for _ in range(m.tasks))

    def forward(self, x: torch.Tensor, rec: Recorder, prefix: str, task: int = 0) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = x @ self.gate[task].w_gate
        rec(prefix + ".gate_logits", logits)
        weights, chosen = top_k_stable(logits.softmax(dim=-1), self.top_k)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(self.n_experts):
            tok, slot = torch.nonzero(chosen == e, as_tuple=True)
            if tok.numel() == 0:
                continue
            h = self.experts.htoh4(x[tok], e)
            rec(prefix + ".expert_fc1", h)
            g = F.gelu(h)
            rec(prefix + ".expert_gelu", g)
            y = self.experts.h4toh(g, e)
            rec(prefix + ".expert_fc2", y)
            out.index_add_(0, tok, y * weights[tok, slot, None])
        out = out.reshape(shape)
        rec(prefix + ".moe", out)
        return out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=LN_EPS)
        self.mlp = MoEMlp(cfg) if cfg.is_moe(layer) else Mlp(cfg.dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor, task: int, rec: Recorder, prefix: str) -> torch.Tensor:
        h = self.norm1(x)
        rec(prefix + ".ln1", h)
        x = x + self.attn(h, rec, prefix)
        rec(prefix + ".res1", x)
        h = self.norm2(x)
        rec(prefix + ".ln2", h)
        x = x + self.mlp(h, rec, prefix, task)
        rec(prefix + ".res2", x)
        return x


class MoEViT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.tokens, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=LN_EPS) if cfg.final_norm else None
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes else None

    def check_images(self, images: torch.Tensor | np.ndarray) -> None:
        c = self.cfg
        want = (c.in_chans, *c.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ShapeError(f"image batch has shape {tuple(images.shape)}; model {c.name!r} expects "
                             f"(batch, {want[0]}, {want[1]}, {want[2]})")

    def check_task(self, task: int) -> None:
        if not 0 <= task < self.cfg.tasks:
            raise ConfigError(f"task {task!r} is out of range: model {self.cfg.name!r} has "
                              f"{self.cfg.tasks} task gate(s), numbered from 0")

    def tokens(self, images: torch.Tensor, task: int = 0, rec: Recorder = _noop) -> torch.Tensor:
        """The residual stream after the last block, [B, tokens, D]."""
        self.check_images(images)
        self.check_task(task)
        rec("input", images)
        x = self.patch_embed(images)
        rec("embed.patch", x)
        pos = self.pos_embed.clone()
        pos[:, 0] = pos[:, 0] + self.cls_token[:, 0]
        rec("embed.pos", pos)
        x = torch.cat([torch.zeros_like(x[:, :1]), x], dim=1) + pos
        rec("embed.out", x)
        for i, blk in enumerate(self.blocks):
            x = blk(x, task, rec, f"blocks.{i}")
        return x

    def features(self, images: torch.Tensor, task: int = 0, rec: Recorder = _noop) -> torch.Tensor:
        """Class-token features [B, D], after the final norm when the model has one."""
        f = self.tokens(images, task, rec)[:, 0]
        if self.norm is not None:
            f = self.norm(f)
            rec("norm", f)
        return f

    def classify(self, features: torch.Tensor, rec: Recorder = _noop) -> torch.Tensor:
        """Logits [B, classes] from features ([B, 0] for a model without a head)."""
        if self.head is None:
            return features[:, :0]
        logits = self.head(features)
        rec("head", logits)
        return logits

    def forward(self, images: torch.Tensor, task: int = 0, rec: Recorder = _noop) -> torch.Tensor:
        return self.classify(self.features(images, task, rec), rec)


def init_random(model: MoEViT, seed: int) -> MoEViT:
    """Seeded random weights shaped like a trained network's: normal weights with std
    1/sqrt(fan_in), small random biases, LayerNorm gains near 1, position embedding std 0.02."""
    gen = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=gen) * std + mean)

    for name, p in sorted(model.named_parameters()):
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            normal(p, 0.1, 1.0)
        elif p.ndim == 1 or name.endswith("experts.htoh4.bias") or name.endswith("experts.h4toh.bias"):
            normal(p, 0.02)
        elif name in ("cls_token", "pos_embed"):
            normal(p, 0.02)
        elif name.endswith("w_gate"):
            normal(p, 1 / math.sqrt(p.shape[0]))
        else:
            fan_in = int(np.prod(p.shape[1:])) if p.ndim != 3 else p.shape[2]
            normal(p, 1 / math.sqrt(fan_in))
    return model


def save_weights(model: MoEViT, path: Path, dtype=np.float16) -> None:
    """Weights in a compressed .npz keyed by parameter name (float16 for the shipped zoo models:
    the float model is then exactly those values; float32 for imported checkpoints)."""
    arrays = {k: v.detach().cpu().numpy().astype(dtype) for k, v in model.state_dict().items()}
    np.savez_compressed(path, **arrays)


def load_weights(model: MoEViT, path: Path) -> MoEViT:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    own = model.state_dict()
    for key in own:
        if key not in arrays:
            raise ConfigError(f"{path.name}: weight {key!r} is missing; the file does not match "
                              f"model {model.cfg.name!r} (retrain or fix the config)")
        if tuple(arrays[key].shape) != tuple(own[key].shape):
            raise ConfigError(f"{path.name}: weight {key!r} has shape {arrays[key].shape}, model "
                              f"{model.cfg.name!r} needs {tuple(own[key].shape)}")
    extra = sorted(set(arrays) - set(own))
    if extra:
        raise ConfigError(f"{path.name}: weight {extra[0]!r} has no place in model {model.cfg.name!r}")
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()})
    return model


def build_float_model(cfg: ModelConfig) -> MoEViT:
    """The float model with its weights: the shipped file, or seeded random weights."""
    torch.manual_seed(cfg.seed)
    model = MoEViT(cfg)
    path = cfg.weights_path()
    if path is None:
        init_random(model, cfg.seed)
    else:
        load_weights(model, path)
    return model.eval()
