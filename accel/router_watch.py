"""When nextpnr's router2 has stopped converging, read from its log.

router2 rips up and reroutes every net that shares a wire, iteration after iteration, until no
wire is used twice; its log line per iteration gives the count of overused wires. A placement it
cannot untangle makes it run on without end: the count reaches a low and climbs back. Over the
39 logged router2 runs of digits-moe ECP5 builds (docs/benchmarks.md, "A stalled router stops the
build"; ``bench/router_stall.py`` replays the rule over logs), none of the 15 that routed ever
went 10 iterations without a new low while that low was 50 wires or more, and the 12 of the 24
unrouted runs that did so never routed after it (they ran on for 1 to 24 more iterations before
they were stopped by hand). So a build stops there and says so, instead of leaving the user
waiting on a run that will not finish.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from accel.models.errors import AccelError

__all__ = ["DEFAULT_PATIENCE", "STALL_FLOOR", "RouterStall", "router_runs", "router_iterations", "stall_in",
           "router_stall", "check_patience"]

DEFAULT_PATIENCE = 10   # router2 iterations without a new low of overused wires ...
STALL_FLOOR = 50        # ... while that low is at least this many wires: a stall

_ITERATION = re.compile(r"iter=(\d+) wires=\d+ overused=(\d+)")


@dataclass(frozen=True)
class RouterStall:
    """router2's best iteration so far and the latest one, ``patience`` iterations later or more."""
    best_iteration: int
    best_overused: int
    iteration: int
    overused: int
    patience: int

    def describe(self) -> str:
        return (f"router2 stopped converging: its low was {self.best_overused:,} overused wires at iteration "
                f"{self.best_iteration}, and {self.iteration - self.best_iteration} iterations later "
                f"(iteration {self.iteration}) it is at {self.overused:,}")


def check_patience(patience) -> int:
    """``patience`` as given, if it is an int >= 0 (0: never stop a routing run)."""
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
        raise AccelError(f"router_patience={patience!r}: must be an int >= 0, the router2 iterations without a new "
                         f"low of overused wires before a build stops (0: never; default {DEFAULT_PATIENCE})")
    return patience


def router_runs(log_text: str) -> list[list[tuple[int, int]]]:
    """(iteration, overused wires) of every router2 run in a log (a new run restarts the count)."""
    runs: list[list[tuple[int, int]]] = []
    for m in _ITERATION.finditer(log_text):
        it, over = int(m.group(1)), int(m.group(2))
        if not runs or it <= runs[-1][-1][0]:
            runs.append([])
        runs[-1].append((it, over))
    return runs


def router_iterations(log_text: str) -> list[tuple[int, int]]:
    """(iteration, overused wires) of the log's last router2 run."""
    runs = router_runs(log_text)
    return runs[-1] if runs else []


def stall_in(iterations: list[tuple[int, int]], patience: int = DEFAULT_PATIENCE,
             floor: int = STALL_FLOOR) -> RouterStall | None:
    """The first point of one router2 run's (iteration, overused) list that lies ``patience``
    iterations past the run's low while that low is ``floor`` wires or more; else None (also with
    ``patience`` 0: never)."""
    if not check_patience(patience):
        return None
    best = None
    for it, over in iterations:
        if best is None or over < best[1]:
            best = (it, over)
        elif it - best[0] >= patience and best[1] >= floor:
            return RouterStall(best[0], best[1], it, over, patience)
    return None


def router_stall(log_text: str, patience: int = DEFAULT_PATIENCE, floor: int = STALL_FLOOR) -> RouterStall | None:
    """The stall of a nextpnr log's last router2 run (:func:`stall_in`), or None."""
    return stall_in(router_iterations(log_text), patience, floor)
