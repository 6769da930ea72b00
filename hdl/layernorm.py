"""Integer LayerNorm unit: int16 rows in, int8 rows out, bit-exact with
:class:`accel.models.intops.IntLayerNorm` (docs/numerics.md, "LayerNorm").

Per row of C channels (C a multiple of the lane count L, C <= max_channels <= 1024)::

    ingest  (C/L beats)  : row -> row buffer (two banks); two cycles later S += sum(x), Q += sum(x*x)
    stats   (~78/k cycles): var = C*Q - S*S; std = isqrt(var << 12) (restoring);
                           f = floor(2**46 / max(std, 1)) (restoring division); k = stats_steps
                           steps of each per cycle
    emit    (C/L beats, L/E cycles each): yc = C*x - S; z = (yc*f + 2**29) >> 30;
                           out = clamp8((z*mult[c] + offset[c] + 2**(shift-1)) >> shift)

The next row is ingested into the other bank while the current one is in stats/emit, so a row
costs max(C/L + 3, stats + C/E) cycles in steady state (cost model: ``layernorm_cycles``); E is
``emit_lanes``, the lanes normalized per cycle (L by default).

Streams (amaranth.lib.stream, valid/ready everywhere):

* ``c_i`` -- configuration: ``first`` starts a new layer; each beat carries L channels'
  ``mult`` (signed 24) and ``offset`` (signed 48); the beat with ``first`` also carries
  ``channels`` (C) and ``shift``. C/L beats; the unit must be idle (no row in flight).
* ``x_i`` -- L int16 values per beat, ``last`` on the final beat of a row.
* ``y_o`` -- L int8 values per beat, ``last`` on the final beat of a row.

Widths (proved in docs/numerics.md): S < 2**25 (26 bits signed), Q < 2**40, var < 2**50,
std < 2**31, f <= 2**40 (41 bits), yc < 2**26, |yc*f| < 2**46, |z| <= 2**15 (+1), z*mult < 2**40.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accel.models.errors import AccelError
from accel.models.intops import LN_MAX_CHANNELS, LN_RECIP_BITS, LN_VAR_SHIFT, LN_Z_SHIFT

from .common import round_shift

__all__ = ["LayerNormParams", "LayerNormParamError", "LayerNormUnit", "config_layout", "x_layout", "y_layout",
           "OFFSET_BITS", "MULT_BITS", "stats_cycles"]

MULT_BITS = 24    # signed: |mult| < 2**23
OFFSET_BITS = 48  # signed: |offset| < 2**47
STD_BITS = 31     # isqrt(var << 12) < 2**31
F_BITS = 41       # f = floor(2**46 / std) <= 2**40 (std >= 2**6 whenever var >= 1; std = 0 -> 2**46 unused)


def stats_cycles(steps: int) -> int:
    """Cycles from taking a row to DONE: isqrt (STD_BITS steps) and division (LN_RECIP_BITS + 1
    steps), ``steps`` of each per cycle, plus the take cycle (the two products C*Q and S*S) and
    the variance cycle (their difference)."""
    return 2 + -(-STD_BITS // steps) + -(-(LN_RECIP_BITS + 1) // steps)


class LayerNormParamError(AccelError, ValueError):
    """A LayerNorm unit parameter is out of range; the message names the value and the fix."""


@dataclass(frozen=True)
class LayerNormParams:
    lanes: int = 4             # channels per beat
    max_channels: int = 256    # largest C this instance serves (row buffer depth)
    stats_steps: int = 1       # isqrt / division steps per cycle (1-8): a row's statistics take
                               # about 78 / stats_steps cycles, overlapped with the previous emit
    emit_lanes: int | None = None   # lanes normalized per cycle on the way out (a power of two
                               # dividing lanes; None: all of them): fewer multipliers, lanes /
                               # emit_lanes cycles per output beat

    def __post_init__(self):
        for name, v, lo, hi in (("lanes", self.lanes, 1, 64), ("max_channels", self.max_channels, 1, LN_MAX_CHANNELS),
                                ("stats_steps", self.stats_steps, 1, 8)):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise LayerNormParamError(f"LayerNormParams.{name}={v!r}: must be an int in [{lo}, {hi}]")
        if self.lanes & (self.lanes - 1):
            raise LayerNormParamError(f"LayerNormParams.lanes={self.lanes!r}: must be a power of two (1, 2, 4, ...)")
        if self.emit_lanes is not None:
            e = self.emit_lanes
            if isinstance(e, bool) or not isinstance(e, int) or e < 1 or e & (e - 1) or self.lanes % e:
                raise LayerNormParamError(f"LayerNormParams.emit_lanes={e!r}: must be a power of two dividing "
                                          f"lanes={self.lanes!r} (or None for all lanes)")
        if self.max_channels % self.lanes:
            raise LayerNormParamError(f"LayerNormParams: max_channels={self.max_channels!r} is not a multiple of "
                                      f"lanes={self.lanes!r}; round max_channels up to a multiple of lanes")

    @property
    def beats_max(self) -> int:
        return self.max_channels // self.lanes

    @property
    def emit_width(self) -> int:
        """Lanes normalized per cycle (``emit_lanes``, or every lane)."""
        return self.lanes if self.emit_lanes is None else self.emit_lanes

    @property
    def emit_steps(self) -> int:
        """Cycles per output beat."""
        return self.lanes // self.emit_width


def config_layout(p: LayerNormParams) -> data.StructLayout:
    return data.StructLayout({"mult": data.ArrayLayout(signed(MULT_BITS), p.lanes),
                              "offset": data.ArrayLayout(signed(OFFSET_BITS), p.lanes),
                              "channels": unsigned(11), "shift": unsigned(6), "first": 1})


def x_layout(p: LayerNormParams) -> data.StructLayout:
    return data.StructLayout({"data": data.ArrayLayout(signed(16), p.lanes), "last": 1})


def y_layout(p: LayerNormParams) -> data.StructLayout:
    return data.StructLayout({"data": data.ArrayLayout(signed(8), p.lanes), "last": 1})


class LayerNormUnit(wiring.Component):
    def __init__(self, params: LayerNormParams | None = None, **kwargs):
        if params is None:
            params = LayerNormParams(**kwargs)
        elif kwargs:
            raise LayerNormParamError(f"LayerNormUnit: got both params={params!r} and keywords {sorted(kwargs)!r}")
        if not isinstance(params, LayerNormParams):
            raise LayerNormParamError(f"LayerNormUnit: params={params!r} is not a LayerNormParams")
        self._params = params
        super().__init__({
            "c_i": In(stream.Signature(config_layout(params))),
            "x_i": In(stream.Signature(x_layout(params))),
            "y_o": Out(stream.Signature(y_layout(params))),
        })

    params = property(lambda self: self._params)

    def elaborate(self, platform):
        m = Module()
        P = self._params
        L, NB = P.lanes, P.beats_max

        # ---------------------------------------------------------------- configuration
        consts = Memory(shape=data.StructLayout({"mult": data.ArrayLayout(signed(MULT_BITS), L),
                                                 "offset": data.ArrayLayout(signed(OFFSET_BITS), L)}),
                        depth=NB, init=[])
        m.submodules.consts = consts
        cw = consts.write_port()
        cr = consts.read_port()
        channels = Signal(11)
        beats = Signal(range(NB + 1))
        shift = Signal(6)
        cfg_addr = Signal(range(NB + 1))

        # ---------------------------------------------------------------- row buffer (2 banks)
        rows = Memory(shape=data.ArrayLayout(signed(16), L), depth=2 * NB, init=[])
        m.submodules.rows = rows
        rw = rows.write_port()
        rr = rows.read_port()

        # bank state: full[b] = bank b holds a row not yet emitted
        full = Signal(2)
        in_bank = Signal()      # bank the ingest writes
        in_beat = Signal(range(NB + 1))
        s_acc = Signal(signed(27))
        q_acc = Signal(unsigned(42))
        idle = Signal()
        pipe_busy = Signal()

        # config beats are accepted only when idle
        m.d.comb += self.c_i.ready.eq(idle)
        m.d.comb += [cw.addr.eq(Mux(self.c_i.payload.first, 0, cfg_addr)),
                     cw.data.mult.eq(self.c_i.payload.mult), cw.data.offset.eq(self.c_i.payload.offset),
                     cw.en.eq(self.c_i.valid & self.c_i.ready)]
        with m.If(self.c_i.valid & self.c_i.ready):
            with m.If(self.c_i.payload.first):
                m.d.sync += [channels.eq(self.c_i.payload.channels), shift.eq(self.c_i.payload.shift),
                             beats.eq(self.c_i.payload.channels >> (L.bit_length() - 1)), cfg_addr.eq(1)]
            with m.Else():
                m.d.sync += cfg_addr.eq(cfg_addr + 1)

        # ---------------------------------------------------------------- ingest
        # A beat is registered as it is taken (and written to the row buffer); its lane sum and
        # squares are registered the next cycle and accumulated the cycle after, so neither the
        # products start at the input stream nor the adder tree follows the products (on the
        # ECP5 the packer's beat through x*x into Q was a 12-level path, x*x and the tree 11.75).
        x_v, x_last, x_bank = Signal(), Signal(), Signal()
        x_r = Signal.like(self.x_i.payload.data, reset_less=True)
        q_v, q_last, q_bank = Signal(), Signal(), Signal()
        sum_r = Signal(signed(16 + L.bit_length()), reset_less=True)                     # |sum of L lanes| <= L * 2**15
        sq_r = [Signal(unsigned(31), name=f"sq{i}", reset_less=True) for i in range(L)]  # x*x <= 2**30
        lane_sum = sum_r
        lane_sq = sum(sq_r)
        bank_free = ~full.bit_select(in_bank, 1)
        stats_take = Signal()   # the stats engine takes the finished row this cycle
        row_done = Signal()     # an ingested row waits for the stats engine
        done_s = Signal(signed(27), reset_less=True)
        done_q = Signal(unsigned(42), reset_less=True)
        done_bank = Signal()
        take_x = Signal()
        m.d.comb += [self.x_i.ready.eq(bank_free & ~row_done & ~(x_v & x_last) & ~(q_v & q_last) & ~self.c_i.valid),
                     take_x.eq(self.x_i.valid & self.x_i.ready),
                     rw.addr.eq(Mux(in_bank, NB, 0) + in_beat),
                     rw.data.eq(self.x_i.payload.data),
                     rw.en.eq(take_x)]
        m.d.sync += [x_v.eq(take_x), x_r.eq(self.x_i.payload.data), x_last.eq(self.x_i.payload.last),
                     x_bank.eq(in_bank)]
        m.d.sync += [q_v.eq(x_v), q_last.eq(x_last), q_bank.eq(x_bank), sum_r.eq(sum(x_r[i] for i in range(L)))]
        m.d.sync += [sq_r[i].eq(x_r[i] * x_r[i]) for i in range(L)]
        with m.If(take_x):
            with m.If(self.x_i.payload.last):
                m.d.sync += [in_beat.eq(0), full.bit_select(in_bank, 1).eq(1), in_bank.eq(~in_bank)]
            with m.Else():
                m.d.sync += in_beat.eq(in_beat + 1)
        with m.If(q_v):
            with m.If(q_last):
                m.d.sync += [s_acc.eq(0), q_acc.eq(0), row_done.eq(1),
                             done_s.eq(s_acc + lane_sum), done_q.eq(q_acc + lane_sq), done_bank.eq(q_bank)]
            with m.Else():
                m.d.sync += [s_acc.eq(s_acc + lane_sum), q_acc.eq(q_acc + lane_sq)]
        with m.If(stats_take):
            m.d.sync += row_done.eq(0)

        # ---------------------------------------------------------------- stats engine
        st_s = Signal(signed(27), reset_less=True)
        st_bank = Signal()
        K = P.stats_steps
        vsh = Signal(unsigned(62), reset_less=True)       # var << 12 (< 2**62), consumed two bits per step from the top
        root = Signal(unsigned(STD_BITS), reset_less=True)
        rem = Signal(unsigned(STD_BITS + 3), reset_less=True)
        nsh = Signal(unsigned(LN_RECIP_BITS + 1), reset_less=True)     # the dividend 2**46, consumed one bit per step
        quo = Signal(unsigned(LN_RECIP_BITS + 1), reset_less=True)
        drem = Signal(unsigned(STD_BITS + 1), reset_less=True)
        left = Signal(range(LN_RECIP_BITS + 2))       # steps left in the current phase
        f_val = Signal(unsigned(F_BITS), reset_less=True)
        emit_go = Signal()               # stats done, the row may emit
        emit_busy = Signal()

        cq = Signal(unsigned(53), reset_less=True)        # C * Q (C < 2**11, Q < 2**42)
        ss = Signal(unsigned(53), reset_less=True)        # S * S (|S| < 2**26)
        with m.FSM(name="stats"):
            with m.State("IDLE"):
                m.d.comb += stats_take.eq(row_done & ~emit_go)
                with m.If(stats_take):
                    # the products first, their difference next cycle (products and the 50-bit
                    # subtraction in one cycle took 20.4 ns on ECP5, bench/unit_fmax.py)
                    m.d.sync += [st_s.eq(done_s), st_bank.eq(done_bank), cq.eq(channels * done_q),
                                 ss.eq(done_s * done_s)]
                    m.next = "VAR"
            with m.State("VAR"):
                m.d.sync += [vsh.eq((cq - ss).as_unsigned()[:50] << LN_VAR_SHIFT),
                             root.eq(0), rem.eq(0), left.eq(STD_BITS)]
                m.next = "SQRT"
            with m.State("SQRT"):
                # restoring square root, K steps per cycle; a step takes the next two bits
                r_, q_, v_ = rem, root, vsh
                for j in range(K):   # named signals per step keep the netlist linear in K
                    trial_rem = Cat(v_[60:62], r_[:STD_BITS + 1])   # (rem << 2) | next two bits
                    trial = Cat(Const(1, 2), q_)                    # (root << 2) | 1
                    ge = trial_rem >= trial
                    act = left > j
                    r_n = Signal.like(rem, name=f"sq_rem{j}")
                    q_n = Signal.like(root, name=f"sq_root{j}")
                    v_n = Signal.like(vsh, name=f"sq_v{j}")
                    m.d.comb += [r_n.eq(Mux(act, Mux(ge, trial_rem - trial, trial_rem), r_)),
                                 q_n.eq(Mux(act, Cat(ge, q_[:STD_BITS - 1]), q_)),
                                 v_n.eq(Mux(act, (v_ << 2)[:62], v_))]
                    r_, q_, v_ = r_n, q_n, v_n
                m.d.sync += [rem.eq(r_), root.eq(q_), vsh.eq(v_)]
                with m.If(left <= K):
                    m.d.sync += [nsh.eq(1 << LN_RECIP_BITS), quo.eq(0), drem.eq(0), left.eq(LN_RECIP_BITS + 1)]
                    m.next = "DIV"
                with m.Else():
                    m.d.sync += left.eq(left - K)
            with m.State("DIV"):
                # restoring division of 2**46 by max(root, 1), K quotient bits per cycle. root is 0
                # only for var = 0 (else root >= 64), a row of equal values where every yc = C*x - S
                # is 0 and z is 0 whatever f is: dividing by root itself gives the same outputs
                divisor = root
                d_, q_, n_ = drem, quo, nsh
                for j in range(K):
                    t = Cat(n_[LN_RECIP_BITS], d_[:STD_BITS])
                    ge = t >= divisor
                    act = left > j
                    d_n = Signal.like(drem, name=f"dv_rem{j}")
                    q_n = Signal.like(quo, name=f"dv_quo{j}")
                    n_n = Signal.like(nsh, name=f"dv_num{j}")
                    m.d.comb += [d_n.eq(Mux(act, Mux(ge, t - divisor, t), d_)),
                                 q_n.eq(Mux(act, Cat(ge, q_[:LN_RECIP_BITS]), q_)),
                                 n_n.eq(Mux(act, (n_ << 1)[:LN_RECIP_BITS + 1], n_))]
                    d_, q_, n_ = d_n, q_n, n_n
                m.d.sync += [drem.eq(d_), quo.eq(q_), nsh.eq(n_)]
                with m.If(left <= K):
                    m.next = "DONE"
                with m.Else():
                    m.d.sync += left.eq(left - K)
            with m.State("DONE"):
                with m.If(~emit_busy):
                    m.d.sync += [f_val.eq(quo[:F_BITS]), emit_go.eq(1)]
                    m.next = "IDLE"

        # ---------------------------------------------------------------- emit pipeline
        # stage R: issue reads (row buffer + constants); stage M: the sub-step's lanes selected;
        # stage A0: yc = C*x - S; stage A: yc*f;
        # stage B: z*mult+offset; stage C1: round, shift; stage C: clamp -> output register. A
        # global stall holds every stage.
        # With E = emit_lanes < L, each beat passes the pipeline in G = L/E sub-steps of E lanes
        # (the read is held for the beat; the output beat is valid after its last sub-step).
        E = P.emit_width
        G = L // E
        out_valid = Signal()
        stall = out_valid & ~self.y_o.ready
        e_s = Signal(signed(27), reset_less=True)
        e_f = Signal(unsigned(F_BITS), reset_less=True)
        e_bank = Signal()
        e_beat = Signal(range(NB + 1))
        e_sub = Signal(range(G))
        e_issue = Signal()
        a_valid, a_last = Signal(), Signal()
        b_valid, b_last = Signal(), Signal()
        a_sub, b_sub, r_sub = Signal(range(G)), Signal(range(G)), Signal(range(G))
        a0_valid, a0_last = Signal(), Signal()
        a0_sub = Signal(range(G))
        a0_f = Signal.like(e_f)
        yc0 = [Signal(signed(28), name=f"yc{i}", reset_less=True) for i in range(E)]       # |yc| < 2**26
        a0_mult = [Signal(signed(MULT_BITS), name=f"a0_mult{i}", reset_less=True) for i in range(E)]
        a0_off = [Signal(signed(OFFSET_BITS), name=f"a0_off{i}", reset_less=True) for i in range(E)]
        c1_valid, c1_last = Signal(), Signal()
        c1_sub = Signal(range(G))
        c1_v = [Signal(signed(50), name=f"c1_v{i}", reset_less=True) for i in range(E)]
        z = [Signal(signed(18), name=f"z{i}", reset_less=True) for i in range(E)]   # |z| <= 2**15 + 1
        t = [Signal(signed(50), name=f"t{i}", reset_less=True) for i in range(E)]   # |z*mult| < 2**41, |offset| < 2**47
        a_mult = [Signal(signed(MULT_BITS), name=f"a_mult{i}", reset_less=True) for i in range(E)]
        a_off = [Signal(signed(OFFSET_BITS), name=f"a_off{i}", reset_less=True) for i in range(E)]
        out_data = Signal(data.ArrayLayout(signed(8), L), reset_less=True)
        out_last = Signal()

        # the E lanes of sub-step r_sub of the beat just read
        r_x = [Signal(signed(16), name=f"r_x{j}", reset_less=True) for j in range(E)]
        r_mult = [Signal(signed(MULT_BITS), name=f"r_mult{j}", reset_less=True) for j in range(E)]
        r_off = [Signal(signed(OFFSET_BITS), name=f"r_off{j}", reset_less=True) for j in range(E)]
        with m.Switch(r_sub):
            for g in range(G):
                with m.Case(g):
                    for j in range(E):
                        m.d.comb += [r_x[j].eq(rr.data[g * E + j]), r_mult[j].eq(cr.data.mult[g * E + j]),
                                     r_off[j].eq(cr.data.offset[g * E + j])]

        with m.If(emit_go & ~emit_busy):
            m.d.sync += [emit_busy.eq(1), emit_go.eq(0), e_s.eq(st_s), e_f.eq(f_val), e_bank.eq(st_bank),
                         e_beat.eq(0), e_sub.eq(0)]
        m.d.comb += e_issue.eq(emit_busy & (e_beat < beats) & ~stall)
        m.d.comb += [rr.addr.eq(Mux(e_bank, NB, 0) + e_beat), rr.en.eq(~stall),
                     cr.addr.eq(e_beat), cr.en.eq(~stall)]
        r_valid, r_last = Signal(), Signal()
        m_valid, m_last = Signal(), Signal()
        m_sub = Signal(range(G))
        m_s = Signal.like(e_s)
        m_f = Signal.like(e_f)
        m_x = [Signal(signed(16), name=f"m_x{j}", reset_less=True) for j in range(E)]
        m_mult = [Signal(signed(MULT_BITS), name=f"m_mult{j}", reset_less=True) for j in range(E)]
        m_off = [Signal(signed(OFFSET_BITS), name=f"m_off{j}", reset_less=True) for j in range(E)]
        beat_end = e_sub == G - 1
        with m.If(~stall):
            m.d.sync += [r_valid.eq(e_issue), r_last.eq(e_issue & (e_beat == beats - 1) & beat_end),
                         r_sub.eq(e_sub)]
            with m.If(e_issue):
                with m.If(beat_end):
                    m.d.sync += [e_beat.eq(e_beat + 1), e_sub.eq(0)]
                    with m.If(e_beat == beats - 1):
                        m.d.sync += [emit_busy.eq(0), full.bit_select(e_bank, 1).eq(0)]
                with m.Else():
                    m.d.sync += e_sub.eq(e_sub + 1)
            # stage A0: yc = C*x - S; stage A: z = (yc * f + 2**29) >> 30 (two products in one
            # cycle were the unit's ECP5 critical path, 30.7 ns; bench/unit_fmax.py)
            # (f travels with its row: the next row's emit may load e_f while this one is in A0)
            # stage M: the sub-step's lanes selected from the read beat (with the row's S and f)
            m.d.sync += [m_valid.eq(r_valid), m_last.eq(r_last), m_sub.eq(r_sub), m_s.eq(e_s), m_f.eq(e_f)]
            for j in range(E):
                m.d.sync += [m_x[j].eq(r_x[j]), m_mult[j].eq(r_mult[j]), m_off[j].eq(r_off[j])]
            m.d.sync += [a0_valid.eq(m_valid), a0_last.eq(m_last), a0_sub.eq(m_sub), a0_f.eq(m_f)]
            for j in range(E):
                m.d.sync += [yc0[j].eq(channels * m_x[j] - m_s), a0_mult[j].eq(m_mult[j]),
                             a0_off[j].eq(m_off[j])]
            m.d.sync += [a_valid.eq(a0_valid), a_last.eq(a0_last), a_sub.eq(a0_sub)]
            for j in range(E):
                prod = yc0[j] * a0_f
                m.d.sync += [z[j].eq((prod + (1 << (LN_Z_SHIFT - 1))) >> LN_Z_SHIFT),
                             a_mult[j].eq(a0_mult[j]), a_off[j].eq(a0_off[j])]
            # stage B: t = z * mult + offset
            m.d.sync += [b_valid.eq(a_valid), b_last.eq(a_last), b_sub.eq(a_sub)]
            for j in range(E):
                m.d.sync += t[j].eq(z[j] * a_mult[j] + a_off[j])
            # stage C1: round and shift; stage C: clamp into the sub-step's lanes; the beat is out
            # after its last sub-step
            m.d.sync += [c1_valid.eq(b_valid), c1_last.eq(b_last), c1_sub.eq(b_sub)]
            for j in range(E):
                m.d.sync += c1_v[j].eq(round_shift(t[j], shift))   # |t| < 2**48: fits 50 bits at any shift
            m.d.sync += [out_valid.eq(c1_valid & (c1_sub == G - 1)), out_last.eq(c1_last)]
            with m.If(c1_valid):
                with m.Switch(c1_sub):
                    for g in range(G):
                        with m.Case(g):
                            for j in range(E):
                                v = c1_v[j]
                                m.d.sync += out_data[g * E + j].eq(Mux(v > 127, 127, Mux(v < -128, -128, v[:8])))
        m.d.comb += [self.y_o.valid.eq(out_valid), self.y_o.payload.data.eq(out_data),
                     self.y_o.payload.last.eq(out_last)]
        m.d.comb += [pipe_busy.eq(emit_busy | emit_go | r_valid | m_valid | a0_valid | a_valid | b_valid | c1_valid | out_valid
                                       | row_done),
                     idle.eq((full == 0) & (in_beat == 0) & ~pipe_busy)]
        # the row's bank frees when its last beat is issued (reads are done by then); a stalled
        # output keeps every register, including the read data (rr.en / cr.en low)
        return m
