"""The residual add unit in RTL simulation (Amaranth's simulator) against IntResidualAdd, bit for
bit: traced digits-moe residual adds, extremes, random stalls on every stream."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from accel.hdl.residual import ResidualParamError, ResidualParams, ResidualUnit, residual_cycles
from accel.models.data import eval_set
from accel.models.errors import NumericsError
from accel.models.intops import IntResidualAdd
from accel.models.quantize import load_reference, make_residual


def run_unit(op: IntResidualAdd, x: np.ndarray, b: np.ndarray, lanes: int, stalls: bool, seed: int = 0,
             mul_lanes: int | None = None):
    """x int16 [N, C], b int8 [N, C] with C a multiple of lanes; returns (y [N, C], cycles)."""
    n, c = x.shape
    flat_x, flat_b = x.reshape(-1, lanes), b.reshape(-1, lanes)
    dut = ResidualUnit(lanes=lanes, mul_lanes=mul_lanes)
    rng = random.Random(seed)
    got: list[int] = []
    cycles = [0]

    async def driver(ctx):
        ctx.set(dut.c_i.payload, {"mult_x": op.mult_x, "mult_b": op.mult_b, "shift": op.shift})
        ctx.set(dut.c_i.valid, 1)
        await ctx.tick().until(dut.c_i.ready)
        ctx.set(dut.c_i.valid, 0)
        for k in range(len(flat_x)):
            while stalls and rng.random() < 0.3:
                ctx.set(dut.i_i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i_i.payload, {"x": [int(v) for v in flat_x[k]], "b": [int(v) for v in flat_b[k]],
                                      "last": k == len(flat_x) - 1})
            ctx.set(dut.i_i.valid, 1)
            await ctx.tick().until(dut.i_i.ready)
        ctx.set(dut.i_i.valid, 0)

    async def monitor(ctx):
        while len(got) < x.size:
            ready = not (stalls and rng.random() < 0.3)
            ctx.set(dut.o_o.ready, ready)
            _, _, valid, pay = await ctx.tick().sample(dut.o_o.valid, dut.o_o.payload)
            cycles[0] += 1
            if ready and valid:
                got.extend(int(v) for v in pay.y)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(monitor)
    sim.add_testbench(driver, background=True)
    sim.run()
    return np.array(got, dtype=np.int64).reshape(n, c), cycles[0]


def test_digits_traced_residual_adds_with_stalls():
    ref = load_reference("digits-moe")
    tr = ref.trace(ref.quantize_images(eval_set(ref.cfg, 1).images)[0])
    recs = [r for r in tr if isinstance(r.op, IntResidualAdd)]
    assert len(recs) == 9  # the embedding's pos_add and res1/res2 of four blocks
    for rec, mul_lanes in zip(recs[:4], (None, 2, 1, 4)):
        x, b = rec.inputs
        got, _ = run_unit(rec.op, x, b, lanes=8, stalls=True, seed=len(rec.name), mul_lanes=mul_lanes)
        assert np.array_equal(got, rec.output), (rec.key, mul_lanes)


def test_extremes_saturate_and_cycles():
    op = make_residual(0.01, 0.5, 0.004)
    x = np.array([[32767, -32768, 0, 1000] * 2, [-32768, 32767, -1, 5] * 2], dtype=np.int64)
    b = np.array([[127, -128, 127, -128] * 2, [-128, 127, 0, 1] * 2], dtype=np.int64)
    for mul_lanes in (None, 2, 1):
        got, cycles = run_unit(op, x, b, lanes=4, stalls=False, mul_lanes=mul_lanes)
        assert np.array_equal(got, op(x, b)) and got.max() == 32767 and got.min() == -32768
        # configuration (1) + 4 beats of lanes / mul_lanes steps + the pipeline, counted from the start
        params = ResidualParams(lanes=4, mul_lanes=mul_lanes)
        assert cycles == 1 + residual_cycles(4, params)
        assert residual_cycles(4, params) == 4 * 4 // (mul_lanes or 4) + 5


def test_params():
    with pytest.raises(ResidualParamError, match="lanes=0: must be an int in"):
        ResidualParams(lanes=0)
    with pytest.raises(ResidualParamError, match=r"mul_lanes=3: must be None or an int dividing lanes=8 "
                                                 r"\(the lanes multiplied per cycle\)"):
        ResidualParams(lanes=8, mul_lanes=3)
    with pytest.raises(ResidualParamError, match=r"mul_lanes=16: must be None"):
        ResidualParams(lanes=8, mul_lanes=16)
    assert (ResidualParams(lanes=8, mul_lanes=2).steps, ResidualParams(lanes=8).products) == (4, 8)


def test_every_shift_rounds_like_the_reference():
    """The rounding (shift, then add the last bit shifted out) at every kind of shift, with the
    largest multipliers and extreme inputs: ties, saturation and the all-zero results of huge shifts."""
    top = (1 << 23) - 1
    x = np.array([[32767, -32768, -1, 1, 2, -2, 3, -3], [0, 16384, -16384, 5, -5, 32767, -32768, 7]], dtype=np.int64)
    b = np.array([[127, -128, 0, 0, -1, 1, 127, -128], [1, -1, 0, 127, -128, -128, 127, 0]], dtype=np.int64)
    for shift in (0, 1, 2, 23, 38, 39, 40, 41, 42, 50, 62):
        for mx, mb in ((top, top), (1, top), (top, 1), (3, 5)):
            op = IntResidualAdd(mx, mb, shift)
            got, _ = run_unit(op, x, b, lanes=8, stalls=False, mul_lanes=4)
            assert np.array_equal(got, op(x, b)), (shift, mx, mb)
    with pytest.raises(NumericsError, match=r"shift 63 in \[0, 62\]"):
        IntResidualAdd(1, 1, 63)
