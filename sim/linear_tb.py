"""cocotb testbench of the linear kernel (hdl/linear.py).

Separate pieces:
  * StreamDriver  -- offers pre-packed beats on one valid/ready input stream, one whole beat per
                     cycle, with random valid gaps (stalls);
  * StreamMonitor -- takes beats from the output stream with random ready gaps;
  * Scoreboard    -- unpacks all collected beats with numpy and compares them in bulk with the
                     reference, checking coverage (every token x tile exactly once) and framing;
  * Clocked loop  -- one ReadOnly + one RisingEdge per cycle for all pieces together (Python per
                     cycle is the bottleneck, so the pieces are plain objects, not coroutines).

Jobs come from accel.sim.linear_runner (a pickle named by $ACCEL_LINEAR_JOBS); results go to
$ACCEL_LINEAR_RESULTS. Run it through linear_runner.run_jobs / run_linear, not directly.
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


class StreamDriver:
    """Drives ``<name>__valid``/``__payload`` of an input stream from a list of packed beats."""

    def __init__(self, dut, name: str, beats: list[int], rng: random.Random | None, p_valid=0.7):
        self.name = name
        self.valid = getattr(dut, f"{name}__valid")
        self.payload = getattr(dut, f"{name}__payload")
        self.ready = getattr(dut, f"{name}__ready")
        self.beats = beats
        self.rng = rng
        self.p_valid = p_valid
        self.i = 0
        self.offer = False
        self._last_valid = None
        self.enabled = True

    @property
    def done(self) -> bool:
        return self.i >= len(self.beats)

    def drive(self):
        """After the clock edge: decide this cycle's offer."""
        offer = self.enabled and not self.done and (self.rng is None or self.rng.random() < self.p_valid)
        if offer:
            self.payload.value = self.beats[self.i]
        if offer != self._last_valid:
            self.valid.value = int(offer)
            self._last_valid = offer
        self.offer = offer

    def sample(self) -> bool:
        """In ReadOnly before the edge: did the offered beat transfer?"""
        if not self.offer:
            return False
        r = self.ready.value
        if not r.is_resolvable:
            raise RuntimeError(f"{self.name}__ready is {r} (not 0/1) while a beat is offered: "
                               "the RTL drives an undefined handshake")
        if int(r):
            self.i += 1
            return True
        return False

    def idle(self):
        self.valid.value = 0
        self._last_valid = False
        self.offer = False


class StreamMonitor:
    """Collects beats of an output stream, with random ready gaps."""

    def __init__(self, dut, name: str, rng: random.Random | None, p_ready=0.7):
        self.name = name
        self.valid = getattr(dut, f"{name}__valid")
        self.payload = getattr(dut, f"{name}__payload")
        self.ready = getattr(dut, f"{name}__ready")
        self.rng = rng
        self.p_ready = p_ready
        self.beats: list[int] = []
        self.rdy = False
        self._last = None
        self.last_cycle = -1

    def drive(self):
        rdy = self.rng is None or self.rng.random() < self.p_ready
        if rdy != self._last:
            self.ready.value = int(rdy)
            self._last = rdy
        self.rdy = rdy

    def sample(self, cycle: int) -> bool:
        v = self.valid.value
        if not v.is_resolvable:
            raise RuntimeError(f"{self.name}__valid is {v} (not 0/1) at cycle {cycle}")
        if self.rdy and int(v):
            self.beats.append(int(self.payload.value))
            self.last_cycle = cycle
            return True
        return False


def _unpack(beats: list[int], nbytes: int, fields: dict) -> dict:
    if beats:
        words = np.frombuffer(b"".join(b.to_bytes(nbytes, "little") for b in beats),
                              dtype=np.uint8).reshape(len(beats), nbytes)
    else:
        words = np.zeros((0, nbytes), np.uint8)
    bits = np.unpackbits(words, axis=1, bitorder="little")
    out = {}
    for name, (off, w, signed, count) in fields.items():
        b = bits[:, off:off + w * count].reshape(len(beats), count, w).astype(np.int64)
        v = (b << np.arange(w, dtype=np.int64)).sum(axis=-1)
        if signed:
            v = np.where(v >= (1 << (w - 1)), v - (1 << w), v)
        out[name] = v
    return out


class Scoreboard:
    """Bulk comparison of collected output beats with the reference tensor."""

    def __init__(self, job: dict):
        self.job = job

    def check(self, beats: list[int]) -> dict:
        job = self.job
        exp = job["expected"]
        T, D = exp.shape
        TO = job["t_out"]
        J = -(-D // TO)
        f = _unpack(beats, job["y_bytes"], job["y_fields"])
        got = np.zeros((T, J * TO), dtype=np.int64)
        seen = np.zeros((T, J), dtype=np.int64)
        errors = []
        want_flush = 1 if job["kind"] == "expert" else 0
        n = len(beats)
        if n:
            tok = f["tok"][:, 0]
            tile = f["tile"][:, 0]
            flush = f["flush"][:, 0]
            if (flush != want_flush).any():
                i = int(np.argmax(flush != want_flush))
                errors.append(f"beat {i} has flush={flush[i]}, expected {want_flush} for a "
                              f"{job['kind']} job")
            okidx = (tok < T) & (tile < J)
            if not okidx.all():
                i = int(np.argmax(~okidx))
                errors.append(f"beat {i} addresses token {tok[i]} tile {tile[i]} outside "
                              f"[{T}, {J}]")
            tok, tile, data = tok[okidx], tile[okidx], f["data"][okidx]
            np.add.at(seen, (tok, tile), 1)
            cols = tile[:, None] * TO + np.arange(TO)[None, :]
            got[tok[:, None], cols] = data
            # framing: first on the first beat of each tile pass, last on its last beat
            first, last = f["first"][:, 0], f["last"][:, 0]
            if job["kind"] == "dense":
                exp_first = np.zeros(n, bool)
                exp_last = np.zeros(n, bool)
                exp_first[::T] = True
                exp_last[T - 1::T] = True
            else:
                exp_first = np.zeros(n, bool); exp_first[0] = True
                exp_last = np.zeros(n, bool); exp_last[-1] = True
            if n == T * J and ((first != exp_first).any() or (last != exp_last).any()):
                i = int(np.argmax((first != exp_first) | (last != exp_last)))
                errors.append(f"framing: beat {i} has first={first[i]} last={last[i]}, expected "
                              f"first={int(exp_first[i])} last={int(exp_last[i])}")
        if (seen != 1).any():
            t, j = np.argwhere(seen != 1)[0]
            errors.append(f"token {t} tile {j} received {seen[t, j]} times (expected once); "
                          f"{n} beats for {T * J} expected")
        got = got[:, :D]
        diff = (got != exp) | (seen.repeat(TO, axis=1)[:, :D] != 1)
        mism = int(diff.sum())
        first_mm = None
        if mism:
            t, c = (int(v) for v in np.argwhere(diff)[0])
            first_mm = {"index": (t, c), "expected": int(exp[t, c]), "got": int(got[t, c])}
        return {"mismatches": mism, "first_mismatch": first_mm, "got": got,
                "framing_errors": errors}


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
    rng = random.Random(job["seed"]) if job["stalls"] else None
    mk = (lambda k: random.Random(job["seed"] * 7919 + k)) if job["stalls"] else (lambda k: None)
    drv = {n: StreamDriver(dut, f"{n}_i", job["beats"][n], mk(i)) for i, n in
           enumerate(("g", "p", "w", "x"))}
    mon = StreamMonitor(dut, "y_o", mk(9))
    await _reset(dut, drv.values(), mon)
    n_expected = int(np.prod(job["expected"].shape[:1])) * (-(-job["d_out"] // job["t_out"]))
    # load the GELU table first (not part of the timed region)
    g = drv["g"]
    while not g.done:
        g.drive()
        await ReadOnly()
        g.sample()
        await RisingEdge(dut.clk)
    g.idle()
    # an expert-mode kernel zeroes its accumulator memory after reset before it takes a
    # descriptor (not part of the timed region either)
    while True:
        await ReadOnly()
        cleared = int(dut.p_i__ready.value)
        await RisingEdge(dut.clk)
        if cleared:
            break
    main = [drv["p"], drv["w"], drv["x"]]
    cycle = 0
    error = None
    limit = job["max_cycles"]
    while len(mon.beats) < n_expected:
        for d in main:
            d.drive()
        mon.drive()
        await ReadOnly()
        for d in main:
            d.sample()
        mon.sample(cycle)
        await RisingEdge(dut.clk)
        cycle += 1
        if cycle > limit:
            left = {d.name: len(d.beats) - d.i for d in main}
            error = (f"timeout after {cycle} cycles: received {len(mon.beats)} of {n_expected} "
                     f"output beats; input beats not taken: {left}")
            break
    for d in main:
        d.idle()
    mon.ready.value = 0
    # a few idle cycles: nothing further may come out
    extra = 0
    mon.rdy = True
    mon.ready.value = 1
    for _ in range(8):
        await ReadOnly()
        if int(mon.valid.value):
            extra += 1
        await RisingEdge(dut.clk)
    mon.ready.value = 0
    sb = Scoreboard(job).check(mon.beats)
    if error is None and sb["framing_errors"]:
        error = "; ".join(sb["framing_errors"][:3])
    if error is None and extra:
        error = f"{extra} extra output beats after the expected {n_expected}"
    if error is None:
        left = [n for n, d in drv.items() if not d.done]
        if left:
            error = f"input streams not fully consumed: {left}"
    cycles = mon.last_cycle + 1 if mon.beats else 0
    return {"name": job["name"], "checked": len(mon.beats) >= n_expected,
            "mismatches": sb["mismatches"], "first_mismatch": sb["first_mismatch"],
            "error": error, "cycles": cycles, "got": sb["got"], "seconds": time.time() - t0}


@cocotb.test()
async def linear_jobs(dut):
    """Run every job of $ACCEL_LINEAR_JOBS, write results to $ACCEL_LINEAR_RESULTS."""
    with open(os.environ["ACCEL_LINEAR_JOBS"], "rb") as f:
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
                msg += f", first at {fm['index']}: expected {fm['expected']}, got {fm['got']}"
            if r["error"]:
                msg += f"; {r['error']}"
            failed.append(msg)
            dut._log.error(msg)
        else:
            dut._log.info(f"{job['name']}: bit-exact, {r['cycles']} cycles "
                          f"(model {job['predicted']})")
    with open(os.environ["ACCEL_LINEAR_RESULTS"], "wb") as f:
        pickle.dump(results, f)
    assert not failed, "; ".join(failed)
