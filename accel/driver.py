"""Host driver: load a compiled model into the accelerator's memory, run images, read results.

The driver talks to a small :class:`Device` interface -- the accelerator's memory (a buffer the
device reaches over its AXI port) and its control registers (docs/top_interface.md) -- with two
backends:

* the RTL simulation: ``accel.sim.sim_device.SimDevice`` (cocotb; the driver runs in a cocotb
  bridge thread), which is how the driver is tested (``accel sim driver``, tests/test_driver.py);
* a Zynq board with PYNQ: :class:`PynqDevice` (``pynq`` is imported only when it is used).

::

    drv = AcceleratorDriver(device, compiled)   # compiled = accel.compiler.compile_model(...)
    drv.load()                                   # constants, weights, program
    result = drv.run_image(image_q)              # int8 [C, H, W] -> RunResult (logits, cycles)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from accel.compiler import Compiled
from accel.hdl.top import REG, STATUS
from accel.models.errors import AccelError

__all__ = ["Device", "DeviceError", "RunResult", "AcceleratorDriver", "PynqDevice"]

CTRL_START, CTRL_DONE, CTRL_IDLE = 1, 2, 4


class DeviceError(AccelError):
    """The device refused or failed a request; the message says what and how to fix it."""


class Device(Protocol):
    """What the driver needs from a device."""

    @property
    def base_address(self) -> int: ...       # bus address of memory offset 0

    @property
    def memory_bytes(self) -> int: ...

    def write_memory(self, offset: int, data: bytes) -> None: ...

    def read_memory(self, offset: int, n: int) -> bytes: ...

    def write_reg(self, addr: int, value: int) -> None: ...

    def read_reg(self, addr: int) -> int: ...

    def wait_done(self, timeout_s: float) -> None: ...   # returns once the accelerator is done


@dataclass(frozen=True)
class RunResult:
    logits: np.ndarray          # int16 [classes] (empty for a model without a head)
    features: np.ndarray        # the head's input row (int8), or the last residual row
    cycles: int                 # accelerator cycles of the run (CYCLES register)
    expert_fetches: int         # expert weight fetches (FETCHES register)


class AcceleratorDriver:
    def __init__(self, device: Device, compiled: Compiled, timeout_s: float = 10.0):
        if not isinstance(compiled, Compiled):
            raise DeviceError(f"AcceleratorDriver: compiled={compiled!r} is not an accel.compiler.Compiled; "
                              "build one with accel.compiler.compile_model(reference, params)")
        need = len(compiled.image)
        if device.memory_bytes < need:
            raise DeviceError(f"the device memory holds {device.memory_bytes} bytes; the compiled {compiled.model!r} "
                              f"needs {need} (short by {need - device.memory_bytes}); give the device a larger buffer")
        self.device = device
        self.compiled = compiled
        self.timeout_s = timeout_s
        self.loaded = False

    def load(self) -> None:
        """Write constants, weights and program; point the accelerator at them."""
        d, c = self.device, self.compiled
        d.write_memory(0, bytes(c.image))
        base = d.base_address
        d.write_reg(REG.MEM_LO, base & 0xFFFF_FFFF)
        d.write_reg(REG.MEM_HI, base >> 32)
        d.write_reg(REG.PROGRAM, c.program_offset)
        d.write_reg(REG.GIE, 1)
        d.write_reg(REG.IER, 1)
        if d.read_reg(REG.PROGRAM) != c.program_offset:
            raise DeviceError(f"the PROGRAM register reads back {d.read_reg(REG.PROGRAM):#x}, not "
                              f"{c.program_offset:#x}: the control port does not reach the accelerator")
        self.loaded = True

    def run_feed(self, feed: np.ndarray) -> RunResult:
        """One run on a raw input (patches, or a block's input stream)."""
        if not self.loaded:
            raise DeviceError("run before load(): call AcceleratorDriver.load() once first")
        d, c = self.device, self.compiled
        buf = c.input
        expect = (buf.rows, buf.cols)
        if tuple(np.shape(feed)) != expect:
            raise DeviceError(f"input of shape {tuple(np.shape(feed))} for {c.model!r}; the program takes {expect}")
        scratch = bytearray(buf.rows * buf.stride)
        dt = np.int8 if buf.elem == 1 else np.int16
        for r in range(buf.rows):
            row = np.asarray(feed[r]).astype(dt).tobytes()
            scratch[r * buf.stride:r * buf.stride + len(row)] = row
        d.write_memory(buf.offset, bytes(scratch))
        if not d.read_reg(REG.CTRL) & CTRL_IDLE:
            raise DeviceError("the accelerator is busy (CTRL.ap_idle = 0); wait for the running job or reset it")
        d.write_reg(REG.CTRL, CTRL_START)
        d.wait_done(self.timeout_s)
        cycles = d.read_reg(REG.CYCLES_LO) | d.read_reg(REG.CYCLES_HI) << 32
        status = d.read_reg(REG.STATUS)
        fetches = d.read_reg(REG.FETCHES)
        d.write_reg(REG.ISR, 1)
        if status != STATUS.OK:
            pc = d.read_reg(REG.PC)
            k = (pc - c.program_offset) // 64 - 1
            where = c.program[k]["comment"] if 0 <= k < len(c.program) else f"offset {pc:#x}"
            raise DeviceError(f"the accelerator stopped with status {status} ({STATUS.TEXT.get(status, '?')}) at "
                              f"instruction {k} ({where})")
        mem = _Window(d)
        logits = c.logits.read(mem)[0] if c.logits is not None else np.zeros(0, np.int64)
        feats = c.features.read(mem, 1)[0]
        return RunResult(logits, feats, cycles, fetches)

    def run_image(self, image_q: np.ndarray) -> RunResult:
        """One int8 image [C, H, W] (see IntegerModel.quantize_images)."""
        return self.run_feed(self.compiled.feed(image_q))

    def run_images(self, images_q: np.ndarray) -> list[RunResult]:
        return [self.run_image(im) for im in images_q]


class _Window:
    """Byte-slicing view of a device's memory (what Buffer.read needs)."""

    def __init__(self, device: Device):
        self.d = device

    def __getitem__(self, s: slice) -> bytes:
        return self.d.read_memory(s.start, s.stop - s.start)


class PynqDevice:
    """A Zynq UltraScale+ board running PYNQ with the bitstream of `accel project` (block design
    with ``accel_top_0`` on the PS's HPM0 and HP0 ports)."""

    def __init__(self, bitfile: str, memory_bytes: int, ip_name: str = "accel_top_0"):
        try:
            from pynq import Overlay, allocate
        except ImportError:
            raise DeviceError("PynqDevice needs the pynq package (on the board: pip install pynq); "
                              "use the simulation backend elsewhere") from None
        self._ol = Overlay(bitfile)
        if not hasattr(self._ol, ip_name):
            raise DeviceError(f"the overlay {bitfile!r} has no IP named {ip_name!r}; its IPs: {sorted(self._ol.ip_dict)}")
        self._ip = getattr(self._ol, ip_name)
        self._buf = allocate(shape=(memory_bytes,), dtype=np.uint8)
        self._mem = memory_bytes

    @property
    def base_address(self) -> int:
        return int(self._buf.physical_address)

    @property
    def memory_bytes(self) -> int:
        return self._mem

    def write_memory(self, offset: int, data: bytes) -> None:
        self._buf[offset:offset + len(data)] = np.frombuffer(data, np.uint8)
        self._buf.flush()

    def read_memory(self, offset: int, n: int) -> bytes:
        self._buf.invalidate()
        return bytes(self._buf[offset:offset + n])

    def write_reg(self, addr: int, value: int) -> None:
        self._ip.write(addr, int(value))

    def read_reg(self, addr: int) -> int:
        return int(self._ip.read(addr))

    def wait_done(self, timeout_s: float) -> None:
        import time
        t0 = time.time()
        while not self.read_reg(REG.CTRL) & CTRL_DONE:
            if time.time() - t0 > timeout_s:
                raise DeviceError(f"no ap_done after {timeout_s} s; check the clock and the memory port "
                                  f"(STATUS={self.read_reg(REG.STATUS)}, PC={self.read_reg(REG.PC):#x})")
