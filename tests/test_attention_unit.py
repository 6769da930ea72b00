"""Attention kernel in the Amaranth simulator (no cocotb): datapath, cycle count, framing errors,
parameter validation. Small shapes only (Python runs every cycle)."""
import math
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from accel.hdl.attention import AttentionKernel, AttentionParamError, AttentionParams
from accel.hdl.attention_cost import (CostModelError, attention_cycles, attention_passes,
                                      attention_resources)
from accel.models.intops import IntAttention, dyadic
from accel.models.quantize import make_exp
from accel.sim.attention_runner import attention_job
from accel.sim.attention_tb import Scoreboard
from accel.sim.linear_runner import pack_beats

INPUTS = ("cfg", "q", "k", "v")


def make_op(heads, dh, s_q=0.05, s_k=0.05, s_v=0.03, s_o=0.025):
    em, es = make_exp(s_q * s_k / math.sqrt(dh))
    om, ok = dyadic(s_v / s_o)
    return IntAttention(heads, em, es, om, 24 + ok)


def amaranth_run(params, job, stalls=False, seed=0, beats=None, max_cycles=None, out_blocked=0):
    """Drive a job through the Amaranth simulator; returns (output beats, cycles, error flag).
    ``out_blocked``: the output's ready stays low for that many cycles first."""
    dut = AttentionKernel(params)
    beats = beats or job["beats"]
    rng = random.Random(seed)
    out = {"beats": [], "last": -1, "error": 0}
    n_exp = Scoreboard(job).n_expected()
    limit = max_cycles or (job["predicted"] * 6 + 500 + out_blocked)

    async def tb(ctx):
        ports = {n: getattr(dut, f"{n}_i") for n in INPUTS}
        idx = {n: 0 for n in INPUTS}
        cyc = 0
        while len(out["beats"]) < n_exp and cyc < limit:
            offered = {}
            for n, port in ports.items():
                off = idx[n] < len(beats[n]) and (not stalls or rng.random() < 0.7)
                ctx.set(port.valid, int(off))
                if off:
                    ctx.set(port.payload.as_value(), beats[n][idx[n]])
                offered[n] = off
            rdy = cyc >= out_blocked and ((not stalls) or rng.random() < 0.7)
            ctx.set(dut.o_o.ready, int(rdy))
            took = {n: offered[n] and ctx.get(ports[n].ready) for n in INPUTS}
            if rdy and ctx.get(dut.o_o.valid):
                out["beats"].append(ctx.get(dut.o_o.payload.as_value()))
                out["last"] = cyc
            await ctx.tick()
            for n in INPUTS:
                idx[n] += int(bool(took[n]))
            cyc += 1
        out["error"] = ctx.get(dut.error)
        out["left"] = {n: len(beats[n]) - idx[n] for n in INPUTS}

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return out["beats"], out["last"] + 1, out["error"], out["left"]


def check(params, op, q, k, v, stalls=False, seed=0):
    job = attention_job(op, q, k, v, params, stalls=stalls, seed=seed)
    beats, cycles, err, left = amaranth_run(params, job, stalls=stalls, seed=seed)
    res = Scoreboard(job).check(beats)
    assert res["errors"] == [], res["errors"]
    assert err == 0
    assert all(x == 0 for x in left.values()), left
    assert res["mismatches"] == 0, res["first_mismatch"]
    assert np.array_equal(res["got"], op(q, k, v))
    return job, cycles


P1 = AttentionParams(p=2, t_a=4, heads=2, n_a=2, max_seq=12, head_dim=8)


def test_random_two_groups_partial_pass_exact_cycles():
    rng = np.random.default_rng(1)
    op = make_op(3, 8)                      # 3 heads on a 2-head kernel: two groups, one padded
    q, k, v = (rng.integers(-128, 128, (7, 24)) for _ in range(3))   # 7 = 4 + 3: short last pass
    job, cycles = check(P1, op, q, k, v)
    assert cycles == job["predicted"] == attention_cycles(7, 3, 8, P1)


@pytest.mark.parametrize("out_lanes", [None, 2])
def test_a_long_blocked_output_loses_no_beat(out_lanes):
    """The output pipeline runs without a stall into the output FIFO, and a beat is issued only
    for a kept FIFO place: with the consumer blocked for a whole job (24 beats against 8 places)
    every beat arrives once, in order, and the inputs are all taken."""
    P = AttentionParams(p=2, t_a=4, heads=2, n_a=2, max_seq=12, head_dim=8, out_lanes=out_lanes)
    rng = np.random.default_rng(21)
    op = make_op(2, 8)
    q, k, v = (rng.integers(-128, 128, (12, 16)) for _ in range(3))
    job = attention_job(op, q, k, v, P, stalls=False)
    assert Scoreboard(job).n_expected() == 24
    beats, cycles, err, left = amaranth_run(P, job, out_blocked=2 * job["predicted"])
    res = Scoreboard(job).check(beats)
    assert res["errors"] == [] and err == 0 and all(x == 0 for x in left.values()), (res["errors"], left)
    assert res["mismatches"] == 0, res["first_mismatch"]
    assert np.array_equal(res["got"], op(q, k, v))
    assert cycles > 2 * job["predicted"]


def test_extremes_ties_and_stalls():
    op = make_op(2, 8, s_q=0.5, s_k=0.5)
    q = np.full((5, 16), -128)
    k = np.full((9, 16), -128)              # every score the maximum 8 * 2**14: all equal
    k[3] = 127
    v = np.where(np.arange(16) % 2, 127, -128) * np.ones((9, 1), np.int64)
    check(P1, op, q, k, v, stalls=True, seed=3)
    rng = np.random.default_rng(2)
    q2 = rng.integers(-128, 128, (4, 16))
    k2 = np.repeat(rng.integers(-128, 128, (3, 16)), 3, axis=0)   # maxima repeat
    v2 = rng.integers(-128, 128, (9, 16))
    check(P1, make_op(2, 8), q2, k2, v2, stalls=True, seed=4)


@pytest.mark.parametrize("out_lanes", [1, 2])
def test_serial_output_products_exact_and_under_stalls(out_lanes):
    """The reciprocal product a piece at a time (out_lanes of t_a=4 per head and cycle): bit-exact
    on random data, on extremes that reach the clamp and under stalls; exact cycles without."""
    from dataclasses import replace
    P = replace(P1, out_lanes=out_lanes)
    rng = np.random.default_rng(11)
    op = make_op(3, 8)
    q, k, v = (rng.integers(-128, 128, (7, 24)) for _ in range(3))
    job, cycles = check(P, op, q, k, v)
    assert cycles == job["predicted"] == attention_cycles(7, 3, 8, P)
    # 2 groups, C=2; the serial piece select and the parallel partial products are one stage each,
    # so the last output leaves as many cycles after its issue either way
    assert cycles - attention_cycles(7, 3, 8, P1) == 2 * 7 * 2 * (4 // out_lanes - 1)
    check(P, op, q, k, v, stalls=True, seed=12)
    ex = make_op(2, 8, s_q=0.3, s_k=0.3, s_v=0.05, s_o=0.01)
    ex_q = np.full((5, 16), -128)
    ex_k = np.where(np.arange(9)[:, None] % 3 == 0, -128, 127) * np.ones((1, 16), np.int64)
    ex_v = np.where((np.arange(9)[:, None] + np.arange(16)[None, :]) % 2, 127, -128)
    ex_job, _ = check(P, ex, ex_q, ex_k, ex_v, stalls=True, seed=13)
    out = ex(ex_q, ex_k, ex_v)
    assert out.min() == -128 and out.max() == 127              # the case reaches both clamps


@pytest.mark.parametrize("out_lanes", [None, 2])
@pytest.mark.parametrize("stalls, seed", [(False, 0), (True, 4), (True, 6), (True, 20)])
def test_back_to_back_descriptors_keep_their_own_output_shift(out_lanes, stalls, seed):
    """A descriptor accepted while the previous one's last outputs are still in the output
    pipeline (the state machine is back in CFG) must not lend them its out_shift."""
    from dataclasses import replace
    P = replace(P1, out_lanes=out_lanes)
    rng = np.random.default_rng(3)
    op1, op2 = make_op(2, 8, s_o=0.025), make_op(2, 8, s_o=0.4)
    assert op1.out_shift != op2.out_shift
    q, k, v = (rng.integers(-128, 128, (6, 16)) for _ in range(3))   # passes of 4 + 2 queries: 4 beats last
    j1, j2 = (attention_job(op, q, k, v, P, stalls=False) for op in (op1, op2))
    both = dict(j1, groups=j1["groups"] + j2["groups"], predicted=j1["predicted"] + j2["predicted"])
    beats = {n: j1["beats"][n] + j2["beats"][n] for n in INPUTS}
    got, _, err, left = amaranth_run(P, both, stalls=stalls, seed=seed, beats=beats)
    n1 = Scoreboard(j1).n_expected()
    assert err == 0 and all(x == 0 for x in left.values())
    for job, op, part in ((j1, op1, got[:n1]), (j2, op2, got[n1:])):
        res = Scoreboard(job).check(part)
        assert res["errors"] == [] and res["mismatches"] == 0, res["first_mismatch"]
        assert np.array_equal(res["got"], op(q, k, v))


def test_the_shift_register_option_is_a_bool_and_the_default_carries_the_shift():
    with pytest.raises(AttentionParamError, match=r"out_shift_in_flight=1 must be a bool"):
        AttentionKernel(P1, out_shift_in_flight=1)
    from amaranth.back import verilog
    tagged = verilog.convert(AttentionKernel(P1), name="k", emit_src=False)
    plain = verilog.convert(AttentionKernel(P1, out_shift_in_flight=False), name="k", emit_src=False)
    assert "o1_sh" in tagged and "o1_sh" not in plain


def test_serial_output_saves_multipliers():
    full = attention_resources(AttentionParams(p=2, t_a=8, max_seq=17, head_dim=16), "ecp5")
    two = attention_resources(AttentionParams(p=2, t_a=8, max_seq=17, head_dim=16, out_lanes=2), "ecp5")
    assert (full["dsp"], two["dsp"]) == (52, 28)      # 8 then 2 products of acc x r, 4 MULT18X18D each


def test_exp_shift_zero_and_large_out_shift():
    rng = np.random.default_rng(5)
    P = AttentionParams(p=3, t_a=8, heads=1, n_a=1, max_seq=6, head_dim=8)
    q, k, v = (rng.integers(-128, 128, (5, 8)) for _ in range(3))
    check(P, IntAttention(1, 3, 0, 20000, 30), q, k, v)        # exp_shift 0: u = D * 3
    check(P, IntAttention(1, 32767, 62, 32767, 62), q, k, v)   # u = 0 everywhere, out 0


def test_framing_error_flag():
    """first/last on an input beat that disagree with the descriptor's counts set `error`."""
    from accel.hdl.attention import attention_layouts
    rng = np.random.default_rng(6)
    op = make_op(2, 8)
    q, k, v = (rng.integers(-128, 128, (3, 16)) for _ in range(3))
    job = attention_job(op, q, k, v, P1, stalls=False)
    _, _, err, _ = amaranth_run(P1, job)
    assert err == 0
    for stream, beat, fld in (("k", 0, "first"), ("v", -1, "last"), ("q", 1, "first")):
        off = {n: f.offset for n, f in attention_layouts(P1)[stream]}[fld]
        bad = {n: list(b) for n, b in job["beats"].items()}
        bad[stream][beat] ^= 1 << off
        _, _, err, _ = amaranth_run(P1, job, beats=bad)
        assert err == 1, (stream, beat, fld)


def test_bad_descriptor_is_dropped_with_error():
    rng = np.random.default_rng(7)
    op = make_op(2, 8)
    q, k, v = (rng.integers(-128, 128, (3, 16)) for _ in range(3))
    job = attention_job(op, q, k, v, P1, stalls=False)
    from accel.hdl.attention import attention_layouts
    L = attention_layouts(P1)
    badcfg = pack_beats(L["cfg"], 1, {"exp_mult": 1, "exp_shift": 1, "out_mult": 1,
                                      "out_shift": 1, "n_q": 13, "n_k": 3})   # 13 > max_seq
    beats = dict(job["beats"], cfg=badcfg + job["beats"]["cfg"])
    got, _, err, left = amaranth_run(P1, job, beats=beats)
    assert err == 1
    res = Scoreboard(job).check(got)
    assert res["mismatches"] == 0 and all(x == 0 for x in left.values())


@pytest.mark.parametrize("kw, frag", [
    ({"t_a": 3, "head_dim": 8}, "t_a=3"),
    ({"p": 0}, "p=0"),
    ({"max_seq": 2000}, "max_seq=2000"),
    ({"heads": 1.5}, "heads=1.5"),
    ({"n_a": True}, "n_a=True"),
    ({"p": 64, "t_a": 16, "heads": 8, "head_dim": 64}, "MACs exceeds"),
    ({"t_a": 8, "out_lanes": 3}, "out_lanes=3: must be None or an int dividing t_a=8"),
    ({"t_a": 8, "out_lanes": 16}, "out_lanes=16"),
    ({"t_a": 8, "out_lanes": 0}, "out_lanes=0"),
])
def test_params_validation(kw, frag):
    with pytest.raises(AttentionParamError, match=frag.replace(".", r"\.")):
        AttentionParams(**kw)


def test_params_read_only_and_derived():
    P = AttentionParams(p=4, t_a=16, heads=3, n_a=2, max_seq=197, head_dim=64)
    with pytest.raises(Exception):
        P.p = 5
    k = AttentionKernel(P)
    k._MustUse__silence = True      # built only to check the read-only property
    with pytest.raises(AttributeError):
        k.params = P1
    assert (P.chunks, P.slots, P.lanes, P.score_bits) == (4, 8, 24, 22)
    assert attention_passes(20, P) == [8, 8, 4]
    with pytest.raises(CostModelError, match="head_dim=32"):
        attention_cycles(10, 3, 32, P)
    with pytest.raises(CostModelError, match="max_seq"):
        attention_cycles(300, 3, 64, P)
    with pytest.raises(CostModelError, match="family='ice40'"):
        attention_resources(P, "ice40")
    r = attention_resources(P, "xcup")
    assert r["dsp"] > 0 and r["bram"] >= 2


def test_job_validation_errors_name_value_and_fix():
    from accel.models.errors import NumericsError, ShapeError
    from accel.sim.attention_runner import AttentionResult  # noqa: F401  (public API)
    rng = np.random.default_rng(8)
    op = make_op(2, 8)
    q = rng.integers(-128, 128, (5, 16))
    with pytest.raises(ShapeError, match=r"head_dim=16 .*AttentionParams\(head_dim=16\)"):
        attention_job(make_op(1, 16), q, q, q, P1)
    with pytest.raises(ShapeError, match=r"13 queries .*max_seq>=13"):
        big = rng.integers(-128, 128, (13, 16))
        attention_job(op, big, big, big, P1)
    with pytest.raises(NumericsError, match=r"q values \[.*200\] are not int8"):
        attention_job(op, np.full((2, 16), 200), q, q, P1)
    with pytest.raises(NumericsError, match="dtype float64"):
        attention_job(op, q.astype(float), q, q, P1)
    with pytest.raises(ShapeError, match="do not agree"):
        attention_job(op, q, q, q[:3], P1)
