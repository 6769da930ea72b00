"""Design-space exploration: the best design for a model on a board, by a two-stage heuristic
(after UbiMoE) checked against exhaustive search over the same space and cost model.

Space: linear kernel (t_in, t_out, n_lanes), attention kernel (p, t_a, heads in parallel, n_a),
at the board's target clock; buffers are sized to the model. Constraints: the board's usable
LUT, FF, DSP, BRAM (after shell reservations and utilization caps) and off-chip bandwidth, which
enters the latency (weights stream in while the previous op computes). Objective: frames per
second at batch 1 (``latency``) or with the attention and linear kernels overlapped across
images (``throughput``).

Stage 1 splits the DSP budget between the attention block and the linear/MoE block: for each
split it takes the fastest attention configuration and the fastest linear configuration within
their shares (each ranked by its own kernel's cycles on the model), so the two blocks' latencies
can be balanced. Stage 2 evaluates whole designs for the best splits and hill-climbs one
parameter at a time under every resource (BRAM, LUT, FF) and the bandwidth.

Every cost-model call is an evaluation: a kernel-level ranking in stage 1 counts one, a whole
design counts one. Exhaustive search evaluates every design of the space once.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from accel.boards import RESOURCE_KINDS, Board
from accel.hdl.attention import AttentionParamError
from accel.hdl.linear import LinearParamError
from accel.models.config import ModelConfig
from accel.perf import Design, DoesNotFit, Performance, check_model_fits_board, design_for, evaluate

__all__ = ["Space", "SearchResult", "default_space", "heuristic_search", "exhaustive_search", "OBJECTIVES"]

OBJECTIVES = ("latency", "throughput")


@dataclass(frozen=True)
class Space:
    t_in: tuple[int, ...] = (4, 8, 16, 32)
    t_out: tuple[int, ...] = (4, 8, 16, 32, 64)
    n_lanes: tuple[int, ...] = (1, 2, 4, 8, 16)
    ln_lanes: tuple[int, ...] = (4, 8, 16, 32, 64)   # LayerNorm / residual lanes (the linear block's)
    p: tuple[int, ...] = (2, 4, 8, 16)
    t_a: tuple[int, ...] = (4, 8, 16, 32)
    heads: tuple[int, ...] = (1, 2, 3, 4)
    n_a: tuple[int, ...] = (1, 2, 4)
    ln_emit_lanes: int | None = None   # LayerNorm lanes normalized per cycle, at most (None: all lanes)
    ln_stats_steps: int = 4            # LayerNorm isqrt/division steps per cycle (accel.perf.design_for)
    residual_mul_lanes: int | None = None   # residual lanes multiplied per cycle, at most (None: all lanes)
    att_out_lanes: int | None = None   # attention outputs multiplied by the reciprocal per cycle, at most (None: t_a)

    def linear_points(self):
        return list(itertools.product(self.t_in, self.t_out, self.n_lanes, self.ln_lanes))

    def attention_points(self, cfg: ModelConfig):
        return [(p, ta, h, na) for p, ta, h, na in itertools.product(self.p, self.t_a, self.heads, self.n_a)
                if cfg.head_dim % ta == 0 and h <= cfg.heads]


def default_space() -> Space:
    return Space()


@dataclass
class SearchResult:
    best: Performance | None
    evaluations: int
    seconds: float
    explored: list[Performance] = field(default_factory=list)
    method: str = ""

    def objective(self, objective: str) -> float:
        return _score(self.best, objective) if self.best else 0.0


def _score(perf: Performance, objective: str) -> float:
    return perf.fps if objective == "latency" else perf.throughput_fps


class _Evaluator:
    """Builds and evaluates designs, counting every evaluation and skipping invalid parameter
    combinations (a generator's own checks, e.g. too many MACs)."""

    def __init__(self, cfg: ModelConfig, board: Board, multipliers_in_luts: bool = False,
                 ln_emit_lanes: int | None = None, ln_stats_steps: int = 4,
                 residual_mul_lanes: int | None = None, att_out_lanes: int | None = None):
        self.cfg, self.board = cfg, board
        self.multipliers_in_luts = multipliers_in_luts
        self.ln_emit_lanes = ln_emit_lanes
        self.ln_stats_steps = ln_stats_steps
        self.residual_mul_lanes = residual_mul_lanes
        self.att_out_lanes = att_out_lanes
        self.count = 0
        self.explored: list[Performance] = []
        self._cache: dict[tuple, Performance | None] = {}

    def design(self, lin, att) -> Design | None:
        try:
            t_in, t_out, n_lanes, ln_lanes = lin
            return design_for(self.cfg, t_in, t_out, n_lanes, *att, ln_lanes=ln_lanes,
                              clock_mhz=self.board.target_mhz, ln_emit_lanes=self.ln_emit_lanes,
                              stats_steps=self.ln_stats_steps, residual_mul_lanes=self.residual_mul_lanes,
                              att_out_lanes=self.att_out_lanes)
        except (LinearParamError, AttentionParamError):
            return None

    def __call__(self, lin, att) -> Performance | None:
        key = (lin, att)
        if key in self._cache:
            return self._cache[key]
        d = self.design(lin, att)
        perf = None
        if d is not None:
            self.count += 1
            perf = evaluate(self.cfg, self.board, d, multipliers_in_luts=self.multipliers_in_luts)
            self.explored.append(perf)
        self._cache[key] = perf
        return perf


def _feasible(perf: Performance | None) -> bool:
    return perf is not None and perf.fits


def _no_fit_error(cfg: ModelConfig, board: Board, explored: list[Performance]) -> DoesNotFit:
    """The least-infeasible design, and by how much its worst resource overshoots."""
    def worst(p: Performance):
        return max(((p.resources[k] - p.budget[k]) / max(p.budget[k], 1), k) for k in RESOURCE_KINDS)
    best = min(explored, key=lambda p: worst(p)[0])
    _, kind = worst(best)
    need, have = best.resources[kind], best.budget[kind]
    return DoesNotFit(f"no design of the search space fits model {cfg.name!r} on board {board.name!r}: the smallest "
                      f"needs {need:.0f} {kind.upper()}, the board allows {have} (caps applied), short by "
                      f"{need - have:.0f}; choose a larger board or a smaller model")


def exhaustive_search(cfg: ModelConfig, board: Board, space: Space | None = None, objective: str = "latency",
                      progress: Callable[[str], None] | None = None, *,
                      multipliers_in_luts: bool = False) -> SearchResult:
    space = space or default_space()
    check_model_fits_board(cfg, board)
    t0 = time.perf_counter()
    ev = _Evaluator(cfg, board, multipliers_in_luts, space.ln_emit_lanes, space.ln_stats_steps,
                    space.residual_mul_lanes, space.att_out_lanes)
    lin_pts, att_pts = space.linear_points(), space.attention_points(cfg)
    best = None
    total = len(lin_pts) * len(att_pts)
    for i, (lin, att) in enumerate(itertools.product(lin_pts, att_pts)):
        perf = ev(lin, att)
        if _feasible(perf) and (best is None or _score(perf, objective) > _score(best, objective)):
            best = perf
        if progress and i % max(1, total // 10) == 0:
            progress(f"exhaustive: {i}/{total} designs")
    if best is None:
        raise _no_fit_error(cfg, board, ev.explored)
    return SearchResult(best, ev.count, time.perf_counter() - t0, ev.explored, "exhaustive")


def heuristic_search(cfg: ModelConfig, board: Board, space: Space | None = None, objective: str = "latency",
                     progress: Callable[[str], None] | None = None, top: int = 3, *,
                     multipliers_in_luts: bool = False) -> SearchResult:
    """``multipliers_in_luts``: multipliers beyond the DSP budget cost LUTs instead (accel.perf.evaluate);
    the DSP split of stage 1 then counts the LUT budget as DSP blocks' worth of multipliers."""
    space = space or default_space()
    check_model_fits_board(cfg, board)
    t0 = time.perf_counter()
    ev = _Evaluator(cfg, board, multipliers_in_luts, space.ln_emit_lanes, space.ln_stats_steps,
                    space.residual_mul_lanes, space.att_out_lanes)
    say = progress or (lambda s: None)
    lin_pts, att_pts = space.linear_points(), space.attention_points(cfg)
    dsp_budget = board.budget("dsp")
    if multipliers_in_luts:
        from accel.perf import LUT_PER_DSP
        dsp_budget += board.budget("lut") // LUT_PER_DSP.get(board.family, 10**9)

    # ---- stage 1: kernel-level rankings, then the DSP split
    ref_att, ref_lin = att_pts[0], lin_pts[0]
    lin_rank = []   # (cycles of everything but attention, dsp, point)
    for lin in lin_pts:
        perf = ev(lin, ref_att)
        if perf is not None:
            lin_rank.append((perf.cycles_per_image - perf.cycles_by_kind["attention"],
                             _all_dsp(perf) - _att_dsp(perf), lin))
    att_rank = []
    for att in att_pts:
        perf = ev(ref_lin, att)
        if perf is not None:
            att_rank.append((perf.cycles_by_kind["attention"], _att_dsp(perf), att))
    say(f"stage 1: ranked {len(lin_rank)} linear and {len(att_rank)} attention configurations")
    splits = []
    for share in [i / 20 for i in range(1, 20)]:
        a_cap, l_cap = share * dsp_budget, (1 - share) * dsp_budget
        a_ok = sorted(x for x in att_rank if x[1] <= a_cap)
        l_ok = sorted(x for x in lin_rank if x[1] <= l_cap)
        if not a_ok or not l_ok:
            continue
        a, l = a_ok[0], l_ok[0]
        est = a[0] + l[0] if objective == "latency" else max(a[0], l[0])
        splits.append((est, share, [x[2] for x in l_ok[:top]], [x[2] for x in a_ok[:top]]))
    splits.sort()
    say(f"stage 1: {len(splits)} DSP splits; best attention share {splits[0][1]:.2f}" if splits else
        "stage 1: no DSP split fits")

    # ---- stage 2: whole designs for the best splits, then hill climbing under all resources
    best = None
    for _, share, lins, atts in splits[:top]:
        for lin in lins:
            for att in atts:
                perf = ev(lin, att)
                if _feasible(perf) and (best is None or _score(perf, objective) > _score(best, objective)):
                    best = perf
    if best is None:
        # nothing fits at the DSP split (another resource binds): start from the smallest designs,
        # or say what does not fit when none of them does
        for lin in sorted(lin_pts, key=lambda x: x[0] * x[1] * x[2] * x[3])[:3]:
            for att in sorted(att_pts, key=lambda x: x[0] * x[1] * x[2] * x[3])[:3]:
                perf = ev(lin, att)
                if _feasible(perf) and (best is None or _score(perf, objective) > _score(best, objective)):
                    best = perf
        if best is None:
            raise _no_fit_error(cfg, board, ev.explored)
        say("stage 2: no design of the DSP splits fits; climbing from the smallest designs")
    axes_l = (space.t_in, space.t_out, space.n_lanes, space.ln_lanes)
    axes_a = (space.p, space.t_a, space.heads, space.n_a)
    improved = True
    while improved:
        improved = False
        cur_l, cur_a = _point(best, "l"), _point(best, "a")
        for lin, att in _neighbours(cur_l, cur_a, axes_l, axes_a):
            perf = ev(lin, att)
            if _feasible(perf) and _score(perf, objective) > _score(best, objective) * (1 + 1e-9):
                best, improved = perf, True
        say(f"stage 2: {_score(best, objective):.1f} FPS after {ev.count} evaluations")
    return SearchResult(best, ev.count, time.perf_counter() - t0, ev.explored, "heuristic")


def _all_dsp(perf: Performance) -> float:
    """DSP blocks of every multiplier, before any goes to LUTs."""
    return sum(b["dsp"] for b in perf.blocks.values())


def _att_dsp(perf: Performance) -> float:
    return perf.blocks["attention"]["dsp"]


def _point(perf: Performance, which: str):
    d = perf.design
    if which == "l":
        return (d.linear.t_in, d.linear.t_out, d.linear.n_lanes, d.ln_lanes)
    a = d.attention
    return (a.p, a.t_a, a.heads, a.n_a)


def _neighbours(lin, att, axes_l, axes_a):
    for i, axis in enumerate(axes_l):
        k = axis.index(lin[i])
        for j in (k - 1, k + 1):
            if 0 <= j < len(axis):
                yield lin[:i] + (axis[j],) + lin[i + 1:], att
    for i, axis in enumerate(axes_a):
        k = axis.index(att[i])
        for j in (k - 1, k + 1):
            if 0 <= j < len(axis):
                yield lin, att[:i] + (axis[j],) + att[i + 1:]
