"""`accel import`: checkpoints in timm's and M3ViT's layouts become accel models whose float forward
matches a direct (functional) torch implementation of the layout to 1e-5."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from accel.cli import main
from accel.evaluate import evaluate
from accel.models.config import load_config
from accel.models.errors import ConfigError
from accel.models.float_model import build_float_model
from accel.models.importer import import_checkpoint

D, HEADS, P, IMG, E, HID, MLP = 32, 2, 8, 32, 4, 48, 64


def make_checkpoint(depth=2, moe_blocks=(1,), tasks=2, final_norm=False, classes=0, qkv_bias=True, seed=0):
    """A random state_dict in the M3ViT/timm naming, built directly (not through accel's modules)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, fan_in=None, std=None):
        s = std if std is not None else 1 / math.sqrt(fan_in)
        return torch.randn(*shape, generator=g) * s

    n = (IMG // P) ** 2
    sd = {"patch_embed.proj.weight": rnd(D, 3, P, P, fan_in=3 * P * P), "patch_embed.proj.bias": rnd(D, std=0.02),
          "cls_token": rnd(1, 1, D, std=0.02), "pos_embed": rnd(1, n + 1, D, std=0.02)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + rnd(D, std=0.1), b + "norm1.bias": rnd(D, std=0.05),
                   b + "norm2.weight": 1 + rnd(D, std=0.1), b + "norm2.bias": rnd(D, std=0.05),
                   b + "attn.qkv.weight": rnd(3 * D, D, fan_in=D), b + "attn.proj.weight": rnd(D, D, fan_in=D),
                   b + "attn.proj.bias": rnd(D, std=0.02)})
        if qkv_bias:
            sd[b + "attn.qkv.bias"] = rnd(3 * D, std=0.02)
        if i in moe_blocks:
            sd.update({b + "mlp.experts.htoh4.weight": rnd(E, HID, D, fan_in=D), b + "mlp.experts.htoh4.bias": rnd(E, HID, std=0.02),
                       b + "mlp.experts.h4toh.weight": rnd(E, D, HID, fan_in=HID), b + "mlp.experts.h4toh.bias": rnd(E, D, std=0.02)})
            if tasks == 1:
                sd[b + "mlp.gate.w_gate"] = rnd(D, E, fan_in=D)
            for t in range(tasks if tasks > 1 else 0):
                sd[b + f"mlp.gate.{t}.w_gate"] = rnd(D, E, fan_in=D)
        else:
            sd.update({b + "mlp.fc1.weight": rnd(MLP, D, fan_in=D), b + "mlp.fc1.bias": rnd(MLP, std=0.02),
                       b + "mlp.fc2.weight": rnd(D, MLP, fan_in=MLP), b + "mlp.fc2.bias": rnd(D, std=0.02)})
    if final_norm:
        sd.update({"norm.weight": 1 + rnd(D, std=0.1), "norm.bias": rnd(D, std=0.05)})
    if classes:
        sd.update({"head.weight": rnd(classes, D, fan_in=D), "head.bias": rnd(classes, std=0.02)})
    return sd


def layout_forward(sd, x, heads, top_k=2, task=0, gate="vmoe"):
    """The layout's forward written out functionally, as M3ViT's and timm's modules compute it."""
    b = x.shape[0]
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=P).flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], dim=1) + sd["pos_embed"]
    n, d = x.shape[1], x.shape[2]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd.get(p + "attn.qkv.bias"))
        q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (d // heads) ** -0.5).softmax(-1)
        x = x + F.linear((a @ v).transpose(1, 2).reshape(b, n, d), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        if p + "mlp.fc1.weight" in sd:
            y = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                         sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        else:
            t = h.reshape(-1, d)
            wg = sd.get(p + f"mlp.gate.{task}.w_gate", sd.get(p + "mlp.gate.w_gate"))
            logits = t @ wg
            if gate == "vmoe":   # NoisyGate_VMoE (eval): softmax over all, top-k, no renormalization
                score, idx = logits.softmax(-1).topk(top_k, dim=1)
            else:                # NoisyGate (eval): top-k logits, softmax over them
                top, idx = logits.topk(top_k, dim=1)
                score = top.softmax(-1)
            w1, b1 = sd[p + "mlp.experts.htoh4.weight"][idx], sd[p + "mlp.experts.htoh4.bias"][idx]
            w2, b2 = sd[p + "mlp.experts.h4toh.weight"][idx], sd[p + "mlp.experts.h4toh.bias"][idx]
            hid = F.gelu(torch.einsum("tkhd,td->tkh", w1, t) + b1)
            out = torch.einsum("tkdh,tkh->tkd", w2, hid) + b2
            y = (score[..., None] * out).sum(1).reshape(b, n, d)
        x = x + y
    feats = x[:, 0]
    if "norm.weight" in sd:
        feats = F.layer_norm(feats, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)
    logits = F.linear(feats, sd["head.weight"], sd["head.bias"]) if "head.weight" in sd else None
    return x, feats, logits


def _save(tmp_path, obj, name="ckpt.pth"):
    p = tmp_path / name
    torch.save(obj, p)
    return p


@pytest.mark.parametrize("gate", ["vmoe", "noisy"])
def test_m3vit_layout_matches_direct_implementation_for_each_task(tmp_path, gate):
    sd = make_checkpoint(tasks=2)
    ck = _save(tmp_path, {"model": {"module." + k: v for k, v in sd.items()}})
    res = import_checkpoint(ck, "m3vit", "m3", heads=HEADS, top_k=2, gate=gate, out_dir=tmp_path / "out")
    cfg = res.config
    assert (cfg.depth, cfg.moe.layers, cfg.moe.experts, cfg.moe.expert_hidden, cfg.tasks) == (2, (1,), 4, 48, 2)
    assert not cfg.final_norm and cfg.num_classes == 0 and cfg.moe.renormalize == (gate == "noisy")
    model = build_float_model(load_config(res.yaml_path))
    x = torch.randn(3, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))
    for task in (0, 1):
        want, _, _ = layout_forward(sd, x, HEADS, 2, task, gate)
        with torch.no_grad():
            got = model.tokens(x, task)
        assert (got - want).abs().max().item() <= 1e-5


def test_single_task_import_keeps_that_gate(tmp_path):
    sd = make_checkpoint(tasks=2)
    res = import_checkpoint(_save(tmp_path, sd), "m3vit", "m3t1", heads=HEADS, top_k=2, task=1, out_dir=tmp_path)
    assert res.config.tasks == 1
    model = build_float_model(res.config)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert (model.tokens(x, 0) - layout_forward(sd, x, HEADS, 2, task=1)[0]).abs().max() <= 1e-5


def test_timm_layout_with_norm_and_head(tmp_path):
    sd = make_checkpoint(moe_blocks=(), final_norm=True, classes=10, qkv_bias=False)
    res = import_checkpoint(_save(tmp_path, {"state_dict": sd}), "timm", "vit", heads=HEADS, out_dir=tmp_path)
    assert res.config.moe is None and res.config.num_classes == 10
    assert any("qkv.bias absent" in n for n in res.notes)
    model = build_float_model(res.config)
    x = torch.randn(4, 3, IMG, IMG)
    with torch.no_grad():
        assert (model(x) - layout_forward(sd, x, HEADS)[2]).abs().max() <= 1e-5


def test_real_timm_vision_transformer(tmp_path):
    """Against timm's own forward, where timm can be imported (it needs torchvision, whose PyPI
    wheels do not load beside this machine's CPU torch 2.13.0)."""
    try:
        import timm  # noqa: F401
        from timm.models.vision_transformer import VisionTransformer
    except Exception as exc:  # ImportError, or torchvision's RuntimeError on a mismatched torch
        pytest.skip(f"timm not importable here: {type(exc).__name__}: {exc}")
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, num_classes=10).eval()
    ck = _save(tmp_path, vit.state_dict())
    res = import_checkpoint(ck, "timm", "tiny", heads=2, out_dir=tmp_path)
    model = build_float_model(res.config)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - vit(x)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("edit, flags, message", [
    (lambda sd: sd.update(dist_token=torch.zeros(1, 1, D)), {}, "key 'dist_token': a distillation token"),
    (lambda sd: sd.update({"patch_embed.backbone.stem.conv.weight": torch.zeros(8, 3, 3, 3)}), {},
     "key 'patch_embed.backbone.stem.conv.weight': a convolutional stem"),
    (lambda sd: sd.pop("blocks.0.attn.proj.weight"), {}, "key 'blocks.0.attn.proj.weight' is missing"),
    (lambda sd: sd.update({"decoder.conv.weight": torch.zeros(1)}), {},
     "key 'decoder.conv.weight' is not part of the m3vit ViT layout accel supports; remove it or pass --ignore"),
    (lambda sd: None, {"heads": None}, "cannot tell the number of attention heads; pass --heads"),
    (lambda sd: None, {"top_k": None}, "cannot tell top-k: pass --top-k"),
    (lambda sd: None, {"top_k": 5}, "--top-k 5 must be between 1 and the number of experts (4)"),
    (lambda sd: None, {"heads": 3}, "--heads 3 does not divide dim 32"),
    (lambda sd: None, {"task": 2}, "--task 2 is out of range: the checkpoint has 2 gate(s)"),
    (lambda sd: sd.update({"blocks.1.mlp.experts.h4toh.bias": torch.zeros(4, 31)}), {},
     "key 'blocks.1.mlp.experts.h4toh.bias' has shape [4, 31], expected [4, 32]"),
])
def test_unsupported_checkpoints_are_refused_naming_the_key(tmp_path, edit, flags, message):
    sd = make_checkpoint()
    edit(sd)
    kw = {"heads": HEADS, "top_k": 2, **flags}
    with pytest.raises(ConfigError) as exc:
        import_checkpoint(_save(tmp_path, sd), "m3vit", "bad", out_dir=tmp_path, **kw)
    assert message in str(exc.value)


def test_ignore_skips_and_reports(tmp_path):
    sd = make_checkpoint()
    sd["decoder.conv.weight"] = torch.zeros(3)
    res = import_checkpoint(_save(tmp_path, sd), "m3vit", "ok", heads=HEADS, top_k=2, out_dir=tmp_path,
                            ignore=("decoder.",))
    assert res.skipped == ("decoder.conv.weight",)


def test_cli_import_then_eval_an_imported_backbone(tmp_path, capsys):
    """The imported model (no final norm, no head) runs through the integer reference."""
    ck = _save(tmp_path, make_checkpoint())
    out = tmp_path / "models"
    assert main(["import", str(ck), "--layout", "m3vit", "--name", "m3mini", "--heads", "2", "--top-k", "2",
                 "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tasks"] == 2 and res["moe_layers"] == [1]
    for task in (0, 1):
        ev = evaluate(res["yaml"], task=task)
        assert ev.top1_agreement is None and ev.cosine > 0.99
    assert main(["import", str(ck), "--layout", "timm", "--name", "x", "--heads", "2", "--out", str(out)]) == 2
    assert "is an M3ViT MoE block; import with --layout m3vit" in capsys.readouterr().err
