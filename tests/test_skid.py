"""hdl/skid.py: every beat passes once and in order under random stalls on both sides; the
producer's ready is a register; full throughput without stalls."""
import random

import pytest
from amaranth import unsigned
from amaranth.sim import Simulator

from accel.hdl.skid import SkidBuffer


def _run(p_valid, c_ready, n=200, seed=0):
    dut = SkidBuffer(unsigned(16))
    rng = random.Random(seed)
    beats = [rng.randrange(1 << 16) for _ in range(n)]
    got = []
    cycles = [0]

    async def producer(ctx):
        i = 0
        while i < n:
            v = rng.random() < p_valid
            ctx.set(dut.i.valid, v)
            ctx.set(dut.i.payload, beats[i])
            ready = ctx.get(dut.i.ready)
            await ctx.tick()
            if v and ready:
                i += 1
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while len(got) < n:
            r = rng.random() < c_ready
            ctx.set(dut.o.ready, r)
            valid, payload = ctx.get(dut.o.valid), ctx.get(dut.o.payload)
            await ctx.tick()
            cycles[0] += 1
            if valid and r:
                got.append(payload)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.run()
    return beats, got, cycles[0]


@pytest.mark.parametrize("p_valid,c_ready,seed", [(1.0, 1.0, 0), (0.5, 0.5, 1), (1.0, 0.3, 2), (0.3, 1.0, 3)])
def test_every_beat_once_in_order(p_valid, c_ready, seed):
    beats, got, _ = _run(p_valid, c_ready, seed=seed)
    assert got == beats


def test_full_throughput():
    _, got, cycles = _run(1.0, 1.0, n=100)
    assert cycles <= 100 + 2


def test_producer_ready_does_not_follow_the_consumer_in_the_same_cycle():
    dut = SkidBuffer(unsigned(8))
    seen = []

    async def bench(ctx):
        rng = random.Random(5)
        for _ in range(100):
            ctx.set(dut.i.valid, rng.random() < 0.8)
            ctx.set(dut.i.payload, rng.randrange(256))
            ctx.set(dut.o.ready, 0)
            r0 = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, 1)
            r1 = ctx.get(dut.i.ready)
            seen.append((r0, r1))
            ctx.set(dut.o.ready, rng.random() < 0.3)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert all(r0 == r1 for r0, r1 in seen)
    assert {r0 for r0, _ in seen} == {0, 1}      # the buffer did fill and drain
