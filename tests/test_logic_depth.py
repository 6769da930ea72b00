"""bench/logic_depth.py on a hand-made Yosys netlist: levels, carry weights, the path and loops."""
import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("logic_depth", Path(__file__).resolve().parents[1] / "bench" / "logic_depth.py")
logic_depth = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(logic_depth)


def _ff(d, q):
    return {"type": "TRELLIS_FF", "port_directions": {"CLK": "input", "DI": "input", "Q": "output"},
            "connections": {"CLK": [1], "DI": [d], "Q": [q]}}


def _lut(a, b, z):
    return {"type": "LUT4", "port_directions": {"A": "input", "B": "input", "C": "input", "D": "input", "Z": "output"},
            "connections": {"A": [a], "B": [b], "C": ["0"], "D": ["0"], "Z": [z]}}


def _netlist(cells, names):
    return {"modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"}, "cells": cells,
                                "netnames": {n: {"bits": [b]} for n, b in names.items()}}}}


def test_levels_carry_and_path():
    # q0 -> LUT -> LUT -> LUT -> ff1 (3 levels); q0 -> CCU2C A0 -> COUT -> CCU2C CIN -> S0 -> ff2 (1 + 0.5)
    ccu = lambda a, cin, s0, cout: {"type": "CCU2C", "port_directions": {"A0": "input", "CIN": "input", "S0": "output",
                                                                         "COUT": "output"},
                                    "connections": {"A0": [a], "CIN": [cin], "S0": [s0], "COUT": [cout]}}
    cells = {"f0": _ff(20, 10), "l1": _lut(10, 10, 11), "l2": _lut(11, 10, 12), "l3": _lut(12, 11, 13),
             "f1": _ff(13, 14), "c0": ccu(10, "0", 30, 31), "c1": ccu("0", 31, 32, 33), "f2": _ff(32, 34)}
    names = {"q0": 10, "a": 11, "b": 12, "c": 13, "carry": 31, "sum": 32}
    r = logic_depth.analyse(_netlist(cells, names), top_n=5)
    deepest = r["deepest"]
    assert deepest[0]["levels"] == 3 and deepest[0]["end"] == "f1.DI" and deepest[0]["path"] == ["q0", "a", "b", "c"]
    assert deepest[1]["levels"] == pytest.approx(1.5) and deepest[1]["end"] == "f2.DI"
    assert r["levels_histogram"][3] == 1


def test_combinational_loop_terminates():
    cells = {"l1": _lut(11, 10, 12), "l2": _lut(12, 10, 11), "f": _ff(12, 10)}
    r = logic_depth.analyse(_netlist(cells, {"q": 10, "x": 11, "y": 12}), top_n=3)
    assert r["deepest"][0]["levels"] >= 1


def test_netlist_without_top_is_refused():
    with pytest.raises(ValueError, match="no module has the 'top' attribute"):
        logic_depth.analyse({"modules": {"m": {"attributes": {}, "cells": {}, "netnames": {}}}})
