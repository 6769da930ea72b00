"""Model descriptions: frozen dataclasses, with YAML only as the file format.

A zoo entry is ``models/zoo/NAME.yaml``. Loading checks every field and names the file and the
field in any error, e.g. ``digits-moe.yaml: field 'moe.top_k': 5 > moe.experts (4); ...``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

ZOO_DIR = Path(__file__).parent / "zoo"
WEIGHTS_DIR = Path(__file__).parent / "weights"

__all__ = ["MoEConfig", "DataConfig", "ModelConfig", "load_config", "zoo_names", "imported_names",
           "ZOO_DIR", "WEIGHTS_DIR", "IMPORTED_DIR"]


@dataclass(frozen=True)
class MoEConfig:
    layers: tuple[int, ...]   # encoder blocks whose MLP is a mixture of experts
    experts: int
    top_k: int
    expert_hidden: int
    tasks: int = 1            # one gate per task (M3ViT multi-task)
    renormalize: bool = False  # renormalize the k chosen probabilities to sum to 1


@dataclass(frozen=True)
class DataConfig:
    dataset: str              # "digits" (scikit-learn's bundled set) or "random" (seeded noise)
    calibration_images: int
    eval_images: int


@dataclass(frozen=True)
class ModelConfig:
    name: str
    image_size: tuple[int, int]   # (height, width) in pixels
    in_chans: int
    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_hidden: int
    num_classes: int              # 0: no classification head (a backbone, as M3ViT's)
    moe: MoEConfig | None
    data: DataConfig
    weights: str                  # a file in models/weights (or beside the YAML), or "random"
    seed: int = 0
    description: str = ""
    source: str = ""              # the file it was loaded from
    final_norm: bool = True       # LayerNorm after the last block (timm); M3ViT's backbone has none

    @property
    def grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    @property
    def patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def tokens(self) -> int:
        return self.patches + 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def patch_features(self) -> int:
        return self.in_chans * self.patch_size * self.patch_size

    def is_moe(self, layer: int) -> bool:
        return self.moe is not None and layer in self.moe.layers

    @property
    def tasks(self) -> int:
        return self.moe.tasks if self.moe else 1

    def macs_per_image(self) -> dict[str, int]:
        """Multiply-accumulates per image, by kind (MoE counts top_k experts per token)."""
        n, d = self.tokens, self.dim
        out = {"patch_embed": self.patches * self.patch_features * d, "qkv": 0, "attention": 0,
               "proj": 0, "mlp": 0, "gate": 0, "experts": 0, "head": d * self.num_classes}
        for layer in range(self.depth):
            out["qkv"] += n * d * 3 * d
            out["attention"] += 2 * n * n * d
            out["proj"] += n * d * d
            if self.is_moe(layer):
                out["gate"] += n * d * self.moe.experts
                out["experts"] += n * self.moe.top_k * 2 * d * self.moe.expert_hidden
            else:
                out["mlp"] += n * 2 * d * self.mlp_hidden
        out["total"] = sum(out.values())
        return out

    def weights_path(self) -> Path | None:
        if self.weights == "random":
            return None
        here = Path(self.source).parent if self.source else ZOO_DIR
        for cand in (here / self.weights, WEIGHTS_DIR / self.weights):
            if cand.exists():
                return cand
        raise ConfigError(f"{self._file}: field 'weights': file {self.weights!r} not found beside "
                          f"the YAML or in {WEIGHTS_DIR}; train it (python -m accel.models.train_digits) "
                          "or set weights: random")

    @property
    def _file(self) -> str:
        return Path(self.source).name if self.source else self.name


IMPORTED_DIR = Path("build") / "models"  # where `accel import` writes by default (relative to the cwd)


def zoo_names() -> list[str]:
    return sorted(p.stem for p in ZOO_DIR.glob("*.yaml"))


def imported_names() -> list[str]:
    return sorted(p.parent.name for p in IMPORTED_DIR.glob("*/*.yaml") if p.stem == p.parent.name)


class FieldReader:
    """Reads a mapping field by field, naming the file and field path in every error."""

    def __init__(self, data: Any, file: str, prefix: str = ""):
        self.file, self.prefix = file, prefix
        if not isinstance(data, dict):
            where = f"field {prefix.rstrip('.')!r}" if prefix else "top level"
            raise ConfigError(f"{file}: {where}: expected a mapping, got {type(data).__name__} {data!r}")
        self.data = dict(data)
        self.used: set[str] = set()

    @classmethod
    def from_file(cls, path: Path, what: str) -> "FieldReader":
        """Read a YAML mapping; a missing file or bad YAML is a ConfigError naming the file."""
        if not path.exists():
            raise ConfigError(f"{what} file {str(path)!r} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path.name}: not valid YAML: {exc}") from None
        return cls(raw, path.name)

    def err(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.file}: field {self.prefix + key!r}: {msg}")

    def get(self, key: str, kind: type, default: Any = ..., *, minimum: int | None = None) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.err(key, f"missing; add it ({kind.__name__})")
            return default
        value = self.data[key]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.err(key, f"{value!r} is not an integer")
        if kind is bool and not isinstance(value, bool):
            raise self.err(key, f"{value!r} is not true/false")
        if kind is str and not isinstance(value, str):
            raise self.err(key, f"{value!r} is not a string")
        if kind is list and not isinstance(value, list):
            raise self.err(key, f"{value!r} is not a list")
        if minimum is not None and value < minimum:
            raise self.err(key, f"{value!r} must be >= {minimum}")
        return value

    def sub(self, key: str, optional: bool = False) -> "FieldReader | None":
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if optional:
                return None
            raise self.err(key, "missing; add the section")
        return FieldReader(self.data[key], self.file, self.prefix + key + ".")

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            known = ", ".join(sorted(self.used))
            raise self.err(unknown[0], f"unknown field (a typo?); known fields here: {known}")


def load_config(name_or_path: str | Path) -> ModelConfig:
    """Load a zoo model by name (``digits-moe``) or a model YAML by path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = ZOO_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            path = IMPORTED_DIR / str(name_or_path) / f"{name_or_path}.yaml"
        if not path.exists():
            imported = imported_names()
            extra = f"; imported in {IMPORTED_DIR}: {', '.join(imported)}" if imported else ""
            raise ConfigError(f"unknown model {str(name_or_path)!r}; the zoo has: {', '.join(zoo_names())}"
                              f"{extra} (or pass a path to a model .yaml)")
    f = FieldReader.from_file(path, "model")
    name = f.get("name", str)
    size = f.get("image_size", list)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise f.err("image_size", f"{size!r} must be [height, width], two positive integers")
    in_chans = f.get("in_chans", int, minimum=1)
    patch = f.get("patch_size", int, minimum=1)
    for axis, s in zip(("height", "width"), size):
        if s % patch:
            raise f.err("patch_size", f"{patch} does not divide the image {axis} {s}; choose a divisor")
    dim = f.get("dim", int, minimum=1)
    depth = f.get("depth", int, minimum=1)
    heads = f.get("heads", int, minimum=1)
    if dim % heads:
        raise f.err("heads", f"dim {dim} is not divisible by heads={heads}; choose heads dividing dim")
    mlp_hidden = f.get("mlp_hidden", int, minimum=1)
    num_classes = f.get("num_classes", int, minimum=0)
    final_norm = f.get("final_norm", bool, True)
    weights = f.get("weights", str)
    seed = f.get("seed", int, 0)
    description = f.get("description", str, "")
    moe = None
    m = f.sub("moe", optional=True)
    if m is not None:
        layers = m.get("layers", list)
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < depth:
                raise m.err("layers", f"entry {layer!r} is not a block index in [0, {depth - 1}] (depth {depth})")
        if len(set(layers)) != len(layers):
            raise m.err("layers", f"{layers!r} repeats a block")
        experts = m.get("experts", int, minimum=1)
        top_k = m.get("top_k", int, minimum=1)
        if top_k > experts:
            raise m.err("top_k", f"{top_k} > moe.experts ({experts}); top_k must be at most the number of experts")
        moe = MoEConfig(tuple(sorted(layers)), experts, top_k, m.get("expert_hidden", int, minimum=1),
                        m.get("tasks", int, 1, minimum=1), m.get("renormalize", bool, False))
        m.finish()
    d = f.sub("data")
    dataset = d.get("dataset", str)
    if dataset not in ("digits", "random"):
        raise d.err("dataset", f"{dataset!r} is not one of 'digits', 'random'")
    data = DataConfig(dataset, d.get("calibration_images", int, minimum=1), d.get("eval_images", int, minimum=1))
    d.finish()
    f.finish()
    if dataset == "digits" and (tuple(size) != (8, 8) or in_chans != 1 or num_classes != 10):
        raise f.err("image_size", f"dataset 'digits' is 8x8, 1 channel, 10 classes; got {size}, "
                    f"in_chans {in_chans}, num_classes {num_classes}")
    return ModelConfig(name, (size[0], size[1]), in_chans, patch, dim, depth, heads, mlp_hidden,
                      num_classes, moe, data, weights, seed, description, str(path), final_norm)
