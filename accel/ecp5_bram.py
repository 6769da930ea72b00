"""Where a memory's words sit in the block RAMs of a routed ECP5 design, so new contents can go
into its configuration without synthesis or place and route (as ``ecpbram`` does, but by the
cells' names and the layout below instead of random placeholder contents).

The layout, as Yosys 0.70 (``memory_libmap`` onto ``$__DP16KD_``, ``lattice/brams_map_16kd.v``)
and nextpnr-ecp5 (``bitstream.cc``) lay it out, and as every use checks it again (:func:`check`):

- A memory of ``data_bits``-bit words mapped at port width ``w`` becomes DP16KD cells named
  ``<memory>.0.<k>``, ``k = row * columns + column`` with ``columns = ceil(data_bits / w)``;
  ``row`` holds the addresses ``[row * depth, (row + 1) * depth)`` (``depth = 16384 // w`` for
  ``w`` of 1, 2 or 4, 2048 for 9, 1024 for 18, 512 for 36) and ``column`` the word bits
  ``[column * w, (column + 1) * w)``.
- A block holds 1024 words of 18 bits. At widths 1, 2 and 4 the data fills 8 of every 9 bits:
  bit ``d = address * w + b`` sits at ``(d // 8) * 9 + d % 8``; at 9, 18 and 36 bits it sits at
  ``address * w + b``.
- nextpnr writes a block's 18,432 bits as 2048 values of 9 bits (three hex digits, eight to a
  line) under ``.bram_init <WID>``, where WID is the cell's ``WID`` attribute in the placed or
  routed netlist; ``ecppack`` finds the block's site from the same WID in the tile settings.

This is the layout of a memory written a whole word at a time, as the board top's RAM is (its
write strobes are all ones): with byte enables Yosys gives every byte a 9-bit lane, which this
module does not lay out. Checked on the digits-moe build by hand (9 rows of 16 blocks at ``w`` = 4;
every one of its 171 blocks under its cell's WID) and on a 4,200-word RAM (9 rows of 2 blocks at
``w`` = 36); tests/test_ecp5_bram.py checks a fresh build of the board top's RAM with 12,288
random words (3 rows of 16 blocks at ``w`` = 4, the digits-moe geometry). A memory split over
several widths, or
copied for more read ports (``<memory>.1.<k>``), is refused; and every use checks a configuration
against the image it was built with before writing another (:func:`check`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from accel.models.errors import AccelError

__all__ = ["BramLayoutError", "BramCell", "memory_cells", "block_bits", "block_text", "config_blocks",
           "check", "patch", "BLOCK_VALUES"]

BLOCK_BITS = 18 * 1024           # one DP16KD
BLOCK_VALUES = BLOCK_BITS // 9   # nextpnr's .bram_init values of 9 bits
VALUES_PER_LINE = 8
PORT_DEPTH = {1: 16384, 2: 8192, 4: 4096, 9: 2048, 18: 1024, 36: 512}


class BramLayoutError(AccelError):
    """A build's block RAMs do not hold a memory the way this module lays it out; the message
    names the build file, the cell and what differs."""


@dataclass(frozen=True)
class BramCell:
    name: str       # e.g. "ram.mem.0.17"
    index: int      # k in <memory>.0.<k>
    width: int      # the port width the memory was mapped at (DATA_WIDTH_A)
    wid: int        # nextpnr's block number: `.bram_init <wid>` in the configuration


def _int_param(value, what: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value and set(value) <= {"0", "1"}:
        return int(value, 2)
    raise BramLayoutError(f"{what} is {value!r}, expected an integer (nextpnr writes them as binary strings)")


def memory_cells(netlist: str | Path, memory: str) -> list[BramCell]:
    """The DP16KD cells of ``memory`` (e.g. ``"ram.mem"``) in a placed or routed nextpnr netlist
    (``top_placed.json``, ``top_routed.json``), in the order of their index."""
    netlist = Path(netlist)
    try:
        doc = json.loads(netlist.read_text())
    except FileNotFoundError:
        raise BramLayoutError(f"{netlist}: no such file; it is the placed netlist an ECP5 `accel build` writes "
                              "unless both --no-route-timing and --no-dsp-reseat are given (rebuild without them, "
                              "or with --timing-paths)") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BramLayoutError(f"{netlist}: not a nextpnr JSON netlist ({exc})") from None
    modules = doc.get("modules") if isinstance(doc, dict) else None
    if not isinstance(modules, dict) or len(modules) != 1:
        raise BramLayoutError(f"{netlist}: expected one module, found {len(modules) if isinstance(modules, dict) else 0}")
    module = next(iter(modules.values()))
    cells = module.get("cells") if isinstance(module, dict) else None
    if not isinstance(cells, dict):
        raise BramLayoutError(f"{netlist}: the module has no 'cells' object; pass a nextpnr JSON netlist")
    pattern = re.compile(re.escape(memory) + r"\.(\d+)\.(\d+)$")
    out = []
    for name, cell in cells.items():
        m = pattern.match(name)
        if not m or not isinstance(cell, dict):
            continue
        if m.group(1) != "0":
            raise BramLayoutError(f"{netlist}: cell {name!r}: {memory} is mapped as several copies (for more read "
                                  "ports); this module lays out one")
        if cell.get("type") != "DP16KD":
            raise BramLayoutError(f"{netlist}: cell {name!r} is a {cell.get('type')}, not a DP16KD block RAM")
        params, attrs = cell.get("parameters", {}), cell.get("attributes", {})
        width = _int_param(params.get("DATA_WIDTH_A"), f"{netlist}: cell {name!r} parameter DATA_WIDTH_A")
        if width not in PORT_DEPTH:
            raise BramLayoutError(f"{netlist}: cell {name!r} is mapped at a port width of {width} bits; this module "
                                  f"lays out widths {sorted(PORT_DEPTH)}")
        if "WID" not in attrs:
            raise BramLayoutError(f"{netlist}: cell {name!r} has no WID attribute; pass the placed or routed "
                                  "netlist nextpnr wrote, not Yosys's")
        out.append(BramCell(name, int(m.group(2)), width, _int_param(attrs["WID"], f"{netlist}: cell {name!r} WID")))
    if not out:
        raise BramLayoutError(f"{netlist}: no DP16KD cells named {memory}.0.<k>; the memory is not in block RAM "
                              "or has another name")
    out.sort(key=lambda c: c.index)
    widths = {c.width for c in out}
    if len(widths) != 1:
        raise BramLayoutError(f"{netlist}: the cells of {memory} are mapped at several widths {sorted(widths)}")
    if [c.index for c in out] != list(range(len(out))):
        raise BramLayoutError(f"{netlist}: the cells of {memory} are numbered {[c.index for c in out][:8]}..., "
                              f"expected 0 to {len(out) - 1}")
    if len({c.wid for c in out}) != len(out):
        raise BramLayoutError(f"{netlist}: two cells of {memory} share a WID; nextpnr numbers every block once")
    return out


def _columns(width: int, data_bits: int) -> int:
    return -(-data_bits // width)


def block_bits(words: list[int], data_bits: int, cell: BramCell) -> int:
    """The 18,432 bits of ``cell``'s block (bit i of the result is raw bit i) for a memory holding
    ``words`` (data_bits each; addresses past the list hold zero)."""
    w = cell.width
    cols = _columns(w, data_bits)
    depth = PORT_DEPTH[w]
    row, col = divmod(cell.index, cols)
    mask = (1 << w) - 1
    packed = w < 9
    bits = 0
    base = row * depth
    for a in range(min(depth, max(0, len(words) - base))):
        value = (words[base + a] >> (col * w)) & mask
        if not value:
            continue
        d = a * w
        if packed:
            for b in range(w):
                if value >> b & 1:
                    bit = d + b
                    bits |= 1 << ((bit >> 3) * 9 + (bit & 7))
        else:
            bits |= value << d
    return bits


def block_text(bits: int) -> str:
    """A block's contents as nextpnr writes them under ``.bram_init``: 2048 values of 9 bits."""
    values = [f"{(bits >> (9 * i)) & 0x1FF:03x}" for i in range(BLOCK_VALUES)]
    return "".join(" ".join(values[i:i + VALUES_PER_LINE]) + "\n" for i in range(0, BLOCK_VALUES, VALUES_PER_LINE))


_BLOCK_RE = re.compile(r"^\.bram_init (\d+)\n((?:[0-9a-fA-F]{3}(?: [0-9a-fA-F]{3})*\n)+)", re.M)


def config_blocks(config: str) -> dict[int, tuple[int, int]]:
    """WID -> (start, end) of the values of each ``.bram_init`` block in a textual configuration."""
    return {int(m.group(1)): (m.start(2), m.end(2)) for m in _BLOCK_RE.finditer(config)}


def _block_value(config: str, span: tuple[int, int]) -> int:
    values = config[span[0]:span[1]].split()
    bits = 0
    for i, v in enumerate(values):
        bits |= int(v, 16) << (9 * i)
    return bits


def _blocks_for(config: str, cells: list[BramCell], words: list[int], data_bits: int, where: str):
    """The configuration's blocks, after checking that every cell has one and that the words fit."""
    blocks = config_blocks(config)
    missing = [c.name for c in cells if c.wid not in blocks]
    if missing:
        raise BramLayoutError(f"{where}: no `.bram_init` block for {len(missing)} of the {len(cells)} cells "
                              f"(first {missing[0]!r}); the configuration is not from this netlist")
    cols = _columns(cells[0].width, data_bits)
    rows = -(-len(cells) // cols)
    if rows * cols != len(cells):
        raise BramLayoutError(f"{where}: {len(cells)} blocks are not whole rows of {cols} columns at "
                              f"{cells[0].width} bits for {data_bits}-bit words")
    if rows * PORT_DEPTH[cells[0].width] < len(words):
        raise BramLayoutError(f"{where}: {len(cells)} blocks at {cells[0].width} bits hold "
                              f"{rows * PORT_DEPTH[cells[0].width]} words, the image has {len(words)}")
    bad = next((i for i, w in enumerate(words) if not 0 <= w < 1 << data_bits), None)
    if bad is not None:
        raise BramLayoutError(f"word {bad} is {words[bad]!r}, outside 0 .. 2**{data_bits} - 1")
    return blocks


def check(config: str, cells: list[BramCell], words: list[int], data_bits: int, where: str = "top.config") -> None:
    """That ``config`` holds ``words`` in ``cells`` as laid out here; else BramLayoutError naming
    the first cell that differs and how many do."""
    blocks = _blocks_for(config, cells, words, data_bits, where)
    wrong = [c for c in cells if _block_value(config, blocks[c.wid]) != block_bits(words, data_bits, c)]
    if wrong:
        raise BramLayoutError(f"{where}: {len(wrong)} of {len(cells)} blocks do not hold the expected words (first "
                              f"{wrong[0].name!r}, block {wrong[0].wid}); either the build's memory image was not "
                              "this one (another model, weights or compiler) or the layout differs from this module's")


def patch(config: str, cells: list[BramCell], words: list[int], data_bits: int,
          where: str = "top.config") -> tuple[str, int]:
    """``config`` with ``cells`` holding ``words``; returns it and the number of blocks that changed."""
    blocks = _blocks_for(config, cells, words, data_bits, where)
    edits = []
    for c in cells:
        span = blocks[c.wid]
        bits = block_bits(words, data_bits, c)
        if _block_value(config, span) != bits:
            edits.append((span, block_text(bits)))
    out, last = [], 0
    for (start, end), text in sorted(edits):
        out += [config[last:start], text]
        last = end
    out.append(config[last:])
    return "".join(out), len(edits)
