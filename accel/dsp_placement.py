"""Re-seat the DSP blocks of a placed ECP5 netlist next to the logic they connect.

nextpnr's static placer spreads cells by density, then legalizes the DSP blocks onto their sites.
When nearly every MULT18X18D site is taken (154 of 156 on the digits-moe design), some blocks end
up across the die from its operands' flip-flops: the digits-moe build's two worst paths went through
such blocks (the gate's product 178 tiles from its operands; a linear requantizer product at
(9, 34) with its sum at (102, 55); docs/benchmarks.md).

:func:`reseat_dsps` takes the placement as it is, and chooses the site of every movable DSP block
at once: an assignment of blocks to the sites of the DSP blocks the placement used, minimizing the
summed squared distance (in tiles) from each block to the drivers of its inputs and to the box of
the sinks of each of its outputs, with every other cell where the placer put it (scipy's
linear_sum_assignment). The result is a permutation of sites among the blocks, written back as their ``NEXTPNR_BEL``; the
routing run (accel.build) then routes the placement with the moved blocks.

What moves: MULT18X18D cells without clock, clock-enable or reset nets and without cascade
connections (Yosys maps the accelerator's products in the combinational mode). nextpnr allows at
most four distinct clock/enable/reset nets per block of two DSP slices; a combinational block adds
none, so any site of a used block is legal for it. Registered blocks keep their sites, and those
sites are not offered to others.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

DSP_CELL = "MULT18X18D"
# the control and cascade ports that pin a block to its site when connected
_PINNING_PORTS = re.compile(r"^(CLK|CE|RST)\d$|^SRI[AB]\d+$|^SRO[AB]\d+$")
_BEL = re.compile(r"^X(\d+)/Y(\d+)/(MULT18_(\d+))$")
_ANY_BEL = re.compile(r"^X(\d+)/Y(\d+)/")
# the MULT18X18D sites of an ECP5 DSP block (two sysDSP slices): MULT18_0, _1, _4, _5 at x0 + z
# (every block of the 156 the digits-moe placement used has these four)
MULT18_SITES_Z = (0, 1, 4, 5)
# nets with more pins than this (clocks, resets, enables, broadcast selects) do not pull a block
MAX_NET_PINS = 64


class DspPlacementError(ValueError):
    """The placed netlist cannot be re-seated (not nextpnr's placed ECP5 netlist)."""


@dataclass(frozen=True)
class DspSeating:
    """What :func:`reseat_dsps` did: the blocks it could move, how many it moved, and their summed
    (and worst) distance in tiles to the cells they connect, before and after."""
    movable: int
    fixed: int
    sites: int
    moved: int
    cost_before: float          # the objective: summed squared distances, tiles^2
    cost_after: float
    worst_tiles_before: int     # the farthest connection of any movable block
    worst_tiles_after: int
    mean_tiles_before: float    # mean over movable blocks of their farthest connection
    mean_tiles_after: float

    def as_json(self) -> dict:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _top(netlist: dict) -> dict:
    tops = [m for m in netlist.get("modules", {}).values() if "settings" in m]
    if len(tops) != 1:
        raise DspPlacementError(f"the netlist has {len(tops)} modules with nextpnr settings, expected 1 (write it "
                                "with nextpnr --write after placement)")
    return tops[0]


def _xy(cell: dict) -> tuple[int, int] | None:
    m = _ANY_BEL.match(cell.get("attributes", {}).get("NEXTPNR_BEL", ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def _pins(cells: dict) -> tuple[dict, dict]:
    """The placed cells' nets: {net bit: (driver cell, its (x, y))} and {net bit: [(sink cell, (x, y))]}."""
    drivers, sinks = {}, {}
    for name, c in cells.items():
        xy = _xy(c)
        if xy is None:
            continue
        dirs = c.get("port_directions", {})
        for port, bits in c.get("connections", {}).items():
            for b in bits:
                if not isinstance(b, int):
                    continue
                if dirs.get(port) == "output":
                    drivers[b] = (name, xy)
                else:
                    sinks.setdefault(b, []).append((name, xy))
    return drivers, sinks


def _movable(cell: dict) -> bool:
    """No clock, enable, reset or cascade net (constants do not count)."""
    return not any(_PINNING_PORTS.match(p) and any(isinstance(b, int) for b in bits)
                   for p, bits in cell.get("connections", {}).items())


def _block(x: int, y: int, z: int) -> tuple[int, int]:
    return x - z, y


def reseat_dsps(netlist: dict) -> DspSeating:
    """Re-seat the movable DSP blocks of nextpnr's placed ECP5 ``netlist`` (changed in place)."""
    from scipy.optimize import linear_sum_assignment
    cells = _top(netlist).get("cells", {})
    dsps = {n: c for n, c in cells.items() if c.get("type") == DSP_CELL}
    seats = {}
    for n, c in dsps.items():
        bel = c.get("attributes", {}).get("NEXTPNR_BEL", "")
        m = _BEL.match(bel)
        if not m:
            raise DspPlacementError(f"DSP cell {n!r} has NEXTPNR_BEL {bel!r}, expected 'X<x>/Y<y>/MULT18_<z>' "
                                    "(is the netlist placed?)")
        seats[n] = (int(m.group(1)), int(m.group(2)), int(m.group(4)))
    movable = sorted(n for n, c in dsps.items() if _movable(c))
    fixed = set(dsps) - set(movable)
    blocks = {_block(*seats[n]) for n in dsps}
    taken = {seats[n] for n in fixed}
    sites = sorted((bx + z, by, z) for (bx, by) in blocks for z in MULT18_SITES_Z if (bx + z, by, z) not in taken)
    if not movable:
        return DspSeating(0, len(fixed), len(sites), 0, 0.0, 0.0, 0, 0, 0.0, 0.0)

    drivers, sinks = _pins(cells)
    moving = set(movable)
    # per movable block: the points it should be near (drivers of its inputs, the sinks' box of
    # each output net), taken from cells that stay put
    sx = np.array([s[0] for s in sites], dtype=float)
    sy = np.array([s[1] for s in sites], dtype=float)
    cost = np.zeros((len(movable), len(sites)))
    far = np.zeros((len(movable), len(sites)))
    for i, n in enumerate(movable):
        c = dsps[n]
        dirs = c.get("port_directions", {})
        nets = {}
        for port, bits in c.get("connections", {}).items():
            for b in bits:
                if isinstance(b, int):
                    nets[b] = dirs.get(port)
        for b, d in nets.items():
            if d == "output":
                pts = [xy for (cn, xy) in sinks.get(b, []) if cn not in moving]
            else:
                drv = drivers.get(b)
                pts = [drv[1]] if drv and drv[0] not in moving else []
            if not pts or len(sinks.get(b, [])) + 1 > MAX_NET_PINS:
                continue
            x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
            y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
            dist = (np.maximum(0, np.maximum(x0 - sx, sx - x1)) + np.maximum(0, np.maximum(y0 - sy, sy - y1)))
            cost[i] += dist ** 2
            far[i] = np.maximum(far[i], dist)
    index = {s: j for j, s in enumerate(sites)}
    now = np.array([index[seats[n]] for n in movable])
    rows, cols = linear_sum_assignment(cost)
    new = np.empty(len(movable), dtype=int)
    new[rows] = cols
    rng = np.arange(len(movable))
    moved = 0
    for i, n in enumerate(movable):
        x, y, z = sites[new[i]]
        if (x, y, z) != seats[n]:
            moved += 1
            dsps[n]["attributes"]["NEXTPNR_BEL"] = f"X{x}/Y{y}/MULT18_{z}"
    return DspSeating(
        movable=len(movable), fixed=len(fixed), sites=len(sites), moved=moved,
        cost_before=float(cost[rng, now].sum()), cost_after=float(cost[rng, new].sum()),
        worst_tiles_before=int(far[rng, now].max()), worst_tiles_after=int(far[rng, new].max()),
        mean_tiles_before=float(far[rng, now].mean()), mean_tiles_after=float(far[rng, new].mean()))
