"""The deepest register-to-register logic paths of a synthesized ECP5 netlist (Yosys JSON).

nextpnr prints only the single worst path, and only after routing (an hour on the full
digits-moe design). This reads the netlist ``synth_ecp5`` wrote and ranks every endpoint by the
logic depth in front of it, so all the deep paths can be cut in one pass:

    python bench/logic_depth.py build/small3/gateware/top.json --top 25 --json

Depth is counted in LUT levels, weighted: LUT4 1, PFUMX / L6MUX21 0.3 (the wide-function muxes
next to a LUT), CCU2C from a data input 1, along the carry 0.05 a bit (CIN->COUT) and 0.5 to its
sum, an unregistered MULT18X18D 4, a LUT RAM read (RAD->DO) 1. Starts: flip-flop Q, block RAM
and registered DSP outputs, I/O. Ends: every flip-flop, block RAM, LUT RAM write and I/O input.
On the ECP5 at speed 6 one level costs about 0.25 ns of logic and 1-2 ns of routing, so at
50 MHz (20 ns) paths much deeper than 10-12 levels fail. It is a ranking, not a timing analysis.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

COMB_ARCS = {
    # cell type: {output port: {input port: weight}}
    "LUT4": {"Z": {"A": 1, "B": 1, "C": 1, "D": 1}},
    "PFUMX": {"Z": {"ALUT": 0.3, "BLUT": 0.3, "C0": 1}},
    "L6MUX21": {"Z": {"D0": 0.3, "D1": 0.3, "SD": 1}},
    "CCU2C": {"S0": {"A0": 1, "B0": 1, "C0": 1, "D0": 1, "CIN": 0.5},
              "S1": {"A0": 1, "B0": 1, "C0": 1, "D0": 1, "A1": 1, "B1": 1, "C1": 1, "D1": 1, "CIN": 0.5},
              "COUT": {"A0": 1, "B0": 1, "C0": 1, "D0": 1, "A1": 1, "B1": 1, "C1": 1, "D1": 1, "CIN": 0.05}},
    "TRELLIS_DPR16X4": {"DO": {"RAD": 1}},
}
MULT_WEIGHT = 4.0


def analyse(netlist: dict, top_n: int = 20) -> dict:
    mods = netlist["modules"]
    top = next((n for n, m in mods.items() if m.get("attributes", {}).get("top")), None)
    if top is None:
        raise ValueError("no module has the 'top' attribute; pass the netlist synth_ecp5 wrote")
    mod = mods[top]
    names: dict[int, str] = {}
    for name, info in mod["netnames"].items():
        for i, b in enumerate(info["bits"]):
            if isinstance(b, int):
                full = name if len(info["bits"]) == 1 else f"{name}[{i}]"
                old = names.get(b)
                if old is None or (old.startswith("$") and not name.startswith("$")) or \
                        (old.startswith("$") == name.startswith("$") and len(full) < len(old)):
                    names[b] = full
    # driver arcs: bit -> (cell, [(input bit, weight)])
    arcs: dict[int, tuple[str, list[tuple[int, float]]]] = {}
    ends: list[tuple[str, str, int]] = []          # (cell, port, bit)
    for cname, cell in mod["cells"].items():
        t, conns, dirs = cell["type"], cell["connections"], cell.get("port_directions", {})
        if t in COMB_ARCS:
            for out, ins in COMB_ARCS[t].items():
                outs = [(p, bits) for p, bits in conns.items() if p == out or (t == "TRELLIS_DPR16X4" and p.startswith(out))]
                for p, bits in outs:
                    srcs = []
                    for ip, w in ins.items():
                        for q, qb in conns.items():
                            if q == ip or (t == "TRELLIS_DPR16X4" and q.startswith(ip)):
                                srcs += [(b, w) for b in qb if isinstance(b, int)]
                    for b in bits:
                        if isinstance(b, int):
                            arcs[b] = (cname, srcs)
            if t == "TRELLIS_DPR16X4":
                for p, bits in conns.items():
                    if p.startswith(("WAD", "DI", "WRE")):
                        ends += [(cname, p, b) for b in bits if isinstance(b, int)]
        elif t == "MULT18X18D" and all(str(v) == "NONE" for k, v in cell.get("parameters", {}).items()
                                       if k.startswith("REG_")):
            srcs = [(b, MULT_WEIGHT) for p, bits in conns.items() if dirs.get(p) == "input" and p[0] in "AB"
                    for b in bits if isinstance(b, int)]
            for p, bits in conns.items():
                if dirs.get(p) == "output":
                    for b in bits:
                        if isinstance(b, int):
                            arcs[b] = (cname, srcs)
        else:
            for p, bits in conns.items():
                if dirs.get(p) == "input":
                    ends += [(cname, p, b) for b in bits if isinstance(b, int)]
    depth: dict[int, float] = {}
    prev: dict[int, int | None] = {}
    onstack: set[int] = set()

    def arrive(b: int) -> float:
        """Deepest arrival at bit b (iterative DFS; an edge closing a combinational loop counts 0)."""
        stack = [b]
        while stack:
            x = stack[-1]
            if x in depth:
                stack.pop()
                continue
            a = arcs.get(x)
            if a is None:
                depth[x], prev[x] = 0.0, None
                stack.pop()
                continue
            if x not in onstack:
                onstack.add(x)
                stack += [s for s, _ in a[1] if s not in depth and s not in onstack]
                continue
            best, arg = 0.0, None
            for s, w in a[1]:
                d = depth.get(s, 0.0) + w      # s still on the stack: a loop
                if d > best:
                    best, arg = d, (s if s in depth else None)
            depth[x], prev[x] = best, arg
            onstack.discard(x)
            stack.pop()
        return depth[b]

    scored = []
    for cname, port, b in ends:
        scored.append((arrive(b), cname, port, b))
    scored.sort(key=lambda s: -s[0])
    hist = defaultdict(int)
    for s in scored:
        hist[int(s[0])] += 1
    out, seen = [], set()
    for lv, cname, port, b in scored:
        if len(out) >= top_n:
            break
        path, x = [], b
        while x is not None:
            path.append(names.get(x, f"bit{x}"))
            x = prev.get(x)
        key = (path[-1], cname.split(".")[0])
        if key in seen:
            continue
        seen.add(key)
        out.append({"levels": round(lv, 2), "end": f"{cname}.{port}", "start": path[-1],
                    "path": list(reversed(path))})
    return {"module": top, "endpoints": len(scored),
            "levels_histogram": {k: hist[k] for k in sorted(hist)}, "deepest": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("netlist", help="the Yosys JSON netlist (gateware/top.json of an accel build)")
    ap.add_argument("--top", type=int, default=20, help="how many paths to list (distinct start/end unit)")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    a = ap.parse_args(argv)
    with open(a.netlist) as f:
        r = analyse(json.load(f), a.top)
    if a.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['endpoints']} endpoints; levels histogram {r['levels_histogram']}")
    for p in r["deepest"]:
        print(f"{p['levels']:6.2f}  {p['start']}  ->  {p['end']}")
        for n in p["path"]:
            print(f"          {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
