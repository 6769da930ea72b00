"""The integer operators: exact primitives, and each op against its float counterpart within the
error bounds of docs/numerics.md."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from accel.models.errors import NumericsError, ShapeError
from accel.models.intops import (EXP2_TABLE, GATE_PROB_BITS, IntAttention, IntExpert, IntGate,
                                 IntLinear, IntMoE, Requant, clamp_bits, dyadic, exact_matmul,
                                 exp2_neg, isqrt_floor, requantize, rounding_shift)
from accel.models.quantize import gelu_table, make_exp, make_layernorm, make_linear, make_residual

rng = np.random.default_rng(1234)


def test_rounding_shift_is_round_half_up_arithmetic():
    x = np.array([5, 6, 7, -5, -6, -7, 0, -1, 1], dtype=np.int64)
    # x / 4: 1.25 1.5 1.75 -1.25 -1.5 -1.75 0 -0.25 0.25 -> half up: 1 2 2 -1 -1 -2 0 0 0
    assert rounding_shift(x, 2).tolist() == [1, 2, 2, -1, -1, -2, 0, 0, 0]
    assert rounding_shift(x, 0).tolist() == x.tolist()
    # per-element shifts
    assert rounding_shift(np.array([8, 8, 8]), np.array([0, 1, 3])).tolist() == [8, 4, 1]


def test_requantize_matches_exact_rational_rounding_and_saturates():
    acc = rng.integers(-(2 ** 31), 2 ** 31, size=20000, dtype=np.int64)
    mult = rng.integers(1 << 14, 1 << 15, size=acc.shape, dtype=np.int64)
    shift = rng.integers(10, 40, size=acc.shape, dtype=np.int64)
    got = requantize(acc, mult, shift, 8)
    want = [max(-128, min(127, math.floor(a * m / 2 ** s + 0.5))) for a, m, s in zip(acc.tolist(), mult.tolist(), shift.tolist())]
    assert got.tolist() == want
    assert clamp_bits(np.array([-40000, 40000]), 16).tolist() == [-32768, 32767]


@pytest.mark.parametrize("ratio", [1e-9, 3.7e-5, 0.1234, 0.5, 0.99999, 1.0, 3.3, 12345.6])
def test_dyadic_is_accurate(ratio):
    m, k = dyadic(ratio)
    assert 0 <= k <= 62
    assert abs(m * 2.0 ** -k - ratio) <= ratio * 2 ** -14
    if k > 0:
        assert (1 << 14) <= m < (1 << 15)


def test_dyadic_rejects_bad_ratio():
    with pytest.raises(NumericsError, match="must be finite"):
        dyadic(float("nan"))
    with pytest.raises(NumericsError, match="must be finite"):
        dyadic(-1.0)


def test_isqrt_floor_exact():
    edge = [0, 1, 2, 3, 4, 15, 16, 17, 10 ** 6 - 1, 10 ** 6, 2 ** 32 - 1, 2 ** 32, 2 ** 62]
    squares = [s * s + d for s in (1, 7, 999, 2 ** 20 + 3, 2 ** 31 - 1) for d in (-1, 0, 1)]
    rand = rng.integers(0, 2 ** 62, size=5000, dtype=np.int64).tolist() + rng.integers(0, 1000, 500).tolist()
    v = np.array(edge + squares + rand, dtype=np.int64)
    assert isqrt_floor(v).tolist() == [math.isqrt(int(a)) for a in v]
    with pytest.raises(NumericsError, match="outside"):
        isqrt_floor(np.array([-1]))


def test_exp2_neg_table_and_accuracy():
    assert EXP2_TABLE[0] == 1 << 15 and EXP2_TABLE.shape == (256,)
    assert np.all(np.diff(EXP2_TABLE) <= 0)
    u = np.arange(0, 256 * 20, dtype=np.int64)
    e = exp2_neg(u)
    ideal = 2.0 ** (15 - u / 256)
    # table rounding (0.5) then the shift's floor (< 1): absolute error below 1.5 units of 2**-15
    assert np.abs(e - ideal).max() < 1.5
    assert exp2_neg(np.array([256 * 100]))[0] == 0


def test_exact_matmul_exact_and_guarded():
    a = rng.integers(-128, 128, size=(64, 4096), dtype=np.int64)
    b = rng.integers(-128, 128, size=(4096, 32), dtype=np.int64)
    assert np.array_equal(exact_matmul(a, b, 128, 128), a @ b)
    extreme = np.full((2, 4096), -128, dtype=np.int64)
    assert exact_matmul(extreme, extreme.T, 128, 128)[0, 0] == 4096 * 128 * 128
    with pytest.raises(NumericsError, match="2\\*\\*53"):
        exact_matmul(np.zeros((1, 1024), np.int64), np.zeros((1024, 1), np.int64), 2 ** 22, 2 ** 22)
    with pytest.raises(ShapeError):
        exact_matmul(a, a, 128, 128)


def test_intlinear_matches_float_within_one_lsb_plus_weight_rounding():
    w = rng.standard_normal((40, 96)) / math.sqrt(96)
    b = rng.standard_normal(40) * 0.1
    s_in, s_out = 4 / 127, 0.02
    lin = make_linear(w, b, s_in, s_out)
    x = rng.integers(-128, 128, size=(200, 96), dtype=np.int64)
    x[0] = 127
    x[1] = -128
    y = lin(x)
    assert y.dtype == np.int64 and y.min() >= -128 and y.max() <= 127
    ref = np.clip(((x * s_in) @ w.T + b) / s_out, -128, 127)
    # output rounding 0.5, plus weight rounding: each product off by at most |x| * s_w / 2
    bound = 0.5 + (np.abs(x * s_in).sum(1, keepdims=True) * (np.abs(w).max(1) / 127 / 2)) / s_out + 0.01
    assert np.all(np.abs(y - ref) <= bound)
    assert (y == 127).any() and (y == -128).any()  # the data reaches saturation


def test_intlinear_rejects_wrong_width_and_shape():
    lin = make_linear(np.eye(4), None, 0.1, 0.1)
    with pytest.raises(ShapeError, match="3 features, the layer takes 4"):
        lin(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(NumericsError, match="float"):
        lin(np.zeros((2, 4)))  # a float array may not enter the integer path
    with pytest.raises(NumericsError, match="8-bit"):
        IntLinear(np.full((2, 2), 300), np.zeros(2, np.int64), Requant.from_ratios([1, 1], 8))


def test_gelu_table_is_the_rounded_float_gelu():
    s_pre, s_post = 0.05, 0.04
    t = gelu_table(s_pre, s_post)
    for i in (-128, -1, 0, 1, 60, 127):
        want = max(-128, min(127, round(float(F.gelu(torch.tensor(i * s_pre, dtype=torch.float64))) / s_post)))
        assert t[i + 128] == want


def _float_ln(x, gamma, beta):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var) * gamma + beta


@pytest.mark.parametrize("c", [48, 192, 768])
def test_layernorm_matches_float(c):
    gamma = 1 + 0.3 * rng.standard_normal(c)
    beta = 0.2 * rng.standard_normal(c)
    s_out = 6 / 127
    ln = make_layernorm(gamma, beta, s_out)
    scale = rng.choice([3, 50, 3000, 30000], size=(300, 1))
    x = np.clip(np.rint(rng.standard_normal((300, c)) * scale + rng.integers(-2000, 2000, (300, 1))), -32768, 32767).astype(np.int64)
    x[0] = 32767
    x[0, ::2] = -32768  # extremes
    y = ln(x)
    ref = np.clip(_float_ln(x.astype(np.float64), gamma, beta) / s_out, -128, 127)
    # documented bound: 0.5 (output rounding) + 0.05 (z at 2**-10, isqrt, reciprocal, multipliers)
    assert np.abs(y - ref).max() <= 0.55


def test_layernorm_constant_row_gives_the_offset():
    gamma, beta = np.ones(16), np.linspace(-1, 1, 16)
    ln = make_layernorm(gamma, beta, 2 / 127)
    for v in (-32768, 0, 5, 32767):
        y = ln(np.full((1, 16), v, dtype=np.int64))
        assert np.array_equal(y[0], np.floor(beta / (2 / 127) + 0.5).astype(np.int64))  # half up


def test_residual_add_matches_float():
    add = make_residual(0.01, 0.03, 0.012)
    x = rng.integers(-32768, 32768, size=5000, dtype=np.int64)
    b = rng.integers(-128, 128, size=5000, dtype=np.int64)
    y = add(x, b)
    ref = np.clip((x * 0.01 + b * 0.03) / 0.012, -32768, 32767)
    # output rounding 0.5 plus multiplier rounding (|x| + |b|) * 2**-23
    assert np.abs(y - ref).max() <= 0.5 + 33000 * 2.0 ** -22
    assert y.max() <= 32767 and y.min() >= -32768


def _attention(heads=3, dh=16, n=40, s_q=0.05, s_k=0.05, s_v=0.03, s_o=0.025):
    em, es = make_exp(s_q * s_k / math.sqrt(dh))
    om, ok = dyadic(s_v / s_o)
    return IntAttention(heads, em, es, om, 24 + ok), (s_q, s_k, s_v, s_o)


def _float_attention(q, k, v, heads, scales):
    s_q, s_k, s_v, s_o = scales
    n, d = q.shape
    dh = d // heads
    qh = (q * s_q).reshape(n, heads, dh).transpose(1, 0, 2)
    kh = (k * s_k).reshape(-1, heads, dh).transpose(1, 0, 2)
    vh = (v * s_v).reshape(-1, heads, dh).transpose(1, 0, 2)
    s = qh @ kh.transpose(0, 2, 1) / math.sqrt(dh)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ vh).transpose(1, 0, 2).reshape(n, d) / s_o


def test_attention_matches_float_softmax():
    att, scales = _attention()
    q, k, v = (rng.integers(-128, 128, size=(40, 48), dtype=np.int64) for _ in range(3))
    y = att(q, k, v)
    ref = np.clip(_float_attention(q, k, v, 3, scales), -128, 127)
    assert np.abs(y - ref).max() <= 1.0


def test_attention_equal_scores_and_repeated_maximum():
    att, scales = _attention()
    q = np.zeros((8, 48), dtype=np.int64)  # every score 0: uniform weights
    k = rng.integers(-128, 128, size=(8, 48), dtype=np.int64)
    v = rng.integers(-128, 128, size=(8, 48), dtype=np.int64)
    y = att(q, k, v)
    assert np.abs(y - _float_attention(q, k, v, 3, scales)).max() <= 1.0
    k2 = np.repeat(rng.integers(-128, 128, size=(2, 48), dtype=np.int64), 4, axis=0)  # maxima repeat
    q2 = np.full((8, 48), 127, dtype=np.int64)
    y2 = att(q2, k2, v)
    assert np.abs(y2 - _float_attention(q2, k2, v, 3, scales)).max() <= 1.0
    # extremes: all -128 / 127
    ex = np.full((8, 48), -128, dtype=np.int64)
    want = np.clip(_float_attention(ex, -ex - 1, ex, 3, scales), -128, 127)
    assert np.array_equal(att(ex, -ex - 1, ex), want)  # saturates at -128


def _gate(experts=4, top_k=2, renormalize=False):
    lin = make_linear(rng.standard_normal((experts, 16)), None, 0.05, 0.001, out_bits=16)
    m, s = make_exp(0.001)
    return IntGate(lin, top_k, m, s, renormalize)


def test_gate_probabilities_match_float_softmax():
    gate = _gate()
    x = rng.integers(-128, 128, size=(500, 16), dtype=np.int64)
    g = gate(x)
    p = torch.softmax(torch.tensor(g.logits * 0.001, dtype=torch.float64), -1).numpy()
    # the exponent is rounded to 2**-8: e off by a factor 2**(+-2**-9) (0.14%), p by < 2 * 0.14% * p(1-p)
    assert np.abs(g.probs / 2 ** GATE_PROB_BITS - p).max() < 4e-4
    assert g.experts.shape == (500, 2) and g.weights.shape == (500, 2)


def test_gate_ties_go_to_the_lower_index():
    gate = _gate(experts=4, top_k=2)
    lin = IntLinear(np.zeros((4, 16), np.int64), np.array([5, 9, 9, 9], np.int64), Requant.from_ratios([1] * 4, 16))
    tied = IntGate(lin, 2, gate.exp_mult, gate.exp_shift)
    g = tied(np.zeros((3, 16), np.int64))
    assert g.experts.tolist() == [[1, 2]] * 3
    assert g.weights[0, 0] == g.weights[0, 1]


def test_gate_renormalized_weights_sum_to_one():
    g = _gate(renormalize=True)(rng.integers(-128, 128, size=(200, 16), dtype=np.int64))
    assert np.abs(g.weights.sum(1) - 2 ** GATE_PROB_BITS).max() <= 2


def test_moe_expert_with_no_tokens_and_combination():
    d, h = 8, 12
    experts = tuple(IntExpert(make_linear(rng.standard_normal((h, d)), None, 0.05, 0.05, gelu=(0.05, 0.05)),
                              make_linear(rng.standard_normal((d, h)), None, 0.05, 0.05)) for _ in range(3))
    lin = IntLinear(np.zeros((3, d), np.int64), np.array([0, 100, 50], np.int64), Requant.from_ratios([1] * 3, 16))
    m, s = make_exp(0.01)
    moe = IntMoE(IntGate(lin, 2, m, s), experts, Requant.from_ratios([2.0 ** -15], 8))
    x = rng.integers(-128, 128, size=(10, d), dtype=np.int64)
    y, g = moe(x)
    assert set(g.experts.ravel().tolist()) == {1, 2}  # expert 0 gets no token
    seen = []
    moe.apply(x, g, lambda e, tok, xe, he, ye: seen.append((e, tok.size, he.shape, ye.shape)))
    assert seen[0] == (0, 0, (0, h), (0, d))
    want = np.zeros((10, d), np.int64)
    for k in range(2):
        for t in range(10):
            want[t] += g.weights[t, k] * experts[g.experts[t, k]](x[t:t + 1])[0]
    assert np.array_equal(y, moe.combine(want))
