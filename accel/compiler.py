"""The model compiler: an integer model + accelerator parameters -> a program and a memory image.

``compile_model(ref, params)`` lays out, in one byte-addressed image: every op's constants in the
exact beat format of the kernel port that takes them (tile descriptors, weight words, GELU tables,
LayerNorm/residual/attention/gate configuration), one buffer per op output (so every intermediate
tensor can be read back and compared with the reference trace), the input patches, and the
program (accel.hdl.program) that runs the model for one image. The host writes an image's patches,
starts the accelerator with the program offset, and reads the logits.

A model the design cannot run is refused with the reason (:class:`CapacityError`): which
dimension, its value, the design's limit and the parameter to raise.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from accel.hdl.linear import KIND_FLUSH, stream_layouts
from accel.hdl.program import INSTR_BYTES, LIST, MODE, OP, PORT, WMODE, encode
from accel.hdl.top import TopParams
from accel.models.errors import AccelError
from accel.models.intops import IntAttention, IntGate, IntLayerNorm, IntLinear, IntMoE, IntResidualAdd
from accel.models.reference import IntegerModel, IntMlp

__all__ = ["CapacityError", "Buffer", "OpOutput", "Compiled", "compile_model"]

ALIGN = 64


class CapacityError(AccelError):
    """The model does not fit the generated design's capacity."""


def _up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass
class Buffer:
    """A tensor in the image: ``rows`` rows of ``cols`` elements of ``elem`` bytes, ``stride``
    bytes apart (the stride covers what every producer writes and every consumer reads)."""
    name: str
    rows: int
    cols: int
    elem: int
    width: int = 0          # bytes per row needed by producers/consumers (grows while planning)
    offset: int = -1
    stride: int = 0

    def need(self, nbytes: int) -> "Buffer":
        self.width = max(self.width, nbytes)
        return self

    def row(self, r: int) -> int:
        return self.offset + r * self.stride

    def read(self, image: bytes | bytearray, rows: int | None = None) -> np.ndarray:
        """The tensor's values from a memory image: int [rows, cols]."""
        n = self.rows if rows is None else rows
        dt = np.int8 if self.elem == 1 else np.int16
        out = np.zeros((n, self.cols), np.int64)
        for r in range(n):
            a = self.row(r)
            out[r] = np.frombuffer(bytes(image[a:a + self.cols * self.elem]), dtype=dt)
        return out

    def write(self, image: bytearray, values: np.ndarray) -> None:
        dt = np.int8 if self.elem == 1 else np.int16
        v = np.asarray(values)
        for r in range(v.shape[0]):
            a = self.row(r)
            image[a:a + self.cols * self.elem] = v[r].astype(dt).tobytes()


@dataclass(frozen=True)
class OpOutput:
    """Where one traced op's output lands: compare ``buffer`` rows with the trace record."""
    layer: object
    name: str
    buffer: Buffer
    row0: int = 0           # first row of the op's output inside the buffer
    expert: int = -1        # for expert fc1 outputs: rows = that expert's queued tokens


@dataclass
class Compiled:
    params: TopParams
    model: str
    image: bytearray
    program_offset: int
    program: list[dict]                 # instruction fields + a comment, in program order
    input: Buffer                       # int8 patches [tokens-1, patch features] (int16 stream for blocks)
    features: Buffer                    # the head's input row
    logits: Buffer | None               # int16 [1, classes]
    outputs: list[OpOutput]             # every op output, in execution order
    expert_weight_reads: int            # fetch-flagged reads in the program (upper bound per image)
    static_bytes: int
    activation_bytes: int
    blocks: list[int] | None = None     # None: the whole model; else the blocks run (input: int16 stream)
    patch_size: int = 1

    def feed(self, image_q: np.ndarray) -> np.ndarray:
        """What the host writes into ``input`` for one int8 image [C, H, W]: its patches."""
        from accel.models.reference import extract_patches
        if self.blocks is not None:
            raise CapacityError("a program of single blocks takes the block's input stream, not an image")
        return extract_patches(np.asarray(image_q)[None], self.patch_size)[0]

    @property
    def image_bytes(self) -> int:
        return len(self.image)


class _Plan:
    def __init__(self, params: TopParams):
        self.P = params
        self.static = bytearray()
        self.buffers: list[Buffer] = []
        self.emitters: list = []            # callables () -> list of (fields, comment)
        self.outputs: list[OpOutput] = []
        L = stream_layouts(params.linear)
        self.lin_layouts = L
        self.bw = params.beat_words
        self.static_base = 0               # set once the image is laid out, before emitting
    # static data ---------------------------------------------------------------------------
    def blob(self, data: bytes) -> int:
        off = len(self.static)
        self.static += data
        self.static += bytes(_up(len(self.static), ALIGN) - len(self.static))
        return off   # relative to the static region (emitters add pl.static_base)

    def beats(self, beats: list[int], words: int) -> int:
        return self.blob(b"".join(int(b).to_bytes(words * 8, "little") for b in beats))

    def buf(self, name, rows, cols, elem) -> Buffer:
        b = Buffer(name, rows, cols, elem)
        b.need(cols * elem)
        self.buffers.append(b)
        return b

    def emit(self, fn):
        self.emitters.append(fn)


def _pack(layout, n, values):
    from accel.sim.linear_runner import pack_beats
    return pack_beats(layout, n, values)


def _check(what: str, value: int, limit: int, fix: str) -> None:
    if value > limit:
        raise CapacityError(f"{what}={value!r} exceeds the design's limit {limit}; {fix}")


def _linear_consts(pl: _Plan, op: IntLinear, expert: bool):
    """Tile descriptors and weight words of one linear layer; returns (p_off, w_off, J, K)."""
    from accel.sim.linear_runner import tile_beats
    P = pl.P.linear
    p, w = tile_beats(op, P, expert=expert, layouts=pl.lin_layouts)
    J, K = -(-op.d_out // P.t_out), -(-op.d_in // P.t_in)
    data_mask = (1 << (P.t_in * P.t_out * 8)) - 1     # first/last come from the sequencer's counters
    return pl.beats(p, pl.bw[PORT.LIN_P]), pl.beats([b & data_mask for b in w], pl.bw[PORT.LIN_W]), J, K


def _gelu(pl: _Plan, table) -> int:
    t = np.asarray(table, np.int64)
    return pl.beats(_pack(pl.lin_layouts["g"], 256, {"addr": np.arange(256), "data": t}), 1)


def _check_linear(pl: _Plan, op: IntLinear, where: str):
    P = pl.P.linear
    _check(f"{where}: d_in", op.d_in, P.max_d_in, "generate the design with a larger LinearParams.max_d_in")
    _check(f"{where}: d_out", op.d_out, P.max_d_out, "generate the design with a larger LinearParams.max_d_out")
    if op.requant.out_bits not in (8, 16):
        raise CapacityError(f"{where}: out_bits={op.requant.out_bits!r}; the linear kernel writes 8 or 16 bits")


def _linear(pl: _Plan, op: IntLinear, x: Buffer, y: Buffer, rows: int, where: str, y_row0: int = 0,
            x_row0: int = 0, mode: int = LIST.DENSE, expert: int = 0, fetch: bool = False,
            write: bool = True):
    """READ LIN of one linear (optionally gathered/scattered through expert ``expert``'s queue)."""
    P = pl.P.linear
    _check_linear(pl, op, where)
    p_off, w_off, J, K = _linear_consts(pl, op, expert=(mode == LIST.SCATTER))
    g_off = _gelu(pl, op.gelu_table) if op.gelu_table is not None else None
    out16 = op.requant.out_bits == 16
    x.need(K * P.t_in)
    if write:
        y.need(J * P.t_out * (2 if out16 else 1))
    counted = mode != LIST.DENSE

    def fn():
        ins = []
        if g_off is not None:
            ins.append((dict(op=OP.READ, mode=MODE.RAW, port=PORT.LIN_G, base_a=pl.static_base + g_off, n_beats=256,
                             wpb=1), f"{where}: GELU table"))
        if write:
            ins.append((dict(op=OP.WRITE, mode=WMODE.LIN, out16=int(out16), base_a=y.row(y_row0), stride_a=y.stride,
                             cstep_a=P.t_out * (2 if out16 else 1)), f"{where}: outputs -> {y.name}"))
        ins.append((dict(op=OP.READ, mode=MODE.LIN, list=mode, expert=expert, count_rows=int(counted),
                         n_rows=0 if counted else rows, base_a=x.row(x_row0), stride_a=x.stride, n_reps=J,
                         n_chunks=K, wa=P.t_in // 8, wb=pl.bw[PORT.LIN_W], wpb=pl.bw[PORT.LIN_P],
                         base_c=pl.static_base + p_off, base_d=pl.static_base + w_off, fetch=int(fetch)),
                    f"{where}: {J} tiles x {K} chunks"))
        if write:
            ins.append((dict(op=OP.WAIT, n_beats=0 if counted else rows * J, count_rows=int(counted),
                             expert=expert, n_reps=J), f"{where}: wait"))
        return ins
    pl.emit(fn)


def _layernorm(pl: _Plan, op: IntLayerNorm, x: Buffer, y: Buffer, rows: int, where: str, x_row0: int = 0):
    from accel.hdl.layernorm import config_layout
    Lp = pl.P.layernorm
    L = Lp.lanes
    C = op.channels
    _check(f"{where}: channels", C, Lp.max_channels, "generate the design with a larger LayerNormParams.max_channels")
    if C % L:
        raise CapacityError(f"{where}: channels={C!r} is not a multiple of the LayerNorm lanes={L}; "
                            "generate the design with lanes dividing the model width")
    nb = C // L
    cfg = _pack(config_layout(Lp), nb, {"mult": np.asarray(op.mult).reshape(nb, L),
                                         "offset": np.asarray(op.offset).reshape(nb, L),
                                         "channels": C, "shift": op.shift, "first": np.arange(nb) == 0})
    c_off = pl.beats(cfg, pl.bw[PORT.LN_C])
    x.need(2 * C)
    y.need(C)

    def fn():
        return [
            (dict(op=OP.READ, mode=MODE.RAW, port=PORT.LN_C, base_a=pl.static_base + c_off, n_beats=nb,
                  wpb=pl.bw[PORT.LN_C]), f"{where}: LayerNorm constants"),
            (dict(op=OP.WRITE, mode=WMODE.ROWS, port=0, base_a=y.row(0), stride_a=y.stride), f"{where}: -> {y.name}"),
            (dict(op=OP.READ, mode=MODE.ROWS, port=PORT.LN_X, n_rows=rows, n_chunks=nb, na=1, wa=pl.bw[PORT.LN_X],
                  base_a=x.row(x_row0), stride_a=x.stride, cstep_a=2 * L), f"{where}: {rows} rows"),
            (dict(op=OP.WAIT, n_beats=rows * nb), f"{where}: wait"),
        ]
    pl.emit(fn)


def _residual(pl: _Plan, op: IntResidualAdd, x: Buffer, b: Buffer, y: Buffer, rows: int, where: str):
    L = pl.P.residual.lanes
    D = x.cols
    if D % L:
        raise CapacityError(f"{where}: width={D!r} is not a multiple of the residual lanes={L}")
    word = int(op.mult_x) | (int(op.mult_b) << 23) | (int(op.shift) << 46)
    c_off = pl.blob(word.to_bytes(8, "little"))
    nb = D // L
    x.need(2 * D)
    b.need(D)
    y.need(2 * D)

    def fn():
        return [
            (dict(op=OP.READ, mode=MODE.RAW, port=PORT.RES_C, base_a=pl.static_base + c_off, n_beats=1, wpb=1),
             f"{where}: residual constants"),
            (dict(op=OP.WRITE, mode=WMODE.ROWS, port=1, base_a=y.row(0), stride_a=y.stride), f"{where}: -> {y.name}"),
            (dict(op=OP.READ, mode=MODE.ROWS, port=PORT.RES_I, n_rows=rows, n_chunks=nb, na=1, wa=L // 4,
                  base_a=x.row(0), stride_a=x.stride, cstep_a=2 * L, wb=L // 8, base_b=b.row(0), stride_b=b.stride,
                  cstep_b=L), f"{where}: {rows} rows"),
            (dict(op=OP.WAIT, n_beats=rows * nb), f"{where}: wait"),
        ]
    pl.emit(fn)


def _attention(pl: _Plan, op: IntAttention, qkv: Buffer, o: Buffer, rows: int, where: str):
    from accel.hdl.attention import attention_layouts
    A = pl.P.attention
    D = o.cols
    hd = D // op.heads
    if hd != A.head_dim:
        raise CapacityError(f"{where}: head_dim={hd!r} differs from the design's attention head_dim={A.head_dim}; "
                            "generate the design for this model's head width")
    _check(f"{where}: tokens", rows, A.max_seq, "generate the design with a larger AttentionParams.max_seq")
    groups = -(-op.heads // A.heads)
    cfg = _pack(attention_layouts(A)["cfg"], 1, {"exp_mult": op.exp_mult, "exp_shift": op.exp_shift,
                                                 "out_mult": op.out_mult, "out_shift": op.out_shift,
                                                 "n_q": rows, "n_k": rows})
    c_off = pl.beats(cfg, pl.bw[PORT.ATT_CFG])
    span = A.heads * hd
    qkv.need(2 * D + groups * span)
    o.need(D)
    C = hd // A.t_a
    wa = A.t_a // 8

    def fn():
        ins = []
        for g in range(groups):
            valid = min(A.heads, op.heads - g * A.heads)
            ins.append((dict(op=OP.READ, mode=MODE.RAW, port=PORT.ATT_CFG, base_a=pl.static_base + c_off, n_beats=1,
                             wpb=pl.bw[PORT.ATT_CFG]), f"{where}: head group {g} constants"))
            ins.append((dict(op=OP.WRITE, mode=WMODE.ATT, base_a=o.row(0) + g * span, stride_a=o.stride,
                             cstep_a=A.t_a, sstep_a=hd, na=valid), f"{where}: group {g} -> {o.name}"))
            base = 0
            while base < rows:
                n = min(rows - base, A.slots)
                for port, sec, r0, nr in ((PORT.ATT_Q, 0, base, n), (PORT.ATT_K, D, 0, rows), (PORT.ATT_V, 2 * D, 0, rows)):
                    ins.append((dict(op=OP.READ, mode=MODE.ROWS, port=port, whole=1, n_rows=nr, n_chunks=C,
                                     na=A.heads, wa=wa, base_a=qkv.row(r0) + sec + g * span, stride_a=qkv.stride,
                                     cstep_a=A.t_a, sstep_a=hd), f"{where}: group {g} pass at {base}: {PORT.NAMES[port]}"))
                base += n
            ins.append((dict(op=OP.WAIT, n_beats=rows * C), f"{where}: group {g} wait"))
        return ins
    pl.emit(fn)


def _gate(pl: _Plan, gate: IntGate, x: Buffer, logits: Buffer, rows: int, where: str):
    from accel.hdl.gate import config_layout
    G = pl.P.gate
    E = gate.linear.d_out
    _check(f"{where}: experts", E, G.max_experts, "generate the design with a larger GateParams.max_experts")
    _check(f"{where}: top_k", gate.top_k, G.max_k, "generate the design with a larger GateParams.max_k")
    _linear(pl, gate.linear, x, logits, rows, f"{where} logits")
    from accel.hdl.gate import gate_config
    cfg = _pack(config_layout(G), 1, gate_config(gate, G))
    c_off = pl.beats(cfg, pl.bw[PORT.GATE_C])
    logits.need(pl.bw[PORT.GATE_L] * 8)

    def fn():
        return [
            (dict(op=OP.READ, mode=MODE.RAW, port=PORT.GATE_C, base_a=pl.static_base + c_off, n_beats=1,
                  wpb=pl.bw[PORT.GATE_C]), f"{where}: gate constants"),
            (dict(op=OP.WRITE, mode=WMODE.GATE, na=gate.top_k), f"{where}: results -> expert queues"),
            (dict(op=OP.READ, mode=MODE.ROWS, port=PORT.GATE_L, n_rows=rows, n_chunks=1, na=1,
                  wa=pl.bw[PORT.GATE_L], base_a=logits.row(0), stride_a=logits.stride,
                  meta={"experts": E, "top_k": gate.top_k, "renormalize": bool(gate.renormalize)}),
             f"{where}: softmax/top-k"),
            (dict(op=OP.WAIT, n_beats=rows), f"{where}: wait"),
        ]
    pl.emit(fn)


def _moe(pl: _Plan, layer, moe: IntMoE, x: Buffer, y: Buffer, rows: int):
    P = pl.P.linear
    E = len(moe.experts)
    logits = pl.buf(f"{layer}.gate_logits", rows, E, 2)
    _gate(pl, moe.gate, x, logits, rows, f"{layer}/gate")
    for e, ex in enumerate(moe.experts):
        hidden = pl.buf(f"{layer}.expert{e}.hidden", rows, ex.fc1.d_out, 1)
        start = len(pl.emitters)
        _linear(pl, ex.fc1, x, hidden, rows, f"{layer}/expert{e}.fc1", mode=LIST.GATHER, expert=e, fetch=True)
        _linear(pl, ex.fc2, hidden, y, rows, f"{layer}/expert{e}.fc2", mode=LIST.SCATTER, expert=e, write=False)
        pl.outputs.append(OpOutput(layer, f"expert{e}.fc1", hidden, expert=e))
        body = pl.emitters[start:]
        del pl.emitters[start:]

        def fn(body=body, e=e):
            ins = [i for f in body for i in f()]
            return [(dict(op=OP.SKIP, expert=e, skip=len(ins)), f"{layer}/expert{e}: skip when no tokens")] + ins
        pl.emit(fn)
    # flush: requantize the expert accumulator into y
    c = moe.combine
    J = -(-x.cols // P.t_out)
    flush = _pack(pl.lin_layouts["p"], 1, {"kind": KIND_FLUSH, "out16": int(c.out_bits == 16), "n_tok": rows,
                                            "n_tiles": J, "mult": np.full(P.t_out, int(np.ravel(c.mult)[0])),
                                            "shift": np.full(P.t_out, int(np.ravel(c.shift)[0]))})
    f_off = pl.beats(flush, pl.bw[PORT.LIN_P])
    y.need(J * P.t_out)

    def fn():
        return [
            (dict(op=OP.WRITE, mode=WMODE.LIN, base_a=y.row(0), stride_a=y.stride, cstep_a=P.t_out),
             f"{layer}/moe: combine -> {y.name}"),
            (dict(op=OP.READ, mode=MODE.RAW, port=PORT.LIN_P, base_a=pl.static_base + f_off, n_beats=1,
                  wpb=pl.bw[PORT.LIN_P]), f"{layer}/moe: flush the expert accumulator"),
            (dict(op=OP.WAIT, n_beats=rows * J), f"{layer}/moe: wait"),
        ]
    pl.emit(fn)


def compile_model(ref: IntegerModel, params: TopParams, blocks: list[int] | None = None) -> Compiled:
    """The program and memory image that run ``ref`` for one image on a design ``params``.

    ``blocks``: only these consecutive encoder blocks, from the int16 residual stream (the
    input buffer) to the block's output; no embedding, no head (one layer of a large model)."""
    if not isinstance(params, TopParams):
        raise CapacityError(f"compile_model: params={params!r} is not a TopParams")
    cfg = ref.cfg
    T, D = cfg.tokens, cfg.dim
    P = params
    _check(f"model {cfg.name!r}: tokens", T, P.linear.max_tokens,
           "generate the design with a larger LinearParams.max_tokens")
    _check(f"model {cfg.name!r}: tokens", T, P.attention.max_seq,
           "generate the design with a larger AttentionParams.max_seq")
    pl = _Plan(P)
    out = pl.outputs

    e = ref.embed
    whole = blocks is None
    if whole:
        blocks = list(range(len(ref.blocks)))
        patches = pl.buf("input.patches", T - 1, e.patch.d_in, 1)
        branch = pl.buf("embed.patch", T, D, 1)
        _linear(pl, e.patch, patches, branch, T - 1, "embed/patch", y_row0=1)
        out.append(OpOutput("embed", "patch", branch, row0=1))
        pos = pl.buf("embed.pos", T, D, 2)
        h = pl.buf("embed.pos_add", T, D, 2)
        _residual(pl, e.add, pos, branch, h, T, "embed/pos_add")
        out.append(OpOutput("embed", "pos_add", h))
    else:
        blocks = [int(b) for b in blocks]
        if not blocks or blocks != list(range(blocks[0], blocks[0] + len(blocks))) or \
                not 0 <= blocks[0] <= blocks[-1] < len(ref.blocks):
            raise CapacityError(f"blocks={blocks!r}: pass consecutive block indices in [0, {len(ref.blocks)})")
        patches = h = pl.buf("input.stream", T, D, 2)

    for i in blocks:
        blk = ref.blocks[i]
        a = pl.buf(f"{i}.ln1", T, D, 1)
        _layernorm(pl, blk.ln1, h, a, T, f"{i}/ln1")
        out.append(OpOutput(i, "ln1", a))
        qkv = pl.buf(f"{i}.qkv", T, 3 * D, 1)
        _linear(pl, blk.qkv, a, qkv, T, f"{i}/qkv")
        out.append(OpOutput(i, "qkv", qkv))
        o = pl.buf(f"{i}.attention", T, D, 1)
        _attention(pl, blk.attention, qkv, o, T, f"{i}/attention")
        out.append(OpOutput(i, "attention", o))
        pr = pl.buf(f"{i}.proj", T, D, 1)
        _linear(pl, blk.proj, o, pr, T, f"{i}/proj")
        out.append(OpOutput(i, "proj", pr))
        x1 = pl.buf(f"{i}.res1", T, D, 2)
        _residual(pl, blk.res1, h, pr, x1, T, f"{i}/res1")
        out.append(OpOutput(i, "res1", x1))
        a2 = pl.buf(f"{i}.ln2", T, D, 1)
        _layernorm(pl, blk.ln2, x1, a2, T, f"{i}/ln2")
        out.append(OpOutput(i, "ln2", a2))
        y = pl.buf(f"{i}.mlp", T, D, 1)
        if isinstance(blk.mlp, IntMlp):
            hid = pl.buf(f"{i}.fc1", T, blk.mlp.fc1.d_out, 1)
            _linear(pl, blk.mlp.fc1, a2, hid, T, f"{i}/fc1")
            out.append(OpOutput(i, "fc1", hid))
            _linear(pl, blk.mlp.fc2, hid, y, T, f"{i}/fc2")
            out.append(OpOutput(i, "fc2", y))
        else:
            _moe(pl, i, blk.mlp, a2, y, T)
            out.append(OpOutput(i, "moe", y))
        x2 = pl.buf(f"{i}.res2", T, D, 2)
        _residual(pl, blk.res2, x1, y, x2, T, f"{i}/res2")
        out.append(OpOutput(i, "res2", x2))
        h = x2

    feats, logits = h, None
    if whole and ref.norm is not None:
        feats = pl.buf("head.norm", 1, D, 1)
        _layernorm(pl, ref.norm, h, feats, 1, "head/norm")
        out.append(OpOutput("head", "norm", feats))
    if whole and ref.head is not None:
        if ref.norm is None:
            raise CapacityError(f"model {cfg.name!r}: a classifier without a final norm takes int16 features; "
                                "the linear kernel takes int8 inputs")
        logits = pl.buf("head.logits", 1, ref.head.d_out, 2)
        _linear(pl, ref.head, feats, logits, 1, "head/head")
        out.append(OpOutput("head", "head", logits))

    # ---------------------------------------------------------------- layout
    static_base = pl.static_base = ALIGN     # the emitters add it to their static offsets
    off = static_base + _up(len(pl.static), ALIGN)
    act0 = off
    for b in pl.buffers:
        b.stride = _up(b.width, 8)
        b.offset = off
        off += _up(b.rows * b.stride, ALIGN)
    act_bytes = off - act0
    program: list[dict] = []
    for fn in pl.emitters:
        for fields, comment in fn():
            program.append({**fields, "comment": comment})   # "meta": cost-model facts, not encoded
    program.append({"op": OP.END, "comment": "end"})
    prog_off = off
    image = bytearray(prog_off + len(program) * INSTR_BYTES + 4096)   # slack: reads of padded heads/lanes
    image[static_base:static_base + len(pl.static)] = pl.static
    for k, ins in enumerate(program):
        fields = {n: v for n, v in ins.items() if n not in ("comment", "meta")}
        image[prog_off + k * INSTR_BYTES:prog_off + (k + 1) * INSTR_BYTES] = encode(**fields)
    if whole:
        pos.write(image, e.pos)
    fetch_reads = sum(1 for ins in program if ins.get("fetch"))
    return Compiled(P, cfg.name, image, prog_off, program, patches, feats, logits, out, fetch_reads,
                    len(pl.static), act_bytes, None if whole else blocks, cfg.patch_size)
