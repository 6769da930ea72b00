"""Integer-only operators of the reference model: the numerics contract in code.

Every function here takes and returns numpy int64 arrays holding values of a declared bit width.
No floating point is used on data, with one proven exception: :func:`exact_matmul` runs integer
matrix products on float64 BLAS after checking that no partial sum can reach 2**53, where every
float64 sum of integers is exact. Constants (multipliers, shifts, tables) are derived from float
scales once, at calibration time, in :mod:`accel.models.quantize`; here they are plain integers.

docs/numerics.md gives every formula with its bit widths and bounds; the hardware units in
accel.hdl reproduce these functions bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import NumericsError, ShapeError

__all__ = [
    "EXP2_FRAC_BITS", "EXP2_OUT_BITS", "EXP2_TABLE", "ATTN_RECIP_BITS", "GATE_PROB_BITS",
    "clamp_bits", "rounding_shift", "requantize", "exact_matmul", "isqrt_floor", "exp2_neg",
    "dyadic", "Requant", "IntLinear", "IntLayerNorm", "IntResidualAdd", "IntAttention",
    "IntGate", "GateResult", "IntExpert", "IntMoE",
]

FLOAT64_EXACT_LIMIT = 1 << 53

# exp unit: 2**(-u / 2**EXP2_FRAC_BITS) as (table of the fractional part) >> (integer part)
EXP2_FRAC_BITS = 8
EXP2_OUT_BITS = 15
EXP2_TABLE = np.array(
    [round((1 << EXP2_OUT_BITS) * 2.0 ** (-f / (1 << EXP2_FRAC_BITS))) for f in range(1 << EXP2_FRAC_BITS)],
    dtype=np.int64,
)
EXP2_TABLE.setflags(write=False)

# attention: one reciprocal per row, floor(mult * 2**ATTN_RECIP_BITS / row_sum)
ATTN_RECIP_BITS = 24
# MoE gate probabilities are unsigned integers at scale 2**-GATE_PROB_BITS
GATE_PROB_BITS = 15
GATE_RECIP_BITS = 16
# LayerNorm: std = isqrt(var << LN_VAR_SHIFT), factor = floor(2**LN_RECIP_BITS / std),
# z = round(yc * factor / 2**LN_Z_SHIFT) ~ 2**LN_Z_BITS * normalized
LN_MAX_CHANNELS = 1024
LN_VAR_SHIFT = 12
LN_RECIP_BITS = 46
LN_Z_SHIFT = 30
LN_Z_BITS = LN_RECIP_BITS - LN_VAR_SHIFT // 2 - LN_Z_SHIFT  # 10
LN_MULT_LIMIT = 1 << 23
# residual add multipliers: the larger one in [2**22, 2**23)
RES_MULT_BITS = 23


def _int64(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise NumericsError(f"integer path received dtype {a.dtype}; only integer arrays may enter it")
    return a.astype(np.int64, copy=False)


def clamp_bits(x: np.ndarray, bits: int, signed: bool = True) -> np.ndarray:
    """Saturate to a two's-complement (or unsigned) range of ``bits`` bits."""
    if signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    return np.clip(x, lo, hi)


def rounding_shift(x: np.ndarray, shift) -> np.ndarray:
    """floor((x + 2**(shift-1)) / 2**shift): arithmetic right shift, rounding half up.

    ``shift`` may be an array broadcast against ``x``; a shift of 0 returns ``x``."""
    shift = np.asarray(shift, dtype=np.int64)
    half = np.left_shift(np.int64(1), shift) >> 1
    return np.right_shift(x + half, shift)


def requantize(acc: np.ndarray, mult, shift, bits: int) -> np.ndarray:
    """Dyadic requantization y = clamp_bits((acc * mult + 2**(shift-1)) >> shift)."""
    return clamp_bits(rounding_shift(acc * np.asarray(mult, dtype=np.int64), shift), bits)


def exact_matmul(a: np.ndarray, b: np.ndarray, a_max: int, b_max: int) -> np.ndarray:
    """Integer a @ b, exact, computed with float64 BLAS.

    ``a_max``/``b_max`` are the largest magnitudes the operands' declared widths allow. Every
    partial sum of K products is bounded by K * a_max * b_max; while that stays below 2**53 all
    float64 additions are exact (integers below 2**53 are representable and so is each sum)."""
    k = a.shape[-1]
    if k != b.shape[-2]:
        raise ShapeError(f"matmul inner dimensions differ: {a.shape} @ {b.shape}")
    bound = k * int(a_max) * int(b_max)
    if bound >= FLOAT64_EXACT_LIMIT:
        raise NumericsError(
            f"exact_matmul: K={k} with operands up to {a_max} and {b_max} can reach {bound} >= 2**53, "
            "where float64 sums stop being exact; narrow the operands or split K")
    out = np.matmul(a.astype(np.float64), b.astype(np.float64))
    return out.astype(np.int64)


def isqrt_floor(v: np.ndarray) -> np.ndarray:
    """Exact floor(sqrt(v)) for int64 v in [0, 2**62], by integer Newton iteration.

    Starting at 2**31 >= sqrt(v), x <- (x + v // x) // 2 decreases monotonically and never drops
    below floor(sqrt(v)) (AM-GM); the first step that does not decrease leaves x = floor(sqrt(v))."""
    v = _int64(v)
    if v.size and (v.min() < 0 or v.max() > (1 << 62)):
        raise NumericsError(f"isqrt_floor: input outside [0, 2**62]: min {v.min()}, max {v.max()}")
    x = np.full(v.shape, 1 << 31, dtype=np.int64)
    pos = v > 0
    vv = np.where(pos, v, 1)
    while True:
        y = (x + vv // x) >> 1
        dec = y < x
        if not dec.any():
            break
        x = np.where(dec, y, x)
    return np.where(pos, x, 0)


def exp2_neg(u: np.ndarray) -> np.ndarray:
    """e = 2**(EXP2_OUT_BITS - u / 2**EXP2_FRAC_BITS), integer, for u >= 0.

    Table of 256 fractional steps, then a right shift by the integer part: values in [0, 2**15]."""
    frac = u & ((1 << EXP2_FRAC_BITS) - 1)
    ipart = np.minimum(u >> EXP2_FRAC_BITS, 62)
    return EXP2_TABLE[frac] >> ipart


def dyadic(ratio: float, mult_bits: int = 15, max_shift: int = 62) -> tuple[int, int]:
    """(m, k) with m * 2**-k ~= ratio, m in [2**(mult_bits-1), 2**mult_bits) where k allows it.

    Constant derivation (calibration time): the only place a float scale becomes integers."""
    if not math.isfinite(ratio) or ratio < 0:
        raise NumericsError(f"dyadic: ratio {ratio!r} must be finite and >= 0")
    if ratio == 0:
        return 0, 0
    e = math.floor(math.log2(ratio))
    k = mult_bits - 1 - e
    if k > max_shift:
        k = max_shift
    m = round(ratio * 2.0 ** k)
    if m >= (1 << mult_bits) and k > 0:  # rounding reached 2**mult_bits: drop one bit
        k -= 1
        m = round(ratio * 2.0 ** k)
    if k < 0:
        m, k = round(ratio), 0
        if m >= 1 << 31:
            raise NumericsError(f"dyadic: ratio {ratio!r} needs a multiplier >= 2**31; the scales "
                                "are inconsistent (check calibration)")
    return int(m), int(k)


@dataclass(frozen=True)
class Requant:
    """Per-channel dyadic requantization constants: y = clamp((acc*mult + 2**(shift-1)) >> shift)."""
    mult: np.ndarray   # int64 [C], in [0, 2**15) (or < 2**31 with shift 0)
    shift: np.ndarray  # int64 [C], in [0, 62]
    out_bits: int

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        return requantize(acc, self.mult, self.shift, self.out_bits)

    @classmethod
    def from_ratios(cls, ratios, out_bits: int, mult_bits: int = 15) -> "Requant":
        pairs = [dyadic(float(r), mult_bits) for r in np.atleast_1d(ratios)]
        mult = np.array([p[0] for p in pairs], dtype=np.int64)
        shift = np.array([p[1] for p in pairs], dtype=np.int64)
        return cls(mult, shift, out_bits)


def _check_width(name: str, x: np.ndarray, bits: int, signed: bool = True) -> None:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if x.size and (x.min() < lo or x.max() > hi):
        raise NumericsError(f"{name}: values [{x.min()}, {x.max()}] exceed the declared "
                            f"{'signed' if signed else 'unsigned'} {bits}-bit range [{lo}, {hi}]")


@dataclass(frozen=True, eq=False)
class IntLinear:
    """y = requant(x @ W^T + bias) [-> GELU table]: int8 in, int8 (or int16) out.

    weight int8 [out, in] (per-output-channel scale), bias int32 [out] at scale s_x * s_w[c],
    acc int32, requant per output channel, optional 256-entry GELU table indexed by y + 128."""
    weight: np.ndarray
    bias: np.ndarray
    requant: Requant
    gelu_table: np.ndarray | None = None
    in_bits: int = 8

    def __post_init__(self):
        _check_width("IntLinear.weight", self.weight, 8)
        _check_width("IntLinear.bias", self.bias, 32)
        if self.gelu_table is not None and (self.gelu_table.shape != (256,) or self.requant.out_bits != 8):
            raise NumericsError("IntLinear: a GELU table needs int8 outputs and exactly 256 entries")
        object.__setattr__(self, "_wt", self.weight.T.astype(np.float64))
        bound = self.weight.shape[1] * (1 << (self.in_bits - 1)) * 128 + (1 << 31)
        if bound >= FLOAT64_EXACT_LIMIT:
            raise NumericsError(f"IntLinear: d_in={self.d_in} overflows the exact float64 matmul bound")

    @property
    def d_in(self) -> int:
        return self.weight.shape[1]

    @property
    def d_out(self) -> int:
        return self.weight.shape[0]

    @property
    def acc_bound(self) -> int:
        """Largest |accumulator|: d_in * 2**(in_bits-1) * 128 + max|bias| (< 2**31 is required)."""
        return self.d_in * (1 << (self.in_bits - 1)) * 128 + int(np.abs(self.bias).max(initial=0))

    def accumulate(self, x: np.ndarray) -> np.ndarray:
        x = _int64(x)
        if x.shape[-1] != self.d_in:
            raise ShapeError(f"IntLinear: input has {x.shape[-1]} features, the layer takes {self.d_in}")
        acc = np.matmul(x.astype(np.float64), self._wt).astype(np.int64) + self.bias
        return acc

    def __call__(self, x: np.ndarray) -> np.ndarray:
        y = self.requant(self.accumulate(x))
        if self.gelu_table is not None:
            y = self.gelu_table[y + 128]
        return y


@dataclass(frozen=True, eq=False)
class IntLayerNorm:
    """Integer LayerNorm over the last axis (C <= 1024 channels): int16 in, int8 out.

    Exact centring, no rounded mean: with S = sum(x) and Q = sum(x*x),
      yc  = C*x - S                       (= C * (x - mean), exact)
      var = C*Q - S*S                     (= C * sum((x - mean)**2) = (C*sigma)**2, exact)
      std = isqrt(var << 12)              (= floor(2**6 * sqrt(var)))
      factor = floor(2**46 / max(std, 1))
      z   = (yc*factor + 2**29) >> 30     (~ 2**10 * (x - mean) / sigma, |z| <= 2**10 * sqrt(C))
      out = clamp8((z*mult[c] + offset[c] + 2**(shift-1)) >> shift)   (gamma, beta folded in)
    Widths: S 26 bits, Q 41 bits, var < 2**50, yc 27 bits, factor <= 2**40, yc*factor < 2**46."""
    mult: np.ndarray    # int64 [C], |mult| < 2**23
    offset: np.ndarray  # int64 [C]
    shift: int
    in_bits: int = 16

    def __post_init__(self):
        if self.channels > LN_MAX_CHANNELS:
            raise NumericsError(f"IntLayerNorm: {self.channels} channels > {LN_MAX_CHANNELS}; the variance "
                                "(C*sum(x*x) - S*S) would pass 2**50 and isqrt(var << 12) 2**62")
        if np.abs(self.mult).max(initial=0) >= LN_MULT_LIMIT:
            raise NumericsError(f"IntLayerNorm: a multiplier reaches {np.abs(self.mult).max()} >= 2**23")
        if not 0 <= self.shift <= 62:
            raise NumericsError(f"IntLayerNorm: shift {self.shift!r} is outside [0, 62] (2**(shift-1) must fit int64)")

    @property
    def channels(self) -> int:
        return self.mult.shape[0]

    def normalize(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(z, std) for each row: z ~ 2**10 * (x - mean) / sigma."""
        c = self.channels
        if x.shape[-1] != c:
            raise ShapeError(f"IntLayerNorm: input has {x.shape[-1]} channels, the norm takes {c}")
        x = _int64(x)
        s = x.sum(axis=-1, keepdims=True)
        q = (x * x).sum(axis=-1, keepdims=True)
        var = c * q - s * s
        std = isqrt_floor(var << LN_VAR_SHIFT)
        factor = (1 << LN_RECIP_BITS) // np.maximum(std, 1)
        z = rounding_shift((c * x - s) * factor, LN_Z_SHIFT)
        return z, std

    def __call__(self, x: np.ndarray) -> np.ndarray:
        z, _ = self.normalize(x)
        return clamp_bits(rounding_shift(z * self.mult + self.offset, self.shift), 8)


@dataclass(frozen=True, eq=False)
class IntResidualAdd:
    """y = clamp16((x * mult_x + b * mult_b + 2**(shift-1)) >> shift): the residual stream x
    (int16) plus a branch b (int8), both rescaled to the new residual scale with one rounding.
    Multipliers below 2**23: |x * mult_x| < 2**38."""
    mult_x: int
    mult_b: int
    shift: int
    out_bits: int = 16

    def __post_init__(self):
        if not (0 <= self.mult_x < 1 << RES_MULT_BITS and 0 <= self.mult_b < 1 << RES_MULT_BITS
                and 0 <= self.shift <= 62):
            raise NumericsError(f"IntResidualAdd: constants out of range: mult_x {self.mult_x!r} and mult_b "
                                f"{self.mult_b!r} must be in [0, 2**{RES_MULT_BITS}), shift {self.shift!r} in [0, 62]")

    def __call__(self, x: np.ndarray, b: np.ndarray) -> np.ndarray:
        if x.shape != b.shape:
            raise ShapeError(f"IntResidualAdd: stream {x.shape} and branch {b.shape} differ")
        return clamp_bits(rounding_shift(x * self.mult_x + b * self.mult_b, self.shift), self.out_bits)


@dataclass(frozen=True, eq=False)
class IntAttention:
    """Multi-head softmax(Q K^T * scale) V, integer, with one reciprocal per row.

    Per head: S = q @ k^T; D = rowmax(S) - S; u = (D*exp_mult + 2**(exp_shift-1)) >> exp_shift
    (u = D * s_score * log2(e) * 256); e = exp2_neg(u) in [0, 2**15]; row_sum = sum(e);
    acc = e @ v; r = floor(out_mult * 2**24 / row_sum); out = clamp8((acc*r + 2**(out_shift-1))
    >> out_shift) with out_mult * 2**(24 - out_shift) ~= s_v / s_out."""
    heads: int
    exp_mult: int
    exp_shift: int
    out_mult: int
    out_shift: int

    MAX_KEYS = 1024  # |acc * r| <= keys * 2**46 < 2**56

    def __post_init__(self):
        if not (0 <= self.exp_mult < 1 << 15 and 0 < self.out_mult < 1 << 15 and 1 <= self.out_shift <= 62):
            raise NumericsError(f"IntAttention: constants out of range: exp_mult {self.exp_mult!r} and "
                                f"out_mult {self.out_mult!r} must be below 2**15, out_shift {self.out_shift!r} in [1, 62]")

    def scores(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Integer scores [..., heads, Nq, Nk] from q [..., Nq, D], k [..., Nk, D]."""
        qh, kh = self._split(q), self._split(k)
        return exact_matmul(qh, np.swapaxes(kh, -1, -2), 128, 128)

    def _split(self, x: np.ndarray) -> np.ndarray:
        *lead, n, d = x.shape
        if d % self.heads:
            raise ShapeError(f"IntAttention: width {d} is not divisible by heads={self.heads}")
        return np.moveaxis(x.reshape(*lead, n, self.heads, d // self.heads), -2, -3)

    def row_exp(self, s: np.ndarray) -> np.ndarray:
        diff = s.max(axis=-1, keepdims=True) - s
        u = rounding_shift(diff * self.exp_mult, self.exp_shift)
        return exp2_neg(u)

    def __call__(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        if not (q.shape[-1] == k.shape[-1] == v.shape[-1]) or k.shape[-2] != v.shape[-2]:
            raise ShapeError(f"IntAttention: q {q.shape}, k {k.shape}, v {v.shape} do not agree")
        if k.shape[-2] > self.MAX_KEYS:
            raise NumericsError(f"IntAttention: {k.shape[-2]} keys > {self.MAX_KEYS}; sum(e*v) * reciprocal "
                                "could pass 2**62 (split the sequence or widen the datapath)")
        e = self.row_exp(self.scores(q, k))
        row_sum = e.sum(axis=-1, keepdims=True)
        acc = exact_matmul(e, self._split(v), 1 << EXP2_OUT_BITS, 128)
        recip = (self.out_mult << ATTN_RECIP_BITS) // row_sum
        out = clamp_bits(rounding_shift(acc * recip, self.out_shift), 8)
        out = np.moveaxis(out, -3, -2)
        return out.reshape(*out.shape[:-2], -1)


@dataclass(frozen=True)
class GateResult:
    logits: np.ndarray   # int16 [T, E]
    probs: np.ndarray    # uint, scale 2**-15, [T, E]
    experts: np.ndarray  # int64 [T, k], chosen experts, best first, ties to the lower index
    weights: np.ndarray  # int64 [T, k], the probabilities used to combine (renormalized if asked)


@dataclass(frozen=True, eq=False)
class IntGate:
    """MoE gate: int16 logits from a linear, integer softmax over all experts, top-k.

    e = exp2_neg(((max - l) * exp_mult + 2**(exp_shift-1)) >> exp_shift); r = floor(2**31 /
    sum(e)); p = (e*r + 2**15) >> 16 (scale 2**-15). Top-k on the integer logits, ties to the
    lower index (the probability order, made strict). With renormalize, w = (p * r2 + 2**14) >>
    15 with r2 = floor(2**30 / sum(chosen p))."""
    linear: IntLinear
    top_k: int
    exp_mult: int
    exp_shift: int
    renormalize: bool = False

    def __call__(self, x: np.ndarray) -> GateResult:
        logits = self.linear(x)
        diff = logits.max(axis=-1, keepdims=True) - logits
        e = exp2_neg(rounding_shift(diff * self.exp_mult, self.exp_shift))
        recip = (1 << (GATE_PROB_BITS + GATE_RECIP_BITS)) // e.sum(axis=-1, keepdims=True)
        probs = rounding_shift(e * recip, GATE_RECIP_BITS)
        order = np.argsort(-logits, axis=-1, kind="stable")[..., : self.top_k]
        weights = np.take_along_axis(probs, order, axis=-1)
        if self.renormalize:
            r2 = (1 << (2 * GATE_PROB_BITS)) // np.maximum(weights.sum(axis=-1, keepdims=True), 1)
            weights = rounding_shift(weights * r2, GATE_PROB_BITS)
        return GateResult(logits, probs, order, weights)


@dataclass(frozen=True, eq=False)
class IntExpert:
    fc1: IntLinear  # with the GELU table
    fc2: IntLinear

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.fc2(self.fc1(x))


@dataclass(frozen=True, eq=False)
class IntMoE:
    """Output = requant(sum over the chosen experts of p_k * expert_k(x)).

    Each expert's int8 output y_k (layer-wide scale s_e) is weighted by its gate probability
    (scale 2**-15) and accumulated wide: |acc| <= k * 2**15 * 128; then one requantization."""
    gate: IntGate
    experts: tuple[IntExpert, ...]
    combine: Requant  # a single channel: applied to the whole accumulator

    def route(self, gate: GateResult) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """For each expert: (token indices, slot in top-k, weight), token order ascending."""
        routes = []
        for ex in range(len(self.experts)):
            tok, slot = np.nonzero(gate.experts == ex)
            routes.append((tok, slot, gate.weights[tok, slot]))
        return routes

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, GateResult]:
        """x: int8 [T, D] (tokens of all images flattened). Returns (int8 [T, D], gate result)."""
        g = self.gate(x)
        return self.apply(x, g), g

    def apply(self, x: np.ndarray, g: GateResult, trace_expert=None) -> np.ndarray:
        """Run the chosen experts expert by expert and combine; ``trace_expert(e, tokens, x_e,
        hidden_e, y_e)`` sees each expert's work (also experts with no tokens)."""
        acc = np.zeros(x.shape, dtype=np.int64)
        for ex, (tok, _slot, w) in enumerate(self.route(g)):
            xe = x[tok]
            h = self.experts[ex].fc1(xe)
            y = self.experts[ex].fc2(h)
            if trace_expert is not None:
                trace_expert(ex, tok, xe, h, y)
            np.add.at(acc, tok, y * w[:, None])
        return self.combine(acc)
