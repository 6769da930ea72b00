"""Small pieces every generator uses: parameter checks and a balanced adder tree."""
from __future__ import annotations

__all__ = ["check_int_param", "round_shift", "tree_sum"]


def check_int_param(error: type[Exception], owner: str, name: str, value, lo: int, hi: int, fix: str) -> None:
    """Raise ``error`` naming ``owner.name`` and the value unless it is an int in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{owner}.{name}={value!r}: must be an int in [{lo}, {hi}]; {fix}")
    if not lo <= value <= hi:
        raise error(f"{owner}.{name}={value!r}: must be in [{lo}, {hi}]; {fix}")


def tree_sum(terms):
    """Sum of Amaranth values as a balanced tree of two-input adders."""
    terms = list(terms)
    while len(terms) > 1:
        nxt = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        if len(terms) % 2:
            nxt.append(terms[-1])
        terms = nxt
    return terms[0]


def round_shift(value, shift):
    """floor((value + 2**(shift-1)) / 2**shift) for a signed ``value`` and a variable ``shift``
    (0 for shift 0 adds nothing): the value shifted, plus the last bit shifted out. The same as
    adding 2**(shift-1) first, without a rounding constant: on the ECP5 the add-then-shift form with
    the constant in a register synthesized to 2.4 times the LUTs (a 64-bit adder and shifter)."""
    return (value >> shift) + ((value << 1) >> shift)[0]
