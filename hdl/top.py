"""The accelerator top: control registers, controller, memory port, kernels and block units.

::

    s_axi_control --> registers (start, done, mem base, program offset, cycles, status)
                          |
                      controller: fetch 64-byte instructions (accel.hdl.program), run them
                          |                                   |
        READ: sequencer -> pieces (addr, words) ------> AXI4 AR/R (m_axi_gmem) -> word FIFO
              sequencer -> beat descriptors ----------> packer -> kernel input ports
        WRITE/WAIT: kernel outputs -> writer --------> AXI4 AW/W/B (m_axi_gmem)
                                              \\-----> expert token queues (gate results)

One generated design runs any program whose shapes fit its parameters: the kernels' buffers
(``LinearParams.max_d_in`` ...), ``max_experts`` queues of ``LinearParams.max_tokens`` entries.
The model compiler (accel.compiler) checks a model against them and refuses with the reason.

Reads are issued in order through one AXI read port: the sequencer turns an instruction into
pieces of whole words (bursts of up to 16 beats, split at 4 KB boundaries), credits keep the word
FIFO from overflowing, so the read channel never blocks; the packer assembles the words into the
payload of the port each beat is for. Writes take one output beat at a time, one word per AXI
write (``awlen`` 0), and count acknowledgements for WAIT. Ports and registers: docs/top_interface.md.

Reset: control state (valid flags, counters, pointers, state machines, accumulators that start
from their reset value) is reset; datapath registers (beat words, payloads, products, sums,
pipeline bookkeeping) are ``reset_less``: they count only under a valid flag, and power up at 0
from the bitstream. On the ECP5 the reset was one net to 18,189 flip-flops (4.4% of the routed
wires), 3,538 now (docs/benchmarks.md, "Datapath registers without reset"). A run cut short by a
reset leaves them full: tests/test_model_sim.py resets runs midway and checks the next.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from amaranth import Cat, ClockDomain, Const, Module, Mux, Signal, unsigned
from amaranth.back import verilog
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accel.models.errors import AccelError

from .attention import AttentionKernel, AttentionParams
from .gate import GateParams, GateUnit
from .layernorm import LayerNormParams, LayerNormUnit
from .linear import LinearKernel, LinearParams
from .program import INSTR_BYTES, INSTR_WORDS, LIST, MODE, OP, PORT, WMODE, instr_layout
from .residual import ResidualParams, ResidualUnit

__all__ = ["TopParams", "TopParamError", "AccelTop", "generate_verilog", "REG", "STATUS"]

MAX_BURST = 16


class TopParamError(AccelError, ValueError):
    """Top-level parameters that the memory datapath cannot serve."""


class REG:
    CTRL, GIE, IER, ISR, MEM_LO, MEM_HI, PROGRAM = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18
    CYCLES_LO, CYCLES_HI, STATUS, FETCHES, PC, TAKEN = 0x20, 0x24, 0x28, 0x2C, 0x30, 0x34


class STATUS:
    OK, BAD_OPCODE, ATTENTION, AXI_RESP, QUEUE_FULL = range(5)
    TEXT = {0: "ok", 1: "unknown instruction opcode", 2: "attention kernel framing error",
            3: "memory port returned an error response", 4: "an expert token queue overflowed"}


@dataclass(frozen=True)
class TopParams:
    """The whole accelerator: one instance of each kernel and unit, and the memory datapath."""
    linear: LinearParams = field(default_factory=lambda: LinearParams(t_in=8, t_out=8, n_lanes=2))
    attention: AttentionParams = field(default_factory=AttentionParams)
    layernorm: LayerNormParams = field(default_factory=lambda: LayerNormParams(lanes=8, max_channels=256))
    residual: ResidualParams = field(default_factory=lambda: ResidualParams(lanes=8))
    gate: GateParams = field(default_factory=GateParams)
    fifo_words: int = 64     # read-data FIFO (credits): at least the longest beat, 2x for streaming

    def __post_init__(self):
        checks = [
            ("linear.t_in", self.linear.t_in, "a lane's chunk must be whole 64-bit words"),
            ("linear.t_out", self.linear.t_out, "an output tile must be whole 64-bit words"),
            ("attention.t_a", self.attention.t_a, "a head's chunk must be whole 64-bit words"),
            ("layernorm.lanes", self.layernorm.lanes, "a LayerNorm output beat must be whole 64-bit words"),
            ("residual.lanes", self.residual.lanes, "the residual branch beat must be whole 64-bit words"),
        ]
        for name, v, why in checks:
            if v % 8:
                raise TopParamError(f"TopParams: {name}={v!r} is not a multiple of 8 ({why}); pick 8, 16, ...")
        if self.layernorm.lanes != self.residual.lanes:
            raise TopParamError(f"TopParams: layernorm.lanes={self.layernorm.lanes!r} differs from residual.lanes="
                                f"{self.residual.lanes!r}; they share the row beat format, use the same")
        if not self.linear.expert:
            raise TopParamError("TopParams: linear.expert=False; the accelerator runs MoE layers in the linear "
                                "kernel's expert mode, generate it with expert=True")
        if self.gate.max_experts > 255:
            raise TopParamError(f"TopParams: gate.max_experts={self.gate.max_experts!r} exceeds 255")
        if self.fifo_words < 2 * self.max_beat_words or self.fifo_words > 4096:
            raise TopParamError(f"TopParams: fifo_words={self.fifo_words!r} must be in [2 x the longest beat "
                                f"({2 * self.max_beat_words} words), 4096]")

    # beat sizes in 64-bit words, by input port
    @property
    def beat_words(self) -> dict[int, int]:
        from .attention import attention_layouts
        from .layernorm import config_layout
        from .linear import stream_layouts
        lin = stream_layouts(self.linear)
        att = attention_layouts(self.attention)
        L = self.layernorm.lanes
        w = lambda bits: -(-bits // 64)
        return {
            PORT.LIN_P: w(lin["p"].size), PORT.LIN_W: w(self.linear.t_in * self.linear.t_out * 8),
            PORT.LIN_X: self.linear.n_lanes * self.linear.t_in // 8, PORT.LIN_G: 1,
            PORT.ATT_CFG: w(att["cfg"].size), PORT.ATT_Q: self.attention.heads * self.attention.t_a // 8,
            PORT.ATT_K: self.attention.heads * self.attention.t_a // 8,
            PORT.ATT_V: self.attention.heads * self.attention.t_a // 8,
            PORT.LN_C: w(config_layout(self.layernorm).size), PORT.LN_X: L * 16 // 64,
            PORT.RES_C: 1, PORT.RES_I: L * 24 // 64,
            PORT.GATE_C: w(self.gate_layouts["c"].size), PORT.GATE_L: w(self.gate.max_experts * 16),
            PORT.INSTR: INSTR_WORDS,
        }

    @property
    def gate_layouts(self) -> dict:
        from .gate import config_layout, logits_layout, result_layout
        return {"c": config_layout(self.gate), "l": logits_layout(self.gate), "r": result_layout(self.gate)}

    @property
    def max_beat_words(self) -> int:
        return max(self.beat_words.values())

    @property
    def queue_depth(self) -> int:
        """Entries per expert token queue: the linear kernel's token capacity."""
        return self.linear.max_tokens

    def to_json(self) -> dict:
        from dataclasses import asdict
        return {"linear": asdict(self.linear), "attention": asdict(self.attention),
                "layernorm": asdict(self.layernorm), "residual": asdict(self.residual),
                "gate": asdict(self.gate), "fifo_words": self.fifo_words}


def _axi_master_members() -> dict:
    p = "m_axi_gmem_"
    return {
        p + "awvalid": Out(1), p + "awready": In(1), p + "awaddr": Out(64), p + "awlen": Out(8),
        p + "awsize": Out(3), p + "awburst": Out(2),
        p + "wvalid": Out(1), p + "wready": In(1), p + "wdata": Out(64), p + "wstrb": Out(8), p + "wlast": Out(1),
        p + "bvalid": In(1), p + "bready": Out(1), p + "bresp": In(2),
        p + "arvalid": Out(1), p + "arready": In(1), p + "araddr": Out(64), p + "arlen": Out(8),
        p + "arsize": Out(3), p + "arburst": Out(2),
        p + "rvalid": In(1), p + "rready": Out(1), p + "rdata": In(64), p + "rresp": In(2), p + "rlast": In(1),
    }


def _axi_lite_members() -> dict:
    p = "s_axi_control_"
    return {
        p + "awvalid": In(1), p + "awready": Out(1), p + "awaddr": In(12),
        p + "wvalid": In(1), p + "wready": Out(1), p + "wdata": In(32), p + "wstrb": In(4),
        p + "bvalid": Out(1), p + "bready": In(1), p + "bresp": Out(2),
        p + "arvalid": In(1), p + "arready": Out(1), p + "araddr": In(12),
        p + "rvalid": Out(1), p + "rready": In(1), p + "rdata": Out(32), p + "rresp": Out(2),
    }


def _clog2(n: int) -> int:
    return max(1, (n - 1).bit_length())


class AccelTop(wiring.Component):
    """The accelerator (see the module docstring). ``own_clock``: the Verilog module has
    ``ap_clk``/``ap_rst_n`` (Vitis RTL-kernel convention); otherwise it runs in the enclosing
    ``sync`` domain (board tops)."""

    def __init__(self, params: TopParams | None = None, *, own_clock: bool = True):
        params = params if params is not None else TopParams()
        if not isinstance(params, TopParams):
            raise TopParamError(f"AccelTop: params={params!r} is not a TopParams")
        self._params = params
        self._own_clock = bool(own_clock)
        members = {}
        if own_clock:
            members.update({"ap_clk": In(1), "ap_rst_n": In(1)})
        members.update(_axi_lite_members())
        members.update(_axi_master_members())
        members["interrupt"] = Out(1)
        super().__init__(members)

    params = property(lambda self: self._params)
    own_clock = property(lambda self: self._own_clock)

    def _g(self, name):
        return getattr(self, name)

    def elaborate(self, platform):
        m = Module()
        P = self._params
        if self._own_clock:
            m.domains.sync = cd = ClockDomain("sync")
            m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]
        g = self._g
        M = lambda s: g("m_axi_gmem_" + s)
        S = lambda s: g("s_axi_control_" + s)

        lp, NL, TI, TO = P.linear, P.linear.n_lanes, P.linear.t_in, P.linear.t_out
        TKB = lp.tok_bits
        E = P.gate.max_experts
        EB = _clog2(E)
        QD = P.queue_depth
        MAXW = P.max_beat_words

        m.submodules.lin = lin = LinearKernel(lp)
        # the programs never change the attention kernel's out_shift while its outputs are in
        # flight: every attention op ends with a WAIT for all its beats, and the head groups of one
        # op share one out_shift (accel/compiler.py). So the full-width output stage reads the
        # configuration register; the netlist with the 6-bit shift tag (the kernel's default) did
        # not route at three placement seeds where this one routes (docs/benchmarks.md)
        m.submodules.att = att = AttentionKernel(P.attention, out_shift_in_flight=False)
        m.submodules.ln = ln = LayerNormUnit(P.layernorm)
        m.submodules.res = res = ResidualUnit(P.residual)
        m.submodules.gate = gate = GateUnit(P.gate)

        # ------------------------------------------------------------------ registers
        pc = Signal(32)                      # offset of the next instruction
        taken = Signal(24)                   # output beats taken by the writer since arming
        mem_base = Signal(64)
        prog_off = Signal(32)
        cycles = Signal(64)
        status = Signal(8)
        fetches = Signal(32)
        running = Signal()
        ap_done = Signal()
        gie, ier, isr = Signal(), Signal(), Signal()
        start = Signal()        # one-cycle pulse
        finish = Signal()       # one-cycle pulse from the controller
        m.d.comb += self.interrupt.eq(gie & ier & isr)

        m.d.comb += [S("awready").eq(S("awvalid") & S("wvalid") & ~S("bvalid")),
                     S("wready").eq(S("awvalid") & S("wvalid") & ~S("bvalid")), S("bresp").eq(0)]
        with m.If(S("bvalid") & S("bready")):
            m.d.sync += S("bvalid").eq(0)
        with m.If(S("awvalid") & S("wvalid") & ~S("bvalid")):
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
            with m.Switch(S("araddr")):
                with m.Case(REG.CTRL):
                    m.d.sync += S("rdata").eq(Cat(Const(0, 1), ap_done, ~running, ~running))
                    m.d.sync += ap_done.eq(0)
                with m.Case(REG.GIE):
                    m.d.sync += S("rdata").eq(gie)
                with m.Case(REG.IER):
                    m.d.sync += S("rdata").eq(ier)
                with m.Case(REG.ISR):
                    m.d.sync += S("rdata").eq(isr)
                with m.Case(REG.MEM_LO):
                    m.d.sync += S("rdata").eq(mem_base[:32])
                with m.Case(REG.MEM_HI):
                    m.d.sync += S("rdata").eq(mem_base[32:])
                with m.Case(REG.PROGRAM):
                    m.d.sync += S("rdata").eq(prog_off)
                with m.Case(REG.CYCLES_LO):
                    m.d.sync += S("rdata").eq(cycles[:32])
                with m.Case(REG.CYCLES_HI):
                    m.d.sync += S("rdata").eq(cycles[32:])
                with m.Case(REG.STATUS):
                    m.d.sync += S("rdata").eq(status)
                with m.Case(REG.FETCHES):
                    m.d.sync += S("rdata").eq(fetches)
                with m.Case(REG.PC):
                    m.d.sync += S("rdata").eq(pc)
                with m.Case(REG.TAKEN):
                    m.d.sync += S("rdata").eq(taken)
                with m.Default():
                    m.d.sync += S("rdata").eq(0)
        with m.If(finish):
            m.d.sync += [ap_done.eq(1), isr.eq(1)]

        # ------------------------------------------------------------------ expert token queues
        qentry = data.StructLayout({"tok": 16, "gate": 16})
        m.submodules.queue = qmem = Memory(shape=qentry, depth=E * QD, init=[])
        q_wr = qmem.write_port()
        q_rd = qmem.read_port(domain="sync")
        counts = [Signal(range(QD + 1), name=f"count{e}") for e in range(E)]
        counts_a = data.ArrayLayout(unsigned(len(counts[0])), E)
        counts_v = Signal(counts_a)
        m.d.comb += [counts_v[e].eq(counts[e]) for e in range(E)]

        # ------------------------------------------------------------------ read datapath
        piece_l = data.StructLayout({"addr": 32, "n": 7})
        meta_l = data.StructLayout({"port": 4, "n": 7, "first": 1, "last": 1, "tile_last": 1, "lanes": NL,
                                    "tok": data.ArrayLayout(unsigned(TKB), NL),
                                    "gate": data.ArrayLayout(unsigned(16), NL)})
        m.submodules.pieces = pfifo = SyncFIFOBuffered(width=piece_l.size, depth=8)
        # one descriptor per beat in flight: as deep as the word FIFO, or latency starves the port
        m.submodules.metas = mfifo = SyncFIFOBuffered(width=meta_l.size, depth=P.fifo_words)
        m.submodules.words = dfifo = SyncFIFOBuffered(width=64, depth=P.fifo_words)
        piece_w = Signal(piece_l)
        meta_w = Signal(meta_l)
        push = Signal()       # sequencer pushes a piece
        push_meta = Signal()  # ... and a beat descriptor
        can_push = pfifo.w_rdy & mfifo.w_rdy
        m.d.comb += [pfifo.w_data.eq(piece_w), pfifo.w_en.eq(push),
                     mfifo.w_data.eq(meta_w), mfifo.w_en.eq(push_meta)]

        # AR issue
        cur_addr = Signal(32)
        rem = Signal(7)
        credit = Signal(range(P.fifo_words + 1), init=P.fifo_words)
        piece_r = Signal(piece_l)
        m.d.comb += piece_r.eq(pfifo.r_data)
        # the next burst's length (up to MAX_BURST words, not across a 4 KiB boundary), whether it
        # is the piece's last and whether a piece is in progress: registers, computed from the
        # values ``rem`` and ``cur_addr`` take (the issue decision is then a compare and an AND)

        def burst_of(rem_v, addr_v):
            to_4k = (4096 - addr_v[:12]) >> 3
            b16 = Mux(rem_v < MAX_BURST, rem_v, MAX_BURST)
            return Mux(to_4k < b16, to_4k, b16)[:6]
        blen = Signal(6)
        last_burst = Signal()
        busy = Signal()
        # AR register slice: a burst is staged (address summed with the base, length, credit
        # reserved) a cycle before it is offered, so the slave's ``arready`` reaches only the
        # stage's valid bit, and the sum and the piece bookkeeping stay out of the AXI handshake
        ar_v, ar_addr, ar_len = Signal(), Signal(len(M("araddr"))), Signal(6)
        ar_fire = Signal()
        stage = Signal()      # the next burst of the current piece enters the slice
        m.d.comb += [
            M("arvalid").eq(ar_v), M("araddr").eq(ar_addr), M("arlen").eq(ar_len - 1),
            M("arsize").eq(3), M("arburst").eq(1),
            ar_fire.eq(ar_v & M("arready")),
            stage.eq(busy & (credit >= blen) & (~ar_v | M("arready"))),
        ]
        with m.If(stage):
            m.d.sync += [ar_v.eq(1), ar_addr.eq(mem_base + cur_addr), ar_len.eq(blen)]
        with m.Elif(ar_fire):
            m.d.sync += ar_v.eq(0)
        # the next piece loads in the cycle the current one's last burst is staged
        take_piece = Signal()
        m.d.comb += [take_piece.eq(pfifo.r_rdy & (~busy | (stage & last_burst))),
                     pfifo.r_en.eq(take_piece)]

        def load(rem_v, addr_v):
            nb = Signal(6)
            m.d.comb += nb.eq(burst_of(rem_v, addr_v))
            m.d.sync += [cur_addr.eq(addr_v), rem.eq(rem_v), blen.eq(nb), last_burst.eq(rem_v == nb),
                         busy.eq(rem_v != 0)]
        with m.If(take_piece):
            load(piece_r.n, piece_r.addr)
        with m.Elif(stage):
            load(rem - blen, cur_addr + (blen << 3))
        pop_word = Signal()
        m.d.sync += credit.eq(credit - Mux(stage, blen, 0) + pop_word)
        axi_err = Signal()
        m.d.comb += [M("rready").eq(dfifo.w_rdy), dfifo.w_data.eq(M("rdata")), dfifo.w_en.eq(M("rvalid"))]
        m.d.comb += axi_err.eq((M("rvalid") & (M("rresp") != 0)) | (M("bvalid") & (M("bresp") != 0)))

        # packer: gathers a beat's words, then queues the beat in a two-entry register FIFO. A unit's
        # ``ready`` moves only the FIFO's read pointer and count (a few flip-flops): the words sit
        # still in the entry they were written to, and the packer sees a registered "not full".
        # On the ECP5 a unit's ready used to reach the word FIFO's read enable and the clock enable
        # of every packed word, the longest routed path of the design.
        meta_r = Signal(meta_l)
        m.d.comb += meta_r.eq(mfifo.r_data)
        idx = Signal(7)
        buf = [Signal(64, name=f"buf{i}", reset_less=True) for i in range(MAXW)]
        merged = [Signal(64, name=f"merged{i}") for i in range(MAXW)]
        NPORT = PORT.INSTR + 1
        slot_words = [Signal(64 * MAXW, name=f"beat{k}_words", reset_less=True) for k in range(2)]
        slot_meta = [Signal(meta_l, name=f"beat{k}_meta", reset_less=True) for k in range(2)]
        slot_port = [Signal(NPORT, name=f"beat{k}_port") for k in range(2)]   # one-hot, decoded on entry
        b_wp, b_rp = Signal(), Signal()
        b_count = Signal(range(3))
        out_valid = Signal()
        out_words = Signal(64 * MAXW)
        out_meta = Signal(meta_l)
        out_port = Signal(NPORT)
        out_accept = Signal()
        m.d.comb += [out_valid.eq(b_count != 0),
                     out_words.eq(Mux(b_rp, slot_words[1], slot_words[0])),
                     out_meta.eq(Mux(b_rp, slot_meta[1], slot_meta[0])),
                     out_port.eq(Mux(b_rp, slot_port[1], slot_port[0]) & out_valid.replicate(NPORT))]
        word = dfifo.r_data
        for i in range(MAXW):
            m.d.comb += merged[i].eq(Mux(idx == i, word, buf[i]))
        idx_next = Signal(7, init=1)         # idx + 1, kept beside it: the compare needs no adder
        complete = idx_next == meta_r.n
        can_take = mfifo.r_rdy & dfifo.r_rdy & (~complete | (b_count != 2))
        beat_in = Signal()
        m.d.comb += [pop_word.eq(can_take), dfifo.r_en.eq(can_take), mfifo.r_en.eq(can_take & complete),
                     beat_in.eq(can_take & complete)]
        with m.If(can_take):
            m.d.sync += [buf[i].eq(merged[i]) for i in range(MAXW)]
            with m.If(complete):
                m.d.sync += [idx.eq(0), idx_next.eq(1)]
            with m.Else():
                m.d.sync += [idx.eq(idx_next), idx_next.eq(idx_next + 1)]
        # the free entry at the write pointer follows the packer every cycle, and keeps what it
        # holds in the cycle a beat completes (the pointer moves on): its ~600 flip-flops are
        # enabled by the pointer and the count, registers, not by the word FIFO's handshake
        # (words.r_rdy -> beat_in -> their clock enables: 20.5 ns on the ECP5)
        for k in range(2):
            with m.If((b_wp == k) & (b_count != 2)):
                m.d.sync += [slot_words[k].eq(Cat(*merged)), slot_meta[k].eq(meta_r),
                             slot_port[k].eq(Const(1, NPORT) << meta_r.port)]
        m.d.sync += [b_count.eq(b_count + beat_in - out_accept), b_wp.eq(b_wp ^ beat_in), b_rp.eq(b_rp ^ out_accept)]

        # kernel input ports
        port_ready = {}

        def feed(port_id, stream, fill):
            # one register stage in front of every unit: a unit's valid and payload come from
            # flip-flops, so the wires from the beat FIFO's head (the read pointer, the port
            # decode and a 600-bit multiplexer beside the packer) to a unit across the chip end
            # there, not in the unit's handshake and operand logic. On the ECP5 those wires were
            # the longest paths: 8 ns into the attention operands (build s8b), 11 + 10 ns into
            # the attention control (build seed4). The stage loads whenever it is empty or its
            # unit takes its beat.
            nxt = Signal(stream.payload.shape(), name=f"{PORT.NAMES[port_id]}_next")
            held = Signal(stream.payload.shape(), name=f"{PORT.NAMES[port_id]}_held", reset_less=True)
            held_v = Signal(name=f"{PORT.NAMES[port_id]}_valid")
            room = Signal(name=f"{PORT.NAMES[port_id]}_room")
            fill(nxt)
            m.d.comb += [room.eq(~held_v | stream.ready), stream.valid.eq(held_v), stream.payload.eq(held)]
            with m.If(room):
                m.d.sync += [held.eq(nxt), held_v.eq(out_port[port_id])]
            port_ready[port_id] = room

        def raw(p):
            m.d.comb += p.as_value().eq(out_words[:len(p.as_value())])

        def framed(nbits):
            def f(p):
                m.d.comb += [p.data.as_value().eq(out_words[:nbits]), p.first.eq(out_meta.first),
                             p.last.eq(out_meta.last)]
            return f

        def lin_x(p):
            m.d.comb += [p.data.as_value().eq(out_words[:NL * TI * 8]), p.lanes.eq(out_meta.lanes),
                         p.tok.as_value().eq(out_meta.tok.as_value()), p.gate.as_value().eq(out_meta.gate.as_value()),
                         p.first.eq(out_meta.first), p.last.eq(out_meta.last), p.tile_last.eq(out_meta.tile_last)]

        def rows(nbits):
            def f(p):
                m.d.comb += [p.as_value()[:nbits].eq(out_words[:nbits]), p.last.eq(out_meta.last)]
            return f

        HT = P.attention.heads * P.attention.t_a * 8
        L = P.layernorm.lanes
        feed(PORT.LIN_P, lin.p_i, raw)
        feed(PORT.LIN_W, lin.w_i, framed(TI * TO * 8))
        feed(PORT.LIN_X, lin.x_i, lin_x)
        feed(PORT.LIN_G, lin.g_i, raw)
        feed(PORT.ATT_CFG, att.cfg_i, raw)
        feed(PORT.ATT_Q, att.q_i, framed(HT))
        feed(PORT.ATT_K, att.k_i, framed(HT))
        feed(PORT.ATT_V, att.v_i, framed(HT))
        feed(PORT.LN_C, ln.c_i, raw)
        feed(PORT.LN_X, ln.x_i, rows(L * 16))
        feed(PORT.RES_C, res.c_i, raw)
        feed(PORT.RES_I, res.i_i, rows(L * 24))
        feed(PORT.GATE_C, gate.c_i, raw)
        feed(PORT.GATE_L, gate.l_i, rows(E * 16))
        ins_arrived = Signal()
        ins_ready = Signal()
        m.d.comb += ins_arrived.eq(out_port[PORT.INSTR] & ins_ready)
        port_ready[PORT.INSTR] = ins_ready
        # one port is selected at a time: an OR of (selected & ready), not a priority chain of 15
        m.d.comb += out_accept.eq(Cat(*[out_port[p] & r for p, r in sorted(port_ready.items())]).any())

        # ------------------------------------------------------------------ sequencer
        ins = Signal(instr_layout)          # the instruction being executed
        seq_go = Signal()                   # controller: start ``ins`` (READ)
        fetch_go = Signal()                 # controller: fetch the instruction at ``pc``
        seq_busy = Signal()
        # ROWS / RAW counters
        r_cnt, c_cnt, s_cnt = Signal(16), Signal(16), Signal(5)
        j_cnt, f_cnt = Signal(24), Signal(16)
        phase_b = Signal()
        ra, ca, pa, rb, cb = Signal(32), Signal(32), Signal(32), Signal(32), Signal(32)
        n_rows = Signal(16)
        # the instruction's counts minus one, registered when it starts (17 bits: a count of 0
        # gives a value no 16-bit counter reaches, as the subtraction in place did), so the
        # end-of-loop compares are plain equalities
        chunks_m1, frame_m1, na_m1, rows_m1, groups_m1 = (Signal(17, name=n) for n in
                                                           ("chunks_m1", "frame_m1", "na_m1", "rows_m1", "groups_m1"))
        row_beat_words = Signal(7)          # a ROWS beat's words, na * wa + wb, also set at the start
        # LIN counters
        t_cnt, k_cnt, g_cnt, l_cnt = Signal(16), Signal(16), Signal(16), Signal(range(NL + 1))
        pc_addr, wd_addr, koff = Signal(32), Signal(32), Signal(32)
        n_groups = Signal(16)
        lane_addr = [Signal(32, name=f"lane_addr{l}") for l in range(NL)]
        lane_tok = Signal(data.ArrayLayout(unsigned(TKB), NL))
        lane_gate = Signal(data.ArrayLayout(unsigned(16), NL))
        lane_valid = Signal(NL)
        ld_i = Signal(range(NL + 2))
        cap_v, cap_valid = Signal(), Signal()            # LIN_LOAD: a lane's row captured
        cap_lane = Signal(range(NL))
        cap_row, cap_tok, cap_gate = Signal(16), Signal(TKB), Signal(16)

        with m.FSM(name="seq"):
            with m.State("IDLE"):
                # (in every state the piece and descriptor are driven whether or not they are
                # pushed: only the push waits for room, so the FIFOs' data does not)
                m.d.comb += [piece_w.addr.eq(pc), piece_w.n.eq(INSTR_WORDS),
                             meta_w.port.eq(PORT.INSTR), meta_w.n.eq(INSTR_WORDS)]
                with m.If(fetch_go):
                    m.d.comb += [push.eq(1), push_meta.eq(1)]
                with m.Elif(seq_go):
                    nr = Mux(ins.count_rows, counts_v[ins.expert[:EB]], ins.n_rows)
                    m.d.sync += [n_rows.eq(nr), r_cnt.eq(0), c_cnt.eq(0), s_cnt.eq(0), j_cnt.eq(0), f_cnt.eq(0),
                                 phase_b.eq(0), ra.eq(ins.base_a), ca.eq(ins.base_a), pa.eq(ins.base_a),
                                 rb.eq(ins.base_b), cb.eq(ins.base_b),
                                 t_cnt.eq(0), pc_addr.eq(ins.base_c), wd_addr.eq(ins.base_d),
                                 n_groups.eq((nr + NL - 1) // NL),
                                 chunks_m1.eq(ins.n_chunks - 1), frame_m1.eq(ins.frame - 1), na_m1.eq(ins.na - 1),
                                 rows_m1.eq(nr - 1), groups_m1.eq((nr + NL - 1) // NL - 1),
                                 row_beat_words.eq(ins.na * ins.wa + ins.wb)]
                    with m.Switch(ins.mode):
                        with m.Case(MODE.RAW):
                            m.next = "RAW"
                        with m.Case(MODE.ROWS):
                            m.next = "ROWS"
                        with m.Default():
                            m.next = "LIN_P"
            with m.State("RAW"):
                m.d.comb += seq_busy.eq(1)
                m.d.comb += [piece_w.addr.eq(pa), piece_w.n.eq(ins.wpb),
                             meta_w.port.eq(ins.port), meta_w.n.eq(ins.wpb),
                             meta_w.first.eq(f_cnt == 0), meta_w.last.eq(f_cnt == frame_m1)]
                with m.If(j_cnt == ins.n_beats):
                    m.next = "IDLE"
                with m.Elif(can_push):
                    m.d.comb += [push.eq(1), push_meta.eq(1)]
                    m.d.sync += [j_cnt.eq(j_cnt + 1), pa.eq(pa + (ins.wpb << 3)),
                                 f_cnt.eq(Mux(f_cnt == frame_m1, 0, f_cnt + 1))]
            with m.State("ROWS"):
                m.d.comb += seq_busy.eq(1)
                last_row = r_cnt == rows_m1
                last_chunk = c_cnt == chunks_m1
                m.d.comb += [piece_w.addr.eq(Mux(phase_b, cb, pa)), piece_w.n.eq(Mux(phase_b, ins.wb, ins.wa)),
                             meta_w.port.eq(ins.port), meta_w.n.eq(row_beat_words),
                             meta_w.first.eq(ins.whole & (r_cnt == 0) & (c_cnt == 0)),
                             meta_w.last.eq(Mux(ins.whole, last_row & last_chunk, last_chunk))]
                with m.If((n_rows == 0) | (ins.n_chunks == 0)):
                    m.next = "IDLE"
                with m.Elif(can_push):
                    m.d.comb += push.eq(1)
                    with m.If(~phase_b & (s_cnt == 0)):
                        m.d.comb += push_meta.eq(1)
                    chunk_done = Mux(phase_b, 1, (s_cnt == na_m1) & (ins.wb == 0))
                    with m.If(~phase_b & (s_cnt != na_m1)):
                        m.d.sync += [s_cnt.eq(s_cnt + 1), pa.eq(pa + ins.sstep_a)]
                    with m.Elif(~phase_b & (ins.wb != 0)):
                        m.d.sync += phase_b.eq(1)
                    with m.If(chunk_done):
                        m.d.sync += [s_cnt.eq(0), phase_b.eq(0)]
                        with m.If(~last_chunk):
                            m.d.sync += [c_cnt.eq(c_cnt + 1), ca.eq(ca + ins.cstep_a), pa.eq(ca + ins.cstep_a),
                                         cb.eq(cb + ins.cstep_b)]
                        with m.Else():
                            m.d.sync += [c_cnt.eq(0), r_cnt.eq(r_cnt + 1), ra.eq(ra + ins.stride_a),
                                         ca.eq(ra + ins.stride_a), pa.eq(ra + ins.stride_a),
                                         rb.eq(rb + ins.stride_b), cb.eq(rb + ins.stride_b)]
                            with m.If(last_row):
                                m.next = "IDLE"
            with m.State("LIN_P"):
                m.d.comb += [seq_busy.eq(1), piece_w.addr.eq(pc_addr), piece_w.n.eq(ins.wpb),
                             meta_w.port.eq(PORT.LIN_P), meta_w.n.eq(ins.wpb)]
                with m.If((t_cnt == ins.n_reps) | (n_rows == 0)):
                    m.next = "IDLE"
                with m.Elif(can_push):
                    m.d.comb += [push.eq(1), push_meta.eq(1)]
                    m.d.sync += [pc_addr.eq(pc_addr + (ins.wpb << 3)), k_cnt.eq(0)]
                    m.next = "LIN_W"
            with m.State("LIN_W"):
                m.d.comb += [seq_busy.eq(1), piece_w.addr.eq(wd_addr), piece_w.n.eq(ins.wb),
                             meta_w.port.eq(PORT.LIN_W), meta_w.n.eq(ins.wb),
                             meta_w.first.eq(k_cnt == 0), meta_w.last.eq(k_cnt == chunks_m1)]
                with m.If(can_push):
                    m.d.comb += [push.eq(1), push_meta.eq(1)]
                    m.d.sync += [wd_addr.eq(wd_addr + (ins.wb << 3)), k_cnt.eq(k_cnt + 1)]
                    with m.If(k_cnt == chunks_m1):
                        m.d.sync += [g_cnt.eq(0), ld_i.eq(0)]
                        m.next = "LIN_LOAD"
            with m.State("LIN_LOAD"):
                # lane l of group g is position p = g*NL + l; one lane per cycle, the queue read
                # of lane l issued in cycle l and captured in cycle l + 1
                m.d.comb += seq_busy.eq(1)
                p_issue = Signal(16)
                m.d.comb += p_issue.eq(g_cnt * NL + ld_i)
                m.d.comb += q_rd.addr.eq(ins.expert[:EB] * QD + p_issue)
                p_cap = Signal(16)
                m.d.comb += p_cap.eq(g_cnt * NL + ld_i - 1)
                # cycle l + 1 captures lane l's row, token and gate weight; cycle l + 2 computes its
                # address (the product row * stride on its own cycle: a shorter path on the ECP5)
                m.d.sync += cap_v.eq((ld_i != 0) & (ld_i <= NL))
                with m.If((ld_i != 0) & (ld_i <= NL)):
                    valid = p_cap < n_rows
                    qe = q_rd.data
                    row = Mux(ins.list == LIST.GATHER, qe.tok, p_cap)
                    m.d.sync += [cap_lane.eq(ld_i - 1), cap_row.eq(Mux(valid, row, 0)),
                                 cap_tok.eq(Mux(ins.list == LIST.SCATTER, qe.tok, p_cap)),
                                 cap_gate.eq(Mux(ins.list == LIST.SCATTER, qe.gate, 0)), cap_valid.eq(valid)]
                with m.If(cap_v):
                    for l in range(NL):
                        with m.If(cap_lane == l):
                            m.d.sync += [lane_addr[l].eq(ins.base_a + cap_row * ins.stride_a),
                                         lane_tok[l].eq(cap_tok), lane_gate[l].eq(cap_gate),
                                         lane_valid[l].eq(cap_valid)]
                with m.If(ld_i == NL + 1):
                    m.d.sync += [k_cnt.eq(0), l_cnt.eq(0), koff.eq(0)]
                    m.next = "LIN_X"
                with m.Else():
                    m.d.sync += ld_i.eq(ld_i + 1)
            with m.State("LIN_X"):
                la = Signal(32)
                for l in range(NL):
                    with m.If(l_cnt == l):
                        m.d.comb += la.eq(lane_addr[l])
                m.d.comb += [seq_busy.eq(1), piece_w.addr.eq(la + koff), piece_w.n.eq(ins.wa),
                             meta_w.port.eq(PORT.LIN_X), meta_w.n.eq(ins.wa * NL),
                             meta_w.lanes.eq(lane_valid), meta_w.tok.eq(lane_tok), meta_w.gate.eq(lane_gate),
                             meta_w.first.eq(k_cnt == 0), meta_w.last.eq(k_cnt == chunks_m1),
                             meta_w.tile_last.eq(g_cnt == groups_m1)]
                with m.If(can_push):
                    m.d.comb += push.eq(1)
                    with m.If(l_cnt == 0):
                        m.d.comb += push_meta.eq(1)
                    with m.If(l_cnt != NL - 1):
                        m.d.sync += l_cnt.eq(l_cnt + 1)
                    with m.Else():
                        m.d.sync += [l_cnt.eq(0), k_cnt.eq(k_cnt + 1), koff.eq(koff + (ins.wa << 3))]
                        with m.If(k_cnt == chunks_m1):
                            with m.If(g_cnt == groups_m1):
                                m.d.sync += t_cnt.eq(t_cnt + 1)
                                m.next = "LIN_P"
                            with m.Else():
                                m.d.sync += [g_cnt.eq(g_cnt + 1), ld_i.eq(0)]
                                m.next = "LIN_LOAD"

        # ------------------------------------------------------------------ writer
        wins = Signal(instr_layout)          # the armed WRITE instruction
        arm = Signal()
        outstanding = Signal(16)             # AXI writes not yet acknowledged
        tokcnt = Signal(16)
        qfull = Signal()
        WMAX = max(TO // 4, HT // 64, L * 16 // 64, 1)
        wflat = Signal(64 * WMAX, reset_less=True)
        w_n = Signal(8)                      # words of the latched beat
        w_i = Signal(8)
        w_addr = Signal(32)
        w_head_start = Signal(32)
        w_hw = Signal(8)                     # words per head (ATT)
        w_hi = Signal(8)
        row_ptr, col_ptr = Signal(32), Signal(32)
        aw_done, wd_done = Signal(), Signal()
        g_s = Signal(range(P.gate.max_k + 1))
        g_beat = Signal(P.gate_layouts["r"])
        w_busy = Signal()

        m.d.comb += [M("awsize").eq(3), M("awburst").eq(1), M("awlen").eq(0), M("wlast").eq(1),
                     M("bready").eq(1), M("wstrb").eq(0xFF)]
        aw_fire = M("awvalid") & M("awready")
        b_fire = M("bvalid") & M("bready")
        m.d.sync += outstanding.eq(outstanding + aw_fire - b_fire)

        # Skid buffers in front of the writer for the linear and attention outputs. A beat's address
        # offsets (token * stride, tile or chunk * column step) are computed on the way in, so TAKE
        # only adds them to the base, and the unit's ``ready`` is a register (not the writer's
        # state): on the ECP5 the product and the sum in one cycle, and the ready chain from the
        # writer back through the linear kernel into the packer, were among the longest paths.
        # Two beats each, full throughput. The program arms the writer only after a WAIT, so no
        # beat waits here across a change of ``wins``.
        def offset_slice(src, tok, col, mode, name):
            # the token offset is multiplied in two halves of the token's bits as the beat
            # enters, and the halves and the column offset are summed in the cycle after the
            # beat reaches the main register (``fresh``: not yet summed); a 5 x 24-bit product in
            # LUTs and its sums in one cycle were an 11-level path on the ECP5
            h = max(1, len(tok) // 2)

            def entry(tag):
                return (Signal(name=f"{name}_{tag}valid"),
                        Signal.like(src.payload, name=f"{name}_{tag}pay", reset_less=True),
                        Signal(32, name=f"{name}_{tag}off_lo", reset_less=True),
                        Signal(32, name=f"{name}_{tag}off_hi", reset_less=True),
                        Signal(32, name=f"{name}_{tag}off_col", reset_less=True))
            (valid, pay, off_lo, off_hi, off_col), (s_valid, s_pay, s_off_lo, s_off_hi, s_off_col) = \
                entry(""), entry("skid_")
            take = Signal(name=f"{name}_take")
            fresh = Signal(name=f"{name}_fresh")
            off = Signal(32, name=f"{name}_off")
            m.d.comb += src.ready.eq((wins.mode == mode) & ~s_valid)
            fire = src.valid & src.ready
            incoming = [src.payload, tok[:h] * wins.stride_a, tok[h:] * wins.stride_a, col * wins.cstep_a]
            loaded = Signal(name=f"{name}_loaded")
            with m.If(~valid | (take & ~fresh)):           # the main register is free this cycle
                with m.If(s_valid):
                    m.d.comb += loaded.eq(1)
                    m.d.sync += [valid.eq(1), pay.eq(s_pay), off_lo.eq(s_off_lo), off_hi.eq(s_off_hi),
                                 off_col.eq(s_off_col), s_valid.eq(0)]
                with m.Else():
                    m.d.comb += loaded.eq(fire)
                    m.d.sync += [valid.eq(fire), pay.eq(incoming[0]), off_lo.eq(incoming[1]),
                                 off_hi.eq(incoming[2]), off_col.eq(incoming[3])]
            with m.Elif(fire):                             # held: the new beat waits in the skid
                m.d.sync += [s_valid.eq(1), s_pay.eq(incoming[0]), s_off_lo.eq(incoming[1]),
                             s_off_hi.eq(incoming[2]), s_off_col.eq(incoming[3])]
            m.d.sync += [fresh.eq(loaded), off.eq(off_lo + (off_hi << h) + off_col)]
            return valid & ~fresh, pay, off, take

        ly_valid, ly, ly_off, ly_take = offset_slice(lin.y_o, lin.y_o.payload.tok, lin.y_o.payload.tile,
                                                     WMODE.LIN, "lin_out")
        ao_valid, ao, ao_off, ao_take = offset_slice(att.o_o, att.o_o.payload.tok, att.o_o.payload.chunk,
                                                     WMODE.ATT, "att_out")

        with m.FSM(name="writer"):
            with m.State("IDLE"):
                with m.If(arm):
                    m.next = "TAKE"
            with m.State("TAKE"):
                with m.Switch(wins.mode):
                    with m.Case(WMODE.LIN):
                        y = ly
                        m.d.comb += ly_take.eq(1)
                        with m.If(ly_valid):
                            lo = Cat(*[y.data[c][:8] for c in range(TO)])
                            full = y.data.as_value()
                            m.d.sync += [wflat.eq(Mux(wins.out16, full, lo)),
                                         w_n.eq(Mux(wins.out16, TO // 4, TO // 8)), w_i.eq(0),
                                         w_addr.eq(wins.base_a + ly_off),
                                         w_hw.eq(255), w_hi.eq(0), taken.eq(taken + 1)]
                            m.next = "EMIT"
                    with m.Case(WMODE.ROWS):
                        src = [ln.y_o, res.o_o]
                        for k, s in enumerate(src):
                            with m.If(wins.port == k):
                                nb = len(s.payload.as_value()) - 1
                                m.d.comb += s.ready.eq(1)
                                with m.If(s.valid):
                                    m.d.sync += [wflat.eq(s.payload.as_value()[:nb]), w_n.eq(nb // 64), w_i.eq(0),
                                                 w_addr.eq(row_ptr + col_ptr), w_hw.eq(255), w_hi.eq(0), taken.eq(taken + 1)]
                                    with m.If(s.payload.last):
                                        m.d.sync += [row_ptr.eq(row_ptr + wins.stride_a), col_ptr.eq(0)]
                                    with m.Else():
                                        m.d.sync += col_ptr.eq(col_ptr + (nb // 8))
                                    m.next = "EMIT"
                    with m.Case(WMODE.ATT):
                        o = ao
                        m.d.comb += ao_take.eq(1)
                        with m.If(ao_valid):
                            a0 = wins.base_a + ao_off
                            m.d.sync += [wflat.eq(o.data.as_value()), w_n.eq(wins.na * (P.attention.t_a // 8)),
                                         w_i.eq(0), w_addr.eq(a0), w_head_start.eq(a0), w_hw.eq(P.attention.t_a // 8),
                                         w_hi.eq(0), taken.eq(taken + 1)]
                            m.next = "EMIT"
                    with m.Case(WMODE.GATE):
                        m.d.comb += gate.r_o.ready.eq(1)
                        with m.If(gate.r_o.valid):
                            m.d.sync += [g_beat.eq(gate.r_o.payload), g_s.eq(0), taken.eq(taken + 1)]
                            m.next = "QUEUE"
            with m.State("EMIT"):
                m.d.comb += w_busy.eq(1)
                wsel = Signal(64)
                for i in range(WMAX):
                    with m.If(w_i == i):
                        m.d.comb += wsel.eq(wflat[64 * i:64 * (i + 1)])
                m.d.comb += [M("awvalid").eq(~aw_done), M("awaddr").eq(mem_base + w_addr),
                             M("wvalid").eq(~wd_done), M("wdata").eq(wsel)]
                aw_ok = aw_done | M("awready")
                w_ok = wd_done | M("wready")
                with m.If(aw_ok & w_ok):
                    m.d.sync += [aw_done.eq(0), wd_done.eq(0), w_i.eq(w_i + 1)]
                    with m.If(w_hi == w_hw - 1):
                        m.d.sync += [w_hi.eq(0), w_head_start.eq(w_head_start + wins.sstep_a),
                                     w_addr.eq(w_head_start + wins.sstep_a)]
                    with m.Else():
                        m.d.sync += [w_hi.eq(w_hi + 1), w_addr.eq(w_addr + 8)]
                    with m.If(w_i == w_n - 1):
                        m.next = "TAKE"
                with m.Else():
                    m.d.sync += [aw_done.eq(aw_ok), wd_done.eq(w_ok)]
            with m.State("QUEUE"):
                m.d.comb += w_busy.eq(1)
                e_cur = Signal(EB)
                w_cur = Signal(16)
                for s in range(P.gate.max_k):
                    with m.If(g_s == s):
                        m.d.comb += [e_cur.eq(g_beat.expert[s]), w_cur.eq(g_beat.weight[s])]
                cnt_cur = Signal(range(QD + 1))
                for e in range(E):
                    with m.If(e_cur == e):
                        m.d.comb += cnt_cur.eq(counts[e])
                with m.If(g_s == wins.na):
                    m.d.sync += tokcnt.eq(tokcnt + 1)
                    m.next = "TAKE"
                with m.Elif(cnt_cur == QD):
                    m.d.comb += qfull.eq(1)
                with m.Else():
                    m.d.comb += [q_wr.en.eq(1), q_wr.addr.eq(e_cur * QD + cnt_cur), q_wr.data.tok.eq(tokcnt),
                                 q_wr.data.gate.eq(w_cur)]
                    for e in range(E):
                        with m.If(e_cur == e):
                            m.d.sync += counts[e].eq(counts[e] + 1)
                    m.d.sync += g_s.eq(g_s + 1)
        with m.If(arm):     # (the program arms the writer only after a WAIT: no beat in flight)
            m.d.sync += [taken.eq(0), row_ptr.eq(ins.base_a), col_ptr.eq(0), tokcnt.eq(0)]
            with m.If(ins.mode == WMODE.GATE):
                m.d.sync += [c.eq(0) for c in counts]
        writer_idle = Signal()
        need = Signal(24)     # registered: WAITING starts a cycle after DECODE loaded ``ins``
        m.d.sync += need.eq(Mux(ins.count_rows, counts_v[ins.expert[:EB]] * ins.n_reps, ins.n_beats))
        m.d.comb += writer_idle.eq((taken >= need) & (outstanding == 0) & ~w_busy)

        # ------------------------------------------------------------------ controller
        err = Signal(8)       # registered: the controller sees an error one cycle after it occurs
        with m.If(att.error):
            m.d.sync += err.eq(STATUS.ATTENTION)
        with m.Elif(axi_err):
            m.d.sync += err.eq(STATUS.AXI_RESP)
        with m.Elif(qfull):
            m.d.sync += err.eq(STATUS.QUEUE_FULL)
        with m.Else():
            m.d.sync += err.eq(0)
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                with m.If(start):
                    m.d.sync += [running.eq(1), pc.eq(prog_off), cycles.eq(0), status.eq(0), fetches.eq(0)]
                    m.next = "FETCH"
            with m.State("FETCH"):
                with m.If(err != 0):
                    m.d.sync += status.eq(err)
                    m.next = "DONE"
                with m.Elif(~seq_busy & can_push):
                    m.d.comb += fetch_go.eq(1)
                    m.next = "FETCH_WAIT"
            with m.State("FETCH_WAIT"):
                m.d.comb += ins_ready.eq(1)
                with m.If(err != 0):
                    m.d.sync += status.eq(err)
                    m.next = "DONE"
                with m.Elif(ins_arrived):
                    m.d.sync += [ins.eq(out_words[:instr_layout.size]), pc.eq(pc + INSTR_BYTES)]
                    m.next = "DECODE"
            with m.State("DECODE"):
                with m.Switch(ins.op):
                    with m.Case(OP.END):
                        m.next = "DONE"
                    with m.Case(OP.READ):
                        m.d.comb += seq_go.eq(1)
                        with m.If(ins.fetch):
                            m.d.sync += fetches.eq(fetches + 1)
                        m.next = "FETCH"
                    with m.Case(OP.WRITE):
                        m.d.comb += arm.eq(1)
                        m.d.sync += wins.eq(ins)
                        m.next = "FETCH"
                    with m.Case(OP.WAIT):
                        m.next = "WAITING"
                    with m.Case(OP.SKIP):
                        with m.If(counts_v[ins.expert[:EB]] == 0):
                            m.d.sync += pc.eq(pc + ins.skip * INSTR_BYTES)
                        m.next = "FETCH"
                    with m.Default():
                        m.d.sync += status.eq(STATUS.BAD_OPCODE)
                        m.next = "DONE"
            with m.State("WAITING"):
                with m.If(err != 0):
                    m.d.sync += status.eq(err)
                    m.next = "DONE"
                with m.Elif(writer_idle):
                    m.next = "FETCH"
            with m.State("DONE"):
                m.d.comb += finish.eq(1)
                m.d.sync += running.eq(0)
                m.next = "IDLE"
        return m


def generate_verilog(params: TopParams | None = None, name: str = "accel_top") -> str:
    """Verilog of the whole accelerator as module ``name`` (ports: docs/top_interface.md)."""
    top = AccelTop(params)
    return verilog.convert(top, name=name, emit_src=False)
