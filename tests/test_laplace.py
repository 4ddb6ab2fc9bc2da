"""rb.laplace: exactness on a conjugate Gaussian model, PSIS k-hat, draws and ArviZ output
(about 20 s on 2 cores)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import reparam_bridge as rb
from reparam_bridge import map_estimate
from reparam_bridge._laplace import laplace


def _linear_data(n=30, d=3):
    kx, kn = jax.random.split(jax.random.key(0))
    X = jax.random.normal(kx, (n, d))
    y = X @ jnp.linspace(-1.0, 1.0, d) + 0.5 * jax.random.normal(kn, (n,))
    return X, y


def test_gaussian_linear_model_is_exact(x64):
    sigma, tau = 0.5, 2.0
    X, y = _linear_data()
    X, y = X.astype(jnp.float64), y.astype(jnp.float64)
    model = {"beta": rb.Real(jnp.zeros(3), prior=dist.Normal(0.0, tau))}

    def log_joint(m, X, y):
        return dist.Normal(X @ m["beta"], sigma).log_prob(y).sum()

    approx = laplace(model, log_joint, X, y, progress_bar=False)
    precision = X.T @ X / sigma**2 + jnp.eye(3) / tau**2
    cov = jnp.linalg.inv(precision)
    mean = cov @ X.T @ y / sigma**2
    assert approx.covariance.dtype == jnp.float64
    np.testing.assert_allclose(rb.unwrap(approx.mean)["beta"], mean, atol=1e-5)
    np.testing.assert_allclose(approx.covariance, cov, atol=1e-5, rtol=1e-5)
    assert approx.names == ("beta.unconstrained[0]", "beta.unconstrained[1]", "beta.unconstrained[2]")
    assert approx.khat < 0.5  # the Gaussian is the posterior: weights all equal
    assert approx.ess > 0.99 * 1000


def test_khat_large_on_skewed_posterior():
    # 20 independent scales, each seen through two observations and no prior: in log-space
    # each posterior has an exponential right tail that the Laplace Gaussian cannot cover.
    d = 20
    y = jnp.stack([jnp.full(d, 0.5), jnp.full(d, -1.0)])
    model = {"s": rb.Positive(jnp.ones(d))}
    approx = laplace(model, lambda m, y: dist.Normal(0.0, m["s"]).log_prob(y).sum(), y, progress_bar=False)
    assert approx.khat > 0.7, approx.khat
    assert approx.ess < 100
    # its draws are offered as a posterior only with a warning that says to sample instead
    with pytest.warns(rb.ReliabilityWarning, match=r"k-hat is \d\.\d\d >= 0\.67.*init=approx"):
        post = approx.to_posterior(jax.random.key(1), num_samples=10, num_chains=1)
    assert post.draws["s"].shape == (1, 10, d)
    unchecked = laplace(
        model, lambda m, y: dist.Normal(0.0, m["s"]).log_prob(y).sum(), y, num_psis_draws=0, progress_bar=False
    )
    with pytest.warns(rb.ReliabilityWarning, match="k-hat was not computed"):
        unchecked.to_posterior(jax.random.key(1), num_samples=10, num_chains=1)


def test_not_positive_definite_names_parameters():
    # a + b is identified, a - b is not: a flat direction.
    model = {"a": rb.Real(0.0), "b": rb.Real(0.0), "c": rb.Real(0.0, prior=dist.Normal(0.0, 1.0))}
    log_joint = lambda m: dist.Normal(m["a"] + m["b"], 1.0).log_prob(0.0)  # noqa: E731
    with pytest.raises(ValueError, match=r"not positive definite.*'a.unconstrained'.*'b.unconstrained'") as e:
        laplace(model, log_joint, optimize=False)
    assert "'c" not in str(e.value)
    # a minimum instead of a maximum
    with pytest.raises(ValueError, match="smallest eigenvalue -2"):
        laplace({"x": rb.Real(0.0)}, lambda m: m["x"] ** 2, optimize=False)


class Scale(eqx.Module):
    loc: rb.Real
    scale: rb.Positive
    n: int = eqx.field(static=True)


def test_draws_model_type_and_inference_data():
    y = jnp.array([1.2, 0.4, 2.1, 1.5, 0.9, 1.1, 1.7, 0.8])
    model = Scale(rb.Real(0.0, prior=dist.Normal(0.0, 10.0)), rb.Positive(1.0, prior=dist.HalfNormal(5.0)), 8)

    def log_joint(m, y):
        return dist.Normal(m.loc, m.scale).log_prob(y).sum()

    approx = laplace(model, log_joint, y, progress_bar=False)
    mode = map_estimate(model, log_joint, y, jacobian=True, progress_bar=False).model
    np.testing.assert_allclose(rb.unwrap(approx.mean).scale, rb.unwrap(mode).scale, rtol=1e-4)
    draws = approx.sample(jax.random.key(1), 500, num_chains=2)
    assert isinstance(draws, Scale) and draws.n == 8
    assert draws.loc.shape == (2, 500) and draws.scale.shape == (2, 500)
    assert bool(jnp.all(draws.scale > 0))
    # the log-scale draws have the Gaussian's mean and sd (within Monte Carlo error)
    log_s = np.log(np.asarray(draws.scale)).ravel()
    m = float(approx.mean.scale.unconstrained)
    sd = float(jnp.sqrt(approx.covariance[1, 1]))
    assert abs(log_s.mean() - m) < 4 * sd / np.sqrt(log_s.size)
    assert abs(log_s.std() / sd - 1) < 0.1
    idata = approx.to_inference_data(jax.random.key(2), num_draws=200, num_chains=2)
    assert set(idata.posterior.data_vars) == {"loc", "scale"}
    assert idata.posterior["scale"].shape == (2, 200)
    unc = approx.sample_unconstrained(jax.random.key(1), 500, num_chains=2)
    np.testing.assert_allclose(rb.unwrap(unc.scale.from_unconstrained(unc.scale.unconstrained)), draws.scale, rtol=1e-5)


def test_optimize_false_warns_off_mode_and_refuses_constraints():
    model = {"mu": rb.Real(3.0, prior=dist.Normal(0.0, 1.0))}
    with pytest.warns(UserWarning, match="not at a mode.*'mu.unconstrained'"):
        approx = laplace(model, lambda m: 0.0, optimize=False, num_psis_draws=0)
    assert np.isnan(approx.khat)
    with pytest.raises(TypeError, match="optimize=False"):
        laplace(model, lambda m: 0.0, optimize=False, steps=10)
    with pytest.raises(TypeError, match="'w'.*NonNegative"):
        laplace({"w": rb.NonNegative(jnp.ones(2))}, lambda m: 0.0)


def test_to_posterior_resamples_with_the_psis_weights():
    # rate | y ~ Gamma(1 + sum y, 1 + n) exactly; the Laplace Gaussian in log(rate) is skewed
    # away from it (its mean of rate is 1.62 against 1.5), yet good enough for PSIS (k-hat
    # 0.35-0.67 over keys 0-3): the resampled draws must follow the exact posterior, q's own must not.
    y = jnp.array([5.0, 0.0, 0.0])
    alpha, beta = 1.0 + float(y.sum()), 1.0 + len(y)
    model = {"rate": rb.Positive(1.0, prior=dist.Gamma(1.0, 1.0))}
    approx = laplace(
        model,
        lambda m, y: dist.Poisson(m["rate"]).log_prob(y).sum(),
        y,
        key=jax.random.key(0),
        num_psis_draws=4000,
        progress_bar=False,
    )
    assert approx.pool.shape == (4000, 1) and approx.khat < 0.7  # PSIS's bound for 4,000 draws
    post = approx.to_posterior(jax.random.key(1), num_samples=1000, num_chains=4)
    rate = np.asarray(post.draws["rate"], np.float64)
    assert rate.shape == (4, 1000)
    sd = np.sqrt(alpha) / beta
    mcse = sd * np.sqrt(1 / approx.ess + 1 / rate.size)  # importance sampling, then resampling
    assert abs(rate.mean() - alpha / beta) < 4 * mcse, (rate.mean(), alpha / beta, mcse)
    assert abs(rate.std() / sd - 1) < 0.1, (rate.std(), sd)
    gaussian = np.asarray(approx.sample(jax.random.key(1), 1000, num_chains=4)["rate"], np.float64)
    assert gaussian.mean() - alpha / beta > 5 * sd / np.sqrt(gaussian.size)  # q alone is biased
