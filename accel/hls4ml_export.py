"""An hls4ml export of a model's dense and expert MLP layers, for users who prefer Vitis HLS.

Each linear layer of the MLPs (``<block>/fc1``, ``<block>/fc2``) and of the experts
(``<block>/expert<e>.fc1``, ``.fc2``) becomes one hls4ml project (PyTorch frontend, Vitis
backend, ``io_parallel``) computing the layer's integer accumulators::

    acc[int32] = x[int8] @ W[int8]^T + bias[int32]      (ap_int<8> in, ap_int<8> weights,
                                                          ap_int<32> bias, accumulator and result)

The requantization (per-channel multiplier and shift) and the GELU table of our numerics
(docs/numerics.md) have no hls4ml layer, so they stay outside the export: :func:`export_layers`
applies them from the integer reference to the hls4ml outputs. The check: hls4ml's C simulation
(``compile()`` + ``predict()``, g++ with hls4ml's bundled ap_types) on the activations traced from
the integer reference for real evaluation images must give the reference's accumulators integer
for integer, and with our requantization its int8 outputs. Only 2-D inputs are used (TOOLCHAIN.md:
hls4ml 1.3.0 misreads nn.Linear on 3-D input).

Each project folder holds hls4ml's Vitis HLS project (``build_prj.tcl``, ``firmware/``); with
Vitis HLS installed, ``vitis_hls -f build_prj.tcl`` runs C simulation and synthesis there.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from accel.models.errors import AccelError

__all__ = ["HlsExportError", "LayerCheck", "mlp_layers", "export_layers"]


class HlsExportError(AccelError):
    """The export cannot run as asked (unknown layer, no MLP layers); the message says what to pass."""


@dataclass(frozen=True)
class LayerCheck:
    layer: str
    d_in: int
    d_out: int
    rows: int                    # activation rows checked (tokens x images)
    acc_mismatches: int          # hls4ml accumulators vs the integer reference's
    out_mismatches: int          # after our requantization (and GELU) vs the traced int8 outputs
    project: str
    seconds: float

    @property
    def bit_exact(self) -> bool:
        return self.acc_mismatches == 0 and self.out_mismatches == 0

    def to_json(self) -> dict:
        return {"layer": self.layer, "d_in": self.d_in, "d_out": self.d_out, "rows": self.rows,
                "acc_mismatches": self.acc_mismatches, "out_mismatches": self.out_mismatches,
                "bit_exact": self.bit_exact, "project": self.project, "seconds": self.seconds}


def mlp_layers(trace) -> list[str]:
    """Names ``<layer>/<op>`` of the MLP and expert linear layers in a reference trace, in order."""
    from accel.models.intops import IntLinear
    out = []
    for r in trace:
        if isinstance(r.op, IntLinear) and r.name.split(".")[-1] in ("fc1", "fc2") and f"{r.layer}/{r.name}" not in out:
            out.append(f"{r.layer}/{r.name}")
    return out


def _records(traces, key: str):
    layer, _, name = key.partition("/")
    layer = int(layer) if layer.isdigit() else layer
    recs = []
    for tr in traces:
        try:
            recs.append(tr.get(layer, name))
        except KeyError:
            continue          # an expert with no token on this image has no record
    return recs


def _torch_linear(op):
    import torch
    lin = torch.nn.Linear(op.d_in, op.d_out)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(op.weight, dtype=torch.float64))
        lin.bias.copy_(torch.tensor(op.bias, dtype=torch.float64))
    return torch.nn.Sequential(lin)


def _hls_model(op, out_dir: Path, part: str):
    import hls4ml
    from hls4ml.utils.config import config_from_pytorch_model
    model = _torch_linear(op)
    cfg = config_from_pytorch_model(model, (op.d_in,), granularity="name", default_precision="ap_int<32>")
    names = list(cfg["LayerName"])
    for name in names:
        if name == names[0]:                   # the input
            cfg["LayerName"][name]["Precision"] = {"result": f"ap_int<{op.in_bits}>"}
        else:
            cfg["LayerName"][name]["Precision"] = {"weight": "ap_int<8>", "bias": "ap_int<32>",
                                                   "accum": "ap_int<32>", "result": "ap_int<32>"}
    return hls4ml.converters.convert_from_pytorch_model(model, output_dir=str(out_dir), project_name="layer",
                                                        backend="Vitis", hls_config=cfg, io_type="io_parallel",
                                                        part=part)


def export_layers(model: str, out: str | Path, *, layers: list[str] | None = None, images: int = 2,
                  part: str = "xczu9eg-ffvb1156-2-e",
                  progress: Callable[[str], None] | None = None) -> dict:
    """Write one hls4ml project per layer under ``out`` and check each one's C simulation against
    the integer reference on ``images`` evaluation images. ``layers``: names from
    :func:`mlp_layers` (default: all). Returns the summary also written to ``out/hls4ml.json``."""
    from accel.models.data import eval_set
    from accel.models.quantize import load_reference
    say = progress or (lambda s: None)
    if not isinstance(images, int) or images < 1:
        raise HlsExportError(f"images={images!r}: check the export on at least 1 image")
    ref = load_reference(model)
    q = ref.quantize_images(eval_set(ref.cfg, images).images[:images])
    traces = [ref.trace(im) for im in q]
    have = []
    for tr in traces:
        have += [n for n in mlp_layers(tr) if n not in have]
    if not have:
        raise HlsExportError(f"model {model!r} has no MLP or expert linear layers to export")
    if layers is None:
        layers = have
    bad = [n for n in layers if n not in have]
    if bad:
        raise HlsExportError(f"layers {bad!r} are not MLP/expert linear layers of {model!r} (with tokens on the "
                             f"{images} image(s) checked); choose from: {', '.join(have)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checks = []
    for i, key in enumerate(layers):
        t0 = time.perf_counter()
        recs = _records(traces, key)
        op = recs[0].op
        x = np.concatenate([np.atleast_2d(r.inputs[0]) for r in recs]).astype(np.int64)
        want = np.concatenate([np.atleast_2d(r.output) for r in recs]).astype(np.int64)
        pdir = out / key.replace("/", "_").replace(".", "_")
        say(f"hls4ml {i + 1}/{len(layers)}: {key} ({op.d_in} -> {op.d_out}), C simulation on {x.shape[0]} rows")
        hm = _hls_model(op, pdir, part)
        hm.compile()
        acc = np.asarray(hm.predict(np.ascontiguousarray(x.astype(np.float64)))).reshape(x.shape[0], op.d_out)
        acc_i = np.rint(acc).astype(np.int64)
        y = op.requant(acc_i)
        if op.gelu_table is not None:
            y = op.gelu_table[y + 128]
        checks.append(LayerCheck(key, op.d_in, op.d_out, int(x.shape[0]),
                                 int((acc_i != op.accumulate(x)).sum() + (acc != acc_i).sum()),
                                 int((y != want).sum()), str(pdir), round(time.perf_counter() - t0, 2)))
    doc = {"model": model, "images": images, "part": part, "backend": "hls4ml Vitis, io_parallel",
           "layers": [c.to_json() for c in checks], "bit_exact": all(c.bit_exact for c in checks),
           "note": ("hls4ml computes each layer's int32 accumulators; the requantization and GELU table are "
                    "applied from the integer reference (no hls4ml layer has them)")}
    (out / "hls4ml.json").write_text(json.dumps(doc, indent=2))
    return doc
