"""Board descriptions: one YAML file per board in this folder, validated on load.

Every error names the file and the field, e.g. ``zcu102.yaml: field 'resources.dsp': ...``.
Adding a board is adding one file. Units are in the field names (``bandwidth_gb_per_s``,
``target_mhz``, ``bram_kbits``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from accel.models.config import FieldReader
from accel.models.errors import ConfigError

BOARD_DIR = Path(__file__).parent
FAMILIES = ("xcup", "ecp5", "ice40")
FLOWS = {"xcup": ("vivado", "vitis"), "ecp5": ("trellis",), "ice40": ("icestorm",)}
DSP_KINDS = {"xcup": ("DSP48E2",), "ecp5": ("MULT18X18D",), "ice40": ("SB_MAC16",)}
RESOURCE_KINDS = ("lut", "ff", "dsp", "bram", "uram")

__all__ = ["Resources", "Memory", "Board", "load_board", "board_names", "BOARD_DIR", "RESOURCE_KINDS"]


@dataclass(frozen=True)
class Resources:
    lut: int
    ff: int
    dsp: int
    bram: int      # block RAMs of bram_kbits each (RAMB36E2: 36, DP16KD: 18, iCE40 EBR: 4)
    uram: int = 0  # large RAM blocks of uram_kbits each (UltraRAM: 288, iCE40 SPRAM: 256)

    def get(self, kind: str) -> int:
        return getattr(self, kind)


@dataclass(frozen=True)
class Memory:
    name: str
    kind: str
    channels: int
    bandwidth_gb_per_s: float  # aggregate over the channels, GB/s
    capacity_gb: float


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    part: str
    family: str
    flow: str
    dsp_kind: str
    bram_kbits: int
    uram_kbits: int
    resources: Resources          # what the part has
    reserved: Resources           # taken by a platform shell
    caps: Resources               # utilization caps, as fractions in [0, 1] (floats in a Resources shape)
    target_mhz: float
    reference_mhz: float | None
    memories: tuple[Memory, ...]
    platform: str | None          # "module:Class" of an amaranth-boards platform (open flows)
    source: str

    def budget(self, kind: str) -> int:
        """Usable amount of a resource: (available - reserved) * cap."""
        return int((self.resources.get(kind) - self.reserved.get(kind)) * self.caps.get(kind))

    @property
    def offchip_gb_per_s(self) -> float:
        return sum(m.bandwidth_gb_per_s for m in self.memories)

    def to_json(self) -> dict:
        return {"name": self.name, "description": self.description, "part": self.part, "family": self.family,
                "flow": self.flow, "dsp_kind": self.dsp_kind, "bram_kbits": self.bram_kbits,
                "resources": vars(self.resources), "reserved": vars(self.reserved),
                "utilization_caps": vars(self.caps),
                "budget": {k: self.budget(k) for k in RESOURCE_KINDS}, "target_mhz": self.target_mhz,
                "memories": [vars(m) for m in self.memories], "offchip_gb_per_s": self.offchip_gb_per_s}


def board_names() -> list[str]:
    return sorted(p.stem for p in BOARD_DIR.glob("*.yaml"))


def _number(f: FieldReader, key: str, lo: float, hi: float | None = None, default=...) -> float:
    f.used.add(key)
    if key not in f.data:
        if default is ...:
            raise f.err(key, "missing; add it (a number)")
        return default
    v = f.data[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise f.err(key, f"{v!r} is not a number")
    if v < lo or (hi is not None and v > hi):
        raise f.err(key, f"{v!r} must be in [{lo}, {hi if hi is not None else 'inf'}]")
    return v


def load_board(name_or_path: str | Path) -> Board:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = BOARD_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown board {str(name_or_path)!r}; boards/ has: {', '.join(board_names())} "
                              "(or pass a path to a board .yaml)")
    f = FieldReader.from_file(path, "board")
    file = f.file
    name = f.get("name", str)
    description = f.get("description", str, "")
    part = f.get("part", str)
    family = f.get("family", str)
    if family not in FAMILIES:
        raise f.err("family", f"{family!r} is not one of {', '.join(FAMILIES)}")
    flow = f.get("flow", str)
    if flow not in FLOWS[family]:
        raise f.err("flow", f"{flow!r} does not build family {family!r}; use one of {', '.join(FLOWS[family])}")
    platform = f.get("platform", str, None)
    if platform is not None and ":" not in platform:
        raise f.err("platform", f"{platform!r} must be 'module:Class' (e.g. amaranth_boards.ulx3s:ULX3S_85F_Platform)")

    r = f.sub("resources")
    counts = {k: r.get(k, int, 0 if k == "uram" else ..., minimum=0) for k in RESOURCE_KINDS}
    dsp_kind = r.get("dsp_kind", str)
    if dsp_kind not in DSP_KINDS[family]:
        raise r.err("dsp_kind", f"{dsp_kind!r} is not a {family} DSP; use {', '.join(DSP_KINDS[family])}")
    bram_kbits = r.get("bram_kbits", int, minimum=1)
    uram_kbits = r.get("uram_kbits", int, 288, minimum=1)
    r.finish()
    resources = Resources(**counts)

    res = f.sub("reserved", optional=True)
    reserved = Resources(0, 0, 0, 0, 0)
    if res is not None:
        reserved = Resources(**{k: res.get(k, int, 0, minimum=0) for k in RESOURCE_KINDS})
        res.finish()
        for k in RESOURCE_KINDS:
            if reserved.get(k) > resources.get(k):
                raise res.err(k, f"{reserved.get(k)} reserved exceeds the {resources.get(k)} the part has")

    c = f.sub("utilization_caps")
    caps = Resources(**{k: _number(c, k, 0.0, 1.0, 1.0 if k == "uram" else ...) for k in RESOURCE_KINDS})
    c.finish()

    k = f.sub("clocks")
    target = _number(k, "target_mhz", 1.0, 1000.0)
    ref = _number(k, "reference_mhz", 1.0, 1000.0, None)
    k.finish()

    f.used.add("memories")
    mems_raw = f.data.get("memories")
    if not isinstance(mems_raw, list):
        raise f.err("memories", f"{mems_raw!r} must be a list (empty for a board without off-chip memory)")
    memories = []
    for i, m_raw in enumerate(mems_raw):
        m = FieldReader(m_raw, file, f"memories[{i}].")
        memories.append(Memory(m.get("name", str), m.get("kind", str), m.get("channels", int, minimum=1),
                               float(_number(m, "bandwidth_gb_per_s", 0.001)), float(_number(m, "capacity_gb", 0.0))))
        m.finish()
    f.finish()
    if name != path.stem and path.parent == BOARD_DIR:
        raise f.err("name", f"{name!r} differs from the file name {path.stem!r}; make them equal")
    return Board(name, description, part, family, flow, dsp_kind, bram_kbits, uram_kbits, resources, reserved,
                 caps, float(target), None if ref is None else float(ref), tuple(memories), platform, str(path))
