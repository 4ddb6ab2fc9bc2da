"""rb.variational: guides against exact Gaussian posteriors, the sticking-the-landing gradient,
the Approximation interface, errors; LocScale with per-element centredness."""

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import reparam_bridge as rb
from reparam_bridge._guides import FullRank, trainable_partition
from reparam_bridge._variational import negative_elbo

# A conjugate model: x ~ N(0, I), y ~ N(A x, 0.5² I). Posterior N(m, S) is exact.
A = jnp.array([[1.0, 0.8], [0.0, 1.0], [1.0, -1.0]])
Y = jnp.array([0.5, -0.3, 1.2])
NOISE = 0.5


def log_joint(m, y):
    return dist.Normal(0.0, 1.0).log_prob(m["x"]).sum() + dist.Normal(A @ m["x"], NOISE).log_prob(y).sum()


def exact():
    P = np.eye(2) + np.asarray(A).T @ np.asarray(A) / NOISE**2
    S = np.linalg.inv(P)
    return S @ np.asarray(A).T @ np.asarray(Y) / NOISE**2, S, P


MODEL = {"x": rb.Real(jnp.zeros(2))}


def test_fullrank_recovers_the_exact_gaussian():
    m, S, _ = exact()
    q = rb.variational(MODEL, log_joint, Y, key=jax.random.key(0), guide="fullrank", steps=1500, progress_bar=False)
    # STL: at q = p every gradient is 0, so the optimum is reached without Monte Carlo jitter.
    np.testing.assert_allclose(np.asarray(rb.unwrap(q.mean)["x"]), m, atol=2e-3)
    np.testing.assert_allclose(np.asarray(q.covariance), S, atol=2e-3)
    assert q.khat < 0.3 and q.names == ("x.unconstrained[0]", "x.unconstrained[1]")
    assert isinstance(q, rb.Approximation)


def test_meanfield_matches_the_kl_optimal_diagonal():
    # The mean-field optimum of KL(q || N(m, P⁻¹)) has mean m and variances 1 / P_ii.
    m, _, P = exact()
    q = rb.variational(MODEL, log_joint, Y, key=jax.random.key(1), guide="meanfield", steps=1500, progress_bar=False)
    np.testing.assert_allclose(np.asarray(rb.unwrap(q.mean)["x"]), m, atol=2e-3)
    np.testing.assert_allclose(np.diag(np.asarray(q.covariance)), 1 / np.diag(P), rtol=1e-2)
    assert np.asarray(q.covariance)[0, 1] == 0.0
    draws = q.sample(jax.random.key(2), 50, num_chains=3)
    assert draws["x"].shape == (3, 50, 2)
    assert set(rb.arviz.draws_to_dict(q.mean, draws)) == {"x"}


def test_sticking_the_landing_gradient_vanishes_at_the_posterior():
    m, S, _ = exact()
    q = FullRank(jnp.asarray(m, jnp.float32), jnp.zeros(2), jnp.zeros((2, 2)))
    L = np.linalg.cholesky(S)
    raw = np.log(np.expm1(np.diag(L)))  # softplus⁻¹
    q = FullRank(q.loc, jnp.asarray(raw, jnp.float32), jnp.asarray(np.tril(L, -1), jnp.float32))
    params, static = rb.partition(MODEL)
    from jax.flatten_util import ravel_pytree

    _, unravel = ravel_pytree(params)
    log_p = lambda z, _: rb.log_density(log_joint, eqx.combine(unravel(z), static), Y)  # noqa: E731
    train, qs = trainable_partition(q)
    key = jax.random.key(3)
    g_stl = jax.grad(negative_elbo)(train, qs, None, log_p, key, 4)
    g_std = jax.grad(lambda t: negative_elbo(t, qs, None, log_p, key, 4, stick_the_landing=False))(train)
    stl = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g_stl)])
    std = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g_std)])
    assert np.max(np.abs(stl)) < 1e-3  # zero-variance at the optimum
    assert np.max(np.abs(std)) > 1e-2  # the score term the standard estimator keeps


def test_positive_parameter_and_warm_start():
    y = jnp.array([1.1, 0.7, 1.6, 0.9, 1.3])
    model = {"mu": rb.Real(0.0), "s": rb.Positive(1.0)}

    def lj(m, y):
        return (
            dist.Normal(0, 5).log_prob(m["mu"])
            + dist.HalfNormal(2).log_prob(m["s"])
            + dist.Normal(m["mu"], m["s"]).log_prob(y).sum()
        )

    q = rb.variational(model, lj, y, key=jax.random.key(4), guide="fullrank", steps=800, progress_bar=False)
    assert np.isfinite(q.elbo) and q.losses.shape == (800,)
    inits = q.initial_params(jax.random.key(5), 2)
    assert inits["s"].unconstrained.shape == (2,)
    idata = q.to_inference_data(jax.random.key(6), num_draws=20)
    assert sorted(rb.arviz.group(idata, "posterior").data_vars) == ["mu", "s"]


def test_bad_input():
    with pytest.raises(ValueError, match="guide must be"):
        rb.variational(MODEL, log_joint, Y, key=jax.random.key(0), guide="gauss", steps=10, progress_bar=False)
    with pytest.raises(TypeError, match="key"):
        rb.variational(MODEL, log_joint, Y, key=None, steps=10)
    with pytest.raises(ValueError, match="steps"):
        rb.variational(MODEL, log_joint, Y, key=jax.random.key(0), steps=0, progress_bar=False)
    with pytest.raises(TypeError, match="'w'.*Parameterize"):
        rb.variational({"w": rb.Parameterize(jnp.exp, jnp.zeros(2))}, lambda m: 0.0, key=jax.random.key(0))
    from flowjax.distributions import StandardNormal

    with pytest.raises(ValueError, match=r"shape \(3,\).*\(2,\)"):
        rb.variational(MODEL, log_joint, Y, key=jax.random.key(0), guide=StandardNormal((3,)), progress_bar=False)


def test_missing_flowjax_names_the_extra(monkeypatch):
    for name in [m for m in sys.modules if m == "flowjax" or m.startswith("flowjax.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "flowjax", None)
    with pytest.raises(ImportError, match=r"reparam_bridge\[flows\]"):
        rb.variational(MODEL, log_joint, Y, key=jax.random.key(0), guide="flow", steps=5, progress_bar=False)


@pytest.mark.slow
def test_flow_guide_fits_a_correlated_gaussian():
    m, S, _ = exact()
    q = rb.variational(MODEL, log_joint, Y, key=jax.random.key(7), guide="flow", steps=1500, progress_bar=False)
    assert isinstance(q.guide.dist, __import__("flowjax").distributions.AbstractDistribution)
    draws = np.asarray(q.sample(jax.random.key(8), 4000)["x"][0])
    np.testing.assert_allclose(draws.mean(0), m, atol=0.05)
    np.testing.assert_allclose(np.cov(draws.T), S, atol=0.03)
    assert q.khat < 0.7


# ---------------------------------------------------------------------------------------
# LocScale with a per-element centredness


def test_locscale_array_centredness_jacobian_against_jacfwd():
    c = jnp.array([0.0, 0.3, 1.0])
    loc, scale = 0.7, jnp.array([0.5, 2.0, 3.0])
    xt = jnp.array([0.2, -1.0, 0.4])
    node = rb.LocScale.from_unconstrained(xt, loc, scale, centered=c)
    f = lambda u: rb.unwrap(rb.LocScale.from_unconstrained(u, loc, scale, centered=c))  # noqa: E731
    _, logdet = jnp.linalg.slogdet(jax.jacfwd(f)(xt))
    np.testing.assert_allclose(float(rb.log_det_jacobian(node)), float(logdet), rtol=1e-5)
    expected = loc + scale ** (1 - c) * (xt - c * loc)
    np.testing.assert_allclose(np.asarray(rb.unwrap(node)), np.asarray(expected), rtol=1e-6)
    # the centredness is frozen: not a free array
    params, _ = rb.partition({"t": node})
    assert [x.shape for x in jax.tree_util.tree_leaves(params)] == [(3,)]


def test_locscale_array_centredness_keeps_values_and_checks_range():
    model = {
        "mu": rb.Real(1.0),
        "tau": rb.Positive(2.0),
        "theta": rb.LocScale(jnp.array([3.0, 0.0, -1.0]), rb.Ref("mu"), rb.Ref("tau")),
    }
    c = jnp.array([0.0, 0.5, 1.0])
    new = rb.reparameterize(model, lambda m: m["theta"], centered=c)
    np.testing.assert_allclose(np.asarray(rb.unwrap(new)["theta"]), [3.0, 0.0, -1.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new["theta"].unconstrained)[0], 1.0)  # (3 - 1) / 2
    back = rb.reparameterize(new, lambda m: m["theta"], centered=1.0)
    np.testing.assert_allclose(np.asarray(back["theta"].unconstrained), [3.0, 0.0, -1.0], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"every element of centered must lie in \[0, 1\]"):
        rb.LocScale(jnp.zeros(2), 0.0, 1.0, centered=jnp.array([0.5, 1.5]))
    with pytest.raises(TypeError, match="rb.reparameterize"):
        rb.LocScale(jnp.zeros(2), rb.Ref("mu"), 1.0, centered=jnp.array([0.5, 1.0]))
