"""hdl/common.py: the split product and the rounding shift, against Python integers."""
import random

import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from accel.hdl.common import product_pieces, round_shift, tree_sum


def _shape(width, is_signed):
    return signed(width) if is_signed else unsigned(width)


def _range(width, is_signed):
    return (-(1 << (width - 1)), (1 << (width - 1)) - 1) if is_signed else (0, (1 << width) - 1)


@pytest.mark.parametrize("wa,sa,wb,sb", [(28, True, 24, False), (18, True, 17, False), (35, True, 35, True),
                                         (5, False, 40, True), (17, False, 17, False), (2, True, 3, True)])
def test_partial_products_sum_to_the_product(wa, sa, wb, sb):
    a, b = Signal(_shape(wa, sa)), Signal(_shape(wb, sb))
    pieces = product_pieces(a, b)
    for v, _ in pieces:           # every partial fits one 18 x 18 signed block
        assert v.operator == "*" and all(len(op) <= 17 for op in v.operands)
    y = Signal(signed(wa + wb + 1))
    m = Module()
    m.d.comb += y.eq(tree_sum([v << s for v, s in pieces]))
    (la, ha), (lb, hb) = _range(wa, sa), _range(wb, sb)
    rng = random.Random(wa * 100 + wb)
    cases = [(x, z) for x in (la, ha, 0, 1) for z in (lb, hb, 0, 1)]
    cases += [(rng.randint(la, ha), rng.randint(lb, hb)) for _ in range(200)]

    async def bench(ctx):
        for x, z in cases:
            ctx.set(a, x)
            ctx.set(b, z)
            assert ctx.get(y) == x * z, (x, z)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_piece_width_is_checked():
    with pytest.raises(ValueError, match=r"piece_bits=1: must be at least 2"):
        product_pieces(Signal(8), Signal(8), piece_bits=1)


def test_round_shift_matches_round_half_up():
    x, s = Signal(signed(20)), Signal(5)
    y = Signal(signed(21))
    m = Module()
    m.d.comb += y.eq(round_shift(x, s))
    rng = random.Random(3)
    cases = [(v, k) for v in (-(1 << 19), (1 << 19) - 1, -1, 0, 1, 3, -3) for k in range(20)]
    cases += [(rng.randint(-(1 << 19), (1 << 19) - 1), rng.randint(0, 19)) for _ in range(200)]

    async def bench(ctx):
        for v, k in cases:
            ctx.set(x, v)
            ctx.set(s, k)
            assert ctx.get(y) == (v + ((1 << k) >> 1)) >> k, (v, k)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
