"""Which multipliers go to DSP blocks and which to LUTs, under a board's DSP budget.

Yosys maps every ``$mul`` cell of two or more bits per operand to DSP blocks (``synth_ecp5``: the
18x18 MULT18X18D; ``synth_ice40 -dsp``: the 16x16 SB_MAC16), cutting wide products into several.
When the elaborated design needs more DSP blocks than the part has, :func:`plan_multipliers`
keeps the multipliers that save the most LUTs per DSP block on DSPs and builds the rest from LUTs
(Yosys ``booth``: a radix-4 Booth multiplier; ``techmap`` for products too small for ``booth``),
cheapest first, until the estimate is within the budget. The choice is made on the RTLIL Amaranth
writes, before synthesis, and handed to Yosys as a script (:meth:`MultiplierPlan.yosys_script`)
run after ``read_rtlil``; the simulated RTL is unchanged (only how synthesis builds the products).

The DSP count per multiplier is an estimate (``ceil(a / w) * ceil(b / w)`` blocks for an a x b
product on w x w blocks); synthesis counts the real cells and the build checks them against the
part, so an estimate that is off shows up as an exact "does not fit" after synthesis.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from accel.models.errors import AccelError

__all__ = ["Multiplier", "MultiplierPlan", "DSP_WIDTH", "rtlil_multipliers", "plan_multipliers"]

DSP_WIDTH = {"ecp5": 18, "ice40": 16}    # operand width of one DSP block's multiplier

_MODULE = re.compile(r"^module (\S+)$", re.M)
_CELL = re.compile(r"^\s*cell \$mul (\S+)\n((?:\s*parameter \S+ \S+\n)+)", re.M)
_PARAM = re.compile(r"parameter \\(\w+) (\S+)")


@dataclass(frozen=True)
class Multiplier:
    module: str          # RTLIL module name without the leading backslash, e.g. "top.core.lin"
    cell: str            # RTLIL cell name, e.g. "$622"
    a_bits: int
    b_bits: int
    y_bits: int

    def dsp_blocks(self, width: int) -> int:
        """DSP blocks of ``width`` x ``width`` this product takes (0 when Yosys would not use one)."""
        if min(self.a_bits, self.b_bits) < 2:
            return 0
        return math.ceil(self.a_bits / width) * math.ceil(self.b_bits / width)

    @property
    def lut_cost(self) -> int:
        """A relative LUT cost of building the product from logic (partial-product bits)."""
        return self.a_bits * self.b_bits

    @property
    def booth_ok(self) -> bool:
        """Yosys ``booth`` handles it (operands at least 4 x 4, result at least 8 bits)."""
        return min(self.a_bits, self.b_bits) >= 4 and self.y_bits >= 8

    @property
    def selector(self) -> str:
        return f"{self.module}/{self.cell}"


def rtlil_multipliers(rtlil: str) -> list[Multiplier]:
    """Every ``$mul`` cell of an RTLIL text, with its module and operand widths."""
    starts = [(m.start(), m.group(1).lstrip("\\")) for m in _MODULE.finditer(rtlil)]
    out = []
    for c in _CELL.finditer(rtlil):
        module = next((name for pos, name in reversed(starts) if pos < c.start()), None)
        if module is None:
            raise AccelError(f"RTLIL cell {c.group(1)!r} is outside any module: not an RTLIL file Amaranth wrote")
        p = dict(_PARAM.findall(c.group(2)))
        out.append(Multiplier(module, c.group(1), int(p["A_WIDTH"]), int(p["B_WIDTH"]), int(p["Y_WIDTH"])))
    return out


@dataclass(frozen=True)
class MultiplierPlan:
    family: str
    budget: int                          # DSP blocks allowed
    on_dsp: tuple[Multiplier, ...]
    on_luts: tuple[Multiplier, ...]

    @property
    def width(self) -> int:
        return DSP_WIDTH[self.family]

    @property
    def dsp_estimate(self) -> int:
        return sum(m.dsp_blocks(self.width) for m in self.on_dsp)

    @property
    def dsp_before(self) -> int:
        return self.dsp_estimate + sum(m.dsp_blocks(self.width) for m in self.on_luts)

    def yosys_script(self) -> str:
        """Yosys commands to run after ``read_rtlil``: the chosen products become LUT logic."""
        lines = [f"# accel: {len(self.on_luts)} of {len(self.on_luts) + len(self.on_dsp)} multipliers in LUTs, "
                 f"DSP estimate {self.dsp_before} -> {self.dsp_estimate} of {self.budget}"]
        if self.on_luts:
            lines.append("proc")
            booth = [m.selector for m in self.on_luts if m.booth_ok]
            small = [m.selector for m in self.on_luts if not m.booth_ok]
            for i in range(0, len(booth), 32):
                lines.append("booth " + " ".join(booth[i:i + 32]))
            for i in range(0, len(small), 32):
                lines.append("techmap -map +/techmap.v " + " ".join(small[i:i + 32]))
        return "\n".join(lines) + "\n"

    def by_module(self) -> dict[str, dict[str, int]]:
        """Per module: multipliers on DSP blocks / in LUTs and the DSP blocks they take."""
        out: dict[str, dict[str, int]] = {}
        for where, ms in (("dsp", self.on_dsp), ("luts", self.on_luts)):
            for m in ms:
                d = out.setdefault(m.module, {"on_dsp": 0, "in_luts": 0, "dsp_blocks": 0})
                d["on_dsp" if where == "dsp" else "in_luts"] += 1
                if where == "dsp":
                    d["dsp_blocks"] += m.dsp_blocks(self.width)
        return out

    def to_json(self) -> dict:
        return {"family": self.family, "dsp_budget": self.budget, "dsp_estimate_all_on_dsp": self.dsp_before,
                "dsp_estimate": self.dsp_estimate, "multipliers_on_dsp": len(self.on_dsp),
                "multipliers_in_luts": len(self.on_luts), "by_module": self.by_module()}


def plan_multipliers(muls: list[Multiplier], family: str, budget: int) -> MultiplierPlan:
    """Keep the design within ``budget`` DSP blocks: move the products cheapest in LUTs per DSP
    block saved to LUTs until the estimate fits. Every product stays on DSPs when it already fits."""
    if family not in DSP_WIDTH:
        raise AccelError(f"no DSP model for FPGA family {family!r}; known: {', '.join(DSP_WIDTH)}")
    if budget < 0:
        raise AccelError(f"DSP budget {budget!r} must be 0 or more")
    w = DSP_WIDTH[family]
    need = sum(m.dsp_blocks(w) for m in muls)
    users = sorted((m for m in muls if m.dsp_blocks(w)), key=lambda m: (m.lut_cost / m.dsp_blocks(w), m.selector))
    moved = []
    for m in users:
        if need <= budget:
            break
        moved.append(m)
        need -= m.dsp_blocks(w)
    keep = tuple(m for m in muls if m not in set(moved))
    return MultiplierPlan(family, budget, keep, tuple(moved))
