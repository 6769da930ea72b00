"""Streaming attention kernel: bit-exact with :class:`accel.models.intops.IntAttention`.

Dataflow (DESIGN.md section 5). A *pass* holds up to ``n_a * p`` query tokens on chip (``n_a``
replicas of ``p`` query slots, each slot with ``heads`` lanes, one per head in parallel) and
streams K once and V once past them::

    cfg_i --> constants (exp_mult, exp_shift, out_mult, out_shift, n_q, n_k) for one head group
    q_i   --> QLOAD : query chunks shift into per-lane rotating registers (head_dim / t_a words)
    k_i   --> K     : S[j] = q . k_j, t_a MACs per lane per cycle; running row max m;
                      S[j] written to the replica's score buffer (one row per lane, depth max_seq)
    v_i   --> V     : S[j] read back; D = m - S; u = round(D * exp_mult >> exp_shift);
                      e = EXP2_TABLE[u & 255] >> min(u >> 8, 16); sum += e; acc[c] += e * v[j, c]
                      (the K-phase multipliers are reused: t_a per lane)
              DIV   : r = floor(out_mult * 2**24 / sum), one restoring divider per lane, 24 cycles
    o_o   <-- OUT   : out = clamp8(round(acc * r >> out_shift)), one beat per query and chunk

The replicas share the broadcast K/V streams; each has its own score buffer memory (``p *
heads`` scores per word). The accumulators of all lanes form one shift chain that the output
stage drains, so no wide multiplexer is needed.

Numerics (widths follow docs/numerics.md): |S| <= head_dim * 2**14 (``score_bits`` signed);
0 <= D <= head_dim * 2**15 (``diff_bits``); D * exp_mult < 2**(diff_bits + 15); rounding uses
floor((x + 2**(s-1)) / 2**s) = (floor(x / 2**(s-1)) + 1) >> 1 for s >= 1 (and x for s = 0), exact
for any s in [0, 63] with arithmetic shifts. e <= 2**15, so a shift by min(u >> 8, 62) and by
min(u >> 8, 16) give the same result (EXP2_TABLE < 2**16). The row maximum gives e = 2**15, so
2**15 <= sum <= n_k * 2**15 (``sum_bits``) and out_mult < 2**15 <= sum keeps the quotient below
2**24: 24 restoring steps are exact. |acc| <= n_k * 2**22 (``acc_bits`` signed) and
|acc * r| < n_k * 2**46.

Streams (amaranth.lib.stream, valid/ready honoured everywhere):

* ``cfg_i`` -- one descriptor per head group: runtime constants and the query/key counts.
* ``q_i``   -- per pass, query by query, chunk by chunk: ``data[h*t_a + t] = q[i, h*dh + c*t_a + t]``
  for the head group's ``heads`` heads; ``first``/``last`` frame the pass.
* ``k_i``, ``v_i`` -- per pass, key by key, chunk by chunk, same data layout; ``first``/``last``
  frame the ``n_k * head_dim / t_a`` beats of the pass (the host replays K and V once per pass).
* ``o_o``   -- one beat per query and chunk (query order), same data layout, plus ``tok``
  (query index), ``chunk``, and ``first``/``last`` framing the whole head group.
* ``error`` -- sticky: an input beat's ``first``/``last`` disagreed with the descriptor's counts,
  or a descriptor had n_q / n_k outside [1, max_seq] (such a descriptor is dropped).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from accel.models.errors import AccelError
from accel.models.intops import ATTN_RECIP_BITS, EXP2_FRAC_BITS, EXP2_OUT_BITS, EXP2_TABLE, IntAttention

from .common import check_int_param, product_pieces, tree_sum

__all__ = ["AttentionParamError", "AttentionParams", "AttentionKernel", "attention_layouts",
           "generate_verilog", "MAX_SEQ", "MAX_MACS", "DIV_STEPS"]

MAX_SEQ = IntAttention.MAX_KEYS    # |acc * r| < keys * 2**46 stays below 2**56
# beats the output FIFO holds: the output pipeline runs without a stall, and a beat is issued only
# when a FIFO place is kept for it (``credits``), so the consumer's ready drives the FIFO's read
# side and the credit counter, not the enable of the whole output pipeline (that enable, fanned
# out from the writer's ready, was the ECP5's longest path: 22.5-24.0 ns). At least OUT_LATENCY + 1
# for one beat a cycle.
OUT_FIFO_DEPTH = 8
MAX_MACS = 4096                    # lanes * t_a: beyond this elaboration and simulation crawl
DIV_STEPS = ATTN_RECIP_BITS        # restoring-division steps: quotient < 2**24
EXP_SHIFT_SAT = EXP2_OUT_BITS + 1  # e >> s == 0 for every s >= 16 (EXP2_TABLE <= 2**15)


class AttentionParamError(AccelError, ValueError):
    """An attention-kernel parameter is out of range; the message names the value and the fix."""


def _bits(n: int) -> int:
    """Bits of an unsigned counter holding values 0..n."""
    return max(1, int(n).bit_length())


def _check_int(name: str, value, lo: int, hi: int, fix: str) -> None:
    check_int_param(AttentionParamError, "AttentionParams", name, value, lo, hi, fix)


@dataclass(frozen=True)
class AttentionParams:
    """Generator parameters of the attention kernel, fixed at elaboration time (read-only).

    ``p`` query tokens per replica tile, ``t_a`` MACs per lane (head-dim elements per cycle),
    ``heads`` heads in parallel (lanes per query), ``n_a`` replicas sharing the K/V streams,
    ``max_seq`` the longest sequence (queries and keys) and ``head_dim`` the model's head width.
    Runtime constants and lengths come in on ``cfg_i``: one kernel runs every attention layer
    of a model whose head width is ``head_dim`` and whose sequence is at most ``max_seq``.

    ``out_lanes``: output elements per head multiplied by the reciprocal per cycle (None: all
    ``t_a`` at once), so an output beat takes ``t_a // out_lanes`` cycles. Each acc x r product is
    about 28 x 25 bits (four MULT18X18D on the ECP5) and the output stage runs a few cycles a pass:
    fewer product lanes free DSP blocks for the MACs at a small cost in cycles."""
    p: int = 4
    t_a: int = 8
    heads: int = 1
    n_a: int = 1
    max_seq: int = 64
    head_dim: int = 16
    out_lanes: int | None = None

    def __post_init__(self):
        _check_int("head_dim", self.head_dim, 1, 256, "use the model's head width (dim / heads)")
        _check_int("t_a", self.t_a, 1, self.head_dim,
                   f"t_a is the number of head-dim elements per lane and cycle, at most head_dim={self.head_dim}")
        if self.head_dim % self.t_a:
            divs = [d for d in range(1, self.head_dim + 1) if self.head_dim % d == 0]
            raise AttentionParamError(
                f"AttentionParams.t_a={self.t_a!r}: must divide head_dim={self.head_dim} (each "
                f"chunk is t_a elements of one head); pick one of {divs}")
        _check_int("p", self.p, 1, 64, "p is the query tile per replica, e.g. 4-16")
        _check_int("heads", self.heads, 1, 16,
                   "heads in parallel; heads beyond it run as further head groups")
        _check_int("n_a", self.n_a, 1, 16, "n_a is the number of replicas, e.g. 1-4")
        _check_int("max_seq", self.max_seq, 1, MAX_SEQ,
                   f"above {MAX_SEQ} keys acc * reciprocal could pass 2**56 (IntAttention.MAX_KEYS); "
                   "size it to the model's token count")
        o = self.out_lanes
        if o is not None and (isinstance(o, bool) or not isinstance(o, int) or not 1 <= o <= self.t_a
                              or self.t_a % o):
            raise AttentionParamError(
                f"AttentionParams.out_lanes={o!r}: must be None or an int dividing t_a={self.t_a} (the "
                "output elements multiplied by the reciprocal per cycle)")
        macs = self.lanes * self.t_a
        if macs > MAX_MACS:
            raise AttentionParamError(
                f"AttentionParams: n_a*p*heads*t_a = {self.n_a}*{self.p}*{self.heads}*{self.t_a} = "
                f"{macs!r} MACs exceeds {MAX_MACS}; shrink p, t_a, heads or n_a")

    # derived sizes ------------------------------------------------------------------------
    @property
    def chunks(self) -> int:
        """Beats per token on every data stream: head_dim / t_a."""
        return self.head_dim // self.t_a

    @property
    def out_products(self) -> int:
        """Output elements per head multiplied by the reciprocal per cycle."""
        return self.t_a if self.out_lanes is None else self.out_lanes

    @property
    def out_steps(self) -> int:
        """Cycles an output beat takes in the product stage: t_a / out_products."""
        return self.t_a // self.out_products

    @property
    def slots(self) -> int:
        """Query tokens per pass: n_a * p."""
        return self.n_a * self.p

    @property
    def lanes(self) -> int:
        """Lanes (one query token of one head each): n_a * p * heads."""
        return self.n_a * self.p * self.heads

    @property
    def macs(self) -> int:
        return self.lanes * self.t_a

    @property
    def score_bits(self) -> int:
        """Signed width of S: |S| <= head_dim * 2**14."""
        return (self.head_dim << 14).bit_length() + 1

    @property
    def diff_bits(self) -> int:
        """Unsigned width of D = max - S <= head_dim * 2**15."""
        return (self.head_dim << 15).bit_length()

    @property
    def eprod_bits(self) -> int:
        return self.diff_bits + 15

    @property
    def sum_bits(self) -> int:
        """Unsigned width of the row sum <= max_seq * 2**15."""
        return (self.max_seq << EXP2_OUT_BITS).bit_length()

    @property
    def acc_bits(self) -> int:
        """Signed width of sum(e * v): |acc| <= max_seq * 2**22."""
        return (self.max_seq << 22).bit_length() + 1

    @property
    def len_bits(self) -> int:
        return _bits(self.max_seq)

    @property
    def tok_bits(self) -> int:
        return _bits(self.max_seq - 1)

    @property
    def chunk_bits(self) -> int:
        return _bits(self.chunks - 1)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def key(self) -> str:
        k = "p{p}-t{t_a}-h{heads}-n{n_a}-s{max_seq}-d{head_dim}".format(**self.as_dict())
        return k if self.out_lanes is None else f"{k}-o{self.out_lanes}"


# ------------------------------------------------------------------------------ layouts
def cfg_layout(p: AttentionParams) -> data.StructLayout:
    return data.StructLayout({
        "exp_mult": unsigned(15), "exp_shift": unsigned(6),
        "out_mult": unsigned(15), "out_shift": unsigned(6),
        "n_q": unsigned(p.len_bits), "n_k": unsigned(p.len_bits),
    })


def in_layout(p: AttentionParams) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(8), p.heads * p.t_a),
        "first": 1, "last": 1,
    })


def out_layout(p: AttentionParams) -> data.StructLayout:
    return data.StructLayout({
        "data": data.ArrayLayout(signed(8), p.heads * p.t_a),
        "tok": unsigned(p.tok_bits), "chunk": unsigned(p.chunk_bits),
        "first": 1, "last": 1,
    })


def attention_layouts(p: AttentionParams) -> dict:
    """Payload layouts by stream: cfg, q, k, v (inputs) and o (output)."""
    return {"cfg": cfg_layout(p), "q": in_layout(p), "k": in_layout(p), "v": in_layout(p),
            "o": out_layout(p)}


# FSM states
S_CFG, S_QLOAD, S_K, S_V, S_DIV, S_OUT = range(6)


class AttentionKernel(wiring.Component):
    """The attention kernel for one :class:`AttentionParams` (see the module docstring).

    ``out_shift_in_flight``: the output shift travels with each product through the output
    pipeline, so a descriptor accepted while the previous one's last outputs are still in it
    cannot change their shift (the default). An integrator that never changes ``out_shift``
    while outputs are in flight may pass False for the kernel's full-width output (``out_lanes``
    None): the stage then reads the configuration register, 6 flip-flops fewer. The accelerator
    top does (hdl/top.py). A serial output always carries its shift."""

    def __init__(self, params: AttentionParams | None = None, *, out_shift_in_flight: bool = True, **kwargs):
        if not isinstance(out_shift_in_flight, bool):
            raise AttentionParamError(f"AttentionKernel: out_shift_in_flight={out_shift_in_flight!r} must be a bool")
        self._shift_tag = out_shift_in_flight
        if params is None:
            params = AttentionParams(**kwargs)
        elif kwargs:
            raise AttentionParamError(f"AttentionKernel: pass either params or keyword parameters, "
                                      f"not both (got params and {sorted(kwargs)!r})")
        if not isinstance(params, AttentionParams):
            raise AttentionParamError(f"AttentionKernel: params={params!r} is not an AttentionParams")
        self._params = params
        L = attention_layouts(params)
        super().__init__({
            "cfg_i": In(stream.Signature(L["cfg"])),
            "q_i": In(stream.Signature(L["q"])),
            "k_i": In(stream.Signature(L["k"])),
            "v_i": In(stream.Signature(L["v"])),
            "o_o": Out(stream.Signature(L["o"])),
            "error": Out(1),
            "busy": Out(1),
        })

    @property
    def params(self) -> AttentionParams:
        return self._params

    def elaborate(self, platform):
        P = self._params
        m = Module()
        H, TA, C, NS, NA, PQ = P.heads, P.t_a, P.chunks, P.slots, P.n_a, P.p
        OL, OS = P.out_products, P.out_steps
        SB, DB, EB, UB, AB = P.score_bits, P.diff_bits, P.eprod_bits, P.sum_bits, P.acc_bits
        RB = ATTN_RECIP_BITS
        lanes = [(s, h) for s in range(NS) for h in range(H)]   # lane index = s * H + h
        NLN = len(lanes)

        # ---- configuration registers
        exp_mult = Signal(15)
        out_mult = Signal(15)
        out_shift = Signal(6)
        n_q = Signal(P.len_bits)
        n_k = Signal(P.len_bits)
        err = Signal()
        m.d.comb += self.error.eq(err)

        state = Signal(range(6))
        m.d.comb += self.busy.eq(state != S_CFG)
        pass_base = Signal(P.len_bits)
        nq_rem = Signal(P.len_bits)
        m.d.comb += nq_rem.eq(n_q - pass_base)
        nq_pass = Signal(range(NS + 1))
        m.d.comb += nq_pass.eq(Mux(nq_rem > NS, NS, nq_rem))

        # ---- counters
        slot = Signal(range(max(NS, 2)))     # query slot (QLOAD, OUT)
        chunk = Signal(range(max(C, 2)))     # chunk of the current token (all phases)
        key = Signal(P.tok_bits)             # key index (K, V)
        div_step = Signal(range(DIV_STEPS + 1))
        last_chunk = chunk == C - 1

        # ---- per-lane state
        # query words: rotating chain of C words per lane, word = t_a int8
        qch = [[Signal(8 * TA, name=f"q_{s}_{h}_{e}", reset_less=True) for e in range(C)]
               for (s, h) in lanes]
        # accumulators: chain of C words per lane, word = t_a x acc_bits
        acch = [[[Signal(signed(AB), name=f"acc_{s}_{h}_{e}_{t}", reset_less=True) for t in range(TA)]
                 for e in range(C)] for (s, h) in lanes]
        rmax = [Signal(signed(SB), name=f"max_{s}_{h}", reset_less=True) for (s, h) in lanes]
        rsum = [Signal(UB, name=f"sum_{s}_{h}", reset_less=True) for (s, h) in lanes]
        recip = [Signal(RB, name=f"r_{s}_{h}", reset_less=True) for (s, h) in lanes]

        # ---- score buffers, one per replica: word = p * heads scores
        wps, rps = [], []
        for r in range(NA):
            mem = Memory(shape=unsigned(PQ * H * SB), depth=P.max_seq, init=[])
            m.submodules[f"scores{r}"] = mem
            wps.append(mem.write_port())
            rps.append(mem.read_port(domain="sync"))

        # ---- handshakes
        q_ok = Signal()
        k_ok = Signal()
        v_ok = Signal()
        m.d.comb += [
            self.cfg_i.ready.eq(state == S_CFG),
            q_ok.eq(self.q_i.valid & self.q_i.ready),
            k_ok.eq(self.k_i.valid & self.k_i.ready),
            v_ok.eq(self.v_i.valid & self.v_i.ready),
        ]
        k_all = Signal()   # all K (V) beats of the pass accepted
        v_all = Signal()

        def elems(word_bits, base, n):
            return [word_bits[(base + t) * 8:(base + t + 1) * 8].as_signed() for t in range(n)]

        kdata = self.k_i.payload.data.as_value()
        qdata = self.q_i.payload.data.as_value()

        # ================= shared multipliers: K -> q * k, V -> e * v ==================
        pv = Signal()   # product register holds K products
        pvv = Signal()  # product register holds V products
        p_chunk = Signal.like(chunk, reset_less=True)
        p_key = Signal.like(key, reset_less=True)
        prod = [[Signal(signed(25), name=f"prod_{s}_{h}_{t}", reset_less=True) for t in range(TA)] for (s, h) in lanes]
        e_at_p = [Signal(16, name=f"ep_{s}_{h}", reset_less=True) for (s, h) in lanes]

        # V pipeline registers (stage 1 .. NVS), v data carried along
        NVS = 7
        vval = [Signal(name=f"vval{i}") for i in range(NVS + 1)]
        vchk = [Signal.like(chunk, name=f"vchk{i}", reset_less=True) for i in range(NVS + 1)]
        vkey = [Signal.like(key, name=f"vkey{i}", reset_less=True) for i in range(NVS + 1)]
        vdat = [Signal(8 * H * TA, name=f"vdat{i}", reset_less=True) for i in range(NVS + 1)]
        m.d.sync += [vval[0].eq(v_ok), vchk[0].eq(chunk), vkey[0].eq(key),
                     vdat[0].eq(self.v_i.payload.data.as_value())]
        for i in range(1, NVS):
            m.d.sync += [vval[i].eq(vval[i - 1]), vchk[i].eq(vchk[i - 1]), vkey[i].eq(vkey[i - 1]),
                         vdat[i].eq(vdat[i - 1])]
        # stage 1: D = max - S (score read issued at acceptance with address = key)
        d2 = [Signal(DB, name=f"d_{s}_{h}", reset_less=True) for (s, h) in lanes]
        ep3 = [Signal(EB, name=f"eprod_{s}_{h}", reset_less=True) for (s, h) in lanes]
        frac4 = [Signal(EXP2_FRAC_BITS, name=f"frac_{s}_{h}", reset_less=True) for (s, h) in lanes]
        sh4 = [Signal(range(EXP_SHIFT_SAT + 1), name=f"sh_{s}_{h}", reset_less=True) for (s, h) in lanes]
        e5 = [Signal(16, name=f"e_{s}_{h}", reset_less=True) for (s, h) in lanes]
        es_m1 = Signal(6)       # exp_shift - 1 and exp_shift == 0: registers set with exp_shift
        es_zero = Signal()
        for r in range(NA):
            m.d.comb += rps[r].addr.eq(key)
        for li, (s, h) in enumerate(lanes):
            r, l = divmod(s, PQ)
            word = rps[r].data
            off = (l * H + h) * SB
            sc = word[off:off + SB].as_signed()
            m.d.sync += d2[li].eq(rmax[li] - sc)
            m.d.sync += ep3[li].eq(d2[li] * exp_mult)
            # u registered before its split and clamp (together 10 LUT levels on ECP5)
            u = Signal(EB, name=f"u_{s}_{h}")
            m.d.sync += u.eq(Mux(es_zero, ep3[li], ((ep3[li] >> es_m1) + 1) >> 1))
            ip = u[EXP2_FRAC_BITS:]
            m.d.sync += [frac4[li].eq(u[:EXP2_FRAC_BITS]),
                         sh4[li].eq(Mux(ip >= EXP_SHIFT_SAT, EXP_SHIFT_SAT, ip))]
            rom = Memory(shape=unsigned(16), depth=256, init=[int(x) for x in EXP2_TABLE])
            m.submodules[f"exp_rom_{s}_{h}"] = rom
            rrp = rom.read_port(domain="comb")
            m.d.comb += rrp.addr.eq(frac4[li])
            # the table read and the shift in separate cycles (together 12 LUT levels on ECP5)
            tbl = Signal(16, name=f"tbl_{s}_{h}")
            sh5 = Signal.like(sh4[li], name=f"sh5_{s}_{h}")
            m.d.sync += [tbl.eq(rrp.data), sh5.eq(sh4[li]), e5[li].eq(tbl >> sh5)]

        # K input stage: the beat, its key and chunk and each lane's query chunk registered as
        # the beat is taken, so the products do not start at the input stream (on the ECP5 the
        # packer's beat through the operand multiplexer into the multipliers was the longest path)
        k0_v = Signal()
        k0_chunk = Signal.like(chunk, reset_less=True)
        k0_key = Signal.like(key, reset_less=True)
        k0_data = Signal.like(kdata, reset_less=True)
        k0_q = [Signal(8 * TA, name=f"k0_q_{s}_{h}", reset_less=True) for (s, h) in lanes]
        m.d.sync += [k0_v.eq(k_ok), k0_chunk.eq(chunk), k0_key.eq(key), k0_data.eq(kdata)]
        m.d.sync += [k0_q[li].eq(qch[li][0]) for li in range(len(lanes))]

        # multiplier inputs
        vmode = vval[NVS - 1]    # last-stage V beat present (e5 valid for it)
        m.d.sync += [pv.eq(k0_v), pvv.eq(vmode),
                     p_chunk.eq(Mux(vmode, vchk[NVS - 1], k0_chunk)),
                     p_key.eq(Mux(vmode, vkey[NVS - 1], k0_key))]
        vd5 = vdat[NVS - 1]
        for li, (s, h) in enumerate(lanes):
            qe = elems(k0_q[li], 0, TA)
            ke = elems(k0_data, h * TA, TA)
            ve = elems(vd5, h * TA, TA)
            ea = Cat(e5[li], Const(0, 1)).as_signed()      # e in [0, 2**15]: 17-bit signed
            for t in range(TA):
                a = Mux(vmode, ea, qe[t])
                b = Mux(vmode, ve[t], ke[t])
                m.d.sync += prod[li][t].eq(a * b)
            m.d.sync += e_at_p[li].eq(e5[li])

        # ================= K path: dot product, chunk accumulation, max, score write ========
        b_val = Signal()
        b_chunk = Signal.like(chunk, reset_less=True)
        b_key = Signal.like(key, reset_less=True)
        c_val = Signal()
        c_key = Signal.like(key, reset_less=True)
        dot = [Signal(signed(SB + 1), name=f"dot_{s}_{h}", reset_less=True) for (s, h) in lanes]
        sacc = [Signal(signed(SB), name=f"s_{s}_{h}", reset_less=True) for (s, h) in lanes]
        m.d.sync += [b_val.eq(pv), b_chunk.eq(p_chunk), b_key.eq(p_key),
                     c_val.eq(b_val & (b_chunk == C - 1)), c_key.eq(b_key)]
        for li in range(NLN):
            m.d.sync += dot[li].eq(tree_sum(prod[li][t] for t in range(TA)))
            with m.If(b_val):
                m.d.sync += sacc[li].eq(Mux(b_chunk == 0, dot[li], sacc[li] + dot[li]))
            with m.If(c_val):
                m.d.sync += rmax[li].eq(Mux((c_key == 0) | (sacc[li] > rmax[li]), sacc[li], rmax[li]))
        for r in range(NA):
            m.d.comb += [wps[r].addr.eq(c_key), wps[r].en.eq(c_val),
                         wps[r].data.eq(Cat(*[sacc[(r * PQ + l) * H + h] for l in range(PQ) for h in range(H)]))]
        k_busy = Signal()
        m.d.comb += k_busy.eq(k0_v | pv | b_val | c_val)

        # ================= V path: sum and accumulator chain (stage 6) ======================
        v_busy = Signal()
        m.d.comb += v_busy.eq(Cat(*vval[:NVS]).any() | pvv)

        # ================= output pipeline (free-running, into the output FIFO) ============
        # the last stage writes the FIFO (w_en ``o2_val``), whose beats are visible the cycle
        # after, as the output register's were; ``credits`` counts the FIFO places not yet kept
        m.submodules.out_fifo = ofifo = SyncFIFO(width=len(self.o_o.payload.as_value()), depth=OUT_FIFO_DEPTH)
        credits = Signal(range(OUT_FIFO_DEPTH + 1), init=OUT_FIFO_DEPTH)
        credit = Signal()
        o_read = Signal()
        m.d.comb += [credit.eq(credits != 0), o_read.eq(ofifo.r_rdy & self.o_o.ready)]
        o2_val = Signal()
        issue = Signal()
        m.d.sync += credits.eq(credits - issue + o_read)
        if OS == 1:
            o1_val = Signal()
            oq_val = Signal()
            m.d.comb += issue.eq((state == S_OUT) & credit)
            op_val = Signal()
            # stage P: the partial products of acc * r, one 18 x 18 block each, registered beside
            # their DSP blocks; stage 1 sums them (DSP -> carry chain -> carry chain in one cycle was
            # the whole design's critical path on the ECP5: 27.7 ns, 20.7 of it routing)
            pieces = [[product_pieces(acch[h][0][t], recip[h]) for t in range(TA)] for h in range(H)]  # slot 0: head
            pp = [[[Signal(v.shape(), name=f"pp_{h}_{t}_{i}", reset_less=True)
                    for i, (v, _) in enumerate(pieces[h][t])] for t in range(TA)] for h in range(H)]
            op_tok = Signal(P.tok_bits, reset_less=True)
            op_chunk = Signal.like(chunk, reset_less=True)
            op_first = Signal(reset_less=True)
            op_last = Signal(reset_less=True)
            o1 = [[Signal(signed(AB + RB + 1), name=f"o1_{h}_{t}", reset_less=True) for t in range(TA)] for h in range(H)]
            o1_tok = Signal(P.tok_bits, reset_less=True)
            o1_chunk = Signal.like(chunk, reset_less=True)
            o1_first = Signal()
            o1_last = Signal()
            # stage Q between the product and the output register: the product shifted by out_shift - 1
            # (shift, round and clamp in one cycle were the kernel's ECP5 critical path, 21.6 ns)
            oq = [Signal(signed(AB + RB + 1), name=f"oq_{i}", reset_less=True) for i in range(H * TA)]
            oq_tok = Signal(P.tok_bits, reset_less=True)
            oq_chunk = Signal.like(chunk, reset_less=True)
            oq_first = Signal()
            oq_last = Signal()
            # the clamped beat (o2), written into the FIFO
            o2 = [Signal(signed(8), name=f"o2_{i}") for i in range(H * TA)]
            o2_tok = Signal(P.tok_bits)
            o2_chunk = Signal.like(chunk)
            o2_first = Signal()
            o2_last = Signal()
            os_m1 = Signal(6)
            m.d.comb += os_m1.eq(out_shift - 1)
            tok_now = Signal(P.len_bits + 1)
            m.d.comb += tok_now.eq(pass_base + slot)
            # out_shift - 1 travels with the product: a descriptor accepted while the last products
            # are still in the pipeline (the FSM is back in CFG) must not lend them its shift
            shift = os_m1
            if self._shift_tag:
                op_sh = Signal(6, name="op_sh", reset_less=True)
                shift = Signal(6, name="o1_sh", reset_less=True)
                m.d.sync += [op_sh.eq(os_m1), shift.eq(op_sh)]
            m.d.sync += [op_val.eq(issue), o1_val.eq(op_val), oq_val.eq(o1_val),
                         op_tok.eq(tok_now), op_chunk.eq(chunk),
                         op_first.eq((tok_now == 0) & (chunk == 0)),
                         op_last.eq((tok_now == n_q - 1) & last_chunk),
                         o1_tok.eq(op_tok), o1_chunk.eq(op_chunk), o1_first.eq(op_first), o1_last.eq(op_last),
                         oq_tok.eq(o1_tok), oq_chunk.eq(o1_chunk), oq_first.eq(o1_first), oq_last.eq(o1_last)]
            for h in range(H):
                for t in range(TA):
                    m.d.sync += [pp[h][t][i].eq(v) for i, (v, _) in enumerate(pieces[h][t])]
                    m.d.sync += o1[h][t].eq(tree_sum([pp[h][t][i] << sh for i, (_, sh) in enumerate(pieces[h][t])]))
                    m.d.sync += oq[h * TA + t].eq(o1[h][t] >> shift)
                    y = Signal(signed(AB + RB + 2), name=f"y_{h}_{t}")
                    m.d.comb += y.eq((oq[h * TA + t] + 1) >> 1)
                    m.d.comb += o2[h * TA + t].eq(Mux(y > 127, 127, Mux(y < -128, -128, y)))
            m.d.comb += [o2_val.eq(oq_val), o2_tok.eq(oq_tok), o2_chunk.eq(oq_chunk),
                         o2_first.eq(oq_first), o2_last.eq(oq_last)]
        else:
            # serial: a beat goes through the reciprocal product OL elements a head at a time, one
            # piece per cycle (OS cycles a beat); the chain head stays put until the beat's last
            # piece (``issue``). Stage A selects the piece and registers it with the reciprocal
            # (which moves to the next slot at that issue); the clamp stage collects the pieces.
            os_m1 = Signal(6)
            m.d.comb += os_m1.eq(out_shift - 1)
            tok_now = Signal(P.len_bits + 1)
            m.d.comb += tok_now.eq(pass_base + slot)
            osub = Signal(range(OS))
            step = Signal()
            m.d.comb += [step.eq((state == S_OUT) & credit), issue.eq(step & (osub == OS - 1))]
            with m.If(step):
                m.d.sync += osub.eq(Mux(osub == OS - 1, 0, osub + 1))
            tags = ("tok", "chunk", "first", "last", "sub", "sh")   # sh: out_shift - 1 of the piece

            def stage(name):
                return {"val": Signal(name=f"{name}_val"),
                        "tok": Signal(P.tok_bits, name=f"{name}_tok", reset_less=True),
                        "chunk": Signal.like(chunk, name=f"{name}_chunk", reset_less=True),
                        "first": Signal(name=f"{name}_first", reset_less=True),
                        "last": Signal(name=f"{name}_last", reset_less=True),
                        "sub": Signal(range(OS), name=f"{name}_sub", reset_less=True),
                        "sh": Signal(6, name=f"{name}_sh", reset_less=True)}
            sa, s1, sq = stage("oa"), stage("o1"), stage("oq")
            oa = [[Signal(signed(AB), name=f"oa_{h}_{j}", reset_less=True) for j in range(OL)] for h in range(H)]
            oa_r = [Signal(RB, name=f"oar_{h}", reset_less=True) for h in range(H)]
            o1 = [[Signal(signed(AB + RB + 1), name=f"o1_{h}_{j}", reset_less=True) for j in range(OL)]
                  for h in range(H)]
            oq = [[Signal(signed(AB + RB + 1), name=f"oq_{h}_{j}", reset_less=True) for j in range(OL)]
                  for h in range(H)]
            oc = [[[Signal(signed(8), name=f"oc_{h}_{k}_{j}", reset_less=True) for j in range(OL)]
                   for k in range(OS - 1)] for h in range(H)]
            o2 = [Signal(signed(8), name=f"o2_{i}") for i in range(H * TA)]    # the beat into the FIFO
            o2_tok = Signal(P.tok_bits)
            o2_chunk = Signal.like(chunk)
            o2_first = Signal()
            o2_last = Signal()
            q_end = Signal()
            m.d.comb += q_end.eq(sq["val"] & (sq["sub"] == OS - 1))
            m.d.sync += [sa["val"].eq(step), sa["tok"].eq(tok_now), sa["chunk"].eq(chunk),
                         sa["first"].eq((tok_now == 0) & (chunk == 0)),
                         sa["last"].eq((tok_now == n_q - 1) & last_chunk), sa["sub"].eq(osub), sa["sh"].eq(os_m1)]
            m.d.sync += [s1[t].eq(sa[t]) for t in ("val",) + tags]
            m.d.sync += [sq[t].eq(s1[t]) for t in ("val",) + tags]
            m.d.comb += [o2_val.eq(q_end), o2_tok.eq(sq["tok"]), o2_chunk.eq(sq["chunk"]),
                         o2_first.eq(sq["first"]), o2_last.eq(sq["last"])]
            for h in range(H):
                m.d.sync += oa_r[h].eq(recip[h])                  # slot 0 is the chain head
                with m.Switch(osub):
                    for k in range(OS):
                        with m.Case(k):
                            m.d.sync += [oa[h][j].eq(acch[h][0][k * OL + j]) for j in range(OL)]
                for j in range(OL):
                    m.d.sync += [o1[h][j].eq(oa[h][j] * oa_r[h]), oq[h][j].eq(o1[h][j] >> s1["sh"])]
                clamped = []
                for j in range(OL):
                    y = Signal(signed(AB + RB + 2), name=f"y_{h}_{j}")
                    m.d.comb += y.eq((oq[h][j] + 1) >> 1)
                    clamped.append(Mux(y > 127, 127, Mux(y < -128, -128, y)))
                with m.If(sq["val"]):
                    with m.Switch(sq["sub"]):
                        for k in range(OS - 1):
                            with m.Case(k):
                                m.d.sync += [oc[h][k][j].eq(clamped[j]) for j in range(OL)]
                # the beat's last piece joins the earlier ones on the way into the FIFO
                m.d.comb += [o2[h * TA + k * OL + j].eq(oc[h][k][j]) for k in range(OS - 1) for j in range(OL)]
                m.d.comb += [o2[h * TA + (OS - 1) * OL + j].eq(clamped[j]) for j in range(OL)]
        beat = Signal.like(self.o_o.payload)
        m.d.comb += [
            beat.data.eq(Cat(*o2)), beat.tok.eq(o2_tok), beat.chunk.eq(o2_chunk),
            beat.first.eq(o2_first), beat.last.eq(o2_last),
            ofifo.w_data.eq(beat.as_value()), ofifo.w_en.eq(o2_val),
            self.o_o.valid.eq(ofifo.r_rdy), self.o_o.payload.eq(ofifo.r_data), ofifo.r_en.eq(self.o_o.ready),
        ]

        # ---- accumulator chain and sum (V stage 6 / OUT shifts)
        for li, (s, h) in enumerate(lanes):
            ch = acch[li]
            nxt = acch[li + H] if s + 1 < NS else acch[li]   # same head, next slot
            with m.If(pvv):
                first_key = p_key == 0
                for t in range(TA):
                    for e in range(C - 1):
                        m.d.sync += ch[e][t].eq(ch[e + 1][t])
                    m.d.sync += ch[C - 1][t].eq(Mux(first_key, prod[li][t], ch[0][t] + prod[li][t]))
                with m.If(p_chunk == 0):
                    m.d.sync += rsum[li].eq(Mux(first_key, e_at_p[li], rsum[li] + e_at_p[li]))
            with m.Elif(issue):
                for t in range(TA):
                    for e in range(C - 1):
                        m.d.sync += ch[e][t].eq(ch[e + 1][t])
                    m.d.sync += ch[C - 1][t].eq(nxt[0][t])
                if s + 1 < NS:
                    with m.If(last_chunk):
                        m.d.sync += recip[li].eq(recip[li + H])

        # ---- query chains (QLOAD shift-in, K rotation)
        for li, (s, h) in enumerate(lanes):
            ch = qch[li]
            with m.If(q_ok & (slot == s)):
                for e in range(C - 1):
                    m.d.sync += ch[e].eq(ch[e + 1])
                m.d.sync += ch[C - 1].eq(qdata[h * TA * 8:(h + 1) * TA * 8])
            with m.Elif(k_ok):
                for e in range(C - 1):
                    m.d.sync += ch[e].eq(ch[e + 1])
                m.d.sync += ch[C - 1].eq(ch[0])

        # ---- dividers (one per lane): r = floor(out_mult * 2**24 / sum)
        rem = [Signal(15 + RB, name=f"rem_{s}_{h}", reset_less=True) for (s, h) in lanes]
        dvs = [Signal(UB + RB - 1, name=f"dv_{s}_{h}", reset_less=True) for (s, h) in lanes]

        # ---- framing checks
        def frame_check(ok, payload, count_first, count_last):
            with m.If(ok & ((payload.first != count_first) | (payload.last != count_last))):
                m.d.sync += err.eq(1)

        kv_last = (key == n_k - 1) & last_chunk
        frame_check(q_ok, self.q_i.payload, (slot == 0) & (chunk == 0),
                    (slot == nq_pass - 1) & last_chunk)
        frame_check(k_ok, self.k_i.payload, (key == 0) & (chunk == 0), kv_last)
        frame_check(v_ok, self.v_i.payload, (key == 0) & (chunk == 0), kv_last)

        def advance_key():
            with m.If(last_chunk):
                m.d.sync += [chunk.eq(0), key.eq(key + 1)]
            with m.Else():
                m.d.sync += chunk.eq(chunk + 1)

        # ================= control FSM ===================================================
        with m.Switch(state):
            with m.Case(S_CFG):
                with m.If(self.cfg_i.valid):
                    c = self.cfg_i.payload
                    bad = ((c.n_q == 0) | (c.n_k == 0) | (c.n_q > P.max_seq) | (c.n_k > P.max_seq))
                    with m.If(bad):
                        m.d.sync += err.eq(1)
                    with m.Else():
                        m.d.sync += [exp_mult.eq(c.exp_mult),
                                     es_m1.eq(c.exp_shift - 1), es_zero.eq(c.exp_shift == 0),
                                     out_mult.eq(c.out_mult), out_shift.eq(c.out_shift),
                                     n_q.eq(c.n_q), n_k.eq(c.n_k), pass_base.eq(0),
                                     slot.eq(0), chunk.eq(0), state.eq(S_QLOAD)]
            with m.Case(S_QLOAD):
                m.d.comb += self.q_i.ready.eq(1)
                with m.If(q_ok):
                    with m.If(last_chunk):
                        m.d.sync += chunk.eq(0)
                        with m.If(slot == nq_pass - 1):
                            m.d.sync += [slot.eq(0), key.eq(0), state.eq(S_K)]
                        with m.Else():
                            m.d.sync += slot.eq(slot + 1)
                    with m.Else():
                        m.d.sync += chunk.eq(chunk + 1)
            with m.Case(S_K):
                m.d.comb += self.k_i.ready.eq(~k_all)
                with m.If(k_ok):
                    advance_key()
                    with m.If(kv_last):
                        m.d.sync += k_all.eq(1)
                with m.If(k_all & ~k_busy):
                    m.d.sync += [k_all.eq(0), key.eq(0), chunk.eq(0), state.eq(S_V)]
            with m.Case(S_V):
                m.d.comb += self.v_i.ready.eq(~v_all)
                with m.If(v_ok):
                    advance_key()
                    with m.If(kv_last):
                        m.d.sync += v_all.eq(1)
                with m.If(v_all & ~v_busy):
                    m.d.sync += [v_all.eq(0), div_step.eq(0), state.eq(S_DIV)]
                    for li in range(NLN):
                        m.d.sync += [rem[li].eq(out_mult << RB), dvs[li].eq(rsum[li] << (RB - 1)),
                                     recip[li].eq(0)]
            with m.Case(S_DIV):
                for li in range(NLN):
                    ge = rem[li] >= dvs[li]
                    m.d.sync += [rem[li].eq(Mux(ge, rem[li] - dvs[li], rem[li])),
                                 dvs[li].eq(dvs[li] >> 1),
                                 recip[li].eq(Cat(ge, recip[li][:-1]))]
                m.d.sync += div_step.eq(div_step + 1)
                with m.If(div_step == DIV_STEPS - 1):
                    m.d.sync += [slot.eq(0), chunk.eq(0), state.eq(S_OUT)]
            with m.Case(S_OUT):
                with m.If(issue):
                    with m.If(last_chunk):
                        m.d.sync += chunk.eq(0)
                        with m.If(slot == nq_pass - 1):
                            m.d.sync += slot.eq(0)
                            with m.If(nq_rem <= NS):
                                m.d.sync += state.eq(S_CFG)
                            with m.Else():
                                m.d.sync += [pass_base.eq(pass_base + NS), state.eq(S_QLOAD)]
                        with m.Else():
                            m.d.sync += slot.eq(slot + 1)
                    with m.Else():
                        m.d.sync += chunk.eq(chunk + 1)
        return m


def generate_verilog(params: AttentionParams, name: str = "attention_kernel") -> str:
    """Verilog of the kernel for ``params`` (ports ``cfg_i__*``, ``q_i__*``, ``k_i__*``,
    ``v_i__*``, ``o_o__*``, ``error``, ``busy``, ``clk``, ``rst``)."""
    from amaranth.back import verilog
    top = AttentionKernel(params)
    return verilog.convert(top, name=name, emit_src=False)
