"""Linear kernel: parameter validation, stream layouts, packing and the cost model (no simulator)."""
import numpy as np
import pytest

from accel.hdl.linear import (LinearKernel, LinearParamError, LinearParams, generate_verilog,
                              stream_layouts)
from accel.hdl.linear_cost import (CostModelError, expert_cycles, linear_cycles,
                                   linear_resources)
from accel.models.errors import NumericsError, ShapeError
from accel.models.intops import IntLinear, Requant
from accel.sim import linear_runner
from accel.sim.linear_runner import (ExpertPass, SimulatorUnavailable, dense_job, expert_job,
                                     pack_beats, run_jobs, run_linear, simulator_available,
                                     unpack_beats)

SMALL = LinearParams(t_in=4, t_out=4, n_lanes=2, max_d_in=32, max_d_out=16, max_tokens=8)


@pytest.mark.parametrize("kw, needle", [
    (dict(t_in=0), "t_in=0"),
    (dict(t_out=-3), "t_out=-3"),
    (dict(n_lanes=2.5), "n_lanes=2.5"),
    (dict(n_lanes=True), "n_lanes=True"),
    (dict(max_d_in=1 << 18), "max_d_in=262144"),
    (dict(t_in=64, t_out=64, n_lanes=4), "16384"),
    (dict(expert="yes"), "expert='yes'"),
    (dict(moe_acc_bits=16), "moe_acc_bits=16"),
    (dict(max_tokens=0), "max_tokens=0"),
])
def test_bad_params_name_value_constraint(kw, needle):
    with pytest.raises(LinearParamError) as ei:
        LinearParams(**kw)
    msg = str(ei.value)
    assert needle in msg
    assert "must" in msg or "exceeds" in msg      # the constraint is stated
    assert isinstance(ei.value, ValueError)


def _silenced(k):
    k._MustUse__silence = True      # built only to inspect it, never elaborated
    return k


def test_kernel_params_read_only():
    k = _silenced(LinearKernel(SMALL))
    assert (k.t_in, k.t_out, k.n_lanes, k.max_d_in) == (4, 4, 2, 32)
    with pytest.raises(AttributeError):
        k.t_in = 8
    with pytest.raises(Exception):
        SMALL.t_in = 8          # frozen dataclass
    with pytest.raises(LinearParamError, match="not a LinearParams"):
        LinearKernel({"t_in": 4})
    assert _silenced(LinearKernel(t_in=2, t_out=3)).t_out == 3


def test_derived_widths_prove_no_overflow():
    p = LinearParams(t_in=16, max_d_in=1 << 17)
    # |sum of max_k*t_in int8 products| <= max_k*t_in*2**14 must fit the accumulator
    assert p.max_k * p.t_in * (1 << 14) < 1 << (p.sum_bits - 1)
    assert p.rq_bits >= 33          # + int32 bias


def test_verilog_has_stream_ports():
    v = generate_verilog(SMALL)
    for port in ("p_i__payload", "w_i__valid", "x_i__ready", "g_i__payload", "y_o__valid"):
        assert port in v


def test_pack_unpack_roundtrip():
    lay = stream_layouts(SMALL)["y"]
    rng = np.random.default_rng(0)
    data = rng.integers(-32768, 32768, (5, SMALL.t_out))
    beats = pack_beats(lay, 5, {"data": data, "tok": np.arange(5), "tile": 1, "first": 1})
    u = unpack_beats(lay, beats)
    assert np.array_equal(u["data"], data)
    assert np.array_equal(u["tok"][:, 0], np.arange(5))
    assert (u["tile"] == 1).all() and (u["last"] == 0).all()


def _op(d_in, d_out, rng, **kw):
    return IntLinear(rng.integers(-128, 128, (d_out, d_in)), rng.integers(-99, 99, d_out),
                     Requant.from_ratios(np.full(d_out, 0.01), 8), **kw)


def test_job_errors_are_actionable():
    rng = np.random.default_rng(1)
    op = _op(40, 8, rng)
    with pytest.raises(ShapeError, match="max_d_in=32"):
        dense_job(op, rng.integers(-128, 128, (2, 40)), SMALL)
    op = _op(8, 8, rng)
    with pytest.raises(ShapeError, match="max_tokens=8"):
        dense_job(op, rng.integers(-128, 128, (9, 8)), SMALL)
    with pytest.raises(NumericsError, match="not int8"):
        dense_job(op, np.full((2, 8), 300), SMALL)
    bad = IntLinear(op.weight, op.bias, Requant(np.full(8, 1 << 16), np.full(8, 3), 8))
    with pytest.raises(NumericsError, match="only with shift 0"):
        dense_job(bad, np.zeros((1, 8), np.int64), SMALL)
    big = IntLinear(op.weight, np.full(8, (1 << 31) - 1), op.requant)
    with pytest.raises(NumericsError, match="2\\*\\*31"):
        dense_job(big, np.zeros((1, 8), np.int64), SMALL)
    p = ExpertPass(op, np.zeros((2, 8), np.int64), np.array([3, 3]), np.array([1, 2]))
    with pytest.raises(ShapeError, match="distinct"):
        expert_job([p], Requant.from_ratios([1.0], 8), 8, SMALL)
    dense_only = LinearParams(t_in=4, t_out=4, n_lanes=2, max_d_in=32, max_d_out=16,
                              max_tokens=8, expert=False)
    p = ExpertPass(op, np.zeros((2, 8), np.int64), np.array([1, 3]), np.array([1, 2]))
    with pytest.raises(ShapeError, match="expert=False"):
        expert_job([p], Requant.from_ratios([1.0], 8), 8, dense_only)


def test_cycle_model_shape():
    p = SMALL
    # steady state: a group of n_lanes tokens costs max(K, n_lanes) cycles per output tile
    a = linear_cycles(8, 32, 16, p)
    b = linear_cycles(8, 32, 32 - 16, p)
    assert a == b
    assert linear_cycles(8, 32, 16, p) > linear_cycles(4, 32, 16, p)
    assert linear_cycles(0, 32, 16, p) == 0
    assert expert_cycles([(0, 8), (0, 8)], 16, 8, p) > 0    # the flush alone
    with pytest.raises(CostModelError, match="tokens=-1"):
        linear_cycles(-1, 32, 16, p)


def test_resource_model_families():
    for fam in ("xcup", "ecp5"):
        r = linear_resources(SMALL, fam)
        assert r.dsp >= SMALL.macs and r.lut > 0 and r.ff > 0
    bigger = LinearParams(t_in=8, t_out=4, n_lanes=2, max_d_in=32, max_d_out=16, max_tokens=8)
    assert linear_resources(bigger, "xcup").dsp > linear_resources(SMALL, "xcup").dsp
    with pytest.raises(CostModelError, match="'stratix'"):
        linear_resources(SMALL, "stratix")


def test_missing_icarus_is_reported_not_exited(monkeypatch):
    real_which = linear_runner.shutil.which
    monkeypatch.setattr(linear_runner.shutil, "which",
                        lambda name: None if name in ("iverilog", "vvp") else real_which(name))
    ok, why = simulator_available("icarus")
    assert not ok and "apt-get install -y iverilog" in why
    rng = np.random.default_rng(2)
    with pytest.raises(SimulatorUnavailable, match="iverilog"):
        run_linear(_op(8, 4, rng), rng.integers(-128, 128, (2, 8)), SMALL, simulator="icarus")
    with pytest.raises(SimulatorUnavailable, match="'modelsim'"):
        run_linear(_op(8, 4, rng), rng.integers(-128, 128, (2, 8)), SMALL, simulator="modelsim")


def test_job_for_other_params_is_refused():
    rng = np.random.default_rng(3)
    job = dense_job(_op(8, 4, rng), rng.integers(-128, 128, (2, 8)), SMALL)
    other = LinearParams(t_in=2, t_out=4, n_lanes=2, max_d_in=32, max_d_out=16, max_tokens=8)
    with pytest.raises(ShapeError, match="same LinearParams"):
        run_jobs([job], other)
