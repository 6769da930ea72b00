"""Run the attention kernel's RTL against the integer reference (cocotb + Verilator or Icarus).

Public API::

    attention_job(op, q, k, v, params, name=..., stalls=True, seed=0)  -> job dict
    run_jobs(jobs, params, simulator="verilator", waves=False)       -> list[AttentionResult]
    run_attention(op, q, k, v, params=None, ...)                     -> AttentionResult
    run_model(model_name, params=None, layers=None, ...)             -> list[AttentionResult]
    params_for(op, tokens, **overrides)                               -> AttentionParams

A job packs every input stream's beats (descriptor, Q, K and V replayed once per pass, for each
head group) and the reference result ``op(q, k, v)``. ``run_jobs`` generates the Verilog for the
parameters, builds it (cached under build/sim/attention/<simulator>-<hash>, keyed by the
Verilog and the simulator options; one build at a time behind a file lock), runs all jobs in
one simulator process (sim/attention_tb.py: drivers, monitor, scoreboard) and returns one result
per job. A failing job is run again on a traced build so its result names a waveform file.

Reused from the linear kernel's runner (accel.sim.linear_runner): pack_beats, field_map,
build_root, simulator_available, the Verilator PATH handling and the error classes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from accel.hdl.attention import AttentionParams, attention_layouts, generate_verilog
from accel.hdl.attention_cost import attention_cycles
from accel.models.errors import NumericsError, ShapeError
from accel.models.intops import IntAttention
from accel.sim.result import KernelResult, build_simulator, run_cocotb_jobs, run_with_waveforms_on_failure
from accel.sim.linear_runner import (SimulationError, SimulatorUnavailable,
                                     field_map, pack_beats, simulator_available)

AttentionResult = KernelResult  # the attention runner's name for the shared result type

__all__ = ["AttentionResult", "attention_job", "run_jobs", "run_attention", "run_model",
           "model_jobs", "params_for", "simulator_available", "SimulatorUnavailable",
           "SimulationError", "TOPLEVEL", "SIMULATORS"]

TOPLEVEL = "attention_kernel"
SIMULATORS = ("verilator", "icarus")


# ------------------------------------------------------------------------------ validation
def params_for(op: IntAttention, tokens: int, **overrides) -> AttentionParams:
    """Default kernel parameters for an op over ``tokens`` tokens of width ``dim``: head_dim
    from the model, max_seq = tokens, heads in parallel = the op's heads (override any)."""
    dim = overrides.pop("dim", None)
    if dim is None:
        raise ShapeError("params_for: pass dim= (the model width, q.shape[1])")
    if dim % op.heads:
        raise ShapeError(f"params_for: dim={dim!r} is not divisible by heads={op.heads}")
    hd = dim // op.heads
    kw = {"head_dim": hd, "max_seq": tokens, "heads": op.heads,
          "t_a": min(hd, 16) if hd % min(hd, 16) == 0 else hd, "p": 8, "n_a": 1}
    kw.update(overrides)
    return AttentionParams(**kw)


def _check_op(op, params: AttentionParams, where: str):
    if not isinstance(op, IntAttention):
        raise ShapeError(f"{where}: op={type(op).__name__!r} is not an IntAttention")
    for name, v, hi in (("exp_mult", op.exp_mult, (1 << 15) - 1), ("out_mult", op.out_mult, (1 << 15) - 1),
                        ("exp_shift", op.exp_shift, 62), ("out_shift", op.out_shift, 62)):
        if not 0 <= int(v) <= hi:
            raise NumericsError(f"{where}: {name}={v!r} is outside [0, {hi}], the width of the "
                                "kernel's descriptor field; derive constants with make_exp/dyadic")
    if op.out_shift < 1:
        raise NumericsError(f"{where}: out_shift={op.out_shift!r}; IntAttention requires >= 1")


def _check_x(name: str, x, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise NumericsError(f"{where}: {name} has dtype {x.dtype}; pass integer (int8-valued) arrays")
    if x.ndim != 2:
        raise ShapeError(f"{where}: {name} shape {x.shape!r} must be [tokens, dim]")
    if x.size and (x.min() < -128 or x.max() > 127):
        raise NumericsError(f"{where}: {name} values [{x.min()}, {x.max()}] are not int8")
    return x.astype(np.int64)


# ------------------------------------------------------------------------------ jobs
def _stream_beats(layout, x: np.ndarray, group: int, params: AttentionParams, first_last: str,
                  n_beats_framed: int | None = None) -> list[int]:
    """Beats of tokens x (rows in order) for one head group: [rows * C] beats of heads*t_a int8."""
    P = params
    n = x.shape[0]
    C, H, TA, HD = P.chunks, P.heads, P.t_a, P.head_dim
    d = x.shape[1]
    cols = np.zeros((n, H * HD), np.int64)
    lo = group * H * HD
    hi = min(d, lo + H * HD)
    cols[:, :hi - lo] = x[:, lo:hi]
    # [n, H, C, TA] -> [n, C, H, TA]
    beats = cols.reshape(n, H, C, TA).transpose(0, 2, 1, 3).reshape(n * C, H * TA)
    nb = n * C
    first = np.zeros(nb, bool)
    last = np.zeros(nb, bool)
    if nb:
        first[0] = True
        last[-1] = True
    return pack_beats(layout, nb, {"data": beats, "first": first, "last": last})


def attention_job(op: IntAttention, q, k, v, params: AttentionParams, name: str = "attention",
                  stalls: bool = True, seed: int = 0, layouts: dict | None = None) -> dict:
    """One attention op call: out = op(q, k, v) for all queries and heads (head groups of
    ``params.heads`` heads run one after the other; the last group is zero-padded)."""
    if not isinstance(params, AttentionParams):
        raise ShapeError(f"{name}: params={params!r} is not an AttentionParams")
    _check_op(op, params, name)
    q, k, v = (_check_x(n, x, name) for n, x in (("q", q), ("k", k), ("v", v)))
    nq, d = q.shape
    nk = k.shape[0]
    if k.shape[1] != d or v.shape != k.shape:
        raise ShapeError(f"{name}: q {q.shape}, k {k.shape}, v {v.shape} do not agree")
    if d % op.heads:
        raise ShapeError(f"{name}: width {d} is not divisible by heads={op.heads}")
    hd = d // op.heads
    if hd != params.head_dim:
        raise ShapeError(f"{name}: head_dim={hd!r} (dim {d} / {op.heads} heads) differs from the "
                         f"kernel's head_dim={params.head_dim}; rebuild with "
                         f"AttentionParams(head_dim={hd})")
    for what, n in (("queries", nq), ("keys", nk)):
        if not 1 <= n <= params.max_seq:
            raise ShapeError(f"{name}: {n!r} {what} outside [1, max_seq={params.max_seq}]; "
                             f"rebuild with AttentionParams(max_seq>={n})")
    L = layouts or attention_layouts(params)
    P = params
    groups = -(-op.heads // P.heads)
    expected = op(q, k, v).astype(np.int64)
    cfg = pack_beats(L["cfg"], groups, {
        "exp_mult": op.exp_mult, "exp_shift": op.exp_shift, "out_mult": op.out_mult,
        "out_shift": op.out_shift, "n_q": nq, "n_k": nk})
    beats = {"cfg": cfg, "q": [], "k": [], "v": []}
    for g in range(groups):
        kb = _stream_beats(L["k"], k, g, P, "pass")
        vb = _stream_beats(L["v"], v, g, P, "pass")
        base = 0
        while base < nq:
            n = min(nq - base, P.slots)
            beats["q"] += _stream_beats(L["q"], q[base:base + n], g, P, "pass")
            beats["k"] += kb
            beats["v"] += vb
            base += n
    pred = attention_cycles(nq, op.heads, hd, P, n_k=nk)
    n_in = sum(len(b) for b in beats.values())
    return {
        "name": name, "beats": beats, "expected": expected, "groups": groups,
        "heads": op.heads, "hp": P.heads, "t_a": P.t_a, "chunks": P.chunks, "head_dim": hd,
        "o_fields": field_map(L["o"]), "o_bytes": (L["o"].size + 7) // 8,
        "predicted": int(pred), "stalls": bool(stalls), "seed": int(seed),
        "max_cycles": int(20 * pred + 2000 + 10 * n_in),
    }


# ------------------------------------------------------------------------------ building / running
def _build(params: AttentionParams, simulator: str, waves: bool, verbose: bool) -> Path:
    return build_simulator(generate_verilog(params, TOPLEVEL), TOPLEVEL, "attention", simulator, waves, verbose,
                           public=["*__*", "clk", "rst", "error", "busy"], note=repr(params.as_dict()))


def _run(bdir: Path, simulator: str, jobs: list[dict], waves: bool, tag: str,
         verbose: bool) -> list[dict]:
    return run_cocotb_jobs(bdir, simulator, jobs, waves, tag, verbose, toplevel=TOPLEVEL,
                           test_module="accel.sim.attention_tb", jobs_env="ACCEL_ATTN_JOBS",
                           results_env="ACCEL_ATTN_RESULTS")


def run_jobs(jobs: list[dict], params: AttentionParams, simulator: str = "verilator",
             waves: bool = False, rerun_failed_with_waves: bool = True,
             verbose: bool = False) -> list[AttentionResult]:
    """Run jobs (from attention_job) in one simulator process; one result per job."""
    if simulator not in SIMULATORS:
        raise SimulatorUnavailable(f"simulator={simulator!r} is not supported; use one of "
                                   f"{SIMULATORS}")
    if not jobs:
        return []
    return run_with_waveforms_on_failure(jobs, simulator, waves, rerun_failed_with_waves, verbose,
                                         lambda sim, w, v: _build(params, sim, w, v), _run)


def run_attention(op: IntAttention, q, k, v, params: AttentionParams | None = None,
                  simulator: str = "verilator", stalls: bool = True, seed: int = 0,
                  name: str = "attention", waves: bool = False,
                  verbose: bool = False) -> AttentionResult:
    """Run one attention op on the RTL and compare bit for bit with op(q, k, v)."""
    if params is None:
        params = params_for(op, max(np.shape(q)[0], np.shape(k)[0]), dim=np.shape(q)[1])
    job = attention_job(op, q, k, v, params, name=name, stalls=stalls, seed=seed)
    return run_jobs([job], params, simulator, waves=waves, verbose=verbose)[0]


def model_jobs(model: str, params: AttentionParams | None = None, layers=None, image: int = 0,
               stalls: bool = True, seed: int = 0) -> tuple[AttentionParams, list[dict]]:
    """Jobs for the attention op of each layer (default: all) of a zoo model, with the q/k/v
    traced from the integer reference on eval image ``image``."""
    from accel.models.data import eval_set
    from accel.models.quantize import load_reference
    ref = load_reference(model)
    depth = ref.cfg.depth
    if layers is None:
        layers = list(range(depth))
    layers = [layers] if isinstance(layers, int) else list(layers)
    bad = [l for l in layers if not (isinstance(l, (int, np.integer)) and 0 <= l < depth)]
    if bad:
        raise ShapeError(f"{model}: layer {bad[0]!r} outside [0, {depth - 1}] (the model has "
                         f"{depth} layers)")
    images = ref.quantize_images(eval_set(ref.cfg, image + 1).images)
    tr = ref.trace(images[image])
    recs = [tr.get(l, "attention") for l in layers]
    if params is None:
        q0 = recs[0].inputs[0]
        params = params_for(recs[0].op, q0.shape[0], dim=q0.shape[1])
    jobs = []
    for l, rec in zip(layers, recs):
        q, k, v = rec.inputs
        job = attention_job(rec.op, q, k, v, params, name=f"{model}/layer{l}/attention",
                            stalls=stalls, seed=seed + l)
        if not np.array_equal(job["expected"], np.asarray(rec.output, np.int64)):
            raise SimulationError(f"{model}/layer{l}: the op's output differs from the traced "
                                  "output; the trace and the reference disagree")
        jobs.append(job)
    return params, jobs


def run_model(model: str, params: AttentionParams | None = None, layers=None,
              simulator: str = "verilator", stalls: bool = True, seed: int = 0,
              image: int = 0, waves: bool = False, verbose: bool = False,
              progress=None) -> list[AttentionResult]:
    """Run every (or the chosen) layer's attention op of a zoo model on the RTL.

    With ``stalls=False`` the streams never stall and each result's ``cycles`` equals its
    ``predicted_cycles`` (the cost model). ``progress(msg)`` is called at each stage."""
    say = progress or (lambda msg: None)
    say(f"{model}: tracing the integer reference")
    params, jobs = model_jobs(model, params, layers, image, stalls, seed)
    say(f"{model}: {len(jobs)} attention op(s); building/running the {simulator} model of "
        f"AttentionParams({params.key()})")
    res = run_jobs(jobs, params, simulator, waves=waves, verbose=verbose)
    for r in res:
        say(r.describe())
    return res
