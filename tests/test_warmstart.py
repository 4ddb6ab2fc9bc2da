"""Warm starts: rb.sample(init=approx) with Laplace/Pathfinder results, multi-start
ensembles, and the approximation interface (about 1-2 minutes on 2 shared cores)."""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import reparam_bridge as rb
from reparam_bridge._warmstart import (
    SEEDED_NUM_WARMUP,
    GoodApproximationWarning,
    seeded_step_size,
)
from reparam_bridge.arviz import import_arviz

az = import_arviz()

# Conjugate model: beta ~ N(0, tau² I), y ~ N(X beta, sigma²); the posterior is Gaussian.
SIGMA, TAU = 0.5, 2.0


def _data(n=40, d=3):
    kx, kn = jax.random.split(jax.random.key(0))
    X = jax.random.normal(kx, (n, d))
    X = X.at[:, 1].set(X[:, 0] + 0.3 * X[:, 1])  # correlated coefficients: a dense metric matters
    y = X @ jnp.linspace(-1.0, 1.0, d) + SIGMA * jax.random.normal(kn, (n,))
    return X, y


def _log_joint(m, X, y):
    return dist.Normal(X @ m["beta"], SIGMA).log_prob(y).sum()


def _exact(X, y):
    precision = X.T @ X / SIGMA**2 + jnp.eye(X.shape[1]) / TAU**2
    cov = jnp.linalg.inv(precision)
    return cov @ X.T @ y / SIGMA**2, cov


MODEL = {"beta": rb.Real(jnp.zeros(3), prior=dist.Normal(0.0, TAU))}


@pytest.fixture(scope="module")
def approx():
    X, y = _data()
    return rb.laplace(MODEL, _log_joint, X, y, progress_bar=False)


def test_seeded_sample_matches_exact_posterior(approx):
    X, y = _data()
    mean, cov = _exact(X, y)
    with pytest.warns(GoodApproximationWarning, match=r"k-hat (-?\d+\.\d\d|-inf) < 0\.5.*to_posterior"):
        post = rb.sample(
            MODEL,
            _log_joint,
            X,
            y,
            key=jax.random.key(1),
            init=approx,
            num_samples=500,
            num_chains=4,
            chain_method="vectorized",
            progress_bar=False,
            dense_mass=True,
        )
    assert post.mcmc.num_warmup == SEEDED_NUM_WARMUP
    beta = np.asarray(post.draws["beta"])
    for i in range(3):
        ess = float(az.ess(beta[..., i], method="bulk"))
        sd = float(np.sqrt(cov[i, i]))
        assert abs(beta[..., i].mean() - float(mean[i])) < 5 * sd / np.sqrt(ess)
        assert abs(beta[..., i].std() / sd - 1) < 0.1
        assert float(az.rhat(beta[..., i])) < 1.01
    # the seeded metric is the Laplace covariance, and the chains started at distinct draws
    np.testing.assert_allclose(post.mcmc.sampler._inverse_mass_matrix, approx.covariance, rtol=1e-4, atol=1e-8)
    assert post.mcmc.sampler._step_size == pytest.approx(seeded_step_size(np.asarray(approx.covariance), True))


def test_num_warmup_overrides_and_diagonal_seed(approx):
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GoodApproximationWarning)
        post = rb.sample(
            MODEL,
            _log_joint,
            X,
            y,
            key=jax.random.key(2),
            init=approx,
            num_warmup=50,
            num_samples=20,
            num_chains=2,
            chain_method="vectorized",
            progress_bar=False,
        )
    assert post.mcmc.num_warmup == 50
    np.testing.assert_allclose(post.mcmc.sampler._inverse_mass_matrix, jnp.diag(approx.covariance), rtol=1e-4)
    # with the diagonal, the correlation left over shrinks the seeded step size
    assert seeded_step_size(np.asarray(approx.covariance), False) < seeded_step_size(
        np.asarray(approx.covariance), True
    )


def test_the_default_loop_is_seeded_too(approx):
    # on CPU the default is the bridge's compiled loop (chains in sequence), not NumPyro's MCMC:
    # the seeded metric reaches its kernel (no warmup, so the last state still holds it)
    X, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GoodApproximationWarning)
        post = rb.sample(
            MODEL,
            _log_joint,
            X,
            y,
            key=jax.random.key(4),
            init=approx,
            num_warmup=0,
            num_samples=5,
            num_chains=2,
            progress_bar=False,
            dense_mass=True,
        )
    assert post.mcmc is None and post.draws["beta"].shape == (2, 5, 3)
    inverse_mass = np.asarray(post._last_state.adapt_state.inverse_mass_matrix)
    for chain in range(2):
        np.testing.assert_allclose(inverse_mass[chain], approx.covariance, rtol=1e-4, atol=1e-8)


def test_starts_are_distinct_draws(approx):
    starts = approx.initial_params(jax.random.key(3), 4)["beta"].unconstrained
    assert starts.shape == (4, 3)
    assert len({tuple(np.round(np.asarray(s), 6)) for s in starts}) == 4


def test_to_posterior_and_wrong_model(approx):
    post = approx.to_posterior(jax.random.key(4), num_samples=50, num_chains=2)
    assert post.draws["beta"].shape == (2, 50, 3)
    assert post.to_inference_data().posterior["beta"].shape == (2, 50, 3)
    other = {"beta": rb.Real(jnp.zeros(4))}
    X, y = _data(d=4)
    with pytest.raises(ValueError, match="init=LaplaceResult was built for a model with other free arrays"):
        rb.sample(other, _log_joint, X, y, key=jax.random.key(0), init=approx, progress_bar=False)


def test_pathfinder_gaussian():
    X, y = _data()
    mean, cov = _exact(X, y)
    approx = rb.pathfinder(MODEL, _log_joint, X, y, key=jax.random.key(5), num_paths=2, maxiter=50)
    assert isinstance(approx, rb.Approximation)
    assert approx.khat < 0.5
    np.testing.assert_allclose(approx.flat_mean, mean, atol=0.1)
    np.testing.assert_allclose(np.sqrt(np.diag(approx.covariance)), np.sqrt(np.diag(cov)), rtol=0.15)
    draws = approx.sample(jax.random.key(6), 200, num_chains=2)["beta"]
    assert draws.shape == (2, 200, 3)
    idata = approx.to_inference_data(jax.random.key(7), 100)
    assert idata.attrs["inference_library"] == "reparam_bridge.pathfinder"


# --------------------------------------------------------------------------------------
# multi-start ensembles


def _bimodal(m):
    # modes at x = ±3, separated by a barrier NUTS does not cross in a short run
    return jnp.logaddexp(dist.Normal(3.0, 0.5).log_prob(m["x"]), dist.Normal(-3.0, 0.5).log_prob(m["x"]))


def test_ensemble_reports_modes_and_starts_chains_in_each():
    model = {"x": rb.Real(0.5)}
    res = rb.map_estimate_ensemble(model, _bimodal, key=jax.random.key(0), num_starts=8, init_radius=6.0)
    assert res.multimodal and res.num_modes == 2
    optima = np.asarray(rb.unwrap(res.models)["x"])
    np.testing.assert_allclose(np.sort(np.abs(optima)), 3.0, atol=1e-3)
    post = rb.sample(
        model,
        _bimodal,
        key=jax.random.key(1),
        init=res,
        num_warmup=100,
        num_samples=100,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    chain_means = np.asarray(post.draws["x"]).mean(axis=1)
    assert (chain_means > 2).any() and (chain_means < -2).any()  # every mode got a chain
    assert float(az.rhat(np.asarray(post.draws["x"]))) > 1.1  # and r-hat says they disagree


def test_ensemble_unimodal_fit():
    res = rb.fit_ensemble(
        {"s": rb.Positive(1.0)}, lambda m: (m["s"] - 3.0) ** 2, key=jax.random.key(0), num_starts=4, steps=2000
    )
    assert not res.multimodal
    assert res.losses.shape == (4, 2000)
    np.testing.assert_allclose(rb.unwrap(res.models)["s"], 3.0, atol=1e-3)


def test_ensemble_bad_input():
    with pytest.raises(ValueError, match="num_starts must be a positive integer"):
        rb.map_estimate_ensemble({"x": rb.Real(0.0)}, _bimodal, key=jax.random.key(0), num_starts=0)
    with pytest.raises(TypeError, match="needs key="):
        rb.map_estimate_ensemble({"x": rb.Real(0.0)}, _bimodal, key=None)


class _Pair(eqx.Module):
    a: rb.Real
    b: rb.Positive


def test_ensemble_models_are_built_under_filter_vmap():
    model = _Pair(rb.Real(jnp.zeros(2)), rb.Positive(1.0))
    res = rb.map_estimate_ensemble(
        model, lambda m: -jnp.sum(m.a**2) - (m.b - 2.0) ** 2, key=jax.random.key(0), num_starts=3, jacobian=False
    )
    assert type(res.models) is _Pair and res.models.a.unconstrained.shape == (3, 2)
    assert type(res.model()) is _Pair and res.model().a.unconstrained.shape == (2,)
