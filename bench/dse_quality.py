"""Search quality: the two-stage heuristic against exhaustive search, same space and cost model,
on every (board, model) pair of the zoo that is feasible. Prints JSON.

    .venv/bin/python bench/dse_quality.py [--objective latency|throughput] [--boards a,b] [--models x,y]

Per pair: objective ratio (heuristic / exhaustive optimum), evaluations of each and their ratio,
seconds of each, the chosen design's predicted FPS and binding resource. Pairs that cannot be
evaluated say why (no off-chip memory for the weights, no cost model for the board family).
"""
from __future__ import annotations

import argparse
import json
import sys

from accel.boards import board_names, load_board
from accel.dse import exhaustive_search, heuristic_search
from accel.models.config import load_config, zoo_names
from accel.models.errors import AccelError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objective", default="latency", choices=["latency", "throughput"])
    ap.add_argument("--boards", default=",".join(board_names()))
    ap.add_argument("--models", default=",".join(zoo_names()))
    args = ap.parse_args(argv)
    rows = []
    for b in args.boards.split(","):
        board = load_board(b)
        for m in args.models.split(","):
            cfg = load_config(m)
            print(f"[bench] {m} on {b}", file=sys.stderr, flush=True)
            try:
                h = heuristic_search(cfg, board, objective=args.objective)
                e = exhaustive_search(cfg, board, objective=args.objective)
            except (AccelError, ValueError) as exc:
                rows.append({"board": b, "model": m, "skipped": f"{type(exc).__name__}: {exc}"})
                continue
            ho, eo = h.objective(args.objective), e.objective(args.objective)
            rows.append({"board": b, "model": m, "objective_ratio": round(ho / eo, 4),
                         "heuristic_fps": round(ho, 2), "exhaustive_fps": round(eo, 2),
                         "heuristic_evaluations": h.evaluations, "exhaustive_evaluations": e.evaluations,
                         "evaluation_ratio": round(h.evaluations / e.evaluations, 4),
                         "heuristic_seconds": round(h.seconds, 2), "exhaustive_seconds": round(e.seconds, 2),
                         "binding": h.best.binding})
    done = [r for r in rows if "objective_ratio" in r]
    summary = {"pairs": len(done), "skipped": len(rows) - len(done),
               "min_objective_ratio": min((r["objective_ratio"] for r in done), default=None),
               "max_evaluation_ratio": max((r["evaluation_ratio"] for r in done), default=None),
               "max_heuristic_seconds": max((r["heuristic_seconds"] for r in done), default=None)}
    print(json.dumps({"objective": args.objective, "summary": summary, "pairs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
