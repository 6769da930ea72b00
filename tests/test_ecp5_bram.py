"""accel.ecp5_bram (a memory's words in a routed ECP5 design's block RAMs) and accel.reimage
(another evaluation image into a built bitstream): the layout against a real Yosys/nextpnr build,
the layout's arithmetic, the configuration edits, and the command's checks and report."""
import json
import random
import stat
import sys
from pathlib import Path

import pytest

from accel.ecp5_bram import (BLOCK_VALUES, BramCell, BramLayoutError, block_bits, block_text, check, config_blocks,
                             memory_cells, patch)

REPO = Path(__file__).resolve().parents[1]


def _cell(index, width=4, wid=None):
    return BramCell(f"ram.mem.0.{index}", index, width, index + 100 if wid is None else wid)


def _config(blocks: dict[int, int]) -> str:
    """A textual configuration as nextpnr writes it: tiles, then `.bram_init` blocks, then groups."""
    text = ".device LFE5U-85F\n\n.tile R1C1:PLC2\nunknown: F0B0\n\n"
    for wid, bits in blocks.items():
        text += f".bram_init {wid}\n{block_text(bits)}\n"
    return text + ".tile_group R2C2:MIB_EBR0\nenum: MODE DP16KD\n\n"


# ------------------------------------------------------------------------------------------ layout


def test_four_bit_blocks_skip_every_ninth_bit():
    # cell 0 holds bits 0-3 of the words 0..4095; cell 1 bits 4-7; 16 columns for 64-bit words
    words = [0] * 4
    words[0] = 0xF          # address 0, column 0: data bits 0-3 -> raw bits 0-3
    words[2] = 0x1          # address 2, column 0: data bit 8 -> raw bit 9 (bit 8 is the byte's ninth)
    words[3] = 0x30         # address 3, column 1: data bits 12-13 -> raw bits 13, 14
    assert block_bits(words, 64, _cell(0)) == 0xF | 1 << 9
    assert block_bits(words, 64, _cell(1)) == 1 << 13 | 1 << 14
    assert block_bits(words, 64, _cell(2)) == 0


def test_rows_hold_consecutive_address_ranges():
    words = [0] * 4097
    words[4096] = 0xA << 60         # row 1, column 15, address 0 of the row
    assert block_bits(words, 64, _cell(16 + 15)) == 0xA
    assert block_bits(words, 64, _cell(15)) == 0
    assert block_bits([7], 64, _cell(16)) == 0      # addresses past the image hold zero


def test_wide_ports_fill_every_bit():
    assert block_bits([0, 0x3FFFF], 64, _cell(0, width=18)) == 0x3FFFF << 18
    assert block_bits([1 << 20], 64, _cell(1, width=18)) == 1 << 2       # column 1: word bits 18-35
    # 36 bits: two columns (bits 0-35, 36-63), rows of 512 addresses (checked on a 4,200-word build)
    assert block_bits([0, 1 << 63], 64, _cell(1, width=36)) == 1 << (36 + 27)
    assert block_bits([0] * 512 + [5], 64, _cell(2, width=36)) == 5


def test_block_text_is_nextpnrs_format_and_reads_back():
    bits = random.Random(1).getrandbits(18 * 1024)
    text = block_text(bits)
    lines = text.splitlines()
    assert len(lines) == BLOCK_VALUES // 8 and all(len(line.split()) == 8 for line in lines)
    assert lines[0].split()[0] == f"{bits & 0x1FF:03x}"
    config = _config({5: bits})
    start, end = config_blocks(config)[5]
    assert config[start:end] == text


# ------------------------------------------------------------------------------------ config edits


def test_patch_rewrites_only_the_blocks_that_change():
    rng = random.Random(2)
    old = [rng.getrandbits(64) for _ in range(5000)]
    cells = [_cell(k) for k in range(32)]
    config = _config({c.wid: block_bits(old, 64, c) for c in cells} | {7: 123})
    check(config, cells, old, 64)
    new = list(old)
    new[4100] ^= 1 << 40                            # row 1, column 10
    out, changed = patch(config, cells, new, 64)
    assert changed == 1
    check(out, cells, new, 64)
    assert config_blocks(out)[7] and out.endswith(".tile_group R2C2:MIB_EBR0\nenum: MODE DP16KD\n\n")
    # everything outside block 16 + 10 is the same text
    s, e = config_blocks(config)[cells[26].wid]
    s2, e2 = config_blocks(out)[cells[26].wid]
    assert config[:s] == out[:s2] and config[e:] == out[e2:]
    assert patch(config, cells, old, 64) == (config, 0)


def test_check_names_the_first_block_that_differs():
    old = [1, 2, 3]
    cells = [_cell(k) for k in range(16)]
    config = _config({c.wid: block_bits(old, 64, c) for c in cells})
    with pytest.raises(BramLayoutError, match=r"^top.config: 1 of 16 blocks do not hold the expected words \(first "
                                              r"'ram.mem.0.0', block 100\); either the build's memory image was not"):
        check(config, cells, [9, 2, 3], 64)
    with pytest.raises(BramLayoutError, match=r"^top.config: no `.bram_init` block for 1 of the 17 cells "
                                              r"\(first 'ram.mem.0.16'\)"):
        check(config, cells + [_cell(16)], old, 64)
    with pytest.raises(BramLayoutError, match=r"16 blocks at 4 bits hold 4096 words, the image has 4097"):
        check(config, cells, [0] * 4097, 64)
    with pytest.raises(BramLayoutError, match=r"^top.config: 15 blocks are not whole rows of 16 columns at 4 bits "
                                              r"for 64-bit words"):
        patch(config, cells[:15], old, 64)
    with pytest.raises(BramLayoutError, match=r"^word 1 is -2, outside 0 .. 2\*\*64 - 1"):
        patch(config, cells, [1, -2], 64)


def _netlist(tmp_path, cells: dict) -> Path:
    path = tmp_path / "top_placed.json"
    path.write_text(json.dumps({"modules": {"top": {"cells": cells}}}))
    return path


def _dp16kd(width=4, wid=3):
    return {"type": "DP16KD", "parameters": {"DATA_WIDTH_A": f"{width:032b}"}, "attributes": {"WID": f"{wid:032b}"}}


def test_memory_cells_read_from_the_placed_netlist(tmp_path):
    path = _netlist(tmp_path, {"ram.mem.0.1": _dp16kd(wid=9), "ram.mem.0.0": _dp16kd(wid=4), "core.x.0.0": _dp16kd()})
    assert memory_cells(path, "ram.mem") == [BramCell("ram.mem.0.0", 0, 4, 4), BramCell("ram.mem.0.1", 1, 4, 9)]


@pytest.mark.parametrize("cells, message", [
    ({"ram.mem.0.0": {**_dp16kd(), "attributes": {}}},
     "cell 'ram.mem.0.0' has no WID attribute; pass the placed or routed netlist nextpnr wrote, not Yosys's"),
    ({"ram.mem.0.0": {**_dp16kd(), "type": "TRELLIS_FF"}}, "cell 'ram.mem.0.0' is a TRELLIS_FF, not a DP16KD"),
    ({"ram.mem.0.0": _dp16kd(width=8)}, "cell 'ram.mem.0.0' is mapped at a port width of 8 bits"),
    ({"ram.mem.0.0": _dp16kd(width=4), "ram.mem.0.1": _dp16kd(width=36)}, r"several widths \[4, 36\]"),
    ({"ram.mem.0.0": _dp16kd(), "ram.mem.0.2": _dp16kd()}, r"the cells of ram.mem are numbered \[0, 2\]..., "
                                                           "expected 0 to 1"),
    ({"other.0.0": _dp16kd()}, "no DP16KD cells named ram.mem.0.<k>"),
    ({"ram.mem.0.0": _dp16kd(), "ram.mem.1.0": _dp16kd(wid=4)},
     "cell 'ram.mem.1.0': ram.mem is mapped as several copies \\(for more read ports\\); this module lays out one"),
    ({"ram.mem.0.0": _dp16kd(wid=5), "ram.mem.0.1": _dp16kd(wid=5)}, "two cells of ram.mem share a WID"),
    ({"ram.mem.0.0": {"type": "DP16KD", "parameters": {"DATA_WIDTH_A": "x"}, "attributes": {}}},
     "cell 'ram.mem.0.0' parameter DATA_WIDTH_A is 'x', expected an integer"),
])
def test_memory_cells_errors_name_the_file_and_the_cell(tmp_path, cells, message):
    with pytest.raises(BramLayoutError, match=message):
        memory_cells(_netlist(tmp_path, cells), "ram.mem")


def test_a_missing_netlist_is_named(tmp_path):
    with pytest.raises(BramLayoutError, match=r"top_placed.json: no such file; it is the placed netlist an ECP5 "):
        memory_cells(tmp_path / "top_placed.json", "ram.mem")


# ------------------------------------------------------------------------ against a real build


def test_a_real_build_holds_the_words_as_laid_out_and_takes_new_ones(ulx3s_stand_in_build):
    """The board top's RAM with 12,288 random words, built for the ULX3S by Yosys and nextpnr
    (tests/conftest.py): every one of its blocks in the configuration holds the words as
    accel.ecp5_bram lays them out (random words set every bit position of every block); new words
    patched in then pack."""
    from accel.build import _reap, _resolve, _start, tool_environment
    res, _, _, words = ulx3s_stand_in_build
    gw = Path(res.build_dir)
    cells = memory_cells(gw / "top_routed.json", "ram.mem")
    # the digits-moe image RAM's geometry: rows of 4,096 addresses (3 here), 16 columns of 4 bits,
    # 8 data bits in every 9
    assert {c.width for c in cells} == {4} and len(cells) == 48
    config = (gw / "top.config").read_text()
    check(config, cells, words, 64)
    new = [w ^ (1 << 64) - 1 for w in words]          # every bit of every block flips
    with pytest.raises(BramLayoutError, match="48 of 48 blocks do not hold the expected words"):
        check(config, cells, new, 64)
    rotated = words[4096:] + words[:4096]            # the blocks' contents with the rows in another order
    with pytest.raises(BramLayoutError, match="blocks do not hold the expected words"):
        check(config, cells, rotated, 64)
    patched, changed = patch(config, cells, new, 64)
    assert changed == 48
    check(patched, cells, new, 64)
    (gw / "patched.config").write_text(patched)
    env = tool_environment()
    proc = _start([_resolve("ecppack", env), "--compress", "--input", "patched.config", "--bit", "patched.bit"],
                  cwd=gw, env=env)
    proc.wait()
    _reap(proc)
    assert proc.returncode == 0
    assert (gw / "patched.bit").read_bytes() != (gw / "top.bit").read_bytes()


# ------------------------------------------------------------------------------------ accel reimage


def _fake_build(tmp_path, image: int, words: list[int], wid_of=lambda k: 1000 - k, blocks=None):
    """A build folder with digits-moe's report and its image's blocks in a configuration, and a
    stand-in ecppack that copies its input to the bitstream."""
    from accel.ecp5_bram import block_bits as bb
    src = tmp_path / "src"
    gw = src / "gateware"
    gw.mkdir(parents=True)
    n_cells = 16 * -(-len(words) // 4096)
    cells = {f"ram.mem.0.{k}": _dp16kd(wid=wid_of(k)) for k in range(n_cells)}
    (gw / "top_placed.json").write_text(json.dumps({"modules": {"top": {"cells": cells}}}))
    contents = blocks or {wid_of(k): bb(words, 64, _cell(k, wid=wid_of(k))) for k in range(n_cells)}
    (gw / "top.config").write_text(_config(contents))
    (gw / "build_top.json").write_text(json.dumps({"commands": [["yosys", "top.ys"], ["nextpnr-ecp5", "--json"],
                                                                ["ecppack", "--input", "top.config", "--bit", "top.bit"]]}))
    design = json.loads((REPO / "tests" / "data" / "digits_moe_design.json").read_text())
    (src / "report.json").write_text(json.dumps({"model": "digits-moe", "board": "ulx3s-85f", "params": design["params"],
                                                 "memory_image": {"words": len(words), "input_image": image},
                                                 "fmax_mhz": {"clk": 50.78}}))
    pack = tmp_path / "ecppack"
    pack.write_text(f"#!{sys.executable}\nimport shutil, sys\na = sys.argv\n"
                    "shutil.copyfile(a[a.index('--input') + 1], a[a.index('--bit') + 1])\n")
    pack.chmod(pack.stat().st_mode | stat.S_IXUSR)
    return src, pack


@pytest.fixture(scope="module")
def digits_images():
    from accel.boards import load_board
    from accel.build import memory_image
    from accel.models.config import load_config
    from accel.project import load_design_params, top_params
    cfg, board = load_config("digits-moe"), load_board("ulx3s-85f")
    tp = top_params(load_design_params(REPO / "tests" / "data" / "digits_moe_design.json", cfg, board), cfg)
    return {i: memory_image(cfg, tp, i)[2] for i in (0, 3)}


def test_reimage_writes_the_new_image_blocks_and_keeps_the_report(tmp_path, monkeypatch, capsys, digits_images):
    from accel.cli import main
    src, pack = _fake_build(tmp_path, 0, digits_images[0])
    monkeypatch.setenv("ECPPACK", str(pack))
    out = tmp_path / "new"
    assert main(["reimage", "--from", str(src), "--image", "3", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    changed = sum(a != b for a, b in zip(digits_images[0], digits_images[3]))
    assert 0 < doc["reimaged_from"]["blocks_changed"] <= changed
    assert doc["reimaged_from"]["input_image"] == 0 and doc["memory_image"]["input_image"] == 3
    assert doc["fmax_mhz"] == {"clk": 50.78} and doc["bitstream"] == str(out / "gateware" / "top.bit")
    cells = memory_cells(src / "gateware" / "top_placed.json", "ram.mem")
    check((out / "gateware" / "top.bit").read_text(), cells, digits_images[3], 64)
    assert json.loads((out / "report.json").read_text())["memory_image"]["input_image"] == 3


def test_reimage_refuses_a_build_whose_blocks_hold_another_image(tmp_path, monkeypatch, capsys, digits_images):
    from accel.cli import main
    src, pack = _fake_build(tmp_path, 0, digits_images[3])          # the report says image 0, the blocks hold 3
    monkeypatch.setenv("ECPPACK", str(pack))
    assert main(["reimage", "--from", str(src), "--image", "1", "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert "accel reimage: error: " in err and "blocks do not hold the expected words" in err
    assert not (tmp_path / "new" / "gateware" / "top.bit").exists()


def test_a_reimaged_folder_can_be_reimaged_again(tmp_path, monkeypatch, capsys, digits_images):
    from accel.cli import main
    src, pack = _fake_build(tmp_path, 0, digits_images[0])
    monkeypatch.setenv("ECPPACK", str(pack))
    assert main(["reimage", "--from", str(src), "--image", "3", "--out", str(tmp_path / "a")]) == 0
    assert main(["reimage", "--from", str(tmp_path / "a"), "--image", "0", "--out", str(tmp_path / "b")]) == 0
    assert "carries evaluation image 0 (the build had 3;" in capsys.readouterr().out
    assert (tmp_path / "b" / "gateware" / "top.config").read_text() == (src / "gateware" / "top.config").read_text()
    assert main(["reimage", "--from", str(src), "--image", "1", "--out", str(src)]) == 2
    assert f"--out {str(src)!r} is the source build folder; pass another folder" in capsys.readouterr().err


def test_reimage_errors_name_the_folder(tmp_path, capsys):
    from accel.cli import main
    assert main(["reimage", "--from", str(tmp_path), "--image", "1", "--out", str(tmp_path / "o")]) == 2
    assert f"--from {str(tmp_path)!r}: no report.json there; pass the --out folder of an `accel build`" in \
        capsys.readouterr().err
    (tmp_path / "report.json").write_text("[1]")
    assert main(["reimage", "--from", str(tmp_path), "--image", "1", "--out", str(tmp_path / "o"), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"error": f"{tmp_path / 'report.json'}: holds a list, expected the object `accel build` writes",
                   "kind": "AccelError"}
    (tmp_path / "report.json").write_text(json.dumps({"model": "digits-moe", "board": "icebreaker", "params": {},
                                                      "memory_image": {}}))
    assert main(["reimage", "--from", str(tmp_path), "--image", "1", "--out", str(tmp_path / "o")]) == 2
    assert "board 'icebreaker' is ice40; `accel reimage` writes ECP5 block RAM contents" in capsys.readouterr().err
