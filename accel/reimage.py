"""``accel reimage``: another evaluation image into a built ECP5 bitstream, in seconds, without
synthesis or place and route.

An open-flow bitstream carries its memory image (program, weights, the input patches of one
evaluation image) in the block RAMs of the board top's RAM (hdl/board_top.py). The routed design
does not depend on those contents, so a new image only has to reach the configuration nextpnr
wrote: this module compiles the image the build folder's design holds, checks that the folder's
``top.config`` holds exactly that in the RAM's blocks (accel.ecp5_bram: the layout, the blocks'
numbers and the compiled image all at once), writes the new image's blocks and packs the new
configuration with the build's own ``ecppack`` command. Timing and utilization are the source
build's: the routed design is the same.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from accel.build import BuildError, _resolve, _run_tool, _tail, memory_image, tool_environment
from accel.ecp5_bram import check, memory_cells, patch
from accel.models.errors import AccelError

__all__ = ["reimage", "RAM_MEMORY", "RAM_DATA_BITS"]

RAM_MEMORY = "ram.mem"     # hdl/board_top.py: BoardTop's AxiRam `ram`, its Memory `mem`
RAM_DATA_BITS = 64         # the accelerator's memory port


def _source_report(src: Path) -> dict:
    path = src / "report.json"
    if not path.is_file():
        raise AccelError(f"--from {str(src)!r}: no report.json there; pass the --out folder of an `accel build` "
                         "(or the bitstream/ folder of an `accel run`)")
    try:
        rep = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AccelError(f"{path}: not JSON ({exc}); pass the folder of a finished `accel build`") from None
    if not isinstance(rep, dict):
        raise AccelError(f"{path}: holds a {type(rep).__name__}, expected the object `accel build` writes")
    for key in ("model", "board", "params", "memory_image"):
        if key not in rep:
            raise AccelError(f"{path}: field {key!r} is missing; the folder is not from a finished `accel build`")
    if not isinstance(rep["memory_image"], dict):
        raise AccelError(f"{path}: field 'memory_image' is {rep['memory_image']!r}, expected an object")
    return rep


def _pack_command(gateware: Path) -> list[str]:
    plan = gateware / "build_top.json"
    try:
        commands = json.loads(plan.read_text())["commands"]
    except FileNotFoundError:
        raise AccelError(f"{plan}: no such file; the folder is not from an ECP5 `accel build`") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AccelError(f"{plan}: not the build plan Amaranth writes ({exc!r})") from None
    packs = [c for c in commands if c and c[0] == "ecppack"]
    if len(packs) != 1:
        raise AccelError(f"{plan}: {len(packs)} ecppack commands, expected one; `accel reimage` handles ECP5 builds")
    return packs[0]


def reimage(src: str | Path, out: str | Path, image: int, *,
            progress: Callable[[str], None] | None = None) -> dict:
    """Write ``out/gateware/top.bit``: the bitstream of the build in ``src`` with evaluation image
    ``image`` in its memory, and ``out/report.json`` (the source's report, with the new image and
    where it came from). Raises AccelError (BramLayoutError when the configuration does not hold
    what the build's report says)."""
    from accel.boards import load_board
    from accel.models.config import load_config
    from accel.project import load_design_params, top_params
    say = progress or (lambda s: None)
    t0 = time.perf_counter()
    src, out = Path(src), Path(out)
    rep = _source_report(src)
    gateware = src / "gateware"
    if out.resolve() == src.resolve():
        raise AccelError(f"--out {str(out)!r} is the source build folder; pass another folder (the source stays as "
                         "it is, so its image can be checked)")
    board = load_board(rep["board"])
    if board.family != "ecp5":
        raise AccelError(f"{src / 'report.json'}: board {board.name!r} is {board.family}; `accel reimage` writes "
                         "ECP5 block RAM contents (rebuild with `accel build` on other families)")
    cfg = load_config(rep["model"])
    try:
        design = load_design_params(src / "report.json", cfg, board)
    except AccelError as exc:
        raise AccelError(f"{src / 'report.json'}: its design does not load ({exc}); the folder is not from a finished "
                         "`accel build` of this accel") from None
    tp = top_params(design, cfg)
    was = rep["memory_image"].get("input_image")
    if not isinstance(was, int):
        raise AccelError(f"{src / 'report.json'}: field 'memory_image.input_image' is {was!r}, expected the index "
                         "of the evaluation image the build carries")
    say(f"compiling {cfg.name} with evaluation image {was} (the build's) and {image}")
    _, _, old_words = memory_image(cfg, tp, was)
    _, img, new_words = memory_image(cfg, tp, image)
    if len(old_words) != rep["memory_image"].get("words"):
        raise AccelError(f"{src / 'report.json'}: the build's image had {rep['memory_image'].get('words')} words, "
                         f"the model compiles to {len(old_words)} now; the model or compiler changed since the build: "
                         "rebuild with `accel build`")
    if len(new_words) != len(old_words):
        raise AccelError(f"image {image} compiles to {len(new_words)} words, the build's to {len(old_words)}; "
                         "only images of the same layout go into a built bitstream: rebuild with `accel build`")
    netlist = gateware / "top_routed.json"
    if not netlist.is_file():
        netlist = gateware / "top_placed.json"
    cells = memory_cells(netlist, RAM_MEMORY)
    config_path = gateware / "top.config"
    if not config_path.is_file():
        raise AccelError(f"{config_path}: no such file; the build did not finish place and route")
    config = config_path.read_text()
    say(f"checking the build's {len(cells)} image blocks against its configuration")
    check(config, cells, old_words, RAM_DATA_BITS, where=str(config_path))
    patched, changed = patch(config, cells, new_words, RAM_DATA_BITS, where=str(config_path))
    new_gateware = out / "gateware"
    new_gateware.mkdir(parents=True, exist_ok=True)
    for stale in (out / "report.json", new_gateware / "top.bit", new_gateware / "top.svf"):
        stale.unlink(missing_ok=True)
    (new_gateware / "top.config").write_text(patched)
    say(f"{changed} of {len(cells)} blocks changed; packing the bitstream")
    argv = _pack_command(gateware)
    env = tool_environment()
    argv = [_resolve(argv[0], env), *argv[1:]]
    log = new_gateware / "top.pack.log"
    t_pack = time.perf_counter()
    try:
        _run_tool("pack", argv, new_gateware, env, log, say)
    except subprocess.CalledProcessError as exc:
        raise BuildError(f"step pack: {Path(argv[0]).name} exited with {exc.returncode}; log {log}:\n"
                         f"{_tail(log, 10)}") from None
    bitstream = new_gateware / "top.bit"
    if not bitstream.is_file():
        raise BuildError(f"step pack: {Path(argv[0]).name} exited with 0 but wrote no {bitstream}; log {log}:\n"
                         f"{_tail(log, 10)}")
    # the plan and the netlist's block numbers go along, so the new folder can be reimaged in turn
    for name in ("build_top.json", netlist.name):
        shutil.copyfile(gateware / name, new_gateware / name)
    doc = dict(rep)
    doc["memory_image"] = {**rep["memory_image"], "input_image": image, "bytes": len(img)}
    doc["bitstream"] = str(bitstream)
    doc["build_dir"] = str(new_gateware)
    doc["reimaged_from"] = {"build": str(src), "input_image": was, "blocks": len(cells), "blocks_changed": changed,
                            "basis": ("the source build's routed design with the image blocks of its configuration "
                                      "rewritten; its timing and utilization hold unchanged")}
    doc["seconds"] = {"reimage": round(time.perf_counter() - t0, 2), "pack": round(time.perf_counter() - t_pack, 2)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(doc, indent=2))
    doc["report"] = str(out / "report.json")
    return doc
