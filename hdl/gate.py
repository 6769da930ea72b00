"""MoE gate unit: int16 gate logits in, top-k experts and their gate weights out, bit-exact with
:class:`accel.models.intops.IntGate` after its linear (docs/numerics.md, "MoE gate").

Per token of n = ``n_experts`` logits l (the gate linear's int16 outputs)::

    take        (1 cycle)  : logits -> register; max over the first n (comparator tree)
    scan (n + 3 cycles)    : one expert per cycle through four stages
                             P: prod = (max - l[i]) * exp_mult
                             R: u = rshift_round(prod, exp_shift)
                             U: ROM address u & 255; the integer part clamped
                             E: e = EXP2_TABLE[u & 255] >> min(u >> 8, 16); sum += e;
                                insert (l[i], i, e) into the max_k best (strict >: ties stay
                                with the lower index, scanned first)
    hand-off    (1 cycle)  : sum and the top_k chosen (index, e) -> back end; the front end
                             takes the next token in the same cycle
    back end               : recip = 2**31 // sum            (17 restoring steps, DIV_STEPS/cycle)
                             p[j] = rshift_round(e[j] * recip, 16), j < top_k (three cycles each)
                             renormalize: r2 = 2**30 // max(sum(p), 1)   (31 restoring steps)
                                          w[j] = rshift_round(p[j] * r2, 15) (three cycles each)
                             DONE: result -> output register (one beat on ``r_o``)

Front end (n + 3 cycles per token) and back end (``back_cycles``) overlap, so a token costs
max(n + 3, back_cycles(top_k, renormalize)) cycles in steady state (cost model:
:func:`accel.hdl.gate_cost.gate_cycles`, exact against simulation without stalls).

Streams (amaranth.lib.stream, valid/ready everywhere):

* ``c_i`` -- configuration: ``n_experts`` (1..max_experts), ``top_k`` (1..min(max_k,
  n_experts)), ``exp_mult`` (unsigned 15), ``exp_shift`` (0..63), ``renormalize``; accepted only
  while no token is in flight (a waiting configuration holds ``l_i`` off). :func:`gate_config`
  builds it from an IntGate.
* ``l_i`` -- one beat per token: ``data`` = max_experts int16 logits (the first n_experts are
  used), ``last`` passed through.
* ``r_o`` -- one beat per token: ``expert`` = the top_k chosen experts, best first (ties to the
  lower index), ``weight`` = their gate weights (GateResult.weights, scale 2**-15, renormalized
  if asked); slots from top_k on carry expert 0 and weight 0. ``last`` passed through.

Widths: max - l < 2**16, prod < 2**31; e <= 2**15; 2**15 <= sum <= max_experts * 2**15 (the
maximum's e is exactly 2**15), so recip <= 2**16 (17 quotient bits, the first 15 of the 32 are
zero); p <= 2**15; sum(p) <= max_k * 2**15; r2 <= 2**30 (31 bits), p * r2 <= 2**30 after the
division, w <= 2**15.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accel.models.errors import AccelError
from accel.models.intops import (EXP2_FRAC_BITS, EXP2_OUT_BITS, EXP2_TABLE, GATE_PROB_BITS, GATE_RECIP_BITS,
                                 IntGate)

from .common import check_int_param

__all__ = ["GateParams", "GateParamError", "GateUnit", "gate_config", "config_layout", "logits_layout",
           "result_layout", "back_cycles", "front_cycles", "DIV_STEPS", "EXP_MULT_BITS", "EXP_SHIFT_BITS"]

EXP_MULT_BITS = 15      # dyadic(): multipliers below 2**15 whenever the shift is above 0
EXP_SHIFT_BITS = 6      # dyadic(): shifts in [0, 62]
DIV_STEPS = 2           # restoring-division steps per cycle (both divisions): 4 in series took
                        # 22.9 ns on ECP5 (bench/unit_fmax.py), too slow for 50 MHz
RECIP_QBITS = GATE_PROB_BITS + GATE_RECIP_BITS - EXP2_OUT_BITS + 1   # 17: recip = 2**31 // sum <= 2**16
RENORM_QBITS = 2 * GATE_PROB_BITS + 1                                 # 31: r2 = 2**30 // psum <= 2**30
EXP_SHIFT_SAT = EXP2_OUT_BITS + 1   # EXP2_TABLE[f] >> s == 0 for every s >= 16 (table <= 2**15)


class GateParamError(AccelError, ValueError):
    """A gate unit parameter (or configuration) is out of range; the message names the value
    and the fix."""


@dataclass(frozen=True)
class GateParams:
    """Generator parameters of the gate unit: ``max_experts`` logits per token (the largest
    expert count it serves) and ``max_k`` output slots (the largest top-k)."""
    max_experts: int = 16
    max_k: int = 2

    def __post_init__(self):
        check_int_param(GateParamError, "GateParams", "max_experts", self.max_experts, 2, 64,
                        "size it to the model's expert count (e.g. 4 for digits-moe, 16 for M3ViT)")
        check_int_param(GateParamError, "GateParams", "max_k", self.max_k, 1, min(8, self.max_experts),
                        f"max_k is the largest top-k, at most 8 and at most max_experts={self.max_experts}")

    @property
    def index_bits(self) -> int:
        return max(1, (self.max_experts - 1).bit_length())

    @property
    def sum_bits(self) -> int:
        """Bits of sum(e) <= max_experts * 2**15 (also bounds sum(p) <= max_k * 2**15)."""
        return (self.max_experts << EXP2_OUT_BITS).bit_length()


def front_cycles(n_experts: int) -> int:
    """Cycles from taking a token to the hand-off: take, n issues, three pipeline stages."""
    return n_experts + 4


def back_cycles(top_k: int, renormalize: bool) -> int:
    """Cycles from the hand-off to DONE (where the next hand-off may happen)."""
    c = -(-RECIP_QBITS // DIV_STEPS) + 3 * top_k + 1       # division, then 3 cycles a slot
    if renormalize:
        c += -(-RENORM_QBITS // DIV_STEPS) + 3 * top_k
    return c


def config_layout(p: GateParams) -> data.StructLayout:
    return data.StructLayout({"n_experts": unsigned(p.max_experts.bit_length()),
                              "top_k": unsigned(p.max_k.bit_length()),
                              "exp_mult": unsigned(EXP_MULT_BITS), "exp_shift": unsigned(EXP_SHIFT_BITS),
                              "renormalize": 1})


def logits_layout(p: GateParams) -> data.StructLayout:
    return data.StructLayout({"data": data.ArrayLayout(signed(16), p.max_experts), "last": 1})


def result_layout(p: GateParams) -> data.StructLayout:
    return data.StructLayout({"expert": data.ArrayLayout(unsigned(p.index_bits), p.max_k),
                              "weight": data.ArrayLayout(unsigned(16), p.max_k), "last": 1})


def gate_config(gate: IntGate, params: GateParams) -> dict:
    """The ``c_i`` payload that makes a unit with ``params`` compute ``gate`` (after its linear).

    A multiplier of 2**15 or more (dyadic() gives one only with shift 0, for ratios >= 2**15)
    is sent as 2**15 - 1: with shift 0 both give u >= 2**14 for every difference >= 1, hence
    e = 0, and u = 0 at the maximum -- the same gate."""
    n = gate.linear.d_out
    if not 1 <= n <= params.max_experts:
        raise GateParamError(f"gate_config: the gate has {n!r} experts; the unit serves at most "
                             f"max_experts={params.max_experts!r}; build it with max_experts >= {n}")
    if not 1 <= gate.top_k <= min(params.max_k, n):
        raise GateParamError(f"gate_config: top_k={gate.top_k!r} must be in [1, {min(params.max_k, n)}] "
                             f"(max_k={params.max_k!r}, {n} experts); build the unit with max_k >= {gate.top_k}")
    mult, shift = int(gate.exp_mult), int(gate.exp_shift)
    if not 0 <= shift < 1 << EXP_SHIFT_BITS or mult < 0 or (mult >= 1 << EXP_MULT_BITS and shift):
        raise GateParamError(f"gate_config: exp_mult={mult!r}, exp_shift={shift!r} out of range: the unit takes "
                             f"a multiplier below 2**{EXP_MULT_BITS} (any with shift 0) and a shift in "
                             f"[0, {(1 << EXP_SHIFT_BITS) - 1}]; derive them with intops.dyadic()")
    return {"n_experts": n, "top_k": int(gate.top_k), "exp_mult": min(mult, (1 << EXP_MULT_BITS) - 1),
            "exp_shift": shift, "renormalize": int(bool(gate.renormalize))}


class GateUnit(wiring.Component):
    def __init__(self, params: GateParams | None = None, **kwargs):
        if params is None:
            params = GateParams(**kwargs)
        elif kwargs:
            raise GateParamError(f"GateUnit: got both params={params!r} and keywords {sorted(kwargs)!r}")
        if not isinstance(params, GateParams):
            raise GateParamError(f"GateUnit: params={params!r} is not a GateParams")
        self._params = params
        super().__init__({
            "c_i": In(stream.Signature(config_layout(params))),
            "l_i": In(stream.Signature(logits_layout(params))),
            "r_o": Out(stream.Signature(result_layout(params))),
        })

    params = property(lambda self: self._params)

    def elaborate(self, platform):
        m = Module()
        P = self._params
        E, K, IB, DW = P.max_experts, P.max_k, P.index_bits, P.sum_bits
        S = DIV_STEPS

        # ---------------------------------------------------------------- configuration
        n_exp = Signal(E.bit_length())
        top_k = Signal(K.bit_length())
        exp_mult = Signal(EXP_MULT_BITS)
        es_m1 = Signal(EXP_SHIFT_BITS)      # exp_shift - 1 and exp_shift == 0, set with it
        es_zero = Signal()
        renorm = Signal()
        lane_on = Signal(E)                 # i < n_experts, per logit, set with the configuration
        scan_end = Signal(E.bit_length() + 1)   # n_experts + 2 (the scan's last cycle), likewise
        idle = Signal()
        m.d.comb += self.c_i.ready.eq(idle)
        with m.If(self.c_i.valid & self.c_i.ready):
            c = self.c_i.payload
            m.d.sync += [n_exp.eq(c.n_experts), top_k.eq(c.top_k), exp_mult.eq(c.exp_mult),
                         renorm.eq(c.renormalize),
                         es_m1.eq(c.exp_shift - 1), es_zero.eq(c.exp_shift == 0),
                         lane_on.eq(Cat(*[i < c.n_experts for i in range(E)])), scan_end.eq(c.n_experts + 2)]

        # ---------------------------------------------------------------- front end
        lg = Signal(data.ArrayLayout(signed(16), E))
        mx = Signal(signed(16))
        f_last = Signal()
        cnt = Signal(range(E + 3))
        l_ready = Signal()
        f_done = Signal()
        b_free = Signal()
        go = Signal()                       # hand-off this cycle
        take = self.l_i.valid & self.l_i.ready
        m.d.comb += [self.l_i.ready.eq(l_ready & ~self.c_i.valid), go.eq(f_done & b_free)]

        # max over the first n_experts logits of the incoming beat (a comparator tree)
        vals = [Mux(lane_on[i], self.l_i.payload.data[i], -(1 << 15)) for i in range(E)]
        while len(vals) > 1:
            nxt = [Mux(a > b, a, b) for a, b in zip(vals[0::2], vals[1::2])]
            vals = nxt + vals[len(nxt) * 2:]
        in_max = vals[0]

        s_sum = Signal(DW)
        t_valid = Signal(K)
        t_logit = Signal(data.ArrayLayout(signed(16), K))
        t_idx = Signal(data.ArrayLayout(unsigned(IB), K))
        t_e = Signal(data.ArrayLayout(unsigned(16), K))

        def start_token():
            m.d.sync += [lg.eq(self.l_i.payload.data), mx.eq(in_max), f_last.eq(self.l_i.payload.last),
                         cnt.eq(0), s_sum.eq(0), t_valid.eq(0)]

        with m.FSM(name="front") as ffsm:
            with m.State("IDLE"):
                m.d.comb += l_ready.eq(1)
                with m.If(take):
                    start_token()
                    m.next = "SCAN"
            with m.State("SCAN"):
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt == scan_end):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [f_done.eq(1), l_ready.eq(b_free)]
                with m.If(b_free):
                    m.next = "IDLE"
                    with m.If(take):
                        start_token()
                        m.next = "SCAN"

        # stage P: prod = (max - l[i]) * exp_mult
        p_valid = Signal()
        p_prod = Signal(16 + EXP_MULT_BITS)
        p_logit = Signal(signed(16))
        p_idx = Signal(IB)
        cur = lg[cnt[:max(1, (E - 1).bit_length())]]
        diff = (mx - cur)[:16]              # max - l in [0, 2**16)
        m.d.sync += [p_valid.eq(ffsm.ongoing("SCAN") & (cnt < n_exp)), p_prod.eq(diff * exp_mult),
                     p_logit.eq(cur), p_idx.eq(cnt)]

        # stage U: u = rshift_round(prod, exp_shift); table address, clamped integer part
        rom = Memory(shape=unsigned(16), depth=1 << EXP2_FRAC_BITS, init=[int(x) for x in EXP2_TABLE])
        m.submodules.exp_rom = rom
        rrp = rom.read_port(domain="sync")
        # (u is registered first: its shift, increment, the table address and the clamp in one
        # cycle were a 10-level path on the ECP5)
        u = Signal(16 + EXP_MULT_BITS)
        r_valid = Signal()
        r_logit = Signal(signed(16))
        r_idx = Signal(IB)
        m.d.sync += [u.eq(Mux(es_zero, p_prod, ((p_prod >> es_m1) + 1) >> 1)),
                     r_valid.eq(p_valid), r_logit.eq(p_logit), r_idx.eq(p_idx)]
        m.d.comb += rrp.addr.eq(u[:EXP2_FRAC_BITS])
        ip = u[EXP2_FRAC_BITS:]
        u_valid = Signal()
        u_sh = Signal(range(EXP_SHIFT_SAT + 1))
        u_logit = Signal(signed(16))
        u_idx = Signal(IB)
        m.d.sync += [u_valid.eq(r_valid), u_sh.eq(Mux(ip >= EXP_SHIFT_SAT, EXP_SHIFT_SAT, ip)),
                     u_logit.eq(r_logit), u_idx.eq(r_idx)]

        # stage E: e, the running sum, insertion into the sorted best-K list
        e = Signal(16)
        m.d.comb += e.eq(rrp.data >> u_sh)
        with m.If(u_valid):
            m.d.sync += s_sum.eq(s_sum + e)
            beats = [Signal(name=f"beats{j}") for j in range(K)]
            for j in range(K):
                m.d.comb += beats[j].eq(~t_valid[j] | (u_logit > t_logit[j]))
            for j in range(K):
                with m.If(beats[j]):
                    if j > 0:
                        with m.If(beats[j - 1]):
                            m.d.sync += [t_valid[j].eq(t_valid[j - 1]), t_logit[j].eq(t_logit[j - 1]),
                                         t_idx[j].eq(t_idx[j - 1]), t_e[j].eq(t_e[j - 1])]
                        with m.Else():
                            m.d.sync += [t_valid[j].eq(1), t_logit[j].eq(u_logit), t_idx[j].eq(u_idx),
                                         t_e[j].eq(e)]
                    else:
                        m.d.sync += [t_valid[j].eq(1), t_logit[j].eq(u_logit), t_idx[j].eq(u_idx),
                                     t_e[j].eq(e)]

        # ---------------------------------------------------------------- back end
        b_idx = Signal(data.ArrayLayout(unsigned(IB), K))
        b_e = Signal(data.ArrayLayout(unsigned(16), K))
        b_p = Signal(data.ArrayLayout(unsigned(16), K))   # probabilities, then weights
        b_last = Signal()
        psum = Signal(DW)
        jj = Signal(range(K + 1))
        rem = Signal(DW)
        quo = Signal(RENORM_QBITS)
        num = Signal(RENORM_QBITS)          # dividend bits still to shift in, from the top
        left = Signal(range(RENORM_QBITS + 1))
        prod = Signal(16 + RENORM_QBITS)    # PROB / RENORM: the slot's product, rounded next cycle
        mul_a = Signal(16)                  # ... and its operands, registered the cycle before
        mul_b = Signal(RENORM_QBITS)

        # restoring division, S steps per cycle: quo = dividend // divisor. The divisor is a
        # register: the sum of e at the start, the sum of p for the renormalization. (p sums to
        # 0 only when every p is 0, and then every weight is 0 whatever the quotient, so the
        # reference's max(psum, 1) needs no hardware.)
        divisor = Signal(DW)
        r_, q_, n_ = rem, quo, num
        for j in range(S):
            t = Cat(n_[RENORM_QBITS - 1], r_)
            ge = t >= divisor
            act = left > j
            r_n = Signal.like(rem, name=f"dv_rem{j}")
            q_n = Signal.like(quo, name=f"dv_quo{j}")
            n_n = Signal.like(num, name=f"dv_num{j}")
            m.d.comb += [r_n.eq(Mux(act, Mux(ge, t - divisor, t), r_)),
                         q_n.eq(Mux(act, Cat(ge, q_[:RENORM_QBITS - 1]), q_)),
                         n_n.eq(Mux(act, (n_ << 1)[:RENORM_QBITS], n_))]
            r_, q_, n_ = r_n, q_n, n_n

        def start_back():
            m.d.sync += [divisor.eq(s_sum), b_last.eq(f_last), b_p.eq(0), psum.eq(0), jj.eq(0),
                         rem.eq(1 << (EXP2_OUT_BITS - 1)), num.eq(0), quo.eq(0), left.eq(RECIP_QBITS)]
            for j in range(K):
                chosen = (j < top_k) & t_valid[j]
                m.d.sync += [b_idx[j].eq(Mux(chosen, t_idx[j], 0)), b_e[j].eq(Mux(chosen, t_e[j], 0))]

        def write_p(value):
            for j in range(K):
                with m.If(jj == j):
                    m.d.sync += b_p[j].eq(value)

        last_slot = jj + 1 >= top_k
        o_valid = Signal()
        o_pay = Signal(result_layout(P))
        out_free = ~o_valid | self.r_o.ready
        with m.If(self.r_o.ready):
            m.d.sync += o_valid.eq(0)

        jsel = jj[:max(1, (K - 1).bit_length())]
        with m.FSM(name="back") as bfsm:
            with m.State("IDLE"):
                m.d.comb += b_free.eq(1)
                with m.If(go):
                    start_back()
                    m.next = "DIV1"
            with m.State("DIV1"):
                m.d.sync += [rem.eq(r_), quo.eq(q_), num.eq(n_)]
                with m.If(left <= S):
                    m.next = "PROB"
                with m.Else():
                    m.d.sync += left.eq(left - S)
            with m.State("PROB"):
                # p = rshift_round(e * recip, 16), recip = quo (<= 2**16): the operands on this
                # cycle, the product on the next, the rounding and the running sum on the third
                # (all in one cycle was 20.6 ns on ECP5; operand select and product, 10.8 levels)
                m.d.sync += [mul_a.eq(b_e[jsel]), mul_b.eq(quo[:RECIP_QBITS])]
                m.next = "PROB_MUL"
            with m.State("PROB_MUL"):
                m.d.sync += prod.eq(mul_a * mul_b)
                m.next = "PROB_ADD"
            with m.State("PROB_ADD"):
                p = (prod + (1 << (GATE_RECIP_BITS - 1))) >> GATE_RECIP_BITS
                write_p(p)
                m.d.sync += [psum.eq(psum + p), jj.eq(jj + 1)]
                m.next = "PROB"
                with m.If(last_slot):
                    with m.If(renorm):
                        m.d.sync += [divisor.eq(psum + p), rem.eq(0), quo.eq(0), num.eq(1 << (RENORM_QBITS - 1)),
                                     left.eq(RENORM_QBITS)]
                        m.next = "DIV2"
                    with m.Else():
                        m.next = "DONE"
            with m.State("DIV2"):
                m.d.sync += [rem.eq(r_), quo.eq(q_), num.eq(n_)]
                with m.If(left <= S):
                    m.d.sync += jj.eq(0)
                    m.next = "RENORM"
                with m.Else():
                    m.d.sync += left.eq(left - S)
            with m.State("RENORM"):
                # w = rshift_round(p * r2, 15), r2 = quo (<= 2**30): operands, product, rounding
                m.d.sync += [mul_a.eq(b_p[jsel]), mul_b.eq(quo)]
                m.next = "RENORM_MUL"
            with m.State("RENORM_MUL"):
                m.d.sync += prod.eq(mul_a * mul_b)
                m.next = "RENORM_W"
            with m.State("RENORM_W"):
                w = (prod + (1 << (GATE_PROB_BITS - 1))) >> GATE_PROB_BITS
                write_p(w)
                m.d.sync += jj.eq(jj + 1)
                m.next = "RENORM"
                with m.If(last_slot):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += b_free.eq(out_free)
                with m.If(out_free):
                    m.d.sync += [o_valid.eq(1), o_pay.expert.eq(b_idx), o_pay.weight.eq(b_p),
                                 o_pay.last.eq(b_last)]
                    m.next = "IDLE"
                    with m.If(go):
                        start_back()
                        m.next = "DIV1"

        m.d.comb += [self.r_o.valid.eq(o_valid), self.r_o.payload.eq(o_pay),
                     idle.eq(ffsm.ongoing("IDLE") & bfsm.ongoing("IDLE") & ~o_valid)]
        return m

