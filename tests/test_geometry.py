"""rb.geometry: curvature against analytic Gaussian posteriors, the comparison table, plots,
and the eight-schools result (non-centred beats centred by >= 10x in ESS per gradient).

Cost: fast tests ~15 s together; the eight-schools comparison (slow) ~40-70 s on 2 cores.
"""

import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import reparam_bridge as rb

PNG = b"\x89PNG\r\n\x1a\n"


def _spd(key, n):
    a = jax.random.normal(key, (n, n))
    return np.asarray(a @ a.T + 0.3 * jnp.eye(n), dtype=np.float64)


# ------------------------------------------------------------------------------ curvature


def test_condition_number_of_a_gaussian_posterior(x64):
    cov = _spd(jax.random.key(0), 4)
    mean = jnp.array([1.0, -2.0, 0.5, 3.0])
    model = {"x": rb.Real(jnp.zeros(4))}

    def log_joint(m):
        return dist.MultivariateNormal(mean, jnp.asarray(cov)).log_prob(m["x"])

    report = rb.geometry.curvature(model, log_joint, progress_bar=False)  # mode by rb.map_estimate
    np.testing.assert_allclose(rb.unwrap(report.at)["x"], mean, atol=1e-5)
    np.testing.assert_allclose(report.condition_number, np.linalg.cond(cov), rtol=1e-6)
    np.testing.assert_allclose(report.eigenvalues, np.sort(1 / np.linalg.eigvalsh(cov)), rtol=1e-6)
    np.testing.assert_allclose(report.hessian, np.linalg.inv(cov), rtol=1e-6, atol=1e-9)
    assert report.grad_norm < 1e-4


def test_condition_number_in_unconstrained_coordinates():
    # s ~ LogNormal(0.3, 0.2): in u = log s (with the Jacobian) exactly N(0.3, 0.2), precision 25;
    # x ~ N(0, diag(0.5, 3)²): precisions 4 and 1/9.  Condition number 25 / (1/9) = 225.
    model = {"s": rb.Positive(2.0, prior=dist.LogNormal(0.3, 0.2)), "x": rb.Real(jnp.array([0.4, -1.0]))}

    def log_joint(m):
        return dist.Normal(0.0, jnp.array([0.5, 3.0])).log_prob(m["x"]).sum()

    report = rb.geometry.curvature(model, log_joint, progress_bar=False)
    np.testing.assert_allclose(report.condition_number, 225.0, rtol=1e-3)
    np.testing.assert_allclose(float(rb.unwrap(report.at)["s"]), np.exp(0.3), rtol=1e-4)
    assert report.largest[0][0] == "s.unconstrained" and report.largest[0][1] > 0.99
    assert report.smallest[0][0] == "x.unconstrained[1]"
    assert "condition number: 225" in str(report)


def test_curvature_of_a_saddle_is_not_a_mode():
    model = {"x": rb.Real(jnp.zeros(2))}
    report = rb.geometry.curvature(model, lambda m: m["x"][0] ** 2 - m["x"][1] ** 2, at=model)
    assert report.condition_number == np.inf
    assert "not a mode" in str(report)
    with pytest.raises(TypeError, match="no optimiser arguments"):
        rb.geometry.curvature(model, lambda m: 0.0, at=model, steps=3)


# -------------------------------------------------------------------------- compare, plots


@pytest.fixture(scope="module")
def small_comparison():
    def log_joint(m):
        return dist.Normal(0.0, jnp.array([1.0, 10.0])).log_prob(m["x"]).sum()

    models = {
        "plain": ({"x": rb.Real(jnp.zeros(2))}, log_joint),
        "scaled": ({"x": rb.LocScale(jnp.zeros(2), 0.0, jnp.array([1.0, 10.0]), centered=0.0)}, log_joint),
    }
    return rb.geometry.compare(
        models, key=jax.random.key(0), num_warmup=200, num_samples=300, num_chains=2, return_posteriors=True
    )


def test_compare_table(small_comparison):
    table, posteriors = small_comparison
    cols = {
        "divergences",
        "min_ess_bulk",
        "min_ess_tail",
        "ess_per_grad",
        "ess_per_second",
        "step_size",
        "mean_tree_depth",
        "max_rhat",
        "condition_number",
        "condition_number_scaled",
        "n_grad",
        "seconds",
        "ess_per_grad_ratio",
    }
    assert cols <= set(table.columns) and list(table.index) == ["plain", "scaled"]
    # condition numbers from draws: ~100 for the raw scales (covariance), ~1 after the rescaling
    assert 40 < table.loc["plain", "condition_number"] < 250
    assert table.loc["scaled", "condition_number"] < 2.5
    assert table.loc["plain", "condition_number_scaled"] < 2.5  # a diagonal mass matrix removes the scales
    for label, post in posteriors.items():
        n_grad = int(post.sample_stats["n_steps"].sum())
        assert table.loc[label, "n_grad"] == n_grad
        np.testing.assert_allclose(table.loc[label, "ess_per_grad"], table.loc[label, "min_ess_bulk"] / n_grad)
    assert table.loc["plain", "ess_per_grad_ratio"] == 1.0


def test_compare_without_pandas(monkeypatch):
    from reparam_bridge.geometry import _table

    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` now raises ImportError
    table = _table({"a": {"divergences": 0, "min_ess_bulk": 10.0}, "b": {"divergences": 3, "min_ess_bulk": 2.0}})
    assert table == {"label": ["a", "b"], "divergences": [0, 3], "min_ess_bulk": [10.0, 2.0]}
    with pytest.raises(TypeError, match="pair"):
        rb.geometry.compare({"a": {"x": rb.Real(0.0)}}, key=jax.random.key(1))


def _is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == PNG


def test_plots_write_pngs(small_comparison, tmp_path):
    table, posteriors = small_comparison
    post = posteriors["plain"]
    paths = [
        rb.geometry.plot_pair(post, ["x[0]", "x[1]"], tmp_path / "pair.png"),
        rb.geometry.plot_pair(post.to_inference_data(), ["x[0]", "x[1]"], tmp_path / "pair_idata.png"),
        rb.geometry.plot_trace(post, tmp_path / "trace.png"),
        rb.geometry.plot_condition_numbers(table, tmp_path / "cond.png"),
    ]
    for p in paths:
        assert _is_png(p) and (tmp_path / p.split("/")[-1]).stat().st_size > 5000
    with pytest.raises(ValueError, match="no variable"):
        rb.geometry.plot_pair(post, ["y", "x[0]"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="select one element"):
        rb.geometry.plot_pair(post, ["x", "x[0]"], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="not positive"):
        rb.geometry.plot_pair(post, ["log(x[0])", "x[1]"], tmp_path / "bad.png")


# ------------------------------------------------------------------------------ eight schools

Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


class Schools(eqx.Module):
    mu: rb.Real
    tau: rb.Positive
    theta: rb.LocScale


def schools_log_joint(m, y, sigma):
    return (
        dist.Normal(0.0, 5.0).log_prob(m.mu)
        + dist.HalfCauchy(5.0).log_prob(m.tau)
        + dist.Normal(m.mu, m.tau).log_prob(m.theta).sum()
        + dist.Normal(m.theta, sigma).log_prob(y).sum()
    )


def schools(centered):
    theta = rb.LocScale(jnp.zeros(8), rb.Ref("mu"), rb.Ref("tau"), centered=1.0)
    model = Schools(rb.Real(0.0), rb.Positive(1.0), theta)
    return rb.reparameterize(model, lambda m: m.theta, centered=centered)


@pytest.mark.slow
def test_eight_schools_non_centred_beats_centred():
    table = rb.geometry.compare(
        {"centred": (schools(1.0), schools_log_joint), "non-centred": (schools(0.0), schools_log_joint)},
        Y,
        SIGMA,
        key=jax.random.key(0),
        num_warmup=1000,
        num_samples=1000,
        num_chains=4,
    )
    print(table.T.to_string())
    assert table.loc["centred", "divergences"] > 10  # the funnel shows
    assert table.loc["non-centred", "divergences"] <= 8  # <= 0.2% of 4000 draws
    assert table.loc["non-centred", "ess_per_grad_ratio"] >= 10
    assert table.loc["non-centred", "max_rhat"] < 1.01


def test_arviz_stat_errors_propagate():
    # < 1 s. A bad argument to an ArviZ function is reported by ArviZ, not swallowed by the adapter.
    from reparam_bridge import arviz as rbaz

    x = np.random.default_rng(0).normal(size=(2, 100))
    assert rbaz.ess(x, method="bulk") > 0
    with pytest.raises(Exception) as info:
        rbaz.ess(x, method="no-such-method")
    assert not isinstance(info.value, ImportError)
