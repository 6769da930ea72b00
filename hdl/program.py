"""The accelerator's instruction format: shared by the model compiler (accel.compiler) and the
controller (accel.hdl.top).

A program is a list of 64-byte instructions in memory (8 words of 64 bits, little endian). The
controller fetches one, executes it, fetches the next:

* ``READ``  -- stream tensors from memory to kernel input ports (mode RAW, ROWS or LIN, below).
  The controller only *issues* the reads; the beats reach the ports in order while the next
  instruction is fetched.
* ``WRITE`` -- arm the writer: which kernel output to take (mode W_LIN, W_ROWS, W_ATT, W_GATE)
  and where its beats go in memory.
* ``WAIT``  -- until the writer has taken ``n_beats`` output beats and every memory write is
  acknowledged (the end of an op).
* ``SKIP``  -- if expert ``expert`` has no tokens queued, skip the next ``skip`` instructions
  (an expert with no tokens costs nothing: no weight fetch, no compute).
* ``END``   -- done.

READ modes (every address is a byte offset from the ``mem`` base; every piece is whole 64-bit
words):

* RAW  -- ``n_beats`` beats of ``wpb`` words from ``base_a`` on, to port ``port``; when
  ``frame`` > 0 the beats carry ``first``/``last`` every ``frame`` beats (weight tiles);
  otherwise the words are the whole payload (descriptors, configuration, tables).
* ROWS -- for each of ``n_rows`` rows and ``n_chunks`` chunks a beat of ``na`` slots of ``wa``
  words at ``base_a + r*stride_a + c*cstep_a + s*sstep_a``, then (``wb`` > 0) ``wb`` words at
  ``base_b + r*stride_b + c*cstep_b``. ``whole``: ``first``/``last`` frame the whole read (the
  attention kernel's q/k/v); otherwise ``last`` ends each row (LayerNorm, residual, gate).
* LIN  -- one linear layer: for each of ``n_reps`` output tiles: the tile descriptor (``wpb``
  words at ``base_c + t*wpb*8``) to ``p_i``, the tile's ``n_chunks`` weight words (``wb`` words
  each, from ``base_d``) to ``w_i``, then the activations to ``x_i``: token groups of the
  kernel's lanes, each lane ``wa`` words per chunk from row ``r`` at ``base_a + r*stride_a``.
  ``list`` picks the rows: DENSE (row = token = position), GATHER (row = the queued token of
  ``expert``; token field = position: an expert's fc1), SCATTER (row = position; token and
  gate weight from the queue: an expert's fc2 accumulating into the expert accumulator).
  ``count_rows`` takes ``n_rows`` from the expert's queue length.
"""
from __future__ import annotations

from amaranth.lib import data

__all__ = ["INSTR_WORDS", "INSTR_BYTES", "WORD_BYTES", "instr_layout", "OP", "MODE", "WMODE", "LIST",
           "PORT", "encode", "decode"]

WORD_BYTES = 8
INSTR_WORDS = 8
INSTR_BYTES = INSTR_WORDS * WORD_BYTES


class OP:
    END, READ, WRITE, WAIT, SKIP = range(5)


class MODE:
    RAW, ROWS, LIN = range(3)


class WMODE:
    LIN, ROWS, ATT, GATE = range(4)


class LIST:
    DENSE, GATHER, SCATTER = range(3)


class PORT:
    """Kernel input ports a READ can feed (INSTR is the controller's own fetch)."""
    LIN_P, LIN_W, LIN_X, LIN_G, ATT_CFG, ATT_Q, ATT_K, ATT_V, LN_C, LN_X, RES_C, RES_I, GATE_C, GATE_L, INSTR = range(15)
    NAMES = ["lin_p", "lin_w", "lin_x", "lin_g", "att_cfg", "att_q", "att_k", "att_v", "ln_c", "ln_x",
             "res_c", "res_i", "gate_c", "gate_l", "instr"]


instr_layout = data.StructLayout({
    "op": 3, "mode": 2, "port": 4,
    "whole": 1, "out16": 1, "list": 2, "count_rows": 1, "fetch": 1,
    "expert": 8,
    "n_rows": 16, "n_chunks": 16, "n_reps": 16, "frame": 16,
    "n_beats": 24, "wpb": 6, "wa": 5, "na": 5, "wb": 5,
    "skip": 16,
    "base_a": 32, "stride_a": 24, "cstep_a": 16, "sstep_a": 16,
    "base_b": 32, "stride_b": 24, "cstep_b": 16,
    "base_c": 32, "base_d": 32,
})
assert instr_layout.size <= INSTR_WORDS * 64

_FIELDS = {name: field for name, field in instr_layout}


def encode(**fields) -> bytes:
    """One instruction as its 64 bytes. Unknown field names and values that do not fit raise
    ValueError naming them (the compiler checks capacities before it gets here)."""
    word = 0
    for name, value in fields.items():
        if name not in _FIELDS:
            raise ValueError(f"instruction field {name!r} does not exist; fields: {sorted(_FIELDS)}")
        f = _FIELDS[name]
        width = f.shape.width if hasattr(f.shape, "width") else int(f.shape)
        v = int(value)
        if not 0 <= v < (1 << width):
            raise ValueError(f"instruction field {name}={v!r} does not fit in {width} bits")
        word |= v << f.offset
    return word.to_bytes(INSTR_BYTES, "little")


def decode(raw: bytes) -> dict:
    """The fields of one 64-byte instruction (for listings and tests)."""
    word = int.from_bytes(raw[:INSTR_BYTES], "little")
    out = {}
    for name, f in _FIELDS.items():
        width = f.shape.width if hasattr(f.shape, "width") else int(f.shape)
        out[name] = (word >> f.offset) & ((1 << width) - 1)
    return out
