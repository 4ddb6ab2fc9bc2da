"""Multi-path Pathfinder (Zhang, Carpenter, Gelman & Vehtari 2022) over the free,
unconstrained arrays, with PSIS k-hat and importance resampling.

The per-path work is BlackJAX's (``blackjax.vi.pathfinder``: L-BFGS through optax, the
inverse-Hessian factors, the ELBO-best normal along the path): it is pure JAX, so one
``jit(vmap(...))`` runs every path in a single compiled call, and it follows the paper's
Algorithm 1. BlackJAX's ``multi_approximate`` draws the ELBO estimate and the returned pool
with one ``num_samples``; Stan (and we) use few ELBO draws (cheap: one per path point) and
more pool draws, so the paths are vmapped here rather than through that function.

Cost: the compiled call is large (L-BFGS with optax's zoom line search, then the inverse-Hessian
factors and ELBO draws at every point of every path); compiling it dominates on small models
(the one-parameter doctest below took 128 s on a 2-core CPU at load average ~25, where
``rb.laplace`` of a 3-parameter model took 80 s; not yet measured on a quiet machine). It is correct (exact on
Gaussians, reference posteriors reproduced when seeding NUTS, tests/test_warmstart.py and
tests/validation/test_warmstart_reference.py), so it is reused rather than rewritten; a
leaner own implementation is the next step if its compile time matters.
"""

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._approx import Approximation
from ._density import check_bijective
from ._diagnose import check_model
from ._mesh import auto_axes
from ._posterior import free_logdensity
from ._psis import psislw
from ._util import coordinate_names, host_rng


def _import_blackjax():
    try:
        from blackjax.vi import pathfinder as bjp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "rb.pathfinder uses BlackJAX: install the extra with `pip install reparam_bridge[blackjax]` "
            "(or `pip install blackjax`)."
        ) from e
    return bjp


class PathfinderResult(Approximation):
    """Multi-path Pathfinder's approximation, from :func:`pathfinder`.

    ``q`` is the equal-weight mixture of the paths' normals; :meth:`sample` importance-resamples
    its pool (``num_paths * num_draws_per_path`` draws) with the PSIS weights, as Stan does.

    Attributes:
        mean, covariance: of the pool (the mixture ``q``), in unconstrained coordinates.
        names: labels of the coordinates.
        khat: Pareto k-hat of PSIS of the pool against the true density.
        pool: ``(draws, n)`` flat unconstrained draws from the paths' normals.
        log_weights: their smoothed, normalised PSIS log-weights.
        ess: importance-sampling effective sample size of those weights.
        path_modes: ``(num_paths, n)`` the end points of the L-BFGS paths (the optima found).
        path_elbo: ``(num_paths,)`` the best ELBO of each path.
    """

    mean: PyTree
    covariance: Float[Array, "n n"]
    names: tuple[str, ...] = eqx.field(static=True)
    khat: float = eqx.field(static=True)
    pool: Float[Array, "draws n"]
    log_weights: Float[Array, " draws"]
    ess: float = eqx.field(static=True)
    path_modes: Float[Array, "paths n"]
    path_elbo: Float[Array, " paths"]

    _library: ClassVar[str] = "reparam_bridge.pathfinder"

    def _unconstrained(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> tuple[Array, Array]:
        idx = jax.random.choice(key, self.pool.shape[0], shape, replace=True, p=jnp.exp(self.log_weights))
        return self.pool[idx], idx

    def initial_params(self, key: PRNGKeyArray, num_chains: int) -> PyTree:
        """As :meth:`Approximation.initial_params`, from the PSIS-weighted pool: distinct draws
        for distinct chains (without replacement while the weights allow it), drawn on the
        host (``host_rng``: in a fresh process ``jax.random.choice`` compiled for ~0.9 s, for
        four indices, measured)."""
        p = np.exp(np.asarray(self.log_weights, np.float64))
        p /= p.sum()
        replace = int(np.count_nonzero(p > 0)) < num_chains
        idx = host_rng(key).choice(p.shape[0], num_chains, replace=replace, p=p)
        z = np.asarray(self.pool)[idx]
        return jax.tree_util.tree_map(jnp.asarray, self._unravel_batched(z))


def pathfinder(
    model: PyTree,
    log_joint: Callable[..., Float[Array, ""]],
    *args: Any,
    key: PRNGKeyArray,
    num_paths: int = 4,
    num_draws_per_path: int = 1000,
    num_elbo_draws: int = 25,
    maxiter: int = 200,
    maxcor: int = 6,
    init_radius: float = 2.0,
) -> PathfinderResult:
    """Multi-path Pathfinder in unconstrained space: ``num_paths`` L-BFGS runs of the density
    ``log_density(log_joint, model, *args, jacobian=True)``, each from the model's values plus
    uniform noise of half-width ``init_radius``, each giving the normal of highest ELBO along
    its path; their pooled draws are importance-weighted by PSIS.

    Args:
        model: the wrapped model; every wrapper must be a :class:`Bijector` (or frozen).
        log_joint: ``log_joint(unwrapped_model, *args)`` as for ``rb.sample``.
        key: PRNG key.
        num_paths: independent paths (Stan's default is 4).
        num_draws_per_path: pool draws from each path's normal.
        num_elbo_draws: draws estimating the ELBO at every point of a path.
        maxiter, maxcor: L-BFGS iterations and history size.
        init_radius: half-width of the uniform start noise (Stan: 2).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> y = jnp.array([0.3, -0.1, 0.5, 0.2])
        >>> model = {"mu": rb.Real(0.0, prior=dist.Normal(0.0, 1.0))}
        >>> log_joint = lambda m, y: dist.Normal(m["mu"], 1.0).log_prob(y).sum()
        >>> approx = rb.pathfinder(model, log_joint, y, key=jax.random.key(0))
        >>> approx.khat < 0.5, round(float(approx.covariance[0, 0]), 1)  # exact: 1 / (1 + 4)
        (True, 0.2)
        >>> approx.sample(jax.random.key(1), 100, num_chains=2)["mu"].shape
        (2, 100)
    """
    check_bijective(model, "pathfinder")
    for name, value in (
        ("num_paths", num_paths),
        ("num_draws_per_path", num_draws_per_path),
        ("num_elbo_draws", num_elbo_draws),
        ("maxiter", maxiter),
        ("maxcor", maxcor),
    ):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"pathfinder: {name} must be a positive integer, got {value!r}.")
    model, args = auto_axes((model, args))
    params, static = check_model(model, log_joint, args, "pathfinder")
    bjp = _import_blackjax()
    flat, unravel = ravel_pytree(params)
    logdensity = free_logdensity(log_joint, static, args)
    flat_logdensity = lambda x: logdensity(unravel(x))  # noqa: E731
    start_key, path_key, draw_key = jax.random.split(key, 3)
    starts = flat + init_radius * jax.random.uniform(start_key, (num_paths, flat.shape[0]), flat.dtype, -1.0, 1.0)
    pool, log_p, log_q, modes, elbo = _run_paths(
        flat_logdensity,
        starts,
        jax.random.split(path_key, num_paths),
        jax.random.split(draw_key, num_paths),
        bjp,
        num_draws_per_path,
        num_elbo_draws,
        maxiter,
        maxcor,
    )
    pool = pool.reshape(-1, flat.shape[0])
    log_ratios = np.asarray(log_p - log_q, dtype=np.float64).ravel()
    ok = np.isfinite(log_ratios) & np.all(np.isfinite(np.asarray(pool)), axis=1)
    if not ok.any():
        raise ValueError(
            "pathfinder: no path produced a draw with a finite log-density; start from valid values "
            "(e.g. rb.map_estimate(..., jacobian=True).model) or lower init_radius."
        )
    log_ratios = np.where(ok, log_ratios, -np.inf)
    pool = jnp.where(jnp.asarray(ok)[:, None], pool, flat)  # never read (weight 0), but finite
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns itself when k-hat is large; we report it
        lw, khat = psislw(log_ratios)
    lw = np.where(ok, lw, -np.inf)
    ess = float(1.0 / np.sum(np.exp(2 * lw)))
    good = np.asarray(pool)[ok]
    mean_flat = jnp.asarray(good.mean(0), flat.dtype)
    cov = jnp.asarray(np.atleast_2d(np.cov(good, rowvar=False)), flat.dtype)
    names = tuple(coordinate_names(params))
    return PathfinderResult(
        mean=eqx.combine(unravel(mean_flat), static),
        covariance=cov,
        names=names,
        khat=float(khat),
        pool=pool,
        log_weights=jnp.asarray(lw, flat.dtype),
        ess=ess,
        path_modes=modes,
        path_elbo=elbo,
    )


@eqx.filter_jit
def _run_paths(logdensity, starts, path_keys, draw_keys, bjp, num_draws, num_elbo, maxiter, maxcor):
    def one(start, path_key, draw_key):
        state, info = bjp.approximate(path_key, logdensity, start, num_elbo, maxiter=maxiter, maxcor=maxcor)
        phi, log_q = bjp.sample(draw_key, state, num_draws)
        log_p = jax.vmap(logdensity)(phi)
        # the last finite point of the path is where L-BFGS stopped: the optimum it found
        finite = jnp.isfinite(info.path.elbo)
        last = jnp.max(jnp.where(finite, jnp.arange(finite.shape[0]), 0))
        return phi, log_p, log_q, info.path.position[last], jnp.max(info.path.elbo)

    return jax.vmap(one)(starts, path_keys, draw_keys)
