"""Trace and pair figures drawn with matplotlib alone.

ArviZ 0.2x (``az.plot_*``) and ArviZ 1.x (arviz-plots) take different keywords and return
different objects, so the package draws its few figures itself: one code path, the same figure
on both ArviZ lines. Input: ``{name: (chain, draw) array}`` and an optional ``(chain, draw)``
boolean ``diverging``.

Example:
    >>> import numpy as np
    >>> draws = {"a": np.random.default_rng(0).normal(size=(2, 50))}
    >>> fig = trace_figure(draws, np.zeros((2, 50), bool))
    >>> [ax.get_xlabel() for ax in fig.axes]
    ['a', 'draw (after warmup)']
"""

from collections.abc import Mapping

import numpy as np


def pyplot():
    """``matplotlib.pyplot`` on a non-interactive backend unless one is already file-only."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _density(ax, x: np.ndarray, color) -> None:
    """Gaussian KDE of one chain (Scott's bandwidth); a vertical line when the chain is constant."""
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size < 2 or np.ptp(x) == 0:
        if x.size:
            ax.axvline(x[0], color=color, lw=1.2)
        return
    from scipy.stats import gaussian_kde

    grid = np.linspace(x.min(), x.max(), 200)
    ax.plot(grid, gaussian_kde(x)(grid), color=color, lw=1.2)


def trace_figure(draws: Mapping[str, np.ndarray], diverging: np.ndarray | None = None, figsize=None):
    """One row per variable: per-chain densities (left) and traces (right), divergent
    transitions as ticks at the bottom of the traces."""
    plt = pyplot()
    n = len(draws)
    fig, axes = plt.subplots(n, 2, figsize=figsize or (10, 2.0 * n + 0.5), squeeze=False)
    for (name, x), (left, right) in zip(draws.items(), axes):
        x = np.asarray(x)
        chains = x.shape[0]
        for c in range(chains):
            color = f"C{c % 10}"
            _density(left, x[c].ravel(), color)
            right.plot(np.arange(x.shape[1]), x[c].reshape(x.shape[1], -1), color=color, lw=0.6, alpha=0.8)
        if diverging is not None and np.any(diverging):
            _, where = np.nonzero(np.asarray(diverging))
            lo = np.nanmin(x)
            right.plot(where, np.full(where.shape, lo), "|", color="k", markersize=10, alpha=0.7,
                       label=f"divergent ({where.size})")
            right.legend(fontsize=7, loc="upper right")
        left.set_title(name, fontsize=10)
        left.set_xlabel(name)
        left.set_ylabel("density")
        left.set_yticks([])
        right.set_title(name, fontsize=10)
        right.set_xlabel("draw (after warmup)")
        right.set_ylabel(name)
    handles = [plt.Line2D([], [], color=f"C{c % 10}") for c in range(chains)]
    axes[0, 0].legend(handles, [f"chain {c}" for c in range(chains)], fontsize=7, loc="upper right")
    return fig


def pair_figure(draws: Mapping[str, np.ndarray], diverging: np.ndarray | None = None, size: float | None = None):
    """Lower-triangle scatter of every pair of the ``(chain, draw)`` arrays in ``draws``,
    divergent draws in red with a black edge."""
    plt = pyplot()
    names = list(draws)
    k = len(names) - 1
    size = size or 2.2 + 2.3 * k
    fig, axes = plt.subplots(k, k, figsize=(size, size), squeeze=False)
    div = np.zeros(np.shape(draws[names[0]]), bool) if diverging is None else np.asarray(diverging, bool)
    for i in range(k):  # row: y = names[i + 1]
        for j in range(k):  # column: x = names[j]
            ax = axes[i, j]
            if j > i:
                ax.axis("off")
                continue
            x, y = np.asarray(draws[names[j]]), np.asarray(draws[names[i + 1]])
            ax.scatter(x[~div], y[~div], s=6, alpha=0.35, color="C0", linewidths=0)
            if div.any():
                ax.scatter(x[div], y[div], s=22, color="red", edgecolors="k", linewidths=0.6, alpha=0.9)
            if i == k - 1:
                ax.set_xlabel(names[j])
            else:
                ax.tick_params(labelbottom=False)
            if j == 0:
                ax.set_ylabel(names[i + 1])
            else:
                ax.tick_params(labelleft=False)
    return fig
