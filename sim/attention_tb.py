"""cocotb testbench of the streaming attention kernel (hdl/attention.py).

Separate pieces:
  * drivers    -- accel.sim.linear_tb.StreamDriver, one per input stream (cfg_i, q_i, k_i, v_i):
                  pre-packed beats, random valid gaps when the job asks for stalls;
  * monitor    -- accel.sim.linear_tb.StreamMonitor on o_o, random ready gaps;
  * Scoreboard -- unpacks all collected output beats with numpy, rebuilds the [tokens, dim]
                  output and compares it in bulk with the reference, checking the beat order
                  (tok, chunk) and the first/last framing of each head group;
  * the clocked loop drives every piece once per cycle (one ReadOnly + one RisingEdge).

Jobs come from accel.sim.attention_runner (a pickle named by $ACCEL_ATTN_JOBS); results go to
$ACCEL_ATTN_RESULTS. Run it through attention_runner.run_jobs / run_attention.
"""
from __future__ import annotations

import os
import pickle
import random
import time

import numpy as np

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from accel.sim.linear_tb import StreamDriver, StreamMonitor, _unpack

INPUTS = ("cfg", "q", "k", "v")


class Scoreboard:
    """Bulk comparison of the collected o_o beats with the job's expected [tokens, dim]."""

    def __init__(self, job: dict):
        self.job = job

    def n_expected(self) -> int:
        j = self.job
        return j["groups"] * j["expected"].shape[0] * j["chunks"]

    def check(self, beats: list[int]) -> dict:
        job = self.job
        exp = job["expected"]
        T, D = exp.shape
        G, HP, TA, C, HD = job["groups"], job["hp"], job["t_a"], job["chunks"], job["head_dim"]
        f = _unpack(beats, job["o_bytes"], job["o_fields"])
        n = min(len(beats), G * T * C)
        errors = []
        got = np.zeros((T, G * HP * HD), np.int64)
        seen = np.zeros((T, G * HP * HD), bool)
        if n:
            b = np.arange(n)
            g = b // (T * C)
            tok = (b % (T * C)) // C
            ch = b % C
            ftok, fch = f["tok"][:n, 0], f["chunk"][:n, 0]
            bad = (ftok != tok) | (fch != ch)
            if bad.any():
                i = int(np.argmax(bad))
                errors.append(f"beat {i} carries tok={ftok[i]} chunk={fch[i]}, expected "
                              f"tok={tok[i]} chunk={ch[i]} (query order, chunk order)")
            first, last = f["first"][:n, 0], f["last"][:n, 0]
            want_first = (tok == 0) & (ch == 0)
            want_last = (tok == T - 1) & (ch == C - 1)
            badf = (first != want_first) | (last != want_last)
            if badf.any():
                i = int(np.argmax(badf))
                errors.append(f"framing: beat {i} has first={first[i]} last={last[i]}, expected "
                              f"first={int(want_first[i])} last={int(want_last[i])}")
            data = f["data"][:n].reshape(n, HP, TA)
            hh = np.arange(HP)[None, :, None]
            tt = np.arange(TA)[None, None, :]
            cols = (g[:, None, None] * HP + hh) * HD + ch[:, None, None] * TA + tt
            rows = np.broadcast_to(tok[:, None, None], cols.shape)
            got[rows, cols] = data
            seen[rows, cols] = True
        got = got[:, :D]
        seen = seen[:, :D]
        diff = (got != exp) | ~seen
        mism = int(diff.sum())
        first_mm = None
        if mism:
            t, c = (int(v) for v in np.argwhere(diff)[0])
            first_mm = {"index": (t, c), "head": c // HD, "expected": int(exp[t, c]),
                        "got": int(got[t, c]) if seen[t, c] else None}
        return {"mismatches": mism, "first_mismatch": first_mm, "got": got, "errors": errors}


async def _reset(dut, drivers, monitor):
    dut.rst.value = 1
    for d in drivers:
        d.idle()
    monitor.ready.value = 0
    monitor._last = False
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def run_job(dut, job: dict) -> dict:
    t0 = time.time()
    mk = (lambda k: random.Random(job["seed"] * 7919 + k)) if job["stalls"] else (lambda k: None)
    drv = [StreamDriver(dut, f"{n}_i", job["beats"][n], mk(i)) for i, n in enumerate(INPUTS)]
    mon = StreamMonitor(dut, "o_o", mk(9))
    await _reset(dut, drv, mon)
    sb = Scoreboard(job)
    n_expected = sb.n_expected()
    cycle = 0
    error = None
    limit = job["max_cycles"]
    while len(mon.beats) < n_expected:
        for d in drv:
            d.drive()
        mon.drive()
        await ReadOnly()
        for d in drv:
            d.sample()
        mon.sample(cycle)
        await RisingEdge(dut.clk)
        cycle += 1
        if cycle > limit:
            left = {d.name: len(d.beats) - d.i for d in drv}
            error = (f"timeout after {cycle} cycles: received {len(mon.beats)} of {n_expected} "
                     f"output beats; input beats not taken: {left}")
            break
    for d in drv:
        d.idle()
    # a few idle cycles with ready high: nothing further may come out
    extra = 0
    mon.ready.value = 1
    for _ in range(8):
        await ReadOnly()
        if int(mon.valid.value):
            extra += 1
        await RisingEdge(dut.clk)
    mon.ready.value = 0
    mon._last = False
    await ReadOnly()
    err_flag = int(dut.error.value)
    busy = int(dut.busy.value)
    await RisingEdge(dut.clk)
    res = sb.check(mon.beats)
    if error is None and res["errors"]:
        error = "; ".join(res["errors"][:3])
    if error is None and extra:
        error = f"{extra} extra output beats after the expected {n_expected}"
    if error is None and err_flag:
        error = "the kernel raised its error flag (input framing or descriptor out of range)"
    if error is None:
        left = [d.name for d in drv if not d.done]
        if left:
            error = f"input streams not fully consumed: {left}"
        elif busy:
            error = "the kernel is still busy after its last output"
    cycles = mon.last_cycle + 1 if mon.beats else 0
    return {"name": job["name"], "checked": len(mon.beats) >= n_expected,
            "mismatches": res["mismatches"], "first_mismatch": res["first_mismatch"],
            "error": error, "cycles": cycles, "got": res["got"], "seconds": time.time() - t0}


@cocotb.test()
async def attention_jobs(dut):
    """Run every job of $ACCEL_ATTN_JOBS, write results to $ACCEL_ATTN_RESULTS."""
    with open(os.environ["ACCEL_ATTN_JOBS"], "rb") as f:
        jobs = pickle.load(f)
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    results = []
    failed = []
    for job in jobs:
        r = await run_job(dut, job)
        results.append(r)
        if r["error"] or r["mismatches"]:
            msg = f"{job['name']}: {r['mismatches']} mismatches"
            if r["first_mismatch"]:
                fm = r["first_mismatch"]
                msg += (f", first at [token, channel] {fm['index']} (head {fm['head']}): "
                        f"expected {fm['expected']}, got {fm['got']}")
            if r["error"]:
                msg += f"; {r['error']}"
            failed.append(msg)
            dut._log.error(msg)
        else:
            dut._log.info(f"{job['name']}: bit-exact, {r['cycles']} cycles "
                          f"(model {job['predicted']}), {r['seconds']:.2f} s")
    with open(os.environ["ACCEL_ATTN_RESULTS"], "wb") as f:
        pickle.dump(results, f)
    assert not failed, "; ".join(failed)
