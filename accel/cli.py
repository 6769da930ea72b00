"""The ``accel`` command line. Every subcommand takes ``--json`` (one JSON document on stdout;
progress and errors go to stderr). Errors exit with status 2 and say what to fix."""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from accel.dsp_registers import DEFAULT_DSP_REGISTERS, DSP_REGISTER_MODES
from accel.models.errors import AccelError
from accel.perf import performance_json
from accel.router_watch import DEFAULT_PATIENCE
from accel.run import jsonable

DEFAULT_MODEL = "digits-moe"
DEFAULT_BOARD = "ulx3s-85f"
# The seed race (--race-seeds: whole place-and-route runs at once, the first to finish wins) is off
# by default: two racers on 2 cores slow each other (the run design's default seed took 883 s racing
# seed 1 against 797 s alone); a build whose first placement stalls in routing is what it is for
# (a stalled racer is dropped). --race-seeds default,1 asks.
DEFAULT_RACE_SEEDS: tuple[int | None, ...] = ()
# The placement race of `accel run` (--place-seeds: placements at once, the shortest routed)
DEFAULT_PLACE_SEEDS: tuple[int | None, ...] = ()


def _seed_list(text: str) -> tuple[int | None, ...]:
    """--race-seeds: 'none', or two or more different seeds, comma-separated: integers in
    [0, 2**31) or 'default' (nextpnr's own default seed)."""
    if text.strip().lower() == "none":
        return ()
    try:
        seeds = tuple(None if t.strip() == "default" else int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated seeds, integers or 'default', e.g. "
                                         "default,1 (or none)") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or not all(sd is None or 0 <= sd < 2 ** 31 for sd in seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: race two or more different seeds (integers in [0, 2**31) or "
                                         "'default'), e.g. default,1 (or none)")
    return seeds


def _progress(enabled: bool):
    def say(msg: str) -> None:
        if enabled:
            print(f"[accel] {msg}", file=sys.stderr, flush=True)
    return say


def cmd_models(args) -> dict:
    from accel.models.config import load_config, zoo_names
    rows = []
    for name in zoo_names():
        c = load_config(name)
        macs = c.macs_per_image()
        rows.append({
            "name": c.name, "image_size": list(c.image_size), "patch_size": c.patch_size,
            "tokens": c.tokens, "dim": c.dim, "depth": c.depth, "heads": c.heads,
            "mlp_hidden": c.mlp_hidden, "moe_layers": list(c.moe.layers) if c.moe else [],
            "experts": c.moe.experts if c.moe else 0, "top_k": c.moe.top_k if c.moe else 0,
            "expert_hidden": c.moe.expert_hidden if c.moe else 0, "tasks": c.tasks,
            "num_classes": c.num_classes, "weights": c.weights, "dataset": c.data.dataset,
            "gmac_per_image": round(macs["total"] / 1e9, 4)})
    if not args.json:
        print(f"{'model':<16}{'image':>10}{'tokens':>7}{'dim':>5}{'depth':>6}{'heads':>6}"
              f"{'experts':>8}{'top-k':>6}{'GMAC':>8}  weights")
        for r in rows:
            img = "x".join(map(str, r["image_size"]))
            print(f"{r['name']:<16}{img:>10}{r['tokens']:>7}{r['dim']:>5}{r['depth']:>6}{r['heads']:>6}"
                  f"{r['experts']:>8}{r['top_k']:>6}{r['gmac_per_image']:>8.3f}  {r['weights']}")
    return {"models": rows}


def cmd_boards(args) -> dict:
    from accel.boards import board_names, load_board
    rows = [load_board(n).to_json() for n in board_names()]
    if not args.json:
        print(f"{'board':<12}{'part':<24}{'family':<7}{'flow':<9}{'LUT':>9}{'FF':>10}{'DSP':>6}  {'BRAM':<12}"
              f"{'URAM':>5}{'MHz':>6}{'GB/s':>8}")
        for b in rows:
            r = b["resources"]
            print(f"{b['name']:<12}{b['part']:<24}{b['family']:<7}{b['flow']:<9}{r['lut']:>9}{r['ff']:>10}"
                  f"{r['dsp']:>6}  {str(r['bram']) + ' x ' + str(b['bram_kbits']) + 'Kb':<12}{r['uram']:>5}"
                  f"{b['target_mhz']:>6.0f}{b['offchip_gb_per_s']:>8.2f}")
    return {"boards": rows}


def cmd_eval(args) -> dict:
    from accel.evaluate import evaluate
    res = evaluate(args.model, args.task, args.images, _progress(True)).to_json()
    if not args.json:
        print(f"model {res['model']} task {res['task']}: {res['samples']} held-out images")
        if res["fp_accuracy"] is not None:
            print(f"  float accuracy    {res['fp_accuracy']:.4f}")
            print(f"  integer accuracy  {res['int_accuracy']:.4f}")
        print(f"  feature cosine    {res['cosine']:.5f} (min {res['cosine_min']:.5f})")
        if res["top1_agreement"] is not None:
            print(f"  top-1 agreement   {res['top1_agreement']:.4f}")
        if res["routing_agreement"] is not None:
            print(f"  routing agreement {res['routing_agreement']:.4f} (tokens x MoE layers with the float expert set)")
    return res


def cmd_trace(args) -> dict:
    from accel.models.data import eval_set
    from accel.models.quantize import load_reference
    ref = load_reference(args.model, args.task)
    data = eval_set(ref.cfg, args.image + 1)
    if args.image >= len(data.images):
        raise AccelError(f"--image {args.image} is out of range: the evaluation set of {ref.cfg.name!r} "
                         f"has {len(data.images)} images")
    tr = ref.trace(ref.quantize_images(data.images[args.image:args.image + 1]))
    ops = []
    for r in tr:
        out = r.output.logits if hasattr(r.output, "logits") else r.output
        ops.append({"layer": r.layer, "op": r.name, "kind": type(r.op).__name__,
                    "inputs": [list(a.shape) for a in r.inputs], "output": list(out.shape),
                    "output_min": int(out.min()) if out.size else None,
                    "output_max": int(out.max()) if out.size else None,
                    "tokens": None if r.tokens is None else int(r.tokens.size)})
    if not args.json:
        for o in ops:
            tok = f" tokens={o['tokens']}" if o["tokens"] is not None else ""
            print(f"{str(o['layer']):>6} {o['op']:<14} {o['kind']:<15} in={o['inputs']} out={o['output']} "
                  f"range=[{o['output_min']}, {o['output_max']}]{tok}")
    return {"model": ref.cfg.name, "task": args.task, "image": args.image, "ops": ops}


def cmd_import(args) -> dict:
    from accel.models.importer import import_checkpoint
    size = None
    if args.image_size:
        try:
            h, w = (int(v) for v in args.image_size.lower().split("x"))
        except ValueError:
            raise AccelError(f"--image-size {args.image_size!r} must look like 224x224") from None
        size = (h, w)
    res = import_checkpoint(Path(args.checkpoint), args.layout, args.name, args.heads, args.top_k, args.task,
                            args.gate, size, Path(args.out), tuple(args.ignore)).to_json()
    if not args.json:
        print(f"imported {args.checkpoint} as {res['name']}: {res['yaml']}")
        print(f"  {res['depth']} blocks, dim {res['dim']}, {res['heads']} heads, {res['tokens']} tokens, "
              f"MoE blocks {res['moe_layers']} ({res['experts']} experts, top-{res['top_k']}, {res['tasks']} task gate(s))")
        for n in res["notes"]:
            print(f"  note: {n}")
        if res["skipped"]:
            print(f"  skipped on request: {', '.join(res['skipped'])}")
        print(f"  use it as: accel eval --model {res['name']}")
    return res


def cmd_dse(args) -> dict:
    from accel.boards import load_board
    from accel.dse import exhaustive_search, heuristic_search
    from accel.models.config import load_config
    cfg, board = load_config(args.model), load_board(args.board)
    search = exhaustive_search if args.exhaustive else heuristic_search
    res = search(cfg, board, objective=args.objective, progress=_progress(True))
    out = {"model": cfg.name, "board": board.name, "objective": args.objective, "method": res.method,
           **performance_json(res.best, board), "evaluations": res.evaluations, "seconds": round(res.seconds, 3)}
    if args.plot:
        from accel.plots import pareto_plot
        pareto_plot(res, args.plot, f"{cfg.name} on {board.name} ({res.method}, {res.evaluations} designs)")
        out["plot"] = args.plot
    if not args.json:
        lp, ap = res.best.design.linear, res.best.design.attention
        print(f"{cfg.name} on {board.name}: {out['fps']:.1f} FPS at batch 1 ({out['latency_ms']:.3f} ms), "
              f"{out['throughput_fps']:.1f} FPS overlapped, {out['gops']:.1f} GOPS, DSP efficiency "
              f"{out['dsp_efficiency']:.2f}  [{out['basis']}]")
        print(f"  linear t_in={lp.t_in} t_out={lp.t_out} n_lanes={lp.n_lanes}; attention p={ap.p} t_a={ap.t_a} "
              f"heads={ap.heads} n_a={ap.n_a}; layernorm lanes={res.best.design.layernorm.lanes}")
        for k, r in out["resources"].items():
            util = "" if r["utilization"] is None else f"{100 * r['utilization']:.1f}%"
            print(f"  {k.upper():<5} {r['used']:>10.0f} / {r['available']:<9} {util}")
        print(f"  binding: {out['binding']}; {res.evaluations} evaluations in {out['seconds']} s")
    return out


def _sim_trace(args):
    from accel.models.data import eval_set
    from accel.models.quantize import load_reference
    ref = load_reference(args.model, args.task)
    data = eval_set(ref.cfg, args.image + 1)
    if args.image >= len(data.images):
        raise AccelError(f"--image {args.image} is out of range: the evaluation set of {ref.cfg.name!r} "
                         f"has {len(data.images)} images")
    return ref, ref.trace(ref.quantize_images(data.images[args.image:args.image + 1]))


def _layer_filter(layers: list[str] | None):
    if not layers:
        return lambda layer: True
    want = {str(v) for v in layers}
    return lambda layer: str(layer) in want


def _sim_summary(kind: str, model: str, results: list, simulator: str) -> dict:
    ops = [{"op": r.name, "ok": r.ok, "checked": int(np.prod(r.expected_shape)) if r.checked else 0,
            "mismatches": r.mismatches, "cycles": r.cycles, "predicted_cycles": r.predicted_cycles,
            "first_mismatch": r.first_mismatch, "error": r.error, "waveform": r.waveform} for r in results]
    return {"kernel": kind, "model": model, "simulator": simulator, "ops": len(ops),
            "checked": sum(o["checked"] for o in ops), "mismatches": sum(o["mismatches"] for o in ops),
            "failed_ops": [o["op"] for o in ops if not o["ok"]],
            "cycles": sum(o["cycles"] for o in ops), "predicted_cycles": sum(o["predicted_cycles"] for o in ops),
            "details": ops}


def cmd_sim_linear(args) -> dict:
    from accel.hdl.linear import LinearParams
    from accel.sim.linear_runner import run_jobs, trace_jobs
    ref, tr = _sim_trace(args)
    cfg = ref.cfg
    keep = _layer_filter(args.layer)
    tr.records = [r for r in tr.records if keep(r.layer)]
    d_ins = [cfg.patch_features, cfg.dim, cfg.mlp_hidden] + ([cfg.moe.expert_hidden] if cfg.moe else [])
    d_outs = [3 * cfg.dim, cfg.mlp_hidden, max(cfg.num_classes, 1)] + ([cfg.moe.expert_hidden, cfg.moe.experts] if cfg.moe else [])
    params = LinearParams(t_in=args.t_in, t_out=args.t_out, n_lanes=args.lanes, max_d_in=max(d_ins),
                          max_d_out=max(d_outs), max_tokens=cfg.tokens, expert=cfg.moe is not None)
    jobs = trace_jobs(tr, params, stalls=not args.no_stalls)
    if not jobs:
        raise AccelError(f"no linear op of {cfg.name!r} matches --layer {args.layer}")
    _progress(True)(f"simulating {len(jobs)} linear ops of {cfg.name} on {args.simulator}")
    results = run_jobs(jobs, params, simulator=args.simulator)
    out = _sim_summary("linear", cfg.name, results, args.simulator) | {"params": params.as_dict()}
    if not args.json:
        for r in results:
            print(r.describe())
        print(f"{out['ops']} ops, {out['checked']} integers checked, {out['mismatches']} mismatches, "
              f"{out['cycles']} cycles (model {out['predicted_cycles']})")
    return out


def cmd_sim_attention(args) -> dict:
    from accel.sim.attention_runner import run_model
    if args.task:
        raise AccelError("--task: accel sim attention traces task 0 only; drop --task")
    layers = None
    if args.layer:
        try:
            layers = [int(v) for v in args.layer]
        except ValueError:
            raise AccelError(f"--layer {args.layer!r}: attention layers are block indices (0, 1, ...)") from None
    results = run_model(args.model, layers=layers, simulator=args.simulator, stalls=not args.no_stalls,
                        image=args.image, progress=_progress(True))
    out = _sim_summary("attention", args.model, results, args.simulator)
    if not args.json:
        print(f"{out['ops']} ops, {out['checked']} integers checked, {out['mismatches']} mismatches, "
              f"{out['cycles']} cycles (model {out['predicted_cycles']})")
    return out


def cmd_sim_model(args) -> dict:
    from accel.models.config import load_config
    from accel.sim.model_runner import run_model, top_params_for
    design_cfg = load_config(args.design_for or args.model)
    blocks = None
    if args.layer is not None:
        blocks = [args.layer]
    params = top_params_for(design_cfg, t_in=args.t_in, t_out=args.t_out, n_lanes=args.lanes, p=args.slots,
                            head=blocks is None)
    r = run_model(args.model, images=args.images, params=params, stalls=args.stalls, seed=args.seed,
                  simulator=args.simulator, waves=args.waves, start=args.start, latency=args.latency,
                  progress=_progress(True), blocks=blocks)
    out = r.as_dict()
    out["design"] = params.to_json()
    out["design_for"] = design_cfg.name
    if not args.json:
        state = "bit-exact" if r.ok else "FAILED"
        print(f"{args.model}: {r.images} images {state}: {r.mismatches} mismatching logits; "
              f"accuracy RTL {r.rtl_accuracy} / integer reference {r.int_accuracy}")
        print(f"cycles per image {r.cycles_per_image:.0f} (model {r.predicted_cycles_per_image}, "
              f"{out['cycles_error']:+.1%}); expert weight fetches {r.expert_fetches} for active experts "
              f"{r.active_experts}")
        for k, v in r.cycles_by_kind.items():
            print(f"  {k:<12} {v['cycles']:>9} cycles (model {v['predicted']})")
        if r.first_mismatch:
            print(f"first diverging op: {r.first_mismatch}")
        if r.error:
            print(f"error: {r.error}")
    return out


def cmd_run(args) -> dict:
    """The main job: evaluate, search, generate, simulate through the host driver, build, report."""
    from accel.run import RunConfig, run
    skip = tuple(s for s, off in (("simulate", args.no_sim), ("build", args.no_build)) if off)
    cfg = RunConfig(model=args.model, board=args.board, out=Path(args.out), images=args.images,
                    stalls=not args.no_stalls, skip=skip, stop_after=args.stop_after, parallel=not args.serial,
                    nextpnr_seed=args.seed, race_seeds=args.race_seeds, timing_paths=args.timing_paths,
                    dsp_registers=args.dsp_registers, router_patience=args.router_patience,
                    route_timing=False if args.no_route_timing else None, place_seeds=args.place_seeds,
                    dsp_reseat=False if args.no_dsp_reseat else None)
    rep = run(cfg, progress=_progress(True))
    if not args.json:
        out = Path(rep["report_dir"])
        print(f"accel run: {args.model} on {args.board}")
        ev = rep.get("evaluate")
        if ev:
            if ev["fp_accuracy"] is not None:
                print(f"  float accuracy {ev['fp_accuracy']:.4f}, integer accuracy {ev['int_accuracy']:.4f} "
                      f"on {ev['samples']} held-out images")
            print(f"  feature cosine {ev['cosine']:.5f}, top-1 agreement {ev['top1_agreement']}")
        se = rep.get("search")
        if se:
            print(f"  design: {se['fps']:.1f} FPS predicted at {se['clock_mhz']:g} MHz ({se['source']})")
        si = rep.get("simulate")
        if si and not si.get("skipped"):
            d = si["driver"]
            print(f"  RTL through the host driver: {d['images']} image(s), {d['mismatches']} differing logits "
                  f"({'bit-exact' if si['bit_exact'] else 'NOT bit-exact'}), {d['cycles_per_image']:,.0f} cycles/image "
                  f"with stalls; {si['measured']['fps']} FPS at {si['measured']['clock_mhz']:g} MHz without")
        bu = rep.get("build")
        if bu and not bu.get("skipped"):
            fm = bu["predicted"]["fmax_mhz"]
            print(f"  bitstream: {bu['bitstream']}, Fmax {fm:.1f} MHz ({'met' if bu['timing_met'] else 'NOT met'})")
        print(f"  report: {out / 'report.md'} ({rep['seconds']['total']:.0f} s)")
    return rep


def _hls4ml(model: str, board: str, out, layers: str | None, images: int) -> dict:
    import contextlib
    from accel.boards import load_board
    from accel.hls4ml_export import export_layers
    b = load_board(board)
    if b.flow not in ("vivado", "vitis"):
        raise AccelError(f"--board {board}: hls4ml writes Vitis HLS projects for AMD parts; {board} is built with "
                         f"the {b.flow} flow ({b.part}); pass an AMD board such as zcu102, kv260 or u280")
    with contextlib.redirect_stdout(sys.stderr):      # hls4ml prints as it converts; --json owns stdout
        return export_layers(model, out, layers=layers.split(",") if layers else None, images=images, part=b.part,
                             progress=_progress(True))


def _print_hls4ml(doc: dict) -> None:
    print(f"hls4ml export of {doc['model']} ({doc['backend']}, {doc['part']}): "
          f"{'bit-exact' if doc['bit_exact'] else 'MISMATCHES'} on {doc['images']} image(s)")
    for c in doc["layers"]:
        print(f"  {c['layer']:<16} {c['d_in']:>5} -> {c['d_out']:<5} {c['rows']:>4} rows  "
              f"accumulator mismatches {c['acc_mismatches']}, output mismatches {c['out_mismatches']}  {c['project']}")


def _check_hls4ml(doc: dict, out, quiet: bool) -> None:
    if not quiet:
        _print_hls4ml(doc)
    if not doc["bit_exact"]:
        raise AccelError(f"hls4ml's C simulation differs from the integer reference; see {out}/hls4ml.json")


def cmd_hls4ml(args) -> dict:
    doc = _hls4ml(args.model, args.board, args.out, args.layers, args.images)
    _check_hls4ml(doc, args.out, args.json)
    return doc


def cmd_project(args) -> dict:
    from accel.project import generate_project
    res = generate_project(args.board, args.model, args.out, params=args.params, progress=_progress(True))
    hls = None
    if args.hls4ml:
        hls = res["hls4ml"] = _hls4ml(args.model, args.board, Path(args.out) / "hls4ml", None, 2)
    if not args.json:
        p = res["predicted"]
        print(f"{res['model']} on {res['board']} ({res['part']}, {res['flow']}): project in {res['out']}")
        print(f"  {p['fps']:.1f} FPS predicted at {res['clock_mhz']:g} MHz ({p['fps_at_port_bandwidth']:.1f} with one "
              f"{res['top']['mem_data_bits']}-bit memory port); parameters from {res['params_source']}")
        print(f"  build: cd {res['out']} && " + " && ".join(res["commands"]) + "   (see README.md there)")
    if hls is not None:
        _check_hls4ml(hls, Path(args.out) / "hls4ml", args.json)
    return res


def cmd_build(args) -> dict:
    from accel.build import build_model
    res = build_model(args.board, args.model, args.out, params=args.params, image=args.image, dsp=not args.no_dsp,
                      dsp_budget=args.dsp_budget, clock_mhz=args.clock_mhz, timing_driven=args.timing_driven,
                      seed=args.seed, timing_paths=args.timing_paths,
                      race_seeds=args.race_seeds, dsp_registers=args.dsp_registers,
                      router_patience=args.router_patience, route_timing=False if args.no_route_timing else None,
                      place_seeds=args.place_seeds, dsp_reseat=False if args.no_dsp_reseat else None,
                      progress=_progress(True))
    if not args.json:
        p = res["predicted"]
        print(f"{res['model']} on {res['board']} ({res['part']}): {res['bitstream']}")
        for clk, c in res["clocks"].items():
            print(f"  clock {clk}: Fmax {c['achieved_mhz']:.1f} MHz, constraint {c['constraint_mhz']:g} MHz "
                  f"({'met' if c['met'] else 'FAILED'})")
        for k, u in res["utilization"].items():
            print(f"  {k.upper():<5} {u['used']:>7} / {u['available']:<7} {100 * u['utilization']:.1f}%  ({u['cell']})")
        fps = f"{p['fps_at_fmax']:.1f} FPS predicted at Fmax {p['fmax_mhz']:.1f} MHz, " if p["fps_at_fmax"] else ""
        print(f"  {fps}{p['fps_at_clock']:.1f} at the {p['clock_mhz']:g} MHz clock [{p['basis']}]")
        print(f"  {res['seconds']['total']:.0f} s; report: {res['report']}")
    return res


def cmd_reimage(args) -> dict:
    from accel.reimage import reimage
    res = reimage(args.source, args.out, args.image, progress=_progress(True))
    if not args.json:
        r = res["reimaged_from"]
        print(f"{res['model']} on {res['board']}: {res['bitstream']} carries evaluation image "
              f"{res['memory_image']['input_image']} (the build had {r['input_image']}; {r['blocks_changed']} of "
              f"{r['blocks']} image blocks rewritten) in {res['seconds']['reimage']:.1f} s; the build's routed design, "
              f"its timing and utilization unchanged; report: {res['report']}")
    return res


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="accel", description="FPGA co-design for quantized MoE vision transformers")
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        p.set_defaults(fn=fn)
        return p

    add("models", cmd_models, "list the model zoo")
    add("boards", cmd_boards, "list the boards with their resources")
    p = add("eval", cmd_eval, "float model vs integer reference on held-out images")
    p.add_argument("--model", required=True, help="zoo name or path to a model .yaml")
    p.add_argument("--task", type=int, default=0, help="task gate (multi-task MoE models)")
    p.add_argument("--images", type=int, default=None, help="limit the number of evaluation images")
    p = add("trace", cmd_trace, "run one image through the integer reference and list every op")
    p.add_argument("--model", required=True)
    p.add_argument("--task", type=int, default=0)
    p.add_argument("--image", type=int, default=0, help="index into the evaluation set")
    p = add("import", cmd_import, "import a timm ViT or M3ViT MoE-ViT checkpoint as a model")
    p.add_argument("checkpoint", help=".pth/.pt state_dict (or a dict holding one under 'model'/'state_dict')")
    p.add_argument("--layout", required=True, choices=["timm", "m3vit"])
    p.add_argument("--name", required=True, help="the new model's name")
    p.add_argument("--heads", type=int, default=None, help="attention heads (the checkpoint cannot tell)")
    p.add_argument("--top-k", type=int, default=None, help="experts per token (MoE checkpoints)")
    p.add_argument("--task", type=int, default=None, help="import only this task's gate (default: all)")
    p.add_argument("--gate", default="vmoe", choices=["vmoe", "noisy"],
                   help="vmoe: softmax over all experts then top-k; noisy: softmax over the top-k")
    p.add_argument("--image-size", default=None, help="HxW when the patch grid is not square")
    p.add_argument("--ignore", action="append", default=[], metavar="PREFIX",
                   help="skip checkpoint keys starting with PREFIX (e.g. a task decoder); listed in the result")
    p.add_argument("--out", default="build/models", help="folder for NAME/NAME.yaml and NAME.npz")
    sim = sub.add_parser("sim", help="run a model's ops through the generated RTL, bit for bit against the reference")
    sim_sub = sim.add_subparsers(dest="kernel", required=True)

    def add_sim(name, fn, help_):
        q = sim_sub.add_parser(name, help=help_, description=help_)
        q.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        q.add_argument("--model", required=True)
        q.add_argument("--task", type=int, default=0)
        q.add_argument("--image", type=int, default=0, help="index into the evaluation set")
        q.add_argument("--layer", action="append", default=None,
                       help="only this layer (a block index, 'embed' or 'head'); repeatable")
        q.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
        q.add_argument("--no-stalls", action="store_true", help="no random valid/ready stalls")
        q.set_defaults(fn=fn, command=f"sim {name}")
        return q

    q = add_sim("linear", cmd_sim_linear, "the model's linear ops through the linear kernel")
    q.add_argument("--t-in", type=int, default=8)
    q.add_argument("--t-out", type=int, default=8)
    q.add_argument("--lanes", type=int, default=2)
    add_sim("attention", cmd_sim_attention, "the model's attention ops through the streaming attention kernel")
    h = "the whole model through the accelerator top (controller, kernels, AXI memory model)"
    q = sim_sub.add_parser("model", help=h, description=h)
    q.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    q.add_argument("--model", required=True)
    q.add_argument("--images", type=int, default=4, help="evaluation images to run")
    q.add_argument("--start", type=int, default=0, help="first evaluation image")
    q.add_argument("--design-for", default=None, metavar="MODEL",
                   help="size the design for this model instead (one design, several models)")
    q.add_argument("--t-in", type=int, default=8)
    q.add_argument("--t-out", type=int, default=8)
    q.add_argument("--lanes", type=int, default=2)
    q.add_argument("--slots", type=int, default=4, help="attention query slots (AttentionParams.p)")
    q.add_argument("--layer", type=int, default=None,
                   help="only this encoder block, from its input residual stream (one layer of a large model)")
    q.add_argument("--latency", type=int, default=12, help="memory read latency in cycles")
    q.add_argument("--stalls", action="store_true",
                   help="random ready/valid stalls on every AXI channel and random read latency")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--waves", action="store_true", help="keep a waveform of the run")
    q.add_argument("--simulator", default="verilator", choices=["verilator", "icarus"])
    q.set_defaults(fn=cmd_sim_model, command="sim model")
    p = add("dse", cmd_dse, "design-space search: the best design for a model on a board")
    p.add_argument("--board", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--objective", default="latency", choices=["latency", "throughput"],
                   help="latency: FPS at batch 1; throughput: attention and linear kernels overlapped")
    p.add_argument("--exhaustive", action="store_true", help="evaluate every design of the space")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="explored designs and the Pareto fronts")
    p = add("project", cmd_project, "a Vivado (Zynq UltraScale+) or Vitis (Alveo) project for an AMD board")
    p.add_argument("--board", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="project folder (created)")
    p.add_argument("--params", default=None, metavar="FILE.json",
                   help="the design from `accel dse --json` instead of running the search")
    p.add_argument("--hls4ml", action="store_true",
                   help="also export the MLP/expert linear layers as hls4ml (Vitis HLS) projects under OUT/hls4ml, "
                        "each checked against the integer reference in hls4ml's C simulation")
    p = add("hls4ml", cmd_hls4ml, "the MLP and expert linear layers as hls4ml Vitis HLS projects, checked in C "
                                  "simulation against the integer reference")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--board", default="zcu102", help="an AMD board: its part goes into the projects")
    p.add_argument("--out", default="build/hls4ml", help="folder for the projects and hls4ml.json (created)")
    p.add_argument("--layers", default=None, help="comma-separated, e.g. 0/fc1,1/expert2.fc2 (default: all)")
    p.add_argument("--images", type=int, default=2, help="evaluation images whose activations are checked")
    p = add("build", cmd_build, "a bitstream with the open toolchain (ECP5, iCE40) and its timing/utilization report")
    p.add_argument("--board", default=DEFAULT_BOARD)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", default="build/bitstream", help="folder for report.json and gateware/ (created)")
    p.add_argument("--params", default=None, metavar="FILE.json",
                   help="the design from `accel dse --json` instead of running the search")
    p.add_argument("--image", type=int, default=0, metavar="N",
                   help="the evaluation image the bitstream's memory carries (default 0; for another one after the "
                        "build: accel reimage)")
    p.add_argument("--no-dsp", action="store_true", help="every multiplier in LUTs")
    p.add_argument("--dsp-budget", type=int, default=None, metavar="N",
                   help="DSP blocks the multipliers may use (default: the part's count); the products cheapest "
                        "in LUTs beyond it are built from LUTs")
    p.add_argument("--clock-mhz", type=float, default=None, metavar="MHZ",
                   help="build for this accelerator clock instead of the design's (e.g. the Fmax a build reported)")
    p.add_argument("--timing-driven", action="store_true",
                   help="timing-driven placement and routing (on the digits-moe accelerator it routed one netlist "
                        "at 36.2 MHz against 34.3 without, and diverged on the current one)")
    p.add_argument("--seed", type=int, default=None, metavar="N",
                   help="nextpnr's random seed: another placement (wirelength and routing time vary with it); "
                        "no placement race")
    p.add_argument("--race-seeds", type=_seed_list, default=DEFAULT_RACE_SEEDS, metavar="S,S,...",
                   help="place and route with each seed at once, the first to finish wins, e.g. default,1 "
                        "('default': nextpnr's own seed; default: none, one run)")
    p.add_argument("--timing-paths", action="store_true",
                   help="list every endpoint that misses the clock, grouped by signal, in report.json "
                        "(nextpnr writes its per-endpoint arrivals and the routed netlist, ~150 MB)")
    p.add_argument("--dsp-registers", choices=DSP_REGISTER_MODES, default=DEFAULT_DSP_REGISTERS,
                   help="ECP5: which flip-flops around the DSP blocks become the blocks' own registers after "
                        "synthesis: none, the output's, or the output's and the operands' (default: %(default)s)")
    p.add_argument("--router-patience", type=int, default=DEFAULT_PATIENCE, metavar="N",
                   help="stop place and route when router2 goes N iterations without a new low of overused wires "
                        "(a low of 50 or more): no logged build that stalled so routed (0: never; default: %(default)s)")
    p.add_argument("--place-seeds", type=_seed_list, default=(), metavar="S,S,...",
                   help="place with each seed at once, then route only the shortest placement, e.g. default,1 "
                        "(not with --seed or --race-seeds; default: none, one run)")
    p.add_argument("--no-route-timing", action="store_true",
                   help="ECP5: route without timing weights in the place-and-route run itself (by default the design "
                        "is placed without them, then routed with them in a second nextpnr run: 41.6 -> 43.9 MHz on "
                        "the same digits-moe placement)")
    p.add_argument("--no-dsp-reseat", action="store_true",
                   help="ECP5: route the placement as placed (by default the DSP blocks are moved next to the logic "
                        "they connect between placement and routing: 41.3 -> 44.6 MHz in accel run on a digits-moe "
                        "placement, 44.1 -> 53.9 routed by hand)")
    p = add("reimage", cmd_reimage, "another evaluation image into a built ECP5 bitstream, without synthesis or "
            "place and route (seconds, not a rebuild)")
    p.add_argument("--from", dest="source", required=True, metavar="DIR",
                   help="the --out folder of an `accel build` (or an `accel run` report's bitstream/ folder)")
    p.add_argument("--image", type=int, required=True, help="index into the model's evaluation set")
    p.add_argument("--out", required=True, help="folder for report.json and gateware/top.bit (created)")
    p = add("run", cmd_run, "the main job on the bundled default model and board: evaluate, search, generate, "
                            "simulate through the host driver, build the bitstream, report")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--board", default=DEFAULT_BOARD)
    p.add_argument("--out", default="build/run", help="report folder")
    p.add_argument("--images", type=int, default=8, help="evaluation images simulated through the host driver")
    p.add_argument("--no-stalls", action="store_true", help="simulate without random memory stalls")
    p.add_argument("--no-sim", action="store_true", help="skip the RTL simulation step")
    p.add_argument("--no-build", action="store_true", help="skip the bitstream step")
    p.add_argument("--serial", action="store_true", help="build after the simulation, not beside it")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="nextpnr's seed for the build (accel build --seed)")
    p.add_argument("--race-seeds", type=_seed_list, default=DEFAULT_RACE_SEEDS, metavar="S,S,...",
                   help="the build's seed race (accel build --race-seeds; default: none)")
    p.add_argument("--timing-paths", action="store_true",
                   help="the build lists every endpoint that misses the clock (accel build --timing-paths)")
    p.add_argument("--dsp-registers", choices=DSP_REGISTER_MODES, default=DEFAULT_DSP_REGISTERS,
                   help="the build's DSP block registers (accel build --dsp-registers; default: %(default)s)")
    p.add_argument("--router-patience", type=int, default=DEFAULT_PATIENCE, metavar="N",
                   help="the build's router stall limit (accel build --router-patience; default: %(default)s)")
    p.add_argument("--no-route-timing", action="store_true",
                   help="the build routes without timing weights (accel build --no-route-timing)")
    p.add_argument("--no-dsp-reseat", action="store_true",
                   help="the build routes its placement's DSP blocks where the placer put them "
                        "(accel build --no-dsp-reseat)")
    p.add_argument("--place-seeds", type=_seed_list, default=DEFAULT_PLACE_SEEDS, metavar="S,S,...",
                   help="the build places with each seed and routes the shortest placement (accel build "
                        "--place-seeds; 'none': one run; default: %(default)s)")
    p.add_argument("--stop-after", default="report", choices=("evaluate", "search", "generate", "simulate", "build",
                                                               "report"), help="end the run after this step")
    return ap


class _Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so every step's cleanup runs (a BaseException,
    so no step's ``except Exception`` takes it for a step failure)."""


def _on_sigterm(signum, frame):
    from accel.build import stop_running_tools
    raise _Terminated(f"stopped by SIGTERM; {stop_running_tools()} running synthesis/place-and-route tool(s) killed")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (a timeout, a job scheduler) would end Python without cleanup and leave yosys or
    # nextpnr running for many minutes: kill them, then unwind like any other error
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        result = args.fn(args)
    except AccelError as exc:
        print(f"accel {args.command}: error: {exc}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
        return 2
    except _Terminated as exc:
        print(f"accel {args.command}: {exc}", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps(result, indent=2, default=jsonable))
    return 0


if __name__ == "__main__":
    sys.exit(main())
