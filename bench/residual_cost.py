"""Residual add unit: resource model vs Yosys synthesis. Prints JSON.

    .venv/bin/python bench/residual_cost.py [--configs 8,32,8/2,8/1,32/8]

A config is ``lanes`` or ``lanes/mul_lanes`` (lanes multiplied per cycle).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amaranth.back import verilog

from accel.hdl.residual import ResidualParams, ResidualUnit, residual_resources

sys.path.insert(0, str(Path(__file__).parent))
from layernorm_cost import SYNTH, yosys_counts  # noqa: E402  (same Yosys runner and counting)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="8,32,8/2,8/1,32/8", help="lanes or lanes/mul_lanes, comma-separated")
    args = ap.parse_args(argv)
    work = Path("build/bench_residual")
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for cfg in args.configs.split(","):
        lanes, _, mul = cfg.partition("/")
        params = ResidualParams(lanes=int(lanes), mul_lanes=int(mul) if mul else None)
        name = f"res_{params.lanes}_{params.products}.v"
        (work / name).write_text(verilog.convert(ResidualUnit(params), name="res"))
        for family in SYNTH:
            print(f"[bench] synthesizing {name} for {family}", file=sys.stderr, flush=True)
            got = yosys_counts(name, family, work, top="res")
            model = residual_resources(params, family)
            rows.append({"lanes": params.lanes, "mul_lanes": params.products, "family": family, "yosys": got, "model": model,
                         "error": {k: round((model[k] - got[k]) / got[k], 3) if got[k] else model[k] - got[k]
                                   for k in ("lut", "ff", "dsp", "bram")}})
    print(json.dumps({"residual": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
