"""Model YAML loading: the zoo loads, and every bad field is named with its file."""
from pathlib import Path

import pytest
import yaml

from accel.models.config import ZOO_DIR, load_config, zoo_names
from accel.models.errors import ConfigError


def test_zoo_loads_with_the_design_shapes():
    assert zoo_names() == ["digits-moe", "m3vit-tiny", "m3vit-tiny-224", "micro-moe"]
    t = load_config("m3vit-tiny")
    assert (t.tokens, t.dim, t.depth, t.heads, t.head_dim, t.mlp_hidden) == (129, 192, 12, 3, 64, 768)
    assert t.moe.layers == (1, 3, 5, 7, 9, 11) and (t.moe.experts, t.moe.top_k, t.moe.expert_hidden, t.moe.tasks) == (16, 2, 384, 2)
    t224 = load_config("m3vit-tiny-224")
    assert t224.tokens == 197
    # the papers' basis: about 1.25 GMAC (2.5 GOP) per image at 224x224
    assert 1.2e9 < t224.macs_per_image()["total"] < 1.3e9
    d = load_config("digits-moe")
    assert (d.tokens, d.moe.experts, d.moe.top_k) == (17, 4, 2) and d.weights_path().exists()


def _write(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load((ZOO_DIR / "digits-moe.yaml").read_text())
    raw["weights"] = "random"
    edit(raw)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.pop("dim"), "bad.yaml: field 'dim': missing; add it (int)"),
    (lambda r: r.update(dim="48"), "bad.yaml: field 'dim': '48' is not an integer"),
    (lambda r: r.update(dimm=48), "bad.yaml: field 'dimm': unknown field (a typo?)"),
    (lambda r: r.update(heads=5), "bad.yaml: field 'heads': dim 48 is not divisible by heads=5"),
    (lambda r: r["moe"].update(top_k=5), "bad.yaml: field 'moe.top_k': 5 > moe.experts (4)"),
    (lambda r: r["moe"].update(layers=[1, 7]), "bad.yaml: field 'moe.layers': entry 7 is not a block index in [0, 3]"),
    (lambda r: r["moe"].update(experts=0), "bad.yaml: field 'moe.experts': 0 must be >= 1"),
    (lambda r: r["moe"].update(renormalise=True), "bad.yaml: field 'moe.renormalise': unknown field"),
    (lambda r: r.update(patch_size=3), "bad.yaml: field 'patch_size': 3 does not divide the image height 8"),
    (lambda r: r.update(image_size=[8]), "bad.yaml: field 'image_size': [8] must be [height, width]"),
    (lambda r: r["data"].update(dataset="imagenet"), "bad.yaml: field 'data.dataset': 'imagenet' is not one of"),
    (lambda r: r.pop("data"), "bad.yaml: field 'data': missing; add the section"),
])
def test_bad_fields_name_file_and_field(tmp_path, edit, message):
    with pytest.raises(ConfigError) as exc:
        load_config(_write(tmp_path, edit))
    assert message in str(exc.value)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ConfigError, match="unknown model 'm3vit-small'; the zoo has: digits-moe, m3vit-tiny"):
        load_config("m3vit-small")


def test_missing_weights_file_is_named(tmp_path):
    p = _write(tmp_path, lambda r: r.update(weights="nope.npz"))
    cfg = load_config(p)
    with pytest.raises(ConfigError, match="bad.yaml: field 'weights': file 'nope.npz' not found"):
        cfg.weights_path()


def test_invalid_yaml(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(p)
