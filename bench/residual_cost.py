"""Residual add unit: resource model vs Yosys synthesis. Prints JSON.

    .venv/bin/python bench/residual_cost.py [--lanes 8,32]
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
    ap.add_argument("--lanes", default="8,32")
    args = ap.parse_args(argv)
    work = Path("build/bench_residual")
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for lanes in (int(v) for v in args.lanes.split(",")):
        name = f"res_{lanes}.v"
        (work / name).write_text(verilog.convert(ResidualUnit(lanes=lanes), name="res"))
        for family in SYNTH:
            print(f"[bench] synthesizing {name} for {family}", file=sys.stderr, flush=True)
            got = yosys_counts(name, family, work, top="res")
            model = residual_resources(ResidualParams(lanes=lanes), family)
            rows.append({"lanes": lanes, "family": family, "yosys": got, "model": model,
                         "error": {k: round((model[k] - got[k]) / got[k], 3) if got[k] else model[k] - got[k]
                                   for k in ("lut", "ff", "dsp", "bram")}})
    print(json.dumps({"residual": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
