"""Which multipliers go to DSP blocks and which to LUTs, under a board's DSP budget.

Yosys maps every ``$mul`` cell of two or more bits per operand to DSP blocks (``synth_ecp5``: the
18x18 MULT18X18D; ``synth_ice40 -dsp``: the 16x16 SB_MAC16), cutting wide products into several.
When the elaborated design needs more DSP blocks than the part has, :func:`plan_multipliers`
keeps the multipliers that save the most LUTs per DSP block on DSPs and builds the rest from LUTs
(Yosys ``booth``: a radix-4 Booth multiplier; ``techmap`` for products too small for ``booth``),
cheapest first, until the estimate is within the budget. The choice is made on the RTLIL Amaranth
writes, before synthesis, and handed to Yosys as a script (:meth:`MultiplierPlan.yosys_script`)
run after ``read_rtlil``; the simulated RTL is unchanged (only how synthesis builds the products).

The DSP count per multiplier follows Yosys ``mul2dsp``: an a x b product on w x w blocks is cut
into slices of w bits per operand, and a slice narrower than 2 bits stays in logic. Counted on
the widths Amaranth writes, this overshoots: synthesis first flattens the design, merges
duplicate products and narrows operands (``wreduce``). :func:`probe_script` runs those same
passes with every product tagged, and :func:`probed_multipliers` reads back the products as the
DSP mapping sees them (on the smallest digits-moe design: 211 blocks instead of 232; with the 53
products the plan then moves to LUTs, synthesis maps 154 MULT18X18D against the part's 156). A
plan made on probed products repeats the passes
in its script and selects the products by their tag. Synthesis still counts the real cells and
the build checks them against the part, so an estimate that is off shows up as an exact "does
not fit" after synthesis.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from accel.models.errors import AccelError

__all__ = ["Multiplier", "MultiplierPlan", "DSP_WIDTH", "rtlil_multipliers", "plan_multipliers",
           "PREPARE_PASSES", "probe_script", "probed_multipliers"]

DSP_WIDTH = {"ecp5": 18, "ice40": 16}    # operand width of one DSP block's multiplier
DSP_MIN_WIDTH = 2                        # synth_ecp5 / synth_ice40 -dsp: narrower slices stay in logic

# The passes synth_ecp5 runs (``coarse``) before it maps products to DSP blocks: after them the
# products are those the mapping sees (merged, dead ones gone, operands narrowed). Checked on ECP5
# only; iCE40 builds use the same probe (synth_ice40 -dsp is not measured against it).
PREPARE_PASSES = ("flatten", "opt_expr", "opt_clean", "opt -nodffe -nosdff", "wreduce", "peepopt", "opt_clean")
TAG = "accel_mul"                        # the attribute a probe tags each product with (its index)

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
    tag: int | None = None   # its index in the probe (probed_multipliers), None when not probed

    def dsp_blocks(self, width: int) -> int:
        """DSP blocks of ``width`` x ``width`` this product takes: Yosys ``mul2dsp`` cuts each
        operand into ``width``-bit slices; a slice narrower than 2 bits stays in logic."""
        def slices(bits: int) -> int:
            return bits // width + (1 if bits % width >= DSP_MIN_WIDTH else 0)
        if min(self.a_bits, self.b_bits) < DSP_MIN_WIDTH:
            return 0
        return slices(self.a_bits) * slices(self.b_bits)

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
        """How a Yosys script names it: by its tag on a probed design, else module/cell."""
        return f"a:{TAG}={self.tag}" if self.tag is not None else f"{self.module}/{self.cell}"


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


def _tagging(muls: list[Multiplier], top: str) -> list[str]:
    """Yosys commands tagging every product with its index, then the passes synthesis runs first."""
    lines = [f"hierarchy -top {top}", "proc"]
    lines += [f"setattr -set {TAG} {i} {m.module}/{m.cell}" for i, m in enumerate(muls)]
    return lines + list(PREPARE_PASSES)


def probe_script(muls: list[Multiplier], top: str, rtlil_file: str, out_file: str) -> str:
    """A Yosys script reading ``rtlil_file`` (the RTLIL ``muls`` came from), running the passes
    synthesis runs before its DSP mapping with every product tagged, and writing the surviving
    products to ``out_file`` for :func:`probed_multipliers`."""
    return "\n".join([f"read_rtlil {rtlil_file}", *_tagging(muls, top), "select t:$mul",
                      f"write_rtlil -selected {out_file}"]) + "\n"


_TAGGED_CELL = re.compile(r"((?:^[ \t]*attribute \S+ \S+\n)*)^[ \t]*cell \$mul (\S+)\n((?:[ \t]*parameter \S+ \S+\n)+)", re.M)


def probed_multipliers(muls: list[Multiplier], probe_rtlil: str) -> list[Multiplier]:
    """The products of ``muls`` as synthesis's DSP mapping sees them, from what
    :func:`probe_script` wrote: each with its narrowed widths and its tag; merged or removed
    products are left out."""
    out = []
    for c in _TAGGED_CELL.finditer(probe_rtlil):
        attrs = dict(re.findall(r"attribute \\(\S+) (\S+)", c.group(1)))
        p = dict(_PARAM.findall(c.group(3)))
        if TAG not in attrs:
            raise AccelError(f"the multiplier probe found product {c.group(2)!r} ({p.get('A_WIDTH')} x "
                             f"{p.get('B_WIDTH')} bits) without its {TAG!r} tag: a pass before the DSP mapping "
                             "created it; the plan cannot place it (report this design)")
        i = int(attrs[TAG])
        if not 0 <= i < len(muls):
            raise AccelError(f"the multiplier probe tags a product {i}, but only {len(muls)} were tagged")
        src = muls[i]
        out.append(Multiplier(src.module, src.cell, int(p["A_WIDTH"]), int(p["B_WIDTH"]), int(p["Y_WIDTH"]), tag=i))
    return out


@dataclass(frozen=True)
class MultiplierPlan:
    family: str
    budget: int                          # DSP blocks allowed
    on_dsp: tuple[Multiplier, ...]
    on_luts: tuple[Multiplier, ...]
    prepare: tuple[str, ...] = ()        # commands bringing the design to the probed state (tagged plans)

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
            lines += list(self.prepare) if self.prepare else ["proc"]
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


def plan_multipliers(muls: list[Multiplier], family: str, budget: int, *,
                     tagged: list[Multiplier] | None = None, top: str = "top") -> MultiplierPlan:
    """Keep the design within ``budget`` DSP blocks: move the products cheapest in LUTs per DSP
    block saved to LUTs until the estimate fits. Every product stays on DSPs when it already fits.
    ``tagged``: the products as :func:`probed_multipliers` read them back from the probe of
    ``muls`` (design ``top``); the plan then counts and moves those, and its script repeats the
    probe's passes."""
    if family not in DSP_WIDTH:
        raise AccelError(f"no DSP model for FPGA family {family!r}; known: {', '.join(DSP_WIDTH)}")
    if budget < 0:
        raise AccelError(f"DSP budget {budget!r} must be 0 or more")
    w = DSP_WIDTH[family]
    prepare: tuple[str, ...] = ()
    if tagged is not None:
        prepare = tuple(_tagging(muls, top))
        muls = tagged
    need = sum(m.dsp_blocks(w) for m in muls)
    users = sorted((m for m in muls if m.dsp_blocks(w)), key=lambda m: (m.lut_cost / m.dsp_blocks(w), m.selector))
    moved = []
    for m in users:
        if need <= budget:
            break
        moved.append(m)
        need -= m.dsp_blocks(w)
    keep = tuple(m for m in muls if m not in set(moved))
    return MultiplierPlan(family, budget, keep, tuple(moved), prepare)
