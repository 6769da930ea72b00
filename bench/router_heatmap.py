"""Where router2's congestion is: a summary of nextpnr's ``--router2-heatmap`` files as JSON.

    .venv/bin/python bench/router_heatmap.py DIR/PREFIX [--iteration N] [--top 20] [--block 10]

nextpnr-ecp5 ``--router2-heatmap DIR/PREFIX`` writes, each routing iteration N,
``PREFIX_congestion_by_coordinate_N.csv`` (one row per tile column x, one value per tile row y:
the users of that tile's wires that have two or more, summed) and
``PREFIX_congestion_by_net_N.csv`` (net, its congestion). This script reads one iteration
(default: the latest written) and prints the total, the hottest tiles, the hottest ``--block`` x
``--block`` tile blocks, and the nets grouped by the RTL signal they were made from
(accel.timing_paths.signal_of, as the timing path groups are), largest first. The run itself is a plain nextpnr call in the build's gateware
folder (the accelerator's flags from ``build_top.sh``, plus the heatmap option), stopped by hand
once the iteration of interest is written.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import Counter
from pathlib import Path

from accel.timing_paths import signal_of


class HeatmapError(Exception):
    pass


def iterations(prefix: Path) -> list[int]:
    """Iterations with a coordinate heatmap written under ``prefix``."""
    pat = re.compile(re.escape(prefix.name) + r"_congestion_by_coordinate_(\d+)\.csv$")
    return sorted(int(m.group(1)) for p in prefix.parent.glob(f"{prefix.name}_congestion_by_coordinate_*.csv")
                  if (m := pat.match(p.name)))


def summarize(prefix: Path, iteration: int | None = None, top: int = 20, block: int = 10) -> dict:
    its = iterations(prefix)
    if not its:
        raise HeatmapError(f"{prefix}: no {prefix.name}_congestion_by_coordinate_N.csv files; run nextpnr "
                           f"with --router2-heatmap {prefix}")
    it = its[-1] if iteration is None else iteration
    if it not in its:
        raise HeatmapError(f"iteration={iteration!r}: not written under {prefix} (written: {its[0]}..{its[-1]})")
    coord = prefix.parent / f"{prefix.name}_congestion_by_coordinate_{it}.csv"
    grid = [[int(v) for v in row if v.strip()] for row in csv.reader(coord.open())]
    tiles = sorted(((v, x, y) for x, row in enumerate(grid) for y, v in enumerate(row) if v), reverse=True)
    blocks = Counter()
    for v, x, y in tiles:
        blocks[(x // block * block, y // block * block)] += v
    nets = Counter()
    by_net = prefix.parent / f"{prefix.name}_congestion_by_net_{it}.csv"
    if by_net.exists():
        for row in csv.reader(by_net.open()):
            if len(row) >= 2 and row[1].strip().isdigit():
                nets[signal_of(row[0])] += int(row[1])
    return {
        "heatmap": str(coord), "iteration": it, "iterations_written": len(its),
        "congestion_total": sum(v for v, _, _ in tiles),
        "hottest_tiles": [{"x": x, "y": y, "congestion": v} for v, x, y in tiles[:top]],
        "hottest_blocks": [{"x": x, "y": y, "size": block, "congestion": v} for (x, y), v in blocks.most_common(top)],
        "signals": [{"signal": n, "congestion": v} for n, v in nets.most_common(top)],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prefix", type=Path, help="the --router2-heatmap prefix, e.g. build/pc8/gateware/heat/h")
    ap.add_argument("--iteration", type=int, default=None, help="routing iteration (default: the latest)")
    ap.add_argument("--top", type=int, default=20, help="entries per list")
    ap.add_argument("--block", type=int, default=10, help="block size in tiles for the block totals")
    a = ap.parse_args(argv)
    try:
        out = summarize(a.prefix, a.iteration, a.top, a.block)
    except HeatmapError as e:
        print(f"router_heatmap: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
