"""rb.blackjax: the bridge's log-density sampled by BlackJAX NUTS (window adaptation).

Cost: ~20 s on 2 CPU cores (one 4-chain BlackJAX run on eight schools, compiled once).
"""

import json
import math
import pathlib
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import reparam_bridge as rb
from reparam_bridge import arviz as az  # the ArviZ 0.2x/1.x adapter: same calls, same numbers

DATA = (
    pathlib.Path(__file__).resolve().parents[2]
    / "shared"
    / "posteriordb"
    / "eight_schools-eight_schools_noncentered.json"
)


def test_package_imports_without_blackjax():
    code = "import sys; sys.modules['blackjax'] = None; import reparam_bridge as rb; print(rb.blackjax.logdensity)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


class EightSchools(eqx.Module):
    mu: rb.Real
    tau: rb.Positive
    theta_tilde: rb.Real


def log_joint(m, y, sigma):
    theta = m.mu + m.tau * m.theta_tilde
    return (
        dist.Normal(0.0, 5.0).log_prob(m.mu)
        + dist.HalfCauchy(5.0).log_prob(m.tau)
        + dist.Normal(0.0, 1.0).log_prob(m.theta_tilde).sum()
        + dist.Normal(theta, sigma).log_prob(y).sum()
    )


def _data():
    d = json.loads(DATA.read_text())
    return d, jnp.asarray(d["data"]["y"], jnp.float32), jnp.asarray(d["data"]["sigma"], jnp.float32)


def _model():
    return EightSchools(rb.Real(0.0), rb.Positive(1.0), rb.Real(jnp.zeros(8)))


def test_logdensity_matches_log_density():
    _, y, sigma = _data()
    model = _model()
    fn, pos = rb.blackjax.logdensity(model, log_joint, y, sigma)
    assert jax.tree_util.tree_structure(pos) == jax.tree_util.tree_structure(rb.partition(model)[0])
    moved = jax.tree_util.tree_map(lambda x: x + 0.3, pos)
    expected = rb.log_density(log_joint, eqx.combine(moved, rb.partition(model)[1]), y, sigma)
    np.testing.assert_allclose(fn(moved), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(fn)(moved), expected, rtol=1e-5)


def test_logdensity_checks_like_sample():
    with pytest.raises(ValueError, match="scalar"):
        rb.blackjax.logdensity({"x": rb.Real(jnp.zeros(3))}, lambda m: m["x"])
    with pytest.raises(TypeError, match="'w'"):
        rb.blackjax.logdensity({"w": rb.NonNegative(jnp.ones(2))}, lambda m: m["w"].sum())


def test_posterior_rejects_wrong_positions():
    model = {"s": rb.Positive(1.0)}
    with pytest.raises(ValueError, match="structure"):
        rb.blackjax.posterior(model, {"t": jnp.zeros((2, 3))})
    with pytest.raises(ValueError, match="chain, draw"):
        rb.blackjax.posterior(model, rb.partition({"s": rb.Positive.from_unconstrained(jnp.zeros(3))})[0])
    post = rb.blackjax.posterior(
        model, rb.partition({"s": rb.Positive.from_unconstrained(jnp.zeros(3))})[0], chain_axis=False
    )
    assert post.draws["s"].shape == (1, 3)


@pytest.mark.slow
def test_blackjax_nuts_reproduces_eight_schools():
    blackjax = pytest.importorskip("blackjax")
    ref, y, sigma = _data()
    fn, pos = rb.blackjax.logdensity(_model(), log_joint, y, sigma)
    num_chains, num_warmup, num_samples = 4, 500, 1000

    def one_chain(key, position):
        warm_key, run_key = jax.random.split(key)
        warmup = blackjax.window_adaptation(blackjax.nuts, fn, target_acceptance_rate=0.9)
        (state, params), _ = warmup.run(warm_key, position, num_steps=num_warmup)
        step = blackjax.nuts(fn, **params).step

        def body(state, key):
            state, info = step(key, state)
            return state, (state.position, info)

        _, (positions, info) = jax.lax.scan(body, state, jax.random.split(run_key, num_samples))
        return positions, info

    keys = jax.random.split(jax.random.key(0), num_chains)
    starts = jax.tree_util.tree_map(
        lambda x: x[None] + jax.random.uniform(jax.random.key(1), (num_chains, *x.shape), minval=-1, maxval=1), pos
    )
    positions, info = jax.jit(jax.vmap(one_chain))(keys, starts)
    post = rb.blackjax.posterior(_model(), positions, info)

    assert post.draws.theta_tilde.shape == (num_chains, num_samples, 8)
    assert post.sample_stats["diverging"].shape == (num_chains, num_samples)
    assert post.sample_stats["diverging"].mean() < 0.01
    idata = post.to_inference_data()
    assert set(idata.posterior.data_vars) == {"mu", "tau", "theta_tilde"}
    assert "diverging" in idata.sample_stats

    # mu and tau against posteriordb's reference (10,000 draws), within 5 Monte Carlo SEs
    summary = az.summary(idata, var_names=["mu", "tau"], kind="all")
    for name in ("mu", "tau"):
        r = ref["reference"][name]
        mcse = np.hypot(summary.loc[name, "mcse_mean"], r["sd"] / np.sqrt(r["n_draws"]))
        assert abs(summary.loc[name, "mean"] - r["mean"]) < 5 * mcse, (name, summary.loc[name].to_dict(), r)
        assert abs(summary.loc[name, "sd"] / r["sd"] - 1) < 0.15, (name, summary.loc[name, "sd"], r["sd"])
    assert summary["r_hat"].max() < 1.02

    # and against rb.sample (NumPyro) on the same density: means agree within 5 combined MCSE
    numpyro_post = rb.sample(
        _model(),
        log_joint,
        y,
        sigma,
        key=jax.random.key(2),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
        target_accept_prob=0.9,
    )
    other = az.summary(numpyro_post.to_inference_data(), var_names=["mu", "tau"], kind="all")
    for name in ("mu", "tau"):
        se = np.hypot(summary.loc[name, "mcse_mean"], other.loc[name, "mcse_mean"])
        assert abs(summary.loc[name, "mean"] - other.loc[name, "mean"]) < 5 * se, name


def test_posterior_stats_from_states_feed_geometry_summarize():
    # ~5 s: 2 chains x 200 BlackJAX NUTS steps (fixed step size, no warmup) on a 2-d Gaussian.
    blackjax = pytest.importorskip("blackjax")
    model = {"x": rb.Real(jnp.zeros(2))}
    fn, pos = rb.blackjax.logdensity(model, lambda m: dist.Normal(0.0, 1.0).log_prob(m["x"]).sum())
    nuts = blackjax.nuts(fn, step_size=0.5, inverse_mass_matrix=jnp.ones(2))

    def one_chain(key):
        def body(state, k):
            state, info = nuts.step(k, state)
            return state, (state, info)

        return jax.lax.scan(body, nuts.init(pos), jax.random.split(key, 200))[1]

    states, info = jax.jit(jax.vmap(one_chain))(jax.random.split(jax.random.key(0), 2))
    post = rb.blackjax.posterior(model, states, info, step_size=0.5)
    stats = post.sample_stats
    assert {"lp", "step_size", "tree_depth", "n_steps", "diverging"} <= set(stats)
    np.testing.assert_allclose(stats["lp"], np.asarray(jax.vmap(jax.vmap(fn))(states.position)), rtol=1e-5)
    assert stats["step_size"].shape == (2, 200) and np.all(stats["step_size"] == 0.5)
    # tree depth is floor(log2(n_steps)) + 1, as for NumPyro
    np.testing.assert_array_equal(2 ** (stats["tree_depth"] - 1) <= stats["n_steps"], True)
    np.testing.assert_array_equal(stats["n_steps"] < 2 ** stats["tree_depth"], True)
    row = rb.geometry.summarize(post)
    assert row["step_size"] == 0.5 and row["mean_tree_depth"] >= 1 and row["n_grad"] == int(stats["n_steps"].sum())
    with pytest.raises(ValueError, match="step_size"):
        rb.blackjax.posterior(model, states, info, step_size=jnp.ones(3))

    # without info or states, the stats it needs are missing: nan, not KeyError
    bare = rb.geometry.summarize(rb.blackjax.posterior(model, states.position))
    assert all(math.isnan(bare[k]) for k in ("divergences", "step_size", "mean_tree_depth", "ess_per_grad", "n_grad"))
