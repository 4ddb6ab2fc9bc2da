"""The Laplace approximation in unconstrained coordinates, checked by Pareto-smoothed
importance sampling against the true density of the free arrays."""

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from . import _effort
from ._approx import Approximation
from ._checks import preflight
from ._density import check_bijective, partition
from ._map import map_estimate
from ._mesh import auto_axes
from ._psis import psislw
from ._util import NegLogDensity, host_rng, neg_log_density_hessian


class LaplaceResult(Approximation):
    """A Gaussian ``N(mean, covariance)`` over the free (unconstrained) arrays, from :func:`laplace`
    (an :class:`~reparam_bridge.Approximation`: ``sample``, ``to_inference_data``, warm starts).

    Attributes:
        mean: the wrapped model at the mode of the unconstrained density.
        covariance: ``(n, n)`` covariance of the flattened free arrays, in the order of
            ``jax.flatten_util.ravel_pytree(rb.partition(mean)[0])``; ``names`` labels it.
        precision_cholesky: lower Cholesky factor of the precision (the negative Hessian).
        names: one label per coordinate, e.g. ``"s.unconstrained"`` or ``"w.unconstrained[0,1]"``.
        khat: Pareto k-hat of PSIS with this Gaussian as proposal for the true unconstrained
            density. Below ~0.5 the approximation is good, 0.5-0.7 usable with importance
            weights, above 0.7 unreliable (Vehtari et al., *Pareto smoothed importance sampling*).
        pool: ``(num_psis_draws, n)`` the flat unconstrained draws behind :attr:`khat`.
        log_weights: their smoothed, normalised PSIS log-weights; :meth:`to_posterior`
            resamples :attr:`pool` with them.
        ess: importance-sampling effective sample size ``1 / Σ w²`` of those weights.
    """

    mean: PyTree
    covariance: Float[Array, "n n"]
    precision_cholesky: Float[Array, "n n"]
    names: tuple[str, ...] = eqx.field(static=True)
    khat: float = eqx.field(static=True)
    pool: Float[Array, "draws n"]
    log_weights: Float[Array, " draws"]
    ess: float = eqx.field(static=True)

    _library: ClassVar[str] = "reparam_bridge.laplace"

    def _unconstrained(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> tuple[Array, Array]:
        flat, _ = ravel_pytree(partition(self.mean)[0])
        return _gaussian_draws(flat, self.precision_cholesky, key, shape)

    def initial_params(self, key: PRNGKeyArray, num_chains: int) -> PyTree:
        """As :meth:`Approximation.initial_params`, drawn on the host (``host_rng``: in a fresh
        process ``jax.random`` and the triangular solve compile for ~1 s, for a few numbers)."""
        flat = np.asarray(self.flat_mean)
        eps = host_rng(key).standard_normal((num_chains, flat.shape[0]))
        chol = np.asarray(self.precision_cholesky, np.float64)
        z = flat + scipy.linalg.solve_triangular(chol.T, eps.T, lower=False).T
        return jax.tree_util.tree_map(jnp.asarray, self._unravel_batched(np.asarray(z, flat.dtype)))


def laplace(
    model: PyTree,
    log_joint: Callable[..., Float[Array, ""]],
    *args: Any,
    optimize: bool = True,
    key: PRNGKeyArray | None = None,
    num_psis_draws: int = 1000,
    **map_kwargs: Any,
) -> LaplaceResult:
    """Laplace approximation: a Gaussian over the free, unconstrained arrays, centred at the
    mode of their density (``map_estimate(..., jacobian=True)``), with covariance the inverse
    of the negative Hessian of ``log_density(log_joint, model, *args, jacobian=True)``.

    Args:
        model: the wrapped model; every wrapper must be a :class:`Bijector` (or frozen).
        log_joint: ``log_joint(unwrapped_model, *args)`` as for ``rb.sample``.
        *args: data for ``log_joint``.
        optimize: find the mode first with :func:`map_estimate` (``jacobian=True``,
            ``map_kwargs`` passed on). ``False`` takes ``model`` as already at the mode (for
            instance ``map_estimate(..., jacobian=True).model``); a warning says if it is not.
        key: key for the ``num_psis_draws`` draws behind :attr:`LaplaceResult.khat`
            (default ``jax.random.key(0)``).
        num_psis_draws: draws used for PSIS (0 skips it: ``khat`` is then ``nan``).

    Raises:
        ValueError: if the negative Hessian is not positive definite (not a mode, or a flat
            direction), naming the parameters along the worst direction.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> y = jnp.array([0.3, -0.1, 0.5, 0.2])
        >>> model = {"mu": rb.Real(0.0, prior=dist.Normal(0.0, 1.0))}
        >>> log_joint = lambda m, y: dist.Normal(m["mu"], 1.0).log_prob(y).sum()
        >>> approx = rb.laplace(model, log_joint, y, progress_bar=False)
        >>> round(float(approx.covariance[0, 0]), 4), approx.khat < 0.5  # exact: 1 / (1 + 4)
        (0.2, True)
        >>> approx.sample(jax.random.key(1), 100, num_chains=2)["mu"].shape
        (2, 100)
    """
    preflight(model, "laplace", density=True)
    check_bijective(model, "laplace")
    model, args = auto_axes((model, args))
    params, static = partition(model)
    # the mode (L-BFGS: 100 steps of a few gradients each), the Hessian and the PSIS draws
    steps = map_kwargs.get("steps") or (100 if map_kwargs.get("optimizer") is None else 1000)
    evaluations = 5 * steps * optimize + 4 * sum(x.size for x in jax.tree_util.tree_leaves(params))
    quick = _effort.decide(
        lambda: _effort.elementwise_ops(lambda p, a: NegLogDensity(log_joint, True, static)(p, *a), params, args),
        evaluations + int(num_psis_draws),
    )
    with _effort.effort(quick):
        return _laplace(model, log_joint, args, optimize, key, num_psis_draws, map_kwargs)


def _laplace(model, log_joint, args, optimize, key, num_psis_draws, map_kwargs) -> LaplaceResult:
    if optimize:
        model = map_estimate(model, log_joint, *args, jacobian=True, **map_kwargs).model
    elif map_kwargs:
        raise TypeError(f"laplace(optimize=False) takes no optimiser arguments, got {sorted(map_kwargs)}.")
    flat, _, names, neg_log_p, grad, hess = neg_log_density_hessian(log_joint, model, args)
    chol, covariance, offset = _gaussian(hess, grad)
    if not bool(jnp.all(jnp.isfinite(chol))):
        raise ValueError(_not_pd_message(np.asarray(hess), names))
    offset = np.asarray(offset)
    if offset.max() > 0.05:
        worst = names[int(offset.argmax())]
        warnings.warn(
            f"laplace: the model is not at a mode of the unconstrained density (a Newton step "
            f"moves '{worst}' by {offset.max():.3g} posterior sd); the Gaussian is centred at the "
            "given point. Use optimize=True or more optimiser steps.",
            stacklevel=3,  # the user's call of laplace
        )

    result = LaplaceResult(
        mean=model,
        covariance=covariance,
        precision_cholesky=chol,
        names=names,
        khat=math.nan,
        pool=jnp.zeros((0, flat.shape[0]), flat.dtype),
        log_weights=jnp.zeros((0,)),
        ess=math.nan,
    )
    if num_psis_draws:
        key = jax.random.key(0) if key is None else key
        pool, khat, lw, ess = _psis(result, neg_log_p, args, key, int(num_psis_draws))
        result = LaplaceResult(
            mean=model,
            covariance=covariance,
            precision_cholesky=chol,
            names=names,
            khat=khat,
            pool=pool,
            log_weights=jnp.asarray(lw),
            ess=ess,
        )
    return result


@functools.partial(jax.jit, static_argnames="shape")  # one program (eagerly ~7, ~0.6 s cold)
def _gaussian_draws(flat: Array, chol: Array, key: PRNGKeyArray, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """Draws ``(*shape, n)`` of N(flat, (L Lᵀ)⁻¹) and their standard-normal noise: with the
    precision L Lᵀ, z = flat + L⁻ᵀ eps has covariance L⁻ᵀ L⁻¹."""
    n = flat.shape[0]
    eps = jax.random.normal(key, (*shape, n), dtype=flat.dtype)
    dz = jax.scipy.linalg.solve_triangular(chol.T, eps.reshape(-1, n).T, lower=False).T
    return flat + dz.reshape(eps.shape), eps


@jax.jit  # one compiled program (eagerly, each of these operations compiles its own: ~1 s)
def _gaussian(hess: Array, grad: Array) -> tuple[Array, Array, Array]:
    """Cholesky factor of the precision, the covariance, and the Newton step to the mode in
    posterior standard deviations (~0 at a true mode)."""
    chol = jnp.linalg.cholesky(hess)
    covariance = jax.scipy.linalg.cho_solve((chol, True), jnp.eye(hess.shape[0], dtype=hess.dtype))
    return chol, covariance, jnp.abs(covariance @ grad) / jnp.sqrt(jnp.diag(covariance))


def _psis(result: LaplaceResult, neg_log_p, args, key, num_draws: int) -> tuple[Array, float, np.ndarray, float]:
    """The draws, k-hat, smoothed log-weights and importance-sampling ESS of PSIS."""
    flat, _ = ravel_pytree(partition(result.mean)[0])
    pool, log_ratios = _log_ratios(neg_log_p, flat, result.precision_cholesky, key, args, num_draws)
    log_ratios = np.asarray(log_ratios)
    log_ratios = np.where(np.isfinite(log_ratios), log_ratios, -np.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns itself when k-hat is large; we report it
        lw, khat = psislw(log_ratios)
    ess = float(1.0 / np.sum(np.exp(2 * lw)))
    return pool, khat, lw, ess


@eqx.filter_jit  # one program for draws, log q and log p (eagerly: ~10 small compiles, ~2 s)
def _log_ratios(neg_log_p, flat, chol, key, args, num_draws: int) -> tuple[Array, Array]:
    """``num_draws`` draws of the Gaussian (the same as :meth:`LaplaceResult._unconstrained`
    gives for ``key``) and ``log p - log q`` at them; the data is an argument."""
    n = flat.shape[0]
    z, eps = _gaussian_draws(flat, chol, key, (num_draws,))
    log_q = -0.5 * jnp.sum(eps**2, axis=-1) + jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * n * jnp.log(2 * jnp.pi)
    return z, -jax.vmap(neg_log_p, in_axes=(0, None))(z, args) - log_q


def _not_pd_message(hess: np.ndarray, names: tuple[str, ...]) -> str:
    hess = np.where(np.isfinite(hess), hess, 0.0)
    values, vectors = np.linalg.eigh(hess)
    v = vectors[:, 0]
    top = np.argsort(-np.abs(v))[: min(3, len(v))]
    along = ", ".join(f"'{names[i]}' ({v[i]:+.2f})" for i in top if abs(v[i]) > 1e-3)
    return (
        f"laplace: the negative Hessian of the unconstrained log-density is not positive definite "
        f"(smallest eigenvalue {values[0]:.3g}), so there is no Gaussian approximation here. The "
        f"worst direction is along {along}. The point is not a strict mode there: the posterior is "
        "flat or improper in that direction (add a prior), or the optimiser has not converged "
        "(more steps, or optimize=True)."
    )
