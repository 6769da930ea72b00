"""Post-training calibration: float model + calibration images -> :class:`IntegerModel`.

The float model runs on the calibration set with a recorder that keeps the largest magnitude
seen at every quantization point. Scales follow (docs/numerics.md):

- int8 activations: s = max|x| / 127 (symmetric, zero point 0, per tensor);
- int16 points (residual stream, gate and class logits): s = HEADROOM_16 * max|x| / 32767, so
  images outside the calibration set rarely saturate;
- weights: int8 per output channel, s_w[c] = max|W[c]| / 127; biases int32 at s_x * s_w[c].

Every float scale becomes integer constants here, once; the integer path never sees a float.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .config import ModelConfig, load_config
from .data import calibration_set
from .errors import NumericsError
from .float_model import MoEViT, build_float_model
from .intops import (ATTN_RECIP_BITS, GATE_PROB_BITS, LN_MULT_LIMIT, LN_Z_BITS, RES_MULT_BITS,
                     EXP2_FRAC_BITS, IntAttention, IntExpert, IntGate, IntLayerNorm, IntLinear,
                     IntMoE, IntResidualAdd, Requant, dyadic)
from .reference import IntBlock, IntEmbed, IntegerModel, IntMlp

HEADROOM_16 = 1.5
LOG2E = math.log2(math.e)

__all__ = ["calibrate", "load_reference", "ActivationRanges", "HEADROOM_16"]


class ActivationRanges:
    """Largest |value| per named point over everything recorded."""

    def __init__(self):
        self.max_abs: dict[str, float] = defaultdict(float)

    def __call__(self, name: str, t: torch.Tensor) -> None:
        if t.numel():
            self.max_abs[name] = max(self.max_abs[name], float(t.detach().abs().max()))

    def scale8(self, name: str) -> float:
        return self._scale(name, 127)

    def scale16(self, name: str) -> float:
        return self._scale(name, 32767) * HEADROOM_16

    def _scale(self, name: str, qmax: int) -> float:
        if name not in self.max_abs:
            raise NumericsError(f"calibration never reached {name!r}; use more calibration images")
        m = self.max_abs[name]
        return (m if m > 0 else 1.0) / qmax


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel (rows of w [out, in]): (int8 weights, scales [out])."""
    m = np.abs(w).max(axis=1)
    s = np.where(m > 0, m, 1.0) / 127.0
    q = np.clip(np.rint(w / s[:, None]), -127, 127).astype(np.int64)
    return q, s


def make_linear(w: np.ndarray, b: np.ndarray | None, s_in: float, s_out, out_bits: int = 8,
                gelu: tuple[float, float] | None = None) -> IntLinear:
    """Quantize a float linear y = x W^T + b whose input has scale s_in and output scale s_out
    (a number, or one per output channel). ``gelu=(s_pre, s_post)`` fuses a GELU table."""
    wq, sw = quantize_weight(w)
    acc_scale = s_in * sw
    bias = np.zeros(w.shape[0]) if b is None else b
    bq = np.rint(bias / acc_scale)
    if np.abs(bq).max(initial=0) >= 2 ** 31:
        raise NumericsError(f"a bias quantizes beyond int32 (max {np.abs(bq).max():.3g}); the input scale "
                            f"{s_in:.3g} is too small for it")
    ratios = acc_scale / np.broadcast_to(np.asarray(s_out, dtype=np.float64), acc_scale.shape)
    table = gelu_table(*gelu) if gelu is not None else None
    lin = IntLinear(wq, bq.astype(np.int64), Requant.from_ratios(ratios, out_bits), table)
    if lin.acc_bound >= 2 ** 31:
        raise NumericsError(f"linear {w.shape[1]}->{w.shape[0]}: accumulator bound {lin.acc_bound} "
                            ">= 2**31; the int32 accumulator could overflow")
    return lin


def gelu_table(s_pre: float, s_post: float) -> np.ndarray:
    """table[i + 128] = clamp8(round(GELU(i * s_pre) / s_post)) for every int8 i."""
    x = torch.arange(-128, 128, dtype=torch.float64) * s_pre
    t = np.rint(_np(F.gelu(x)) / s_post)
    return np.clip(t, -128, 127).astype(np.int64)


def make_layernorm(gamma: np.ndarray, beta: np.ndarray, s_out: float) -> IntLayerNorm:
    """Fold the affine into the output requantization: out = (z*mult + offset) >> shift with
    z ~ 2**10 * normalized, so mult / 2**shift ~ gamma / (2**10 * s_out)."""
    ratio = gamma * 2.0 ** -LN_Z_BITS / s_out
    top = float(np.abs(ratio).max()) or 1.0
    shift = int(min(62, math.floor(math.log2((LN_MULT_LIMIT - 1) / top))))
    if shift < 0:
        raise NumericsError(f"LayerNorm gain {top:.3g} is too large for the output scale {s_out:.3g}")
    mult = np.rint(ratio * 2.0 ** shift).astype(np.int64)
    offset = np.rint(beta / s_out * 2.0 ** shift).astype(np.int64)
    return IntLayerNorm(mult, offset, shift)


def make_residual(s_x: float, s_b: float, s_y: float) -> IntResidualAdd:
    """y = (x*mx + b*mb + round) >> k with mx/2**k ~ s_x/s_y, mb/2**k ~ s_b/s_y, the larger
    multiplier in [2**22, 2**23)."""
    rx, rb = s_x / s_y, s_b / s_y
    k = RES_MULT_BITS - 1 - math.floor(math.log2(max(rx, rb)))
    if k < 0:
        raise NumericsError(f"residual add: scale ratio {max(rx, rb):.3g} >= 2**23; calibration is inconsistent")
    k = min(k, 62)
    return IntResidualAdd(round(rx * 2 ** k), round(rb * 2 ** k), k)


def make_exp(s_diff: float) -> tuple[int, int]:
    """(mult, shift) turning an integer difference at scale s_diff into u = diff * s_diff *
    log2(e) * 2**8, the input of the exp2 table."""
    return dyadic(s_diff * LOG2E * (1 << EXP2_FRAC_BITS))


def calibrate(model: MoEViT, images: np.ndarray, task: int = 0,
              progress: Callable[[str], None] | None = None) -> IntegerModel:
    cfg = model.cfg
    model.check_task(task)
    r = ActivationRanges()
    with torch.no_grad():
        for i in range(0, len(images), 16):
            model(torch.from_numpy(np.ascontiguousarray(images[i:i + 16])), task, r)
    if progress:
        progress(f"calibrated {cfg.name} on {len(images)} images")
    sd = {k: _np(v) for k, v in model.state_dict().items()}

    s_in = r.scale8("input")
    pw = sd["patch_embed.proj.weight"].reshape(cfg.dim, -1)
    patch = make_linear(pw, sd["patch_embed.proj.bias"], s_in, r.scale8("embed.patch"))
    s_pos = r.max_abs["embed.pos"] / 32767 or 1.0
    pos_f = sd["pos_embed"][0].copy()
    pos_f[0] += sd["cls_token"][0, 0]
    pos_q = np.clip(np.rint(pos_f / s_pos), -32768, 32767).astype(np.int64)
    s_res = r.scale16("embed.out")
    embed = IntEmbed(patch, pos_q, make_residual(s_pos, r.scale8("embed.patch"), s_res))

    blocks = []
    hd = cfg.head_dim
    for i in range(cfg.depth):
        p = f"blocks.{i}"
        s_ln1 = r.scale8(p + ".ln1")
        ln1 = make_layernorm(sd[p + ".norm1.weight"], sd[p + ".norm1.bias"], s_ln1)
        s_q, s_k, s_v = r.scale8(p + ".q"), r.scale8(p + ".k"), r.scale8(p + ".v")
        s_qkv = np.repeat([s_q, s_k, s_v], cfg.dim)
        qkv = make_linear(sd[p + ".attn.qkv.weight"], sd[p + ".attn.qkv.bias"], s_ln1, s_qkv)
        s_attn = r.scale8(p + ".attn")
        exp_mult, exp_shift = make_exp(s_q * s_k / math.sqrt(hd))
        out_mult, out_k = dyadic(s_v / s_attn)
        attention = IntAttention(cfg.heads, exp_mult, exp_shift, out_mult, ATTN_RECIP_BITS + out_k)
        s_proj = r.scale8(p + ".proj")
        proj = make_linear(sd[p + ".attn.proj.weight"], sd[p + ".attn.proj.bias"], s_attn, s_proj)
        s_res1 = r.scale16(p + ".res1")
        res1 = make_residual(s_res, s_proj, s_res1)
        s_ln2 = r.scale8(p + ".ln2")
        ln2 = make_layernorm(sd[p + ".norm2.weight"], sd[p + ".norm2.bias"], s_ln2)
        s_res2 = r.scale16(p + ".res2")
        if cfg.is_moe(i):
            m = cfg.moe
            s_logit = r.scale16(p + ".gate_logits")
            gate_lin = make_linear(sd[f"{p}.mlp.gate.{task}.w_gate"].T, None, s_ln2, s_logit, out_bits=16)
            g_mult, g_shift = make_exp(s_logit)
            gate = IntGate(gate_lin, m.top_k, g_mult, g_shift, m.renormalize)
            s_h, s_g, s_e = (r.scale8(p + ".expert_fc1"), r.scale8(p + ".expert_gelu"),
                             r.scale8(p + ".expert_fc2"))
            experts = tuple(
                IntExpert(
                    make_linear(sd[p + ".mlp.experts.htoh4.weight"][e], sd[p + ".mlp.experts.htoh4.bias"][e],
                                s_ln2, s_h, gelu=(s_h, s_g)),
                    make_linear(sd[p + ".mlp.experts.h4toh.weight"][e], sd[p + ".mlp.experts.h4toh.bias"][e],
                                s_g, s_e))
                for e in range(m.experts))
            s_moe = r.scale8(p + ".moe")
            combine = Requant.from_ratios([s_e * 2.0 ** -GATE_PROB_BITS / s_moe], 8)
            mlp = IntMoE(gate, experts, combine)
            s_branch = s_moe
        else:
            s_h, s_g, s_f = r.scale8(p + ".fc1"), r.scale8(p + ".gelu"), r.scale8(p + ".fc2")
            mlp = IntMlp(make_linear(sd[p + ".mlp.fc1.weight"], sd[p + ".mlp.fc1.bias"], s_ln2, s_h, gelu=(s_h, s_g)),
                         make_linear(sd[p + ".mlp.fc2.weight"], sd[p + ".mlp.fc2.bias"], s_g, s_f))
            s_branch = s_f
        res2 = make_residual(s_res1, s_branch, s_res2)
        blocks.append(IntBlock(ln1, qkv, attention, proj, res1, ln2, mlp, res2))
        s_res = s_res2

    norm, s_feat = None, s_res  # without a final norm the features are the int16 class token
    if cfg.final_norm:
        s_feat = r.scale8("norm")
        norm = make_layernorm(sd["norm.weight"], sd["norm.bias"], s_feat)
    head, s_logits = None, 1.0
    if cfg.num_classes:
        if norm is None:
            raise NumericsError(f"model {cfg.name!r}: a classification head needs the final norm (int8 "
                                "features); set final_norm: true or num_classes: 0")
        s_logits = r.scale16("head")
        head = make_linear(sd["head.weight"], sd["head.bias"], s_feat, s_logits, out_bits=16)
    return IntegerModel(cfg, task, s_in, s_feat, s_logits, embed, tuple(blocks), norm, head)


@lru_cache(maxsize=8)
def _cached(name: str, task: int) -> tuple[MoEViT, IntegerModel]:
    cfg = load_config(name)
    model = build_float_model(cfg)
    return model, calibrate(model, calibration_set(cfg), task)


def load_reference(name: str, task: int = 0) -> IntegerModel:
    """The calibrated integer reference of a zoo model (or model YAML path), cached per process."""
    return _cached(str(name), task)[1]


def load_pair(name: str, task: int = 0) -> tuple[MoEViT, IntegerModel]:
    """(float model, integer reference), calibrated on the model's calibration set."""
    return _cached(str(name), task)
