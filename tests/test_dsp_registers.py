"""accel.dsp_registers: the rewritten netlist against the synthesized one, by bounded formal
equivalence in Yosys.

Yosys has no simulation model of the ECP5 MULT18X18D, so the check uses a behavioural one of its
registers (input A/B, output P; clock enables CE0..3, synchronous resets RST0..3) around a
stand-in for the product: ``P = {A, B}``, which is injective and cheap for the solver. The pass
moves registers and never touches the product, so a stand-in that tells every operand apart checks
exactly what it changes. Each check runs twice, with reset over enable and with enable over reset,
since the pass must not depend on which the silicon does.
"""
import json
import subprocess

import pytest

from accel.build import tool_environment, _resolve
from accel.dsp_registers import absorb_dsp_registers
from accel.models.errors import AccelError


def _yosys(args, cwd):
    env = tool_environment()
    exe = _resolve("yosys", env)
    return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _model(reset_first: bool) -> str:
    """A behavioural MULT18X18D: registers only, product replaced by {A, B}."""
    a = ", ".join(f"A{i}" for i in range(18))
    b = ", ".join(f"B{i}" for i in range(18))
    c = ", ".join(f"C{i}" for i in range(18))
    p = ", ".join(f"P{i}" for i in range(36))
    ctl = "SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CLK1, CLK2, CLK3, CE0, CE1, CE2, CE3, RST0, RST1, RST2, RST3"

    def reg(which, d, width):
        idx = lambda kind: (f'({which}_{kind} == "{kind}0" ? 0 : {which}_{kind} == "{kind}1" ? 1 : '
                            f'{which}_{kind} == "{kind}2" ? 2 : 3)')
        body = (f"if (rst[{idx('RST')}]) q_{which} <= 0; else if (ce[{idx('CE')}]) q_{which} <= {d};"
                if reset_first else
                f"if (ce[{idx('CE')}]) begin if (rst[{idx('RST')}]) q_{which} <= 0; else q_{which} <= {d}; end")
        return (f"  reg [{width - 1}:0] q_{which} = 0;\n  always @(posedge CLK0) {body}\n"
                f"  wire [{width - 1}:0] r_{which} = {which}_CLK == \"NONE\" ? {d} : q_{which};\n")

    params = "\n".join(f'  parameter {r}_{k} = "{v}";' for r in ("REG_INPUTA", "REG_INPUTB", "REG_OUTPUT", "REG_PIPELINE")
                       for k, v in (("CLK", "NONE"), ("CE", "CE0"), ("RST", "RST0")))
    return f"""
module MULT18X18D(input {a}, input {b}, input {c}, input {ctl}, output {p});
{params}
  parameter RESETMODE = "SYNC";
  parameter GSR = "ENABLED";
  wire [3:0] ce = {{CE3, CE2, CE1, CE0}};
  wire [3:0] rst = {{RST3, RST2, RST1, RST0}};
  wire [17:0] a = {{{", ".join(f"A{i}" for i in reversed(range(18)))}}};
  wire [17:0] b = {{{", ".join(f"B{i}" for i in reversed(range(18)))}}};
{reg("REG_INPUTA", "a", 18)}
{reg("REG_INPUTB", "b", 18)}
  wire [35:0] f = {{r_REG_INPUTA, r_REG_INPUTB}};
{reg("REG_OUTPUT", "f", 36)}
  assign {{{", ".join(f"P{i}" for i in reversed(range(36)))}}} = r_REG_OUTPUT;
endmodule
"""


def _synth(tmp_path, verilog: str) -> dict:
    (tmp_path / "d.v").write_text(verilog)
    r = _yosys(["-q", "-p", "read_verilog d.v; synth_ecp5 -top top -json d.json"], tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads((tmp_path / "d.json").read_text())


def _rewrite(tmp_path, verilog: str, **kw):
    """(synthesized netlist, the pass's rewrite of it, the pass's report)."""
    gold = _synth(tmp_path, verilog)
    gate = json.loads(json.dumps(gold))
    return gold, gate, absorb_dsp_registers(gate, **kw)


def _cells(netlist: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in netlist["modules"]["top"]["cells"].values():
        out[c["type"]] = out.get(c["type"], 0) + 1
    return out


def _equivalent(tmp_path, gold: dict, gate: dict, steps: int = 8) -> tuple[bool, str]:
    """Bounded equivalence of the two netlists from reset-free zero state, for both reset/enable
    priorities of the block model."""
    for name, netlist in (("gold", gold), ("gate", gate)):       # the top alone: no cell library
        (tmp_path / f"{name}.json").write_text(json.dumps({"modules": {"top": netlist["modules"]["top"]}}))
    for reset_first in (True, False):
        (tmp_path / "mult.v").write_text(_model(reset_first))
        script = ("read_verilog mult.v; read_verilog +/lattice/common_sim.vh +/lattice/ccu2c_sim.vh; "
                  "read_json gold.json; rename top gold; read_json gate.json; rename top gate; "
                  "miter -equiv -make_assert -ignore_gold_x gold gate miter; hierarchy -check -top miter; "
                  "proc; flatten; opt_clean; "
                  f"sat -verify -seq {steps} -set-init-zero -prove-asserts -set-def-inputs -show-ports miter")
        r = _yosys(["-p", script], tmp_path)
        if r.returncode != 0:
            return False, (r.stdout + r.stderr)[-3000:]
    return True, ""


OUTPUT_CE_RESET = """
module top(input clk, input rst, input ce, input signed [7:0] a, input signed [7:0] b,
           output reg signed [15:0] p);
  always @(posedge clk) if (rst) p <= 0; else if (ce) p <= a * b;
endmodule
"""

OUTPUT_INVERTED_CE = """
module top(input clk, input rst, input hold, input signed [9:0] a, input signed [9:0] b,
           output reg signed [19:0] p);
  always @(posedge clk) if (rst) p <= 0; else if (!hold) p <= a * b;
endmodule
"""

OPERANDS_SHARED = """
module top(input clk, input rst, input ld, input go, input [7:0] a, input [7:0] b, input [7:0] c,
           output reg [15:0] p, output reg [15:0] q, output [7:0] a_seen);
  reg [7:0] ar, br, cr;
  always @(posedge clk) begin
    if (rst) begin ar <= 0; br <= 0; cr <= 0; end
    else if (ld) begin ar <= a; br <= b; cr <= c; end
    if (go) begin p <= ar * br; q <= ar * cr; end
  end
  assign a_seen = ar;
endmodule
"""

REFUSED = """
module top(input clk, input rst, input signed [7:0] a, input signed [7:0] b,
           output reg signed [15:0] p, output signed [15:0] raw, output reg [15:0] s);
  wire signed [15:0] m = a * b;
  wire signed [15:0] n = b * b;
  always @(posedge clk) begin
    p <= m;                                  // ... and m also leaves comb: refused
    if (rst) s <= 16'hffff; else s <= n;     // a reset to 1s: refused
  end
  assign raw = m;
endmodule
"""


def test_output_register_with_enable_and_reset_is_absorbed_and_equivalent(tmp_path):
    gold, gate, rep = _rewrite(tmp_path, OUTPUT_CE_RESET)
    assert (rep.dsp_blocks, rep.output_registers, rep.flip_flops_removed) == (1, 1, 16)
    assert rep.luts_added == 1                                    # enable | reset
    assert _cells(gate).get("TRELLIS_FF", 0) == _cells(gold)["TRELLIS_FF"] - 16
    dsp = next(c for c in gate["modules"]["top"]["cells"].values() if c["type"] == "MULT18X18D")
    assert dsp["parameters"]["REG_OUTPUT_CLK"] == "CLK0"
    again = json.loads(json.dumps(gate))
    assert absorb_dsp_registers(again).output_registers == 0 and again == gate     # a second pass: nothing left
    ok, log = _equivalent(tmp_path, gold, gate)
    assert ok, log


def test_inverted_enable_is_absorbed_and_equivalent(tmp_path):
    gold, gate, rep = _rewrite(tmp_path, OUTPUT_INVERTED_CE)
    assert rep.output_registers == 1 and rep.flip_flops_removed == 20
    ok, log = _equivalent(tmp_path, gold, gate)
    assert ok, log


def test_shared_operands_are_registered_in_each_block(tmp_path):
    gold, gate, rep = _rewrite(tmp_path, OPERANDS_SHARED, inputs=True)
    assert rep.dsp_blocks == 2 and rep.output_registers == 2
    assert rep.input_registers == 4
    # the products' 32 and br, cr (one block each) go; ar also drives the a_seen port, so it
    # stays, copied into both blocks (counted once per block)
    assert rep.flip_flops_removed == 32 + 16 and rep.flip_flops_duplicated == 16
    ok, log = _equivalent(tmp_path, gold, gate)
    assert ok, log


def test_what_a_block_register_cannot_copy_is_left_alone(tmp_path):
    gold, gate, rep = _rewrite(tmp_path, REFUSED, inputs=True)
    assert rep.dsp_blocks == 2
    assert (rep.output_registers, rep.flip_flops_removed, rep.luts_added) == (0, 0, 0)
    assert gate == gold


def test_the_check_catches_a_wrong_rewrite(tmp_path):
    """The equivalence check fails when the rewrite is wrong: here the block register gets the
    tied-off enable (always on) instead of the design's."""
    gold, gate, _ = _rewrite(tmp_path, OUTPUT_CE_RESET)
    dsp = next(c for c in gate["modules"]["top"]["cells"].values() if c["type"] == "MULT18X18D")
    dsp["parameters"]["REG_OUTPUT_CE"] = "CE3"
    dsp["connections"]["CE3"] = ["1"]
    dsp["port_directions"]["CE3"] = "input"
    ok, _ = _equivalent(tmp_path, gold, gate)
    assert not ok


def test_unknown_top_is_named():
    with pytest.raises(KeyError, match=r"top='nope': the netlist has no such module \(it has \['top'\]\)"):
        absorb_dsp_registers({"modules": {"top": {"cells": {}}}}, top="nope")


def test_an_unknown_mode_is_refused_before_any_work():
    from accel.run import RunConfig
    with pytest.raises(AccelError, match=r"dsp_registers='outputs': expected one of none, output, output\+operands"):
        RunConfig(dsp_registers="outputs")
