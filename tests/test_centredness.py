"""rb.geometry.learn_centredness (VIP): a hierarchy with mixed amounts of data per group,
where neither all-centred nor all-non-centred is right, against the exact posterior."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import reparam_bridge as rb
from reparam_bridge.arviz import mcse

TAU, SIGMA, S_MU = 0.3, 1.0, 5.0  # known scales: the posterior is Gaussian and exact
N = np.array([1] * 4 + [100] * 4, dtype=np.float32)  # observations per group


class Hierarchy(eqx.Module):
    mu: rb.Real
    theta: rb.LocScale


def log_joint(m, n, ybar):
    return (
        dist.Normal(0.0, S_MU).log_prob(m.mu)
        + dist.Normal(m.mu, TAU).log_prob(m.theta).sum()
        + dist.Normal(m.theta, SIGMA / jnp.sqrt(n)).log_prob(ybar).sum()
    )  # group means: sufficient


def data():
    rng = np.random.default_rng(13)
    theta = 1.0 + TAU * rng.standard_normal(len(N))
    ybar = theta + SIGMA / np.sqrt(N) * rng.standard_normal(len(N))
    return jnp.asarray(N), jnp.asarray(ybar, jnp.float32)


def exact_posterior(ybar):
    """Mean and covariance of (mu, theta) from the Gaussian precision."""
    J = len(N)
    P = np.zeros((J + 1, J + 1))
    P[0, 0] = 1 / S_MU**2 + J / TAU**2
    P[0, 1:] = P[1:, 0] = -1 / TAU**2
    P[1:, 1:] = np.diag(1 / TAU**2 + N / SIGMA**2)
    b = np.concatenate([[0.0], N * np.asarray(ybar, np.float64) / SIGMA**2])
    S = np.linalg.inv(P)
    return S @ b, S


def centred():
    return Hierarchy(rb.Real(0.0), rb.LocScale(jnp.zeros(len(N)), rb.Ref("mu"), TAU, centered=1.0))


def test_learn_centredness_rejects_a_model_without_locscale():
    with pytest.raises(ValueError, match="no rb.LocScale"):
        rb.geometry.learn_centredness({"x": rb.Real(0.0)}, lambda m: 0.0, key=jax.random.key(0))


@pytest.mark.slow
def test_learned_centredness_beats_both_extremes_and_matches_the_exact_posterior():
    n, ybar = data()
    model = centred()
    learned = rb.geometry.learn_centredness(model, log_joint, n, ybar, key=jax.random.key(0), progress_bar=False)
    c = np.asarray(rb.unwrap(learned.theta.centered))
    assert c.shape == (len(N),)
    print("learned centredness", c)  # the exact ELBO optimum is 0.08 for the 1-observation groups, 0.90 for the others
    assert c[N == 1].max() < c[N == 100].min(), c  # weak groups towards non-centred, strong ones towards centred
    models = {
        "centred": (model, log_joint),
        "non-centred": (rb.reparameterize(model, lambda m: m.theta, centered=0.0), log_joint),
        "learned": (learned, log_joint),
    }
    table, posts = rb.geometry.compare(
        models, n, ybar, key=jax.random.key(1), num_warmup=1000, num_samples=1000, num_chains=4, return_posteriors=True
    )
    print(
        table[
            ["divergences", "min_ess_bulk", "ess_per_grad", "ess_per_grad_ratio", "condition_number_scaled"]
        ].to_string()
    )
    assert table["ess_per_grad"].idxmax() == "learned"  # the table says which won
    assert table.loc["learned", "ess_per_grad"] >= max(
        table.loc["centred", "ess_per_grad"], table.loc["non-centred", "ess_per_grad"]
    )
    assert table.loc["learned", "divergences"] == 0
    mean, cov = exact_posterior(ybar)
    d = posts["learned"].draws
    draws = np.concatenate([np.asarray(d.mu)[..., None], np.asarray(d.theta)], axis=-1)
    for i in range(len(mean)):
        x = draws[..., i].astype(np.float64)
        assert abs(x.mean() - mean[i]) < 4 * mcse(x, method="mean"), (i, x.mean(), mean[i])
        assert abs(x.std() - np.sqrt(cov[i, i])) < 4 * mcse(x, method="sd"), (i, x.std(), np.sqrt(cov[i, i]))
