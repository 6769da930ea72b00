"""The host driver: its checks, and digits-moe images through it on the simulated accelerator."""
from __future__ import annotations

import numpy as np
import pytest

from accel.compiler import compile_model
from accel.driver import AcceleratorDriver, DeviceError
from accel.models.config import load_config
from accel.models.reference import load_reference
from accel.sim.linear_runner import simulator_available
from accel.sim.model_runner import run_driver, top_params_for


class _Memory:
    """A device with memory and registers but no accelerator behind them (driver checks only)."""

    def __init__(self, n):
        self.mem, self.regs = bytearray(n), {}

    base_address = 0x1000_0000
    memory_bytes = property(lambda self: len(self.mem))

    def write_memory(self, offset, data):
        self.mem[offset:offset + len(data)] = data

    def read_memory(self, offset, n):
        return bytes(self.mem[offset:offset + n])

    def write_reg(self, addr, value):
        self.regs[addr] = value

    def read_reg(self, addr):
        return self.regs.get(addr, 0)

    def wait_done(self, timeout_s):
        raise DeviceError("no accelerator")


@pytest.fixture(scope="module")
def compiled():
    return compile_model(load_reference("digits-moe"), top_params_for(load_config("digits-moe")))


def test_driver_checks(compiled):
    with pytest.raises(DeviceError, match=r"the device memory holds 1024 bytes; the compiled 'digits-moe' needs "
                                          rf"{len(compiled.image)} \(short by {len(compiled.image) - 1024}\)"):
        AcceleratorDriver(_Memory(1024), compiled)
    dev = _Memory(len(compiled.image))
    drv = AcceleratorDriver(dev, compiled)
    with pytest.raises(DeviceError, match=r"run before load\(\)"):
        drv.run_feed(np.zeros((16, 4)))
    drv.load()
    assert dev.regs[0x10] == 0x1000_0000 and dev.regs[0x18] == compiled.program_offset
    assert bytes(dev.mem) == bytes(compiled.image)
    with pytest.raises(DeviceError, match=r"input of shape \(3, 4\) for 'digits-moe'; the program takes \(16, 4\)"):
        drv.run_feed(np.zeros((3, 4)))
    with pytest.raises(DeviceError, match=r"the accelerator is busy"):
        drv.run_feed(np.zeros((16, 4)))


@pytest.mark.skipif(not simulator_available("verilator")[0], reason="verilator not installed")
def test_driver_runs_digits_on_the_simulated_accelerator():
    r = run_driver("digits-moe", images=2, stalls=True, seed=5)
    assert r["error"] is None, r["error"]
    assert r["bit_exact"] and r["mismatches"] == 0
    assert r["rtl_accuracy"] == r["int_accuracy"]
    assert r["expert_fetches"] == [8, 8]
