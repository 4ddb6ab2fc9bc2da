"""Every named bijector samples a standard prior-only target with real NumPyro NUTS.

The potential is ``-rb.log_density(log_joint, tree)`` over ``rb.partition(tree)[0]`` (the
free, unconstrained arrays), sampled by ``numpyro.infer.MCMC(NUTS(potential_fn=...))``
directly, so a wrong log-Jacobian shows up as a biased mean or sd. Each case draws
4 chains x 2,000 = 8,000 post-warmup draws and checks

* divergences <= 5,
* every mean within 5 Monte Carlo standard errors (sd / sqrt(ESS), ESS from ArviZ) of the
  known value,
* every sd within 10 % of the known value.

Cost: about 2-3 min on 2 cores for the whole file (one NUTS compile + run per case).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints as C
from numpyro.infer import MCMC, NUTS

import reparam_bridge as rb
from reparam_bridge import arviz as az  # the ArviZ 0.2x/1.x adapter: same calls, same numbers

pytestmark = pytest.mark.slow

NUM_CHAINS, NUM_WARMUP, NUM_SAMPLES = 4, 600, 2000
MAX_DIVERGENCES, MEAN_MCSE, SD_REL = 5, 5.0, 0.10


@dataclass
class Case:
    name: str
    tree: Callable[[], object]  # the wrapped tree, built lazily
    stats: Callable  # unwrapped tree -> 1-D array of the quantities checked
    mean: np.ndarray
    sd: np.ndarray
    log_joint: Callable = lambda m: 0.0  # noqa: E731  (priors are attached to the bijectors)


def _off_diag(C_):
    r, c = np.tril_indices(C_.shape[-1], -1)
    return C_[..., r, c]


def _lower(S):
    r, c = np.tril_indices(S.shape[-1])
    return S[..., r, c]


# ---- reference values ---------------------------------------------------------------


def _dirichlet(a):
    a = np.asarray(a, float)
    a0 = a.sum()
    return a / a0, np.sqrt(a * (a0 - a) / (a0**2 * (a0 + 1)))


def _lkj_offdiag(d, eta):
    # each off-diagonal correlation is 2·Beta(b, b) - 1 with b = eta - 1 + d/2
    # (Lewandowski, Kurowicka & Joe 2009), so its variance is 1 / (2b + 1)
    b = eta - 1 + d / 2
    k = d * (d - 1) // 2
    return np.zeros(k), np.full(k, math.sqrt(1 / (2 * b + 1)))


def _normal_order_stats(n):
    # a big Monte Carlo of sorted standard normals (its own error is ~sd/1400, negligible)
    x = np.sort(np.random.default_rng(0).standard_normal((2_000_000, n)), axis=1)
    return x.mean(0), x.std(0)


def _exponential_order_stats(n, rate=1.0):
    # Y_(k) = sum_{i<=k} E_i / (n - i + 1) with iid standard exponentials E_i (Rényi)
    w = 1.0 / (rate * np.arange(n, 0, -1))
    return np.cumsum(w), np.sqrt(np.cumsum(w**2))


def _beta(a, b):
    return np.array([a / (a + b)]), np.array([math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))])


def _lognormal(mu, s, k):
    m = math.exp(mu + s**2 / 2)
    sd = math.sqrt((math.exp(s**2) - 1) * math.exp(2 * mu + s**2))
    return np.full(k, m), np.full(k, sd)


def _wishart(df, S):
    # E W = df S, Var W_ij = df (S_ij² + S_ii S_jj)
    S = np.asarray(S)
    var = df * (S**2 + np.outer(np.diag(S), np.diag(S)))
    return _lower(df * S), np.sqrt(_lower(var))


WISHART_DF, WISHART_S = 6.0, np.array([[1.0, 0.3], [0.3, 0.5]])
LO, HI = np.array([-1.0, 0.0, 2.0]), np.array([0.5, 3.0, 2.5])
ZS_N, ZS_SIGMA = 4, 1.5


CASES = [
    Case(
        "Real-Normal",
        lambda: {"x": rb.Real(jnp.zeros(2), prior=dist.Normal(jnp.array([1.0, -2.0]), 2.0))},
        lambda m: m["x"],
        np.array([1.0, -2.0]),
        np.array([2.0, 2.0]),
    ),
    Case(
        "Positive-exp-LogNormal",
        lambda: {"x": rb.Positive(jnp.ones(2), prior=dist.LogNormal(0.0, 0.5))},
        lambda m: m["x"],
        *_lognormal(0.0, 0.5, 2),
    ),
    Case(
        "Positive-softplus-LogNormal",
        lambda: {"x": rb.Positive(jnp.ones(2), transform="softplus", prior=dist.LogNormal(0.0, 0.5))},
        lambda m: m["x"],
        *_lognormal(0.0, 0.5, 2),
    ),
    Case(
        "Bounded01-Beta",
        lambda: {"x": rb.Bounded(0.5, lower=0.0, upper=1.0, prior=dist.Beta(2.0, 3.0))},
        lambda m: m["x"][None],
        *_beta(2.0, 3.0),
    ),
    Case(
        "Bounded-array-Uniform",
        lambda: {"x": rb.Bounded(jnp.asarray((LO + HI) / 2), lower=LO, upper=HI, prior=dist.Uniform(LO, HI))},
        lambda m: m["x"],
        (LO + HI) / 2,
        (HI - LO) / math.sqrt(12),
    ),
    # one-sided bounds: a shifted Gamma(2, 1) written in log_joint (priors are optional)
    Case(
        "Bounded-lower-Gamma",
        lambda: {"x": rb.Bounded(3.0, lower=1.0)},
        lambda m: m["x"][None],
        np.array([3.0]),
        np.array([math.sqrt(2.0)]),
        log_joint=lambda m: dist.Gamma(2.0, 1.0).log_prob(m["x"] - 1.0),
    ),
    Case(
        "Bounded-upper-Gamma",
        lambda: {"x": rb.Bounded(-2.0, upper=0.0)},
        lambda m: m["x"][None],
        np.array([-2.0]),
        np.array([math.sqrt(2.0)]),
        log_joint=lambda m: dist.Gamma(2.0, 1.0).log_prob(-m["x"]),
    ),
    Case(
        "Simplex-Dirichlet",
        lambda: {"x": rb.Simplex(jnp.full(4, 0.25), prior=dist.Dirichlet(jnp.array([1.0, 2.0, 3.0, 4.0])))},
        lambda m: m["x"],
        *_dirichlet([1.0, 2.0, 3.0, 4.0]),
    ),
    Case(
        "Ordered-iid-Normal",
        lambda: {"x": rb.Ordered(jnp.array([-1.0, -0.3, 0.3, 1.0]))},
        lambda m: m["x"],
        *_normal_order_stats(4),
        log_joint=lambda m: dist.Normal().log_prob(m["x"]).sum(),
    ),
    Case(
        "PositiveOrdered-iid-Exponential",
        lambda: {"x": rb.PositiveOrdered(jnp.array([0.2, 0.5, 1.0, 2.0]))},
        lambda m: m["x"],
        *_exponential_order_stats(4),
        log_joint=lambda m: dist.Exponential().log_prob(m["x"]).sum(),
    ),
    Case(
        "CorrCholesky-LKJCholesky",
        lambda: {"x": rb.CorrCholesky(jnp.eye(3), prior=dist.LKJCholesky(3, 2.0))},
        lambda m: _off_diag(m["x"] @ m["x"].T),
        *_lkj_offdiag(3, 2.0),
    ),
    Case(
        "CorrMatrix-LKJ",
        lambda: {"x": rb.CorrMatrix(jnp.eye(4), prior=dist.LKJ(4, 1.0))},
        lambda m: _off_diag(m["x"]),
        *_lkj_offdiag(4, 1.0),
    ),
    Case(
        "PositiveDefinite-Wishart",
        lambda: {
            "x": rb.PositiveDefinite(
                jnp.asarray(WISHART_DF * WISHART_S), prior=dist.Wishart(WISHART_DF, jnp.asarray(WISHART_S))
            )
        },
        lambda m: _lower(m["x"]),
        *_wishart(WISHART_DF, WISHART_S),
    ),
    Case(
        "CovCholesky-WishartCholesky",
        lambda: {
            "x": rb.CovCholesky(
                jnp.linalg.cholesky(jnp.asarray(WISHART_DF * WISHART_S)),
                prior=dist.WishartCholesky(WISHART_DF, jnp.asarray(WISHART_S)),
            )
        },
        lambda m: _lower(m["x"] @ m["x"].T),
        *_wishart(WISHART_DF, WISHART_S),
    ),
    Case(
        "ZeroSum-ZeroSumNormal",
        lambda: {"x": rb.ZeroSum(jnp.zeros(ZS_N), prior=dist.ZeroSumNormal(ZS_SIGMA, (ZS_N,)))},
        lambda m: m["x"],
        np.zeros(ZS_N),
        np.full(ZS_N, ZS_SIGMA * math.sqrt((ZS_N - 1) / ZS_N)),
    ),
    Case(
        "Constrained-unit_interval-Beta",
        lambda: {"x": rb.Constrained(0.5, C.unit_interval, prior=dist.Beta(3.0, 1.5))},
        lambda m: m["x"][None],
        *_beta(3.0, 1.5),
    ),
]


def _ess(x):
    """ArviZ bulk ESS of one scalar quantity shaped (chain, draw)."""
    out = az.ess(np.asarray(x))
    if hasattr(out, "to_array"):  # a Dataset (other ArviZ versions)
        out = out.to_array().values
    return float(np.asarray(out).squeeze())


def _run(case, seed):
    tree = case.tree()
    params, static = rb.partition(tree)

    def potential(p):
        return -rb.log_density(case.log_joint, eqx.combine(p, static))

    key_init, key_run = jax.random.split(jax.random.key(seed))
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jitter = jax.random.uniform(key_init, (NUM_CHAINS, flat.size), minval=-0.5, maxval=0.5)
    init = jax.vmap(unravel)(flat + jitter)
    mcmc = MCMC(
        NUTS(potential_fn=potential),
        num_warmup=NUM_WARMUP,
        num_samples=NUM_SAMPLES,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(key_run, init_params=init, extra_fields=("diverging",))
    draws = mcmc.get_samples(group_by_chain=True)
    stats = jax.jit(jax.vmap(jax.vmap(lambda p: jnp.ravel(case.stats(rb.unwrap(eqx.combine(p, static)))))))(draws)
    diverging = int(np.sum(mcmc.get_extra_fields(group_by_chain=True)["diverging"]))
    return np.asarray(stats, dtype=np.float64), diverging


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_nuts_recovers_prior(case):
    stats, diverging = _run(case, seed=sum(map(ord, case.name)))
    assert stats.shape[:2] == (NUM_CHAINS, NUM_SAMPLES)
    assert diverging <= MAX_DIVERGENCES, f"{case.name}: {diverging} divergences in {NUM_CHAINS * NUM_SAMPLES} draws"
    flat = stats.reshape(-1, stats.shape[-1])
    mean, sd = flat.mean(0), flat.std(0, ddof=1)
    ess = np.array([_ess(stats[..., i]) for i in range(stats.shape[-1])])
    mcse = sd / np.sqrt(ess)
    report = (
        f"{case.name}\n  mean {np.round(mean, 4)}\n  want {np.round(case.mean, 4)}\n"
        f"  mcse {np.round(mcse, 4)}\n  sd   {np.round(sd, 4)}\n  want {np.round(case.sd, 4)}\n"
        f"  ess  {np.round(ess)}"
    )
    assert np.all(ess > 400), report  # otherwise the MCSE itself is unreliable
    assert np.all(np.abs(mean - case.mean) <= MEAN_MCSE * mcse), report
    assert np.all(np.abs(sd / case.sd - 1) <= SD_REL), report


def test_reference_values_are_right():
    # the references themselves, against direct draws from the same distributions
    rng = np.random.default_rng(1)
    e = np.sort(rng.exponential(size=(200_000, 4)), axis=1)
    m, s = _exponential_order_stats(4)
    np.testing.assert_allclose(e.mean(0), m, rtol=0.01)
    np.testing.assert_allclose(e.std(0), s, rtol=0.01)
    x = rng.multivariate_normal(np.zeros(2), WISHART_S, size=(100_000, int(WISHART_DF)))
    w = np.einsum("nki,nkj->nij", x, x)  # Wishart(df, S) as a sum of df outer products
    m, s = _wishart(WISHART_DF, WISHART_S)
    np.testing.assert_allclose(_lower(w).mean(0), m, rtol=0.01)
    np.testing.assert_allclose(_lower(w).std(0), s, rtol=0.02)
    # (LKJ's marginal is the closed form of Lewandowski, Kurowicka & Joe 2009; NumPyro's LKJ
    # sampler takes ~10 s to compile, so it is not re-checked here)
    z = np.asarray(dist.ZeroSumNormal(ZS_SIGMA, (ZS_N,)).sample(jax.random.key(2), (40_000,)), dtype=np.float64)
    np.testing.assert_allclose(z.std(0), ZS_SIGMA * math.sqrt((ZS_N - 1) / ZS_N), rtol=0.02)
