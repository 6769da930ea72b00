"""cocotb testbench of the whole accelerator (hdl/top.py): the host's side of a run.

For each job: load the memory image into the AXI memory model, then for each image write its
patches into the input buffer, program MEM/PROGRAM over AXI4-Lite, start, wait for the interrupt,
read CYCLES/STATUS/FETCHES, and keep the memory image after the run (the runner reads every op's
output buffer from it and compares with the reference trace). Random stalls on every AXI channel
and a random read latency come from the job. Jobs: $ACCEL_MODEL_JOBS; results: $ACCEL_MODEL_RESULTS.
"""
from __future__ import annotations

import os
import pickle
import random
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from accel.hdl.top import REG
from accel.sim.axi_memory import AxiLiteMaster, AxiMemory, AxiProtocolError


async def _cycles(dut, parts, n, cycle, sample: bool = True):
    for _ in range(n):
        for p in parts:
            p.drive(cycle)
        await ReadOnly()
        if sample:
            for p in parts:
                p.sample(cycle)
        await RisingEdge(dut.ap_clk)
        cycle += 1
    return cycle


async def run_job(dut, job: dict) -> dict:
    t0 = time.time()
    mem = bytearray(job["image"])
    rng = random.Random(job["seed"]) if job["stalls"] else None

    def host_side():
        axi = AxiMemory(dut, mem, job["base"], rng, latency=job["latency"], jitter=job["jitter"],
                        p_ready=job["p_ready"] if rng else 1.0, p_beat=job["p_beat"])
        axi.watch = (job["program_offset"], job["program_offset"] + 64 * len(job["comments"]), 64)
        return axi, AxiLiteMaster(dut)

    async def reset(parts, cycle):
        # the memory and the control master are reset with the accelerator (one ARESETn): they
        # take no transfer while it is low, not even one the accelerator offered as it fell
        dut.ap_rst_n.value = 0
        cycle = await _cycles(dut, parts, 4, cycle, sample=False)
        dut.ap_rst_n.value = 1
        return await _cycles(dut, parts, 2, cycle)

    def start_run(ctl):
        for reg, v in ((REG.MEM_LO, job["base"] & 0xFFFFFFFF), (REG.MEM_HI, job["base"] >> 32),
                       (REG.PROGRAM, job["program_offset"]), (REG.GIE, 1), (REG.IER, 1), (REG.CTRL, 1)):
            ctl.write(reg, v)

    axi, ctl = host_side()
    parts = [axi, ctl]
    cycle = await reset(parts, 0)
    if job.get("reset_after"):
        # a run cut short by a reset: the next runs must not see anything it left in the registers
        offset, data = job["inputs"][0]
        mem[offset:offset + len(data)] = data
        start_run(ctl)
        cycle = await _cycles(dut, parts, job["reset_after"], cycle)
        axi, ctl = host_side()          # the host's side restarts too: no burst or register access in flight
        parts = [axi, ctl]
        cycle = await reset(parts, cycle)
    runs = []
    error = None
    for k, (offset, data) in enumerate(job["inputs"]):
        mem[offset:offset + len(data)] = data
        start_run(ctl)
        axi.marks = {}
        start = cycle
        limit = cycle + job["max_cycles"]
        try:
            while not (ctl.idle and int(dut.interrupt.value)):
                cycle = await _cycles(dut, parts, 1, cycle)
                if cycle > limit:
                    error = f"image {k}: no interrupt after {cycle - start} cycles (limit {job['max_cycles']})"
                    break
            if error:
                ctl.ops.clear()
                for reg in (REG.PC, REG.TAKEN):
                    ctl.read(reg)
                for _ in range(20):
                    cycle = await _cycles(dut, parts, 1, cycle)
                pc, taken = (ctl.results.popleft() for _ in range(2)) if len(ctl.results) >= 2 else (-1, -1)
                k_ins = (pc - job["program_offset"]) // 64 - 1
                note = job["comments"][k_ins] if 0 <= k_ins < len(job["comments"]) else "?"
                error += f"; stuck at instruction {k_ins} ({note}), writer took {taken} beats"
                break
            for reg in (REG.CYCLES_LO, REG.CYCLES_HI, REG.STATUS, REG.FETCHES, REG.CTRL):
                ctl.read(reg)
            ctl.write(REG.ISR, 1)
            while not ctl.idle:
                cycle = await _cycles(dut, parts, 1, cycle)
        except AxiProtocolError as exc:
            error = f"image {k}: AXI protocol error at cycle {cycle}: {exc}"
            break
        lo, hi, status, fetches, ctrl = (ctl.results.popleft() for _ in range(5))
        runs.append({"cycles": lo | hi << 32, "status": status, "fetches": fetches, "ctrl": ctrl,
                     "wall_cycles": cycle - start, "fetch_cycles": {k: c - start for k, c in axi.marks.items()}, "memory": bytes(mem) if job["keep_memory"] or k == 0 else None,
                     "outputs": {name: bytes(mem[a:a + n]) for name, (a, n) in job["watch"].items()}})
    return {"name": job["name"], "runs": runs, "error": error, "seconds": time.time() - t0,
            "words_read": axi.words_read, "words_written": axi.words_written, "bursts": axi.bursts}


@cocotb.test()
async def model_jobs(dut):
    """Run every job of $ACCEL_MODEL_JOBS; write results to $ACCEL_MODEL_RESULTS."""
    with open(os.environ["ACCEL_MODEL_JOBS"], "rb") as f:
        jobs = pickle.load(f)
    cocotb.start_soon(Clock(dut.ap_clk, 10, unit="ns").start())
    results = []
    for job in jobs:
        results.append(await run_job(dut, job))
    with open(os.environ["ACCEL_MODEL_RESULTS"], "wb") as f:
        pickle.dump(results, f)
    errs = [r["error"] for r in results if r["error"]]
    assert not errs, "; ".join(errs)
