"""The LayerNorm unit in RTL simulation (Amaranth's simulator) against IntLayerNorm, bit for bit:
traced digits-moe norms, random rows, extremes, constant rows, random stalls on every stream."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from accel.hdl.layernorm import LayerNormParamError, LayerNormParams, LayerNormUnit
from accel.hdl.layernorm_cost import layernorm_cycles
from accel.models.data import eval_set
from accel.models.intops import IntLayerNorm
from accel.models.quantize import load_reference, make_layernorm


def run_unit(ln: IntLayerNorm, rows: np.ndarray, lanes: int, stalls: bool, seed: int = 0, steps: int = 1,
             emit_lanes: int | None = None):
    """Drive the configuration, then the rows; returns (outputs [R, C], cycles from the start of
    the configuration to the last output beat)."""
    c = ln.channels
    dut = LayerNormUnit(lanes=lanes, max_channels=max(c, 2 * lanes), stats_steps=steps, emit_lanes=emit_lanes)
    rng = random.Random(seed)
    beats = c // lanes
    out_rows: list[list[int]] = []
    cycles = [0]

    async def driver(ctx):
        for b in range(beats):
            ctx.set(dut.c_i.payload, {"mult": [int(v) for v in ln.mult[b * lanes:(b + 1) * lanes]],
                                      "offset": [int(v) for v in ln.offset[b * lanes:(b + 1) * lanes]],
                                      "channels": c, "shift": ln.shift, "first": b == 0})
            ctx.set(dut.c_i.valid, 1)
            await ctx.tick().until(dut.c_i.ready)
        ctx.set(dut.c_i.valid, 0)
        for r in range(rows.shape[0]):
            for b in range(beats):
                while stalls and rng.random() < 0.3:
                    ctx.set(dut.x_i.valid, 0)
                    await ctx.tick()
                ctx.set(dut.x_i.payload, {"data": [int(v) for v in rows[r, b * lanes:(b + 1) * lanes]],
                                          "last": b == beats - 1})
                ctx.set(dut.x_i.valid, 1)
                await ctx.tick().until(dut.x_i.ready)
        ctx.set(dut.x_i.valid, 0)

    async def monitor(ctx):
        cur: list[int] = []
        while len(out_rows) < rows.shape[0]:
            ready = not (stalls and rng.random() < 0.3)
            ctx.set(dut.y_o.ready, ready)
            _, _, valid, pay = await ctx.tick().sample(dut.y_o.valid, dut.y_o.payload)  # values at the edge
            cycles[0] += 1
            if ready and valid:
                cur += [int(v) for v in pay.data]
                if pay.last:
                    out_rows.append(cur)
                    cur = []

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(monitor)
    sim.add_testbench(driver, background=True)
    sim.run()
    return np.array(out_rows, dtype=np.int64), cycles[0]


@pytest.fixture(scope="module")
def digits_norms():
    ref = load_reference("digits-moe")
    tr = ref.trace(ref.quantize_images(eval_set(ref.cfg, 1).images)[0])
    return [r for r in tr if isinstance(r.op, IntLayerNorm)]


def test_params_validation():
    with pytest.raises(LayerNormParamError, match="lanes=3: must be a power of two"):
        LayerNormParams(lanes=3)
    with pytest.raises(LayerNormParamError, match="max_channels=100 is not a multiple of lanes=8"):
        LayerNormParams(lanes=8, max_channels=100)
    with pytest.raises(LayerNormParamError, match="max_channels=2048: must be an int in"):
        LayerNormParams(max_channels=2048)
    with pytest.raises(LayerNormParamError, match=r"emit_lanes=3: must be a power of two dividing lanes=8 "
                                                  r"\(or None for all lanes\)"):
        LayerNormParams(lanes=8, emit_lanes=3)
    with pytest.raises(LayerNormParamError, match=r"emit_lanes=16: must be a power of two dividing lanes=8"):
        LayerNormParams(lanes=8, emit_lanes=16)
    assert LayerNormParams(lanes=8, emit_lanes=2).emit_steps == 4 and LayerNormParams(lanes=8).emit_width == 8


def test_digits_traced_norms_bit_exact_with_stalls(digits_norms):
    assert len(digits_norms) == 9  # ln1, ln2 per block and the final norm
    for rec, emit in zip(digits_norms[:3] + digits_norms[-1:], (None, 1, 2, None)):
        rows = np.atleast_2d(rec.inputs[0])
        got, _ = run_unit(rec.op, rows, lanes=4, stalls=True, seed=hash(rec.key) & 0xFFFF, emit_lanes=emit)
        want = np.atleast_2d(rec.output)
        assert got.shape == want.shape, rec.key
        mism = np.argwhere(got != want)
        assert mism.size == 0, f"{rec.key}: first mismatch at {mism[0].tolist()}: expected {want[tuple(mism[0])]}, got {got[tuple(mism[0])]}"


def test_random_extremes_and_constant_rows():
    rng = np.random.default_rng(3)
    c = 32
    ln = make_layernorm(1 + 0.5 * rng.standard_normal(c), 0.3 * rng.standard_normal(c), 3 / 127)
    rows = np.clip(np.rint(rng.standard_normal((6, c)) * rng.choice([2, 300, 20000], (6, 1))), -32768, 32767).astype(np.int64)
    rows[0] = 32767
    rows[0, ::3] = -32768                       # extremes
    rows[1] = -32768                            # constant row: var = 0, output = offset
    rows[2] = 5
    for steps, emit in ((1, None), (3, 1), (4, 2)):
        got, _ = run_unit(ln, rows, lanes=8, stalls=True, seed=7, steps=steps, emit_lanes=emit)
        assert np.array_equal(got, ln(rows)), (steps, emit)


def test_cycle_model_matches_simulation_without_stalls():
    rng = np.random.default_rng(4)
    for c, lanes, n, steps, emit in ((48, 4, 5, 1, None), (64, 16, 4, 2, None), (192, 8, 3, 4, None),
                                     (32, 1, 3, 8, None), (48, 8, 4, 4, 1), (64, 8, 3, 2, 4)):
        ln = make_layernorm(np.ones(c), np.zeros(c), 4 / 127)
        rows = rng.integers(-3000, 3000, size=(n, c), dtype=np.int64)
        got, cycles = run_unit(ln, rows, lanes=lanes, stalls=False, steps=steps, emit_lanes=emit)
        assert np.array_equal(got, ln(rows))
        pred = layernorm_cycles(n, c, LayerNormParams(lanes=lanes, max_channels=max(c, 2 * lanes), stats_steps=steps,
                                                      emit_lanes=emit))
        assert abs(cycles - pred) <= 0.05 * cycles, (c, lanes, cycles, pred)


def test_every_output_shift_rounds_like_the_reference():
    """The output rounding (shift, then add the last bit shifted out) at small, large and huge
    shifts, with offsets near their limit (|offset| < 2**47), matches the reference."""
    import dataclasses

    rng = np.random.default_rng(5)
    c = 16
    ln = make_layernorm(1 + 0.5 * rng.standard_normal(c), 0.3 * rng.standard_normal(c), 3 / 127)
    rows = np.clip(np.rint(rng.standard_normal((3, c)) * 3000), -32768, 32767).astype(np.int64)
    offset = rng.integers(-(1 << 47) + 1, 1 << 47, c)
    offset[:2] = [(1 << 47) - 1, -(1 << 47) + 1]
    for shift in (0, 1, 2, 40, 46, 47, 48, 49, 50, 51, 62):
        op = dataclasses.replace(ln, shift=shift, offset=offset)
        got, _ = run_unit(op, rows, lanes=8, stalls=False)
        assert np.array_equal(got, op(rows)), shift
