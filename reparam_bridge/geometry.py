"""Posterior geometry: curvature at the mode, side-by-side sampler comparisons of
parameterisations, and the plots that go with them.

The density studied is always the one the sampler sees: ``rb.log_density(..., jacobian=True)``
over the free (unconstrained) arrays. Swapping one wrapper for another (say
``rb.LocScale(..., centered=1.0)`` for ``centered=0.0``) changes that density's geometry and
nothing else, and these tools measure the change.

Example:
    >>> import jax.numpy as jnp, numpyro.distributions as dist
    >>> import reparam_bridge as rb
    >>> model = {"x": rb.Real(jnp.zeros(2))}
    >>> log_joint = lambda m: dist.Normal(0.0, jnp.array([1.0, 10.0])).log_prob(m["x"]).sum()
    >>> report = rb.geometry.curvature(model, log_joint, at=model)
    >>> round(report.condition_number, 2), report.largest[0][0], report.smallest[0][0]
    (100.0, 'x.unconstrained[0]', 'x.unconstrained[1]')
"""

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from . import _arviz
from ._centredness import learn_centredness  # noqa: F401 - re-exported: rb.geometry.learn_centredness
from ._checks import check_choice
from ._density import check_bijective, partition
from ._naming import draws_to_dict
from ._neutra import NeuTra, neutra  # noqa: F401 - re-exported: rb.geometry.neutra
from ._plots import plot_condition_numbers, plot_pair, plot_trace  # noqa: F401 - re-exported
from ._util import coordinate_names, neg_log_density_hessian  # noqa: F401 - coordinate_names: public here before _util

__all__ = [
    "Curvature",
    "curvature",
    "compare",
    "plot_pair",
    "plot_trace",
    "plot_condition_numbers",
    "learn_centredness",
    "neutra",
    "NeuTra",
]


def _dominant(vector: np.ndarray, names: Sequence[str], top: int, mass: float = 0.9) -> list[tuple[str, float]]:
    """The coordinates carrying most of a unit eigenvector's squared weight (at most ``top``,
    stopping once ``mass`` of the weight is covered)."""
    w = np.asarray(vector) ** 2
    order = np.argsort(-w)
    out, covered = [], 0.0
    for i in order[:top]:
        out.append((names[i], float(w[i])))
        covered += float(w[i])
        if covered >= mass:
            break
    return out


@dataclass(frozen=True)
class Curvature:
    """What :func:`curvature` returns: the negative Hessian ``H`` of the unconstrained
    log-density at ``at`` (the precision of the Laplace approximation) and its spectrum.

    Attributes:
        at: the wrapped model the Hessian was taken at.
        names: one label per free coordinate (dotted path, then element index).
        hessian: ``H = -∇² log p``, ``(n, n)`` float64, in the order of ``names``.
        eigenvalues: of ``H``, ascending (curvatures; ``1/sqrt`` is a posterior sd along
            the eigen-direction).
        eigenvectors: columns matching ``eigenvalues``.
        condition_number: ``λ_max / λ_min`` (``inf`` if ``H`` is not positive definite, i.e.
            ``at`` is not a mode).
        largest, smallest: ``(name, weight)`` of the coordinates that dominate the stiffest
            and the flattest eigen-directions (weights are squared eigenvector entries, sum 1).
        grad_norm: norm of the gradient of ``log p`` at ``at`` (~0 at a mode).
    """

    at: PyTree
    names: tuple[str, ...]
    hessian: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    condition_number: float
    largest: list[tuple[str, float]] = field(default_factory=list)
    smallest: list[tuple[str, float]] = field(default_factory=list)
    grad_norm: float = 0.0

    def __str__(self) -> str:
        fmt = lambda d: ", ".join(f"{n} ({w:.0%})" for n, w in d)  # noqa: E731
        lines = [
            f"curvature of the unconstrained log-density ({len(self.names)} coordinates, |grad| = {self.grad_norm:.2g})",
            f"  eigenvalues: min {self.eigenvalues[0]:.4g}, max {self.eigenvalues[-1]:.4g}",
            f"  condition number: {self.condition_number:.4g}",
            f"  stiffest direction (largest eigenvalue): {fmt(self.largest)}",
            f"  flattest direction (smallest eigenvalue): {fmt(self.smallest)}",
        ]
        if not self.eigenvalues[0] > 0:
            lines.append("  not positive definite: this point is not a mode (a saddle, a ridge or a funnel neck)")
        return "\n".join(lines)


def curvature(
    model: PyTree,
    log_joint: Callable[..., Any],
    *args: Any,
    at: PyTree | None = None,
    top: int = 3,
    **map_kwargs: Any,
) -> Curvature:
    """Hessian of the unconstrained log-density (``jacobian=True``) at its mode, its
    eigenvalues, condition number and the parameters along the worst directions.

    Args:
        model: the wrapped model.
        log_joint: ``log_joint(unwrapped_model, *args)``.
        at: where to take the Hessian (a wrapped model of the same structure). Default: the
            mode found by ``rb.map_estimate(model, log_joint, *args, jacobian=True,
            **map_kwargs)``. Some densities have no mode — the centred funnel of a
            hierarchical model grows without bound as the scale goes to 0 — and then there is
            no curvature to report; use :func:`compare` (draws) instead.
        top: at most this many coordinates are listed per worst direction.

    For a Gaussian posterior ``N(m, Σ)`` over the free arrays, ``hessian`` is ``Σ⁻¹`` and
    ``condition_number`` is the condition number of ``Σ``.

    Example:
        >>> import jax.numpy as jnp, numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> model = {"s": rb.Positive(1.0, prior=dist.LogNormal(0.0, 0.1)), "x": rb.Real(0.0)}
        >>> log_joint = lambda m: dist.Normal(0.0, 2.0).log_prob(m["x"])
        >>> report = rb.geometry.curvature(model, log_joint, progress_bar=False)
        >>> round(report.condition_number)  # precisions 1/0.1² and 1/2²
        400
    """
    check_bijective(model, "geometry.curvature")
    if at is None:
        from ._map import map_estimate

        at = map_estimate(model, log_joint, *args, jacobian=True, **map_kwargs).model
    elif map_kwargs:
        raise TypeError(f"curvature(at=...) takes no optimiser arguments, got {sorted(map_kwargs)}.")
    _, _, names, _, grad, hess = neg_log_density_hessian(log_joint, at, args)
    H = np.asarray(hess, dtype=np.float64)
    if not np.all(np.isfinite(H)):
        bad = sorted({names[i] for i in np.argwhere(~np.isfinite(H))[:, 0]})
        raise ValueError(f"geometry.curvature: the Hessian is not finite at the given point (coordinates {bad}).")
    eigenvalues, eigenvectors = np.linalg.eigh(H)
    lo, hi = eigenvalues[0], eigenvalues[-1]
    cond = float(hi / lo) if lo > 0 else math.inf
    return Curvature(
        at=at,
        names=names,
        hessian=H,
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors,
        condition_number=cond,
        largest=_dominant(eigenvectors[:, -1], names, top),
        smallest=_dominant(eigenvectors[:, 0], names, top),
        grad_norm=float(np.linalg.norm(np.asarray(grad))),
    )


# ----------------------------------------------------------------------------------------
# diagnostics of one run


def _per_element(draws: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Every scalar quantity as a ``(chain, draw)`` array."""
    out = []
    for arr in draws.values():
        arr = np.asarray(arr, dtype=np.float64)
        out.extend(np.moveaxis(arr.reshape(*arr.shape[:2], -1), -1, 0))
    return out


def _condition_numbers(posterior: Any) -> tuple[float, float]:
    """Condition numbers of the covariance and of the correlation matrix of the unconstrained
    draws (the latter is what NUTS sees after adapting its diagonal mass matrix)."""
    leaves = jax.tree_util.tree_leaves(partition(posterior.unconstrained)[0])
    z = np.concatenate([np.asarray(x, np.float64).reshape(x.shape[0] * x.shape[1], -1) for x in leaves], axis=1)
    if z.shape[1] == 1:
        return 1.0, 1.0
    cov = np.cov(z, rowvar=False)
    sd = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd, sd)
    out = []
    for m in (cov, corr):
        ev = np.linalg.eigvalsh(m)
        out.append(float(ev[-1] / ev[0]) if ev[0] > 0 else math.inf)
    return out[0], out[1]


def _mean_stat(stats: Mapping[str, Any], name: str) -> float:
    return float(np.mean(stats[name])) if name in stats else math.nan


def summarize(posterior: Any, seconds: float = math.nan) -> dict[str, float]:
    """The row :func:`compare` reports for one :class:`~reparam_bridge.Posterior`; a sample
    stat the posterior lacks (say a ``rb.blackjax.posterior`` built without ``info``) gives
    ``nan`` in the columns that need it."""
    draws = draws_to_dict(posterior.model, posterior.draws)
    elems = _per_element(draws)
    ess_bulk = [_arviz.ess(x, "bulk") for x in elems]
    ess_tail = [_arviz.ess(x, "tail") for x in elems]
    rhat = [_arviz.rhat(x) for x in elems]
    stats = posterior.sample_stats or {}
    n_grad = int(np.sum(stats["n_steps"])) if "n_steps" in stats else math.nan
    min_bulk = float(np.nanmin(ess_bulk))
    cond, cond_scaled = _condition_numbers(posterior)
    return {
        "divergences": int(np.sum(stats["diverging"])) if "diverging" in stats else math.nan,
        "min_ess_bulk": min_bulk,
        "min_ess_tail": float(np.nanmin(ess_tail)),
        "ess_per_grad": min_bulk / max(n_grad, 1) if "n_steps" in stats else math.nan,
        "ess_per_second": min_bulk / seconds if seconds > 0 else math.nan,
        "step_size": _mean_stat(stats, "step_size"),
        "mean_tree_depth": _mean_stat(stats, "tree_depth"),
        "max_rhat": float(np.nanmax(rhat)),
        "condition_number": cond,
        "condition_number_scaled": cond_scaled,
        "n_grad": n_grad,
        "seconds": seconds,
    }


def _table(rows: dict[str, dict[str, float]]) -> Any:
    columns: dict[str, list] = {"label": list(rows)}
    for row in rows.values():
        for k, v in row.items():
            columns.setdefault(k, []).append(v)
    try:
        import pandas as pd
    except ImportError:
        return columns
    return pd.DataFrame(columns).set_index("label")


def compare(
    models: Mapping[str, tuple[PyTree, Callable[..., Any]]],
    *args: Any,
    key: PRNGKeyArray,
    baseline: str | None = None,
    return_posteriors: bool = False,
    num_warmup: int = 1000,
    num_samples: int = 1000,
    num_chains: int = 4,
    progress_bar: bool = False,
    **sample_kwargs: Any,
) -> Any:
    """Sample each parameterisation with ``rb.sample`` under identical settings (same key,
    same warmup, same kernel options) and tabulate how well each one sampled.

    Args:
        models: ``{label: (wrapped_model, log_joint)}``, e.g. the same hierarchical model
            with ``rb.LocScale(..., centered=1.0)`` and ``centered=0.0``.
        *args: data, passed to every ``log_joint``.
        key: one PRNG key, used for every run.
        baseline: label that ``ess_per_grad_ratio`` is relative to (default: the first).
        return_posteriors: also return ``{label: Posterior}``.
        num_warmup, num_samples, num_chains, progress_bar, **sample_kwargs: ``rb.sample``'s.

    Returns:
        A table, one row per label — a ``pandas.DataFrame`` indexed by label when pandas is
        importable, else a dict of columns (with a ``"label"`` column) — with columns

        - ``divergences``: divergent transitions after warmup;
        - ``min_ess_bulk`` / ``min_ess_tail``: smallest ArviZ bulk / tail ESS over every
          scalar of the *constrained* values (comparable across parameterisations);
        - ``ess_per_grad``: ``min_ess_bulk`` per gradient evaluation, counting the leapfrog
          steps of the **sampling** phase only (``n_steps``; NumPyro does not report warmup
          steps), and ``ess_per_grad_ratio``, that divided by the baseline's;
        - ``ess_per_second``: ``min_ess_bulk`` over the wall time of the whole ``rb.sample``
          call (compilation and warmup included);
        - ``step_size`` (mean over chains), ``mean_tree_depth``, ``max_rhat``;
        - ``condition_number``: of the covariance of the unconstrained draws (for a Gaussian
          posterior this is the Hessian's, see :func:`curvature`; unlike the Hessian it exists
          where the density has no mode, like a centred funnel), and
          ``condition_number_scaled``: of their correlation matrix, what NUTS faces after
          adapting its diagonal mass matrix;
        - ``n_grad`` and ``seconds``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> def log_joint(m):
        ...     return dist.Normal(0.0, 1.0).log_prob(m["x"]).sum()
        >>> models = {"a": ({"x": rb.Real(jnp.zeros(2))}, log_joint)}
        >>> table = rb.geometry.compare(models, key=jax.random.key(0), num_warmup=100,
        ...                             num_samples=100, num_chains=2)
        >>> list(table.index), int(table.loc["a", "divergences"])
        (['a'], 0)
    """
    from ._sample import sample

    if not models:
        raise ValueError("compare: give at least one {label: (model, log_joint)}.")
    rows, posteriors = {}, {}
    # every check before the first model is sampled, so that a typo loses nothing
    for label, pair in models.items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[1])):
            raise TypeError(f"compare: models[{label!r}] must be a (wrapped_model, log_joint) pair.")
    if baseline is not None:
        check_choice("baseline", baseline, list(models), "compare")
    for label, pair in models.items():
        model, log_joint = pair
        start = time.perf_counter()
        post = sample(
            model,
            log_joint,
            *args,
            key=key,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=num_chains,
            progress_bar=progress_bar,
            **sample_kwargs,
        )
        jax.block_until_ready(jax.tree_util.tree_leaves(partition(post.unconstrained)[0]))
        seconds = time.perf_counter() - start
        rows[label] = summarize(post, seconds)
        posteriors[label] = post
    base = rows[baseline if baseline is not None else next(iter(rows))]
    for row in rows.values():
        row["ess_per_grad_ratio"] = row["ess_per_grad"] / base["ess_per_grad"] if base["ess_per_grad"] > 0 else math.inf
    table = _table(rows)
    return (table, posteriors) if return_posteriors else table
