"""The simulation backend of the host driver (accel.driver.Device): the accelerator top in a
cocotb simulation, its memory an AXI memory model, its registers behind an AXI4-Lite master.

The driver's blocking calls run in a cocotb bridge thread (cocotb.task.bridge); the register
calls and ``wait_done`` are ``resume`` functions that let the simulation run until they
complete. Memory reads and writes touch the model's buffer directly, as a host does with a
buffer shared with the device.
"""
from __future__ import annotations

import random

from cocotb.task import resume
from cocotb.triggers import ReadOnly, RisingEdge

from accel.driver import DeviceError
from accel.sim.axi_memory import AxiLiteMaster, AxiMemory


class SimDevice:
    def __init__(self, dut, memory_bytes: int, base: int, stalls: bool = False, seed: int = 0, latency: int = 12,
                 cycles_per_second: float = 1e8):
        self.dut = dut
        self.mem = bytearray(memory_bytes)
        self._base = base
        rng = random.Random(seed) if stalls else None
        self.axi = AxiMemory(dut, self.mem, base, rng, latency=latency, jitter=8 if stalls else 0,
                             p_ready=0.8 if stalls else 1.0, p_beat=0.9 if stalls else 1.0)
        self.ctl = AxiLiteMaster(dut)
        self.cycle = 0
        self.cycles_per_second = cycles_per_second     # simulated clock, for wait_done's timeout
        self.error: Exception | None = None

    async def clock_loop(self):
        """The per-cycle loop of the memory and control models (start it with cocotb.start_soon)."""
        parts = (self.axi, self.ctl)
        try:
            while True:
                for p in parts:
                    p.drive(self.cycle)
                await ReadOnly()
                for p in parts:
                    p.sample(self.cycle)
                await RisingEdge(self.dut.ap_clk)
                self.cycle += 1
        except Exception as exc:          # surfaced by the next driver call
            self.error = exc

    async def _settle(self):
        while not self.ctl.idle:
            if self.error:
                raise DeviceError(f"simulation error: {self.error}")
            await RisingEdge(self.dut.ap_clk)

    @property
    def base_address(self) -> int:
        return self._base

    @property
    def memory_bytes(self) -> int:
        return len(self.mem)

    def write_memory(self, offset: int, data: bytes) -> None:
        self.mem[offset:offset + len(data)] = data

    def read_memory(self, offset: int, n: int) -> bytes:
        return bytes(self.mem[offset:offset + n])

    @resume
    async def write_reg(self, addr: int, value: int) -> None:
        self.ctl.write(addr, value)
        await self._settle()

    @resume
    async def read_reg(self, addr: int) -> int:
        self.ctl.read(addr)
        await self._settle()
        return self.ctl.results.popleft()

    @resume
    async def wait_done(self, timeout_s: float) -> None:
        limit = self.cycle + int(timeout_s * self.cycles_per_second)
        while not int(self.dut.interrupt.value):
            if self.error:
                raise DeviceError(f"simulation error: {self.error}")
            if self.cycle > limit:
                raise DeviceError(f"no interrupt within {timeout_s} s of simulated time "
                                  f"({int(timeout_s * self.cycles_per_second)} cycles)")
            await RisingEdge(self.dut.ap_clk)
