"""The MoE gate unit in RTL simulation (Amaranth's simulator) against IntGate, bit for bit:
traced digits-moe gate logits, random logits, -32768/32767 extremes, all-equal logits (ties to
the lower index), n_experts < max_experts, top_k 1..8, renormalize on and off, reconfiguration
between calls, random stalls on l_i and r_o; and the cycle model, exact without stalls."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from accel.hdl.gate import GateParamError, GateParams, GateUnit, back_cycles, gate_config
from accel.hdl.gate_cost import gate_cycles, gate_period, gate_resources
from accel.hdl.resources import CostModelError
from accel.models.data import eval_set
from accel.models.intops import IntGate, IntLinear, Requant
from accel.models.quantize import load_reference


def logit_gate(n: int, top_k: int, exp_mult: int, exp_shift: int, renormalize: bool) -> IntGate:
    """An IntGate whose linear passes int16 logits through unchanged (identity weights, no bias,
    multiplier 1, shift 0): the reference for arbitrary logits."""
    lin = IntLinear(np.eye(n, dtype=np.int64), np.zeros(n, dtype=np.int64),
                    Requant(np.ones(n, dtype=np.int64), np.zeros(n, dtype=np.int64), 16))
    return IntGate(lin, top_k, exp_mult, exp_shift, renormalize)


def run_unit(params: GateParams, jobs, stalls: bool, seed: int = 0):
    """jobs: [(IntGate, logits [T, n])]. Each job sends the gate's configuration, then its tokens
    (``last`` on each job's final token). Returns ([(experts [T, max_k], weights [T, max_k],
    lasts [T])] per job, cycles from the first accepted logits beat to the last accepted result
    beat, both included)."""
    dut = GateUnit(params)
    rng = random.Random(seed)
    E = params.max_experts
    n_total = sum(lg.shape[0] for _, lg in jobs)
    got: list[tuple[list[int], list[int], int]] = []
    marks = {"first_in": None, "last_out": None}

    async def driver(ctx):
        for gate, logits in jobs:
            ctx.set(dut.c_i.payload, gate_config(gate, params))
            ctx.set(dut.c_i.valid, 1)
            await ctx.tick().until(dut.c_i.ready)
            ctx.set(dut.c_i.valid, 0)
            for t in range(logits.shape[0]):
                while stalls and rng.random() < 0.3:
                    ctx.set(dut.l_i.valid, 0)
                    await ctx.tick()
                row = [int(v) for v in logits[t]] + [int(rng.choice([-32768, 32767, 0, 12345]))
                                                     for _ in range(E - logits.shape[1])]  # unused lanes: junk
                ctx.set(dut.l_i.payload, {"data": row, "last": t == logits.shape[0] - 1})
                ctx.set(dut.l_i.valid, 1)
                await ctx.tick().until(dut.l_i.ready)
            ctx.set(dut.l_i.valid, 0)

    async def monitor(ctx):
        cycle = 0
        while len(got) < n_total:
            ready = not (stalls and rng.random() < 0.3)
            ctx.set(dut.r_o.ready, ready)
            _, _, lv, lr, valid, pay = await ctx.tick().sample(dut.l_i.valid, dut.l_i.ready,
                                                               dut.r_o.valid, dut.r_o.payload)
            if lv and lr and marks["first_in"] is None:
                marks["first_in"] = cycle
            if ready and valid:
                got.append(([int(v) for v in pay.expert], [int(v) for v in pay.weight], int(pay.last)))
                marks["last_out"] = cycle
            cycle += 1
            assert cycle < 200 * (n_total + 2) * (E + 40), "the unit stopped producing results"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(monitor)
    sim.add_testbench(driver, background=True)
    sim.run()
    out, i = [], 0
    for _, logits in jobs:
        part = got[i:i + logits.shape[0]]
        i += logits.shape[0]
        out.append((np.array([p[0] for p in part], dtype=np.int64).reshape(len(part), -1),
                    np.array([p[1] for p in part], dtype=np.int64).reshape(len(part), -1),
                    np.array([p[2] for p in part], dtype=np.int64)))
    return out, marks["last_out"] - marks["first_in"] + 1


def check(params: GateParams, jobs, stalls=True, seed=0):
    results, cycles = run_unit(params, jobs, stalls, seed)
    for j, ((gate, logits), (experts, weights, lasts)) in enumerate(zip(jobs, results)):
        want = gate(logits)
        assert np.array_equal(want.logits, logits), "reference gate does not pass the logits through"
        k = gate.top_k
        T = logits.shape[0]
        assert experts.shape == (T, params.max_k), (j, experts.shape)
        for t in range(T):
            assert experts[t, :k].tolist() == want.experts[t].tolist() and \
                weights[t, :k].tolist() == want.weights[t].tolist(), (
                f"job {j} token {t}: logits {logits[t].tolist()} (mult {gate.exp_mult}, shift {gate.exp_shift}, "
                f"k {k}, renorm {gate.renormalize}): expected {want.experts[t].tolist()} "
                f"{want.weights[t].tolist()}, got {experts[t, :k].tolist()} {weights[t, :k].tolist()}")
        assert not experts[:, k:].any() and not weights[:, k:].any(), (j, "slots beyond top_k must be 0")
        assert lasts.tolist() == [0] * (T - 1) + [1], (j, lasts)
    return cycles


@pytest.fixture(scope="module")
def digits_gates():
    ref = load_reference("digits-moe")
    tr = ref.trace(ref.quantize_images(eval_set(ref.cfg, 1).images)[0])
    return [r for r in tr if r.name == "gate"]


def test_params_validation():
    with pytest.raises(GateParamError, match=r"GateParams.max_experts=1: must be in \[2, 64\]"):
        GateParams(max_experts=1)
    with pytest.raises(GateParamError, match=r"GateParams.max_experts=65: must be in \[2, 64\]"):
        GateParams(max_experts=65)
    with pytest.raises(GateParamError, match=r"GateParams.max_experts='16': must be an int in \[2, 64\]"):
        GateParams(max_experts="16")
    with pytest.raises(GateParamError, match=r"GateParams.max_k=3: must be in \[1, 2\]; max_k is the largest "
                                             r"top-k, at most 8 and at most max_experts=2"):
        GateParams(max_experts=2, max_k=3)
    with pytest.raises(GateParamError, match=r"GateParams.max_k=9: must be in \[1, 8\]"):
        GateParams(max_experts=16, max_k=9)
    with pytest.raises(GateParamError, match=r"GateParams.max_k=0: must be in \[1, 2\]"):
        GateParams(max_experts=2, max_k=0)
    with pytest.raises(GateParamError, match=r"GateParams.max_k=True: must be an int"):
        GateParams(max_k=True)
    with pytest.raises(GateParamError, match="got both params"):
        GateUnit(GateParams(), max_k=1)
    assert issubclass(GateParamError, ValueError)


def test_gate_config_checks():
    p = GateParams(max_experts=4, max_k=2)
    with pytest.raises(GateParamError, match="the gate has 5 experts; the unit serves at most max_experts=4"):
        gate_config(logit_gate(5, 2, 100, 10, False), p)
    with pytest.raises(GateParamError, match=r"top_k=3 must be in \[1, 2\] \(max_k=2, 4 experts\)"):
        gate_config(logit_gate(4, 3, 100, 10, False), p)
    with pytest.raises(GateParamError, match="exp_mult=40000, exp_shift=3 out of range"):
        gate_config(logit_gate(4, 2, 40000, 3, False), p)
    with pytest.raises(GateParamError, match="exp_mult=100, exp_shift=64 out of range"):
        gate_config(logit_gate(4, 2, 100, 64, False), p)
    # a multiplier >= 2**15 (shift 0) is sent as 2**15 - 1: the same gate
    assert gate_config(logit_gate(4, 2, 1 << 20, 0, True), p) == {
        "n_experts": 4, "top_k": 2, "exp_mult": 32767, "exp_shift": 0, "renormalize": 1}


def test_digits_traced_gates_bit_exact_with_stalls(digits_gates):
    assert len(digits_gates) == 2   # MoE on blocks 1 and 3
    for rec in digits_gates:
        assert rec.op.linear.d_out == 4 and rec.op.top_k == 2 and not rec.op.renormalize
        logits = rec.output.logits
        # the traced result itself, on an exactly sized unit and on a wider one (n_experts < max_experts)
        for params in (GateParams(max_experts=4, max_k=2), GateParams(max_experts=16, max_k=4)):
            res, _ = run_unit(params, [(rec.op, logits)], stalls=True, seed=hash(rec.key) & 0xFFFF)
            experts, weights, _ = res[0]
            assert np.array_equal(experts[:, :2], rec.output.experts), rec.key
            assert np.array_equal(weights[:, :2], rec.output.weights), rec.key
        # the same logits through top-1 and renormalized variants of the traced gate
        op = rec.op
        jobs = [(logit_gate(4, k, op.exp_mult, op.exp_shift, ren), logits) for k, ren in ((2, True), (1, False), (1, True))]
        check(GateParams(max_experts=4, max_k=2), jobs, seed=5)


def test_random_extremes_and_ties():
    rng = np.random.default_rng(11)
    n = 8
    logits = rng.integers(-32768, 32768, size=(10, n), dtype=np.int64)
    logits[5:] = np.clip(np.rint(rng.standard_normal((5, n)) * 3000), -32768, 32767).astype(np.int64)
    logits[0] = [-32768, 32767] * (n // 2)              # extremes: the largest difference, repeated maxima
    logits[1] = -32768                                  # all equal: ties to the lower index, sum = n * 2**15
    logits[2] = 32767
    logits[3] = 7
    logits[4] = [5, 9, 9, 1, 9, -4, 9, 0]               # ties among the chosen and at the cut
    logits[5, 3] = logits[5, 6] = logits[5].max() + 1   # a tied maximum
    jobs = []
    for k, ren, mult, shift in ((1, False, 18914, 18), (2, False, 21470, 18), (2, True, 16384, 14),
                                (1, True, 1 << 20, 0), (2, True, 1, 62), (2, False, 30000, 30), (2, True, 29000, 7)):
        jobs.append((logit_gate(n, k, mult, shift, ren), logits))
    # the exponent's edges: u = diff exactly (mult 1, shift 0) at the last nonzero e (u = 15*256,
    # e = 1) and the first zeros (u = 16*256, ...); then half-up rounding of u (mult 3, shift 1)
    edges = 32767 - np.array([[0, 3840, 4096, 4097, 3839, 15871, 15872, 65535],
                              [0, 4096, 3840, 8192, 3840, 4096, 0, 1],
                              [0, 1, 2, 3, 5, 7, 255, 256]], dtype=np.int64)
    jobs += [(logit_gate(n, 2, 1, 0, False), edges), (logit_gate(n, 2, 1, 0, True), edges),
             (logit_gate(n, 1, 3, 1, False), edges), (logit_gate(n, 2, 3, 1, True), edges)]
    check(GateParams(max_experts=n, max_k=2), jobs, seed=3)


def test_fewer_experts_than_slots_and_wide_top_k():
    rng = np.random.default_rng(12)
    # n_experts < max_experts (junk in the unused lanes), top_k up to max_k = 8
    jobs = []
    for n, k, ren in ((5, 5, True), (9, 8, False), (12, 8, True), (2, 1, False), (3, 3, True)):
        lg = np.clip(np.rint(rng.standard_normal((3, n)) * rng.choice([50, 2000, 30000])), -32768, 32767)
        lg = lg.astype(np.int64)
        lg[0, : n // 2] = lg[0, n - 1]      # ties
        jobs.append((logit_gate(n, k, 20000, 17, ren), lg))
    check(GateParams(max_experts=12, max_k=8), jobs, seed=9)


@pytest.mark.parametrize("E,K,n,k,ren,tokens", [
    (16, 2, 16, 2, False, 6), (16, 2, 16, 2, True, 6), (4, 2, 4, 2, True, 5), (4, 1, 3, 1, False, 4),
    (8, 4, 5, 4, True, 4), (64, 8, 64, 8, True, 3), (2, 2, 2, 2, False, 5), (32, 2, 7, 2, True, 5)])
def test_cycle_model_matches_simulation_without_stalls(E, K, n, k, ren, tokens):
    rng = np.random.default_rng(E * 100 + n)
    lg = rng.integers(-5000, 5000, size=(tokens, n), dtype=np.int64)
    cycles = check(GateParams(max_experts=E, max_k=K), [(logit_gate(n, k, 20000, 17, ren), lg)], stalls=False)
    assert cycles == gate_cycles(tokens, n, k, ren), (cycles, gate_cycles(tokens, n, k, ren))


def test_cycle_model_figures():
    assert gate_cycles(0, 16, 2, True) == 0
    # DIV_STEPS = 2: ceil(17 / 2) + 3 top_k + 1 = 16; renormalized + ceil(31 / 2) + 3 top_k = 38
    assert back_cycles(2, False) == 16 and back_cycles(2, True) == 38
    assert gate_period(16, 2, True) == 38 and gate_period(4, 2, True) == 38 and gate_period(4, 2, False) == 16
    # steady state: one token per period
    assert gate_cycles(101, 16, 2, True) - gate_cycles(100, 16, 2, True) == gate_period(16, 2, True)
    assert gate_cycles(101, 4, 2, True) - gate_cycles(100, 4, 2, True) == gate_period(4, 2, True)


def test_resource_model_families():
    r = gate_resources(GateParams(), "xcup")
    assert set(r) == {"lut", "ff", "dsp", "bram"} and r["bram"] == 0
    with pytest.raises(CostModelError, match="family='ice40' has no model"):
        gate_resources(GateParams(), "ice40")
