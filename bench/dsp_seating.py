"""Re-seat the DSP blocks of a placed ECP5 netlist (accel/dsp_placement.py) outside a build:

    python bench/dsp_seating.py build/c2/gateware/top_placed.json --out build/rs/top_placed.json

Prints JSON: how many blocks moved, and the summed squared and farthest distances (tiles) from the
blocks to the cells they connect, before and after. With ``--out`` the re-seated netlist is written
there; route it with the build's routing command (its `--no-place` run, see accel/build.py
`_pnr_stages`) to compare Fmax on the same placement, as in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from accel.dsp_placement import DspPlacementError, reseat_dsps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("placed", type=Path, help="the netlist nextpnr wrote with --no-route --write")
    ap.add_argument("--out", type=Path, help="write the re-seated netlist here")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        netlist = json.loads(a.placed.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(json.dumps({"error": f"{a.placed}: {e}"}))
        return 1
    t1 = time.perf_counter()
    try:
        seating = reseat_dsps(netlist)
    except DspPlacementError as e:
        print(json.dumps({"error": f"{a.placed}: {e}"}))
        return 1
    t2 = time.perf_counter()
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(netlist))
    print(json.dumps({"placed": str(a.placed), "out": str(a.out) if a.out else None, **seating.as_json(),
                      "seconds": {"read": round(t1 - t0, 2), "assign": round(t2 - t1, 2),
                                  "write": round(time.perf_counter() - t2, 2) if a.out else 0.0}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
