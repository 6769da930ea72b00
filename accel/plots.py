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
