"""Posteriors known in closed form, written here (not from posteriordb): rb.sample must match them.

* Normal-inverse-gamma linear regression: ``σ² ~ InvGamma(a₀, b₀)``, ``β | σ² ~ N(0, σ² V₀)``,
  ``y ~ N(Xβ, σ² I)``; the posterior is ``σ² ~ InvGamma(aₙ, bₙ)`` and ``β`` a multivariate t
  with mean ``mₙ`` and covariance ``bₙ/(aₙ - 1)·Vₙ`` (``rb.Real``, ``rb.Positive``).
* Dirichlet-multinomial: ``p ~ Dirichlet(α)``, counts ``~ Multinomial(p)`` gives
  ``Dirichlet(α + counts)`` (``rb.Simplex``).
* Beta-binomial through an interval bound: ``θ ~ Beta(a, b)`` on ``rb.Bounded(0, 1)``,
  ``k ~ Binomial(n, θ)`` gives ``Beta(a + k, b + n - k)``.

The checks are those of ``test_posteriordb.py`` with exact moments (no reference MCSE).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import reparam_bridge as rb

from .posteriordb_v2_models import wrappers_used
from .test_posteriordb import check_divergences, check_draws
from .test_posteriordb_v2 import record, worst_z

pytestmark = pytest.mark.slow
NUM_CHAINS, NUM_WARMUP, NUM_SAMPLES = 4, 500, 1000


class NigRegression(eqx.Module):
    beta: rb.Real
    sigma2: rb.Positive


def nig_problem():
    rng = np.random.default_rng(7)
    X = np.column_stack([np.ones(30), rng.normal(size=30), rng.normal(size=30)])
    y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(scale=0.8, size=30)
    a0, b0, V0 = 3.0, 2.0, np.diag([4.0, 1.0, 1.0])
    Vn = np.linalg.inv(np.linalg.inv(V0) + X.T @ X)
    mn = Vn @ X.T @ y
    an, bn = a0 + len(y) / 2, b0 + 0.5 * (y @ y - mn @ np.linalg.solve(Vn, mn))
    e_s2 = bn / (an - 1)
    exact = {f"beta[{i + 1}]": {"mean": mn[i], "sd": np.sqrt(e_s2 * Vn[i, i])} for i in range(3)}
    exact["sigma2"] = {"mean": e_s2, "sd": e_s2 / np.sqrt(an - 2)}
    data = {"X": jnp.asarray(X), "y": jnp.asarray(y), "V0": jnp.asarray(V0)}

    def log_joint(m, d):
        return (
            dist.InverseGamma(a0, b0).log_prob(m.sigma2)
            + dist.MultivariateNormal(jnp.zeros(3), m.sigma2 * d["V0"]).log_prob(m.beta)
            + dist.Normal(d["X"] @ m.beta, jnp.sqrt(m.sigma2)).log_prob(d["y"]).sum()
        )

    def values(draws):
        out = {f"beta[{i + 1}]": draws.beta[..., i] for i in range(3)}
        return out | {"sigma2": draws.sigma2}

    return NigRegression(rb.Real(jnp.zeros(3)), rb.Positive(1.0)), log_joint, data, values, exact


def dirichlet_problem():
    alpha, counts = np.array([1.0, 2.0, 0.5, 3.0]), np.array([3.0, 10.0, 0.0, 7.0])
    post = alpha + counts
    mean = post / post.sum()
    sd = np.sqrt(mean * (1 - mean) / (post.sum() + 1))
    exact = {f"p[{i + 1}]": {"mean": mean[i], "sd": sd[i]} for i in range(4)}

    def log_joint(m, c):
        return dist.Dirichlet(jnp.asarray(alpha)).log_prob(m["p"]) + jnp.sum(c * jnp.log(m["p"]))

    def values(draws):
        return {f"p[{i + 1}]": draws["p"][..., i] for i in range(4)}

    return {"p": rb.Simplex(jnp.full(4, 0.25))}, log_joint, jnp.asarray(counts), values, exact


def beta_binomial_problem():
    a, b, n, k = 2.0, 3.0, 20, 14
    pa, pb = a + k, b + n - k
    exact = {"theta": {"mean": pa / (pa + pb), "sd": np.sqrt(pa * pb / ((pa + pb) ** 2 * (pa + pb + 1)))}}

    def log_joint(m, data):
        return dist.Beta(a, b).log_prob(m["theta"]) + dist.Binomial(n, m["theta"]).log_prob(data)

    return (
        {"theta": rb.Bounded(0.5, lower=0.0, upper=1.0)},
        log_joint,
        jnp.asarray(float(k)),
        lambda d: {"theta": d["theta"]},
        exact,
    )


PROBLEMS = {
    "nig_regression": nig_problem,
    "dirichlet_multinomial": dirichlet_problem,
    "beta_binomial": beta_binomial_problem,
}


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_matches_closed_form_posterior(name):
    with jax.enable_x64(True):
        model, log_joint, data, values_of, exact = PROBLEMS[name]()
        post = rb.sample(
            model,
            log_joint,
            data,
            key=jax.random.key(11),
            num_warmup=NUM_WARMUP,
            num_samples=NUM_SAMPLES,
            num_chains=NUM_CHAINS,
            chain_method="vectorized",
            progress_bar=False,
        )
        values = {k: np.asarray(v) for k, v in values_of(post.draws).items()}
    failures = check_draws(values, exact, ref_draws=None) + check_divergences(post)
    record(
        {
            "posterior": name,
            "set": "closed form",
            "dimension": len(exact),
            "wrappers": wrappers_used(model),
            "passed": not failures,
            "worst_z": worst_z(values, exact, ref_draws=None),
            "divergences": int(np.asarray(post.sample_stats["diverging"]).sum()),
            "draws": f"{NUM_CHAINS}x{NUM_SAMPLES}",
            "seconds": None,
        }
    )
    assert not failures, f"{name}:\n  " + "\n  ".join(failures)
