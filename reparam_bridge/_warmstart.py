"""Warm-starting NUTS from an approximation: ``rb.sample(..., init=approx)``.

What the approximation gives the sampler (Stan and BlackJAX users seed it the same way):

* per-chain starting points: independent draws from it, so the chains are dispersed as
  the posterior is, not jittered around one mode;
* the initial inverse mass matrix: its covariance (``dense_mass=True``) or the diagonal;
* the initial step size: for a metric equal to the posterior covariance the whitened
  target is roughly a standard normal, where the step size NUTS settles on at
  ``target_accept_prob=0.8`` is about ``d^(-1/4)`` (Beskos et al. 2013); with a diagonal
  metric the correlations that remain shrink it by ``sqrt(smallest eigenvalue)`` of the
  correlation matrix. NumPyro still refines it (``find_reasonable_step_size``, then dual
  averaging);
* a shorter warmup: :data:`SEEDED_NUM_WARMUP` when ``num_warmup`` is not given. The mass
  matrix keeps adapting (NumPyro's windows start from the seed), so a poor approximation
  costs efficiency, not correctness. See ``benchmarks/README.md`` for the measurement.
"""

import math
import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from ._approx import Approximation
from ._density import partition

# Warmup steps for a seeded start when ``num_warmup`` is None (unseeded: NumPyro's 1,000).
# Measured on the posteriordb posteriors of benchmarks/bench_time_to_posterior.py: see
# benchmarks/README.md ("warm start").
SEEDED_NUM_WARMUP = 300
DEFAULT_NUM_WARMUP = 1000

# k-hat below which the approximation is itself a posterior (Vehtari et al. 2024, PSIS).
GOOD_KHAT = 0.5


def usable_khat(num_draws: int) -> float:
    """k-hat above which PSIS with ``num_draws`` draws is unreliable: ``min(1 - 1/log10(S), 0.7)``
    (Vehtari et al. 2024, PSIS, section 3), e.g. 0.67 for 1,000 draws, 0.7 from 2,200 on."""
    return min(1.0 - 1.0 / math.log10(max(num_draws, 11)), 0.7)


class GoodApproximationWarning(UserWarning):
    """The approximation passed as ``init=`` is already good (PSIS k-hat < 0.5): its draws
    (``approx.to_posterior(...)``) are a usable posterior without MCMC."""


def is_seed(init: Any) -> bool:
    """Whether ``rb.sample``'s ``init`` is something this module seeds from."""
    from ._multistart import EnsembleResult

    return isinstance(init, (Approximation, EnsembleResult))


def _check_structure(params: PyTree, seed_params: PyTree, what: str, batched: bool = False) -> None:
    left, right = jax.tree_util.tree_structure(params), jax.tree_util.tree_structure(seed_params)
    shapes = [
        (a.shape, b.shape[1:] if batched else b.shape)
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(seed_params))
    ]
    if left != right or any(a != b for a, b in shapes):
        raise ValueError(
            f"rb.sample: init={what} was built for a model with other free arrays than the model "
            "given (structure or shapes differ); build it from this model (same wrappers, same "
            "frozen parts)."
        )


def seeded_step_size(covariance: np.ndarray, dense: bool) -> float:
    """Initial step size for a metric taken from ``covariance`` (see the module docstring).

    Example:
        >>> import numpy as np
        >>> round(seeded_step_size(np.eye(16), dense=False), 3)  # 16 ** -0.25
        0.5
        >>> seeded_step_size(np.array([[1.0, 0.99], [0.99, 1.0]]), dense=False) < 0.2
        True
    """
    covariance = np.atleast_2d(np.asarray(covariance, dtype=np.float64))
    d = covariance.shape[0]
    step = d**-0.25
    if not dense:
        sd = np.sqrt(np.clip(np.diag(covariance), 1e-300, None))
        corr = covariance / np.outer(sd, sd)
        lam = np.linalg.eigvalsh(np.where(np.isfinite(corr), corr, 0.0))[0]
        step *= math.sqrt(min(max(lam, 1e-4), 1.0))
    return float(step)


def _inverse_mass_matrix(approx: Approximation, dense: bool, dtype) -> jax.Array:
    cov = np.asarray(approx.covariance, dtype=np.float64)
    # Regularise as Stan does for its adapted metric: a pool or Hessian can be near-singular.
    scale = max(float(np.mean(np.diag(cov))), 1e-12)
    cov = cov + 1e-6 * scale * np.eye(cov.shape[0])
    return jnp.asarray(cov if dense else np.diag(cov), dtype=dtype)


def seed(
    init: Any,
    params: PyTree,
    key: PRNGKeyArray,
    num_chains: int,
    num_warmup: int | None,
    kernel_kwargs: dict[str, Any],
    init_jitter: float,
) -> tuple[PyTree, int, dict[str, Any]]:
    """``(init_params, num_warmup, kernel_kwargs)`` for ``rb.sample`` from ``init``."""
    from ._multistart import EnsembleResult

    kernel_kwargs = dict(kernel_kwargs)
    if isinstance(init, EnsembleResult):
        _check_structure(params, partition(init.models)[0], "EnsembleResult", batched=True)
        starts = init.initial_params(key, num_chains, init_jitter)
        return starts, DEFAULT_NUM_WARMUP if num_warmup is None else num_warmup, kernel_kwargs

    what = type(init).__name__
    _check_structure(params, partition(init.mean)[0], what)
    if init.khat < GOOD_KHAT:  # nan (not computed) compares False; -inf is a perfect fit
        warnings.warn(
            f"rb.sample: the {what} passed as init= is already good (PSIS k-hat {init.khat:.2f} < "
            f"{GOOD_KHAT}): its draws are a usable posterior without MCMC, e.g. "
            "approx.to_posterior(key, num_samples, num_chains) (then .to_inference_data()). "
            "Sampling anyway, warm-started from it.",
            GoodApproximationWarning,
            stacklevel=3,
        )
    dtype = jax.tree_util.tree_leaves(params)[0].dtype
    dense = bool(kernel_kwargs.get("dense_mass", False))
    if not isinstance(kernel_kwargs.get("dense_mass", False), bool):
        raise TypeError("rb.sample(init=approx): dense_mass must be True or False (one block over all arrays).")
    if "inverse_mass_matrix" not in kernel_kwargs:
        kernel_kwargs["inverse_mass_matrix"] = _inverse_mass_matrix(init, dense, dtype)
    if "step_size" not in kernel_kwargs:
        kernel_kwargs["step_size"] = seeded_step_size(np.asarray(init.covariance), dense)
    starts = init.initial_params(key, num_chains)
    starts = jax.tree_util.tree_map(lambda x, p: jnp.asarray(x, p.dtype), starts, params)
    return starts, SEEDED_NUM_WARMUP if num_warmup is None else num_warmup, kernel_kwargs


def approximation_posterior(approx: Approximation, key: PRNGKeyArray, num_samples: int, num_chains: int):
    """An ``rb.Posterior`` holding ``num_chains x num_samples`` draws of ``approx`` (no MCMC:
    no ``sample_stats``, ``mcmc`` is ``None``)."""
    from ._checks import ReliabilityWarning
    from ._posterior import Posterior

    num_draws = int(getattr(approx, "log_weights", np.zeros(0)).shape[0])
    bound = usable_khat(num_draws)
    if not approx.khat < bound:  # nan too: nothing says these draws are the posterior
        said = f"is {approx.khat:.2f} >= {bound:.2f}" if not np.isnan(approx.khat) else "is nan"
        said = "was not computed" if num_draws == 0 else said
        warnings.warn(
            f"{type(approx).__name__}.to_posterior: its PSIS k-hat {said}, so these draws may be far from "
            "the posterior (PSIS cannot correct them reliably). Sample it instead: "
            "rb.sample(model, log_joint, *args, key=key, init=approx).",
            ReliabilityWarning,
            stacklevel=3,
        )
    static = partition(approx.mean)[1]
    samples = approx._unravel_batched(approx.resampled_flat(key, num_samples, num_chains))
    samples = eqx.filter(samples, eqx.is_array)
    return Posterior(approx.mean, static, samples, {})
