"""accel/timing_paths.py (bench/route_slack.py) on a hand-made nextpnr netlist and report: failing endpoints, groups,
the start found through the fan-in cone, and the check against nextpnr's worst path."""
import pytest

from accel.timing_paths import failing_paths, signal_of


def _cell(kind, loc, conns, dirs, params=None):
    return {"type": kind, "parameters": params or {}, "attributes": {"NEXTPNR_BEL": f"X{loc[0]}/Y{loc[1]}/SLICEA.K0"},
            "port_directions": dirs, "connections": conns}


def _ff(loc, d, q):
    return _cell("TRELLIS_FF", loc, {"DI": [d], "Q": [q]}, {"DI": "input", "Q": "output"})


def _lut(loc, a, b, f):
    return _cell("TRELLIS_COMB", loc, {"A": [a], "B": [b], "F": [f]}, {"A": "input", "B": "input", "F": "output"},
                 {"MODE": "LOGIC"})


def _net(driver, port, *sinks):
    return {"net": f"{driver}.{port}", "driver": driver, "port": port, "event": "posedge clk", "sources": [],
            "endpoints": [{"cell": c, "port": p, "event": "posedge clk", "delay": [d / 2, d]} for c, p, d in sinks]}


def _design():
    # near (1,1) and far (60,1) start registers -> one LUT at (30,1) -> core.b.y_0 and core.b.y_1;
    # core.c.z from the near register only
    cells = {"core.a.near_TRELLIS_FF_Q": _ff((1, 1), 90, 10), "core.a.far_3_TRELLIS_FF_Q": _ff((60, 1), 91, 11),
             "l1": _lut((30, 1), 10, 11, 12), "core.b.y_0_TRELLIS_FF_Q_1": _ff((31, 1), 12, 13),
             "core.b.y_1_TRELLIS_FF_Q_2": _ff((32, 1), 12, 14), "core.c.z_TRELLIS_FF_Q": _ff((2, 1), 10, 15)}
    nets = [_net("l1", "F", ("core.b.y_0_TRELLIS_FF_Q_1", "DI", 23.0), ("core.b.y_1_TRELLIS_FF_Q_2", "DI", 21.0)),
            _net("core.a.near_TRELLIS_FF_Q", "Q", ("core.c.z_TRELLIS_FF_Q", "DI", 3.0))]
    routed = {"modules": {"top": {"attributes": {"top": 1}, "cells": cells}}}
    return routed, nets


def test_failing_endpoints_are_grouped_by_signal_with_the_farthest_start():
    routed, nets = _design()
    r = failing_paths(routed, {"detailed_net_timings": nets, "critical_paths": []}, period_ns=20.0)
    assert (r["endpoints"], r["failing_endpoints"], r["groups"]) == (3, 2, 1)
    assert r["worst_ns"] == pytest.approx(23.0) and r["fmax_mhz"] == pytest.approx(1000 / 23.0, abs=0.01)
    g = r["worst_groups"][0]
    assert (g["from"], g["to"], g["endpoints"], g["ports"]) == ("core.a.far", "core.b.y", 2, ["DI"])
    assert [s["cell"] for s in g["path"]] == ["core.a.far_3_TRELLIS_FF_Q", "l1", "core.b.y_0_TRELLIS_FF_Q_1"]
    assert g["placed_distance"] == 30 + 1
    assert r["failing_by_margin_ns"] == {">0": 2, ">1": 1, ">2": 1, ">4": 0, ">8": 0}


def test_a_tighter_clock_fails_more_endpoints():
    routed, nets = _design()
    r = failing_paths(routed, {"detailed_net_timings": nets}, period_ns=2.0)
    assert r["failing_endpoints"] == 3 and r["groups"] == 2


def test_nextpnr_worst_path_is_reported_beside_ours():
    routed, nets = _design()
    cp = {"from": "posedge clk", "to": "posedge clk", "path": [{"delay": 0.5}, {"delay": 22.5}]}
    r = failing_paths(routed, {"detailed_net_timings": nets, "critical_paths": [cp]}, period_ns=20.0)
    assert r["nextpnr_worst_ns"] == pytest.approx(r["worst_ns"])


def test_a_report_without_net_timings_is_refused():
    with pytest.raises(ValueError, match="--detailed-timing-report"):
        failing_paths({"modules": {"top": {"cells": {}}}}, {"critical_paths": []}, period_ns=20.0)


def test_signal_names_lose_bit_indices_and_packing_suffixes():
    assert signal_of("core.att.o1_0_3_TRELLIS_FF_Q_51") == "core.att.o1"
    assert signal_of("core.att.r_0_0_TRELLIS_FF_Q_16") == "core.att.r"
    assert signal_of("core.ln.state_TRELLIS_FF_Q") == "core.ln.state"
    assert signal_of("core.lin.accmem.0.9_DIA9_LUT4_Z_D") == "core.lin.accmem.0.9"


def test_a_combinational_loop_ends_the_walk():
    cells = {"f": _ff((1, 1), 90, 10), "l1": _lut((5, 1), 10, 12, 11), "l2": _lut((9, 1), 11, 10, 12),
             "g": _ff((10, 1), 12, 13)}
    nets = [_net("l2", "F", ("g", "DI", 25.0))]
    r = failing_paths({"modules": {"top": {"cells": cells}}}, {"detailed_net_timings": nets}, period_ns=20.0)
    g = r["worst_groups"][0]
    assert r["failing_endpoints"] == 1 and g["path"][0]["cell"] == "f" and g["path"][-1]["cell"] == "g"
