"""Reusable linear kernel: y = requant(x @ W^T + bias) [-> GELU table], plus MoE expert mode.

Bit-exact with :class:`accel.models.intops.IntLinear` (dense mode) and with the expert
accumulation of :class:`accel.models.intops.IntMoE` (expert mode).

Structure (output stationary, weights stationary per output tile)::

    p_i (descriptor) --+                 +--------- weight bank 0 / 1 (double buffer) ---------+
    w_i (weight tile) -+-> loader -----> |  T_out x T_in int8 per word, <= max_k words per bank |
                                         +--------------------------+---------------------------+
    x_i (N_L tokens x T_in) -> [A issue] -> [B x regs + weight word] -> [C N_L x T_out dot
        products of length T_in] -> accumulators (N_L x T_out) -> hold (+bias, one group)
        -> drain (one token lane per cycle) -> requant (per channel, dyadic) -> GELU table
        -> y_o  (dense)   or   -> scatter: acc[tile, tok] += gate * y  (expert)

Streams (amaranth.lib.stream, valid/ready everywhere):

* ``p_i`` -- one descriptor per weight tile pass, or a flush command. A TILE descriptor holds
  the T_out channels' bias/mult/shift, the output tile index, the output width (8/16), the GELU
  flag and the expert flag; it is followed on ``w_i`` by the tile's weight words. A FLUSH
  descriptor (expert mode) requantizes the whole expert accumulator for ``n_tok`` tokens and
  ``n_tiles`` output tiles with the single-channel constants in ``mult[0]``/``shift[0]``,
  streams it out on ``y_o`` (``flush`` = 1) and clears it.
* ``w_i`` -- weight words, ``data[c][i] = W[tile*T_out + c, k*T_in + i]`` (zero padded);
  ``first``/``last`` frame the K = ceil(d_in / T_in) words of one tile.
* ``x_i`` -- N_L tokens x T_in inputs per beat: ``data[l][i] = x[tok_l, k*T_in + i]``.
  ``first``/``last`` frame the K beats of one token group; ``tile_last`` marks the final group
  of a tile pass (on its ``last`` beat). ``lanes`` says which lanes hold tokens; ``tok`` and
  ``gate`` (unsigned 16-bit gate weight, expert mode) are read on the ``last`` beat. The
  activations are replayed once per output tile (by the DMA / test driver); the weight tile
  stays on chip for all token groups, and the next tile loads into the other bank meanwhile.
* ``g_i`` -- GELU table writes (addr = y + 128, data int8).
* ``y_o`` -- one beat per token per output tile: T_out results (int16 container), the token
  index, the tile index, ``first``/``last`` of the tile pass, ``flush`` for flush beats.

Numerics (proofs): a product of two int8 is at most 2**14 in magnitude; N = K*T_in <= 2**17 of
them sum to at most N * 2**14 <= 2**31, so the bias-free accumulator of ``sum_bits`` =
16 + ceil(log2(N)) <= 33 bits never wraps. Adding an int32 bias needs at most one more bit: the
requantizer input ``rq_bits`` = max(33, sum_bits + 1) holds acc + bias exactly for every legal
input (the intops contract further keeps it within int32: IntLinear.acc_bound < 2**31).
The requant product acc * mult (mult < 2**15) is below 2**(rq_bits + 14); rounding uses
floor((p + 2**(s-1)) / 2**s) = (floor(p / 2**(s-1)) + 1) >> 1 for s >= 1, and any shift
s >= rq_bits + 15 gives 0 exactly, so shifts are capped there. Multipliers >= 2**15 are allowed
only with shift 0 (the intops contract); there clamp(acc * mult) is +max / -min / 0 by the sign of
acc because |mult| >= 2**15 > 32767 >= every output bound, so no 31-bit multiplier is needed.
Expert accumulator: each pass adds gate * y (unsigned 16 x int8/int16, |.| < 2**31) to a
``moe_acc_bits`` entry; the drivers (sim/linear_runner.py) reject a layer whose partial sums
sum(gate * |y|) could reach 2**(moe_acc_bits-1), so the wrapping adder never wraps (IntMoE top-2
with gate <= 2**15 and int8 y stays below 2**24).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from types import SimpleNamespace

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accel.models.errors import AccelError

from .common import check_int_param, tree_sum

__all__ = ["LinearParamError", "LinearParams", "LinearKernel", "generate_verilog", "stream_layouts",
           "KIND_TILE", "KIND_FLUSH", "GATE_BITS"]

KIND_TILE = 0
KIND_FLUSH = 1
GATE_BITS = 16          # unsigned gate weight width (IntMoE: probabilities at scale 2**-15)
MAX_D_IN = 1 << 17      # keeps the product sum below 2**31 (see module docstring)
MAX_MACS = 8192         # T_in * T_out * N_L; beyond this elaboration and simulation crawl


class LinearParamError(AccelError, ValueError):
    """A linear-kernel parameter is out of range; the message names the value and the fix."""


def _clog2(n: int) -> int:
    return max(1, math.ceil(math.log2(n))) if n > 1 else 1


def _check_int(name: str, value, lo: int, hi: int, fix: str) -> None:
    check_int_param(LinearParamError, "LinearParams", name, value, lo, hi, fix)


@dataclass(frozen=True)
class LinearParams:
    """Generator parameters of the linear kernel (all fixed at elaboration time).

    t_in x t_out is the MAC grid of one token lane; n_lanes token lanes share each weight word,
    so the kernel has t_in * t_out * n_lanes multipliers. max_d_in / max_d_out / max_tokens
    size the weight banks and the expert accumulator; shapes up to them run without rebuild."""
    t_in: int = 8
    t_out: int = 8
    n_lanes: int = 2
    max_d_in: int = 256
    max_d_out: int = 256
    max_tokens: int = 64
    expert: bool = True
    moe_acc_bits: int = 32

    def __post_init__(self):
        _check_int("t_in", self.t_in, 1, 256, "pick the input-tile width, e.g. 8 or 16")
        _check_int("t_out", self.t_out, 1, 256, "pick the output-tile width, e.g. 8 or 16")
        _check_int("n_lanes", self.n_lanes, 1, 64, "pick the number of token lanes, e.g. 1-8")
        macs = self.t_in * self.t_out * self.n_lanes
        if macs > MAX_MACS:
            raise LinearParamError(
                f"LinearParams: t_in*t_out*n_lanes = {self.t_in}*{self.t_out}*{self.n_lanes} = {macs!r} "
                f"MACs exceeds {MAX_MACS}; shrink one of t_in, t_out, n_lanes")
        _check_int("max_d_in", self.max_d_in, 1, MAX_D_IN,
                   f"above {MAX_D_IN} the int8 product sum could reach 2**31; split d_in")
        _check_int("max_d_out", self.max_d_out, 1, 1 << 16, "size it to the widest layer output")
        _check_int("max_tokens", self.max_tokens, 1, 1 << 16,
                   "size it to the tokens of one layer call (batch * tokens per image)")
        if not isinstance(self.expert, bool):
            raise LinearParamError(f"LinearParams.expert={self.expert!r}: must be True or False")
        _check_int("moe_acc_bits", self.moe_acc_bits, 24, 48,
                   "the expert accumulator needs >= 24 bits (gate 16 bits x int8); 32 is typical")

    # derived sizes ------------------------------------------------------------------------
    @property
    def max_k(self) -> int:
        """Weight words per tile (ceil(max_d_in / t_in)): the depth of one weight bank."""
        return -(-self.max_d_in // self.t_in)

    @property
    def max_tiles(self) -> int:
        return -(-self.max_d_out // self.t_out)

    @property
    def k_bits(self) -> int:
        return _clog2(self.max_k)

    @property
    def tok_bits(self) -> int:
        return _clog2(self.max_tokens)

    @property
    def tile_bits(self) -> int:
        return _clog2(self.max_tiles)

    @property
    def sum_bits(self) -> int:
        """Width of the bias-free accumulator: |sum| <= max_k*t_in*2**14 < 2**(sum_bits-1)."""
        return 15 + _clog2(self.max_k * self.t_in) + 1

    @property
    def rq_bits(self) -> int:
        """Requantizer input width: accumulator + int32 bias (33 bits), or the MoE accumulator."""
        return max(33, self.sum_bits + 1, self.moe_acc_bits if self.expert else 0)

    @property
    def macs(self) -> int:
        return self.t_in * self.t_out * self.n_lanes

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def desc_layout(p: LinearParams) -> data.StructLayout:
    return data.StructLayout({
        "kind": 1, "expert": 1, "gelu": 1, "out16": 1,
        "tile": p.tile_bits,
        "n_tok": p.tok_bits + 1,
        "n_tiles": p.tile_bits + 1,
        "bias": data.ArrayLayout(signed(32), p.t_out),
        "mult": data.ArrayLayout(unsigned(31), p.t_out),
        "shift": data.ArrayLayout(unsigned(6), p.t_out),
    })


def w_layout(p: LinearParams) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(data.ArrayLayout(signed(8), p.t_in), p.t_out),
        "first": 1, "last": 1,
    })


def x_layout(p: LinearParams) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(data.ArrayLayout(signed(8), p.t_in), p.n_lanes),
        "lanes": p.n_lanes,
        "tok": data.ArrayLayout(unsigned(p.tok_bits), p.n_lanes),
        "gate": data.ArrayLayout(unsigned(GATE_BITS), p.n_lanes),
        "first": 1, "last": 1, "tile_last": 1,
    })


def g_layout(p: LinearParams) -> data.StructLayout:
    return data.StructLayout({"addr": 8, "data": signed(8)})


def y_layout(p: LinearParams) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(16), p.t_out),
        "tok": p.tok_bits, "tile": p.tile_bits,
        "first": 1, "last": 1, "flush": 1,
    })


def stream_layouts(p: LinearParams) -> dict:
    """Payload layouts of the kernel's streams, by stream: p, w, x, g, y."""
    return {"p": desc_layout(p), "w": w_layout(p), "x": x_layout(p), "g": g_layout(p),
            "y": y_layout(p)}


class LinearKernel(wiring.Component):
    """The linear kernel as an Amaranth component. See the module docstring for the protocol.

    ``LinearKernel(LinearParams(...))`` or ``LinearKernel(t_in=..., t_out=..., ...)``."""

    def __init__(self, params: LinearParams | None = None, **kwargs):
        if params is None:
            params = LinearParams(**kwargs)
        elif kwargs:
            raise LinearParamError(f"LinearKernel: got both params={params!r} and keyword "
                                   f"arguments {sorted(kwargs)!r}; pass one or the other")
        if not isinstance(params, LinearParams):
            raise LinearParamError(f"LinearKernel: params={params!r} is not a LinearParams; "
                                   "build one with accel.hdl.linear.LinearParams(t_in=..., ...)")
        self._params = params
        self._layouts = stream_layouts(params)
        super().__init__({
            "p_i": In(stream.Signature(self._layouts["p"])),
            "w_i": In(stream.Signature(self._layouts["w"])),
            "x_i": In(stream.Signature(self._layouts["x"])),
            "g_i": In(stream.Signature(self._layouts["g"])),
            "y_o": Out(stream.Signature(self._layouts["y"])),
        })

    # read-only parameters -------------------------------------------------------------------
    params = property(lambda self: self._params)
    t_in = property(lambda self: self._params.t_in)
    t_out = property(lambda self: self._params.t_out)
    n_lanes = property(lambda self: self._params.n_lanes)
    max_d_in = property(lambda self: self._params.max_d_in)
    max_d_out = property(lambda self: self._params.max_d_out)
    max_tokens = property(lambda self: self._params.max_tokens)
    expert = property(lambda self: self._params.expert)
    layouts = property(lambda self: dict(self._layouts))

    def elaborate(self, platform):
        m = Module()
        P = self._params
        TI, TO, NL = P.t_in, P.t_out, P.n_lanes
        KB, TB, TKB = P.k_bits, P.tile_bits, P.tok_bits
        SW, RW = P.sum_bits, P.rq_bits
        PW = RW + 16                      # product acc * mult[14:0] (signed * 15-bit unsigned)
        SMAX = min(62, RW + 15)           # shifts at or above this give exactly 0
        AB = P.moe_acc_bits
        DL = self._layouts["p"]

        # ------------------------------------------------------------------ weight banks
        m.submodules.wmem = wmem = Memory(shape=unsigned(TO * TI * 8), depth=2 << KB, init=[])
        wwp = wmem.write_port()
        wrp = wmem.read_port(domain="sync")
        desc = [Signal(DL, name=f"desc{b}", reset_less=True) for b in range(2)]
        full = [Signal(name=f"full{b}") for b in range(2)]
        full_set = [Signal(name=f"full_set{b}") for b in range(2)]
        full_clr = [Signal(name=f"full_clr{b}") for b in range(2)]
        for b in range(2):
            with m.If(full_set[b]):
                m.d.sync += full[b].eq(1)
            with m.If(full_clr[b]):
                m.d.sync += full[b].eq(0)
        wr_bank = Signal()
        rd_bank = Signal()
        loading = Signal()
        waddr = Signal(KB)

        # after a reset the expert accumulator memory is zeroed, one entry a cycle, before the
        # first descriptor is taken: a run cut short by a reset leaves partial sums in it, and
        # flushes clear only the entries they read
        clearing = Signal(init=1) if P.expert else Const(0, 1)

        # loader: descriptor, then (for a tile) its weight words into bank wr_bank
        wr_full = Mux(wr_bank, full[1], full[0])
        with m.If(~loading):
            m.d.comb += self.p_i.ready.eq(~wr_full & ~clearing)
            with m.If(self.p_i.valid & ~wr_full & ~clearing):
                for b in range(2):
                    with m.If(wr_bank == b):
                        m.d.sync += desc[b].eq(self.p_i.payload)
                with m.If(self.p_i.payload.kind == KIND_FLUSH):
                    for b in range(2):
                        with m.If(wr_bank == b):
                            m.d.comb += full_set[b].eq(1)
                    m.d.sync += wr_bank.eq(~wr_bank)
                with m.Else():
                    m.d.sync += loading.eq(1)
        with m.Else():
            m.d.comb += self.w_i.ready.eq(1)
            w_addr = Mux(self.w_i.payload.first, 0, waddr)
            m.d.comb += [wwp.addr.eq(Cat(w_addr, wr_bank)),
                         wwp.data.eq(self.w_i.payload.data.as_value()),
                         wwp.en.eq(self.w_i.valid)]
            with m.If(self.w_i.valid):
                m.d.sync += waddr.eq(w_addr + 1)
                with m.If(self.w_i.payload.last):
                    for b in range(2):
                        with m.If(wr_bank == b):
                            m.d.comb += full_set[b].eq(1)
                    m.d.sync += [wr_bank.eq(~wr_bank), loading.eq(0)]

        cur = data.View(DL, Mux(rd_bank, desc[1].as_value(), desc[0].as_value()))
        rd_full = Mux(rd_bank, full[1], full[0])
        tile_mode = rd_full & (cur.kind == KIND_TILE)
        flush_mode = rd_full & (cur.kind == KIND_FLUSH)

        # ------------------------------------------------------------------ MAC pipeline
        mac_en = Signal()
        k = Signal(KB)
        pass_first = Signal(init=1)
        xp = self.x_i.payload
        m.d.comb += self.x_i.ready.eq(mac_en & tile_mode)
        x_fire = self.x_i.valid & self.x_i.ready
        a_addr = Mux(xp.first, 0, k)
        m.d.comb += [wrp.addr.eq(Cat(a_addr, rd_bank)), wrp.en.eq(mac_en)]
        with m.If(x_fire):
            m.d.sync += k.eq(a_addr + 1)
            with m.If(xp.last):
                m.d.sync += pass_first.eq(xp.tile_last)
                with m.If(xp.tile_last):
                    m.d.sync += rd_bank.eq(~rd_bank)

        # stage B: activations registered, weight word arriving from the bank
        b_valid = Signal()
        b_x = Signal(self._layouts["x"], reset_less=True)
        b_bank = Signal()
        b_pfirst = Signal()
        with m.If(mac_en):
            m.d.sync += [b_valid.eq(x_fire), b_x.eq(xp), b_bank.eq(rd_bank),
                         b_pfirst.eq(pass_first)]
        wword = data.View(data.ArrayLayout(data.ArrayLayout(signed(8), TI), TO), wrp.data)

        # a beat's bookkeeping as it moves from stage to stage beside the data
        def mac_stage(n):
            return SimpleNamespace(valid=Signal(name=f"{n}_valid"),
                                   lanes=Signal(NL, name=f"{n}_lanes", reset_less=True),
                                   tok=[Signal(TKB, name=f"{n}_tok{l}", reset_less=True) for l in range(NL)],
                                   gate=[Signal(GATE_BITS, name=f"{n}_gate{l}", reset_less=True) for l in range(NL)],
                                   first=Signal(name=f"{n}_first"), last=Signal(name=f"{n}_last"),
                                   tlast=Signal(name=f"{n}_tlast"), bank=Signal(name=f"{n}_bank"),
                                   pfirst=Signal(name=f"{n}_pfirst"))

        def follow(dst, src):
            m.d.sync += [dst.valid.eq(src.valid), dst.lanes.eq(src.lanes), dst.first.eq(src.first),
                         dst.last.eq(src.last), dst.tlast.eq(src.tlast), dst.bank.eq(src.bank),
                         dst.pfirst.eq(src.pfirst)]
            m.d.sync += [d.eq(v) for d, v in zip(dst.tok + dst.gate, src.tok + src.gate)]

        stage_b = SimpleNamespace(valid=b_valid, lanes=b_x.lanes, tok=[b_x.tok[l] for l in range(NL)],
                                  gate=[b_x.gate[l] for l in range(NL)], first=b_x.first, last=b_x.last,
                                  tlast=b_x.tile_last, bank=b_bank, pfirst=b_pfirst)
        # stage P: the N_L x T_out x T_in products, registered (the weight word leaves the block
        # RAM late in the cycle; with products built in LUTs the multiply and the adder tree
        # together were the deepest path of the design on the ECP5)
        stage_p = mac_stage("p")
        p_prod = [[[Signal(signed(16), name=f"p_prod_{l}_{c}_{i}", reset_less=True) for i in range(TI)]
                   for c in range(TO)] for l in range(NL)]
        # stage C: N_L x T_out sums of T_in products
        stage_c = mac_stage("c")
        c_psum = [[Signal(signed(SW), name=f"c_psum_{l}_{c}", reset_less=True) for c in range(TO)] for l in range(NL)]
        with m.If(mac_en):
            follow(stage_p, stage_b)
            follow(stage_c, stage_p)
            for l in range(NL):
                for c in range(TO):
                    m.d.sync += c_psum[l][c].eq(tree_sum(p_prod[l][c][i] for i in range(TI)))
                    for i in range(TI):
                        m.d.sync += p_prod[l][c][i].eq(b_x.data[l][i] * wword[c][i])
        p_valid = stage_p.valid
        c_valid, c_lanes, c_tok, c_gate = stage_c.valid, stage_c.lanes, stage_c.tok, stage_c.gate
        c_first, c_last, c_tlast, c_bank, c_pfirst = (stage_c.first, stage_c.last, stage_c.tlast, stage_c.bank,
                                                      stage_c.pfirst)

        # accumulators and the hold register (one finished group, bias added, constants copied)
        acc = [[Signal(signed(SW), name=f"acc_{l}_{c}", reset_less=True) for c in range(TO)] for l in range(NL)]
        h_valid = Signal()
        h_acc = [Array(Signal(signed(RW), name=f"h_acc_{l}_{c}", reset_less=True) for l in range(NL))
                 for c in range(TO)]
        h_lanes = Signal(NL)
        h_tok = Array(Signal(TKB, name=f"h_tok{l}", reset_less=True) for l in range(NL))
        h_gate = Array(Signal(GATE_BITS, name=f"h_gate{l}", reset_less=True) for l in range(NL))
        h_mult = [Signal(31, name=f"h_mult{c}", reset_less=True) for c in range(TO)]
        h_shift = [Signal(6, name=f"h_shift{c}", reset_less=True) for c in range(TO)]
        h_out16 = Signal()
        h_gelu = Signal()
        h_expert = Signal()
        h_tile = Signal(TB, reset_less=True)
        h_tlast = Signal()
        h_pfirst = Signal()
        h_freeing = Signal()
        m.d.comb += mac_en.eq(~(c_valid & c_last & h_valid & ~h_freeing))
        cdesc = data.View(DL, Mux(c_bank, desc[1].as_value(), desc[0].as_value()))
        with m.If(mac_en & c_valid):
            for l in range(NL):
                for c in range(TO):
                    m.d.sync += acc[l][c].eq(Mux(c_first, 0, acc[l][c]) + c_psum[l][c])
        with m.If(h_freeing):
            m.d.sync += h_valid.eq(0)
        with m.If(mac_en & c_valid & c_last):
            m.d.sync += [h_valid.eq(1), h_lanes.eq(c_lanes), h_out16.eq(cdesc.out16),
                         h_gelu.eq(cdesc.gelu), h_expert.eq(cdesc.expert), h_tile.eq(cdesc.tile),
                         h_tlast.eq(c_tlast), h_pfirst.eq(c_pfirst)]
            for l in range(NL):
                m.d.sync += [h_tok[l].eq(c_tok[l]), h_gate[l].eq(c_gate[l])]
                for c in range(TO):
                    m.d.sync += h_acc[c][l].eq(
                        Mux(c_first, 0, acc[l][c]) + c_psum[l][c] + cdesc.bias[c])
            for c in range(TO):
                m.d.sync += [h_mult[c].eq(cdesc.mult[c]), h_shift[c].eq(cdesc.shift[c])]
            with m.If(c_tlast):
                for b in range(2):
                    with m.If(c_bank == b):
                        m.d.comb += full_clr[b].eq(1)

        # ------------------------------------------------------------------ requantizer input mux
        rq_en = Signal()                   # requant pipeline advances
        rq_in_valid = Signal()
        rq_in_acc = [Signal(signed(RW), name=f"rq_in_acc{c}") for c in range(TO)]
        rq_in_mult = [Signal(31, name=f"rq_in_mult{c}") for c in range(TO)]
        rq_in_shift = [Signal(6, name=f"rq_in_shift{c}") for c in range(TO)]
        rq_in_out16 = Signal()
        rq_in_gelu = Signal()
        rq_in_scatter = Signal()
        rq_in_flush = Signal()
        rq_in_tok = Signal(TKB)
        rq_in_gate = Signal(GATE_BITS)
        rq_in_tile = Signal(TB)
        rq_in_first = Signal()
        rq_in_last = Signal()

        # drain: one token lane per cycle out of the hold register
        dl = Signal(range(NL))
        lane_on = h_lanes.bit_select(dl, 1)
        later = (h_lanes >> (dl + 1)) if NL > 1 else Const(0, 1)
        earlier = h_lanes & ((Const(1, NL + 1) << dl) - 1)[:NL]
        flushing = Signal()
        with m.If(~flushing & h_valid & rq_en):
            m.d.sync += dl.eq(Mux(dl == NL - 1, 0, dl + 1))
            m.d.comb += h_freeing.eq(dl == NL - 1)

        # flush reader (expert accumulator -> requant -> y_o, then cleared)
        f_run = Signal()
        f_tok = Signal(TKB + 1)
        f_tile = Signal(TB + 1)
        f_issued_all = Signal()
        f1_valid = Signal()
        f1_tok = Signal(TKB, reset_less=True)
        f1_tile = Signal(TB, reset_less=True)
        f1_first = Signal()
        f1_last = Signal()
        m.d.comb += flushing.eq(f_run)

        with m.If(flushing):
            m.d.comb += [rq_in_valid.eq(f1_valid), rq_in_out16.eq(cur.out16), rq_in_flush.eq(1),
                         rq_in_tok.eq(f1_tok), rq_in_tile.eq(f1_tile),
                         rq_in_first.eq(f1_first), rq_in_last.eq(f1_last)]
            for c in range(TO):
                m.d.comb += [rq_in_mult[c].eq(cur.mult[0]), rq_in_shift[c].eq(cur.shift[0])]
        with m.Else():
            m.d.comb += [rq_in_valid.eq(h_valid & lane_on), rq_in_out16.eq(h_out16),
                         rq_in_gelu.eq(h_gelu), rq_in_scatter.eq(h_expert),
                         rq_in_tok.eq(h_tok[dl]), rq_in_gate.eq(h_gate[dl]), rq_in_tile.eq(h_tile),
                         rq_in_first.eq(h_pfirst & (earlier == 0)),
                         rq_in_last.eq(h_tlast & (later == 0))]
            for c in range(TO):
                m.d.comb += [rq_in_acc[c].eq(h_acc[c][dl]), rq_in_mult[c].eq(h_mult[c]),
                             rq_in_shift[c].eq(h_shift[c])]

        # ------------------------------------------------------------------ requantizer
        r1_valid = Signal()
        r1_prod = [Signal(signed(PW), name=f"r1_prod{c}", reset_less=True) for c in range(TO)]
        r1_big = [Signal(name=f"r1_big{c}") for c in range(TO)]
        r1_pos = [Signal(name=f"r1_pos{c}") for c in range(TO)]
        r1_neg = [Signal(name=f"r1_neg{c}") for c in range(TO)]
        r1_shift = [Signal(6, name=f"r1_shift{c}", reset_less=True) for c in range(TO)]
        meta_in = Cat(rq_in_out16, rq_in_gelu, rq_in_scatter, rq_in_flush, rq_in_tok, rq_in_gate,
                      rq_in_tile, rq_in_first, rq_in_last)
        r1_meta = Signal(len(meta_in), reset_less=True)
        # stage r0 registers the requantizer's inputs: the accumulator memory's read data and the
        # hold register's lane mux stay out of the product's cycle (an ECP5 timing path)
        r0_valid = Signal()
        r0_meta = Signal(len(meta_in), reset_less=True)
        r0_acc = [Signal(signed(RW), name=f"r0_acc{c}", reset_less=True) for c in range(TO)]
        r0_mult = [Signal(31, name=f"r0_mult{c}", reset_less=True) for c in range(TO)]
        r0_shift = [Signal(6, name=f"r0_shift{c}", reset_less=True) for c in range(TO)]
        with m.If(rq_en):
            m.d.sync += [r0_valid.eq(rq_in_valid), r0_meta.eq(meta_in)]
            for c in range(TO):
                m.d.sync += [r0_acc[c].eq(rq_in_acc[c]), r0_mult[c].eq(rq_in_mult[c]),
                             r0_shift[c].eq(rq_in_shift[c])]
        with m.If(rq_en):
            m.d.sync += [r1_valid.eq(r0_valid), r1_meta.eq(r0_meta)]
            for c in range(TO):
                a, mu, s = r0_acc[c], r0_mult[c], r0_shift[c]
                m.d.sync += [
                    r1_prod[c].eq(a * mu[:15]),
                    r1_big[c].eq(mu[15:] != 0),
                    r1_pos[c].eq(a > 0),
                    r1_neg[c].eq(a < 0),
                    r1_shift[c].eq(Mux(s > SMAX, SMAX, s)),
                ]

        r2_valid = Signal()
        r2_meta = Signal(len(meta_in), reset_less=True)
        r2_y = [Signal(signed(16), name=f"r2_y{c}", reset_less=True) for c in range(TO)]
        r4_valid = Signal()
        r4_meta = Signal(len(meta_in), reset_less=True)
        r4_y = [Signal(signed(16), name=f"r4_y{c}", reset_less=True) for c in range(TO)]
        m.submodules.gelu = gmem = Memory(shape=unsigned(8), depth=256, init=[])
        gwp = gmem.write_port()
        m.d.comb += [self.g_i.ready.eq(1), gwp.addr.eq(self.g_i.payload.addr),
                     gwp.data.eq(self.g_i.payload.data), gwp.en.eq(self.g_i.valid)]
        # stage r3 (between r1 and r2): the product shifted by s - 1 (or kept when s = 0); the
        # rounding increment and the clamp follow in the next cycle
        r3_valid = Signal()
        r3_meta = Signal(len(meta_in), reset_less=True)
        r3_v = [Signal(signed(PW), name=f"r3_v{c}", reset_less=True) for c in range(TO)]
        r3_s0 = [Signal(name=f"r3_s0{c}") for c in range(TO)]
        r3_big = [Signal(name=f"r3_big{c}") for c in range(TO)]
        r3_pos = [Signal(name=f"r3_pos{c}") for c in range(TO)]
        r3_neg = [Signal(name=f"r3_neg{c}") for c in range(TO)]
        with m.If(rq_en):
            m.d.sync += [r3_valid.eq(r1_valid), r3_meta.eq(r1_meta)]
            for c in range(TO):
                s, p = r1_shift[c], r1_prod[c]
                m.d.sync += [r3_v[c].eq(Mux(s == 0, p, p >> (s - 1)[:6])), r3_s0[c].eq(s == 0),
                             r3_big[c].eq(r1_big[c]), r3_pos[c].eq(r1_pos[c]), r3_neg[c].eq(r1_neg[c])]
        r3_out16 = r3_meta[0]
        hi = Mux(r3_out16, 32767, 127)
        lo = Mux(r3_out16, -32768, -128)
        g_rd = []
        for c in range(TO):
            v = r3_v[c]
            r = Mux(r3_s0[c], v, (v + 1) >> 1)
            y = Signal(signed(16), name=f"r1_y{c}")
            with m.If(r3_big[c]):
                m.d.comb += y.eq(Mux(r3_pos[c], hi, Mux(r3_neg[c], lo, 0)))
            with m.Elif(r > hi):
                m.d.comb += y.eq(hi)
            with m.Elif(r < lo):
                m.d.comb += y.eq(lo)
            with m.Else():
                m.d.comb += y.eq(r)
            with m.If(rq_en):
                m.d.sync += r4_y[c].eq(y)
        with m.If(rq_en):
            m.d.sync += [r4_valid.eq(r3_valid), r4_meta.eq(r3_meta)]
        # stage r2: the GELU table is read from the registered y (clamp and the block RAM's
        # address in one cycle were a 10-11-level path on the ECP5)
        for c in range(TO):
            rp = gmem.read_port(domain="sync")
            m.d.comb += [rp.addr.eq(r4_y[c][:8] ^ 0x80), rp.en.eq(rq_en)]
            g_rd.append(rp)
            with m.If(rq_en):
                m.d.sync += r2_y[c].eq(r4_y[c])
        with m.If(rq_en):
            m.d.sync += [r2_valid.eq(r4_valid), r2_meta.eq(r4_meta)]

        r2_out16, r2_gelu, r2_scatter, r2_flush = r2_meta[0], r2_meta[1], r2_meta[2], r2_meta[3]
        o = 4
        r2_tok = r2_meta[o:o + TKB]; o += TKB
        r2_gate = r2_meta[o:o + GATE_BITS]; o += GATE_BITS
        r2_tile = r2_meta[o:o + TB]; o += TB
        r2_first = r2_meta[o]
        r2_last = r2_meta[o + 1]
        r2_val = [Mux(r2_gelu, g_rd[c].data.as_signed(), r2_y[c]) for c in range(TO)]
        to_y = r2_valid & ~r2_scatter
        m.d.comb += rq_en.eq(~(to_y & ~self.y_o.ready))
        yp = self.y_o.payload
        m.d.comb += [self.y_o.valid.eq(to_y), yp.tok.eq(r2_tok), yp.tile.eq(r2_tile),
                     yp.first.eq(r2_first), yp.last.eq(r2_last), yp.flush.eq(r2_flush)]
        for c in range(TO):
            m.d.comb += yp.data[c].eq(r2_val[c])

        # ------------------------------------------------------------------ expert accumulator
        if P.expert:
            depth = (1 << TB) << TKB
            m.submodules.accmem = amem = Memory(shape=unsigned(TO * AB), depth=depth, init=[])
            awp = amem.write_port()
            arp = amem.read_port(domain="sync", transparent_for=(awp,))
            a_rd = data.View(data.ArrayLayout(signed(AB), TO), arp.data)
            s1_valid = Signal()
            s1_addr = Signal(TB + TKB, reset_less=True)
            s1_gate = Signal(GATE_BITS, reset_less=True)
            s1_val = [Signal(signed(16), name=f"s1_val{c}", reset_less=True) for c in range(TO)]
            s_fire = r2_valid & r2_scatter          # the scatter unit is always ready
            m.d.sync += s1_valid.eq(s_fire)
            with m.If(s_fire):
                m.d.sync += [s1_addr.eq(Cat(r2_tok, r2_tile)), s1_gate.eq(r2_gate)]
                for c in range(TO):
                    m.d.sync += s1_val[c].eq(r2_val[c])
            # stage 2: the gate x value products registered beside their DSP blocks, while the
            # accumulator word is read at stage 1's address (DSP -> carry chain -> block RAM in one
            # cycle, with the gate register placed far from the DSPs, was among the ECP5's longest
            # paths: 22.4 ns). A stage-1 item reading the word that stage 2 writes in the same cycle
            # gets the written value (the read port is transparent for the write port).
            s2_valid = Signal()
            s2_addr = Signal(TB + TKB, reset_less=True)
            s2_prod = [Signal((s1_gate * s1_val[c]).shape(), name=f"s2_prod{c}", reset_less=True)
                       for c in range(TO)]
            m.d.sync += s2_valid.eq(s1_valid)
            with m.If(s1_valid):
                m.d.sync += s2_addr.eq(s1_addr)
                for c in range(TO):
                    m.d.sync += s2_prod[c].eq(s1_gate * s1_val[c])
            wdata = Signal(data.ArrayLayout(signed(AB), TO))

            # flush control
            f_adv = ~f1_valid | rq_en
            pipe_idle = ~(b_valid | p_valid | c_valid | h_valid | r0_valid | r1_valid | r3_valid | r4_valid | r2_valid | s1_valid | s2_valid)
            f_issue = f_run & f_adv & ~f_issued_all
            with m.If(f_run):
                m.d.comb += [arp.addr.eq(Cat(f_tok[:TKB], f_tile[:TB])), arp.en.eq(f_adv)]
            with m.Else():
                m.d.comb += [arp.addr.eq(s1_addr), arp.en.eq(1)]
            with m.If(flushing):
                for c in range(TO):
                    m.d.comb += rq_in_acc[c].eq(a_rd[c])

            clear_addr = Signal(range(depth))
            with m.If(clearing):
                m.d.sync += clear_addr.eq(clear_addr + 1)
                with m.If(clear_addr == depth - 1):
                    m.d.sync += clearing.eq(0)
                m.d.comb += [awp.addr.eq(clear_addr), awp.en.eq(1)]      # wdata stays 0
            with m.Elif(s2_valid):
                m.d.comb += [awp.addr.eq(s2_addr), awp.en.eq(1)]
                for c in range(TO):
                    m.d.comb += wdata[c].eq(a_rd[c] + s2_prod[c])
            with m.Elif(f_run & f1_valid & rq_en):    # clear each entry as it leaves
                m.d.comb += [awp.addr.eq(Cat(f1_tok, f1_tile)), awp.en.eq(1)]
            m.d.comb += awp.data.eq(wdata.as_value())

            n_tok = cur.n_tok
            n_tiles = cur.n_tiles
            with m.If(~f_run):
                with m.If(flush_mode & pipe_idle):
                    with m.If((n_tok == 0) | (n_tiles == 0)):
                        m.d.comb += [full_clr[0].eq(~rd_bank), full_clr[1].eq(rd_bank)]
                        m.d.sync += rd_bank.eq(~rd_bank)
                    with m.Else():
                        m.d.sync += [f_run.eq(1), f_tok.eq(0), f_tile.eq(0), f_issued_all.eq(0),
                                     f1_valid.eq(0)]
            with m.Else():
                with m.If(f_adv):
                    m.d.sync += [f1_valid.eq(f_issue), f1_tok.eq(f_tok), f1_tile.eq(f_tile),
                                 f1_first.eq((f_tok == 0) & (f_tile == 0)),
                                 f1_last.eq((f_tok == n_tok - 1) & (f_tile == n_tiles - 1))]
                with m.If(f_issue):
                    with m.If(f_tok == n_tok - 1):
                        m.d.sync += f_tok.eq(0)
                        with m.If(f_tile == n_tiles - 1):
                            m.d.sync += f_issued_all.eq(1)
                        with m.Else():
                            m.d.sync += f_tile.eq(f_tile + 1)
                    with m.Else():
                        m.d.sync += f_tok.eq(f_tok + 1)
                with m.If(f1_valid & rq_en & f1_last):
                    m.d.sync += [f_run.eq(0), rd_bank.eq(~rd_bank), f1_valid.eq(0)]
                    m.d.comb += [full_clr[0].eq(~rd_bank), full_clr[1].eq(rd_bank)]
        else:
            # no expert accumulator: a FLUSH descriptor is retired at once (the drivers refuse
            # to send one to such a kernel; this only keeps the bank sequence from stalling)
            with m.If(flush_mode):
                m.d.comb += [full_clr[0].eq(~rd_bank), full_clr[1].eq(rd_bank)]
                m.d.sync += rd_bank.eq(~rd_bank)
        return m


def generate_verilog(params: LinearParams, name: str = "linear_kernel") -> str:
    """Verilog text of the kernel for ``params`` (top module ``name``)."""
    from amaranth.back import verilog
    top = LinearKernel(params)
    return verilog.convert(top, name=name, emit_src=False)
