"""The router2 stall rule (accel/router_watch.py) replayed over nextpnr logs of finished or stopped builds:

    python bench/router_stall.py build/*/top.tim build/*/gateware/top.tim build/*/bitstream/gateware/top.tim
    python bench/router_stall.py --patience 8 --floor 50 LOG...

Prints JSON: for every router2 run of 10 iterations or more in the logs, whether it routed (its
last iteration had 0 overused wires), where the rule would have stopped it, and the totals: routed
runs the rule would have stopped (false stops: should be none) and stalled runs it stops, with the
iterations that saves against where the run was stopped by hand.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from accel.router_watch import DEFAULT_PATIENCE, STALL_FLOOR, router_runs, stall_in


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--patience", type=int, default=DEFAULT_PATIENCE)
    ap.add_argument("--floor", type=int, default=STALL_FLOOR)
    ap.add_argument("--min-iterations", type=int, default=10)
    a = ap.parse_args(argv)
    rows = []
    for path in sorted(set(a.logs)):
        for k, its in enumerate(router_runs(path.read_text(errors="replace"))):
            if len(its) < a.min_iterations:
                continue
            st = stall_in(its, a.patience, a.floor)
            rows.append({"log": str(path), "run": k, "iterations": its[-1][0], "last_overused": its[-1][1],
                         "routed": its[-1][1] == 0,
                         "stopped_at": None if st is None else st.iteration,
                         "low": None if st is None else [st.best_iteration, st.best_overused]})
    routed = [r for r in rows if r["routed"]]
    stalled = [r for r in rows if not r["routed"]]
    stopped = [r for r in stalled if r["stopped_at"] is not None]
    print(json.dumps({
        "patience": a.patience, "floor": a.floor, "runs": len(rows),
        "routed": len(routed), "routed_but_stopped": sum(r["stopped_at"] is not None for r in routed),
        "not_routed": len(stalled), "not_routed_stopped": len(stopped),
        "iterations_saved": sum(r["iterations"] - r["stopped_at"] for r in stopped),
        "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
