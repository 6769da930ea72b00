"""PNG plots: the search's explored designs with their Pareto fronts."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another with less (or equal) cost and more FPS, by cost."""
    front, best = [], -1.0
    for cost, fps in sorted(points, key=lambda p: (p[0], -p[1])):
        if fps > best:
            front.append((cost, fps))
            best = fps
    return front


def pareto_plot(result, path: str, title: str) -> None:
    fits = [p for p in result.explored if p.fits]
    other = [p for p in result.explored if not p.fits]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind in zip(axes, ("dsp", "bram")):
        ax.scatter([p.resources[kind] for p in other], [p.fps for p in other], s=6, c="#cccccc", label="does not fit")
        ax.scatter([p.resources[kind] for p in fits], [p.fps for p in fits], s=8, c="#4477aa", label="fits")
        front = pareto_front([(p.resources[kind], p.fps) for p in fits])
        if front:
            ax.step([c for c, _ in front], [f for _, f in front], where="post", c="#cc3311", label="Pareto front")
        if result.best is not None:
            ax.scatter([result.best.resources[kind]], [result.best.fps], marker="*", s=160, c="#ee7733", label="chosen")
            ax.axvline(result.best.budget[kind], ls="--", c="k", lw=0.8, label="budget")
        ax.set_xlabel(f"{kind.upper()} used")
        ax.set_ylabel("predicted FPS (batch 1)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cycles_per_layer_plot(by_op: list[dict], path: str, title: str) -> None:
    """Cycles of each op of one image in program order: the RTL simulation's count beside the
    compiler cost model's prediction (``by_op``: ModelSimResult.cycles_by_op)."""
    if not by_op:
        raise ValueError("cycles_per_layer_plot: no ops to plot (the simulation ran no image)")
    n = len(by_op)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.32 * n + 2), 4.6))
    xs = range(n)
    ax.bar([x - 0.2 for x in xs], [d["cycles"] for d in by_op], width=0.4, color="#4477aa", label="RTL simulation")
    ax.bar([x + 0.2 for x in xs], [d["predicted"] for d in by_op], width=0.4, color="#ee7733",
           label="cost model (accel.compiler_cost)")
    layers = [d["op"].split("/")[0] for d in by_op]
    for x in range(1, n):
        if layers[x] != layers[x - 1]:
            ax.axvline(x - 0.5, c="k", lw=0.5, alpha=0.4)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([d["op"] for d in by_op], rotation=90, fontsize=7)
    ax.set_ylabel("cycles")
    ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    total, pred = sum(d["cycles"] for d in by_op), sum(d["predicted"] for d in by_op)
    ax.set_title(f"{title}: {total:,} cycles in RTL, {pred:,} predicted ({(pred / total - 1) * 100:+.1f}%)"
                 if total else title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
