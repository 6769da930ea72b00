"""Import a trained checkpoint in timm's VisionTransformer layout or M3ViT's MoE layout.

The state_dict alone tells the architecture except the number of heads (and, for MoE, top-k and
the gate kind), which come from the caller. Anything the layout does not cover is refused naming
the key; nothing is dropped silently (keys skipped on request are listed in the result).

Layout (timm; M3ViT builds on it):
  patch_embed.proj.weight [D, C, P, P], .bias [D]; cls_token [1, 1, D]; pos_embed [1, N+1, D];
  blocks.{i}.norm1/norm2.{weight,bias}; blocks.{i}.attn.qkv.weight [3D, D] (.bias optional);
  blocks.{i}.attn.proj.{weight,bias}; dense blocks.{i}.mlp.fc1/fc2.{weight,bias};
  norm.{weight,bias} (timm; absent in M3ViT's backbone); head.{weight,bias} (optional).
M3ViT MoE blocks (FMoE): blocks.{i}.mlp.experts.htoh4.weight [E, H, D], .bias [E, H];
  blocks.{i}.mlp.experts.h4toh.weight [E, D, H], .bias [E, D]; gates blocks.{i}.mlp.gate.w_gate
  [D, E] (one gate) or blocks.{i}.mlp.gate.{t}.w_gate (one per task, multi_gate).
Gate kinds: 'vmoe' (NoisyGate_VMoE: softmax over all experts, then top-k, not renormalized) and
'noisy' (NoisyGate: softmax over the top-k logits, i.e. renormalized).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from .config import IMPORTED_DIR, ModelConfig, load_config
from .errors import ConfigError
from .float_model import MoEViT, save_weights

LAYOUTS = ("timm", "m3vit")
GATE_KINDS = ("vmoe", "noisy")
_WRAPPERS = ("module.", "backbone.")

_BLOCK_KEYS = {
    "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight", "attn.qkv.bias",
    "attn.proj.weight", "attn.proj.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    "mlp.experts.htoh4.weight", "mlp.experts.htoh4.bias", "mlp.experts.h4toh.weight", "mlp.experts.h4toh.bias",
}
_TOP_KEYS = {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed", "norm.weight",
             "norm.bias", "head.weight", "head.bias"}
_EXPLAIN = {
    "dist_token": "a distillation token (DeiT-distilled) is not supported: accel models have one class token",
    "head_dist": "a distillation head is not supported",
    "reg_token": "register tokens are not supported",
    "norm_pre": "a pre-norm before the blocks is not supported",
    "fc_norm": "average pooling with fc_norm is not supported: accel pools the class token",
    "patch_embed.backbone": "a convolutional stem (hybrid ViT) is not supported: the patch embedding must be one Conv2d",
    "gate_task_represent": "task-specific gate inputs (gate_task_specific_dim) are not supported",
    "q_norm": "q/k normalization in attention is not supported",
    "k_norm": "q/k normalization in attention is not supported",
    "ls1": "LayerScale is not supported",
    "ls2": "LayerScale is not supported",
}


@dataclass(frozen=True)
class ImportResult:
    config: ModelConfig
    yaml_path: Path
    weights_path: Path
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        c = self.config
        return {"name": c.name, "yaml": str(self.yaml_path), "weights": str(self.weights_path),
                "image_size": list(c.image_size), "patch_size": c.patch_size, "in_chans": c.in_chans,
                "tokens": c.tokens, "dim": c.dim, "depth": c.depth, "heads": c.heads, "mlp_hidden": c.mlp_hidden,
                "moe_layers": list(c.moe.layers) if c.moe else [], "experts": c.moe.experts if c.moe else 0,
                "expert_hidden": c.moe.expert_hidden if c.moe else 0, "top_k": c.moe.top_k if c.moe else 0,
                "tasks": c.tasks, "num_classes": c.num_classes, "final_norm": c.final_norm,
                "skipped": list(self.skipped), "notes": list(self.notes)}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A .pth/.pt file holding a state_dict, or a dict holding one under 'model' or 'state_dict'."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise ConfigError(f"{path.name}: cannot be read as a PyTorch checkpoint: {exc}") from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path.name}: expected a state_dict (name -> tensor), or a dict holding one under "
                          "'model' or 'state_dict'")
    for prefix in _WRAPPERS:  # DistributedDataParallel / multi-task wrappers
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def _need(sd: dict, key: str, file: str, shape_hint: str) -> torch.Tensor:
    if key not in sd:
        raise ConfigError(f"{file}: key {key!r} is missing ({shape_hint}); not a complete ViT checkpoint "
                          "in this layout")
    return sd[key]


def _shape(sd: dict, key: str, want: tuple, file: str) -> None:
    got = tuple(sd[key].shape)
    if got != want:
        raise ConfigError(f"{file}: key {key!r} has shape {list(got)}, expected {list(want)} from the rest "
                          "of the checkpoint")


def import_checkpoint(path: Path, layout: str, name: str, heads: int | None, top_k: int | None = None,
                      task: int | None = None, gate: str = "vmoe", image_size: tuple[int, int] | None = None,
                      out_dir: Path = IMPORTED_DIR, ignore: tuple[str, ...] = ()) -> ImportResult:
    path = Path(path)
    file = path.name
    if layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if gate not in GATE_KINDS:
        raise ConfigError(f"gate kind {gate!r} is not one of {', '.join(GATE_KINDS)}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"model name {name!r} must be letters, digits, '.', '_' or '-'")
    sd = read_state_dict(path)
    skipped = tuple(sorted(k for k in sd if any(k.startswith(p) for p in ignore)))
    sd = {k: v for k, v in sd.items() if k not in skipped}
    notes: list[str] = []

    # refuse what the layout does not cover, naming the key
    depth = 0
    block_re = re.compile(r"blocks\.(\d+)\.(.+)")
    for key in sorted(sd):
        for marker, why in _EXPLAIN.items():
            if key.startswith(marker) or f".{marker}." in f".{key}":
                raise ConfigError(f"{file}: key {key!r}: {why}")
        m = block_re.fullmatch(key)
        if m:
            depth = max(depth, int(m.group(1)) + 1)
            rest = m.group(2)
            if rest in _BLOCK_KEYS or re.fullmatch(r"mlp\.gate\.(\d+\.)?w_gate", rest):
                continue
            if rest.startswith("mlp.gate.") and "w_gate_aux" in rest:
                raise ConfigError(f"{file}: key {key!r}: decoupled gate activations (w_gate_aux) are not "
                                  "supported; pass --ignore with this key's prefix if they are unused")
        elif key in _TOP_KEYS:
            continue
        raise ConfigError(f"{file}: key {key!r} is not part of the {layout} ViT layout accel supports; "
                          "remove it or pass --ignore PREFIX to skip it explicitly")

    pw = _need(sd, "patch_embed.proj.weight", file, "[D, C, P, P]")
    if pw.ndim != 4 or pw.shape[2] != pw.shape[3]:
        raise ConfigError(f"{file}: key 'patch_embed.proj.weight' has shape {list(pw.shape)}; a square "
                          "Conv2d patch embedding [D, C, P, P] is required")
    dim, in_chans, patch = int(pw.shape[0]), int(pw.shape[1]), int(pw.shape[2])
    pos = _need(sd, "pos_embed", file, "[1, N+1, D]")
    _need(sd, "cls_token", file, "[1, 1, D]")
    _shape(sd, "cls_token", (1, 1, dim), file)
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != dim:
        raise ConfigError(f"{file}: key 'pos_embed' has shape {list(pos.shape)}, expected [1, N+1, {dim}]")
    patches = int(pos.shape[1]) - 1
    if image_size is None:
        g = math.isqrt(patches)
        if g * g != patches:
            raise ConfigError(f"{file}: key 'pos_embed' gives {patches} patches, not a square grid; pass "
                              "--image-size HxW")
        image_size = (g * patch, g * patch)
    if (image_size[0] // patch) * (image_size[1] // patch) != patches or image_size[0] % patch or image_size[1] % patch:
        raise ConfigError(f"{file}: key 'pos_embed' holds {patches} patches + class token, but image "
                          f"{image_size[0]}x{image_size[1]} with patch {patch} has "
                          f"{(image_size[0] // patch) * (image_size[1] // patch)}; check --image-size")
    if depth == 0:
        raise ConfigError(f"{file}: no 'blocks.{{i}}.*' keys: not a ViT checkpoint")
    if heads is None:
        raise ConfigError(f"{file}: the checkpoint cannot tell the number of attention heads; pass --heads "
                          f"(a divisor of dim {dim})")
    if heads < 1 or dim % heads:
        raise ConfigError(f"--heads {heads} does not divide dim {dim}; choose a divisor of {dim}")

    moe_layers, dense_hidden, experts, expert_hidden, gates_per_layer = [], None, None, None, None
    for i in range(depth):
        p = f"blocks.{i}."
        for k, shp in (("norm1.weight", (dim,)), ("norm1.bias", (dim,)), ("norm2.weight", (dim,)),
                       ("norm2.bias", (dim,)), ("attn.qkv.weight", (3 * dim, dim)), ("attn.proj.weight", (dim, dim)),
                       ("attn.proj.bias", (dim,))):
            _need(sd, p + k, file, str(list(shp)))
            _shape(sd, p + k, shp, file)
        if p + "attn.qkv.bias" in sd:
            _shape(sd, p + "attn.qkv.bias", (3 * dim,), file)
        else:
            notes.append(f"{p}attn.qkv.bias absent (qkv_bias=False): zeros")
        if p + "mlp.experts.htoh4.weight" in sd:
            if layout != "m3vit":
                raise ConfigError(f"{file}: key {p + 'mlp.experts.htoh4.weight'!r} is an M3ViT MoE block; "
                                  "import with --layout m3vit")
            w1 = sd[p + "mlp.experts.htoh4.weight"]
            e, h = int(w1.shape[0]), int(w1.shape[1])
            if experts is not None and (e, h) != (experts, expert_hidden):
                raise ConfigError(f"{file}: key {p + 'mlp.experts.htoh4.weight'!r} has {e} experts of {h}, "
                                  f"earlier MoE blocks {experts} of {expert_hidden}; accel needs one shape")
            experts, expert_hidden = e, h
            for k, shp in (("mlp.experts.htoh4.weight", (e, h, dim)), ("mlp.experts.htoh4.bias", (e, h)),
                           ("mlp.experts.h4toh.weight", (e, dim, h)), ("mlp.experts.h4toh.bias", (e, dim))):
                _need(sd, p + k, file, str(list(shp)))
                _shape(sd, p + k, shp, file)
            multi = sorted(int(m.group(1)) for k in sd for m in [re.fullmatch(re.escape(p) + r"mlp\.gate\.(\d+)\.w_gate", k)] if m)
            gate_keys = [f"{p}mlp.gate.{t}.w_gate" for t in multi] if multi else [f"{p}mlp.gate.w_gate"]
            _need(sd, gate_keys[0], file, f"[{dim}, {e}]")
            for gk in gate_keys:
                _shape(sd, gk, (dim, e), file)
            if gates_per_layer is not None and len(gate_keys) != gates_per_layer:
                raise ConfigError(f"{file}: block {i} has {len(gate_keys)} gate(s), earlier blocks {gates_per_layer}")
            gates_per_layer = len(gate_keys)
            moe_layers.append(i)
        else:
            w1 = _need(sd, p + "mlp.fc1.weight", file, "[H, D]")
            h = int(w1.shape[0])
            if dense_hidden is not None and h != dense_hidden:
                raise ConfigError(f"{file}: key {p + 'mlp.fc1.weight'!r} has hidden size {h}, earlier blocks "
                                  f"{dense_hidden}; accel needs one dense MLP size")
            dense_hidden = h
            for k, shp in (("mlp.fc1.weight", (h, dim)), ("mlp.fc1.bias", (h,)), ("mlp.fc2.weight", (dim, h)),
                           ("mlp.fc2.bias", (dim,))):
                _need(sd, p + k, file, str(list(shp)))
                _shape(sd, p + k, shp, file)

    final_norm = "norm.weight" in sd
    if final_norm:
        _need(sd, "norm.bias", file, f"[{dim}]")
    num_classes = int(sd["head.weight"].shape[0]) if "head.weight" in sd else 0
    if num_classes:
        _shape(sd, "head.weight", (num_classes, dim), file)
        _need(sd, "head.bias", file, f"[{num_classes}]")
        if not final_norm:
            raise ConfigError(f"{file}: key 'head.weight' without 'norm.weight': a head needs the final norm")

    tasks = gates_per_layer or 1
    moe = None
    if moe_layers:
        if top_k is None:
            raise ConfigError(f"{file}: MoE blocks {moe_layers} found; the checkpoint cannot tell top-k: pass "
                              f"--top-k (1..{experts})")
        if not 1 <= top_k <= experts:
            raise ConfigError(f"--top-k {top_k} must be between 1 and the number of experts ({experts})")
        if task is not None and not 0 <= task < tasks:
            raise ConfigError(f"--task {task} is out of range: the checkpoint has {tasks} gate(s) per MoE block")
        moe = {"layers": moe_layers, "experts": experts, "top_k": top_k, "expert_hidden": expert_hidden,
               "tasks": 1 if task is not None else tasks, "renormalize": gate == "noisy"}
    elif task is not None and task != 0:
        raise ConfigError(f"--task {task}: the checkpoint has no MoE gates (one task)")

    out = Path(out_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    raw = {"name": name, "description": f"imported from {file} ({layout} layout)",
           "image_size": list(image_size), "in_chans": in_chans, "patch_size": patch, "dim": dim,
           "depth": depth, "heads": heads, "mlp_hidden": dense_hidden or 4 * dim,
           "num_classes": num_classes, "final_norm": final_norm, "weights": f"{name}.npz", "seed": 0,
           "data": {"dataset": "random", "calibration_images": 32, "eval_images": 32}}
    if moe:
        raw["moe"] = moe
    yaml_path = out / f"{name}.yaml"
    yaml_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(yaml_path)

    model = MoEViT(cfg)
    own = model.state_dict()
    new = {}
    for key in own:
        if ".mlp.gate." in key:  # before the plain copy: --task maps checkpoint gate t onto gate 0
            layer_prefix, t = key.split(".mlp.gate.")
            t = int(t.split(".")[0])
            src_t = task if task is not None else t
            multi_key = f"{layer_prefix}.mlp.gate.{src_t}.w_gate"
            new[key] = sd[multi_key if multi_key in sd else f"{layer_prefix}.mlp.gate.w_gate"].detach().float()
        elif key in sd:
            new[key] = sd[key].detach().float()
        elif key.endswith("attn.qkv.bias"):
            new[key] = torch.zeros_like(own[key])
        else:
            raise ConfigError(f"{file}: key {key!r} is missing")
    model.load_state_dict(new)
    weights_path = out / f"{name}.npz"
    save_weights(model, weights_path, dtype=np.float32)
    notes.append("calibration and evaluation use seeded random images (dataset: random); edit the YAML's "
                 "data section for real data")
    return ImportResult(cfg, yaml_path, weights_path, skipped, tuple(notes))
