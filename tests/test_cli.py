"""The accel command line: --json everywhere, actionable errors with exit status 2."""
import json
import subprocess
import sys

from accel.cli import main


def test_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    by = {r["name"]: r for r in rows}
    assert by["m3vit-tiny"]["tokens"] == 129 and by["m3vit-tiny-224"]["tokens"] == 197
    assert by["digits-moe"]["experts"] == 4


def test_eval_json_fields(capsys):
    assert main(["eval", "--model", "digits-moe", "--images", "40", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("fp_accuracy", "int_accuracy", "samples", "cosine", "top1_agreement", "routing_agreement"):
        assert key in res
    assert res["samples"] == 40


def test_trace_json(capsys):
    assert main(["trace", "--model", "digits-moe", "--json"]) == 0
    ops = json.loads(capsys.readouterr().out)["ops"]
    kinds = {o["kind"] for o in ops}
    assert {"IntLinear", "IntLayerNorm", "IntAttention", "IntResidualAdd", "IntGate", "IntMoE"} <= kinds


def test_unknown_model_is_an_error_with_status_2(capsys):
    assert main(["eval", "--model", "nope", "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"].startswith("unknown model 'nope'")
    assert "accel eval: error: unknown model 'nope'" in captured.err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "accel.cli", "models"], capture_output=True, text=True, check=True)
    assert "m3vit-tiny-224" in out.stdout


def test_run_writes_the_report_folder(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path), "--json"]) == 0
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["eval"]["int_accuracy"] > 0.95 and rep["dse"]["fps"] > 0
    assert (tmp_path / "report.md").exists() and (tmp_path / "pareto.png").stat().st_size > 10_000


def test_sim_linear_cli_one_layer(capsys):
    """`accel sim linear` on one MoE block of digits-moe (same kernel build as test_linear_digits)."""
    assert main(["sim", "linear", "--model", "digits-moe", "--layer", "3", "--no-stalls", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mismatches"] == 0 and out["checked"] > 5000 and not out["failed_ops"]
    assert {"3/qkv", "3/proj", "3/gate", "3/moe"} <= {d["op"] for d in out["details"]}
    assert out["cycles"] == out["predicted_cycles"]   # no stalls: the cycle model is exact


def test_sim_attention_cli(capsys):
    assert main(["sim", "attention", "--model", "digits-moe", "--layer", "2", "--no-stalls", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ops"] == 1 and out["mismatches"] == 0 and out["checked"] == 17 * 48
    assert out["cycles"] == out["predicted_cycles"]
