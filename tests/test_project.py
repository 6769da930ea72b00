"""accel project: Vivado / Vitis projects for AMD boards, checked structurally (no AMD tools here).

Parts against boards/*.yaml, every file the Tcl references exists, every port the Tcl/XML names
exists in the Verilog module's header, the clock period, the HBM mapping, and the errors."""
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from accel.boards import load_board
from accel.cli import main
from accel.dse import heuristic_search
from accel.models.config import load_config
from accel.models.errors import AccelError, ConfigError
from accel.perf import DoesNotFit
from accel.project import (ParamsFileError, ProjectError, REQUIRED_PORTS, generate_project, make_spec,
                           project_files, verilog_ports, write_project)

HAVE_TOP = (Path(__file__).resolve().parents[1] / "hdl" / "top.py").exists()

# A stand-in with the ports of docs/top_interface.md, in the style Yosys/Amaranth write Verilog:
# names in the header, directions and widths in the body.
_LITE = [("awvalid", "input", 1), ("awready", "output", 1), ("awaddr", "input", 12), ("wvalid", "input", 1),
         ("wready", "output", 1), ("wdata", "input", 32), ("wstrb", "input", 4), ("bvalid", "output", 1),
         ("bready", "input", 1), ("bresp", "output", 2), ("arvalid", "input", 1), ("arready", "output", 1),
         ("araddr", "input", 12), ("rvalid", "output", 1), ("rready", "input", 1), ("rdata", "output", 32),
         ("rresp", "output", 2)]
_FULL = [("awvalid", "output", 1), ("awready", "input", 1), ("awaddr", "output", 64), ("awlen", "output", 8),
         ("awsize", "output", 3), ("awburst", "output", 2), ("wvalid", "output", 1), ("wready", "input", 1),
         ("wdata", "output", 64), ("wstrb", "output", 8), ("wlast", "output", 1), ("bvalid", "input", 1),
         ("bready", "output", 1), ("bresp", "input", 2), ("arvalid", "output", 1), ("arready", "input", 1),
         ("araddr", "output", 64), ("arlen", "output", 8), ("arsize", "output", 3), ("arburst", "output", 2),
         ("rvalid", "input", 1), ("rready", "output", 1), ("rdata", "input", 64), ("rresp", "input", 2),
         ("rlast", "input", 1)]
FIXTURE_PORTS = ([("ap_clk", "input", 1), ("ap_rst_n", "input", 1), ("interrupt", "output", 1)]
                 + [(f"s_axi_control_{n}", d, w) for n, d, w in _LITE]
                 + [(f"m_axi_gmem_{n}", d, w) for n, d, w in _FULL])


def fixture_verilog(ports=FIXTURE_PORTS) -> str:
    body = "\n".join(f"  {d} {'' if w == 1 else f'[{w - 1}:0] '}{n};" for n, d, w in ports)
    return (f"/* stand-in */\nmodule accel_top({', '.join(n for n, _, _ in ports)});\n{body}\n"
            "  assign interrupt = 1'h0;\nendmodule\n")


def header_ports(verilog: str) -> set[str]:
    """The names in the `module accel_top (...)` header, parsed independently of accel.project."""
    m = re.search(r"module\s+accel_top\s*\((.*?)\);", verilog, re.S)
    assert m, "no module accel_top header"
    return {re.findall(r"\w+", chunk)[-1] for chunk in m.group(1).split(",") if chunk.strip()}


@pytest.fixture(scope="module")
def designs():
    """One search per (model, board), shared by the tests (a second or two each)."""
    cache = {}

    def get(model, board):
        if (model, board) not in cache:
            cache[model, board] = heuristic_search(load_config(model), load_board(board))
        return cache[model, board]
    return get


def _spec(board, model, designs, tmp_path, verilog=None):
    res = designs(model, board)
    params = tmp_path / f"{board}-{model}.json"
    params.write_text(json.dumps({"model": model, "board": board, "params": res.best.design.to_json()}))
    return make_spec(board, model, params=params, verilog=verilog or fixture_verilog()), res


def _tcl_file_refs(tcl: str) -> list[str]:
    """Paths the Tcl builds with [file join $here a b ...] and reads (inputs only)."""
    return ["/".join(m.split()) for m in re.findall(r"\[file join \$here ([\w./ ]+)\]", tcl)]


# ---------------------------------------------------------------------------------------------

def test_verilog_ports_parser_reads_both_header_styles():
    ports = verilog_ports(fixture_verilog())
    assert ports["m_axi_gmem_wdata"] == ("output", 64) and ports["s_axi_control_awaddr"] == ("input", 12)
    ansi = "module accel_top (\n  input wire ap_clk,\n  output [7:0] m_axi_gmem_awlen, // c\n  input ap_rst_n\n);\nendmodule"
    assert verilog_ports(ansi) == {"ap_clk": ("input", 1), "m_axi_gmem_awlen": ("output", 8), "ap_rst_n": ("input", 1)}


def check_zynq_project(out: Path, board: str) -> dict:
    """Structural checks of a Vivado project folder; returns its project.json."""
    b = load_board(board)
    pj = json.loads((out / "project.json").read_text())
    files = pj["files"]
    assert {"rtl/accel_top.v", "constraints/clock.xdc", "build.tcl", "project.json", "README.md"} == set(files)
    for f in files:
        assert (out / f).is_file()
    tcl = (out / "build.tcl").read_text()
    # the part from boards/*.yaml
    assert re.search(r"set part \{(.+?)\}", tcl).group(1) == b.part
    assert "create_project $proj [file join $here vivado] -part $part" in tcl
    # every file the script reads exists in the project
    refs = [r for r in _tcl_file_refs(tcl) if r not in ("vivado", "reports", "$proj.bit", "$proj.xsa")]
    assert set(refs) >= {"rtl/accel_top.v", "constraints/clock.xdc"}
    for r in refs:
        assert (out / r).is_file(), r
    # every accelerator pin or interface the block design connects is a port (or port prefix) of the Verilog
    ports = header_ports((out / "rtl/accel_top.v").read_text())
    used = set(re.findall(r"accel_0/(\w+)", tcl))
    assert used == {"s_axi_control", "m_axi_gmem", "ap_clk", "ap_rst_n", "interrupt"}
    for name in used:
        assert name in ports or any(p.startswith(name + "_") for p in ports), name
    # the PS side: the ports, clock and reset of the brief
    for needle in ("zynq_ultra_ps_e", "apply_board_preset", "create_bd_cell -type module -reference accel_top",
                   "zynq_ps/M_AXI_HPM0_FPD", "zynq_ps/S_AXI_HP0_FPD", "zynq_ps/pl_clk0", "rst_pl0/peripheral_aresetn",
                   "zynq_ps/pl_ps_irq0", "assign_bd_address", "make_wrapper", "launch_runs synth_1",
                   "launch_runs impl_1 -to_step write_bitstream", "report_utilization -file",
                   "report_timing_summary -file", "write_hw_platform -fixed -include_bit"):
        assert needle in tcl, needle
    assert re.search(r"set clock_mhz (\S+)", tcl).group(1) == f"{pj['clock_mhz']:g}"
    assert "CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $clock_mhz" in tcl
    # clock period = 1000 / MHz
    xdc = (out / "constraints/clock.xdc").read_text()
    period = float(re.search(r"create_clock -period ([\d.]+) -name ap_clk \[get_ports ap_clk\]", xdc).group(1))
    assert period == pytest.approx(1000 / pj["clock_mhz"], abs=1e-3)
    assert (pj["board"], pj["part"], pj["flow"]) == (board, b.part, "vivado")
    assert 0 < pj["predicted"]["fps_at_port_bandwidth"] <= pj["predicted"]["fps"] + 1e-6
    assert "vivado -mode batch -source build.tcl" in (out / "README.md").read_text()
    return pj


def check_vitis_project(out: Path, board: str) -> dict:
    """Structural checks of a Vitis project folder; returns its project.json."""
    b = load_board(board)
    pj = json.loads((out / "project.json").read_text())
    assert {"rtl/accel_top.v", "kernel.xml", "package_kernel.tcl", "link.cfg", "Makefile", "project.json",
            "README.md"} == set(pj["files"])
    tcl = (out / "package_kernel.tcl").read_text()
    assert re.search(r"set part \{(.+?)\}", tcl).group(1) == b.part
    refs = [r for r in _tcl_file_refs(tcl) if not r.startswith("build") and r != "accel_top.xo"]
    assert set(refs) == {"rtl/accel_top.v", "kernel.xml"}
    for r in refs:
        assert (out / r).is_file(), r
    assert "ipx::package_project" in tcl and "package_xo" in tcl and "-kernel_xml $kernel_xml" in tcl
    verilog = (out / "rtl/accel_top.v").read_text()
    ports = header_ports(verilog)
    for busif in re.findall(r"-busif (\w+)", tcl) + re.findall(r"-(?:clock|reset) (\w+)", tcl):
        assert busif in ports or any(p.startswith(busif + "_") for p in ports), busif
    assert set(re.findall(r"-busif (\w+)", tcl)) == {"s_axi_control", "m_axi_gmem"}
    # kernel.xml: the two ports and the two arguments at their offsets
    k = ET.fromstring((out / "kernel.xml").read_text()).find("kernel")
    assert k.get("name") == "accel_top" and k.get("interrupt") == "true" and "interrupt" in ports
    xml_ports = {p.get("name"): p for p in k.iter("port")}
    assert set(xml_ports) == {"s_axi_control", "m_axi_gmem"}
    for name in xml_ports:
        assert any(p.startswith(name + "_") for p in ports)
    width = verilog_ports(verilog)["m_axi_gmem_rdata"][1]
    assert xml_ports["m_axi_gmem"].get("dataWidth") == str(width) and xml_ports["s_axi_control"].get("range") == "0x1000"
    args = {a.get("name"): a for a in k.iter("arg")}
    assert args["mem"].get("port") == "m_axi_gmem" and int(args["mem"].get("offset"), 16) == 0x10
    assert int(args["mem"].get("size"), 16) == 8 and args["mem"].get("addressQualifier") == "1"
    assert args["program"].get("port") == "s_axi_control" and int(args["program"].get("offset"), 16) == 0x18
    assert int(args["program"].get("size"), 16) == 4 and args["program"].get("addressQualifier") == "0"
    # link.cfg: one CU, mem on HBM, the clock
    cfg = (out / "link.cfg").read_text()
    assert "[connectivity]" in cfg and "nk=accel_top:1:accel_top_1" in cfg
    assert re.search(r"^sp=accel_top_1\.mem:HBM\[\d+\]$", cfg, re.M)
    assert re.search(r"^kernel_frequency=0:(\S+)$", cfg, re.M).group(1) == f"{pj['clock_mhz']:g}"
    mk = (out / "Makefile").read_text()
    assert "PLATFORM ?= xilinx_u280_gen3x16_xdma_1_202211_1" in mk
    assert "$(VPP) -t hw --platform $(PLATFORM) --link --config link.cfg" in mk
    assert "-source package_kernel.tcl" in mk and "Assumed platform" in mk
    assert re.search(r"^\t", mk, re.M)   # recipes start with tabs
    assert (pj["part"], pj["platform"], pj["memory_bank"]) == (b.part, "xilinx_u280_gen3x16_xdma_1_202211_1", "HBM[0]")
    assert "make xo" in (out / "README.md").read_text()
    return pj


@pytest.mark.parametrize("board,model", [("zcu102", "m3vit-tiny-224"), ("kv260", "digits-moe")])
def test_zynq_project(board, model, designs, tmp_path):
    spec, res = _spec(board, model, designs, tmp_path)
    out = tmp_path / "prj"
    files = write_project(spec, out)
    pj = check_zynq_project(out, board)
    assert pj["files"] == files and pj["model"] == model
    assert pj["clock_mhz"] == load_board(board).target_mhz
    assert pj["params"] == res.best.design.to_json()
    assert pj["predicted"]["fps"] == pytest.approx(res.best.fps, rel=1e-3)


def test_u280_vitis_project(designs, tmp_path):
    spec, res = _spec("u280", "m3vit-tiny-224", designs, tmp_path)
    out = tmp_path / "prj"
    write_project(spec, out)
    pj = check_vitis_project(out, "u280")
    assert pj["clock_mhz"] == load_board("u280").target_mhz
    assert pj["predicted"]["fps"] == pytest.approx(res.best.fps, rel=1e-3)
    assert "v++ -t hw" not in (out / "Makefile").read_text()   # $(VPP), overridable


def test_params_file_accepts_dse_output_and_bare_params(designs, tmp_path, capsys):
    res = designs("digits-moe", "zcu102")
    assert main(["dse", "--board", "zcu102", "--model", "digits-moe", "--json"]) == 0
    full = tmp_path / "dse.json"
    full.write_text(capsys.readouterr().out)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(res.best.design.to_json()))
    a = make_spec("zcu102", "digits-moe", params=full, verilog=fixture_verilog())
    b = make_spec("zcu102", "digits-moe", params=bare, verilog=fixture_verilog())
    assert a.design == b.design == res.best.design
    assert a.fps == pytest.approx(res.best.fps)


def test_verilog_may_be_a_function_of_the_design(designs, tmp_path):
    seen = []

    def gen(design):
        seen.append(design)
        return fixture_verilog()
    spec, res = _spec("kv260", "digits-moe", designs, tmp_path, verilog=gen)
    assert seen == [res.best.design] and spec.verilog == fixture_verilog()


# ---- errors: AccelError subclasses naming the value, CLI exit 2

def test_unknown_board(tmp_path):
    with pytest.raises(ConfigError, match="unknown board 'nope'"):
        make_spec("nope", "digits-moe", verilog=fixture_verilog())


def test_open_flow_board_points_to_accel_build(tmp_path):
    with pytest.raises(ProjectError, match=r"board 'ulx3s-85f'.*trellis.*accel build --board ulx3s-85f"):
        make_spec("ulx3s-85f", "digits-moe", verilog=fixture_verilog())


@pytest.mark.parametrize("content,match", [
    (None, r"--params '.*missing.json': no such file; write one with `accel dse --board zcu102"),
    ("{not json", r"not JSON"),
    ("[1, 2]", r"holds a list"),
    ('{"linear": {}}', r"field 'attention' is missing"),
    ('{"params": {"linear": {"t_in": 8, "bogus": 1}, "attention": {}, "layernorm": {}}}',
     r"field 'linear' has unknown key\(s\) 'bogus'"),
    ('{"linear": {"t_in": 0}, "attention": {}, "layernorm": {}}', r"field 'linear': .*t_in"),
    ('{"model": "m3vit-tiny", "params": {}}', r"searched for model 'm3vit-tiny', not 'digits-moe'"),
])
def test_bad_params_file(tmp_path, content, match):
    path = tmp_path / "missing.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ParamsFileError, match=match):
        make_spec("zcu102", "digits-moe", params=path, verilog=fixture_verilog())


def test_params_for_another_model_or_clock_are_refused(designs, tmp_path):
    small = designs("digits-moe", "zcu102").best.design.to_json()
    p = tmp_path / "p.json"
    p.write_text(json.dumps(small))
    with pytest.raises(ParamsFileError, match=r"linear.max_d_in=\d+ is smaller than model 'm3vit-tiny-224' needs"):
        make_spec("zcu102", "m3vit-tiny-224", params=p, verilog=fixture_verilog())
    p.write_text(json.dumps(small | {"clock_mhz": 400}))
    with pytest.raises(ParamsFileError, match=r"'clock_mhz' is 400.*\(0, 300\]"):
        make_spec("zcu102", "digits-moe", params=p, verilog=fixture_verilog())
    slower = make_spec("zcu102", "digits-moe", params=_write(p, small | {"clock_mhz": 200}), verilog=fixture_verilog())
    files = project_files(slower)
    assert "create_clock -period 5.000 " in files["constraints/clock.xdc"]


def test_params_file_residual_products(designs, tmp_path):
    """The residual unit's lanes follow the LayerNorm's; its products per cycle may be fewer."""
    small = designs("digits-moe", "zcu102").best.design.to_json()
    lanes = small["layernorm"]["lanes"]
    p = _write(tmp_path / "p.json", small | {"residual": {"lanes": lanes, "mul_lanes": 2}})
    spec = make_spec("zcu102", "digits-moe", params=p, verilog=fixture_verilog())
    assert spec.design.residual.products == 2 and spec.design.residual.steps == lanes // 2
    _write(p, small | {"residual": {"lanes": lanes, "mul_lanes": 3}})
    with pytest.raises(ParamsFileError, match=rf"field 'residual': ResidualParams.mul_lanes=3: must be None or an "
                                              rf"int dividing lanes={lanes}"):
        make_spec("zcu102", "digits-moe", params=p, verilog=fixture_verilog())
    _write(p, small | {"residual": {"lanes": lanes * 2}})
    with pytest.raises(ParamsFileError, match=r"runs at the LayerNorm's lanes, so it must be"):
        make_spec("zcu102", "digits-moe", params=p, verilog=fixture_verilog())


def test_params_file_attention_output_lanes(designs, tmp_path):
    """The attention kernel's outputs multiplied by the reciprocal per cycle come from the file."""
    small = designs("digits-moe", "zcu102").best.design.to_json()
    t_a = small["attention"]["t_a"]
    p = _write(tmp_path / "p.json", small | {"attention": small["attention"] | {"out_lanes": 2}})
    spec = make_spec("zcu102", "digits-moe", params=p, verilog=fixture_verilog())
    assert spec.design.attention.out_products == 2 and spec.design.attention.out_steps == t_a // 2
    _write(p, small | {"attention": small["attention"] | {"out_lanes": 3}})
    with pytest.raises(ParamsFileError, match=rf"field 'attention': AttentionParams.out_lanes=3: must be None or an "
                                              rf"int dividing t_a={t_a}"):
        make_spec("zcu102", "digits-moe", params=p, verilog=fixture_verilog())


def _write(p, doc):
    p.write_text(json.dumps(doc))
    return p


def test_params_that_do_not_fit_the_board(designs, tmp_path):
    big = designs("m3vit-tiny-224", "u280").best.design.to_json()
    p = _write(tmp_path / "big.json", big | {"clock_mhz": 250})
    with pytest.raises(DoesNotFit, match=r"does not fit board 'kv260'.*DSP \d+ > \d+"):
        make_spec("kv260", "m3vit-tiny-224", params=p, verilog=fixture_verilog())


def test_verilog_missing_a_port_is_refused(designs, tmp_path):
    broken = fixture_verilog([p for p in FIXTURE_PORTS if p[0] != "m_axi_gmem_rlast"])
    with pytest.raises(ProjectError, match="lacks the port\\(s\\) m_axi_gmem_rlast"):
        _spec("zcu102", "digits-moe", designs, tmp_path, verilog=broken)
    with pytest.raises(ProjectError, match="no 'module accel_top"):
        _spec("zcu102", "digits-moe", designs, tmp_path, verilog="module other(a); input a; endmodule")


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["project", "--board", "ulx3s-85f", "--model", "digits-moe", "--out", str(tmp_path / "x"),
                 "--json"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["kind"] == "ProjectError" and "accel build" in out.err
    assert main(["project", "--board", "zcu102", "--model", "digits-moe", "--out", str(tmp_path / "x"),
                 "--params", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_errors_are_accel_errors():
    assert issubclass(ProjectError, AccelError) and issubclass(ParamsFileError, ProjectError)


# ---- the real top (hdl/top.py)

needs_top = pytest.mark.skipif(not HAVE_TOP, reason="hdl/top.py (the accelerator top, generate_verilog) is not in "
                                                    "this checkout; the tests above use a stand-in with its ports")

# a small design of digits-moe whose Verilog generates in seconds
SMALL = {"linear": {"t_in": 8, "t_out": 8, "n_lanes": 1, "max_d_in": 96, "max_d_out": 144, "max_tokens": 17,
                    "expert": True, "moe_acc_bits": 32},
         "attention": {"p": 2, "t_a": 8, "heads": 1, "n_a": 1, "max_seq": 17, "head_dim": 16},
         "layernorm": {"lanes": 8, "max_channels": 48, "stats_steps": 4}}


@needs_top
def test_real_top_small_design(tmp_path, capsys):
    """The default path (hdl/top.py's generate_verilog) through the CLI, for both flows."""
    p = _write(tmp_path / "small.json", SMALL)
    u280 = tmp_path / "u280"
    assert main(["project", "--board", "u280", "--model", "digits-moe", "--out", str(u280), "--params", str(p),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    verilog = (u280 / "rtl/accel_top.v").read_text()
    assert set(REQUIRED_PORTS) <= header_ports(verilog)
    assert res["files"] == sorted(str(f.relative_to(u280)) for f in u280.rglob("*") if f.is_file())
    assert res["top"]["mem_data_bits"] == verilog_ports(verilog)["m_axi_gmem_rdata"][1]
    check_vitis_project(u280, "u280")
    # the same design's Verilog in a Zynq project (generation is the slow part: reuse it)
    zcu = tmp_path / "zcu102"
    write_project(make_spec("zcu102", "digits-moe", params=p, verilog=verilog), zcu)
    check_zynq_project(zcu, "zcu102")


@pytest.mark.slow
@needs_top
@pytest.mark.parametrize("board", ["zcu102", "kv260", "u280"])
def test_real_top_searched_design(board, tmp_path, capsys):
    """The whole command as a user runs it: search, then the real top (minutes on u280)."""
    out = tmp_path / "prj"
    assert main(["project", "--board", board, "--model", "digits-moe", "--out", str(out), "--json"]) == 0
    capsys.readouterr()
    (check_vitis_project if board == "u280" else check_zynq_project)(out, board)


def test_generate_project_returns_project_json(designs, tmp_path):
    res = designs("digits-moe", "u280")
    p = _write(tmp_path / "p.json", res.best.design.to_json())
    out = generate_project("u280", "digits-moe", tmp_path / "prj", params=p, verilog=fixture_verilog())
    assert out == json.loads((tmp_path / "prj/project.json").read_text()) | {"out": str(tmp_path / "prj")}
