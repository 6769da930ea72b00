"""A board top for the open-toolchain boards: the accelerator, its memory image in on-chip RAM,
a start-up sequencer in place of a host, and status LEDs.

::

    reset -> sequencer --AXI4-Lite--> s_axi_control  AccelTop (own_clock=False)  m_axi_gmem --AXI4--> AxiRam
                 |                                                                              (memory image)
                 +--> LEDs: done, error, idle, running, ..., heartbeat

After reset the sequencer writes the control registers of docs/top_interface.md (MEM_LO = MEM_HI
= 0: the image starts at address 0 of the RAM; PROGRAM = the program's byte offset; CTRL.ap_start),
polls CTRL until ap_done, then reads STATUS and CYCLES. The LEDs show, from LED 0 up as far as the
board has LEDs: done, error (STATUS != 0 or an AXI-Lite error response), idle (CTRL.ap_idle at the
last poll), running, and a heartbeat (about 1.5 Hz, the last LED; it proves the clock runs).

The clock: the board's default clock, or with ``clock_mhz`` on ECP5 an EHXPLLL that derives that
frequency from it (the closest the PLL can make; :func:`ecp5_pll_config`). Reset is held until the
PLL locks.

:class:`CopyCore` is a stand-in accelerator with the same ports and registers as AccelTop: it
copies words inside the memory (a descriptor at PROGRAM says how many and where to), exercising
the whole board path (registers, AXI4 bursts both ways, status LEDs) without the kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, ClockDomain, Const, Instance, Module, Mux, Signal
from amaranth.build import ResourceError
from amaranth.lib import io, wiring
from amaranth.lib.cdc import ResetSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accel.models.errors import AccelError

from .axi_ram import AXI_MASTER_OUT, AXI_SLAVE_OUT, AxiRam

__all__ = ["BoardTop", "BoardTopError", "CopyCore", "PllConfig", "ecp5_pll_config", "image_words",
           "LED_ORDER", "REG"]

LED_ORDER = ("done", "error", "idle", "running")     # then the heartbeat on the last LED


class REG:
    """Control register byte offsets (docs/top_interface.md)."""
    CTRL, GIE, IER, ISR, MEM_LO, MEM_HI, PROGRAM = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18
    CYCLES_LO, CYCLES_HI, STATUS, FETCHES = 0x20, 0x24, 0x28, 0x2C


_LITE_MASTER_OUT = ("awvalid", "awaddr", "wvalid", "wdata", "wstrb", "bready", "arvalid", "araddr", "rready")
_LITE_SLAVE_OUT = ("awready", "wready", "bvalid", "bresp", "arready", "rvalid", "rdata", "rresp")


class BoardTopError(AccelError, ValueError):
    """A board top cannot be made as asked; the message says what to change."""


def image_words(image: bytes | bytearray, data_bits: int = 64) -> list[int]:
    """A byte image as little-endian words of ``data_bits`` (the last word zero-padded)."""
    n = data_bits // 8
    padded = bytes(image) + bytes(-len(image) % n)
    return [int.from_bytes(padded[i:i + n], "little") for i in range(0, len(padded), n)]


def _port(core, bus: str, name: str):
    """The core's signal ``<bus>_<name>`` (flat members, as AccelTop has) or ``<bus>.<name>``."""
    sig = getattr(core, f"{bus}_{name}", None)
    if sig is None and hasattr(core, bus):
        sig = getattr(getattr(core, bus), name, None)
    if sig is None:
        raise BoardTopError(f"{type(core).__name__} has no {bus}_{name}; a core for BoardTop needs every "
                            f"{bus} signal of docs/top_interface.md")
    return sig


# ------------------------------------------------------------------------------------------ PLL

@dataclass(frozen=True)
class PllConfig:
    clki_div: int
    clkfb_div: int
    clkop_div: int
    fin_mhz: float
    fout_mhz: float
    vco_mhz: float


def ecp5_pll_config(fin_mhz: float, fout_mhz: float) -> PllConfig:
    """EHXPLLL dividers for ``fout_mhz`` from ``fin_mhz`` with feedback from CLKOP (the search
    prjtrellis' ecppll does): PFD 3.125-400 MHz, VCO 400-800 MHz, output 3.125-400 MHz."""
    if not 3.125 <= fout_mhz <= 400:
        raise BoardTopError(f"clock_mhz={fout_mhz:g}: an ECP5 PLL output must be in [3.125, 400] MHz")
    best = None
    for ci in range(1, 129):
        pfd = fin_mhz / ci
        if not 3.125 <= pfd <= 400:
            continue
        for fb in range(1, 81):
            out = pfd * fb
            if not 3.125 <= out <= 400:
                continue
            for od in range(1, 129):
                vco = out * od
                if 400 <= vco <= 800:
                    cand = PllConfig(ci, fb, od, fin_mhz, out, vco)
                    if best is None or abs(out - fout_mhz) < abs(best.fout_mhz - fout_mhz):
                        best = cand
                    break
    if best is None:
        raise BoardTopError(f"no ECP5 PLL setting makes {fout_mhz:g} MHz from {fin_mhz:g} MHz")
    return best


def _ecp5_pll(m: Module, clk_in, cfg: PllConfig, clk_out, locked) -> None:
    m.submodules.pll = Instance(
        "EHXPLLL",
        a_FREQUENCY_PIN_CLKI=f"{cfg.fin_mhz:g}", a_FREQUENCY_PIN_CLKOP=f"{cfg.fout_mhz:g}",
        a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
        p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
        p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
        p_CLKI_DIV=cfg.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=cfg.clkop_div,
        p_CLKOP_CPHASE=cfg.clkop_div - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=cfg.clkfb_div,
        i_RST=0, i_STDBY=0, i_CLKI=clk_in, o_CLKOP=clk_out, i_CLKFB=clk_out,
        i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0,
        i_ENCLKOP=0, o_LOCK=locked)


# ------------------------------------------------------------------------------------------ board top

class BoardTop(wiring.Component):
    """``AccelTop(accel_params, own_clock=False)`` (or ``core``, any component with the same
    ports) + ``AxiRam`` holding ``memory_image_words`` (+ ``extra_words`` of zeros), started at
    ``program_offset`` (bytes) by the sequencer.

    ``clock_mhz``: run the design at this clock (ECP5: through a PLL); None: the board's clock.
    With no platform (simulation) the design runs in the ``sync`` domain of the simulator; the
    members ``done``, ``error``, ``idle``, ``running``, ``status``, ``cycles`` show the outcome.
    """

    def __init__(self, accel_params=None, memory_image_words=(), program_offset: int = 0, *,
                 core: wiring.Component | None = None, extra_words: int = 0, clock_mhz: float | None = None,
                 heartbeat_bits: int = 24):
        if core is None:
            from accel.hdl.top import AccelTop
            core = AccelTop(accel_params, own_clock=False)
        words = [int(w) for w in memory_image_words]
        if not words and not extra_words:
            raise BoardTopError("BoardTop: the memory image is empty; pass the compiled image's words")
        if not 0 <= program_offset < 8 * (len(words) + extra_words) or program_offset % 8:
            raise BoardTopError(f"BoardTop: program_offset={program_offset!r} must be a multiple of 8 inside the "
                                f"image ({8 * (len(words) + extra_words)} bytes)")
        self.core = core
        self.program_offset = program_offset
        self.clock_mhz = clock_mhz
        self.heartbeat_bits = heartbeat_bits
        data_bits = len(_port(core, "m_axi_gmem", "rdata"))
        self.ram = AxiRam(words, depth=len(words) + extra_words, data_bits=data_bits,
                          addr_bits=len(_port(core, "m_axi_gmem", "araddr")))
        self.pll: PllConfig | None = None
        self.led_map: dict[int, str] = {}      # LED index -> what it shows (filled on elaboration)
        super().__init__({"done": Out(1), "error": Out(1), "idle": Out(1), "running": Out(1),
                          "status": Out(32), "cycles": Out(64), "bus_error": Out(1)})

    # -- clocking
    def _clock(self, m: Module, platform) -> None:
        if platform is None or self.clock_mhz is None:
            return      # the simulator's sync domain, or the platform's default clock domain
        clk_hz = platform.default_clk_constraint.frequency
        if abs(clk_hz / 1e6 - self.clock_mhz) < 1e-6:
            return
        family = getattr(platform, "family", None)
        if family != "ecp5":
            raise BoardTopError(f"clock_mhz={self.clock_mhz:g}: this board top derives clocks only on ECP5; "
                                f"{type(platform).__name__} runs at its {clk_hz / 1e6:g} MHz board clock "
                                f"(build at {clk_hz / 1e6:g} MHz)")
        self.pll = cfg = ecp5_pll_config(clk_hz / 1e6, self.clock_mhz)
        clk_io = platform.request(platform.default_clk, dir="-")
        m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_io)
        m.domains.sync = cd = ClockDomain("sync")
        locked = Signal()
        _ecp5_pll(m, clk_buf.i, cfg, cd.clk, locked)   # nextpnr derives the output's constraint from the input's
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")

    def elaborate(self, platform):
        m = Module()
        self._clock(m, platform)
        m.submodules.core = core = self.core
        m.submodules.ram = ram = self.ram
        for n in AXI_MASTER_OUT:
            m.d.comb += getattr(ram, n).eq(_port(core, "m_axi_gmem", n))
        for n in AXI_SLAVE_OUT:
            m.d.comb += _port(core, "m_axi_gmem", n).eq(getattr(ram, n))
        S = lambda n: _port(core, "s_axi_control", n)
        for n in _LITE_SLAVE_OUT:
            S(n)   # present?

        # ---- the start-up sequencer: an AXI4-Lite master
        writes = [(REG.MEM_LO, 0), (REG.MEM_HI, 0), (REG.PROGRAM, self.program_offset), (REG.CTRL, 1)]
        aw_done, w_done = Signal(), Signal()
        ctrl = Signal(32)
        cycles_lo = Signal(32)
        m.d.comb += [S("wstrb").eq(0xF), S("bready").eq(0), S("rready").eq(0)]
        lite_err = Signal()

        def write_state(i, addr, value, nxt):
            with m.State(f"WRITE_{i}"):
                m.d.comb += [S("awaddr").eq(addr), S("wdata").eq(value), S("awvalid").eq(~aw_done),
                             S("wvalid").eq(~w_done), S("bready").eq(aw_done & w_done)]
                with m.If(S("awvalid") & S("awready")):
                    m.d.sync += aw_done.eq(1)
                with m.If(S("wvalid") & S("wready")):
                    m.d.sync += w_done.eq(1)
                with m.If(aw_done & w_done & S("bvalid")):
                    m.d.sync += [aw_done.eq(0), w_done.eq(0), lite_err.eq(lite_err | (S("bresp") != 0))]
                    m.next = nxt

        def read_state(name, addr, then):
            with m.State(name):
                m.d.comb += [S("araddr").eq(addr), S("arvalid").eq(~aw_done), S("rready").eq(aw_done)]
                with m.If(S("arvalid") & S("arready")):
                    m.d.sync += aw_done.eq(1)        # reused as "address sent"
                with m.If(aw_done & S("rvalid")):
                    m.d.sync += [aw_done.eq(0), lite_err.eq(lite_err | (S("rresp") != 0))]
                    then(S("rdata"))

        with m.FSM():
            for i, (addr, value) in enumerate(writes):
                write_state(i, addr, value, f"WRITE_{i + 1}" if i + 1 < len(writes) else "POLL")

            def polled(rdata):
                m.d.sync += ctrl.eq(rdata)
                with m.If(rdata[1]):
                    m.next = "STATUS"

            read_state("POLL", REG.CTRL, polled)

            def got_status(rdata):
                m.d.sync += self.status.eq(rdata)
                m.next = "CYCLES_LO"

            read_state("STATUS", REG.STATUS, got_status)

            def got_lo(rdata):
                m.d.sync += cycles_lo.eq(rdata)
                m.next = "CYCLES_HI"

            read_state("CYCLES_LO", REG.CYCLES_LO, got_lo)

            def got_hi(rdata):
                m.d.sync += [self.cycles.eq(Cat(cycles_lo, rdata)), self.done.eq(1)]
                m.next = "IDLE_POLL"

            read_state("CYCLES_HI", REG.CYCLES_HI, got_hi)

            def idle_poll(rdata):       # keep the idle LED live after the run (ap_done is latched)
                m.d.sync += ctrl.eq(rdata)

            read_state("IDLE_POLL", REG.CTRL, idle_poll)

        started = Signal()
        with m.If(S("awvalid") & S("awready") & (S("awaddr") == REG.CTRL)):
            m.d.sync += started.eq(1)
        m.d.comb += [self.idle.eq(ctrl[2]), self.running.eq(started & ~self.done),
                     self.error.eq(lite_err | (self.done & (self.status != 0))), self.bus_error.eq(lite_err)]

        # ---- LEDs
        if platform is not None:
            beat = Signal(self.heartbeat_bits)
            m.d.sync += beat.eq(beat + 1)
            leds = []
            for i in range(16):
                try:
                    leds.append(platform.request("led", i, dir="-"))
                except ResourceError:
                    break
            shown = [self.done, self.error, self.idle, self.running]
            for i, pin in enumerate(leds):
                m.submodules[f"led_buf{i}"] = led = io.Buffer("o", pin)
                if i == len(leds) - 1 and len(leds) > len(shown):
                    m.d.comb += led.o.eq(beat[-1])
                    self.led_map[i] = "heartbeat"
                elif i < len(shown):
                    m.d.comb += led.o.eq(shown[i])
                    self.led_map[i] = LED_ORDER[i]
        return m


# ------------------------------------------------------------------------------------------ stand-in

class CopyCore(wiring.Component):
    """A stand-in for AccelTop (same ports and registers; docs/top_interface.md) that copies
    words inside the memory, for exercising board tops and the bitstream flow without the kernels.

    Its program at ``MEM + PROGRAM`` is one descriptor word: bits 0-31 the number of words N, bits
    32-63 the destination's byte offset from MEM; the N source words follow the descriptor. It
    copies them in bursts of up to 16 beats (read a burst into a 16-word buffer, write it out).
    STATUS: 0 ok, 3 an AXI error response (as AccelTop's STATUS.AXI_RESP). CYCLES: cycles from
    start to done; FETCHES: read bursts issued.
    """

    STATUS_AXI_RESP = 3

    def __init__(self):
        members = {"interrupt": Out(1)}
        lite = {"awaddr": 12, "wdata": 32, "wstrb": 4, "araddr": 12, "rdata": 32, "bresp": 2, "rresp": 2}
        for n in _LITE_MASTER_OUT:
            members[f"s_axi_control_{n}"] = In(lite.get(n, 1))
        for n in _LITE_SLAVE_OUT:
            members[f"s_axi_control_{n}"] = Out(lite.get(n, 1))
        from .axi_ram import axi_signal_widths
        w = axi_signal_widths()
        for n in AXI_MASTER_OUT:
            members[f"m_axi_gmem_{n}"] = Out(w[n])
        for n in AXI_SLAVE_OUT:
            members[f"m_axi_gmem_{n}"] = In(w[n])
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        S = lambda n: getattr(self, f"s_axi_control_{n}")
        M = lambda n: getattr(self, f"m_axi_gmem_{n}")

        mem_base, prog_off = Signal(64), Signal(32)
        cycles, status, fetches = Signal(64), Signal(8), Signal(32)
        running, ap_done, start, finish = Signal(), Signal(), Signal(), Signal()
        gie, ier, isr = Signal(), Signal(), Signal()
        m.d.comb += self.interrupt.eq(gie & ier & isr)

        # ---- AXI4-Lite registers (address and data accepted together, like AccelTop)
        both = S("awvalid") & S("wvalid") & ~S("bvalid")
        m.d.comb += [S("awready").eq(both), S("wready").eq(both), S("bresp").eq(0)]
        with m.If(S("bvalid") & S("bready")):
            m.d.sync += S("bvalid").eq(0)
        with m.If(both):
            m.d.sync += S("bvalid").eq(1)
            wd = S("wdata")
            with m.Switch(S("awaddr")):
                with m.Case(REG.CTRL):
                    m.d.comb += start.eq(wd[0] & ~running)
                with m.Case(REG.GIE):
                    m.d.sync += gie.eq(wd[0])
                with m.Case(REG.IER):
                    m.d.sync += ier.eq(wd[0])
                with m.Case(REG.ISR):
                    m.d.sync += isr.eq(isr & ~wd[0])
                with m.Case(REG.MEM_LO):
                    m.d.sync += mem_base[:32].eq(wd)
                with m.Case(REG.MEM_HI):
                    m.d.sync += mem_base[32:].eq(wd)
                with m.Case(REG.PROGRAM):
                    m.d.sync += prog_off.eq(wd)
        m.d.comb += [S("arready").eq(~S("rvalid")), S("rresp").eq(0)]
        with m.If(S("rvalid") & S("rready")):
            m.d.sync += S("rvalid").eq(0)
        with m.If(S("arvalid") & ~S("rvalid")):
            m.d.sync += S("rvalid").eq(1)
            regs = {REG.GIE: gie, REG.IER: ier, REG.ISR: isr, REG.MEM_LO: mem_base[:32], REG.MEM_HI: mem_base[32:],
                    REG.PROGRAM: prog_off, REG.CYCLES_LO: cycles[:32], REG.CYCLES_HI: cycles[32:],
                    REG.STATUS: status, REG.FETCHES: fetches}
            with m.Switch(S("araddr")):
                with m.Case(REG.CTRL):
                    m.d.sync += [S("rdata").eq(Cat(Const(0, 1), ap_done, ~running, ~running)), ap_done.eq(0)]
                for addr, sig in regs.items():
                    with m.Case(addr):
                        m.d.sync += S("rdata").eq(sig)
                with m.Default():
                    m.d.sync += S("rdata").eq(0)
        with m.If(finish):
            m.d.sync += [ap_done.eq(1), isr.eq(1), running.eq(0)]
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)

        # ---- the copy engine
        m.submodules.buf = buf = Memory(shape=64, depth=16, init=[])
        b_wr = buf.write_port()
        b_rd = buf.read_port(domain="comb")
        src, dst = Signal(64), Signal(64)
        left = Signal(32)
        chunk = Signal(5)
        idx = Signal(5)
        m.d.comb += [M("arsize").eq(3), M("arburst").eq(1), M("awsize").eq(3), M("awburst").eq(1),
                     M("wstrb").eq(0xFF), M("rready").eq(0), M("bready").eq(0)]
        m.d.comb += [b_rd.addr.eq(idx), M("wdata").eq(b_rd.data), M("wlast").eq(idx == chunk - 1),
                     b_wr.addr.eq(idx), b_wr.data.eq(M("rdata"))]

        def fail():
            m.d.sync += status.eq(self.STATUS_AXI_RESP)
            m.d.comb += finish.eq(1)
            m.next = "IDLE"

        with m.FSM():
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [running.eq(1), cycles.eq(0), status.eq(0), fetches.eq(0), isr.eq(0),
                                 src.eq(mem_base + prog_off)]
                    m.next = "DESC_AR"
            with m.State("DESC_AR"):
                m.d.comb += [M("arvalid").eq(1), M("araddr").eq(src), M("arlen").eq(0)]
                with m.If(M("arready")):
                    m.d.sync += fetches.eq(fetches + 1)
                    m.next = "DESC_R"
            with m.State("DESC_R"):
                m.d.comb += M("rready").eq(1)
                with m.If(M("rvalid")):
                    with m.If(M("rresp") != 0):
                        fail()
                    with m.Else():
                        m.d.sync += [left.eq(M("rdata")[:32]), dst.eq(mem_base + M("rdata")[32:]), src.eq(src + 8)]
                        m.next = "NEXT"
            with m.State("NEXT"):
                with m.If(left == 0):
                    m.d.comb += finish.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += [chunk.eq(Mux(left > 16, 16, left)), idx.eq(0)]
                    m.next = "AR"
            with m.State("AR"):
                m.d.comb += [M("arvalid").eq(1), M("araddr").eq(src), M("arlen").eq(chunk - 1)]
                with m.If(M("arready")):
                    m.d.sync += fetches.eq(fetches + 1)
                    m.next = "R"
            with m.State("R"):
                m.d.comb += [M("rready").eq(1), b_wr.en.eq(M("rvalid"))]
                with m.If(M("rvalid")):
                    with m.If(M("rresp") != 0):
                        fail()
                    with m.Else():
                        m.d.sync += idx.eq(idx + 1)
                        with m.If(M("rlast")):
                            m.d.sync += idx.eq(0)
                            m.next = "AW"
            with m.State("AW"):
                m.d.comb += [M("awvalid").eq(1), M("awaddr").eq(dst), M("awlen").eq(chunk - 1)]
                with m.If(M("awready")):
                    m.next = "W"
            with m.State("W"):
                m.d.comb += M("wvalid").eq(1)
                with m.If(M("wready")):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == chunk - 1):
                        m.next = "B"
            with m.State("B"):
                m.d.comb += M("bready").eq(1)
                with m.If(M("bvalid")):
                    with m.If(M("bresp") != 0):
                        fail()
                    with m.Else():
                        m.d.sync += [src.eq(src + 8 * chunk), dst.eq(dst + 8 * chunk), left.eq(left - chunk)]
                        m.next = "NEXT"
        return m
