"""Route a build's placed netlist again, as the build's routing run does, and report how it went:

    python bench/route_placed.py build/k4/gateware --out build/r1
    python bench/route_placed.py build/k4/gateware --out build/r2 --set router2/initCurrCongWeight=2.0
    python bench/route_placed.py build/k4/gateware --out build/r3 --stop-at-iteration 1

FROM is a build folder after place and route (``top_placed.json``, as re-seated, ``top_route.lpf``
and ``build_top.json``, Amaranth's plan with the build's nextpnr command). The netlist and LPF are
copied to OUT (``--set KEY=VALUE`` adds nextpnr settings to the copy's, which nextpnr reads when it
loads the file), and nextpnr routes them there with the routing command the build derives from its
own (accel/build.py ``_pnr_stages``, timing weights on) and the build's tool start (the folder
mounted as the tool's root: the result does not depend on where OUT is). Prints JSON: router2's first
iteration (wires, overused), the iterations, router2's seconds, Fmax and the wall time.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from accel.build import BuildError, _pnr_stages, _reap, _resolve, _start, tool_environment

ITERATION = re.compile(r"iter=(\d+) wires=(\d+) overused=(\d+)")
FMAX = re.compile(r"Max frequency for clock '([^']+)': ([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")
ROUTER2_TIME = re.compile(r"Router2 time ([\d.]+)s")


def route_argv(plan: dict, timing_report: bool) -> list[str]:
    """The build's routing command from its Amaranth plan (``build_top.json``): the nextpnr command's
    routing run as accel/build.py ``_pnr_stages`` splits it (timing weights on, the build's default);
    ``timing_report`` adds ``--detailed-timing-report --write top_routed.json`` unless it is there."""
    pnr = [c for c in plan.get("commands", []) if c and c[0].startswith("nextpnr-")]
    if len(pnr) != 1:
        raise ValueError(f"{len(pnr)} nextpnr commands in the plan, expected 1")
    cmd = pnr[0]
    if timing_report and "--detailed-timing-report" not in cmd:     # where accel build --timing-paths puts it
        at = cmd.index("--log") if "--log" in cmd else len(cmd)
        cmd = [*cmd[:at], "--detailed-timing-report", "--write", "top_routed.json", *cmd[at:]]
    return _pnr_stages(cmd, True, "top", reseat=True)[1].argv


def summary(log_text: str) -> dict:
    its = ITERATION.findall(log_text)
    fmax = FMAX.findall(log_text)
    r2 = ROUTER2_TIME.findall(log_text)
    return {"iteration_1": {"wires": int(its[0][1]), "overused": int(its[0][2])} if its else None,
            "iterations": int(its[-1][0]) if its else 0,
            "last_overused": int(its[-1][2]) if its else None,
            "router2_s": float(r2[-1]) if r2 else None,
            "fmax_mhz": {clk: {"achieved": float(f), "met": ok == "PASS", "constraint": float(c)}
                         for clk, f, ok, c in fmax}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, metavar="FROM", help="a build folder with top_placed.json and top_route.lpf")
    ap.add_argument("--out", type=Path, required=True, help="the folder to route in (created)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a nextpnr setting for the run")
    ap.add_argument("--stop-at-iteration", type=int, default=0, metavar="N",
                    help="stop once router2 reports iteration N (0: route to the end)")
    ap.add_argument("--timing-report", action="store_true",
                    help="add --detailed-timing-report --write top_routed.json (accel build --timing-paths)")
    a = ap.parse_args(argv)
    if a.stop_at_iteration < 0:
        print(json.dumps({"error": f"--stop-at-iteration {a.stop_at_iteration}: must be 0 (route to the end) or more"}))
        return 1
    if a.out.resolve() == a.src.resolve():
        print(json.dumps({"error": f"--out {str(a.out)!r} is FROM itself: route in another folder (FROM's files "
                                   "stay as the build left them)"}))
        return 1
    for name in ("top_placed.json", "top_route.lpf", "build_top.json"):
        if not (a.src / name).is_file():
            print(json.dumps({"error": f"{a.src / name} not found: FROM must be a build folder after place and "
                                       "route (accel build writes it in OUT/gateware)"}))
            return 1
    settings = {}
    for kv in a.set:
        if "=" not in kv:
            print(json.dumps({"error": f"--set {kv!r}: expected KEY=VALUE, e.g. router2/estimateWeight=1.5"}))
            return 1
        k, v = kv.split("=", 1)
        settings[k] = v
    a.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(a.src / "top_route.lpf", a.out / "top_route.lpf")
    if settings:
        netlist = json.loads((a.src / "top_placed.json").read_text())
        tops = [m for m in netlist.get("modules", {}).values() if "settings" in m]
        if len(tops) != 1:
            print(json.dumps({"error": f"{a.src / 'top_placed.json'} has {len(tops)} modules with settings, "
                                       "expected 1"}))
            return 1
        tops[0]["settings"].update(settings)
        (a.out / "top_placed.json").write_text(json.dumps(netlist))
    else:
        shutil.copyfile(a.src / "top_placed.json", a.out / "top_placed.json")
    log = a.out / "top.tim"
    log.unlink(missing_ok=True)
    env = tool_environment()
    out = open(a.out / "route.out", "w")
    try:
        argv_ = route_argv(json.loads((a.src / "build_top.json").read_text()), a.timing_report)
    except (ValueError, OSError) as e:          # json.JSONDecodeError is a ValueError
        out.close()
        print(json.dumps({"error": f"{a.src / 'build_top.json'}: {e}"}))
        return 1
    try:
        argv_ = [_resolve(argv_[0], env), *argv_[1:]]
        proc = _start(argv_, cwd=a.out, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    except BuildError as e:                   # no nextpnr, or a folder the YoWASP runtime cannot mount
        out.close()
        print(json.dumps({"error": str(e)}))
        return 1
    # stopped with SIGTERM (kill, timeout): leave through the finally below, which stops nextpnr
    before = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t0 = time.monotonic()
    last = t0
    with out:
        stopped = False
        try:
            while proc.poll() is None:
                time.sleep(1.0)
                text = log.read_text(errors="replace") if log.exists() else ""
                its = ITERATION.findall(text)
                if a.stop_at_iteration and its and int(its[-1][0]) >= a.stop_at_iteration:
                    stopped = True
                    break
                if time.monotonic() - last >= 20:
                    last = time.monotonic()
                    where = f"iteration {its[-1][0]}, {its[-1][2]} overused" if its else "loading"
                    print(f"[route_placed] {last - t0:.0f} s: {where}", file=sys.stderr)
        finally:
            _reap(proc)
            signal.signal(signal.SIGTERM, before)
    res = {"from": str(a.src), "out": str(a.out), "settings": settings, "timing_report": a.timing_report,
           "stopped_at_iteration": a.stop_at_iteration if stopped else None,
           "returncode": None if stopped else proc.returncode, "seconds": round(time.monotonic() - t0, 1),
           **summary(log.read_text(errors="replace") if log.exists() else "")}
    print(json.dumps(res, indent=2))
    return 0 if stopped or proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
