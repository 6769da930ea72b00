"""Board YAML: the bundled boards load with their data-sheet figures; errors name file and field."""
import pytest
import yaml

from accel.boards import BOARD_DIR, board_names, load_board
from accel.cli import main
from accel.models.errors import ConfigError


def test_bundled_boards():
    assert board_names() == ["icebreaker", "kv260", "u280", "ulx3s-85f", "zcu102"]
    z = load_board("zcu102")
    assert (z.part, z.resources.lut, z.resources.ff, z.resources.dsp, z.resources.bram) == (
        "xczu9eg-ffvb1156-2-e", 274080, 548160, 2520, 912)
    assert z.budget("dsp") == 2016 and z.budget("lut") == int(274080 * 0.7)
    u = load_board("u280")
    assert (u.resources.dsp, u.resources.uram, u.reserved.lut) == (9024, 960, 108000)
    assert u.budget("lut") == int((1303680 - 108000) * 0.7)
    e = load_board("ulx3s-85f")
    assert (e.family, e.dsp_kind, e.resources.bram, e.bram_kbits) == ("ecp5", "MULT18X18D", 208, 18)
    assert load_board("icebreaker").memories == ()


def _write(tmp_path, edit, base="zcu102"):
    raw = yaml.safe_load((BOARD_DIR / f"{base}.yaml").read_text())
    edit(raw)
    p = tmp_path / "myboard.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["resources"].update(dsps=2520), "myboard.yaml: field 'resources.dsps': unknown field (a typo?)"),
    (lambda r: r["resources"].pop("lut"), "myboard.yaml: field 'resources.lut': missing"),
    (lambda r: r["resources"].update(dsp=-1), "myboard.yaml: field 'resources.dsp': -1 must be >= 0"),
    (lambda r: r.update(family="virtex"), "myboard.yaml: field 'family': 'virtex' is not one of xcup, ecp5, ice40"),
    (lambda r: r.update(flow="trellis"), "myboard.yaml: field 'flow': 'trellis' does not build family 'xcup'"),
    (lambda r: r["utilization_caps"].update(dsp=1.5), "myboard.yaml: field 'utilization_caps.dsp': 1.5 must be in [0.0, 1.0]"),
    (lambda r: r["memories"][0].update(bandwidth_gbps=19.2), "myboard.yaml: field 'memories[0].bandwidth_gbps': unknown field"),
    (lambda r: r["clocks"].update(target_mhz="fast"), "myboard.yaml: field 'clocks.target_mhz': 'fast' is not a number"),
    (lambda r: r["resources"].update(dsp_kind="MULT18X18D"), "myboard.yaml: field 'resources.dsp_kind': 'MULT18X18D' is not a xcup DSP"),
])
def test_board_errors_name_file_and_field(tmp_path, edit, message):
    with pytest.raises(ConfigError) as exc:
        load_board(_write(tmp_path, edit))
    assert message in str(exc.value)


def test_unknown_board():
    with pytest.raises(ConfigError, match="unknown board 'zcu104'; boards/ has: icebreaker, kv260"):
        load_board("zcu104")


def test_boards_cli(capsys):
    import json
    assert main(["boards", "--json"]) == 0
    names = [b["name"] for b in json.loads(capsys.readouterr().out)["boards"]]
    assert "u280" in names
