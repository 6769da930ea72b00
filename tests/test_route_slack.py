"""bench/route_slack.py on a hand-made nextpnr netlist and report: arrivals, groups, the check."""
import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("route_slack", Path(__file__).resolve().parents[1] / "bench" / "route_slack.py")
route_slack = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(route_slack)


def _ff():
    return {"type": "TRELLIS_FF", "port_directions": {"CLK": "input", "DI": "input", "CE": "input", "Q": "output"}}


def _lut(mode="LOGIC"):
    return {"type": "TRELLIS_COMB", "parameters": {"MODE": mode},
            "port_directions": {"A": "input", "B": "input", "C": "input", "D": "input", "FCI": "input",
                                "F": "output", "FCO": "output"}}


def _mult(registered=False):
    return {"type": "MULT18X18D", "parameters": {"REG_INPUTA_CLK": "CLK0" if registered else "NONE"},
            "port_directions": {"A0": "input", "B0": "input", "P0": "output"}}


def _net(name, driver, port, *sinks):
    return {"net": name, "driver": driver, "port": port, "event": "posedge clk", "sources": [],
            "endpoints": [{"cell": c, "port": p, "event": "posedge clk", "delay": [d, d]} for c, p, d in sinks]}


def _routed(cells):
    return {"modules": {"top": {"attributes": {"top": 1}, "cells": cells}}}


def test_arrivals_add_cell_and_routing_delays_and_failing_paths_are_grouped():
    cells = {"core.a.x_3_TRELLIS_FF_Q": _ff(), "l1": _lut(), "l2": _lut(), "core.b.y_0_TRELLIS_FF_Q_1": _ff(),
             "core.b.y_1_TRELLIS_FF_Q_2": _ff(), "m": _mult(), "core.c.z_TRELLIS_FF_Q": _ff()}
    nets = [
        _net("x", "core.a.x_3_TRELLIS_FF_Q", "Q", ("l1", "A", 9.0), ("m", "A0", 1.0)),
        _net("n1", "l1", "F", ("l2", "B", 8.0), ("core.b.y_1_TRELLIS_FF_Q_2", "CE", 1.0)),
        _net("n2", "l2", "F", ("core.b.y_0_TRELLIS_FF_Q_1", "DI", 2.0)),
        _net("p", "m", "P0", ("core.c.z_TRELLIS_FF_Q", "DI", 0.5)),
    ]
    report = {"detailed_net_timings": nets, "critical_paths": []}
    r = route_slack.analyse(_routed(cells), report, period_ns=10.0)
    # x: 0.525 + 9 + 0.236 + 8 + 0.236 + 2 = 19.997 at y_0.DI; 0.525 + 9 + 0.236 + 1 at y_1.CE
    assert r["worst_ns"] == pytest.approx(19.997)
    assert r["endpoints"] == 3
    assert r["failing_endpoints"] == 2          # y_0.DI and y_1.CE; z (0.525 + 1 + 3.927 + 0.5) passes
    g = r["worst_groups"][0]
    assert (g["from"], g["to"], g["endpoints"]) == ("core.a.x", "core.b.y", 2)
    assert [s["cell"] for s in g["path"]] == ["core.a.x_3_TRELLIS_FF_Q", "l1", "l1", "l2", "l2",
                                              "core.b.y_0_TRELLIS_FF_Q_1"]
    assert g["routing_ns"] == pytest.approx(19.0)
    assert r["failing_by_margin_ns"][">8"] == 1


def test_a_registered_multiplier_ends_and_starts_paths():
    cells = {"f": _ff(), "m": _mult(registered=True), "g": _ff()}
    nets = [_net("a", "f", "Q", ("m", "A0", 12.0)), _net("p", "m", "P0", ("g", "DI", 1.0))]
    r = route_slack.analyse(_routed(cells), {"detailed_net_timings": nets}, period_ns=10.0)
    assert r["worst_ns"] == pytest.approx(12.525)
    assert r["endpoints"] == 2 and r["failing_endpoints"] == 1


def test_error_against_nextpnr_worst_path():
    cells = {"f": _ff(), "g": _ff()}
    nets = [_net("a", "f", "Q", ("g", "DI", 5.0))]
    cp = {"from": "posedge clk", "to": "posedge clk", "path": [{"delay": 0.525}, {"delay": 5.1}]}
    r = route_slack.analyse(_routed(cells), {"detailed_net_timings": nets, "critical_paths": [cp]}, period_ns=20.0)
    assert r["nextpnr_worst_ns"] == pytest.approx(5.625) and r["error_ns"] == pytest.approx(-0.1)


def test_a_report_without_net_timings_is_refused():
    with pytest.raises(ValueError, match="--detailed-timing-report"):
        route_slack.analyse(_routed({}), {"critical_paths": []}, period_ns=20.0)


def test_signal_names_lose_bit_indices_and_packing_suffixes():
    assert route_slack.signal_of("core.att.o1_0_3_TRELLIS_FF_Q_51") == "core.att.o1"
    assert route_slack.signal_of("core.att.r_0_0_TRELLIS_FF_Q_16") == "core.att.r"
    assert route_slack.signal_of("core.ln.state_TRELLIS_FF_Q") == "core.ln.state"
