"""Vivado / Vitis projects for AMD boards: ``accel project --board B --model M --out DIR``.

A project is a folder a user with the AMD tools builds without further editing:

- Zynq UltraScale+ boards (flow ``vivado``: zcu102, kv260): ``rtl/accel_top.v``,
  ``constraints/clock.xdc``, ``build.tcl`` (a block design with the PS, the accelerator as a
  module reference, synthesis, implementation, bitstream, reports and a fixed ``.xsa``).
- Alveo boards (flow ``vitis``: u280): ``rtl/accel_top.v``, ``kernel.xml``,
  ``package_kernel.tcl`` (RTL kernel -> ``accel_top.xo``), ``link.cfg`` and a ``Makefile``
  (``v++ --link`` -> ``accel_top.xclbin``).
- Every project: ``project.json`` (board, part, model, design parameters, predicted FPS, files)
  and ``README.md`` with the commands to run.

Everything is built as plain strings from a frozen :class:`ProjectSpec`; nothing here runs the
AMD tools (none are installed where accel is developed), so the generated files are checked
structurally by tests/test_project.py: parts, file references, and every port the Tcl/XML names
against the Verilog module's port list.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

from accel.boards import Board, Memory, load_board
from accel.hdl.attention import AttentionParams
from accel.hdl.layernorm import LayerNormParams
from accel.hdl.linear import LinearParams
from accel.hdl.residual import ResidualParams
from accel.models.config import ModelConfig, load_config
from accel.models.errors import AccelError
from accel.perf import Design, DoesNotFit, Performance, design_for, evaluate

__all__ = ["ProjectError", "ParamsFileError", "ProjectSpec", "AmdBoard", "AMD_BOARDS", "TOP_MODULE",
           "REQUIRED_PORTS", "verilog_ports", "load_design_params", "top_params", "top_verilog", "make_spec",
           "project_files", "write_project", "generate_project"]

TOP_MODULE = "accel_top"
KERNEL_INSTANCE = "accel_top_1"      # v++ names the first compute unit <kernel>_1

# What the Tcl and kernel.xml rely on (docs/top_interface.md): the clock/reset/interrupt ports
# and every signal of the two AXI interfaces, so Vivado infers them from the names.
_LITE = ("awvalid awready awaddr wvalid wready wdata wstrb bvalid bready bresp "
         "arvalid arready araddr rvalid rready rdata rresp").split()
_FULL = ("awvalid awready awaddr awlen awsize awburst wvalid wready wdata wstrb wlast bvalid bready bresp "
         "arvalid arready araddr arlen arsize arburst rvalid rready rdata rresp rlast").split()
REQUIRED_PORTS = (("ap_clk", "ap_rst_n", "interrupt")
                  + tuple(f"s_axi_control_{s}" for s in _LITE) + tuple(f"m_axi_gmem_{s}" for s in _FULL))

# Kernel arguments on s_axi_control (docs/top_interface.md)
ARG_MEM_OFFSET, ARG_MEM_SIZE = 0x10, 8
ARG_PROGRAM_OFFSET, ARG_PROGRAM_SIZE = 0x18, 4


class ProjectError(AccelError):
    """A project cannot be generated for this board/model/design; the message says what to change."""


class ParamsFileError(ProjectError):
    """The --params file is missing, not JSON, or not a design of this model/board."""


@dataclass(frozen=True)
class AmdBoard:
    """What a vendor project needs beyond boards/*.yaml (the YAML holds the part and the clock)."""
    board_part: str | None = None    # get_board_parts pattern, e.g. "*:zcu102:*"; None: part only
    platform: str | None = None      # Vitis platform (flow vitis)
    memory_bank: str | None = None   # v++ sp= target of the kernel's memory port (flow vitis)


AMD_BOARDS: dict[str, AmdBoard] = {
    "zcu102": AmdBoard(board_part="*:zcu102:*"),
    "kv260": AmdBoard(board_part="*:kv260_som:*"),
    "u280": AmdBoard(platform="xilinx_u280_gen3x16_xdma_1_202211_1", memory_bank="HBM[0]"),
}


@dataclass(frozen=True)
class ProjectSpec:
    board: str
    description: str
    part: str
    flow: str                         # "vivado" (Zynq UltraScale+ PS) or "vitis" (Alveo)
    model: str
    design: Design
    clock_mhz: float
    verilog: str                      # Verilog text holding module accel_top
    mem_data_bits: int                # width of m_axi_gmem_wdata/rdata, read from the Verilog
    s_axi_addr_bits: int              # width of s_axi_control_awaddr, read from the Verilog
    fps: float                        # cost-model predictions at clock_mhz (batch 1)
    throughput_fps: float
    latency_ms: float
    gops: float
    fps_at_port_bandwidth: float      # the same with off-chip bandwidth capped at one m_axi_gmem port
    params_source: str                # "heuristic search" or the --params file
    board_part: str | None = None
    platform: str | None = None
    memory_bank: str | None = None

    @property
    def period_ns(self) -> float:
        return 1000.0 / self.clock_mhz

    @property
    def port_gb_per_s(self) -> float:
        return self.mem_data_bits / 8 * self.clock_mhz * 1e6 / 1e9

    @property
    def name(self) -> str:
        return f"accel_{self.board}"


# ---------------------------------------------------------------------------------------------
# Verilog ports

def verilog_ports(verilog: str, module: str = TOP_MODULE) -> dict[str, tuple[str, int]]:
    """``{port: (direction, width)}`` of ``module``, from its header and declarations (ANSI or
    Verilog-1995 style as Yosys/Amaranth write it)."""
    m = re.search(rf"\bmodule\s+{re.escape(module)}\s*(#\s*\(.*?\)\s*)?\((.*?)\)\s*;", verilog, re.S)
    if m is None:
        raise ProjectError(f"the Verilog has no 'module {module} (...);' header; the top must be named {module}")
    header = re.sub(r"//[^\n]*|/\*.*?\*/", "", m.group(2), flags=re.S)
    end = verilog.find("endmodule", m.end())
    body = verilog[m.end():end if end >= 0 else len(verilog)]
    decl = re.compile(r"\b(input|output|inout)\s+(?:wire\s+|reg\s+|logic\s+)?(?:signed\s+)?"
                      r"(?:\[\s*(\d+)\s*:\s*(\d+)\s*\]\s*)?([A-Za-z_]\w*)")
    ports: dict[str, tuple[str, int]] = {}
    for chunk in header.split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        d = decl.search(chunk)
        if d:
            ports[d.group(4)] = (d.group(1), abs(int(d.group(2)) - int(d.group(3))) + 1 if d.group(2) else 1)
        else:
            name = re.findall(r"[A-Za-z_]\w*", chunk)
            if name:
                ports[name[-1]] = ("", 0)
    for d in decl.finditer(body):
        if d.group(4) in ports and not ports[d.group(4)][0]:
            ports[d.group(4)] = (d.group(1), abs(int(d.group(2)) - int(d.group(3))) + 1 if d.group(2) else 1)
    return ports


def _check_ports(verilog: str) -> dict[str, tuple[str, int]]:
    ports = verilog_ports(verilog)
    missing = [p for p in REQUIRED_PORTS if p not in ports]
    if missing:
        raise ProjectError(f"module {TOP_MODULE} lacks the port(s) {', '.join(missing)} that the Vivado/Vitis "
                           "files rely on (docs/top_interface.md); regenerate the top or fix its port names")
    return ports


# ---------------------------------------------------------------------------------------------
# Design parameters: from the search or from a --params file

def _reference_design(cfg: ModelConfig, clock_mhz: float) -> Design:
    return design_for(cfg, 1, 1, 1, 1, 1, 1, 1, ln_lanes=1, clock_mhz=clock_mhz)


def load_design_params(path: str | Path, cfg: ModelConfig, board: Board) -> Design:
    """A design from a JSON file: either what ``accel dse --json`` prints (the design is under
    ``params``) or that ``params`` object alone. Checked against the model (buffer sizes) and the
    board (clock)."""
    path = Path(path)
    where = f"--params {str(path)!r}"
    if not path.is_file():
        raise ParamsFileError(f"{where}: no such file; write one with `accel dse --board {board.name} "
                              f"--model {cfg.name} --json > {path.name}`")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ParamsFileError(f"{where}: not JSON ({exc}); pass the output of `accel dse --json`") from None
    if not isinstance(doc, dict):
        raise ParamsFileError(f"{where}: holds a {type(doc).__name__}, expected an object with "
                              "'linear', 'attention', 'layernorm' (or the whole `accel dse --json` output)")
    if "params" in doc:
        if doc.get("model") not in (None, cfg.name):
            raise ParamsFileError(f"{where}: the design was searched for model {doc['model']!r}, not {cfg.name!r}; "
                                  f"pass --model {doc['model']} or run `accel dse --model {cfg.name}`")
        doc = doc["params"]
        where += " field 'params'"
        if not isinstance(doc, dict):
            raise ParamsFileError(f"{where}: must be an object with 'linear', 'attention', 'layernorm'")
    parts = {}
    for key, cls in (("linear", LinearParams), ("attention", AttentionParams), ("layernorm", LayerNormParams)):
        raw = doc.get(key)
        if not isinstance(raw, dict):
            raise ParamsFileError(f"{where}: field {key!r} is {'missing' if raw is None else repr(raw)}; it must be "
                                  f"an object with {', '.join(f.name for f in fields(cls))} (as `accel dse --json` prints)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ParamsFileError(f"{where}: field {key!r} has unknown key(s) {', '.join(map(repr, unknown))}; "
                                  f"{cls.__name__} takes {', '.join(sorted(known))}")
        try:
            parts[key] = cls(**raw)
        except AccelError as exc:
            raise ParamsFileError(f"{where}: field {key!r}: {exc}") from None
    res = doc.get("residual")
    lanes = parts["layernorm"].lanes
    if res is not None and (not isinstance(res, dict) or res.get("lanes") != lanes
                            or not set(res) <= {"lanes", "mul_lanes"}):
        raise ParamsFileError(f"{where}: field 'residual' is {res!r}; the residual unit runs at the LayerNorm's "
                              f"lanes, so it must be {{'lanes': {lanes}}} or {{'lanes': {lanes}, 'mul_lanes': M}} "
                              "(or left out)")
    mul_lanes = None if res is None else res.get("mul_lanes")
    if mul_lanes is not None:
        try:
            ResidualParams(lanes=lanes, mul_lanes=mul_lanes)
        except AccelError as exc:
            raise ParamsFileError(f"{where}: field 'residual': {exc}") from None
    clock = doc.get("clock_mhz", board.target_mhz)
    if isinstance(clock, bool) or not isinstance(clock, (int, float)) or not 0 < clock <= board.target_mhz:
        raise ParamsFileError(f"{where}: field 'clock_mhz' is {clock!r}; it must be a number in (0, "
                              f"{board.target_mhz:g}] (board {board.name!r}'s target clock); lower it or leave it out")
    design = Design(parts["linear"], parts["attention"], parts["layernorm"], float(clock), lanes, mul_lanes)
    _check_design_serves_model(design, cfg, where)
    return design


def _check_design_serves_model(d: Design, cfg: ModelConfig, where: str) -> None:
    ref = _reference_design(cfg, d.clock_mhz)
    needs = [("linear", "max_d_in", d.linear.max_d_in, ref.linear.max_d_in),
             ("linear", "max_d_out", d.linear.max_d_out, ref.linear.max_d_out),
             ("linear", "max_tokens", d.linear.max_tokens, ref.linear.max_tokens),
             ("attention", "max_seq", d.attention.max_seq, ref.attention.max_seq),
             ("layernorm", "max_channels", d.layernorm.max_channels, ref.layernorm.max_channels)]
    for block, key, have, need in needs:
        if have < need:
            raise ParamsFileError(f"{where}: {block}.{key}={have} is smaller than model {cfg.name!r} needs ({need}); "
                                  f"this design was made for another model: run `accel dse --model {cfg.name}`")
    if d.attention.head_dim != cfg.head_dim:
        raise ParamsFileError(f"{where}: attention.head_dim={d.attention.head_dim} but model {cfg.name!r} has "
                              f"head width {cfg.head_dim}; set it to {cfg.head_dim} or run `accel dse --model {cfg.name}`")
    if cfg.moe is not None and not d.linear.expert:
        raise ParamsFileError(f"{where}: linear.expert=false but model {cfg.name!r} has MoE layers; set it to true")
    if cfg.dim % d.layernorm.lanes:
        raise ParamsFileError(f"{where}: layernorm.lanes={d.layernorm.lanes} does not divide the model's dim "
                              f"{cfg.dim}; use a power of two dividing {cfg.dim}")


# ---------------------------------------------------------------------------------------------
# The spec

def top_params(design: Design, cfg: ModelConfig):
    """hdl/top.py's TopParams for a design of the search: its kernels and units, the gate sized to
    the model (experts, top-k) and the read FIFO at twice the longest beat (a power of two)."""
    from accel.hdl import top
    have = {f.name for f in fields(top.TopParams)}
    kw = {"linear": design.linear, "attention": design.attention, "layernorm": design.layernorm,
          "residual": design.residual}
    if "gate" in have and cfg.moe is not None:
        from accel.hdl.gate import GateParams
        kw["gate"] = GateParams(max_experts=max(2, cfg.moe.experts), max_k=cfg.moe.top_k)
    kw = {k: v for k, v in kw.items() if k in have}
    if "fifo_words" not in have:
        return top.TopParams(**kw)
    widest = top.TopParams(**kw, fifo_words=4096)
    words = 1 << max(0, 2 * widest.max_beat_words - 1).bit_length()
    return replace(widest, fifo_words=words)


def top_verilog(design: Design, cfg: ModelConfig) -> str:
    """Verilog of the accelerator top for a design (hdl/top.py's generate_verilog)."""
    try:
        from accel.hdl import top
    except ImportError as exc:
        raise ProjectError(f"the accelerator top (accel.hdl.top) cannot be imported ({exc}); "
                           "pass the Verilog text to make_spec(verilog=...)") from None
    return top.generate_verilog(top_params(design, cfg))


def _amd_board(board: Board) -> AmdBoard:
    if board.family != "xcup" or board.flow not in ("vivado", "vitis"):
        raise ProjectError(f"board {board.name!r} ({board.part}) uses the open {board.flow} flow, not Vivado/Vitis; "
                           f"accel project writes projects for AMD boards only. Build it with "
                           f"`accel build --board {board.name} --model ...` instead")
    amd = AMD_BOARDS.get(board.name, AmdBoard())
    if board.flow == "vitis" and amd.platform is None:
        raise ProjectError(f"board {board.name!r} uses the Vitis flow but accel knows no Vitis platform for it; "
                           f"add an entry for {board.name!r} to AMD_BOARDS in accel/project.py "
                           "(platform name as `platforminfo -l` lists it, memory bank e.g. 'DDR[0]')")
    if board.flow == "vitis" and amd.memory_bank is None:
        kinds = {m.kind for m in board.memories}
        amd = replace(amd, memory_bank="HBM[0]" if "hbm2" in kinds else "DDR[0]")
    return amd


def _port_limited(board: Board, gb_per_s: float) -> Board:
    """The board with its off-chip bandwidth capped at one AXI port's."""
    if not board.memories:
        return board
    total = board.offchip_gb_per_s
    scale = min(1.0, gb_per_s / total)
    return replace(board, memories=tuple(Memory(m.name, m.kind, m.channels, m.bandwidth_gb_per_s * scale,
                                                m.capacity_gb) for m in board.memories))


def make_spec(board: str | Board, model: str | ModelConfig, params: str | Path | None = None,
              verilog: str | Callable[[Design], str] | None = None,
              progress: Callable[[str], None] | None = None) -> ProjectSpec:
    """Everything a project needs. ``params``: a JSON file with the design (else the heuristic
    search runs); ``verilog``: the top's Verilog text, or a function of the design returning it
    (default: hdl/top.py's generate_verilog)."""
    board = board if isinstance(board, Board) else load_board(board)
    amd = _amd_board(board)
    cfg = model if isinstance(model, ModelConfig) else load_config(model)
    say = progress or (lambda s: None)
    if params is None:
        from accel.dse import heuristic_search
        say(f"design search for {cfg.name} on {board.name}")
        perf = heuristic_search(cfg, board, progress=say).best
        source = "heuristic search (accel dse)"
    else:
        design = load_design_params(params, cfg, board)
        perf = evaluate(cfg, board, design)
        if not perf.fits:
            over = {k: (perf.resources[k], perf.budget[k]) for k in perf.resources
                    if perf.resources[k] > perf.budget[k]}
            what = ", ".join(f"{k.upper()} {u:.0f} > {b}" for k, (u, b) in over.items())
            raise DoesNotFit(f"--params {str(params)!r}: the design does not fit board {board.name!r} by the cost "
                             f"model ({what}, caps applied); shrink it or run `accel dse --board {board.name} "
                             f"--model {cfg.name}`")
        source = str(params)
    design = perf.design
    text = verilog(design) if callable(verilog) else (verilog if verilog is not None else top_verilog(design, cfg))
    ports = _check_ports(text)
    mem_bits = ports["m_axi_gmem_wdata"][1] or 64
    addr_bits = ports["s_axi_control_awaddr"][1] or 12
    spec = ProjectSpec(board=board.name, description=board.description, part=board.part, flow=board.flow,
                       model=cfg.name, design=design, clock_mhz=design.clock_mhz, verilog=text,
                       mem_data_bits=mem_bits, s_axi_addr_bits=addr_bits, fps=perf.fps,
                       throughput_fps=perf.throughput_fps, latency_ms=perf.latency_ms, gops=perf.gops,
                       fps_at_port_bandwidth=0.0, params_source=source, board_part=amd.board_part,
                       platform=amd.platform, memory_bank=amd.memory_bank)
    limited: Performance = evaluate(cfg, _port_limited(board, spec.port_gb_per_s), design)
    return replace(spec, fps_at_port_bandwidth=limited.fps)


# ---------------------------------------------------------------------------------------------
# File contents

def _header(spec: ProjectSpec, comment: str) -> str:
    return (f"{comment} Generated by `accel project` for model {spec.model} on {spec.board} ({spec.part}).\n"
            f"{comment} Regenerate rather than edit: accel project --board {spec.board} --model {spec.model} --out DIR\n")


def _fmt_mhz(mhz: float) -> str:
    return f"{mhz:g}"


def clock_xdc(spec: ProjectSpec) -> str:
    return (_header(spec, "#")
            + f"#\n# ap_clk at {_fmt_mhz(spec.clock_mhz)} MHz: period {spec.period_ns:.3f} ns = 1000 / {_fmt_mhz(spec.clock_mhz)}.\n"
            "# build.tcl reads this file for the out-of-context run of accel_top alone (-tclargs ooc).\n"
            "# In the block design the PS IP constrains pl_clk0 itself, at the frequency build.tcl sets\n"
            "# (PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ), so this file is not added to the project there.\n"
            f"create_clock -period {spec.period_ns:.3f} -name ap_clk [get_ports ap_clk]\n")


def build_tcl(spec: ProjectSpec) -> str:
    """Vivado batch script for a Zynq UltraScale+ board."""
    bp = spec.board_part or ""
    return _header(spec, "#") + f"""#
# Full flow (hours):  vivado -mode batch -source build.tcl
#   block design (PS + accel_top), synthesis, implementation, bitstream, reports/, {spec.name}.xsa
# accel_top alone, out of context (minutes to an hour): vivado -mode batch -source build.tcl -tclargs ooc
#   reports/accel_top_ooc_utilization.rpt and reports/accel_top_ooc_timing.rpt at {_fmt_mhz(spec.clock_mhz)} MHz
# Parallel jobs: set ACCEL_JOBS in the environment (default 4).

set here [file dirname [file normalize [info script]]]
set part {{{spec.part}}}
set board_part_pattern {{{bp}}}
set clock_mhz {_fmt_mhz(spec.clock_mhz)}
set proj {spec.name}
set jobs [expr {{[info exists ::env(ACCEL_JOBS)] ? $::env(ACCEL_JOBS) : 4}}]
set rtl [file join $here rtl accel_top.v]
set xdc [file join $here constraints clock.xdc]
set reports [file join $here reports]
file mkdir $reports

if {{[lindex $argv 0] eq "ooc"}} {{
    # ---- accel_top alone at the target clock: Vivado's utilization and timing of the accelerator
    read_verilog $rtl
    read_xdc $xdc
    synth_design -top accel_top -part $part -mode out_of_context
    report_utilization -file [file join $reports accel_top_ooc_utilization.rpt]
    report_timing_summary -file [file join $reports accel_top_ooc_timing.rpt]
    puts "accel: out-of-context reports in $reports"
    return
}}

proc ip_vlnv {{name}} {{
    set defs [lsort -dictionary [get_ipdefs -quiet xilinx.com:ip:${{name}}:*]]
    if {{[llength $defs] == 0}} {{ error "accel: IP xilinx.com:ip:$name is not in this Vivado installation" }}
    return [lindex $defs end]
}}

# ---- project
create_project $proj [file join $here vivado] -part $part -force
set board_part ""
if {{$board_part_pattern ne ""}} {{
    set board_part [lindex [lsort -dictionary [get_board_parts -quiet $board_part_pattern]] end]
}}
if {{$board_part ne ""}} {{
    set_property board_part $board_part [current_project]
    puts "accel: board part $board_part"
}} else {{
    puts "WARNING: accel: no board files match '$board_part_pattern'; using the part $part without a board preset.\\
 The PS then has no DDR/MIO configuration for this board: install the board files\\
 (Vivado: Tools > Vivado Store > Boards) and rerun for a platform Linux can boot."
}}
add_files -norecurse $rtl
set_property top accel_top [current_fileset]
update_compile_order -fileset sources_1

# ---- block design: Zynq UltraScale+ PS <-> accel_top
create_bd_design accel_bd
set ps [create_bd_cell -type ip -vlnv [ip_vlnv zynq_ultra_ps_e] zynq_ps]
if {{$board_part ne ""}} {{
    apply_bd_automation -rule xilinx.com:bd_rule:zynq_ultra_ps_e -config {{apply_board_preset "1"}} $ps
}}
# M_AXI_HPM0_FPD (GP0) drives the control registers, S_AXI_HP0_FPD (GP2) serves the accelerator's
# memory port, pl_clk0 is the accelerator clock, pl_ps_irq0 takes its interrupt. Other PL ports off.
set_property -dict [list \\
    CONFIG.PSU__USE__M_AXI_GP0 {{1}} \\
    CONFIG.PSU__USE__M_AXI_GP1 {{0}} \\
    CONFIG.PSU__USE__M_AXI_GP2 {{0}} \\
    CONFIG.PSU__USE__S_AXI_GP2 {{1}} \\
    CONFIG.PSU__USE__IRQ0 {{1}} \\
    CONFIG.PSU__FPGA_PL0_ENABLE {{1}} \\
    CONFIG.PSU__USE__FABRIC__RST {{1}} \\
    CONFIG.PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ $clock_mhz \\
] $ps

# the accelerator as a module reference: Vivado infers s_axi_control (AXI4-Lite), m_axi_gmem
# (AXI4), the clock ap_clk, the active-low reset ap_rst_n and the interrupt from the port names
set accel [create_bd_cell -type module -reference accel_top accel_0]
foreach intf {{s_axi_control m_axi_gmem}} {{
    if {{[get_bd_intf_pins -quiet accel_0/$intf] eq ""}} {{
        error "accel: Vivado inferred no interface $intf on accel_top; check the ${{intf}}_* port names in rtl/accel_top.v"
    }}
}}
# one clock: Vivado associates it with both interfaces; say so explicitly where it did not
set clk_pin [get_bd_pins accel_0/ap_clk]
if {{[string first m_axi_gmem [get_property CONFIG.ASSOCIATED_BUSIF $clk_pin]] < 0}} {{
    catch {{ set_property -dict [list CONFIG.ASSOCIATED_BUSIF {{s_axi_control:m_axi_gmem}} CONFIG.ASSOCIATED_RESET {{ap_rst_n}}] $clk_pin }}
}}
set ctrl_sc [create_bd_cell -type ip -vlnv [ip_vlnv smartconnect] ctrl_sc]
set mem_sc [create_bd_cell -type ip -vlnv [ip_vlnv smartconnect] mem_sc]
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $ctrl_sc
set_property -dict [list CONFIG.NUM_SI {{1}} CONFIG.NUM_MI {{1}}] $mem_sc
set rst [create_bd_cell -type ip -vlnv [ip_vlnv proc_sys_reset] rst_pl0]

connect_bd_intf_net [get_bd_intf_pins zynq_ps/M_AXI_HPM0_FPD] [get_bd_intf_pins ctrl_sc/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins ctrl_sc/M00_AXI] [get_bd_intf_pins accel_0/s_axi_control]
connect_bd_intf_net [get_bd_intf_pins accel_0/m_axi_gmem] [get_bd_intf_pins mem_sc/S00_AXI]
connect_bd_intf_net [get_bd_intf_pins mem_sc/M00_AXI] [get_bd_intf_pins zynq_ps/S_AXI_HP0_FPD]
connect_bd_net [get_bd_pins zynq_ps/pl_clk0] [get_bd_pins accel_0/ap_clk] \\
    [get_bd_pins ctrl_sc/aclk] [get_bd_pins mem_sc/aclk] [get_bd_pins rst_pl0/slowest_sync_clk] \\
    [get_bd_pins zynq_ps/maxihpm0_fpd_aclk] [get_bd_pins zynq_ps/saxihp0_fpd_aclk]
connect_bd_net [get_bd_pins zynq_ps/pl_resetn0] [get_bd_pins rst_pl0/ext_reset_in]
connect_bd_net [get_bd_pins rst_pl0/peripheral_aresetn] [get_bd_pins accel_0/ap_rst_n]
connect_bd_net [get_bd_pins rst_pl0/interconnect_aresetn] [get_bd_pins ctrl_sc/aresetn] [get_bd_pins mem_sc/aresetn]
connect_bd_net [get_bd_pins accel_0/interrupt] [get_bd_pins zynq_ps/pl_ps_irq0]

assign_bd_address
set amap [open [file join $reports address_map.txt] w]
foreach space [get_bd_addr_spaces -quiet {{zynq_ps/Data accel_0/m_axi_gmem}}] {{
    foreach seg [get_bd_addr_segs -quiet -of_objects $space] {{
        catch {{ puts $amap "$seg offset [get_property OFFSET $seg] range [get_property RANGE $seg]" }}
    }}
}}
close $amap
catch {{ puts "accel: pl_clk0 runs at [get_property CONFIG.PSU__CRL_APB__PL0_REF_CTRL__ACT_FREQMHZ $ps] MHz (asked $clock_mhz)" }}
validate_bd_design
save_bd_design
set wrapper [make_wrapper -files [get_files accel_bd.bd] -top]
add_files -norecurse $wrapper
set_property top accel_bd_wrapper [current_fileset]
update_compile_order -fileset sources_1

# ---- synthesis, implementation, bitstream
launch_runs synth_1 -jobs $jobs
wait_on_run synth_1
if {{[get_property PROGRESS [get_runs synth_1]] ne "100%"}} {{
    error "accel: synthesis failed; see [get_property DIRECTORY [get_runs synth_1]]/runme.log"
}}
launch_runs impl_1 -to_step write_bitstream -jobs $jobs
wait_on_run impl_1
if {{[get_property PROGRESS [get_runs impl_1]] ne "100%"}} {{
    error "accel: implementation failed; see [get_property DIRECTORY [get_runs impl_1]]/runme.log"
}}
open_run impl_1
report_utilization -file [file join $reports utilization.rpt]
report_utilization -hierarchical -file [file join $reports utilization_hierarchical.rpt]
report_timing_summary -file [file join $reports timing_summary.rpt]
file copy -force [file join [get_property DIRECTORY [get_runs impl_1]] accel_bd_wrapper.bit] [file join $here $proj.bit]
write_hw_platform -fixed -include_bit -force -file [file join $here $proj.xsa]
set wns [get_property STATS.WNS [get_runs impl_1]]
puts "accel: bitstream $here/$proj.bit, platform $here/$proj.xsa, reports in $reports (WNS $wns ns)"
if {{$wns < 0}} {{
    puts "ERROR: accel: timing not met at $clock_mhz MHz (WNS $wns ns, see reports/timing_summary.rpt);\\
 lower clock_mhz in a params file (accel dse --json > p.json, edit, accel project --params p.json) and rebuild"
    exit 1
}}
"""


def kernel_xml(spec: ProjectSpec) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by `accel project` for model {spec.model} on {spec.board}: the RTL kernel accel_top
     (docs/top_interface.md). Control registers on s_axi_control follow ap_ctrl_hs; the arguments:
     mem (0x{ARG_MEM_OFFSET:02x}, 64-bit pointer: base of the memory image on m_axi_gmem),
     program (0x{ARG_PROGRAM_OFFSET:02x}, 32-bit: byte offset of the program inside the image). -->
<root versionMajor="1" versionMinor="6">
  <kernel name="{TOP_MODULE}" language="ip_c" vlnv="accel:RTLKernel:{TOP_MODULE}:1.0" attributes=""
          preferredWorkGroupSizeMultiple="0" workGroupSize="1" interrupt="true" hwControlProtocol="ap_ctrl_hs">
    <ports>
      <port name="s_axi_control" mode="slave" range="0x{1 << spec.s_axi_addr_bits:x}" dataWidth="32" portType="addressable" base="0x0"/>
      <port name="m_axi_gmem" mode="master" range="0xFFFFFFFFFFFFFFFF" dataWidth="{spec.mem_data_bits}" portType="addressable" base="0x0"/>
    </ports>
    <args>
      <arg name="mem" addressQualifier="1" id="0" port="m_axi_gmem" size="0x{ARG_MEM_SIZE:x}" offset="0x{ARG_MEM_OFFSET:x}" type="char*" hostOffset="0x0" hostSize="0x{ARG_MEM_SIZE:x}"/>
      <arg name="program" addressQualifier="0" id="1" port="s_axi_control" size="0x{ARG_PROGRAM_SIZE:x}" offset="0x{ARG_PROGRAM_OFFSET:x}" type="uint" hostOffset="0x0" hostSize="0x{ARG_PROGRAM_SIZE:x}"/>
    </args>
  </kernel>
</root>
"""


def package_kernel_tcl(spec: ProjectSpec) -> str:
    return _header(spec, "#") + f"""#
# Packages rtl/accel_top.v as a Vitis RTL kernel, accel_top.xo (the Makefile runs it):
#   vivado -mode batch -source package_kernel.tcl

set here [file dirname [file normalize [info script]]]
set part {{{spec.part}}}
set rtl [file join $here rtl accel_top.v]
set kernel_xml [file join $here kernel.xml]
set pack_dir [file join $here build packaged_kernel]
set tmp_dir [file join $here build kernel_pack]
set xo [file join $here accel_top.xo]

create_project -force kernel_pack $tmp_dir -part $part
add_files -norecurse $rtl
set_property top accel_top [current_fileset]
update_compile_order -fileset sources_1

# IP-XACT from the RTL: the interfaces s_axi_control and m_axi_gmem, the clock ap_clk and the
# reset ap_rst_n are inferred from the port names
ipx::package_project -root_dir $pack_dir -vendor accel -library RTLKernel -taxonomy /KernelIP -import_files -set_current false
ipx::unload_core [file join $pack_dir component.xml]
ipx::edit_ip_in_project -upgrade true -name tmp_edit_project -directory $pack_dir [file join $pack_dir component.xml]
set core [ipx::current_core]
set_property core_revision 1 $core
foreach up [ipx::get_user_parameters] {{
    ipx::remove_user_parameter [get_property NAME $up] $core
}}
set_property sdx_kernel true $core
set_property sdx_kernel_type rtl $core
ipx::associate_bus_interfaces -busif s_axi_control -clock ap_clk $core
ipx::associate_bus_interfaces -busif m_axi_gmem -clock ap_clk $core
ipx::associate_bus_interfaces -clock ap_clk -reset ap_rst_n $core
set_property xpm_libraries {{XPM_CDC XPM_MEMORY XPM_FIFO}} $core
set_property supported_families {{ }} $core
set_property auto_family_support_level level_2 $core
ipx::create_xgui_files $core
ipx::update_checksums $core
ipx::save_core $core
close_project -delete

package_xo -force -xo_path $xo -kernel_name accel_top -ip_directory $pack_dir -kernel_xml $kernel_xml
puts "accel: kernel $xo"
"""


def link_cfg(spec: ProjectSpec) -> str:
    mhz = spec.clock_mhz
    return _header(spec, "#") + f"""#
# v++ --link configuration (the Makefile passes --platform). One compute unit, {KERNEL_INSTANCE};
# its memory argument `mem` (port m_axi_gmem) on {spec.memory_bank}.
# Kernel clock: {_fmt_mhz(mhz)} MHz on the platform's scalable kernel clock 0 (v++ lowers it and warns
# when timing is not met: check reports/link/imp/ and the v++ log).
kernel_frequency=0:{_fmt_mhz(mhz)}

[connectivity]
nk={TOP_MODULE}:1:{KERNEL_INSTANCE}
sp={KERNEL_INSTANCE}.mem:{spec.memory_bank}
"""


def makefile(spec: ProjectSpec) -> str:
    return _header(spec, "#") + f"""#
# Vitis flow for the RTL kernel accel_top:  make        (-> accel_top.xclbin, hours)
#                                           make xo     (-> accel_top.xo, minutes)
# Assumed platform: {spec.platform}
# (Vitis/XRT 2022.2 or later with the U280 gen3x16 XDMA shell installed). To use another
# installed platform:  make PLATFORM=<name>   (`platforminfo -l` or /opt/xilinx/platforms lists them).
PLATFORM ?= {spec.platform}
VIVADO ?= vivado
VPP ?= v++
JOBS ?= 8

.PHONY: all xo clean
all: accel_top.xclbin
xo: accel_top.xo

accel_top.xo: rtl/accel_top.v kernel.xml package_kernel.tcl
\tmkdir -p build
\t$(VIVADO) -mode batch -notrace -source package_kernel.tcl -log build/package_kernel.log -journal build/package_kernel.jou

accel_top.xclbin: accel_top.xo link.cfg
\t$(VPP) -t hw --platform $(PLATFORM) --link --config link.cfg --jobs $(JOBS) \\
\t    --temp_dir build/link --log_dir build/logs --report_dir reports -o $@ accel_top.xo

clean:
\trm -rf build reports accel_top.xo accel_top.xclbin* .Xil *.log *.jou
"""


def readme(spec: ProjectSpec, files: list[str]) -> str:
    d = spec.design
    lp, ap = d.linear, d.attention
    lines = [f"# accel_top for {spec.model} on {spec.board}", "",
             f"{spec.description}; part `{spec.part}`, flow `{spec.flow}`. Generated by `accel project`.", "",
             "## Design", "",
             f"- linear kernel: t_in={lp.t_in} t_out={lp.t_out} n_lanes={lp.n_lanes}; attention: p={ap.p} "
             f"t_a={ap.t_a} heads={ap.heads} n_a={ap.n_a}; LayerNorm/residual lanes={d.layernorm.lanes}",
             f"- clock {_fmt_mhz(spec.clock_mhz)} MHz (period {spec.period_ns:.3f} ns); parameters from: "
             f"{spec.params_source}",
             f"- predicted by accel's cost models at {_fmt_mhz(spec.clock_mhz)} MHz, not measured: "
             f"{spec.fps:.1f} FPS at batch 1 ({spec.latency_ms:.3f} ms), {spec.throughput_fps:.1f} FPS with the "
             f"attention and linear kernels overlapped, {spec.gops:.1f} GOPS",
             f"- the search assumes the board's whole off-chip bandwidth; this top has one {spec.mem_data_bits}-bit "
             f"memory port (m_axi_gmem), at most {spec.port_gb_per_s:.2f} GB/s at this clock, which predicts "
             f"{spec.fps_at_port_bandwidth:.1f} FPS at batch 1", ""]
    if spec.flow == "vivado":
        lines += ["## Build (Vivado)", "",
                  "Needs Vivado (2022.2 or later; the ZCU102/KV260 board files give the PS its DDR and MIO "
                  "configuration, build.tcl warns and uses the bare part without them).", "",
                  "In this folder:", "",
                  "```sh",
                  "vivado -mode batch -source build.tcl -tclargs ooc   # optional: accel_top alone, out of context",
                  "vivado -mode batch -source build.tcl                # block design, bitstream, .xsa",
                  "```", "",
                  "What it makes:", "",
                  f"- `{spec.name}.bit` and `{spec.name}.xsa` (fixed hardware platform with the bitstream, for "
                  "PetaLinux or Vitis embedded software)",
                  "- `reports/utilization.rpt`, `reports/utilization_hierarchical.rpt`, "
                  "`reports/timing_summary.rpt`, `reports/address_map.txt`; with `ooc`: "
                  "`reports/accel_top_ooc_utilization.rpt`, `reports/accel_top_ooc_timing.rpt`",
                  "- the Vivado project in `vivado/` (open it in the GUI to inspect the block design)", "",
                  "Block design: PS `M_AXI_HPM0_FPD` -> SmartConnect -> `accel_0/s_axi_control`; "
                  "`accel_0/m_axi_gmem` -> SmartConnect -> PS `S_AXI_HP0_FPD` (DDR); `pl_clk0` at "
                  f"{_fmt_mhz(spec.clock_mhz)} MHz -> `ap_clk`; `proc_sys_reset` -> `ap_rst_n`; "
                  "`interrupt` -> `pl_ps_irq0`. The control registers' base address is in "
                  "`reports/address_map.txt` (usually 0xA000_0000).", "",
                  "Set `ACCEL_JOBS` to change the number of parallel jobs (default 4). A negative WNS ends "
                  "the script with status 1 and says how to lower the clock."]
    else:
        lines += ["## Build (Vitis)", "",
                  f"Needs Vitis and XRT with the platform `{spec.platform}` installed "
                  "(`make PLATFORM=<name>` for another one; the platform name is assumed, see the Makefile).", "",
                  "In this folder:", "",
                  "```sh",
                  "make xo     # vivado -mode batch -source package_kernel.tcl -> accel_top.xo",
                  "make        # v++ -t hw --link --config link.cfg -> accel_top.xclbin",
                  "```", "",
                  "What it makes: `accel_top.xo` (the RTL kernel, `kernel.xml` describes its arguments), "
                  "`accel_top.xclbin`, link reports in `reports/` (utilization and timing under "
                  "`reports/link/imp/`).", "",
                  f"Connectivity (`link.cfg`): one compute unit `{KERNEL_INSTANCE}`, its `mem` argument on "
                  f"`{spec.memory_bank}`, kernel clock {_fmt_mhz(spec.clock_mhz)} MHz."]
    lines += ["", "## Registers", "",
              "`s_axi_control` (offsets in bytes): 0x00 CTRL (bit0 ap_start, bit1 ap_done, bit2 ap_idle, "
              "bit3 ap_ready), 0x04 GIE, 0x08 IER, 0x0C ISR, 0x10/0x14 `mem` (base address of the memory "
              "image), 0x18 `program` (byte offset of the program in the image), 0x20/0x24 cycles of the "
              "last run, 0x28 status, 0x2C expert weight fetches. See docs/top_interface.md in accel.", "",
              "## Files", ""]
    lines += [f"- `{f}`" for f in files]
    return "\n".join(lines) + "\n"


def project_files(spec: ProjectSpec) -> dict[str, str]:
    """Relative path -> content of every file of the project (project.json and README.md included)."""
    files = {"rtl/accel_top.v": spec.verilog}
    if spec.flow == "vivado":
        files["constraints/clock.xdc"] = clock_xdc(spec)
        files["build.tcl"] = build_tcl(spec)
    else:
        files["kernel.xml"] = kernel_xml(spec)
        files["package_kernel.tcl"] = package_kernel_tcl(spec)
        files["link.cfg"] = link_cfg(spec)
        files["Makefile"] = makefile(spec)
    names = sorted([*files, "project.json", "README.md"])
    files["project.json"] = json.dumps(project_json(spec, names), indent=2) + "\n"
    files["README.md"] = readme(spec, names)
    return files


def project_json(spec: ProjectSpec, files: list[str]) -> dict:
    d = {"board": spec.board, "part": spec.part, "flow": spec.flow, "model": spec.model,
         "clock_mhz": spec.clock_mhz, "period_ns": round(spec.period_ns, 6), "params": spec.design.to_json(),
         "params_source": spec.params_source,
         "predicted": {"fps": round(spec.fps, 2), "throughput_fps": round(spec.throughput_fps, 2),
                       "latency_ms": round(spec.latency_ms, 4), "gops": round(spec.gops, 2),
                       "fps_at_port_bandwidth": round(spec.fps_at_port_bandwidth, 2),
                       "port_gb_per_s": round(spec.port_gb_per_s, 3),
                       "basis": f"accel cost models at {_fmt_mhz(spec.clock_mhz)} MHz on {spec.board}, not "
                                "measured; fps_at_port_bandwidth caps off-chip bandwidth at one "
                                f"{spec.mem_data_bits}-bit m_axi_gmem port"},
         "top": {"module": TOP_MODULE, "mem_data_bits": spec.mem_data_bits,
                 "s_axi_control_addr_bits": spec.s_axi_addr_bits},
         "files": files}
    if spec.flow == "vivado":
        d["board_part_pattern"] = spec.board_part
        d["commands"] = ["vivado -mode batch -source build.tcl"]
        d["outputs"] = [f"{spec.name}.bit", f"{spec.name}.xsa", "reports/utilization.rpt",
                        "reports/timing_summary.rpt"]
    else:
        d["platform"] = spec.platform
        d["memory_bank"] = spec.memory_bank
        d["commands"] = ["make xo", f"make PLATFORM={spec.platform}"]
        d["outputs"] = ["accel_top.xo", "accel_top.xclbin"]
    return d


def write_project(spec: ProjectSpec, out: str | Path) -> list[str]:
    """Writes the project into ``out`` (created; other files in it are left alone). Returns the
    relative paths written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ProjectError(f"--out {str(out)!r} is a file; pass a folder")
    files = project_files(spec)
    for rel, text in files.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return sorted(files)


def generate_project(board: str, model: str, out: str | Path, params: str | Path | None = None,
                     verilog: str | Callable[[Design], str] | None = None,
                     progress: Callable[[str], None] | None = None) -> dict:
    """make_spec + write_project; returns project.json's content plus the folder."""
    spec = make_spec(board, model, params, verilog, progress)
    files = write_project(spec, out)
    return project_json(spec, files) | {"out": str(out)}
