"""Simulation-based calibration (Talts et al. 2018) of NUTS through a bijector, and the rank test.

Each replicate draws a true value from the prior, optionally simulates data from a Gaussian
likelihood around its coordinates, runs BlackJAX NUTS (window adaptation, then thinned draws)
on the free arrays, and records the rank of the true value among the draws for every test
quantity. All replicates run in one ``vmap`` (one compilation), prior-only and with-likelihood
replicates side by side (a weight 0 or 1 on the likelihood).

Uniformity is judged with the ECDF simultaneous confidence band of Säilynoja, Bürkner & Vehtari
(2022), "Graphical test for discrete uniformity and its applications in goodness-of-fit
evaluation and multiple sample comparison": under uniform ranks the count of ranks below each
grid point is binomial; the band's pointwise level is calibrated by simulation so that the
whole ECDF stays inside with probability ``1 - alpha``.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


def _import_blackjax():
    try:
        import blackjax
    except ImportError:
        raise ImportError(
            "rb.testing.check_bijector(sbc=True) runs NUTS with BlackJAX: pip install 'reparam_bridge[test]' "
            "(or pip install blackjax), or pass sbc=False."
        ) from None
    return blackjax


def run_sbc(
    logdensity: Callable[[Array, Array, Array], Array],
    sample_prior: Callable[[Array], Array],
    quantities: Callable[[Array], Array],
    observe: Callable[[Array], Array],
    position0: Array,
    *,
    key: Array,
    weights: np.ndarray,
    num_warmup: int,
    num_draws: int,
    thin: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Ranks ``(replicate, quantity)`` in ``0..num_draws`` and divergence counts per replicate.

    ``logdensity(z, y, w)``: log density of free coordinates ``z`` given data ``y`` and
    likelihood weight ``w``; ``sample_prior(key)``: a true free-coordinate vector and its
    quantities come from ``quantities(z)``; ``observe(key, q)``: data given the true quantities.
    """
    blackjax = _import_blackjax()

    def one(key, w):
        k_prior, k_obs, k_warm, k_run, k_init = jax.random.split(key, 5)
        truth = sample_prior(k_prior)  # quantities of the true value
        y = observe(k_obs, truth)
        fn = lambda z: logdensity(z, y, w)
        z0 = position0 + 0.1 * jax.random.uniform(k_init, position0.shape, minval=-1, maxval=1)
        warmup = blackjax.window_adaptation(blackjax.nuts, fn)
        (state, params), _ = warmup.run(k_warm, z0, num_steps=num_warmup)
        step = blackjax.nuts(fn, **params).step

        def body(state, k):
            def inner(s, kk):
                s, info = step(kk, s)
                return s, info.is_divergent

            state, div = jax.lax.scan(inner, state, jax.random.split(k, thin))
            return state, (quantities(state.position), div.sum())

        _, (draws, divs) = jax.lax.scan(body, state, jax.random.split(k_run, num_draws))
        ranks = jnp.sum(draws < truth[None, :], axis=0)
        return ranks, divs.sum()

    keys = jax.random.split(key, len(weights))
    ranks, divs = jax.jit(jax.vmap(one))(keys, jnp.asarray(weights, dtype=position0.dtype))
    return np.asarray(ranks), np.asarray(divs)


@functools.lru_cache(maxsize=32)
def _tail_table(n: int, levels: int) -> np.ndarray:
    """``table[k-1, c] = min(1, 2·min(P(B ≤ c), P(B ≥ c)))`` for ``B ~ Binomial(n, k/levels)``:
    the pointwise two-sided tail probability of ``c`` ranks below grid point ``k``."""
    from scipy.stats import binom

    z = (np.arange(1, levels) / levels)[:, None]
    c = np.arange(n + 1)[None, :]
    return np.minimum(2 * np.minimum(binom.cdf(c, n, z), binom.sf(c - 1, n, z)), 1.0)


def _min_tail(below: np.ndarray, n: int, levels: int) -> np.ndarray:
    """Minimum over the grid of the pointwise tail probability, per row of counts ``below``."""
    table = _tail_table(n, levels)
    return np.min(table[np.arange(levels - 1)[None, :], below], axis=-1)


@functools.lru_cache(maxsize=32)
def _simulated_minima(num_ranks: int, num_levels: int, num_sims: int = 20_000) -> np.ndarray:
    """Sorted minima of the pointwise tail probability for ``num_sims`` sets of
    ``num_ranks`` uniform ranks on ``num_levels`` levels (the band's calibration)."""
    rng = np.random.default_rng(20220101)
    counts = rng.multinomial(num_ranks, np.full(num_levels, 1.0 / num_levels), size=num_sims)
    return np.sort(_min_tail(np.cumsum(counts, axis=1)[:, :-1], num_ranks, num_levels))


def ecdf_uniformity(ranks: np.ndarray, num_levels: int) -> tuple[float, str]:
    """Simultaneous-band p-value of ``ranks`` (integers in ``0..num_levels-1``) being uniform,
    and a description of the departure in words (empty when none stands out)."""
    n = len(ranks)
    below = np.array([np.sum(ranks < k) for k in range(1, num_levels)])
    observed = _min_tail(below[None, :], n, num_levels)[0]
    sims = _simulated_minima(n, num_levels)
    p = (np.searchsorted(sims, observed, side="right") + 1) / (len(sims) + 1)
    u = (ranks + 0.5) / num_levels
    mean, outer = float(u.mean()), float(np.mean((u < 0.1) | (u > 0.9)))
    if mean > 0.6:
        shape = f"the true values rank high (mean rank {mean:.2f} of 1): the draws are shifted too low"
    elif mean < 0.4:
        shape = f"the true values rank low (mean rank {mean:.2f} of 1): the draws are shifted too high"
    elif outer > 0.3:
        shape = f"{100 * outer:.0f}% of ranks in the outer deciles (expected 20%): the draws are too narrow"
    elif outer < 0.1:
        shape = f"{100 * outer:.0f}% of ranks in the outer deciles (expected 20%): the draws are too wide"
    else:
        shape = ""
    return float(p), shape


def prior_scale(sample_prior: Callable[[Array], Array], key: Array, n: int = 512) -> Array:
    """Per-quantity standard deviation under the prior (sets the likelihood noise)."""
    q = jax.jit(jax.vmap(sample_prior))(jax.random.split(key, n))
    return jnp.maximum(jnp.std(q, axis=0), 1e-3)


def describe(x: Any, digits: int = 3) -> str:
    """A short printable form of an array."""
    return np.array2string(np.asarray(x), precision=digits, threshold=8, separator=", ")
