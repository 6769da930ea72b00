"""Whole-model latency of a compiled program on the accelerator top: a cycle model per op.

Every op is a few instructions (accel.hdl.program) run in order; the controller fetches them one
after another, so each fetched instruction costs a fetch (memory latency + 8 words + the decode
loop, ``FETCH_CYCLES``). While an op runs, three things go on at once and the slowest sets its
length: the memory port moving its words (one 64-bit word per cycle at most), the kernel's own
compute (LayerNorm statistics, the gate unit, attention divisions), and the writer (one cycle per
output beat plus one per word). Measured constants are named below; ``accel sim model`` (and
``accel run``'s simulate step) print the model against the RTL simulation, per op kind and in total.

Expert ops depend on the routing: the expert token counts come from the reference run of the
image (an expert with no tokens is skipped: its instructions are never fetched).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accel.hdl.attention import DIV_STEPS
from accel.hdl.gate_cost import gate_cycles
from accel.hdl.layernorm_cost import layernorm_cycles
from accel.hdl.program import INSTR_WORDS, MODE, OP, PORT, WMODE
from accel.hdl.residual import residual_cycles

__all__ = ["MemoryTiming", "predict_cycles", "op_cycles", "expert_counts"]

FETCH_OVERHEAD = 8     # cycles per fetched instruction beyond latency + 8 words (FIFOs, decode, issue)
PASS_OVERHEAD = 6      # cycles per attention pass beyond the reciprocal's DIV_STEPS


@dataclass(frozen=True)
class MemoryTiming:
    """The memory port's behaviour: read latency (address to first word) and sustained words per
    cycle (the bus delivers at most one 64-bit word per cycle)."""
    latency_cycles: float = 2.0
    words_per_cycle: float = 1.0

    @property
    def fetch_cycles(self) -> float:
        return self.latency_cycles + INSTR_WORDS / self.words_per_cycle + FETCH_OVERHEAD


def expert_counts(ref, image_q: np.ndarray) -> dict:
    """{layer: tokens per expert} of one image (the reference's routing)."""
    out = ref.run(image_q[None] if image_q.ndim == 3 else image_q[:1])
    counts = {}
    moe_layers = [i for i, b in enumerate(ref.blocks) if hasattr(b.mlp, "gate")]
    for layer, rt in zip(moe_layers, out.routing):
        e = len(ref.blocks[layer].mlp.experts)
        counts[layer] = np.bincount(np.asarray(rt)[0].reshape(-1), minlength=e)
    return counts


def _read_words(ins: dict, params, n_rows: int) -> int:
    mode = ins.get("mode", 0)
    if mode == MODE.RAW:
        return ins["n_beats"] * ins["wpb"]
    if mode == MODE.ROWS:
        return n_rows * ins["n_chunks"] * (ins.get("na", 1) * ins["wa"] + ins.get("wb", 0))
    NL = params.linear.n_lanes
    groups = -(-n_rows // NL)
    J, K = ins["n_reps"], ins["n_chunks"]
    return J * (ins["wpb"] + K * ins["wb"] + groups * K * NL * ins["wa"]) if n_rows else 0


def op_cycles(instrs: list[dict], params, counts: dict | None, layer, timing: MemoryTiming) -> float:
    """Predicted cycles of one op's instructions (the SKIP of an empty expert included)."""
    P = params
    bw = timing.words_per_cycle
    fetched = 0
    words = 0.0
    writer = 0.0
    kernel = 0.0
    extra = 0.0
    beat_words = 1          # words per output beat of the armed writer mode
    total = 0.0
    i = 0
    while i < len(instrs):
        ins = instrs[i]
        fetched += 1
        op = ins["op"]
        if op == OP.SKIP:
            n = int(counts[layer][ins["expert"]]) if counts and layer in counts else 1
            if n == 0:
                i += 1 + ins["skip"]
                continue
        elif op == OP.READ:
            n_rows = ins.get("n_rows", 0)
            if ins.get("count_rows"):
                n_rows = int(counts[layer][ins["expert"]]) if counts and layer in counts else 0
            w = _read_words(ins, P, n_rows)
            words += w
            if ins.get("mode") == MODE.RAW and ins.get("port") == PORT.LN_C:
                kernel += w / bw            # the constants load before the first row
            if ins.get("mode") == MODE.LIN and n_rows:
                # the sequencer spends lanes + 2 cycles per token group looking rows up and issues
                # one piece per cycle: with 1-word pieces that shows beyond its lead
                NL, K, wa = P.linear.n_lanes, ins["n_chunks"], ins["wa"]
                per_group = max(0, NL + 2 + K * NL - K * NL * wa)
                # ... the lead it gains on a tile's multi-word descriptor and weight pieces, up to
                # the word FIFO's credits
                lead = min(P.fifo_words, ins["wpb"] - 1 + K * (ins["wb"] - 1))
                extra += ins["n_reps"] * max(0, -(-n_rows // NL) * per_group - lead)
            port = ins.get("port")
            if ins.get("mode") == MODE.ROWS and port == PORT.LN_X:
                kernel += layernorm_cycles(n_rows, ins["n_chunks"] * P.layernorm.lanes, P.layernorm, config=False)
            if ins.get("mode") == MODE.ROWS and port == PORT.RES_I:
                kernel += residual_cycles(n_rows * ins["n_chunks"], P.residual)
            if ins.get("mode") == MODE.ROWS and port == PORT.GATE_L:
                meta = ins.get("meta", {})
                kernel += gate_cycles(n_rows, meta.get("experts", P.gate.max_experts), meta.get("top_k", P.gate.max_k),
                                      meta.get("renormalize", False))
            if ins.get("mode") == MODE.ROWS and port == PORT.ATT_Q:
                # the reciprocal's division, and a serial output stage's further cycles per beat
                # (AttentionParams.out_steps), in series with the pass's memory traffic
                extra += DIV_STEPS + PASS_OVERHEAD + n_rows * ins["n_chunks"] * (P.attention.out_steps - 1)
        elif op == OP.WAIT:
            beats = ins.get("n_beats", 0)
            if ins.get("count_rows"):
                beats = (int(counts[layer][ins["expert"]]) if counts and layer in counts else 0) * ins["n_reps"]
            writer += beats * (1 + beat_words)
            # the end of a phase: its memory traffic, writer and kernel ran side by side
            total += max(words / bw, writer, kernel) + extra
            words = writer = kernel = extra = 0.0
        elif op == OP.WRITE:
            beat_words = _writer_beat_words(ins, P)
        i += 1
    return total + fetched * timing.fetch_cycles + max(words / bw, writer, kernel) + extra


def _writer_beat_words(ins, P) -> int:
    """Cycles per output beat beyond the take: words written (or queue entries for the gate)."""
    mode = ins.get("mode")
    if mode == WMODE.LIN:
        return P.linear.t_out // (4 if ins.get("out16") else 8)
    if mode == WMODE.ROWS:
        return P.layernorm.lanes // (8 if ins.get("port", 0) == 0 else 4)
    if mode == WMODE.ATT:
        return ins.get("na", 1) * P.attention.t_a // 8
    return ins.get("na", 1)                 # gate: one queue write per chosen expert


def predict_cycles(comp, ref, image_q: np.ndarray, timing: MemoryTiming | None = None) -> tuple[int, dict, list]:
    """(total cycles, cycles per op kind, [(op, cycles)]) of one image."""
    from accel.sim.model_runner import kind_of, op_of
    timing = timing or MemoryTiming()
    counts = expert_counts(ref, image_q[0] if image_q.ndim == 4 else image_q)
    ops: list[tuple[str, list]] = []
    for ins in comp.program:
        op = op_of(ins["comment"])
        if not ops or ops[-1][0] != op:
            ops.append((op, []))
        ops[-1][1].append(ins)
    per_op, by_kind = [], {}
    for op, instrs in ops:
        layer = op.split("/")[0]
        layer = int(layer) if layer.isdigit() else layer
        c = op_cycles(instrs, comp.params, counts, layer, timing)
        per_op.append((op, c))
        k = kind_of(op)
        by_kind[k] = by_kind.get(k, 0) + c
    total = sum(c for _, c in per_op)
    return int(round(total)), {k: int(round(v)) for k, v in by_kind.items()}, per_op
