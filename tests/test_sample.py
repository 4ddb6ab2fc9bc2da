"""rb.sample and Posterior: errors before compilation, kernel options, per-chain inits, draws
as the user's model type, sample stats, ArviZ conversion, LOO, resume, save/load.

Real NumPyro runs throughout, kept tiny (2 chains, a few hundred draws): about 30 s in all.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.infer import HMC, NUTS
from scipy import stats

import reparam_bridge as rb
from reparam_bridge import arviz as az  # the ArviZ 0.2x/1.x adapter: same calls, same numbers

STATS = ("diverging", "n_steps", "tree_depth", "energy", "step_size", "acceptance_rate", "lp")
X = jnp.linspace(-1.0, 1.0, 12)
Y = 0.3 + 0.8 * X + 0.2 * jnp.sin(7.0 * X)  # deterministic "noise"


class Regression(eqx.Module):
    mu: rb.Real
    sigma: rb.Positive
    layers: list  # [eqx.nn.Linear] -> ArviZ name "layers.0.weight"


def make_model(mu=0.0, sigma=1.0, weight=0.5):
    linear = eqx.nn.Linear(1, 1, use_bias=False, key=jax.random.key(0))
    linear = eqx.tree_at(lambda lin: lin.weight, linear, jnp.full((1, 1), weight))
    return Regression(rb.Real(mu), rb.Positive(sigma), [linear])


def mean_fn(m, x):
    return m.mu + jax.vmap(m.layers[0])(x[:, None])[:, 0]


def pointwise(m, x, y):
    return dist.Normal(mean_fn(m, x), m.sigma).log_prob(y)


def log_joint(m, x, y):
    return (
        dist.Normal(0.0, 1.0).log_prob(m.mu)
        + dist.HalfNormal(1.0).log_prob(m.sigma)
        + dist.Normal(0.0, 1.0).log_prob(m.layers[0].weight).sum()
        + pointwise(m, x, y).sum()
    )


def run(model=None, *, num_warmup=200, num_samples=200, num_chains=2, seed=0, **kw):
    return rb.sample(
        model if model is not None else make_model(),
        log_joint,
        X,
        Y,
        key=jax.random.key(seed),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="vectorized",
        progress_bar=False,
        **kw,
    )


@pytest.fixture(scope="module")
def post():
    return run(log_likelihood=pointwise)


# --------------------------------------------------------------------------------------
# errors, raised before any sampling


class Counting:
    """A log_joint that counts its calls (traces count too)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def sample_with(model, fn, *args, **kw):
    return rb.sample(
        model, fn, *args, key=jax.random.key(0), num_warmup=10, num_samples=10, num_chains=2, progress_bar=False, **kw
    )


def test_no_free_arrays():
    lj = Counting(lambda m: jnp.sum(m["frozen"]))
    model = {"frozen": rb.NonTrainable(jnp.ones(2)), "n": jnp.arange(3), "name": "x"}
    with pytest.raises(ValueError, match="no free arrays"):
        sample_with(model, lj)
    assert lj.calls == 0


def test_non_scalar_log_joint():
    lj = Counting(lambda m, y: dist.Normal(m["mu"], 1.0).log_prob(y))  # forgot .sum()
    with pytest.raises(ValueError, match=r"scalar.*\(3,\)"):
        sample_with({"mu": rb.Real(0.0)}, lj, jnp.ones(3))
    assert lj.calls == 1  # traced once for its shape, never run


@pytest.mark.parametrize(
    "model, path, instead",
    [
        ({"mu": rb.Real(0.0), "scale": rb.NonNegative(jnp.array(1.0))}, "scale", "rb.Positive"),
        ({"mu": rb.Real(0.0), "block": {"w": rb.Parameterize(jnp.exp, jnp.zeros(2))}}, "block.w", "Bijector"),
        (Regression(rb.Real(0.0), rb.NonNegative(jnp.array(1.0)), []), "sigma", "rb.Positive"),
    ],
)
def test_non_bijective_wrapper_is_named(model, path, instead):
    lj = Counting(lambda m: 0.0)
    with pytest.raises(TypeError, match=rf"'{path}'.*no log-Jacobian") as err:
        sample_with(model, lj)
    assert instead in str(err.value)
    assert lj.calls == 0


class Noise(eqx.Module):
    sigma: rb.Positive


class BoundModel(eqx.Module):
    mu: rb.Real
    noise: Noise


def uniform_noise_log_joint(m, y):
    # y ~ Uniform(mu - sigma, mu + sigma): -inf unless every |y - mu| < sigma
    inside = jnp.all(jnp.abs(y - m.mu) < m.noise.sigma)
    return dist.Normal(0.0, 10.0).log_prob(m.mu) + jnp.where(inside, -y.size * jnp.log(2 * m.noise.sigma), -jnp.inf)


def test_non_finite_initial_point_names_the_parameter():
    y = jnp.array([-2.0, 0.5, 3.0])
    bad = BoundModel(rb.Real(0.0), Noise(rb.Positive(1.0)))  # sigma must exceed 3
    with pytest.raises(ValueError, match=r"non-finite log-density.*'noise\.sigma'") as err:
        sample_with(bad, uniform_noise_log_joint, y)
    assert "'mu'" not in str(err.value)
    good = BoundModel(rb.Real(0.0), Noise(rb.Positive(5.0)))
    assert np.isfinite(float(rb.log_density(uniform_noise_log_joint, good, y)))


def test_key_is_required():
    with pytest.raises(TypeError, match="key"):
        rb.sample(make_model(), log_joint, X, Y, key=None)


# --------------------------------------------------------------------------------------
# kernels and their options


def test_hmc_kernel_and_options_pass_through():
    post = run(kernel="hmc", num_steps=3, trajectory_length=None, num_warmup=50, num_samples=20)
    assert type(post.mcmc.sampler) is HMC
    assert post.mcmc.sampler._num_steps == 3
    assert np.all(post.sample_stats["n_steps"] == 3)
    assert "log_likelihood" not in az.groups(post.to_inference_data())  # none asked for


def test_nuts_options_pass_through():
    post = run(dense_mass=True, target_accept_prob=0.95, max_tree_depth=2, num_warmup=100, num_samples=50)
    sampler = post.mcmc.sampler
    assert type(sampler) is NUTS
    assert sampler._target_accept_prob == 0.95
    assert post.sample_stats["tree_depth"].max() <= 2
    assert post.sample_stats["n_steps"].max() <= 3
    inverse_mass = post.mcmc.last_state.adapt_state.inverse_mass_matrix
    assert inverse_mass.shape == (2, 3, 3)  # (chain, d, d): dense
    assert np.any(np.abs(np.asarray(inverse_mass)[:, 0, 1:]) > 0)


def test_unknown_kernel_name():
    with pytest.raises(ValueError, match="kernel"):
        run(kernel="mala")


def test_explicit_per_chain_init():
    inits = [make_model(-1.0, 0.5, 2.0), make_model(1.5, 2.0, -1.0)]
    # no warmup, one tiny HMC step: the first draw is (almost) the initial point
    post = run(
        init=inits,
        num_warmup=0,
        num_samples=1,
        kernel="hmc",
        num_steps=1,
        trajectory_length=None,
        step_size=1e-6,
        adapt_step_size=False,
        adapt_mass_matrix=False,
    )
    for chain, m in enumerate(inits):
        for got, want in [
            (post.draws.mu, m.mu),
            (post.draws.sigma, m.sigma),
            (post.draws.layers[0].weight, m.layers[0].weight),
        ]:
            np.testing.assert_allclose(got[chain, 0], rb.unwrap(want), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="init"):
        run(init=inits[:1])


# --------------------------------------------------------------------------------------
# the Posterior


def test_draws_are_the_model_type(post):
    draws = post.draws
    assert type(draws) is Regression and type(draws.layers[0]) is eqx.nn.Linear
    assert not rb.contains_unwrappables(draws)
    assert draws.mu.shape == draws.sigma.shape == (2, 200)
    assert draws.layers[0].weight.shape == (2, 200, 1, 1)
    assert bool(jnp.all(draws.sigma > 0))
    assert (post.num_chains, post.num_draws) == (2, 200)


def test_unconstrained(post):
    unc = post.unconstrained
    assert type(unc) is Regression and isinstance(unc.sigma, rb.Positive)
    assert unc.sigma.unconstrained.shape == (2, 200)
    np.testing.assert_allclose(jnp.exp(unc.sigma.unconstrained), post.draws.sigma, rtol=1e-6)
    np.testing.assert_array_equal(unc.mu.unconstrained, post.draws.mu)
    # a draw taken out of the batch is an ordinary wrapped model
    one = jax.tree_util.tree_map(lambda x: x[1, 7], unc)
    assert float(rb.unwrap(one).sigma) == pytest.approx(float(post.draws.sigma[1, 7]))


def test_sample_stats(post):
    s = post.sample_stats
    assert set(STATS) <= set(s)
    for name in STATS:
        assert np.shape(s[name]) == (2, 200), name
    assert s["diverging"].dtype == bool
    assert np.all(s["n_steps"] >= 1) and np.all(s["n_steps"] < 2 ** s["tree_depth"])
    assert np.all((s["acceptance_rate"] >= 0) & (s["acceptance_rate"] <= 1))
    assert np.all(s["step_size"] > 0)
    # lp is the log-density of the unconstrained draws (with the Jacobian)
    one = jax.tree_util.tree_map(lambda x: x[0, 5], post.unconstrained)
    assert s["lp"][0, 5] == pytest.approx(float(rb.log_density(log_joint, one, X, Y)), rel=1e-5)


def test_to_inference_data_names_and_groups(post):
    idata = post.to_inference_data()
    assert sorted(idata.posterior.data_vars) == ["layers.0.weight", "mu", "sigma"]
    assert idata.posterior["layers.0.weight"].shape == (2, 200, 1, 1)
    np.testing.assert_array_equal(idata.posterior["sigma"].values, np.asarray(post.draws.sigma))
    assert {"diverging", "n_steps", "tree_depth", "energy", "lp"} <= set(idata.sample_stats.data_vars)
    summary = az.summary(idata)
    assert {"mu", "sigma"} <= set(summary.index)


def test_mlp_inside_the_model_is_named_by_paths():
    class Net(eqx.Module):
        scale: rb.Positive
        mlp: eqx.nn.MLP

    mlp = eqx.nn.MLP(1, 1, width_size=2, depth=1, key=jax.random.key(1))
    model = Net(rb.Positive(1.0), mlp)

    def lj(m, x, y):
        pred = jax.vmap(m.mlp)(x[:, None])[:, 0]
        prior = sum(
            dist.Normal(0.0, 1.0).log_prob(w).sum()
            for w in jax.tree_util.tree_leaves(eqx.filter(m.mlp, eqx.is_inexact_array))
        )
        return prior + dist.HalfNormal(1.0).log_prob(m.scale) + dist.Normal(pred, m.scale).log_prob(y).sum()

    post = rb.sample(
        model,
        lj,
        X,
        Y,
        key=jax.random.key(0),
        num_warmup=5,
        num_samples=10,
        num_chains=1,
        progress_bar=False,
        max_tree_depth=2,
    )
    names = set(post.to_inference_data().posterior.data_vars)
    assert names == {"scale", "mlp.layers.0.weight", "mlp.layers.0.bias", "mlp.layers.1.weight", "mlp.layers.1.bias"}
    assert post.draws.mlp.layers[0].weight.shape == (1, 10, 2, 1)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_log_likelihood_group_and_loo(post):
    idata = post.to_inference_data()
    assert "log_likelihood" in az.groups(idata)
    ll = idata.log_likelihood["obs"].values
    assert ll.shape == (2, 200, X.size)
    d = post.draws
    mean = np.asarray(d.mu)[..., None] + np.asarray(d.layers[0].weight)[..., 0, 0, None] * np.asarray(X)
    expected = stats.norm.logpdf(np.asarray(Y), mean, np.asarray(d.sigma)[..., None])
    np.testing.assert_allclose(ll, expected, rtol=1e-4, atol=1e-4)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == X.size


def test_resume_adds_draws_without_new_warmup(post):
    # after the module's other uses of ``post``: resume advances post.mcmc's state
    before = post.sample_stats["step_size"][:, -1].copy()
    more = post.resume(60)
    assert (more.num_chains, more.num_draws) == (2, 260)
    np.testing.assert_array_equal(np.asarray(more.draws.mu[:, :200]), np.asarray(post.draws.mu))
    step = more.sample_stats["step_size"]
    np.testing.assert_array_equal(step[:, 200:], np.broadcast_to(before[:, None], (2, 60)))
    assert not np.array_equal(np.asarray(more.draws.mu[:, 200:]), np.asarray(post.draws.mu[:, -60:]))
    assert set(STATS) <= set(more.sample_stats)
    assert more.to_inference_data().log_likelihood["obs"].shape == (2, 260, X.size)


def test_save_load_round_trip(post, tmp_path):
    post.save(tmp_path / "run")
    loaded = rb.Posterior.load(tmp_path / "run", make_model(3.0, 9.0, 0.1))  # structure only
    assert type(loaded.draws) is Regression
    for a, b in zip(jax.tree_util.tree_leaves(post.draws), jax.tree_util.tree_leaves(loaded.draws)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree_util.tree_leaves(post.unconstrained), jax.tree_util.tree_leaves(loaded.unconstrained)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name in STATS:
        np.testing.assert_array_equal(loaded.sample_stats[name], post.sample_stats[name])
    a, b = post.to_inference_data(), loaded.to_inference_data()
    for group in ("posterior", "log_likelihood"):
        assert az.group(a, group).equals(az.group(b, group)), group
    with pytest.raises(ValueError, match="resume"):
        loaded.resume(10)


def test_resume_leaves_the_original_posterior_untouched_and_chains_contiguous():
    import jax
    import numpy as np
    import numpyro.distributions as dist

    import reparam_bridge as rb

    lj = lambda m: dist.Normal().log_prob(m["a"])  # noqa: E731
    post = rb.sample(
        {"a": rb.Real(0.0)}, lj, key=jax.random.key(0), num_warmup=100, num_samples=50, num_chains=2, progress_bar=False
    )
    before = np.asarray(post.draws["a"]).copy()
    first, again = post.resume(20), post.resume(20)
    assert first.num_draws == again.num_draws == 70
    np.testing.assert_allclose(first.draws["a"], again.draws["a"])  # same start: same continuation
    np.testing.assert_allclose(post.draws["a"], before)
    longer = first.resume(10)
    np.testing.assert_allclose(longer.draws["a"][:, :70], first.draws["a"])


def test_non_hmc_kernels_run_without_hmc_only_statistics():
    import jax
    import numpyro
    import numpyro.distributions as dist

    import reparam_bridge as rb

    lj = lambda m: dist.Normal().log_prob(m["a"])  # noqa: E731
    post = rb.sample(
        {"a": rb.Real(0.0)},
        lj,
        key=jax.random.key(0),
        num_warmup=100,
        num_samples=50,
        num_chains=2,
        chain_method="sequential",
        kernel=numpyro.infer.BarkerMH,
        progress_bar=False,
    )
    assert post.draws["a"].shape == (2, 50)
    assert "posterior" in az.groups(post.to_inference_data())
