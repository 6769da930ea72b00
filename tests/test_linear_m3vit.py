"""The linear kernel on every m3vit-tiny linear shape, with 32+ tokens traced from the m3vit-tiny
integer reference (slow: one larger kernel build; run with -m slow)."""
import numpy as np
import pytest

from accel.hdl.linear import LinearParams
from accel.models.data import eval_set
from accel.models.quantize import load_reference
from accel.sim.linear_runner import dense_job, run_jobs

PARAMS = LinearParams(t_in=16, t_out=16, n_lanes=4, max_d_in=768, max_d_out=768, max_tokens=256, expert=False)
TOKENS = 40


@pytest.mark.slow
def test_every_m3vit_tiny_linear_shape_bit_exact():
    ref = load_reference("m3vit-tiny")
    tr = ref.trace(ref.quantize_images(eval_set(ref.cfg, 1).images)[0])
    x_ln2_dense = tr.get(0, "ln2").output[:TOKENS]      # input of a dense MLP block
    x_ln2_moe = tr.get(1, "ln2").output[:TOKENS]        # input of an MoE block
    moe = tr.get(1, "moe").op
    ex = moe.experts[3]
    cases = [
        ("0/qkv 192->576", tr.get(0, "qkv").op, tr.get(0, "qkv").inputs[0][:TOKENS]),
        ("0/proj 192->192", tr.get(0, "proj").op, tr.get(0, "proj").inputs[0][:TOKENS]),
        ("0/fc1 192->768", tr.get(0, "fc1").op, x_ln2_dense),
        ("0/fc2 768->192", tr.get(0, "fc2").op, tr.get(0, "fc2").inputs[0][:TOKENS]),
        ("1/expert3.fc1 192->384", ex.fc1, x_ln2_moe),
        ("1/expert3.fc2 384->192", ex.fc2, ex.fc1(x_ln2_moe)),
        ("1/gate 192->16", tr.get(1, "gate").op.linear, x_ln2_moe),
    ]
    jobs = [dense_job(op, np.asarray(x), PARAMS, name=name, stalls=True, seed=i)
            for i, (name, op, x) in enumerate(cases)]
    assert all(j["expected"].shape[0] >= 32 for j in jobs)
    results = run_jobs(jobs, PARAMS)
    for r in results:
        assert r.ok, r.describe()
