"""Cycle-level models for the accelerator top's testbench: an AXI4 memory (slave) and an
AXI4-Lite control master. Plain objects with ``drive()`` (after a clock edge) and ``sample()``
(in ReadOnly before the next edge), driven by one clocked loop: Python per cycle is the cost.

The memory serves ``m_axi_gmem``: read bursts are answered ``latency`` cycles after their
address (drawn per burst from ``latency``..``latency + jitter``), then one beat per cycle at most,
each cycle with probability ``p_beat`` (the bandwidth, as a fraction of one word per cycle);
``arready``/``awready``/``wready`` are high with probability ``p_ready`` (random stalls on every
channel). Writes honour ``wstrb`` and are acknowledged ``latency`` cycles later. The AXI4 rules
checked: INCR bursts of full-width beats, no 4 KB crossing, addresses inside the memory.
"""
from __future__ import annotations

import random
from collections import deque


class AxiProtocolError(Exception):
    pass


def _u(sig) -> int:
    v = sig.value
    if not v.is_resolvable:
        raise AxiProtocolError(f"{sig._name} is {v} (not 0/1)")
    return int(v)


class AxiMemory:
    def __init__(self, dut, mem: bytearray, base: int, rng: random.Random | None, latency: int = 8,
                 jitter: int = 0, p_ready: float = 1.0, p_beat: float = 1.0, prefix: str = "m_axi_gmem_"):
        g = lambda n: getattr(dut, prefix + n)
        self.s = {n: g(n) for n in ("arvalid", "arready", "araddr", "arlen", "arsize", "arburst", "rvalid", "rready",
                                    "rdata", "rresp", "rlast", "awvalid", "awready", "awaddr", "awlen", "awsize",
                                    "awburst", "wvalid", "wready", "wdata", "wstrb", "wlast", "bvalid", "bready",
                                    "bresp")}
        self.mem, self.base, self.rng = mem, base, rng
        self.latency, self.jitter, self.p_ready, self.p_beat = latency, jitter, p_ready, p_beat
        self.reads: deque = deque()     # [due_cycle, addr, beats_left]
        self.aw: deque = deque()        # [addr, beats_left]
        self.wq: deque = deque()        # (data, strb, last) waiting for their address
        self.bq: deque = deque()        # due cycles of write responses
        self.r_on = self.b_on = False
        self.ar_rdy = self.aw_rdy = self.w_rdy = False
        self.words_read = self.words_written = self.bursts = 0
        self._last = {}
        self.watch = None            # (lo, hi, step): record the cycle of reads starting in [lo, hi)
        self.marks: dict[int, int] = {}

    def _set(self, name, v):
        if self._last.get(name) != v:
            self.s[name].value = v
            self._last[name] = v

    def _chance(self, p):
        return self.rng is None or p >= 1.0 or self.rng.random() < p

    def _check(self, addr: int, beats: int, size: int, burst: int, what: str):
        if size != 3 or burst != 1:
            raise AxiProtocolError(f"{what}: size={size} burst={burst}; expected full 8-byte INCR bursts")
        if (addr & 7) or (addr & 0xFFF) + beats * 8 > 4096:
            raise AxiProtocolError(f"{what}: address {addr:#x} x {beats} beats is unaligned or crosses 4 KB")
        off = addr - self.base
        if off < 0 or off + beats * 8 > len(self.mem):
            raise AxiProtocolError(f"{what}: address {addr:#x} x {beats} beats outside the memory "
                                   f"[{self.base:#x}, {self.base + len(self.mem):#x})")
        return off

    def drive(self, cycle: int):
        self.ar_rdy = self._chance(self.p_ready)
        self.aw_rdy = self._chance(self.p_ready)
        self.w_rdy = len(self.wq) < 16 and self._chance(self.p_ready)
        self._set("arready", int(self.ar_rdy))
        self._set("awready", int(self.aw_rdy))
        self._set("wready", int(self.w_rdy))
        self.r_on = bool(self.reads) and self.reads[0][0] <= cycle and self._chance(self.p_beat)
        if self.r_on:
            _, off, left = self.reads[0]
            self.s["rdata"].value = int.from_bytes(self.mem[off:off + 8], "little")
            self._set("rlast", int(left == 1))
            self._set("rresp", 0)
        self._set("rvalid", int(self.r_on))
        self.b_on = bool(self.bq) and self.bq[0] <= cycle
        self._set("bvalid", int(self.b_on))
        self._set("bresp", 0)

    def sample(self, cycle: int):
        s = self.s
        if self.ar_rdy and _u(s["arvalid"]):
            n = _u(s["arlen"]) + 1
            off = self._check(_u(s["araddr"]), n, _u(s["arsize"]), _u(s["arburst"]), "read burst")
            lat = self.latency + (self.rng.randint(0, self.jitter) if self.rng and self.jitter else 0)
            due = max(cycle + lat, self.reads[-1][0] if self.reads else 0)
            self.reads.append([due, off, n])
            self.bursts += 1
            if self.watch and self.watch[0] <= off < self.watch[1]:
                self.marks[(off - self.watch[0]) // self.watch[2]] = cycle
        if self.r_on and _u(s["rready"]):
            r = self.reads[0]
            r[1] += 8
            r[2] -= 1
            self.words_read += 1
            if r[2] == 0:
                self.reads.popleft()
        if self.aw_rdy and _u(s["awvalid"]):
            n = _u(s["awlen"]) + 1
            off = self._check(_u(s["awaddr"]), n, _u(s["awsize"]), _u(s["awburst"]), "write burst")
            self.aw.append([off, n])
        if self.w_rdy and _u(s["wvalid"]):
            self.wq.append((_u(s["wdata"]), _u(s["wstrb"]), _u(s["wlast"])))
        while self.aw and self.wq:            # W may come before, with or after its AW
            w = self.aw[0]
            data, strb, last = self.wq.popleft()
            data = data.to_bytes(8, "little")
            if strb == 0xFF:
                self.mem[w[0]:w[0] + 8] = data
            else:
                for i in range(8):
                    if strb >> i & 1:
                        self.mem[w[0] + i] = data[i]
            w[0] += 8
            w[1] -= 1
            self.words_written += 1
            if (w[1] == 0) != bool(last):
                raise AxiProtocolError(f"write burst: wlast={last} with {w[1]} beats left")
            if w[1] == 0:
                self.aw.popleft()
                self.bq.append(cycle + max(1, self.latency // 2))
        if self.b_on and _u(s["bready"]):
            self.bq.popleft()


class AxiLiteMaster:
    """Queued register reads and writes on ``s_axi_control``; ``results`` collects read data."""

    def __init__(self, dut, prefix: str = "s_axi_control_"):
        self.s = {n: getattr(dut, prefix + n) for n in ("awvalid", "awready", "awaddr", "wvalid", "wready", "wdata",
                                                          "wstrb", "bvalid", "bready", "arvalid", "arready", "araddr",
                                                          "rvalid", "rready", "rdata")}
        self.ops: deque = deque()
        self.results: deque = deque()
        self.cur = None
        self.phase = 0
        self._last = {}
        self._quiet = False

    @property
    def idle(self) -> bool:
        return self.cur is None and not self.ops

    def write(self, addr: int, value: int):
        self.ops.append(("w", addr, value))

    def read(self, addr: int):
        self.ops.append(("r", addr, 0))

    def _set(self, name, v):
        if self._last.get(name) != v:
            self.s[name].value = v
            self._last[name] = v

    def drive(self, cycle: int):
        if self.cur is None and not self.ops and self._quiet:
            return
        if self.cur is None and self.ops:
            self.cur, self.phase = self.ops.popleft(), 0
        kind = self.cur[0] if self.cur else None
        self._set("awvalid", int(kind == "w" and self.phase == 0))
        self._set("wvalid", int(kind == "w" and self.phase == 0))
        self._set("bready", int(kind == "w" and self.phase == 1))
        self._set("arvalid", int(kind == "r" and self.phase == 0))
        self._set("rready", int(kind == "r" and self.phase == 1))
        self._quiet = kind is None
        if self.cur:
            self._set("awaddr", self.cur[1])
            self._set("araddr", self.cur[1])
            self._set("wdata", self.cur[2])
            self._set("wstrb", 0xF)

    def sample(self, cycle: int):
        if self.cur is None:
            return
        s = self.s
        kind = self.cur[0]
        if kind == "w":
            if self.phase == 0 and _u(s["awready"]) and _u(s["wready"]):
                self.phase = 1
            elif self.phase == 1 and _u(s["bvalid"]):
                self.cur = None
        else:
            if self.phase == 0 and _u(s["arready"]):
                self.phase = 1
            elif self.phase == 1 and _u(s["rvalid"]):
                self.results.append(_u(s["rdata"]))
                self.cur = None
