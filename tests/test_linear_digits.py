"""Every linear op of the digits-moe integer reference, traced on a real digit, through the RTL.

Dense ops (patch embedding, qkv, proj, MLP fc1/fc2, each expert's fc1/fc2 on its gathered rows,
head) run in dense mode; each MoE layer also runs in expert mode (the experts' fc2 outputs
scattered with the gate weights into the wide accumulator, then the single combine
requantization) and is compared with the traced `moe` output. One Verilator build, one simulator
run for all of it.
"""
import numpy as np
import pytest

from accel.hdl.linear import LinearParams
from accel.sim.linear_runner import run_jobs, simulator_available, trace_jobs

reference = pytest.importorskip("accel.models.reference",
                                reason="the traced reference (models/reference.py) is not there")

if not simulator_available("verilator")[0]:
    pytest.skip(simulator_available("verilator")[1], allow_module_level=True)

PARAMS = LinearParams(t_in=8, t_out=8, n_lanes=2, max_d_in=96, max_d_out=144, max_tokens=17,
                      expert=True)


@pytest.fixture(scope="module")
def traced():
    from accel.models.data import eval_set
    ref = reference.load_reference("digits-moe")
    images = eval_set(ref.cfg, limit=1).images
    return ref.trace(ref.quantize_images(images))


def test_trace_jobs_cover_every_linear_op(traced):
    jobs = trace_jobs(traced, PARAMS)
    names = [j["name"] for j in jobs]
    assert "embed/patch" in names and "head/head" in names
    assert {"1/moe", "3/moe"} <= set(names)                 # MoE on blocks 1 and 3
    assert sum(n.endswith(".fc1") for n in names) == 8      # 2 layers x 4 experts
    assert sum(n.endswith("/qkv") for n in names) == 4


def test_digits_moe_linear_ops_bit_exact(traced):
    jobs = trace_jobs(traced, PARAMS)
    results = run_jobs(jobs, PARAMS)
    bad = [r.describe() for r in results if not r.ok]
    assert not bad, "\n".join(bad)
    for r in results:
        assert r.checked and np.array_equal(r.got, r.expected)
    moe = [r for r in results if r.name.endswith("/moe")]
    assert len(moe) == 2 and all(r.expected.shape == (17, 48) for r in moe)
