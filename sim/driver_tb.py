"""cocotb test: the host driver (accel.driver) runs images on the simulated accelerator.

The job ($ACCEL_DRIVER_JOBS) holds a compiled model and int8 images; the driver loads it through
SimDevice and runs each image; results ($ACCEL_DRIVER_RESULTS) are the driver's RunResults.
"""
from __future__ import annotations

import os
import pickle
import time

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge
from cocotb.triggers import RisingEdge

from accel.driver import AcceleratorDriver, AccelError
from accel.sim.sim_device import SimDevice


def host_program(device, compiled, images):
    """What a user's host program does (blocking code)."""
    drv = AcceleratorDriver(device, compiled)
    drv.load()
    return [drv.run_image(im) for im in images]


@cocotb.test()
async def driver_jobs(dut):
    with open(os.environ["ACCEL_DRIVER_JOBS"], "rb") as f:
        jobs = pickle.load(f)
    cocotb.start_soon(Clock(dut.ap_clk, 10, unit="ns").start())
    results = []
    for job in jobs:
        t0 = time.time()
        dut.ap_rst_n.value = 0
        for _ in range(4):
            await RisingEdge(dut.ap_clk)
        dut.ap_rst_n.value = 1
        dev = SimDevice(dut, job["memory_bytes"], job["base"], stalls=job["stalls"], seed=job["seed"])
        loop = cocotb.start_soon(dev.clock_loop())
        try:
            runs = await bridge(host_program)(dev, job["compiled"], job["images"])
            error = None
        except AccelError as exc:
            runs, error = [], str(exc)
        loop.cancel()
        results.append({"name": job["name"], "runs": runs, "error": error, "seconds": time.time() - t0})
    with open(os.environ["ACCEL_DRIVER_RESULTS"], "wb") as f:
        pickle.dump(results, f)
    errs = [r["error"] for r in results if r["error"]]
    assert not errs, "; ".join(errs)
