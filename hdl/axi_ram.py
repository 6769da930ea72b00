"""AXI4 slave over on-chip memory: the accelerator's ``m_axi_gmem`` port seen from the memory side.

:class:`AxiRam` holds the compiled memory image (a list of 64-bit words, word ``i`` at byte
address ``8*i``) in an ``amaranth.lib.memory.Memory`` and serves the subset of AXI4 that
docs/top_interface.md promises the master uses: INCR bursts (any length up to 256 beats; the top
issues at most 16), full-width beats (``arsize``/``awsize`` = 3), byte strobes, a single ID (no
ID signals). One read burst and one write burst may be in flight at the same time, each at one
beat per cycle.

The members are flat and named like the master's signals (``awvalid``, ``awready``, ``awaddr``,
..., ``rlast``), seen from the slave side, so a board top connects them one to one.

Errors come back as SLVERR (``rresp``/``bresp`` = 2) rather than silently wrapping: a beat whose
address lies outside the memory, a burst type other than INCR or a size other than the data
width. An out-of-range write beat does not write; an out-of-range read beat returns 0. A write
burst whose ``wlast`` does not match ``awlen`` also ends with SLVERR (the burst still ends after
``awlen + 1`` beats).

Timing: a read beat leaves the memory's registered output one cycle after the address is
accepted; the read port is enabled whenever the output register is empty or being emptied, so
``rready`` stalls never lose or repeat a beat. ``bvalid`` rises the cycle after the last write
beat; the next write address is accepted once the response has been taken.
"""
from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from accel.models.errors import AccelError

__all__ = ["AxiRam", "AxiRamError", "AXI_MASTER_OUT", "AXI_SLAVE_OUT", "axi_signal_widths",
           "RESP_OKAY", "RESP_SLVERR", "BURST_INCR"]

RESP_OKAY = 0
RESP_SLVERR = 2
BURST_INCR = 1

# Signals the master drives, and signals the slave drives (docs/top_interface.md, m_axi_gmem_*).
AXI_MASTER_OUT = ("awvalid", "awaddr", "awlen", "awsize", "awburst", "wvalid", "wdata", "wstrb", "wlast",
                  "bready", "arvalid", "araddr", "arlen", "arsize", "arburst", "rready")
AXI_SLAVE_OUT = ("awready", "wready", "bvalid", "bresp", "arready", "rvalid", "rdata", "rresp", "rlast")


def axi_signal_widths(addr_bits: int = 64, data_bits: int = 64) -> dict[str, int]:
    """Width of every m_axi_gmem signal, by the master's name."""
    return {"awvalid": 1, "awready": 1, "awaddr": addr_bits, "awlen": 8, "awsize": 3, "awburst": 2,
            "wvalid": 1, "wready": 1, "wdata": data_bits, "wstrb": data_bits // 8, "wlast": 1,
            "bvalid": 1, "bready": 1, "bresp": 2,
            "arvalid": 1, "arready": 1, "araddr": addr_bits, "arlen": 8, "arsize": 3, "arburst": 2,
            "rvalid": 1, "rready": 1, "rdata": data_bits, "rresp": 2, "rlast": 1}


class AxiRamError(AccelError, ValueError):
    """An AxiRam parameter is out of range; the message names the value and the fix."""


class AxiRam(wiring.Component):
    """AXI4 slave memory of ``depth`` words of ``data_bits`` (default: as many words as ``init``).

    ``init``: the memory image as unsigned integers, one per word (missing words are 0).
    """

    def __init__(self, init=(), *, depth: int | None = None, data_bits: int = 64, addr_bits: int = 64):
        init = [int(w) for w in init]
        if data_bits not in (32, 64, 128, 256, 512):
            raise AxiRamError(f"AxiRam data_bits={data_bits!r}: must be 32, 64, 128, 256 or 512")
        if depth is None:
            depth = len(init)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise AxiRamError(f"AxiRam depth={depth!r}: must be a positive number of words "
                              "(pass depth= or a non-empty init image)")
        if len(init) > depth:
            raise AxiRamError(f"AxiRam: the image has {len(init)} words but depth is {depth}; "
                              f"raise depth to at least {len(init)}")
        bad = next((i for i, w in enumerate(init) if not 0 <= w < 1 << data_bits), None)
        if bad is not None:
            raise AxiRamError(f"AxiRam: image word {bad} = {init[bad]:#x} is not an unsigned {data_bits}-bit value")
        self.size_code = ceil_log2(data_bits // 8)
        if addr_bits < self.size_code + ceil_log2(depth):
            raise AxiRamError(f"AxiRam addr_bits={addr_bits}: too narrow for {depth} words of {data_bits} bits")
        self.depth = depth
        self.data_bits = data_bits
        self.addr_bits = addr_bits
        self.init = init
        self.memory = Memory(shape=data_bits, depth=depth, init=init)   # simulators may peek at .data[i]
        widths = axi_signal_widths(addr_bits, data_bits)
        super().__init__({n: (In if n in AXI_MASTER_OUT else Out)(widths[n]) for n in widths})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = self.memory
        rd = mem.read_port(domain="sync")
        wr = mem.write_port(granularity=8)
        lsb = self.size_code
        # word counters wide enough that a burst (<= 256 beats) starting in range cannot wrap
        cw = min(self.addr_bits - lsb, ceil_log2(self.depth) + 9)

        def decode(addr, count, high):
            # word counter = address bits [lsb, lsb+cw); 'high' = any address bit above that set
            return [count.eq(addr[lsb:lsb + cw]), high.eq(addr[lsb + cw:] != 0 if lsb + cw < self.addr_bits else 0)]

        def burst_bad(size, burst):
            return (size != self.size_code) | (burst != BURST_INCR)

        # ---- read channel
        r_active = Signal()
        r_count = Signal(cw)
        r_high = Signal()
        r_bad = Signal()
        r_left = Signal(8)
        r_err_out = Signal()
        m.d.comb += self.arready.eq(~r_active)
        with m.If(self.arvalid & self.arready):
            m.d.sync += [*decode(self.araddr, r_count, r_high), r_left.eq(self.arlen), r_active.eq(1),
                         r_bad.eq(burst_bad(self.arsize, self.arburst))]
        r_out_of_range = r_high | (r_count >= self.depth)
        issue = Signal()
        m.d.comb += issue.eq(r_active & (~self.rvalid | self.rready))
        m.d.comb += [rd.addr.eq(r_count), rd.en.eq(issue)]
        with m.If(issue):
            m.d.sync += [self.rvalid.eq(1), self.rlast.eq(r_left == 0), r_err_out.eq(r_bad | r_out_of_range),
                         r_count.eq(r_count + 1), r_left.eq(r_left - 1)]
            with m.If(r_left == 0):
                m.d.sync += r_active.eq(0)
        with m.Elif(self.rready):
            m.d.sync += self.rvalid.eq(0)
        m.d.comb += [self.rresp.eq(Mux(r_err_out, RESP_SLVERR, RESP_OKAY)), self.rdata.eq(Mux(r_err_out, 0, rd.data))]

        # ---- write channel
        w_active = Signal()
        w_count = Signal(cw)
        w_high = Signal()
        w_left = Signal(8)
        w_err = Signal()
        m.d.comb += self.awready.eq(~w_active & ~self.bvalid)
        with m.If(self.awvalid & self.awready):
            m.d.sync += [*decode(self.awaddr, w_count, w_high), w_left.eq(self.awlen), w_active.eq(1),
                         w_err.eq(burst_bad(self.awsize, self.awburst))]
        w_out_of_range = w_high | (w_count >= self.depth)
        m.d.comb += self.wready.eq(w_active)
        beat = self.wvalid & self.wready
        m.d.comb += [wr.addr.eq(w_count), wr.data.eq(self.wdata)]
        with m.If(beat & ~w_out_of_range):
            m.d.comb += wr.en.eq(self.wstrb)
        with m.If(beat):
            last = w_left == 0
            m.d.sync += [w_count.eq(w_count + 1), w_left.eq(w_left - 1)]
            with m.If(w_out_of_range | (self.wlast != last)):
                m.d.sync += w_err.eq(1)
            with m.If(last):
                m.d.sync += [w_active.eq(0), self.bvalid.eq(1),
                             self.bresp.eq(Mux(w_err | w_out_of_range | ~self.wlast, RESP_SLVERR, RESP_OKAY))]
        with m.If(self.bvalid & self.bready):
            m.d.sync += self.bvalid.eq(0)
        return m
