"""The bit-exact integer reference of a whole MoE-ViT, and its trace.

An :class:`IntegerModel` is a typed tree of the integer operators of :mod:`.intops`, built by
:func:`accel.models.quantize.calibrate` for one model and one task gate. ``run`` maps int8
images to int8 final features and int16 logits; ``trace`` runs one image and records every
operator's integer inputs, output and (through ``record.op``) constants, addressable by layer and
op name, for the kernel testbenches.

Op names per layer: ``ln1 qkv attention proj res1 ln2`` then ``fc1 fc2`` (dense MLP; ``fc1`` has
the GELU table fused) or ``gate expert{e}.fc1 expert{e}.fc2 moe`` (MoE), then ``res2``. Layer
``"embed"`` has ``patch`` and ``pos_add``; layer ``"head"`` has ``norm`` and ``head``.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import ModelConfig
from .errors import ShapeError
from .intops import (GateResult, IntAttention, IntLayerNorm, IntLinear, IntMoE, IntResidualAdd)

__all__ = ["IntEmbed", "IntMlp", "IntBlock", "IntegerModel", "IntOutput", "OpRecord", "Trace", "load_reference",
           "extract_patches"]

Layer = int | str


@dataclass(frozen=True)
class OpRecord:
    """One operator application: which op (with its integer constants), its inputs and output.

    Arrays have no batch axis (a trace is of one image); ``tokens`` lists the token indices an
    expert op processed (None for other ops)."""
    layer: Layer
    name: str
    op: Any
    inputs: tuple[np.ndarray, ...]
    output: Any  # np.ndarray, or GateResult for the gate
    tokens: np.ndarray | None = None

    @property
    def key(self) -> tuple[Layer, str]:
        return self.layer, self.name


@dataclass
class Trace:
    """Every operator's integer inputs, output and constants for one image, in execution order."""
    model: str
    task: int
    records: list[OpRecord] = field(default_factory=list)

    def add(self, layer: Layer, name: str, op: Any, inputs: tuple, output: Any,
            tokens: np.ndarray | None = None) -> None:
        self.records.append(OpRecord(layer, name, op, tuple(inputs), output, tokens))

    def get(self, layer: Layer, name: str) -> OpRecord:
        for r in self.records:
            if r.layer == layer and r.name == name:
                return r
        names = ", ".join(f"{r.layer}/{r.name}" for r in self.records)
        raise KeyError(f"trace of {self.model!r} has no op {name!r} in layer {layer!r}; it has: {names}")

    def of_kind(self, kind: type) -> list[OpRecord]:
        return [r for r in self.records if isinstance(r.op, kind)]

    def __iter__(self) -> Iterator[OpRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


def extract_patches(images: np.ndarray, patch: int) -> np.ndarray:
    """[B, C, H, W] -> [B, patches, C*P*P]: patches row-major over the grid, features in (c, y, x)
    order, matching a Conv2d weight [D, C, P, P] flattened."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, gh * gw, c * patch * patch)


@dataclass(frozen=True, eq=False)
class IntEmbed:
    patch: IntLinear      # flattened patches (int8) -> int8
    pos: np.ndarray       # int16 [tokens, D]: position embedding, class token folded into row 0
    add: IntResidualAdd   # residual stream 0 = pos + [0; patch]


@dataclass(frozen=True, eq=False)
class IntMlp:
    fc1: IntLinear  # GELU table fused
    fc2: IntLinear


@dataclass(frozen=True, eq=False)
class IntBlock:
    ln1: IntLayerNorm
    qkv: IntLinear
    attention: IntAttention
    proj: IntLinear
    res1: IntResidualAdd
    ln2: IntLayerNorm
    mlp: IntMlp | IntMoE
    res2: IntResidualAdd


@dataclass(frozen=True)
class IntOutput:
    features: np.ndarray  # int8 [B, D]: final-norm class token (int16 without a final norm), scale IntegerModel.feature_scale
    logits: np.ndarray    # int16 [B, classes], scale IntegerModel.logit_scale
    routing: tuple[np.ndarray, ...] = ()  # per MoE layer: chosen experts [B, tokens, k]


@dataclass(frozen=True, eq=False)
class IntegerModel:
    cfg: ModelConfig
    task: int
    input_scale: float     # image = int8 * input_scale (the float/int boundary)
    feature_scale: float
    logit_scale: float
    embed: IntEmbed
    blocks: tuple[IntBlock, ...]
    norm: IntLayerNorm | None   # None: features are the int16 class token of the residual stream
    head: IntLinear | None      # None: no classifier (logits have 0 columns)

    def quantize_images(self, images: np.ndarray) -> np.ndarray:
        """The boundary into the integer path: float images -> int8 (round half to even)."""
        self._check_shape(images)
        q = np.clip(np.rint(np.asarray(images, dtype=np.float64) / self.input_scale), -128, 127)
        return q.astype(np.int64)

    def _check_shape(self, images: np.ndarray) -> None:
        c = self.cfg
        want = (c.in_chans, *c.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ShapeError(f"image batch has shape {tuple(images.shape)}; model {c.name!r} expects "
                             f"(batch, {want[0]}, {want[1]}, {want[2]})")

    def run(self, images_q: np.ndarray, trace: Trace | None = None) -> IntOutput:
        """int8 images [B, C, H, W] -> int8 features and int16 logits. Integer-only."""
        self._check_shape(images_q)
        if images_q.dtype.kind not in "iu":
            raise ShapeError(f"run() takes int8-valued integer images (see quantize_images), got dtype "
                             f"{images_q.dtype}")
        if images_q.size and (images_q.min() < -128 or images_q.max() > 127):
            raise ShapeError(f"images hold values in [{images_q.min()}, {images_q.max()}], outside int8")
        if trace is not None and images_q.shape[0] != 1:
            raise ShapeError(f"a trace is of one image; got a batch of {images_q.shape[0]}")
        x = images_q.astype(np.int64)
        b = x.shape[0]

        def rec(layer, name, op, inputs, output, tokens=None, batched=True):
            if trace is None:
                return
            if batched:  # drop the batch axis of one
                inputs, output = tuple(a[0] for a in inputs), output[0]
            trace.add(layer, name, op, inputs, output, tokens)

        e = self.embed
        patches = extract_patches(x, self.cfg.patch_size)
        p = e.patch(patches)
        rec("embed", "patch", e.patch, (patches,), p)
        pos = np.broadcast_to(e.pos, (b, *e.pos.shape))
        branch = np.concatenate([np.zeros((b, 1, p.shape[2]), np.int64), p], axis=1)
        h = e.add(pos, branch)
        rec("embed", "pos_add", e.add, (pos, branch), h)
        routing: list[np.ndarray] = []
        for i, blk in enumerate(self.blocks):
            h = self._block(i, blk, h, rec, routing)
        f = h[:, 0]
        if self.norm is not None:
            cls, f = f, self.norm(f)
            rec("head", "norm", self.norm, (cls,), f)
        if self.head is not None:
            logits = self.head(f)
            rec("head", "head", self.head, (f,), logits)
        else:
            logits = np.zeros((b, 0), dtype=np.int64)
        return IntOutput(f, logits, tuple(routing))

    def _block(self, i: int, blk: IntBlock, x: np.ndarray, rec, routing: list) -> np.ndarray:
        b, n, d = x.shape
        a = blk.ln1(x)
        rec(i, "ln1", blk.ln1, (x,), a)
        qkv = blk.qkv(a)
        rec(i, "qkv", blk.qkv, (a,), qkv)
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        o = blk.attention(q, k, v)
        rec(i, "attention", blk.attention, (q, k, v), o)
        pr = blk.proj(o)
        rec(i, "proj", blk.proj, (o,), pr)
        x1 = blk.res1(x, pr)
        rec(i, "res1", blk.res1, (x, pr), x1)
        a2 = blk.ln2(x1)
        rec(i, "ln2", blk.ln2, (x1,), a2)
        if isinstance(blk.mlp, IntMlp):
            hdn = blk.mlp.fc1(a2)
            rec(i, "fc1", blk.mlp.fc1, (a2,), hdn)
            y = blk.mlp.fc2(hdn)
            rec(i, "fc2", blk.mlp.fc2, (hdn,), y)
        else:
            moe = blk.mlp
            flat = a2.reshape(b * n, d)

            def expert_rec(ex, tok, xe, he, ye):
                rec(i, f"expert{ex}.fc1", moe.experts[ex].fc1, (xe,), he, tok, batched=False)
                rec(i, f"expert{ex}.fc2", moe.experts[ex].fc2, (he,), ye, tok, batched=False)

            gate = moe.gate(flat)
            rec(i, "gate", moe.gate, (flat,), gate, batched=False)
            routing.append(gate.experts.reshape(b, n, -1))
            yf = moe.apply(flat, gate, expert_rec)
            rec(i, "moe", moe, (flat,), yf, batched=False)
            y = yf.reshape(b, n, d)
        x2 = blk.res2(x1, y)
        rec(i, "res2", blk.res2, (x1, y), x2)
        return x2

    def trace(self, image_q: np.ndarray) -> Trace:
        """Run one int8 image ([C, H, W] or [1, C, H, W]) and record every operator."""
        if image_q.ndim == 3:
            image_q = image_q[None]
        tr = Trace(self.cfg.name, self.task)
        self.run(image_q, tr)
        return tr

    def dequantize(self, out: IntOutput) -> tuple[np.ndarray, np.ndarray]:
        """(features, logits) as floats, for comparison with the float model."""
        return out.features * self.feature_scale, out.logits * self.logit_scale


def load_reference(name: str, task: int = 0) -> IntegerModel:
    """The calibrated integer reference of a zoo model (or a model YAML path), cached per process."""
    from .quantize import load_reference as _load
    return _load(name, task)
