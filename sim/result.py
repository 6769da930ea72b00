"""The outcome of one kernel simulation job, shared by every kernel's runner."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["KernelResult", "make_result"]


@dataclass
class KernelResult:
    """Outcome of one job. ``checked`` is True when the RTL produced every output beat and the
    whole output was compared; ``mismatches`` counts differing output elements (missing beats
    count too)."""
    name: str
    checked: bool
    mismatches: int
    cycles: int
    predicted_cycles: int
    expected_shape: tuple
    first_mismatch: dict | None = None   # {"index": (token, channel), "expected", "got"[, "head"]}
    error: str | None = None
    waveform: str | None = None
    simulator: str = "verilator"
    sim_seconds: float = 0.0
    got: np.ndarray | None = field(default=None, repr=False)
    expected: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.checked and self.mismatches == 0 and self.error is None

    @property
    def cycles_per_second(self) -> float:
        return self.cycles / self.sim_seconds if self.sim_seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "checked": self.checked,
                "mismatches": self.mismatches, "cycles": self.cycles,
                "predicted_cycles": self.predicted_cycles, "first_mismatch": self.first_mismatch,
                "error": self.error, "waveform": self.waveform, "simulator": self.simulator,
                "sim_seconds": round(self.sim_seconds, 3)}

    def describe(self) -> str:
        if self.ok:
            return (f"{self.name}: bit-exact, {self.expected_shape} outputs, {self.cycles} cycles "
                    f"(model {self.predicted_cycles})")
        parts = [f"{self.name}: FAILED"]
        if self.error:
            parts.append(self.error)
        if self.first_mismatch:
            fm = self.first_mismatch
            head = f" (head {fm['head']})" if "head" in fm else ""
            parts.append(f"{self.mismatches} mismatching elements; first at [token, channel] = "
                         f"{fm['index']}{head}: expected {fm['expected']}, got {fm['got']}")
        parts.append(f"waveform: {self.waveform}" if self.waveform else
                     "waveform: none (run with waves=True to keep one)")
        return "; ".join(parts)


def make_result(job: dict, r: dict, simulator: str) -> KernelResult:
    """A result from a job (name, predicted cycles, expected output) and the testbench's record."""
    return KernelResult(
        name=job["name"], checked=r["checked"], mismatches=r["mismatches"], cycles=r["cycles"],
        predicted_cycles=job["predicted"], expected_shape=tuple(job["expected"].shape),
        first_mismatch=r["first_mismatch"], error=r["error"], waveform=r.get("waveform"),
        simulator=simulator, sim_seconds=r["seconds"], got=r["got"], expected=job["expected"])
