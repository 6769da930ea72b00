"""Every failing endpoint of a routed ECP5 design, not only nextpnr's single worst path.

nextpnr prints one critical path per clock, so cutting paths one build at a time (15 minutes a
build) finds one path per build. With ``--detailed-timing-report`` it also writes, for every net
that ends at a timing endpoint (flip-flop, block RAM or LUT-RAM write port), the arrival time at
each of those endpoints: its own static timing analysis, endpoint by endpoint. This module reads
that and the netlist nextpnr wrote with ``--write`` (``accel build --timing-paths`` asks nextpnr
for both and puts the groups in report.json; ``bench/route_slack.py`` runs this on any pair), and
lists the endpoints that miss the clock, grouped by the HDL signal they end in (bit indices and
packing suffixes stripped), worst first. The report names no start point, so for each group the
module walks the endpoint's fan-in cone through the netlist (LUTs, carries, wide muxes, LUT-RAM
reads, unregistered multipliers) to its start registers and names the start whose path is longest
in placed distance (Manhattan tiles summed over the path's wires): a geometric guess at the
critical start, shown with each cell's location. The arrival times are nextpnr's; only the choice
of start is a guess. ``nextpnr_worst_ns`` beside ``worst_ns`` checks the reading.
"""
from __future__ import annotations

import re

__all__ = ["failing_paths", "signal_of"]

# TRELLIS_COMB inputs that reach its outputs in the same cycle (WD/WAD/WRE are LUT-RAM writes)
_COMB_INPUTS = {"A", "B", "C", "D", "M", "FCI", "FXA", "FXB", "F1", "DI0", "DI1"}
_CONSTANTS = {"$PACKER_GND", "$PACKER_VCC"}     # nextpnr's constant drivers start no path
_LOC = re.compile(r"X(\d+)/Y(\d+)/")
_SUFFIX = re.compile(r"(_TRELLIS_FF_Q.*|_CCU2C.*|\$CCU2.*|_LUT4.*|_PFUMX.*|_L6MUX.*|_DP16KD.*|_MULT18X18D.*"
                     r"|_DPR16X4.*|\$DPRAM.*|\$RAMW.*|_D[IO][AB]\d+.*|_AD[AB]\d+.*)$")


def signal_of(name: str) -> str:
    """The HDL signal a packed cell was made from: bit indices and packing suffixes stripped."""
    s = _SUFFIX.sub("", name.lstrip("\\"))
    return re.sub(r"(_\d+)+$", "", s) if "." in s else s


def _comb_inputs(cell: dict) -> set[str] | None:
    """Input ports that pass combinationally to an output, None for a sequential cell."""
    t = cell["type"]
    if t == "TRELLIS_COMB":
        return _COMB_INPUTS
    if t == "TRELLIS_RAMW":
        return {p for p, d in cell["port_directions"].items() if d == "input"}
    if t == "MULT18X18D":
        params = cell.get("parameters", {})
        if any(str(v).strip() not in ("NONE", "") for k, v in params.items()
               if k.startswith("REG_") and k.endswith("_CLK")):
            return None
        return {p for p, d in cell["port_directions"].items() if d == "input" and re.match(r"^[ABC]\d+$", p)}
    return None


def _loc(cell: dict) -> tuple[int, int] | None:
    m = _LOC.match(str(cell.get("attributes", {}).get("NEXTPNR_BEL", "")))
    return (int(m.group(1)), int(m.group(2))) if m else None


def failing_paths(routed: dict, report: dict, period_ns: float, top_n: int = 20, paths: int = 5) -> dict:
    mods = routed["modules"]
    top = next(iter(mods.values())) if len(mods) == 1 else next(
        m for m in mods.values() if m.get("attributes", {}).get("top"))
    cells = top["cells"]
    nets = report.get("detailed_net_timings")
    if not nets:
        raise ValueError("the nextpnr report has no detailed_net_timings: run nextpnr with --detailed-timing-report "
                         "(accel build --timing-paths does)")
    endpoints = []          # (arrival ns, endpoint cell, port, driver cell)
    for net in nets:
        for ep in net["endpoints"]:
            if ep.get("event", "").startswith("posedge") and net.get("event", "").startswith("posedge"):
                endpoints.append((float(ep["delay"][1]), ep["cell"], ep["port"], net["driver"]))
    endpoints.sort(key=lambda e: -e[0])

    driver_of = {}          # net bit -> driving cell
    for name, c in cells.items():
        for port, bits in c.get("connections", {}).items():
            if c.get("port_directions", {}).get(port) == "output":
                for b in bits:
                    if isinstance(b, int):
                        driver_of[b] = name
    comb = {name: _comb_inputs(c) for name, c in cells.items()}
    locs = {name: _loc(c) for name, c in cells.items()}

    def dist(a, b):
        la, lb = locs.get(a), locs.get(b)
        return 0 if la is None or lb is None else abs(la[0] - lb[0]) + abs(la[1] - lb[1])

    reach: dict[str, tuple[int, str | None]] = {}     # cell -> (longest placed distance from a start, previous)

    def drivers(cell):
        c = cells[cell]
        for port in comb.get(cell) or ():
            for b in c.get("connections", {}).get(port, ()):
                d = driver_of.get(b) if isinstance(b, int) else None
                if d is not None and d not in _CONSTANTS:
                    yield d

    def span(cell):
        """Longest placed distance from a start register to ``cell`` (iterative depth-first walk;
        a combinational loop is cut where the walk meets a cell it is still inside)."""
        stack = [cell]
        while stack:
            cur = stack[-1]
            if cur in reach:
                stack.pop()
                continue
            if not comb.get(cur):
                reach[cur] = (0, None)
                stack.pop()
                continue
            pending = [d for d in drivers(cur) if d not in reach and d not in on_stack]
            if pending:
                on_stack.add(cur)
                stack.extend(pending)
                continue
            best, prev = 0, None
            for d in drivers(cur):
                v = reach.get(d, (0, None))[0] + dist(d, cur)
                if prev is None or v > best:
                    best, prev = v, d
            reach[cur] = (best, prev)
            on_stack.discard(cur)
            stack.pop()
        return reach[cell][0]

    on_stack: set[str] = set()

    def path_to(endpoint, driver):
        chain = [endpoint]
        cur = driver
        while cur is not None and len(chain) < 200:
            chain.append(cur)
            if not comb.get(cur):
                break
            span(cur)
            cur = reach[cur][1]
        chain.reverse()
        return [{"cell": c, "signal": signal_of(c), "type": cells[c]["type"] if c in cells else "?",
                 "loc": list(locs[c]) if locs.get(c) else None} for c in chain]

    failing = [e for e in endpoints if e[0] > period_ns]
    groups: dict[str, dict] = {}
    for t, cell, port, drv in failing:
        key = signal_of(cell)
        g = groups.setdefault(key, {"to": key, "endpoints": 0, "worst_ns": round(t, 3), "ports": set(),
                                    "_worst": (cell, drv)})
        g["endpoints"] += 1
        g["ports"].add(port)
    ranked = sorted(groups.values(), key=lambda g: -g["worst_ns"])
    for i, g in enumerate(ranked):
        cell, drv = g.pop("_worst")
        g["ports"] = sorted(g["ports"])
        span(drv)
        p = path_to(cell, drv)
        g["from"] = p[0]["signal"]
        g["placed_distance"] = sum(dist(p[k]["cell"], p[k + 1]["cell"]) for k in range(len(p) - 1))
        if i < paths:
            g["path"] = p
    nextpnr_worst = None
    for cp in report.get("critical_paths", []):
        if cp.get("from", "").startswith("posedge") and cp.get("to", "").startswith("posedge"):
            nextpnr_worst = round(sum(s["delay"] for s in cp["path"]), 3)
    worst = endpoints[0][0] if endpoints else 0.0
    return {"period_ns": period_ns, "endpoints": len(endpoints), "failing_endpoints": len(failing),
            "worst_ns": round(worst, 3), "nextpnr_worst_ns": nextpnr_worst,
            "fmax_mhz": round(1000.0 / worst, 2) if worst else None,
            "groups": len(groups), "worst_groups": ranked[:top_n],
            "failing_by_margin_ns": {f">{m}": sum(1 for e in failing if e[0] > period_ns + m) for m in (0, 1, 2, 4, 8)}}
