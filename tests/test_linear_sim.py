"""Linear kernel RTL vs the integer reference, bit for bit (cocotb + Verilator; Icarus if installed).

One simulator build per parameter set (cached under build/sim/linear/), and one simulator run
per parameter set executes all its cases (module-scoped fixtures); each test then checks its
own case's result.
"""
import os
from pathlib import Path

import numpy as np
import pytest

from accel.hdl.linear import LinearParams
from accel.models.intops import IntExpert, IntGate, IntLinear, IntMoE, Requant
from accel.sim.linear_runner import (ExpertPass, dense_job, expert_job, run_jobs, run_linear,
                                     simulator_available)

if not simulator_available("verilator")[0]:
    pytest.skip(simulator_available("verilator")[1], allow_module_level=True)

PA = LinearParams(t_in=4, t_out=4, n_lanes=2, max_d_in=64, max_d_out=40, max_tokens=24,
                  expert=True)
PB = LinearParams(t_in=3, t_out=5, n_lanes=3, max_d_in=30, max_d_out=20, max_tokens=12,
                  expert=False)


def rand_linear(rng, d_in, d_out, out_bits=8, gelu=False, bias_mag=20000, lo=0.0002, hi=0.01):
    w = rng.integers(-128, 128, (d_out, d_in))
    b = rng.integers(-bias_mag, bias_mag + 1, d_out)
    rq = Requant.from_ratios(rng.uniform(lo, hi, d_out), out_bits)
    table = rng.integers(-128, 128, 256) if gelu else None
    return IntLinear(w, b, rq, table)


def extreme_linear(d_in, d_out):
    """int8 extremes everywhere, biases near the int32 limit, every requant corner case."""
    w = np.where((np.arange(d_out)[:, None] + np.arange(d_in)[None, :]) % 3 == 0, -128, 127)
    w[0, :] = -128
    w[1, :] = 127
    limit = (1 << 31) - 1 - d_in * 128 * 128
    bias = np.zeros(d_out, np.int64)
    bias[2 % d_out] = limit
    bias[3 % d_out] = -limit
    mult = np.full(d_out, 20000)
    shift = np.full(d_out, 20)
    mult[0], shift[0] = (1 << 31) - 1, 0        # huge multiplier, shift 0: saturates by sign
    mult[1], shift[1] = (1 << 15) - 1, 62       # largest shift: always 0
    mult[4 % d_out], shift[4 % d_out] = 0, 5    # zero multiplier
    mult[5 % d_out], shift[5 % d_out] = 1, 0    # identity then clamp
    mult[6 % d_out], shift[6 % d_out] = 32767, 30
    return IntLinear(w, bias, Requant(mult, shift, 8))


def make_moe(rng, d=12, hidden=16, n_exp=4, top_k=2):
    gate_lin = IntLinear(rng.integers(-128, 128, (n_exp, d)), rng.integers(-100, 100, n_exp),
                         Requant.from_ratios(np.full(n_exp, 0.05), 16))
    gate = IntGate(gate_lin, top_k=top_k, exp_mult=181, exp_shift=7)
    experts = tuple(IntExpert(rand_linear(rng, d, hidden, gelu=True),
                              rand_linear(rng, hidden, d)) for _ in range(n_exp))
    return IntMoE(gate, experts, Requant.from_ratios([2.0 ** -15], 8))


def moe_jobs(moe, x, params, name, stalls=True, seed=0):
    """fc1 (dense, gathered rows) per active expert, and fc2 in expert mode for all of them."""
    g = moe.gate(x)
    jobs, passes = [], []
    for e, (tok, _slot, w) in enumerate(moe.route(g)):
        ex = moe.experts[e]
        xe = x[tok]
        if tok.size:
            jobs.append(dense_job(ex.fc1, xe, params, name=f"{name}/expert{e}/fc1",
                                  stalls=stalls, seed=seed + e))
        passes.append(ExpertPass(ex.fc2, ex.fc1(xe) if tok.size else
                                 np.zeros((0, ex.fc2.d_in), np.int64), tok, w))
    jobs.append(expert_job(passes, moe.combine, x.shape[0], params, name=f"{name}/fc2+combine",
                           stalls=stalls, seed=seed + 99))
    return jobs


def cases_a():
    rng = np.random.default_rng(1234)
    jobs = []
    x = rng.integers(-128, 128, (7, 16))
    op = rand_linear(rng, 16, 8)
    jobs.append(dense_job(op, x, PA, name="random", stalls=True, seed=1))
    jobs.append(dense_job(op, x, PA, name="random_nostall", stalls=False))
    d_in, d_out = 64, 8
    xe = np.where(rng.random((9, d_in)) < 0.5, -128, 127)
    xe[0] = -128
    xe[1] = 127
    jobs.append(dense_job(extreme_linear(d_in, d_out), xe, PA, name="extremes", stalls=True, seed=2))
    jobs.append(dense_job(rand_linear(rng, 13, 9), rng.integers(-128, 128, (5, 13)), PA,
                          name="ragged_13x9_t5", stalls=True, seed=3))
    jobs.append(dense_job(rand_linear(rng, 13, 9), rng.integers(-128, 128, (5, 13)), PA,
                          name="ragged_nostall", stalls=False))
    jobs.append(dense_job(rand_linear(rng, 20, 12, gelu=True), rng.integers(-128, 128, (6, 20)),
                          PA, name="gelu", stalls=True, seed=4))
    jobs.append(dense_job(rand_linear(rng, 24, 10, out_bits=16, lo=0.01, hi=0.5),
                          rng.integers(-128, 128, (4, 24)), PA, name="out16", stalls=True, seed=5))
    jobs.append(dense_job(rand_linear(rng, 1, 1), rng.integers(-128, 128, (1, 1)), PA,
                          name="one_by_one", stalls=True, seed=6))
    jobs.append(dense_job(rand_linear(rng, 64, 40), rng.integers(-128, 128, (24, 64)), PA,
                          name="max_shape", stalls=True, seed=7))
    jobs.append(dense_job(rand_linear(rng, 64, 40), rng.integers(-128, 128, (24, 64)), PA,
                          name="max_shape_nostall", stalls=False))
    same = np.tile(rng.integers(-128, 128, (1, 16)), (5, 1))
    jobs.append(dense_job(rand_linear(rng, 16, 8), same, PA, name="equal_rows", stalls=True, seed=8))
    # expert mode
    moe = make_moe(rng)
    xm = rng.integers(-128, 128, (10, 12))
    jobs += moe_jobs(moe, xm, PA, "moe", stalls=True, seed=10)
    op_e = rand_linear(rng, 12, 12)
    jobs.append(expert_job([
        ExpertPass(op_e, rng.integers(-128, 128, (4, 12)), np.array([7, 0, 3, 9]),
                   np.array([65535, 0, 1, 32768])),
        ExpertPass(rand_linear(rng, 12, 12), np.zeros((0, 12), np.int64),
                   np.zeros(0, np.int64), np.zeros(0, np.int64)),          # zero tokens
        ExpertPass(rand_linear(rng, 12, 12), rng.integers(-128, 128, (3, 12)), np.array([0, 9, 5]),
                   np.array([100, 20000, 65535])),
    ], Requant.from_ratios([2.0 ** -12], 16), 10, PA, name="expert_zero_tokens_out16", seed=11))
    jobs.append(expert_job([ExpertPass(op_e, np.zeros((0, 12), np.int64), np.zeros(0, np.int64),
                                       np.zeros(0, np.int64))],
                           Requant.from_ratios([2.0 ** -15], 8), 6, PA, name="expert_all_empty",
                           seed=12))
    jobs.append(expert_job([ExpertPass(op_e, np.zeros((0, 12), np.int64), np.zeros(0, np.int64),
                                       np.zeros(0, np.int64))],
                           Requant.from_ratios([2.0 ** -15], 8), 6, PA, name="expert_all_empty_nostall",
                           stalls=False))     # the flush alone: its descriptor's acceptance sets the pace
    jobs.append(expert_job([ExpertPass(op_e, rng.integers(-128, 128, (5, 12)), np.arange(5),
                                       np.full(5, 30000))],
                           Requant.from_ratios([2.0 ** -15], 8), 5, PA, name="expert_nostall",
                           stalls=False))
    return jobs


@pytest.fixture(scope="module")
def results_a():
    jobs = cases_a()
    return {r.name: r for r in run_jobs(jobs, PA)}


DENSE_A = ["random", "random_nostall", "extremes", "ragged_13x9_t5", "ragged_nostall", "gelu",
           "out16", "one_by_one", "max_shape", "equal_rows"]


@pytest.mark.parametrize("name", DENSE_A)
def test_dense_bit_exact(results_a, name):
    r = results_a[name]
    assert r.checked, r.describe()
    assert r.mismatches == 0 and r.error is None, r.describe()
    assert r.got.shape == r.expected.shape and np.array_equal(r.got, r.expected)


def test_extremes_hit_saturation(results_a):
    e = results_a["extremes"].expected
    assert (e == 127).any() and (e == -128).any() and (e == 0).any()


@pytest.mark.parametrize("name", ["random_nostall", "ragged_nostall", "max_shape_nostall",
                                  "expert_nostall", "expert_all_empty_nostall"])
def test_cycle_model_matches_rtl_without_stalls(results_a, name):
    r = results_a[name]
    assert r.ok, r.describe()
    assert r.cycles == r.predicted_cycles


def test_weight_loading_overlaps_compute(results_a):
    """Double buffering: after the first tile's load, the J-1 later tile loads (1 + K cycles
    each) are hidden under compute, so the layer costs J * G * max(K, N_L) plus one load and the
    pipeline tail -- not J * (G * max(K, N_L) + K + 1)."""
    r = results_a["max_shape_nostall"]
    assert r.ok, r.describe()
    K, G, J = 64 // PA.t_in, 24 // PA.n_lanes, -(-40 // PA.t_out)
    compute = J * G * max(K, PA.n_lanes)
    assert compute < r.cycles <= compute + (K + 1) + PA.n_lanes + 8
    assert r.cycles < compute + J * (K + 1)


def test_stalls_only_slow_down(results_a):
    assert results_a["random"].cycles > results_a["random_nostall"].cycles


@pytest.mark.parametrize("name", ["expert_zero_tokens_out16", "expert_all_empty", "expert_all_empty_nostall",
                                  "expert_nostall",
                                  "moe/fc2+combine"])
def test_expert_bit_exact(results_a, name):
    r = results_a[name]
    assert r.ok, r.describe()
    assert np.array_equal(r.got, r.expected)


def test_moe_layer_matches_intmoe(results_a):
    """fc1 per active expert (dense, gathered rows) and fc2 + combine (expert mode) on the RTL."""
    names = [n for n in results_a if n.startswith("moe/")]
    assert sum(n.endswith("/fc1") for n in names) >= 2 and "moe/fc2+combine" in names
    for n in names:
        assert results_a[n].ok, results_a[n].describe()


def test_moe_expected_is_intmoe_output():
    rng = np.random.default_rng(77)
    moe = make_moe(rng)
    x = rng.integers(-128, 128, (10, 12))
    jobs = moe_jobs(moe, x, PA, "m")
    ref, g = moe(x)
    assert np.array_equal(jobs[-1]["expected"], ref)
    assert len(jobs) - 1 == sum(1 for tok, _, _ in moe.route(g) if tok.size)


def cases_b():
    rng = np.random.default_rng(99)
    jobs = []
    for i, (n, di, do) in enumerate([(12, 30, 20), (1, 7, 3), (4, 3, 5), (10, 29, 11)]):
        jobs.append(dense_job(rand_linear(rng, di, do), rng.integers(-128, 128, (n, di)), PB,
                              name=f"b_{n}x{di}x{do}", stalls=True, seed=i))
    jobs.append(dense_job(rand_linear(rng, 30, 20), rng.integers(-128, 128, (12, 30)), PB,
                          name="b_nostall", stalls=False))
    return jobs


def test_odd_tiles_three_lanes():
    res = run_jobs(cases_b(), PB)
    for r in res:
        assert r.ok, r.describe()
    assert res[-1].cycles == res[-1].predicted_cycles


def test_failure_names_op_index_and_waveform():
    """A wrong reference must fail, name the op, the first index, both values and a waveform."""
    p = LinearParams(t_in=2, t_out=2, n_lanes=1, max_d_in=8, max_d_out=4, max_tokens=4,
                     expert=False)
    rng = np.random.default_rng(5)
    job = dense_job(rand_linear(rng, 5, 3), rng.integers(-128, 128, (3, 5)), p,
                    name="layer7/qkv", stalls=True)
    job["expected"] = job["expected"].copy()
    job["expected"][2, 1] += 1
    (r,) = run_jobs([job], p)
    assert not r.ok and r.mismatches == 1
    msg = r.describe()
    assert "layer7/qkv" in msg and "(2, 1)" in msg
    assert f"expected {job['expected'][2, 1]}" in msg and f"got {job['expected'][2, 1] - 1}" in msg
    assert r.waveform and Path(r.waveform).exists() and r.waveform in msg


def test_icarus_matches():
    ok, why = simulator_available("icarus")
    if not ok:
        pytest.skip(why)
    rng = np.random.default_rng(3)
    p = LinearParams(t_in=4, t_out=4, n_lanes=2, max_d_in=16, max_d_out=8, max_tokens=8,
                     expert=True)
    op = rand_linear(rng, 10, 6, gelu=True)
    r = run_linear(op, rng.integers(-128, 128, (5, 10)), p, simulator="icarus", stalls=True,
                   name="icarus/gelu")
    assert r.ok, r.describe()
    passes = [ExpertPass(op, rng.integers(-128, 128, (3, 10)), np.array([4, 1, 6]),
                         np.array([9000, 65535, 3]))]
    r = run_jobs([expert_job(passes, Requant.from_ratios([2.0 ** -14], 8), 8, p,
                             name="icarus/expert")], p, simulator="icarus")[0]
    assert r.ok, r.describe()


@pytest.mark.slow
def test_m3vit_sized_linear():
    """One m3vit-tiny MLP fc1 row block: 192 -> 768, 65 tokens (slow: ~1e5 cycles)."""
    p = LinearParams(t_in=16, t_out=16, n_lanes=4, max_d_in=768, max_d_out=768, max_tokens=256,
                     expert=False)
    rng = np.random.default_rng(8)
    r = run_linear(rand_linear(rng, 192, 768, gelu=True), rng.integers(-128, 128, (65, 192)), p,
                   stalls=True, name="m3vit/fc1")
    assert r.ok, r.describe()
