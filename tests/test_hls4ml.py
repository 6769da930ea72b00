"""The optional hls4ml export (accel/hls4ml_export.py): hls4ml's C simulation of a dense and an
expert MLP layer against the integer reference's accumulators and outputs, integer for integer,
and a perturbed export that the check catches."""
import json

import pytest

import accel.hls4ml_export as hx
from accel.cli import main


def test_dense_and_expert_layers_bit_exact(tmp_path, capsys):
    assert main(["hls4ml", "--model", "digits-moe", "--layers", "0/fc1,3/expert1.fc2", "--out", str(tmp_path),
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["bit_exact"] and doc["part"] == "xczu9eg-ffvb1156-2-e"
    assert [c["layer"] for c in doc["layers"]] == ["0/fc1", "3/expert1.fc2"]
    for c in doc["layers"]:
        assert c["rows"] > 0 and c["acc_mismatches"] == 0 and c["out_mismatches"] == 0
        assert (tmp_path / c["project"].split("/")[-1] / "build_prj.tcl").exists()
    assert json.loads((tmp_path / "hls4ml.json").read_text()) == doc


def test_a_wrong_weight_is_caught(tmp_path, monkeypatch):
    real = hx._torch_linear

    def perturbed(op):
        model = real(op)
        with __import__("torch").no_grad():
            model[0].weight[3, 5] += 1
        return model
    monkeypatch.setattr(hx, "_torch_linear", perturbed)
    doc = hx.export_layers("digits-moe", tmp_path, layers=["2/fc2"], images=1)
    c = doc["layers"][0]
    assert not doc["bit_exact"] and c["acc_mismatches"] > 0


def test_export_errors(tmp_path):
    with pytest.raises(hx.HlsExportError, match=r"layers \['0/qkv'\] are not MLP/expert linear layers of "
                                                r"'digits-moe'.*choose from: 0/fc1, 0/fc2"):
        hx.export_layers("digits-moe", tmp_path, layers=["0/qkv"])
    with pytest.raises(hx.HlsExportError, match=r"images=0: check the export on at least 1 image"):
        hx.export_layers("digits-moe", tmp_path, images=0)
