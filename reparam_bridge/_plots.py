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

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import _arviz
from ._density import partition
from ._naming import draws_to_dict


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
        n_div = 0
        if diverging is not None and np.any(diverging):
            _, where = np.nonzero(np.asarray(diverging))
            n_div = where.size
            right.margins(y=0.15)  # room under the traces for the ticks
            # x in data, y in axes coordinates: the ticks sit on the bottom edge whatever the data
            right.plot(
                where,
                np.full(where.shape, 0.04),
                "|",
                color="k",
                markersize=9,
                alpha=0.8,
                transform=right.get_xaxis_transform(),
            )
        left.set_title(name, fontsize=10)
        left.set_xlabel(name)
        left.set_ylabel("density")
        left.set_yticks([])
        right.set_title(f"{name}   (| at the bottom: {n_div} divergent)" if n_div else name, fontsize=10)
        right.set_xlabel("draw (after warmup)")
        right.set_ylabel(name)
    handles = [plt.Line2D([], [], color=f"C{c % 10}") for c in range(chains)]
    axes[0, 0].legend(handles, [f"chain {c}" for c in range(chains)], fontsize=7, loc="best", framealpha=0.8)
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


# ----------------------------------------------------------------------------------------
# the figures of rb.geometry (re-exported there)


_SPEC = re.compile(r"^(?:(log)\((?P<inner>.+)\)|(?P<plain>.+))$")
_INDEX = re.compile(r"^(?P<name>[^\[\]]+)(?:\[(?P<idx>[0-9,\s]+)\])?$")


def _posterior_arrays(posterior: Any, unconstrained: bool = False) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """``{name: (chain, draw, ...)}`` and ``diverging`` from a Posterior or an InferenceData;
    with ``unconstrained``, the sampled free arrays of a Posterior, named by their paths."""
    if hasattr(posterior, "draws") and hasattr(posterior, "sample_stats"):
        if unconstrained:
            from ._paths import leaves_with_paths

            draws = {p: np.asarray(x) for p, x in leaves_with_paths(partition(posterior.unconstrained)[0])}
        else:
            draws = draws_to_dict(posterior.model, posterior.draws)
        div = posterior.sample_stats.get("diverging")
        return draws, None if div is None else np.asarray(div, dtype=bool)
    if unconstrained:
        raise TypeError("plot: unconstrained=True needs a Posterior (an InferenceData holds constrained values only).")
    draws = {str(k): np.asarray(v) for k, v in _arviz.group(posterior, "posterior").data_vars.items()}
    stats = _arviz.group(posterior, "sample_stats")
    div = np.asarray(stats["diverging"], dtype=bool) if stats is not None and "diverging" in stats else None
    return draws, div


def _select(draws: Mapping[str, np.ndarray], spec: str) -> np.ndarray:
    """``"tau"``, ``"theta[0]"``, ``"log(tau)"``, ``"L[1,0]"`` → a ``(chain, draw)`` array."""
    m = _SPEC.match(spec.strip())
    take_log = m.group("inner") is not None
    body = (m.group("inner") or m.group("plain")).strip()
    mi = _INDEX.match(body)
    if mi is None or mi.group("name") not in draws:
        raise ValueError(
            f"plot: no variable {spec!r}; the posterior has {sorted(draws)} "
            "(select elements as 'theta[0]', take logs as 'log(tau)')."
        )
    arr = np.asarray(draws[mi.group("name")])
    if mi.group("idx"):
        idx = tuple(int(i) for i in mi.group("idx").split(","))
        try:
            arr = arr[(slice(None), slice(None), *idx)]
        except IndexError:
            raise ValueError(
                f"plot: index {idx} out of range for {mi.group('name')!r} of shape {arr.shape[2:]}."
            ) from None
    if arr.ndim != 2:
        raise ValueError(
            f"plot: {spec!r} has shape {arr.shape[2:]} per draw; select one element, e.g. '{mi.group('name')}[0]'."
        )
    if take_log:
        if not np.all(arr > 0):
            raise ValueError(f"plot: {spec!r} takes the log of a quantity that is not positive.")
        arr = np.log(arr)
    return arr


def _save(fig: Any, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def plot_pair(
    posterior: Any,
    var_names: Sequence[str],
    path: str | os.PathLike,
    *,
    unconstrained: bool = False,
    title: str | None = None,
) -> str:
    """Scatter of every pair of ``var_names`` with divergent transitions marked in red (as
    ArviZ's ``plot_pair(divergences=True)``, drawn with matplotlib so it is the same figure on
    ArviZ 0.2x and 1.x), written to the PNG ``path``.

    ``var_names`` entries are variable names as in ``to_inference_data()`` (``"mu"``),
    elements (``"theta[0]"``) or logs (``"log(tau)"``, the funnel's natural axis).
    ``posterior`` is a :class:`~reparam_bridge.Posterior` or an ArviZ ``InferenceData``.
    With ``unconstrained=True`` the axes are the sampled free arrays instead, named by their
    paths (``"theta.unconstrained[0]"``, ``"tau.unconstrained"`` = log tau): the geometry the
    sampler actually sees. Returns ``path``.
    """
    if len(var_names) < 2:
        raise ValueError("plot_pair: give at least two var_names.")
    draws, div = _posterior_arrays(posterior, unconstrained)
    selected = {spec: _select(draws, spec) for spec in var_names}
    fig = pair_figure(selected, div)
    n_div = 0 if div is None else int(div.sum())
    fig.suptitle((title + "\n" if title else "") + f"{n_div} divergent transition(s) marked in red", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_trace(
    posterior: Any,
    path: str | os.PathLike,
    var_names: Sequence[str] | None = None,
    *,
    title: str | None = None,
) -> str:
    """Trace plot (per-chain density and trace per variable, divergences as ticks at the
    bottom of the traces), with labelled axes, written to the PNG ``path``. Drawn with
    matplotlib, so it is the same figure on ArviZ 0.2x and 1.x. Returns ``path``."""
    draws, div = _posterior_arrays(posterior)
    if var_names is not None:
        draws = {spec: _select(draws, spec) if spec not in draws else draws[spec] for spec in var_names}
    draws = {k: np.asarray(v) for k, v in draws.items()}
    fig = trace_figure(draws, div)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_condition_numbers(table: Any, path: str | os.PathLike, *, title: str | None = None) -> str:
    """Bars per parameterisation from a :func:`compare` table: the condition numbers (log
    axis) and the min ESS per gradient evaluation, divergences written on the bars. The
    figure title is ``title`` (if any) over a line giving the number of parameterisations,
    counted from the table. Returns ``path``."""
    plt = pyplot()
    if hasattr(table, "index"):
        labels = [str(i) for i in table.index]
        col = lambda c: np.asarray(table[c], dtype=float)  # noqa: E731
    else:
        labels = [str(x) for x in table["label"]]
        col = lambda c: np.asarray(table[c], dtype=float)  # noqa: E731
    x = np.arange(len(labels))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(4 + 1.6 * len(labels), 3.8))
    w = 0.38
    ax1.bar(x - w / 2, col("condition_number"), w, label="covariance")
    ax1.bar(x + w / 2, col("condition_number_scaled"), w, label="correlation (after diagonal mass matrix)")
    ax1.set_yscale("log")
    ax1.set_xticks(x, labels, rotation=20, ha="right")
    ax1.set_xlabel("parameterisation")
    ax1.set_ylabel("condition number\n(unconstrained draws)")
    # headroom above the tallest bar (1.5 decades), so the legend never covers a bar
    finite = [v for v in (*col("condition_number"), *col("condition_number_scaled")) if np.isfinite(v) and v > 0]
    if finite:
        ax1.set_ylim(top=max(finite) * 30)
    ax1.legend(fontsize=7, loc="upper right", framealpha=0.9)
    bars = ax2.bar(x, col("ess_per_grad"), 0.6, color="C2")
    for b, d in zip(bars, col("divergences")):
        ax2.annotate(
            f"{int(d)} div." if np.isfinite(d) else "? div.",
            (b.get_x() + b.get_width() / 2, b.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax2.set_ylim(top=ax2.get_ylim()[1] * 1.12)  # headroom for the divergence labels
    ax2.set_xticks(x, labels, rotation=20, ha="right")
    ax2.set_xlabel("parameterisation")
    ax2.set_ylabel("min bulk ESS\nper gradient evaluation")
    n = len(labels)
    fig.suptitle(
        (f"{title}\n" if title else "")
        + f"{n} parameterisation{'s' if n != 1 else ''}: conditioning and sampling efficiency",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)
