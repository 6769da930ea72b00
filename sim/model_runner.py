"""Whole-model RTL simulation: compile a model for an accelerator design, run images through the
generated top (hdl/top.py) in cocotb with an AXI memory model, and compare with the reference.

``run_model(name, images=N)`` -> :class:`ModelSimResult`: logits of every image compared with the
integer reference; on a difference, every op's output buffer is read back from the memory image
and compared in execution order with the reference trace, and the first diverging op is reported
(layer, op, index, expected, got) with a waveform of the run when asked for.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from accel.compiler import Compiled, compile_model
from accel.hdl.attention import AttentionParams
from accel.hdl.gate import GateParams
from accel.hdl.layernorm import LayerNormParams
from accel.hdl.linear import LinearParams
from accel.hdl.residual import ResidualParams
from accel.hdl.top import STATUS, TopParams, generate_verilog
from accel.models.errors import ShapeError
from accel.sim.result import build_simulator, run_cocotb_jobs

__all__ = ["ModelSimResult", "top_params_for", "run_model", "model_job", "compare_run", "MEM_BASE"]

TOPLEVEL = "accel_top"
MEM_BASE = 0x4000_0000          # the memory image's bus address: exercises the MEM base register
PUBLIC = ["ap_*", "interrupt", "s_axi_control_*", "m_axi_gmem_*"]


def top_params_for(cfg, t_in: int = 8, t_out: int = 8, n_lanes: int = 2, p: int = 4, t_a: int = 8,
                   heads: int | None = None, lanes: int = 8, max_tokens: int | None = None,
                   max_experts: int | None = None, head: bool = True) -> TopParams:
    """A small design sized to a model config (buffers to its widest layer and its tokens)."""
    d = cfg.dim
    d_ins = [cfg.patch_features, d, cfg.mlp_hidden] + ([cfg.moe.expert_hidden] if cfg.moe else [])
    d_outs = [3 * d, cfg.mlp_hidden, max(cfg.num_classes if head else 1, 1)] + ([cfg.moe.expert_hidden, cfg.moe.experts]
                                                                  if cfg.moe else [])
    tokens = max_tokens or cfg.tokens
    lp = LinearParams(t_in=t_in, t_out=t_out, n_lanes=n_lanes, max_d_in=max(d_ins), max_d_out=max(d_outs),
                      max_tokens=tokens, expert=True)
    ap = AttentionParams(p=p, t_a=t_a, heads=heads or cfg.heads, n_a=1, max_seq=tokens, head_dim=cfg.head_dim)
    ln = LayerNormParams(lanes=lanes, max_channels=_up(d, lanes), stats_steps=4)
    E = max_experts or (cfg.moe.experts if cfg.moe else 2)
    k = cfg.moe.top_k if cfg.moe else 1
    return TopParams(lp, ap, ln, ResidualParams(lanes=lanes), GateParams(max_experts=max(E, 2), max_k=max(k, 1)))


def _up(n, m):
    return -(-n // m) * m


@dataclass
class ModelSimResult:
    model: str
    images: int
    mismatches: int                     # differing logits over all images (0 = bit-exact)
    int_accuracy: float | None
    rtl_accuracy: float | None
    cycles_per_image: float
    predicted_cycles_per_image: int
    cycles_by_kind: dict
    expert_fetches: list[int]           # per image: expert weight fetches (one per active expert)
    active_experts: list[int]           # per image: experts with at least one token, all MoE layers
    first_mismatch: dict | None
    error: str | None
    sim_seconds: float
    waveform: str | None = None
    memory: dict = field(default_factory=dict)
    status: list[int] = field(default_factory=list)
    # image 0, op by op in program order: {"op", "kind", "cycles" (RTL), "predicted" (accel.compiler_cost)}
    cycles_by_op: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0 and self.error is None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["cycles_error"] = (round(self.predicted_cycles_per_image / self.cycles_per_image - 1, 4)
                             if self.cycles_per_image else None)
        return d


def model_job(comp: Compiled, feeds: list[np.ndarray], name: str, stalls: bool, seed: int, latency: int = 12,
              max_cycles: int = 2_000_000, reset_after: int | None = None) -> dict:
    """One testbench job: the image, what the host writes into the input buffer for each run
    (``feeds``), the memory model's behaviour. Without ``stalls`` the memory answers every read
    after ``latency`` cycles at one word per cycle; with them, the latency varies per burst
    (+0..8), ready signals drop 20% of cycles and read beats 10%. ``reset_after``: first start
    the first image and reset the accelerator that many cycles into its run (registers left
    mid-run), then run every image."""
    if reset_after is not None and (isinstance(reset_after, bool) or not isinstance(reset_after, int)
                                    or reset_after < 1):
        raise ValueError(f"reset_after={reset_after!r}: pass a cycle count >= 1 (or None for no reset)")
    inputs = []
    for f in feeds:
        scratch = bytearray(len(comp.image))
        comp.input.write(scratch, f)
        a, n = comp.input.offset, comp.input.rows * comp.input.stride
        inputs.append((a, bytes(scratch[a:a + n])))
    watch = {}
    if comp.logits is not None:
        watch["logits"] = (comp.logits.offset, comp.logits.stride)
    return {"name": name, "image": bytes(comp.image), "base": MEM_BASE, "program_offset": comp.program_offset,
            "inputs": inputs, "stalls": bool(stalls), "seed": int(seed), "latency": latency,
            "jitter": 8 if stalls else 0, "p_ready": 0.8, "p_beat": 0.9 if stalls else 1.0,
            "max_cycles": max_cycles, "keep_memory": True, "watch": watch, "reset_after": reset_after,
            "comments": [i["comment"] for i in comp.program]}


def feeds_for(comp: Compiled, ref, images_q: np.ndarray) -> list[np.ndarray]:
    """The host's input per image: patches, or for a program of blocks the first block's input."""
    if comp.blocks is None:
        return [comp.feed(images_q[k]) for k in range(len(images_q))]
    return [ref.trace(images_q[k]).get(comp.blocks[0], "ln1").inputs[0] for k in range(len(images_q))]


def _first_diff(expected: np.ndarray, got: np.ndarray):
    bad = np.argwhere(expected != got)
    if not len(bad):
        return None, 0
    i = tuple(int(v) for v in bad[0])
    return {"index": list(i), "expected": int(expected[i]), "got": int(got[i])}, len(bad)


def compare_run(comp: Compiled, ref, image_q: np.ndarray, memory: bytes, count_all: bool = False) -> dict | None:
    """The first op whose output in ``memory`` differs from the reference trace of ``image_q``
    (None when every op matches): layer, op, index [row, column], expected, got, count."""
    trace = ref.trace(image_q)
    first, total = None, 0
    names = {(r.layer, r.name) for r in trace.records}
    for o in comp.outputs:
        if (o.layer, o.name) not in names and o.expert >= 0:
            continue            # an expert no token chose: nothing to compare
        rec = trace.get(o.layer, o.name)
        exp = rec.output
        exp = np.asarray(exp if not hasattr(exp, "logits") else exp.logits, np.int64)
        if exp.ndim == 1:
            exp = exp[None]
        rows = exp.shape[0]
        got = o.buffer.read(memory, o.row0 + rows)[o.row0:]
        fd, n = _first_diff(exp, got[:, :exp.shape[1]])
        if fd is not None and first is None:
            first = {"layer": o.layer, "op": o.name, "buffer": o.buffer.name, "mismatching": n, **fd}
            if not count_all:
                return first
        total += n
    if first is not None:
        first["mismatching_total"] = total
    return first


def _build(params: TopParams, simulator: str, waves: bool, verbose: bool):
    return build_simulator(generate_verilog(params, TOPLEVEL), TOPLEVEL, "model", simulator, waves, verbose,
                           public=PUBLIC, note=repr(params.to_json()))


def run_model(name: str = "digits-moe", images: int = 4, params: TopParams | None = None, *, stalls: bool = False,
              seed: int = 0, simulator: str = "verilator", waves: bool = False, verbose: bool = False,
              start: int = 0, progress=None, comp: Compiled | None = None, latency: int = 12,
              blocks: list[int] | None = None, reset_after: int | None = None) -> ModelSimResult:
    """Run ``images`` test images of model ``name`` through the RTL; compare with the reference.
    ``reset_after``: a first run of image 0 cut short by a reset that many cycles in (model_job)."""
    from accel.compiler_cost import MemoryTiming, predict_cycles
    from accel.models.data import eval_set
    from accel.models.reference import load_reference
    say = progress or (lambda msg: None)
    ref = load_reference(name)
    cfg = ref.cfg
    params = params or top_params_for(cfg)
    if comp is None:
        say(f"compiling {name} for the design")
        comp = compile_model(ref, params, blocks)
    split = eval_set(cfg, start + images)
    imgs = split.images[start:start + images]
    labels = split.labels[start:start + images] if split.labels is not None else None
    if len(imgs) < images:
        raise ShapeError(f"model {name!r} has {len(split.images)} evaluation images; asked for {images} from {start}")
    q = ref.quantize_images(imgs)
    out = ref.run(q)
    say(f"building the {simulator} simulator of the accelerator (cached after the first time)")
    bdir = _build(params, simulator, waves, verbose)
    job = model_job(comp, feeds_for(comp, ref, q), name, stalls, seed, latency=latency, reset_after=reset_after)
    say(f"simulating {images} image(s) in RTL")
    t0 = time.time()
    res = run_cocotb_jobs(bdir, simulator, [job], waves, "model", verbose, toplevel=TOPLEVEL,
                          test_module="accel.sim.model_tb", jobs_env="ACCEL_MODEL_JOBS",
                          results_env="ACCEL_MODEL_RESULTS")[0]
    secs = time.time() - t0
    runs = res["runs"]
    error = res["error"]
    mismatches, first = 0, None
    rtl_pred = []
    for k, r in enumerate(runs):
        if r["status"] != STATUS.OK:
            error = error or f"image {k}: the accelerator stopped with status {r['status']} ({STATUS.TEXT.get(r['status'])})"
        if comp.blocks is None:
            got = comp.logits.read(r["memory"])[0] if comp.logits is not None else np.zeros(0)
            exp = out.logits[k]
            n = int((got != exp).sum())
        else:       # one block: every op output of the block, element by element
            got = np.zeros(0)
            diff = compare_run(comp, ref, q[k], r["memory"], count_all=True)
            n = diff["mismatching_total"] if diff else 0
        mismatches += n
        rtl_pred.append(int(np.argmax(got)) if got.size else -1)
        if (n or r["status"] != STATUS.OK) and first is None:
            first = compare_run(comp, ref, q[k], r["memory"]) or {"image": k, "note": "logits differ, no op output did"}
            first["image"] = k
    if len(runs) < images and error is None:
        error = f"only {len(runs)} of {images} images ran"
    int_pred = np.argmax(out.logits, axis=1) if out.logits.shape[1] else None
    has_labels = labels is not None and int_pred is not None
    cyc = [r["cycles"] for r in runs]
    moe_layers = [i for i, b in enumerate(ref.blocks) if hasattr(b.mlp, "gate")]
    run_blocks = set(comp.blocks) if comp.blocks is not None else set(range(len(ref.blocks)))
    active = [sum(len(np.unique(np.asarray(rt)[k])) for layer, rt in zip(moe_layers, out.routing)
                  if layer in run_blocks) for k in range(len(runs))]
    # the model's memory: the job's mean latency; with stalls 0.9 words per cycle at most
    timing = MemoryTiming(latency + (4 if stalls else 0), 0.9 if stalls else 1.0)
    preds = [predict_cycles(comp, ref, q[k:k + 1], timing) for k in range(len(runs))]
    pred = float(np.mean([p[0] for p in preds])) if preds else 0.0
    by_kind = {}
    for k, r in enumerate(runs):
        for op, c in cycles_per_op(comp, r["fetch_cycles"], r["cycles"]):
            kd = kind_of(op)
            by_kind.setdefault(kd, {"cycles": 0, "predicted": 0})
            by_kind[kd]["cycles"] += c / len(runs)
        for kd, c in preds[k][1].items():
            by_kind.setdefault(kd, {"cycles": 0, "predicted": 0})
            by_kind[kd]["predicted"] += c / len(runs)
    by_kind = {kd: {"cycles": int(round(v["cycles"])), "predicted": int(round(v["predicted"]))}
               for kd, v in by_kind.items()}
    by_op = []
    if runs:
        measured = dict(cycles_per_op(comp, runs[0]["fetch_cycles"], runs[0]["cycles"]))
        by_op = [{"op": op, "kind": kind_of(op), "cycles": int(measured.get(op, 0)), "predicted": int(round(c))}
                 for op, c in preds[0][2]]
    return ModelSimResult(
        model=name, images=len(runs), mismatches=mismatches,
        int_accuracy=float(np.mean(int_pred[:len(runs)] == labels[:len(runs)])) if has_labels else None,
        rtl_accuracy=float(np.mean(np.array(rtl_pred) == labels[:len(runs)])) if has_labels and runs else None,
        cycles_per_image=float(np.mean(cyc)) if cyc else 0.0, predicted_cycles_per_image=int(pred),
        cycles_by_kind=by_kind, expert_fetches=[r["fetches"] for r in runs], active_experts=active,
        first_mismatch=first, error=error, sim_seconds=secs, waveform=res.get("waveform"),
        memory={"words_read": res["words_read"], "words_written": res["words_written"], "bursts": res["bursts"],
                "image_bytes": comp.image_bytes, "static_bytes": comp.static_bytes,
                "activation_bytes": comp.activation_bytes, "instructions": len(comp.program)},
        status=[r["status"] for r in runs], cycles_by_op=by_op)


def op_of(comment: str) -> str:
    """The op an instruction belongs to, from its comment: "0/qkv", "1/expert2", "head/norm"."""
    head = comment.split(":")[0]
    layer, _, name = head.partition("/")
    name = name.split(".")[0].split(" ")[0]
    return f"{layer}/{name}" if name else layer


def kind_of(op: str) -> str:
    """Layer kind of an op, for cycles per kind."""
    name = op.split("/")[-1]
    if name.startswith("expert"):
        return "experts"
    return {"ln1": "layernorm", "ln2": "layernorm", "norm": "layernorm", "attention": "attention",
            "res1": "residual", "res2": "residual", "pos_add": "residual", "gate": "gate",
            "moe": "moe_combine", "end": "control"}.get(name, "linear")


def cycles_per_op(comp: Compiled, fetch_cycles: dict, total: int) -> list[tuple[str, int]]:
    """[(op, cycles)] in program order: from the fetch of an op's first instruction to the fetch
    of the next op's first instruction (skipped instructions are never fetched)."""
    ops, starts = [], []
    for k, ins in enumerate(comp.program):
        if k not in fetch_cycles:
            continue
        op = op_of(ins["comment"])
        if not ops or ops[-1] != op:
            ops.append(op)
            starts.append(fetch_cycles[k])
    starts.append(total)
    return [(op, starts[i + 1] - starts[i]) for i, op in enumerate(ops)]


def run_driver(name: str = "digits-moe", images: int = 4, params: TopParams | None = None, *, stalls: bool = False,
               seed: int = 0, start: int = 0, simulator: str = "verilator", progress=None) -> dict:
    """The host driver (accel.driver) on the simulation backend: load the compiled model, run
    ``images`` evaluation images, compare the logits it reads back with the integer reference."""
    from accel.models.data import eval_set
    from accel.models.reference import load_reference
    say = progress or (lambda msg: None)
    ref = load_reference(name)
    params = params or top_params_for(ref.cfg)
    comp = compile_model(ref, params)
    split = eval_set(ref.cfg, start + images)
    q = ref.quantize_images(split.images[start:start + images])
    labels = split.labels[start:start + images] if split.labels is not None else None
    out = ref.run(q)
    say(f"building the {simulator} simulator of the accelerator (cached after the first time)")
    bdir = _build(params, simulator, False, False)
    job = {"name": name, "compiled": comp, "images": q, "memory_bytes": len(comp.image) + 4096, "base": MEM_BASE,
           "stalls": bool(stalls), "seed": int(seed)}
    say(f"host driver: {images} image(s) on the simulated accelerator")
    t0 = time.time()
    res = run_cocotb_jobs(bdir, simulator, [job], False, "driver", False, toplevel=TOPLEVEL,
                          test_module="accel.sim.driver_tb", jobs_env="ACCEL_DRIVER_JOBS",
                          results_env="ACCEL_DRIVER_RESULTS")[0]
    runs = res["runs"]
    got = np.array([r.logits for r in runs]) if runs else np.zeros((0, out.logits.shape[1]))
    mism = int((got != out.logits[:len(runs)]).sum()) if runs else 0
    rtl_pred = got.argmax(axis=1) if got.size else np.zeros(0)
    int_pred = out.logits.argmax(axis=1)
    return {"model": name, "images": len(runs), "mismatches": mism, "error": res["error"],
            "bit_exact": res["error"] is None and mism == 0 and len(runs) == images,
            "rtl_accuracy": float(np.mean(rtl_pred == labels[:len(runs)])) if labels is not None and runs else None,
            "int_accuracy": float(np.mean(int_pred[:len(runs)] == labels[:len(runs)])) if labels is not None and runs
            else None,
            "cycles_per_image": float(np.mean([r.cycles for r in runs])) if runs else 0.0,
            "expert_fetches": [r.expert_fetches for r in runs], "sim_seconds": round(time.time() - t0, 1),
            "logits": got.tolist()}
