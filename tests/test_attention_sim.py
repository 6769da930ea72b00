"""Attention kernel RTL vs the integer reference, bit for bit (cocotb + Verilator; Icarus if
installed).

One simulator build per parameter set (cached under build/sim/attention/), and one simulator run
per parameter set executes all its cases (module-scoped fixtures); each test then checks its own
case's result. Every case but the cycle-count one runs with random valid/ready stalls on all
streams.
"""
import math

import numpy as np
import pytest

from accel.hdl.attention import AttentionParams
from accel.hdl.attention_cost import attention_cycles
from accel.models.intops import IntAttention, dyadic
from accel.models.quantize import make_exp
from accel.sim.attention_runner import (attention_job, model_jobs, run_jobs, run_attention,
                                        simulator_available)

if not simulator_available("verilator")[0]:
    pytest.skip(simulator_available("verilator")[1], allow_module_level=True)

# PA: 3 heads of 16 in parallel, two MAC chunks per token, 4-query tiles (digits-moe shape)
PA = AttentionParams(p=4, t_a=8, heads=3, n_a=1, max_seq=24, head_dim=16)
# PB: one head at a time (groups), one chunk per token, two replicas of 3 queries
PB = AttentionParams(p=3, t_a=16, heads=1, n_a=2, max_seq=20, head_dim=16)


def make_op(heads, dh, s_q=0.05, s_k=0.05, s_v=0.03, s_o=0.025):
    em, es = make_exp(s_q * s_k / math.sqrt(dh))
    om, ok = dyadic(s_v / s_o)
    return IntAttention(heads, em, es, om, 24 + ok)


def cases(rng, heads, dh):
    d = heads * dh
    r = lambda n: rng.integers(-128, 128, (n, d))   # noqa: E731
    out = {}
    out["random"] = (make_op(heads, dh), r(17), r(17), r(17))
    out["random_nq_ne_nk"] = (make_op(heads, dh, s_q=0.02), r(5), r(11), r(11))
    ex_q = np.full((9, d), -128)
    ex_k = np.where(np.arange(9)[:, None] % 3 == 0, -128, 127) * np.ones((1, d), np.int64)
    ex_v = np.where((np.arange(9)[:, None] + np.arange(d)[None, :]) % 2, 127, -128)
    out["extremes"] = (make_op(heads, dh, s_q=0.3, s_k=0.3, s_v=0.05, s_o=0.01), ex_q, ex_k, ex_v)
    k_rep = np.repeat(rng.integers(-128, 128, (4, d)), 3, axis=0)      # each maximum repeats 3x
    out["repeated_max"] = (make_op(heads, dh), r(10), k_rep, r(12))
    out["equal_scores"] = (make_op(heads, dh), np.zeros((7, d), np.int64), r(13), r(13))
    out["one_token"] = (make_op(heads, dh), r(1), r(1), r(1))
    return out


def _run(params, case_dict, seed=0, simulator="verilator"):
    jobs = [attention_job(op, q, k, v, params, name=name, stalls=True, seed=seed + i)
            for i, (name, (op, q, k, v)) in enumerate(case_dict.items())]
    op, q, k, v = case_dict["random"]
    jobs.append(attention_job(op, q, k, v, params, name="no_stalls", stalls=False))
    return {r.name: r for r in run_jobs(jobs, params, simulator)}


@pytest.fixture(scope="module")
def results_a():
    return _run(PA, cases(np.random.default_rng(10), 3, 16), seed=1)


@pytest.fixture(scope="module")
def results_b():
    return _run(PB, cases(np.random.default_rng(11), 2, 16), seed=2)


NAMES = ["random", "random_nq_ne_nk", "extremes", "repeated_max", "equal_scores", "one_token"]


@pytest.mark.parametrize("name", NAMES)
def test_kernel_a(results_a, name):
    r = results_a[name]
    assert r.ok, r.describe()
    assert r.cycles >= r.predicted_cycles        # stalls only add cycles


@pytest.mark.parametrize("name", NAMES)
def test_kernel_b(results_b, name):
    r = results_b[name]
    assert r.ok, r.describe()
    assert r.cycles >= r.predicted_cycles


def test_extremes_saturate(results_a):
    r = results_a["extremes"]
    assert r.ok, r.describe()
    assert r.expected.min() == -128 or r.expected.max() == 127   # the case reaches the clamp


@pytest.mark.parametrize("fixture", ["results_a", "results_b"])
def test_cycles_match_the_cost_model_without_stalls(fixture, request):
    r = request.getfixturevalue(fixture)["no_stalls"]
    assert r.ok, r.describe()
    assert r.cycles == r.predicted_cycles


def test_digits_moe_every_attention_layer():
    params, jobs = model_jobs("digits-moe", PA, stalls=True, seed=5)
    assert len(jobs) == 4 and jobs[0]["expected"].shape == (17, 48)
    res = run_jobs(jobs, params)
    for r in res:
        assert r.ok, r.describe()
        assert r.cycles >= attention_cycles(17, 3, 16, params)


def test_mismatch_report_names_op_index_and_waveform():
    """A reference that disagrees with the RTL is reported with the op's name, the first
    mismatching [token, channel], expected vs got, and a waveform file."""
    rng = np.random.default_rng(12)
    op = make_op(3, 16)
    q, k, v = (rng.integers(-128, 128, (6, 48)) for _ in range(3))
    job = attention_job(op, q, k, v, PA, name="layer7/attention", stalls=False)
    job["expected"] = job["expected"].copy()
    job["expected"][2, 20] += 1
    (r,) = run_jobs([job], PA)
    assert not r.ok and r.mismatches == 1
    assert r.first_mismatch["index"] == (2, 20) and r.first_mismatch["head"] == 1
    assert r.first_mismatch["got"] == r.expected[2, 20] - 1
    msg = r.describe()
    assert "layer7/attention" in msg and "(2, 20)" in msg
    assert r.waveform and r.waveform.endswith(".vcd")
    import os
    assert os.path.getsize(r.waveform) > 0


def test_icarus_second_simulator():
    ok, why = simulator_available("icarus")
    if not ok:
        pytest.skip(why)
    rng = np.random.default_rng(13)
    op = make_op(2, 16)
    q, k, v = (rng.integers(-128, 128, (5, 32)) for _ in range(3))
    r = run_attention(op, q, k, v, PB, simulator="icarus", stalls=True, seed=3)
    assert r.ok, r.describe()


@pytest.mark.slow
@pytest.mark.parametrize("model, tokens", [("m3vit-tiny", 129), ("m3vit-tiny-224", 197)])
def test_m3vit_attention_layers(model, tokens):
    P = AttentionParams(p=16, t_a=16, heads=3, n_a=1, max_seq=197, head_dim=64)
    params, jobs = model_jobs(model, P, layers=[0, 5, 11], stalls=True, seed=7)
    assert jobs[0]["expected"].shape == (tokens, 192)
    for r in run_jobs(jobs, params):
        assert r.ok, r.describe()
