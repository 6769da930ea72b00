"""accel.dsp_placement: DSP blocks of a placed ECP5 netlist re-seated next to their logic, on
hand-made placed netlists (the real builds are in tests/test_build.py and docs/benchmarks.md)."""
import pytest

from accel.dsp_placement import MAX_NET_PINS, DspPlacementError, reseat_dsps


def _ff(bel, d=None, q=None):
    return {"type": "TRELLIS_FF", "attributes": {"NEXTPNR_BEL": bel},
            "port_directions": {"DI": "input", "Q": "output"},
            "connections": {"DI": [d] if d is not None else [], "Q": [q] if q is not None else []}}


def _dsp(bel, a=(), p=(), clk=None):
    conns = {"A0": list(a[:1]), "A1": list(a[1:2]), "P0": list(p[:1]), "P1": list(p[1:2]),
             "CLK0": [clk] if clk is not None else [], "CE0": ["0"], "SRIA0": []}
    dirs = {"A0": "input", "A1": "input", "P0": "output", "P1": "output", "CLK0": "input", "CE0": "input",
            "SRIA0": "input"}
    return {"type": "MULT18X18D", "attributes": {"NEXTPNR_BEL": bel}, "port_directions": dirs, "connections": conns}


def _netlist(cells):
    return {"modules": {"cell_lib": {"cells": {}}, "top": {"settings": {"placer": "static"}, "cells": cells}}}


def _bel(net, name):
    return net["modules"]["top"]["cells"][name]["attributes"]["NEXTPNR_BEL"]


def test_two_blocks_placed_across_from_their_logic_swap():
    # block x0 = 4 (sites x 4, 5) and x0 = 40 (x 40, 41) on row 10; each product's operand flip-flop
    # and result flip-flop sit beside the other block
    cells = {"fa": _ff("X40/Y11/SLICEA", q=10), "ra": _ff("X41/Y11/SLICEB", d=11),
             "fb": _ff("X4/Y11/SLICEA", q=20), "rb": _ff("X5/Y11/SLICEB", d=21),
             "da": _dsp("X4/Y10/MULT18_0", a=(10,), p=(11,)), "db": _dsp("X40/Y10/MULT18_0", a=(20,), p=(21,)),
             "dc": _dsp("X41/Y10/MULT18_1")}            # no nets: goes wherever is left
    net = _netlist(cells)
    s = reseat_dsps(net)
    assert _bel(net, "da").startswith("X40/Y10/") or _bel(net, "da").startswith("X41/Y10/")
    assert _bel(net, "db").startswith("X4/Y10/") or _bel(net, "db").startswith("X5/Y10/")
    assert len({_bel(net, n) for n in ("da", "db", "dc")}) == 3
    assert (s.movable, s.fixed, s.sites) == (3, 0, 8)      # two blocks of four sites
    assert s.worst_tiles_before == 38 and s.worst_tiles_after <= 2
    assert s.cost_after < s.cost_before and s.moved >= 2
    assert s.as_json()["mean_tiles_after"] == round(s.mean_tiles_after, 2)


def test_a_registered_block_keeps_its_site_and_nobody_takes_it():
    cells = {"fa": _ff("X4/Y11/SLICEA", q=10), "clk": _ff("X60/Y60/SLICEA", q=99),
             "da": _dsp("X40/Y10/MULT18_0", a=(10,)),
             "reg": _dsp("X4/Y10/MULT18_0", a=(10,), clk=99)}    # clocked: pinned
    net = _netlist(cells)
    s = reseat_dsps(net)
    assert _bel(net, "reg") == "X4/Y10/MULT18_0"
    assert _bel(net, "da") == "X5/Y10/MULT18_1"               # the free site of the operand's block
    assert (s.movable, s.fixed, s.sites, s.moved) == (1, 1, 7, 1)


def test_wide_nets_do_not_pull():
    # the operand comes from a flip-flop far away, but on a net with more than MAX_NET_PINS pins
    sinks = {f"s{i}": _ff(f"X40/Y{12 + i % 40}/SLICEA", d=10) for i in range(MAX_NET_PINS)}
    cells = {"fa": _ff("X4/Y11/SLICEA", q=10), "ra": _ff("X41/Y11/SLICEA", d=11), **sinks,
             "da": _dsp("X4/Y10/MULT18_0", a=(10,), p=(11,)), "db": _dsp("X40/Y10/MULT18_0")}
    net = _netlist(cells)
    reseat_dsps(net)
    assert _bel(net, "da").startswith(("X40/Y10/", "X41/Y10/"))       # follows its result, not its operand


def test_errors_name_the_cell_and_the_file_shape():
    with pytest.raises(DspPlacementError, match=r"DSP cell 'da' has NEXTPNR_BEL '', expected "
                                                r"'X<x>/Y<y>/MULT18_<z>' \(is the netlist placed\?\)"):
        reseat_dsps(_netlist({"da": {"type": "MULT18X18D", "attributes": {}, "connections": {}}}))
    with pytest.raises(DspPlacementError, match=r"the netlist has 0 modules with nextpnr settings, expected 1"):
        reseat_dsps({"modules": {"top": {"cells": {}}}})
    empty = _netlist({"fa": _ff("X4/Y11/SLICEA", q=10)})
    assert reseat_dsps(empty).moved == 0


def test_the_bench_writes_the_reseated_netlist_and_names_a_bad_file(tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "dsp_seating", Path(__file__).resolve().parents[1] / "bench" / "dsp_seating.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cells = {"fa": _ff("X40/Y11/SLICEA", q=10), "da": _dsp("X4/Y10/MULT18_0", a=(10,))}
    (tmp_path / "p.json").write_text(json.dumps(_netlist(cells)))
    assert bench.main([str(tmp_path / "p.json"), "--out", str(tmp_path / "o" / "r.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    # only the sites of the blocks in use are offered: the block's far end, x 9
    assert (out["moved"], out["worst_tiles_before"], out["worst_tiles_after"]) == (1, 37, 32)
    assert _bel(json.loads((tmp_path / "o" / "r.json").read_text()), "da") == "X9/Y10/MULT18_5"
    (tmp_path / "bad.json").write_text("{")
    assert bench.main([str(tmp_path / "bad.json")]) == 1
    assert "bad.json" in json.loads(capsys.readouterr().out)["error"]
