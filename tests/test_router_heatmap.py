"""bench/router_heatmap.py on hand-made router2 heatmap files: totals, hottest tiles and blocks,
nets grouped by their RTL signal, the latest iteration by default, errors that name the files."""
import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "router_heatmap", Path(__file__).resolve().parents[1] / "bench" / "router_heatmap.py")
router_heatmap = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(router_heatmap)


def write(d: Path, it: int, grid, nets):
    (d / f"h_congestion_by_coordinate_{it}.csv").write_text("".join(",".join(map(str, r)) + ",\n" for r in grid))
    (d / f"h_congestion_by_net_{it}.csv").write_text("".join(f"{n},{v}\n" for n, v in nets))


def test_summary_of_the_latest_iteration(tmp_path):
    write(tmp_path, 3, [[0, 9, 0], [0, 0, 0]], [("a", 1)])
    grid = [[0] * 12 for _ in range(12)]
    grid[11][2], grid[1][1], grid[2][2] = 7, 3, 4
    write(tmp_path, 12, grid, [("core.lin.c_psum_0_7_TRELLIS_FF_Q", 5), ("core.lin.c_psum_1_3_LUT4_Z[1]", 2),
                               ("core.ins", 4), ("header", "x")])
    out = router_heatmap.summarize(tmp_path / "h", top=2, block=10)
    assert out["iteration"] == 12 and out["iterations_written"] == 2
    assert out["congestion_total"] == 14
    assert out["hottest_tiles"] == [{"x": 11, "y": 2, "congestion": 7}, {"x": 2, "y": 2, "congestion": 4}]
    assert sorted((b["x"], b["y"], b["congestion"]) for b in out["hottest_blocks"]) == [(0, 0, 7), (10, 0, 7)]
    assert out["signals"] == [{"signal": "core.lin.c_psum", "congestion": 7}, {"signal": "core.ins", "congestion": 4}]
    assert router_heatmap.summarize(tmp_path / "h", iteration=3)["congestion_total"] == 9


def test_errors_name_the_files_and_the_iteration(tmp_path, capsys):
    with pytest.raises(router_heatmap.HeatmapError, match=r"no h_congestion_by_coordinate_N.csv files"):
        router_heatmap.summarize(tmp_path / "h")
    write(tmp_path, 5, [[1]], [])
    with pytest.raises(router_heatmap.HeatmapError, match=r"iteration=4: not written under .* \(written: 5..5\)"):
        router_heatmap.summarize(tmp_path / "h", iteration=4)
    assert router_heatmap.main([str(tmp_path / "h")]) == 0
    assert json.loads(capsys.readouterr().out)["congestion_total"] == 1
