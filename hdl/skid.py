"""A two-entry skid buffer: a stream stage whose ``ready`` towards the producer is a flip-flop.

A register slice that loads "when empty or when the consumer takes" (``room = ~valid | ready``)
passes the consumer's ``ready`` straight back to the producer. Between units placed across the
ECP5 that combinational ready is a cross-chip wire in the middle of a handshake path. Here the
producer sees ``i.ready = ~skid_valid``: when the consumer stalls, the beat the producer already
sent is caught in the skid register, and the producer stops a cycle later. Full throughput, one
cycle of latency, payload and valid from flip-flops on both sides.
"""
from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """``i`` -> two registers -> ``o``; ``i.ready`` and ``o.valid`` are registers."""

    def __init__(self, shape):
        sig = stream.Signature(shape)     # Amaranth refuses a shape it cannot cast, naming it
        self._shape = shape
        super().__init__({"i": In(sig), "o": Out(sig)})

    @property
    def shape(self):
        return self._shape

    def elaborate(self, platform):
        m = Module()
        main = Signal(self._shape, name="main")
        main_v = Signal()
        skid = Signal(self._shape, name="skid")
        skid_v = Signal()
        m.d.comb += [self.i.ready.eq(~skid_v), self.o.valid.eq(main_v), self.o.payload.eq(main)]
        with m.If(~main_v | self.o.ready):            # the main register is free this cycle
            with m.If(skid_v):
                m.d.sync += [main.eq(skid), main_v.eq(1), skid_v.eq(0)]
            with m.Else():
                m.d.sync += [main.eq(self.i.payload), main_v.eq(self.i.valid)]
        with m.Elif(self.i.valid & ~skid_v):          # held: the beat in flight waits in the skid
            m.d.sync += [skid.eq(self.i.payload), skid_v.eq(1)]
        return m
