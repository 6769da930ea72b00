"""Move flip-flops into the ECP5 DSP blocks' own registers, after synthesis.

An ECP5 ``MULT18X18D`` has input registers (A, B) and an output register (P) of its own. Yosys
maps every product to the block's combinational mode and leaves the registers around it in
slices, so a product registered in the RTL still pays a wire from the DSP block to a slice
flip-flop, and the flip-flop takes a slice. This pass rewrites the synthesized netlist (Yosys
JSON, before nextpnr) so the block's registers do that work:

- **output**: when every used ``P`` bit of a block feeds exactly one ``TRELLIS_FF`` (its ``DI``)
  and nothing else, those flip-flops become the block's output register and leave the netlist;
- **inputs** (optional): when every non-constant ``A`` (or ``B``) bit of a block comes from a
  ``TRELLIS_FF``, the block registers that operand itself from the flip-flops' ``DI``; a flip-flop
  left without other loads leaves the netlist, one with other loads stays (the operand is then
  registered twice, in the slice and in the block).

Both keep the circuit's behaviour cycle for cycle: a block register replaces a flip-flop only
when they share the clock, the clock enable, a synchronous reset to 0 (``REGSET=RESET``,
``SRMODE=LSR_OVER_CE``), which the block register gets as ``RESETMODE=SYNC``, and the global
set/reset setting (``GSR``, one per block). The block's
priority between reset and clock enable is not taken on trust: where the flip-flops have a clock
enable, the block's enable is ``enable | reset`` (one ``LUT4`` per enable net), so the reset acts
whichever input the block lets win. Anything else (another clock, an inverted clock or reset, an
asynchronous reset, a set value of 1, a constant 1 in a registered operand, a dynamic
``SIGNED``/``SOURCE`` input) leaves the block as it is.

nextpnr models the registered modes in its timing (a path then ends at the block's input
register or starts at its output register). tests/test_dsp_registers.py checks the rewrite
against the original netlist by bounded formal equivalence in Yosys, with a behavioural model of
the block's registers (Yosys ships no simulation model of ``MULT18X18D``).
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import asdict, dataclass

from accel.models.errors import AccelError

__all__ = ["DspRegisterReport", "absorb_dsp_registers", "check_mode", "DSP_REGISTER_MODES", "DEFAULT_DSP_REGISTERS"]

# What a build moves into the blocks (accel build --dsp-registers): nothing, the output registers,
# or the output and operand registers. Off by default: on the digits-moe run design (57 blocks'
# outputs, 1,191 flip-flops; with operands 266 more registers, 2,153 flip-flops) both netlists
# placed at the same seed and neither routed: router2 stalled at 1,400-1,800 overused wires, where
# the netlist as synthesized routes (docs/benchmarks.md, "DSP block registers").
DSP_REGISTER_MODES = ("none", "output", "output+operands")
DEFAULT_DSP_REGISTERS = "none"


def check_mode(mode: str) -> str:
    """``mode`` if it is one of DSP_REGISTER_MODES, else an AccelError naming it and the choices."""
    if mode not in DSP_REGISTER_MODES:
        raise AccelError(f"dsp_registers={mode!r}: expected one of {', '.join(DSP_REGISTER_MODES)}")
    return mode

DSP = "MULT18X18D"
FF = "TRELLIS_FF"
LUT4 = "LUT4"
SLOTS = 4                                   # CLK0..3, CE0..3, RST0..3 on a MULT18X18D
# LUT4 truth tables (Z = INIT[{D, C, B, A}]), C and D tied to 0, repeated over them
INIT_OR = format(0xEEEE, "016b")            # A | B
INIT_NOT_A_OR_B = format(0xDDDD, "016b")    # ~A | B


@dataclass(frozen=True)
class DspRegisterReport:
    """What the pass changed: blocks now registering their output or an operand, flip-flops
    removed from the slices, flip-flops copied into a block and kept for their other loads (counted
    once per block they are copied into), and
    ``LUT4`` cells added to make ``enable | reset``."""
    dsp_blocks: int
    output_registers: int
    input_registers: int
    flip_flops_removed: int
    flip_flops_duplicated: int
    luts_added: int

    def to_json(self) -> dict:
        return asdict(self)


def _param(cell: dict, name: str, default: str) -> str:
    """A string parameter as Yosys JSON stores it (a string of 0/1/x/z gets a trailing space)."""
    v = cell.get("parameters", {}).get(name)
    if v is None:
        return default
    return v[:-1] if v.endswith(" ") else v


@dataclass(frozen=True)
class _Control:
    """What a flip-flop shares with the others it joins in one block register."""
    clk: int | str
    ce: int | str | None        # None: always enabled
    ce_inverted: bool
    rst: int | str | None       # None: no reset
    gsr: str                    # the global set/reset: "ENABLED" or "DISABLED"


def _ff_control(ff: dict) -> _Control | None:
    """The flip-flop's control, or None when a block register cannot copy it."""
    if (_param(ff, "CLKMUX", "CLK") != "CLK" or _param(ff, "LSRMUX", "LSR") != "LSR"
            or _param(ff, "SRMODE", "LSR_OVER_CE") != "LSR_OVER_CE" or _param(ff, "REGSET", "RESET") != "RESET"
            or _param(ff, "LSRMODE", "LSR") != "LSR"):
        return None
    conn = ff["connections"]
    clk = conn.get("CLK", ["x"])[0]
    if not isinstance(clk, int):
        return None
    cemux = _param(ff, "CEMUX", "1")
    ce_bit = conn.get("CE", ["x"])[0]
    if cemux == "1" or (cemux == "CE" and ce_bit == "1") or (cemux == "INV" and ce_bit == "0"):
        ce, inv = None, False
    elif cemux in ("CE", "INV") and isinstance(ce_bit, int):
        ce, inv = ce_bit, cemux == "INV"
    else:
        return None
    lsr = conn.get("LSR", ["0"])[0]
    if lsr in ("0", "x", "z"):
        rst = None
    elif isinstance(lsr, int):
        rst = lsr
    else:
        return None          # held in reset
    gsr = _param(ff, "GSR", "ENABLED")
    if gsr not in ("ENABLED", "DISABLED"):
        return None
    return _Control(clk, ce, inv, rst, gsr)


class _Netlist:
    def __init__(self, module: dict):
        self.cells: dict[str, dict] = module["cells"]
        self.port_bits = {b for p in module.get("ports", {}).values() for b in p["bits"] if isinstance(b, int)}
        self.driver: dict[int, tuple[str, str]] = {}
        self.loads: dict[int, list[tuple[str, str]]] = defaultdict(list)
        top = 0
        for name, c in self.cells.items():
            for port, bits in c["connections"].items():
                out = c["port_directions"].get(port) == "output"
                for b in bits:
                    if isinstance(b, int):
                        top = max(top, b)
                        if out:
                            self.driver[b] = (name, port)
                        else:
                            self.loads[b].append((name, port))
        for b in self.port_bits:
            top = max(top, b)
        self._next = top + 1
        self._names = itertools.count()

    def new_bit(self) -> int:
        self._next += 1
        return self._next - 1

    def new_name(self, base: str) -> str:
        while True:
            name = f"$accel$dspreg${base}${next(self._names)}"
            if name not in self.cells:
                return name

    def connect(self, cell: str, port: str, bit, direction: str = "input") -> None:
        c = self.cells[cell]
        old = c["connections"].get(port, [None])[0]
        if isinstance(old, int) and direction == "input":
            self.loads[old].remove((cell, port))
        elif isinstance(old, int) and self.driver.get(old) == (cell, port):
            del self.driver[old]
        c["connections"][port] = [bit]
        c["port_directions"][port] = direction
        if isinstance(bit, int):
            if direction == "input":
                self.loads[bit].append((cell, port))
            else:
                self.driver[bit] = (cell, port)

    def remove(self, cell: str) -> None:
        c = self.cells.pop(cell)
        for port, bits in c["connections"].items():
            for b in bits:
                if isinstance(b, int):
                    if c["port_directions"].get(port) == "output":
                        if self.driver.get(b) == (cell, port):
                            del self.driver[b]
                    else:
                        self.loads[b].remove((cell, port))


class _Enables:
    """The enable nets made so far (one ``LUT4`` per enable, inversion and reset), shared by all blocks."""

    def __init__(self):
        self.nets: dict[tuple, int | str] = {}
        self.luts = 0


class _Slots:
    """The clock, enable and reset inputs of one block, shared by its registers."""

    def __init__(self, net: _Netlist, dsp: str, enables: _Enables):
        self.net, self.dsp, self.enables = net, dsp, enables
        c = net.cells[dsp]["connections"]
        self.clk = c.get("CLK0", [None])[0] if isinstance(c.get("CLK0", [None])[0], int) else None
        p = net.cells[dsp].get("parameters", {})
        registered = any(_param(net.cells[dsp], f"REG_{r}_CLK", "NONE") != "NONE"
                         for r in ("INPUTA", "INPUTB", "INPUTC", "PIPELINE", "OUTPUT"))
        self.gsr = _param(net.cells[dsp], "GSR", "ENABLED") if registered or "GSR" in p else None
        self.ce: dict = {}
        self.rst: dict = {}
        for k in range(SLOTS):
            if isinstance(c.get(f"CE{k}", [None])[0], int):
                self.ce[c[f"CE{k}"][0]] = f"CE{k}"
            if isinstance(c.get(f"RST{k}", [None])[0], int):
                self.rst[c[f"RST{k}"][0]] = f"RST{k}"

    def _free(self, used: dict, kind: str) -> str:
        return next(f"{kind}{k}" for k in range(SLOTS - 1) if f"{kind}{k}" not in used.values())

    def fits(self, ctl: _Control) -> bool:
        if (self.clk is not None and self.clk != ctl.clk) or (self.gsr is not None and self.gsr != ctl.gsr):
            return False
        if f"CE{SLOTS - 1}" in self.ce.values() or f"RST{SLOTS - 1}" in self.rst.values():
            return False        # slot 3 is the tie-off this pass uses; the block uses it already
        ce_new = ctl.ce is not None and self.enables.nets.get((ctl.ce, ctl.ce_inverted, ctl.rst)) not in self.ce
        rst_new = ctl.rst is not None and ctl.rst not in self.rst
        return (len(self.ce) + ce_new <= SLOTS - 1) and (len(self.rst) + rst_new <= SLOTS - 1)

    def assign(self, ctl: _Control) -> tuple[str, str]:
        """(CE slot, RST slot) for a register with this control; slot 3 stays tied off (always
        enabled, never reset) for registers without an enable or a reset."""
        net = self.net
        if self.clk is None:
            net.connect(self.dsp, "CLK0", ctl.clk)
            self.clk = ctl.clk
        self.gsr = ctl.gsr
        net.cells[self.dsp].setdefault("parameters", {})["GSR"] = ctl.gsr
        if ctl.ce is None:
            ce_slot = f"CE{SLOTS - 1}"
            net.connect(self.dsp, ce_slot, "1")
        else:
            key = (ctl.ce, ctl.ce_inverted, ctl.rst)
            if key not in self.enables.nets:
                self.enables.nets[key] = self._enable_net(ctl)
            bit = self.enables.nets[key]
            if bit not in self.ce:
                self.ce[bit] = self._free(self.ce, "CE")
                net.connect(self.dsp, self.ce[bit], bit)
            ce_slot = self.ce[bit]
        if ctl.rst is None:
            rst_slot = f"RST{SLOTS - 1}"
            net.connect(self.dsp, rst_slot, "0")
        else:
            if ctl.rst not in self.rst:
                self.rst[ctl.rst] = self._free(self.rst, "RST")
                net.connect(self.dsp, self.rst[ctl.rst], ctl.rst)
            rst_slot = self.rst[ctl.rst]
        return ce_slot, rst_slot

    def _enable_net(self, ctl: _Control):
        """The block's enable: the flip-flops' enable, or'ed with their reset (see the module doc)."""
        net = self.net
        if ctl.rst is None and not ctl.ce_inverted:
            return ctl.ce
        name = net.new_name("ce")
        out = net.new_bit()
        net.cells[name] = {"hide_name": 1, "type": LUT4, "attributes": {}, "port_directions": {},
                           "connections": {},
                           "parameters": {"INIT": INIT_NOT_A_OR_B if ctl.ce_inverted else INIT_OR}}
        net.connect(name, "A", ctl.ce)
        net.connect(name, "B", ctl.rst if ctl.rst is not None else "0")
        net.connect(name, "C", "0")
        net.connect(name, "D", "0")
        net.connect(name, "Z", out, "output")
        self.enables.luts += 1
        return out


def _set_register(dsp: dict, which: str, slots: tuple[str, str]) -> None:
    p = dsp.setdefault("parameters", {})
    p[f"REG_{which}_CLK"] = "CLK0"
    p[f"REG_{which}_CE"], p[f"REG_{which}_RST"] = slots
    p["RESETMODE"] = "SYNC"


def _absorb_output(net: _Netlist, name: str, slots: _Slots) -> int:
    dsp = net.cells[name]
    if _param(dsp, "REG_OUTPUT_CLK", "NONE") != "NONE" or _param(dsp, "REG_PIPELINE_CLK", "NONE") != "NONE":
        return 0
    ffs = []
    for i in range(36):
        b = dsp["connections"].get(f"P{i}", ["x"])[0]
        if not isinstance(b, int) or not net.loads.get(b):
            continue
        loads = net.loads[b]
        if b in net.port_bits or len(loads) != 1 or loads[0][1] != "DI" or net.cells[loads[0][0]]["type"] != FF:
            return 0
        ffs.append((i, loads[0][0]))
    if not ffs:
        return 0
    ctls = {_ff_control(net.cells[ff]) for _, ff in ffs}
    if len(ctls) != 1 or None in ctls:
        return 0
    ctl = ctls.pop()
    if not slots.fits(ctl):
        return 0
    _set_register(dsp, "OUTPUT", slots.assign(ctl))
    for i, ff in ffs:
        q = net.cells[ff]["connections"]["Q"][0]
        net.remove(ff)
        net.connect(name, f"P{i}", q, "output")
    return len(ffs)


def _absorb_input(net: _Netlist, name: str, operand: str, slots: _Slots) -> tuple[int, int]:
    """(flip-flops removed, flip-flops duplicated) for operand A or B."""
    dsp = net.cells[name]
    if _param(dsp, f"REG_INPUT{operand}_CLK", "NONE") != "NONE":
        return 0, 0
    conn = dsp["connections"]
    if any(conn.get(p, ["0"])[0] not in ("0", "1") for p in ("SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB")):
        return 0, 0
    bits = [conn.get(f"{operand}{i}", ["0"])[0] for i in range(18)]
    ffs: list[tuple[int, str]] = []
    for i, b in enumerate(bits):
        if b == "0":
            continue            # a registered 0 stays 0 (reset and loads alike)
        if not isinstance(b, int):
            return 0, 0         # a constant 1 would read 0 out of reset: not the same circuit
        drv = net.driver.get(b)
        if drv is None or drv[1] != "Q" or net.cells[drv[0]]["type"] != FF:
            return 0, 0
        if net.cells[drv[0]]["connections"].get("DI", ["x"])[0] not in ("0", "1") and \
                not isinstance(net.cells[drv[0]]["connections"].get("DI", ["x"])[0], int):
            return 0, 0
        ffs.append((i, drv[0]))
    if not ffs:
        return 0, 0
    ctls = {_ff_control(net.cells[ff]) for _, ff in ffs}
    if len(ctls) != 1 or None in ctls:
        return 0, 0
    ctl = ctls.pop()
    if not slots.fits(ctl):
        return 0, 0
    _set_register(dsp, f"INPUT{operand}", slots.assign(ctl))
    for i, ff in ffs:
        net.connect(name, f"{operand}{i}", net.cells[ff]["connections"]["DI"][0])
    removed = duplicated = 0
    for ff in sorted({ff for _, ff in ffs}):
        q = net.cells[ff]["connections"]["Q"][0]
        if not net.loads.get(q) and q not in net.port_bits:
            net.remove(ff)
            removed += 1
        else:
            duplicated += 1
    return removed, duplicated


def absorb_dsp_registers(netlist: dict, top: str = "top", *, outputs: bool = True,
                         inputs: bool = False) -> DspRegisterReport:
    """Rewrite the Yosys JSON ``netlist`` (a dict, changed in place) so the ``MULT18X18D`` blocks
    of module ``top`` register their output (``outputs``) and operands (``inputs``) where slice
    flip-flops did it before (see the module doc for when)."""
    modules = netlist.get("modules", {})
    if top not in modules:
        raise KeyError(f"top={top!r}: the netlist has no such module (it has {sorted(modules)!r})")
    net = _Netlist(modules[top])
    enables = _Enables()
    dsps = sorted(n for n, c in net.cells.items() if c["type"] == DSP)
    out_regs = in_regs = removed = duplicated = 0
    for name in dsps:
        slots = _Slots(net, name, enables)
        if outputs:
            n = _absorb_output(net, name, slots)
            out_regs += n > 0
            removed += n
        if inputs:
            for operand in "AB":
                r, d = _absorb_input(net, name, operand, slots)
                in_regs += (r + d) > 0
                removed += r
                duplicated += d
    return DspRegisterReport(dsp_blocks=len(dsps), output_registers=out_regs, input_registers=in_regs,
                             flip_flops_removed=removed, flip_flops_duplicated=duplicated,
                             luts_added=enables.luts)
