"""``accel run``: the main job on one model and board, as a pipeline of named steps.

1. ``evaluate``: the float model against the integer reference on held-out images;
2. ``search``: the design search over the designs the accelerator top builds (accel.build);
3. ``generate``: the accelerator's Verilog, the compiled program and memory image, the design file;
4. ``simulate``: a batch of evaluation images in RTL simulation through the host driver
   (accel.driver on the cocotb backend), logits compared with the integer reference integer by
   integer; one more image through the model testbench for the cycles of every op, beside the
   compiler's cost model;
5. ``build``: the bitstream with the open toolchain (accel.build; open boards only);
6. ``report``: ``report.json``, ``report.md``, ``pareto.png``, ``cycles_per_layer.png``.

Every step writes what it made under the output folder (``steps/<n>_<step>.json`` plus its
files), so each is inspectable; ``stop_after`` ends the run early and ``skip`` leaves steps out
(the report says which and why). The build runs in a thread beside the simulation when both are
on (``parallel``): each takes one core, and neither reads the other's output. A run whose RTL
results differ from the reference raises :class:`RunError` after writing the report: bit-exact
or it is a bug.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from accel.dsp_registers import DEFAULT_DSP_REGISTERS, check_mode
from accel.models.errors import AccelError
from accel.router_watch import DEFAULT_PATIENCE, check_patience

__all__ = ["STEPS", "RunConfig", "RunState", "RunError", "run", "jsonable"]

STEPS = ("evaluate", "search", "generate", "simulate", "build", "report")
SKIPPABLE = ("simulate", "build")


class RunError(AccelError):
    """The run finished but a check failed (the RTL differs from the reference); the report
    folder holds the details."""


@dataclass(frozen=True)
class RunConfig:
    model: str = "digits-moe"
    board: str = "ulx3s-85f"
    out: Path = Path("build/run")
    images: int = 4                      # evaluation images simulated through the host driver
    stalls: bool = True                  # random memory latency and valid/ready stalls in simulation
    skip: tuple[str, ...] = ()           # steps left out (simulate, build)
    stop_after: str = "report"
    parallel: bool = True                # build beside the simulation (2 cores)
    nextpnr_seed: int | None = None      # the build's placement seed (accel build --seed)
    race_seeds: tuple[int | None, ...] = ()  # placed and routed at once, the first to finish wins (None:
                                             # nextpnr's default seed; not with nextpnr_seed; accel build --race-seeds)
    timing_paths: bool = False           # the build lists every endpoint that misses the clock
    dsp_registers: str = DEFAULT_DSP_REGISTERS   # ECP5: flip-flops moved into the DSP blocks (accel.dsp_registers)
    router_patience: int = DEFAULT_PATIENCE      # router2 iterations without progress before the build stops (0: never)
    route_timing: bool | None = None     # place without, route with timing weights (None: the family's default)
    place_seeds: tuple[int | None, ...] = ()   # placed at once, the shortest placement routed (accel build --place-seeds)
    dsp_reseat: bool | None = None       # DSP blocks re-seated before routing (None: the family's default)

    def __post_init__(self):
        if not isinstance(self.images, int) or self.images < 1:
            raise AccelError(f"images={self.images!r}: simulate at least 1 image")
        bad = [s for s in self.skip if s not in SKIPPABLE]
        if bad:
            raise AccelError(f"skip={bad!r}: only {', '.join(SKIPPABLE)} can be skipped")
        if self.stop_after not in STEPS:
            raise AccelError(f"stop_after={self.stop_after!r}: must be one of {', '.join(STEPS)}")
        check_mode(self.dsp_registers)          # before the run's work, not at its build step
        check_patience(self.router_patience)


@dataclass
class RunState:
    """What the steps made so far (each step adds its part)."""
    config: RunConfig
    results: dict[str, dict] = field(default_factory=dict)    # step -> its JSON summary
    seconds: dict[str, float] = field(default_factory=dict)
    perf: object = None                  # accel.perf.Performance of the chosen design
    top_params: object = None            # accel.hdl.top.TopParams
    compiled: object = None              # accel.compiler.Compiled
    cycles_by_op: list = field(default_factory=list)

    def write_step(self, index: int, step: str) -> None:
        path = self.config.out / "steps" / f"{index + 1}_{step}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results[step], indent=2, default=jsonable))


def jsonable(o):
    """JSON for numpy scalars and paths (json.dumps ``default``)."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# ---------------------------------------------------------------------------------------------- steps

def step_evaluate(state: RunState, say) -> dict:
    from accel.evaluate import evaluate
    return evaluate(state.config.model, 0, None, say).to_json()


def step_search(state: RunState, say) -> dict:
    from accel.boards import load_board
    from accel.build import choose_design
    from accel.models.config import load_config
    from accel.plots import pareto_plot
    c = state.config
    cfg, board = load_config(c.model), load_board(c.board)
    choice = choose_design(cfg, board, progress=say)
    state.perf = choice.perf
    out = {"source": choice.source, **choice.perf_json()}
    if choice.search is not None:
        pareto_plot(choice.search, str(c.out / "pareto.png"), f"{cfg.name} on {board.name}")
        out["evaluations"] = choice.search.evaluations
        out["search_seconds"] = round(choice.search.seconds, 3)
        out["pareto_plot"] = "pareto.png"
    design_file = c.out / "design.json"
    design_file.write_text(json.dumps({"model": cfg.name, "board": board.name, "params": choice.perf.design.to_json()},
                                      indent=2))
    out["design_file"] = design_file.name
    return out


def step_generate(state: RunState, say) -> dict:
    from accel.compiler import compile_model
    from accel.hdl.top import generate_verilog
    from accel.models.config import load_config
    from accel.models.quantize import load_reference
    from accel.project import top_params
    c = state.config
    cfg = load_config(c.model)
    tp = top_params(state.perf.design, cfg)
    state.top_params = tp
    rtl = c.out / "rtl"
    rtl.mkdir(parents=True, exist_ok=True)
    say("generating the accelerator's Verilog")
    (rtl / "accel_top.v").write_text(generate_verilog(tp))
    say(f"compiling {cfg.name} for the design")
    comp = compile_model(load_reference(cfg.name), tp)
    state.compiled = comp
    listing = [f"{k:4d} {ins['comment']}" for k, ins in enumerate(comp.program)]
    (c.out / "program.txt").write_text("\n".join(listing) + "\n")
    return {"top_params": tp.to_json(), "verilog": "rtl/accel_top.v", "program": "program.txt",
            "instructions": len(comp.program), "memory_image_bytes": len(comp.image),
            "static_bytes": comp.static_bytes, "activation_bytes": comp.activation_bytes}


def step_simulate(state: RunState, say) -> dict:
    from accel.sim.model_runner import run_driver, run_model
    c = state.config
    say(f"simulating {c.images} image(s) through the host driver ({'with' if c.stalls else 'without'} stalls)")
    drv = run_driver(c.model, c.images, state.top_params, stalls=c.stalls, progress=say)
    say("one image through the model testbench for the cycles of every op")
    one = run_model(c.model, 1, state.top_params, stalls=False, comp=state.compiled, progress=say)
    state.cycles_by_op = one.cycles_by_op
    drv.pop("logits", None)
    per_op = one.as_dict()
    clock = state.perf.design.clock_mhz
    search_cycles = state.perf.cycles_per_image
    measured = {"clock_mhz": clock, "cycles_per_image": one.cycles_per_image,
                "fps": round(clock * 1e6 / one.cycles_per_image, 2) if one.cycles_per_image else None,
                "search_model_cycles": search_cycles,
                "search_model_error": (round(search_cycles / one.cycles_per_image - 1, 4)
                                       if one.cycles_per_image else None),
                "basis": ("RTL cycles of one image without stalls at the design's clock; the search's model "
                          "(accel.perf) does not model the top's single 64-bit memory port, which carries every "
                          "activation and weight, so it is optimistic")}
    return {"driver": drv, "cycles_by_op": one.cycles_by_op, "measured": measured,
            "one_image": {k: per_op[k] for k in ("mismatches", "cycles_per_image", "predicted_cycles_per_image",
                                                  "cycles_error", "cycles_by_kind", "expert_fetches", "active_experts",
                                                  "first_mismatch", "error", "sim_seconds")},
            "bit_exact": bool(drv["bit_exact"] and one.ok)}


def step_build(state: RunState, say) -> dict:
    from accel.build import build_model
    c = state.config
    return build_model(c.board, c.model, c.out / "bitstream", params=c.out / "design.json", seed=c.nextpnr_seed,
                       race_seeds=c.race_seeds,
                       timing_paths=c.timing_paths, dsp_registers=c.dsp_registers,
                       router_patience=c.router_patience, route_timing=c.route_timing,
                       place_seeds=c.place_seeds, dsp_reseat=c.dsp_reseat, progress=say)


def step_report(state: RunState, say) -> dict:
    from accel.plots import cycles_per_layer_plot
    c = state.config
    files = ["report.json", "report.md"] + (["pareto.png"] if (c.out / "pareto.png").exists() else [])
    if state.cycles_by_op:
        cycles_per_layer_plot(state.cycles_by_op, str(c.out / "cycles_per_layer.png"), f"{c.model}, one image")
        files.append("cycles_per_layer.png")
    return {"files": files}


STEP_FUNCTIONS: dict[str, Callable[[RunState, Callable[[str], None]], dict]] = {
    "evaluate": step_evaluate, "search": step_search, "generate": step_generate, "simulate": step_simulate,
    "build": step_build, "report": step_report}


# ---------------------------------------------------------------------------------------------- the run

def run(config: RunConfig, progress: Callable[[str], None] | None = None) -> dict:
    """Run the steps in order (up to ``config.stop_after``, without ``config.skip``); write the
    report folder; return the report."""
    say = progress or (lambda s: None)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    state = RunState(config)
    t_all = time.perf_counter()
    last = STEPS.index(config.stop_after)
    todo = [(i, step) for i, step in enumerate(STEPS[:last + 1])]
    for i, step in todo:
        if step in config.skip:
            say(f"step {i + 1}/{len(STEPS)} {step}: skipped")
            state.results[step] = {"skipped": True}
    run_steps = [(i, s) for i, s in todo if s not in config.skip]
    # simulate and build depend only on generate: with both to run, the build (one core: the
    # YoWASP tools are single-threaded) runs beside the simulation
    parallel = config.parallel and {"simulate", "build"} <= {s for _, s in run_steps}
    pending = None
    for i, step in run_steps:
        if step == "build" and pending is not None:
            _finish(state, i, step, pending, say)
            continue
        if parallel and step == "simulate":
            j = STEPS.index("build")
            say(f"step {j + 1}/{len(STEPS)} build: running beside the simulation")
            pool = ThreadPoolExecutor(max_workers=1)
            t = time.perf_counter()
            fut = pool.submit(STEP_FUNCTIONS["build"], state, lambda m: say(f"[build] {m}"))
            pool.shutdown(wait=False)
            pending = (fut, t)
        say(f"step {i + 1}/{len(STEPS)} {step}")
        t = time.perf_counter()
        try:
            state.results[step] = STEP_FUNCTIONS[step](state, say)
        except Exception:
            if pending is not None:
                say(f"step {step} failed; waiting for the build running beside it to finish")
                pending[0].exception()     # waits; the build's own outcome is in its folder
            raise
        state.seconds[step] = round(time.perf_counter() - t, 2)
        state.write_step(i, step)
        say(f"step {i + 1}/{len(STEPS)} {step} done in {state.seconds[step]:.1f} s")
    report = _report(state, time.perf_counter() - t_all)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=jsonable))
    if "report" in state.results:
        (out / "report.md").write_text(_markdown(report))
    report["report_dir"] = str(out)
    sim = state.results.get("simulate", {})
    if sim and not sim.get("skipped") and not sim["bit_exact"]:
        d, one = sim["driver"], sim["one_image"]
        raise RunError(f"the RTL differs from the integer reference: {d['mismatches']} differing logits over "
                       f"{d['images']} image(s) through the driver (error: {d['error']}), first diverging op of "
                       f"the model testbench: {one['first_mismatch']}; see {out / 'report.json'}")
    return report


def _finish(state: RunState, i: int, step: str, pending, say) -> None:
    """Wait for a step that runs in the background; record it like the others."""
    fut, t = pending
    say(f"step {i + 1}/{len(STEPS)} {step}: waiting for it to finish")
    state.results[step] = fut.result()
    state.seconds[step] = round(time.perf_counter() - t, 2)
    state.write_step(i, step)
    say(f"step {i + 1}/{len(STEPS)} {step} done in {state.seconds[step]:.1f} s (beside the simulation)")


def _report(state: RunState, seconds: float) -> dict:
    c = state.config
    r = state.results
    rep = {"model": c.model, "board": c.board, "images_simulated": c.images, "stalls": c.stalls,
           "steps_run": [s for s in r if not r[s].get("skipped")],
           "steps_skipped": [s for s in r if r[s].get("skipped")],
           **{k: v for k, v in r.items() if k != "report"},
           "seconds": {**state.seconds, "total": round(seconds, 2)}}
    if "simulate" in r and not r["simulate"].get("skipped"):
        rep["bit_exact"] = r["simulate"]["bit_exact"]
    return rep


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _markdown(rep: dict) -> str:
    L = [f"# accel run: {rep['model']} on {rep['board']}", ""]
    if rep["steps_skipped"]:
        L += [f"Steps skipped: {', '.join(rep['steps_skipped'])}.", ""]
    ev = rep.get("evaluate")
    if ev:
        L += ["## Float model vs integer reference", "", "| metric | value |", "|---|---|"]
        L += [f"| {k} | {_fmt(v)} |" for k, v in ev.items()] + [""]
    se = rep.get("search")
    if se:
        L += ["## Design", "", f"Source: {se['source']}.", "", se["basis"], "",
              f"- {se['fps']} FPS predicted at batch 1 ({se['latency_ms']} ms) at {se['clock_mhz']:g} MHz; "
              f"binding resource: {se['binding']}",
              f"- parameters: `{json.dumps(se['params'])}` (in `design.json`)", "",
              "| resource | predicted | available |", "|---|---|---|"]
        L += [f"| {k} | {r['used']:.0f} | {r['available']} |" for k, r in se["resources"].items()]
        if se.get("pareto_plot"):
            L += ["", "![Pareto fronts of the search](pareto.png)"]
        L += [""]
    ge = rep.get("generate")
    if ge:
        L += ["## Generated", "", f"- Verilog: `{ge['verilog']}`; program: `{ge['program']}` "
              f"({ge['instructions']} instructions); memory image {ge['memory_image_bytes']:,} bytes", ""]
    si = rep.get("simulate")
    if si and not si.get("skipped"):
        d, one = si["driver"], si["one_image"]
        L += ["## RTL simulation", "",
              f"- through the host driver: {d['images']} image(s), {d['mismatches']} differing logits "
              f"({'bit-exact' if d['bit_exact'] else 'NOT bit-exact'}); RTL accuracy {_fmt(d['rtl_accuracy'])}, "
              f"integer reference {_fmt(d['int_accuracy'])}; {d['cycles_per_image']:,.0f} cycles/image "
              f"with random stalls",
              f"- one image, op by op (no stalls): {one['cycles_per_image']:,.0f} cycles, cost model "
              f"{one['predicted_cycles_per_image']:,} ({one['cycles_error'] * 100:+.1f}%)",
              f"- {si['measured']['fps']} FPS at {si['measured']['clock_mhz']:g} MHz from the RTL cycles; the "
              f"search's model said {si['measured']['search_model_cycles']:,} cycles "
              f"({si['measured']['search_model_error'] * 100:+.1f}%): {si['measured']['basis']}", "",
              "![Cycles per op](cycles_per_layer.png)", ""]
    bu = rep.get("build")
    if bu and not bu.get("skipped"):
        L += ["## Bitstream", "", f"- `{bu['bitstream']}` ({'timing met' if bu['timing_met'] else 'TIMING NOT MET'})"]
        L += [f"- clock {k}: Fmax {c['achieved_mhz']:.1f} MHz against {c['constraint_mhz']:g} MHz"
              for k, c in bu["clocks"].items()]
        L += ["", "| resource | used | available | % |", "|---|---|---|---|"]
        L += [f"| {k} ({u['cell']}) | {u['used']} | {u['available']} | {100 * u['utilization']:.1f} |"
              for k, u in bu["utilization"].items()]
        p = bu["predicted"]
        if p.get("fps_at_fmax"):
            L += ["", f"- {p['fps_at_fmax']:.1f} FPS predicted at Fmax ({p['basis']})"]
        image = (bu.get("memory_image") or {}).get("input_image")
        if image is not None and str(bu.get("part", "")).startswith("LFE5"):
            folder = Path(bu["bitstream"]).parent.parent
            L += [f"- it carries evaluation image {image}; another one without a rebuild (seconds): "
                  f"`accel reimage --from {folder} --image N --out DIR`"]
        L += [""]
    L += [f"Total {rep['seconds']['total']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in rep["seconds"].items()
                                                                if k != "total")]
    return "\n".join(L) + "\n"
