"""AxiRam (hdl/axi_ram.py) in Amaranth's simulator against a Python dict model: random INCR
bursts of 1-16 beats with random byte strobes, a read burst and a write burst in flight together,
random wvalid gaps and rready/bready stalls, one beat per cycle without stalls, SLVERR cases."""
import gc
import random

import pytest
from amaranth.sim import Simulator

from accel.hdl.axi_ram import RESP_OKAY, RESP_SLVERR, AxiRam, AxiRamError

MASK64 = (1 << 64) - 1


class Master:
    """A small AXI4 master for testbenches: one read and one write burst may run concurrently
    (from two testbench coroutines)."""

    def __init__(self, dut: AxiRam, rng: random.Random, stall: float):
        self.dut, self.rng, self.stall = dut, rng, stall

    def _stalled(self) -> bool:
        return self.stall > 0 and self.rng.random() < self.stall

    async def write(self, ctx, addr: int, beats: list[tuple[int, int]], size: int = 3, burst: int = 1,
                    wlast_at: int | None = None) -> int:
        d = self.dut
        last_i = len(beats) - 1 if wlast_at is None else wlast_at
        ctx.set(d.awaddr, addr)
        ctx.set(d.awlen, len(beats) - 1)
        ctx.set(d.awsize, size)
        ctx.set(d.awburst, burst)
        ctx.set(d.awvalid, 1)
        await ctx.tick().until(d.awready)
        ctx.set(d.awvalid, 0)
        for i, (data, strb) in enumerate(beats):
            while self._stalled():
                ctx.set(d.wvalid, 0)
                await ctx.tick()
            ctx.set(d.wdata, data)
            ctx.set(d.wstrb, strb)
            ctx.set(d.wlast, i == last_i)
            ctx.set(d.wvalid, 1)
            await ctx.tick().until(d.wready)
        ctx.set(d.wvalid, 0)
        while True:
            ready = not self._stalled()
            ctx.set(d.bready, ready)
            _, _, valid, resp = await ctx.tick().sample(d.bvalid, d.bresp)
            if valid and ready:
                ctx.set(d.bready, 0)
                return resp

    async def read(self, ctx, addr: int, n: int, size: int = 3, burst: int = 1) -> tuple[list, int]:
        """Returns ([(data, last, resp)] per beat, cycles from the address handshake to the last beat)."""
        d = self.dut
        ctx.set(d.araddr, addr)
        ctx.set(d.arlen, n - 1)
        ctx.set(d.arsize, size)
        ctx.set(d.arburst, burst)
        ctx.set(d.arvalid, 1)
        await ctx.tick().until(d.arready)
        ctx.set(d.arvalid, 0)
        got, cycles = [], 0
        while len(got) < n:
            ready = not self._stalled()
            ctx.set(d.rready, ready)
            _, _, valid, data, last, resp = await ctx.tick().sample(d.rvalid, d.rdata, d.rlast, d.rresp)
            cycles += 1
            if valid and ready:
                got.append((data, last, resp))
        ctx.set(d.rready, 0)
        return got, cycles


def merge(old: int, new: int, strb: int) -> int:
    for b in range(8):
        if strb >> b & 1:
            old = (old & ~(0xFF << 8 * b)) | (new & (0xFF << 8 * b))
    return old


def run(dut, *benches):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for b in benches:
        sim.add_testbench(b)
    sim.run()


@pytest.mark.parametrize("stall", [0.0, 0.35])
def test_random_bursts_against_dict_model(stall):
    rng = random.Random(7 + int(stall * 100))
    depth = 256
    init = [rng.getrandbits(64) for _ in range(200)]          # words 200..255 start at 0
    dut = AxiRam(init, depth=depth)
    model = {i: (init[i] if i < len(init) else 0) for i in range(depth)}
    wm, rm = Master(dut, random.Random(1), stall), Master(dut, random.Random(2), stall)
    # writes go to words [0, 128), concurrent reads to [128, 256) (ordering between the two
    # channels is undefined in AXI); then everything is read back
    checked = {"writes": 0, "reads": 0}

    async def writer(ctx):
        for _ in range(30):
            n = rng.randint(1, 16)
            start = rng.randrange(0, 128 - n + 1)
            beats = [(rng.getrandbits(64), rng.choice([0xFF, 0x00, 0x0F, 0x81, rng.getrandbits(8)])) for _ in range(n)]
            resp = await wm.write(ctx, 8 * start, beats)
            assert resp == RESP_OKAY
            for i, (data, strb) in enumerate(beats):
                model[start + i] = merge(model[start + i], data, strb)
            checked["writes"] += n

    async def reader(ctx):
        for _ in range(30):
            n = rng.randint(1, 16)
            start = rng.randrange(128, depth - n + 1)
            got, _ = await rm.read(ctx, 8 * start, n)
            assert [g[0] for g in got] == [model[start + i] for i in range(n)]
            assert [g[1] for g in got] == [0] * (n - 1) + [1]
            assert all(g[2] == RESP_OKAY for g in got)
            checked["reads"] += n

    async def readback(ctx):
        while not (done["w"] and done["r"]):     # both streams of traffic finished
            await ctx.tick()
        for start in range(0, depth, 16):
            got, _ = await rm.read(ctx, 8 * start, 16)
            assert [g[0] for g in got] == [model[start + i] for i in range(16)], f"words {start}..{start + 15}"

    done = {"w": False, "r": False}

    async def writer_then_flag(ctx):
        await writer(ctx)
        done["w"] = True

    async def reader_then_flag(ctx):
        await reader(ctx)
        done["r"] = True

    run(dut, writer_then_flag, reader_then_flag, readback)
    assert done["w"] and done["r"] and checked["writes"] > 100 and checked["reads"] > 100


def test_one_beat_per_cycle_without_stalls():
    init = list(range(1, 65))
    dut = AxiRam(init)
    m = Master(dut, random.Random(0), 0.0)
    res = {}

    async def bench(ctx):
        got, cycles = await m.read(ctx, 8 * 3, 16)
        res["read"] = cycles
        assert [g[0] for g in got] == init[3:19]
        ctx.set(dut.awaddr, 0)
        ctx.set(dut.awlen, 15)
        ctx.set(dut.awsize, 3)
        ctx.set(dut.awburst, 1)
        ctx.set(dut.awvalid, 1)
        await ctx.tick().until(dut.awready)
        ctx.set(dut.awvalid, 0)
        ctx.set(dut.wvalid, 1)
        ctx.set(dut.wstrb, 0xFF)
        ctx.set(dut.bready, 1)
        accepted = 0
        for c in range(16):
            ctx.set(dut.wdata, 100 + c)
            ctx.set(dut.wlast, c == 15)
            _, _, ready = await ctx.tick().sample(dut.wready)
            accepted += ready
        ctx.set(dut.wvalid, 0)
        res["write_accepted"] = accepted
        _, _, bvalid, bresp = await ctx.tick().sample(dut.bvalid, dut.bresp)
        assert bvalid and bresp == RESP_OKAY
        got, _ = await m.read(ctx, 0, 16)
        assert [g[0] for g in got] == [100 + c for c in range(16)]

    run(dut, bench)
    assert res["read"] == 17          # one cycle of memory latency, then 16 beats back to back
    assert res["write_accepted"] == 16


def test_errors_are_slverr():
    dut = AxiRam([5, 6, 7, 8])
    m = Master(dut, random.Random(3), 0.2)

    async def bench(ctx):
        got, _ = await m.read(ctx, 8 * 2, 4)            # words 2, 3 in range, 4, 5 beyond the end
        assert [(g[0], g[2]) for g in got] == [(7, RESP_OKAY), (8, RESP_OKAY), (0, RESP_SLVERR), (0, RESP_SLVERR)]
        got, _ = await m.read(ctx, 1 << 40, 1)          # high address bits
        assert got[0][2] == RESP_SLVERR
        got, _ = await m.read(ctx, 0, 2, size=2)         # 4-byte beats are not supported
        assert all(g[2] == RESP_SLVERR for g in got)
        got, _ = await m.read(ctx, 0, 2, burst=2)        # WRAP
        assert all(g[2] == RESP_SLVERR for g in got)
        assert await m.write(ctx, 8 * 3, [(0xAA, 0xFF), (0xBB, 0xFF)]) == RESP_SLVERR   # second beat beyond
        assert await m.write(ctx, 0, [(0x11, 0xFF), (0x22, 0xFF)], wlast_at=0) == RESP_SLVERR
        assert await m.write(ctx, 8, [(0x33, 0x01)]) == RESP_OKAY
        got, _ = await m.read(ctx, 0, 4)
        # the in-range beats of the failed bursts still wrote; the beat beyond the end did not
        assert [g[0] for g in got] == [0x11, 0x33, 7, 0xAA]
        assert all(g[2] == RESP_OKAY for g in got)

    run(dut, bench)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_parameter_errors():
    with pytest.raises(AxiRamError, match="depth=None|positive number of words"):
        AxiRam([])
    with pytest.raises(AxiRamError, match="raise depth to at least 3"):
        AxiRam([1, 2, 3], depth=2)
    with pytest.raises(AxiRamError, match="image word 1"):
        AxiRam([1, 1 << 64])
    gc.collect()     # the half-made elaboratables warn now, inside the filter
