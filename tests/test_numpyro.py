"""rb.numpyro.random_module / module inside ordinary NumPyro models (real NumPyro, ArviZ, optax).

Cost on 2 CPU cores (idle): about 50 s CPU for the default tests, plus about 35 s for the slow
MCMC-vs-rb.sample agreement test.
"""

import sys
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta, AutoNormal
from numpyro.infer.util import log_density

import reparam_bridge as rb
from reparam_bridge import arviz as az  # the ArviZ 0.2x/1.x adapter: same calls, same numbers

# -- a GP regression: positive kernel hyperparameters, a small linear mean function --------


class Kernel(eqx.Module):
    lengthscale: Any
    amplitude: Any
    mean: eqx.nn.Linear
    noise: float = eqx.field(static=True, default=0.3)


def make_kernel(attach_priors=True):
    pl = dist.LogNormal(0.0, 0.5) if attach_priors else None
    pa = dist.HalfNormal(2.0) if attach_priors else None
    return Kernel(rb.Positive(1.0, prior=pl), rb.Positive(1.0, prior=pa), eqx.nn.Linear(1, 1, key=jax.random.key(1)))


def gp_dist(k, x):
    d2 = (x[:, None] - x[None, :]) ** 2
    cov = k.amplitude**2 * jnp.exp(-0.5 * d2 / k.lengthscale**2) + k.noise**2 * jnp.eye(x.shape[0])
    mu = jax.vmap(k.mean)(x[:, None])[:, 0]
    return dist.MultivariateNormal(mu, cov)


MEAN_PRIORS = {"mean.weight": dist.Normal(0.0, 1.0), "mean.bias": dist.Normal(0.0, 1.0)}


def data():
    x = jnp.linspace(0.0, 5.0, 15)
    y = jnp.sin(x) + 0.3 * x + 0.3 * jax.random.normal(jax.random.key(7), x.shape)
    return x, y


def make_model(kernel, prior=MEAN_PRIORS):
    def model(x, y=None):
        k = rb.numpyro.random_module("gp", kernel, prior=prior)
        numpyro.sample("y", gp_dist(k, x), obs=y)

    return model


def log_joint(k, x, y):
    """The same posterior written for rb.sample: the mean-function priors are in here."""
    return (
        gp_dist(k, x).log_prob(y)
        + dist.Normal(0.0, 1.0).log_prob(k.mean.weight).sum()
        + dist.Normal(0.0, 1.0).log_prob(k.mean.bias).sum()
    )


def random_point(module, key, scale=0.7):
    params, static = rb.partition(module)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    new = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, new), static)


# -- import hygiene ------------------------------------------------------------------------


def test_submodule_does_not_shadow_numpyro():
    import reparam_bridge.numpyro as rbn

    assert rb.numpyro is rbn
    assert rbn.numpyro is sys.modules["numpyro"]  # the real package inside the submodule
    assert rb._sample.MCMC is numpyro.infer.MCMC
    assert hasattr(rbn.numpyro, "sample") and not hasattr(rbn.numpyro, "random_module")


# -- sites and exact densities --------------------------------------------------------------


def test_sites_and_log_density_equal_rb_log_density(x64):
    x, y = data()
    kernel = make_kernel()
    model = make_model(kernel)
    tr = numpyro.handlers.trace(numpyro.handlers.substitute(model, rb.numpyro.init_values("gp", kernel))).get_trace(
        x, y
    )
    kinds = {k: (s["type"], s.get("is_observed")) for k, s in tr.items()}
    assert kinds == {
        "gp.lengthscale.unconstrained": ("sample", False),
        "gp.amplitude.unconstrained": ("sample", False),
        "gp.mean.weight": ("sample", False),
        "gp.mean.bias": ("sample", False),
        "gp._log_det_jacobian": ("sample", True),
        "gp._log_prior": ("sample", True),
        "gp.lengthscale": ("deterministic", None),
        "gp.amplitude": ("deterministic", None),
        "y": ("sample", True),
    }
    # plain arrays with a prior are sampled from it (expanded to the leaf shape)
    assert isinstance(tr["gp.mean.weight"]["fn"], dist.Independent)
    assert tr["gp.mean.weight"]["fn"].event_shape == (1, 1)

    lp_numpyro = jax.jit(lambda v: log_density(model, (x, y), {}, v)[0])
    lp_rb = eqx.filter_jit(lambda p: rb.log_density(log_joint, p, x, y, jacobian=True))
    for i in range(3):
        point = random_point(kernel, jax.random.key(i))
        values = rb.numpyro.init_values("gp", point)
        np.testing.assert_allclose(float(lp_numpyro(values)), float(lp_rb(point)), rtol=0, atol=1e-5)
        assert bool(eqx.tree_equal(rb.numpyro.from_values("gp", kernel, values), point))
    _, trace = log_density(model, (x, y), {}, values)
    np.testing.assert_allclose(trace["gp.lengthscale"]["value"], rb.unwrap(point).lengthscale)


def test_prior_callable_and_override(x64):
    """Callable priors: wrapped values get a factor, plain arrays are sampled from them,
    and a prior given here replaces the one attached with prior=."""
    x, y = data()
    kernel = make_kernel(attach_priors=True)
    seen = {}

    def prior(path, shape):
        seen[path] = shape
        if path == "lengthscale":
            return dist.Gamma(2.0, 2.0)  # replaces the attached LogNormal
        if path.startswith("mean."):
            return dist.Normal(0.0, 1.0)
        return None  # amplitude keeps its attached HalfNormal

    model = make_model(kernel, prior=prior)
    assert set(seen) == set()  # nothing happens before the model runs
    point = random_point(kernel, jax.random.key(3))
    lp, _ = log_density(model, (x, y), {}, rb.numpyro.init_values("gp", point))
    assert seen == {"mean.weight": (1, 1), "mean.bias": (1,), "lengthscale": (), "amplitude": ()}
    replaced = eqx.tree_at(
        lambda k: k.lengthscale,
        point,
        rb.Positive.from_unconstrained(point.lengthscale.unconstrained, prior=dist.Gamma(2.0, 2.0)),
    )
    np.testing.assert_allclose(float(lp), float(rb.log_density(log_joint, replaced, x, y)), atol=1e-5)


def test_nested_bijectors_refs_and_root(x64):
    """A bound that is another parameter (rb.Ref), a wrapped bound, and a wrapped root."""
    tree = {
        "a": rb.Positive(2.0, prior=dist.Exponential(1.0)),
        "b": rb.Bounded.from_unconstrained(jnp.array(0.3), lower=0.0, upper=rb.Ref("a")),
        "c": rb.Bounded(jnp.array([1.5, 2.0]), lower=rb.Positive(0.5)),
    }

    def lj(m):
        return dist.Normal(m["b"], 1.0).log_prob(0.7) + dist.Normal(m["c"], 1.0).log_prob(1.0).sum()

    def model():
        m = rb.numpyro.random_module("t", tree, prior={"c.lower": dist.LogNormal(0.0, 1.0)})
        numpyro.sample("obs", dist.Normal(m["b"], 1.0), obs=0.7)
        numpyro.factor("rest", dist.Normal(m["c"], 1.0).log_prob(1.0).sum())

    point = random_point(tree, jax.random.key(0), scale=0.3)
    values = rb.numpyro.init_values("t", point)
    assert set(values) == {"t.a.unconstrained", "t.b.unconstrained", "t.c.unconstrained", "t.c.lower.unconstrained"}
    lp, tr = log_density(model, (), {}, values)
    with_prior = eqx.tree_at(
        lambda t: t["c"].lower,
        point,
        rb.Positive.from_unconstrained(point["c"].lower.unconstrained, prior=dist.LogNormal(0.0, 1.0)),
    )
    np.testing.assert_allclose(float(lp), float(rb.log_density(lj, with_prior)), atol=1e-5)
    assert {k for k, s in tr.items() if s["type"] == "deterministic"} == {"t.a", "t.b", "t.c"}
    assert 0.0 < float(tr["t.b"]["value"]) < float(tr["t.a"]["value"])

    # a wrapped module at the root: its value is the site "<name>"
    def root_model():
        s = rb.numpyro.random_module("s", rb.Positive(1.0, prior=dist.HalfNormal(1.0)))
        numpyro.sample("obs", dist.Normal(0.0, s), obs=0.5)

    lp, tr = log_density(root_model, (), {}, {"s.unconstrained": jnp.array(0.2)})
    assert tr["s"]["type"] == "deterministic"
    expected = dist.HalfNormal(1.0).log_prob(jnp.exp(0.2)) + 0.2 + dist.Normal(0.0, jnp.exp(0.2)).log_prob(0.5)
    np.testing.assert_allclose(float(lp), float(expected), atol=1e-6)


# -- inference: MCMC, Predictive, ArviZ, SVI --------------------------------------------------


@pytest.fixture(scope="module")
def gp_mcmc():
    x, y = data()
    kernel = make_kernel()
    mcmc = MCMC(
        NUTS(make_model(kernel)),
        num_warmup=200,
        num_samples=200,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(0), x, y)
    return mcmc, kernel


def test_mcmc_predictive_and_arviz(gp_mcmc):
    mcmc, kernel = gp_mcmc
    x, y = data()
    samples = mcmc.get_samples()
    assert samples["gp.lengthscale"].shape == (400,) and samples["gp.mean.weight"].shape == (400, 1, 1)
    assert bool(jnp.all(samples["gp.lengthscale"] > 0)) and bool(jnp.all(samples["gp.amplitude"] > 0))
    np.testing.assert_allclose(samples["gp.lengthscale"], jnp.exp(samples["gp.lengthscale.unconstrained"]), rtol=1e-5)
    assert int(jnp.sum(mcmc.get_extra_fields()["diverging"])) < 20  # < 5%

    # Predictive recomputes the deterministic sites and draws new y at new inputs
    x_new = jnp.linspace(0.0, 5.0, 7)
    pred = Predictive(make_model(kernel), samples)(jax.random.key(1), x_new)
    assert pred["y"].shape == (400, 7) and bool(jnp.all(jnp.isfinite(pred["y"])))
    np.testing.assert_allclose(pred["gp.lengthscale"], samples["gp.lengthscale"], rtol=1e-5)

    idata = az.from_numpyro(mcmc)
    post = idata.posterior
    for name in ("gp.lengthscale", "gp.amplitude", "gp.mean.weight", "gp.mean.bias", "gp.lengthscale.unconstrained"):
        assert name in post.data_vars, name
    assert post["gp.lengthscale"].shape == (2, 200)
    assert "y" in idata.log_likelihood.data_vars
    summary = az.summary(idata, var_names=["gp.lengthscale", "gp.amplitude"])
    assert np.all(np.isfinite(summary["r_hat"]))


def test_mcmc_starts_from_init_values():
    """init_values feeds numpyro.infer.init_to_value: NUTS starts at a given (say MAP) point."""
    x, y = data()
    kernel = make_kernel()
    start = eqx.tree_at(lambda k: k.lengthscale, kernel, rb.Positive(1.7, prior=dist.LogNormal(0.0, 0.5)))
    init = numpyro.infer.init_to_value(values=rb.numpyro.init_values("gp", start))
    info = numpyro.infer.util.initialize_model(
        jax.random.key(0), make_model(kernel), init_strategy=init, model_args=(x, y)
    )[0]
    np.testing.assert_allclose(info.z["gp.lengthscale.unconstrained"], np.log(1.7), rtol=1e-5)
    np.testing.assert_allclose(info.z["gp.mean.weight"], kernel.mean.weight, rtol=1e-6)


@pytest.mark.parametrize("guide_cls", [AutoNormal, AutoDelta])
def test_svi_autoguides_reduce_loss(guide_cls):
    x, y = data()
    model = make_model(make_kernel())
    guide = guide_cls(model)
    svi = SVI(model, guide, optax.adam(0.02), Trace_ELBO())
    res = svi.run(jax.random.key(0), 600, x, y, progress_bar=False)
    losses = np.asarray(res.losses)
    assert np.all(np.isfinite(losses))
    assert losses[-50:].mean() < losses[:50].mean() - 1.0
    med = guide.median(res.params)
    assert set(med) >= {"gp.lengthscale.unconstrained", "gp.mean.weight"}
    fitted = rb.unwrap(rb.numpyro.from_values("gp", make_kernel(), med))
    assert float(fitted.lengthscale) > 0 and float(fitted.amplitude) > 0


def test_prior_predictive_with_plain_array_priors():
    """A plain network with priors on every array: prior sampling works (no improper sites)."""
    net = eqx.nn.MLP(1, 1, 4, 1, key=jax.random.key(0))

    def model(x, y=None):
        f = rb.numpyro.random_module("net", net, prior=lambda path, shape: dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(jax.vmap(f)(x[:, None])[:, 0], 0.1), obs=y)

    x = jnp.linspace(-1, 1, 5)
    prior = Predictive(model, num_samples=50)(jax.random.key(0), x)
    assert prior["net.layers.0.weight"].shape == (50, 4, 1)
    assert prior["y"].shape == (50, 5)
    assert not any(k.endswith("_log_det_jacobian") for k in prior)  # no bijectors, no factor
    sd = float(jnp.std(prior["net.layers.1.bias"]))
    assert 0.7 < sd < 1.3


# -- rb.numpyro.module -------------------------------------------------------------------------


def test_module_trains_network_with_svi():
    key = jax.random.key(0)
    x = jnp.linspace(-2.0, 2.0, 40)
    y = jnp.tanh(2 * x) + 0.05 * jax.random.normal(key, x.shape)
    net = {
        "f": eqx.nn.MLP(1, 1, 8, 1, activation=jnp.tanh, key=jax.random.key(2)),
        "sigma": rb.Positive(1.0, prior=dist.HalfNormal(1.0)),
        "g": rb.WeightNormalization(jnp.ones((1, 1))),
    }  # no Jacobian needed for point estimates

    def model(x, y):
        m = rb.numpyro.module("net", net)
        mu = jax.vmap(m["f"])(x[:, None])[:, 0] * m["g"][0, 0]
        numpyro.sample("y", dist.Normal(mu, m["sigma"]), obs=y)

    tr = numpyro.handlers.trace(model).get_trace(x, y)
    assert {k for k, s in tr.items() if s["type"] == "param"} == set(rb.numpyro.init_values("net", net))
    assert "net.f.layers.0.weight" in tr and "net.sigma.unconstrained" in tr and "net._log_prior" in tr

    svi = SVI(model, lambda x, y: None, optax.adam(0.02), Trace_ELBO())
    res = svi.run(jax.random.key(1), 1500, x, y, progress_bar=False)
    assert res.losses[-1] < res.losses[0] - 20
    fitted = rb.unwrap(rb.numpyro.from_values("net", net, res.params))
    assert 0.0 < float(fitted["sigma"]) < 0.2
    rmse = jnp.sqrt(jnp.mean((jax.vmap(fitted["f"])(x[:, None])[:, 0] * fitted["g"][0, 0] - y) ** 2))
    assert float(rmse) < 0.15


# -- errors -------------------------------------------------------------------------------------


def _run(module, prior=None):
    def model():
        rb.numpyro.random_module("m", module, prior=prior)

    return numpyro.handlers.trace(numpyro.handlers.substitute(model, rb.numpyro.init_values("m", module))).get_trace()


def test_errors():
    with pytest.raises(TypeError, match=r"random_module\('m'\).*'scale'.*Parameterize.*rb\.Positive"):
        _run({"scale": rb.Parameterize(jnp.exp, jnp.zeros(()))})
    with pytest.raises(TypeError, match=r"'inner\.w'.*WeightNormalization"):
        _run({"inner": {"w": rb.WeightNormalization(jnp.ones((2, 2)))}})
    kernel = make_kernel()
    with pytest.raises(ValueError, match=r"lenghtscale.*Valid paths.*'amplitude'.*'lengthscale'.*'mean.weight'"):
        _run(kernel, prior={"lenghtscale": dist.LogNormal()})
    with pytest.raises(ValueError, match=r"'lengthscale'.*support.*does not match"):
        _run(kernel, prior={"lengthscale": dist.Normal()})
    with pytest.raises(TypeError, match="not a single distribution"):
        _run(kernel, prior=dist.Normal())
    with pytest.raises(TypeError, match=r"'mean.bias' must be a numpyro Distribution"):
        _run(kernel, prior=lambda path, shape: "normal" if path == "mean.bias" else None)
    with pytest.raises(ValueError, match=r"'mean.weight'.*does not broadcast"):
        _run(kernel, prior={"mean.weight": dist.Normal(jnp.zeros(3), 1.0)})
    with pytest.raises(ValueError, match=r"'lengthscale'.*larger than"):
        _run(kernel, prior={"lengthscale": dist.LogNormal(jnp.zeros(3), 1.0)})
    with pytest.raises(KeyError, match=r"gp.amplitude.unconstrained"):
        rb.numpyro.from_values("gp", kernel, {"gp.lengthscale.unconstrained": 0.0})


# -- the same posterior as rb.sample ---------------------------------------------------------------


@pytest.mark.slow
def test_posterior_agrees_with_rb_sample():
    """MCMC(NUTS(model)) with random_module and rb.sample on the same density: every
    constrained quantity's mean within 5 MCSE (ArviZ ESS) and sd within 10%."""
    x, y = data()
    kernel = make_kernel()
    mcmc = MCMC(
        NUTS(make_model(kernel), target_accept_prob=0.9),
        num_warmup=500,
        num_samples=1500,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(11), x, y)
    native = mcmc.get_samples(group_by_chain=True)
    post = rb.sample(
        kernel,
        log_joint,
        x,
        y,
        key=jax.random.key(12),
        num_warmup=500,
        num_samples=1500,
        num_chains=4,
        chain_method="vectorized",
        progress_bar=False,
        target_accept_prob=0.9,
    )
    assert int(np.sum(mcmc.get_extra_fields()["diverging"])) < 60  # < 1% of 6000
    assert int(np.sum(post.sample_stats["diverging"])) < 60
    d = post.draws
    pairs = {
        "lengthscale": (native["gp.lengthscale"], d.lengthscale),
        "amplitude": (native["gp.amplitude"], d.amplitude),
        "weight": (native["gp.mean.weight"][..., 0, 0], d.mean.weight[..., 0, 0]),
        "bias": (native["gp.mean.bias"][..., 0], d.mean.bias[..., 0]),
    }
    for name, (a, b) in pairs.items():
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape == (4, 1500), (name, a.shape, b.shape)
        mcse = np.hypot(float(az.mcse(a, method="mean")), float(az.mcse(b, method="mean")))
        ess = min(float(az.ess(a)), float(az.ess(b)))
        assert ess > 300, (name, ess)
        assert abs(a.mean() - b.mean()) < 5 * mcse, (name, a.mean(), b.mean(), mcse)
        assert abs(a.std() / b.std() - 1) < 0.1, (name, a.std(), b.std())
