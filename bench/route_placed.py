"""Route a build's placed netlist again, as the build's routing run does, and report how it went:

    python bench/route_placed.py build/k4/gateware --out build/r1
    python bench/route_placed.py build/k4/gateware --out build/r2 --set router2/initCurrCongWeight=2.0
    python bench/route_placed.py build/k4/gateware --out build/r3 --stop-at-iteration 1

FROM is a build folder after place and route (``top_placed.json``, as re-seated, and
``top_route.lpf``: accel/build.py ``_pnr_stages``). They are copied to OUT (``--set KEY=VALUE``
adds nextpnr settings to the copy's, which nextpnr reads when it loads the file), and nextpnr
routes them there with the build's routing command and the build's tool start (the folder mounted
as the tool's root: the result does not depend on where OUT is). Prints JSON: router2's first
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

from accel.build import NEXTPNR_OPTS, BuildError, _reap, _resolve, _start, tool_environment

ITERATION = re.compile(r"iter=(\d+) wires=(\d+) overused=(\d+)")
FMAX = re.compile(r"Max frequency for clock '([^']+)': ([\d.]+) MHz \((PASS|FAIL) at ([\d.]+) MHz\)")
ROUTER2_TIME = re.compile(r"Router2 time ([\d.]+)s")


def route_argv(exe: str, device: list[str], timing_report: bool) -> list[str]:
    """The build's routing command (``accel build`` on ECP5, timing weights on: accel/build.py)."""
    return [exe, "--quiet", "--report", "nextpnr_report.json", "--timing-allow-fail", *NEXTPNR_OPTS["ecp5"].split(),
            *(["--detailed-timing-report", "--write", "top_routed.json"] if timing_report else []),
            "--log", "top.tim", *device, "--textcfg", "top.config",
            "--no-place", "--json", "top_placed.json", "--lpf", "top_route.lpf"]


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
    ap.add_argument("--device", default="--85k --package CABGA381 --speed 6", help="nextpnr's device options")
    a = ap.parse_args(argv)
    if a.stop_at_iteration < 0:
        print(json.dumps({"error": f"--stop-at-iteration {a.stop_at_iteration}: must be 0 (route to the end) or more"}))
        return 1
    if a.out.resolve() == a.src.resolve():
        print(json.dumps({"error": f"--out {str(a.out)!r} is FROM itself: route in another folder (FROM's files "
                                   "stay as the build left them)"}))
        return 1
    for name in ("top_placed.json", "top_route.lpf"):
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
        argv_ = route_argv(_resolve("nextpnr-ecp5", env), a.device.split(), a.timing_report)
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
