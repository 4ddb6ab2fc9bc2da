"""rb.LocScale and rb.reparameterize: the centred / non-centred family.

Cost: the fast tests take ~10 s together; the three prior-only NUTS runs (marked slow)
~10-20 s each on 2 cores.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import identity, jacfwd_logdet
from jax.flatten_util import ravel_pytree

import reparam_bridge as rb

CS = [0.0, 0.3, 0.5, 1.0]


def hier(c, theta=None, mu=0.7, tau=1.8):
    theta = jnp.array([1.5, -0.4, 2.2]) if theta is None else theta
    centred = {
        "mu": rb.Real(mu),
        "tau": rb.Positive(tau),
        "theta": rb.LocScale(theta, rb.Ref("mu"), rb.Ref("tau"), centered=1.0),
    }
    return rb.reparameterize(centred, lambda m: m["theta"], centered=c)


# ------------------------------------------------------------------------------- the map


@pytest.mark.parametrize("c", CS)
def test_forward_formula_and_round_trip(c):
    x = jnp.array([0.3, -1.2, 4.0])
    t = rb.LocScale(x, loc=1.5, scale=jnp.array([0.5, 2.0, 3.0]), centered=c)
    scale = np.array([0.5, 2.0, 3.0])
    expected_xt = c * 1.5 + (np.asarray(x) - 1.5) / scale ** (1 - c)
    np.testing.assert_allclose(t.unconstrained, expected_xt, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rb.unwrap(t), x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rb.log_det_jacobian(t), (1 - c) * np.log(scale).sum(), rtol=1e-5, atol=1e-6)


def test_constants_are_not_free_and_scalar_scale_broadcasts():
    t = rb.LocScale(jnp.zeros(4), loc=1.0, scale=2.0, centered=0.0)
    params, _ = rb.partition(t)
    assert [x.shape for x in jax.tree_util.tree_leaves(params)] == [(4,)]
    np.testing.assert_allclose(rb.log_det_jacobian(t), 4 * np.log(2.0), rtol=1e-6)


@pytest.mark.parametrize("c", CS)
def test_log_det_jacobian_matches_jacfwd_with_refs(c, x64):
    # the full map from every free array (mu, log tau, x̃) to (mu, tau, theta)
    tree = hier(c)
    np.testing.assert_allclose(rb.log_det_jacobian(tree), jacfwd_logdet(tree, identity), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("c", CS)
def test_log_det_jacobian_matches_jacfwd_with_nested_wrappers(c, x64):
    tree = rb.LocScale(
        jnp.array([0.3, -2.0]),
        loc=rb.Real(jnp.array([0.5, 1.0])),
        scale=rb.Positive(jnp.array([0.7, 3.0]), transform="softplus"),
        centered=c,
    )
    params, static = rb.partition(tree)
    flat, unravel = ravel_pytree(params)
    assert flat.shape == (6,)

    def coords(z):
        t = eqx.combine(unravel(z), static)
        return jnp.concatenate([rb.unwrap(t.loc), rb.unwrap(t.scale), rb.unwrap(t)])

    _, reference = np.linalg.slogdet(np.asarray(jax.jacfwd(coords)(flat)))
    np.testing.assert_allclose(rb.log_det_jacobian(tree), reference, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("c", [0.0, 0.5])
def test_gradients_flow_into_loc_and_scale(c):
    tree = hier(c)
    params, static = rb.partition(tree)

    def theta(p):
        return rb.unwrap(eqx.combine(p, static))["theta"].sum()

    g = jax.grad(theta)(params)
    # ∂theta/∂mu = 1 - c·tau^(1-c) per element; ∂theta/∂u_tau = (1-c)·tau^(1-c)·(x̃ - c·mu) (tau = e^u)
    tau, mu = 1.8, 0.7
    xt = np.asarray(tree["theta"].unconstrained)
    np.testing.assert_allclose(g["mu"].unconstrained, 3 * (1 - c * tau ** (1 - c)), rtol=1e-5)
    np.testing.assert_allclose(g["tau"].unconstrained, ((1 - c) * tau ** (1 - c) * (xt - c * mu)).sum(), rtol=1e-4)
    # the log-Jacobian's gradient per unit of log tau: (1 - c)·n from theta, 1 from tau = e^u itself
    gj = jax.grad(lambda p: rb.log_det_jacobian(eqx.combine(p, static)))(params)
    np.testing.assert_allclose(gj["tau"].unconstrained, (1 - c) * 3 + 1, rtol=1e-6)


def test_log_joint_is_unchanged_by_centredness():
    def log_joint(m):
        return dist.Normal(m["mu"], m["tau"]).log_prob(m["theta"]).sum()

    values = [float(rb.log_density(log_joint, hier(c), jacobian=False)) for c in CS]
    np.testing.assert_allclose(values, values[0], rtol=1e-6)
    # ... while the density of the free arrays differs exactly by the log-Jacobian
    for c in CS:
        t = hier(c)
        np.testing.assert_allclose(
            rb.log_density(log_joint, t) - rb.log_density(log_joint, t, jacobian=False),
            (1 - c) * 3 * np.log(1.8) + np.log(1.8),
            rtol=1e-5,
        )


# ------------------------------------------------------------------------ construction


def test_reparameterize_and_with_centered_keep_every_value():
    base = hier(1.0)
    for c in CS:
        t = rb.reparameterize(base, lambda m: m["theta"], centered=c)
        assert t["theta"].centered == c
        np.testing.assert_allclose(rb.unwrap(t)["theta"], rb.unwrap(base)["theta"], rtol=1e-5)
        back = t["theta"].with_centered(0.25, root=t)
        tree = {**t, "theta": back}
        np.testing.assert_allclose(rb.unwrap(tree)["theta"], rb.unwrap(base)["theta"], rtol=1e-5)
    plain = {"mu": rb.Real(0.7), "tau": rb.Positive(1.8), "theta": jnp.array([1.5, -0.4, 2.2])}
    t = rb.reparameterize(plain, lambda m: m["theta"], loc=rb.Ref("mu"), scale=rb.Ref("tau"), centered=0.0)
    np.testing.assert_allclose(t["theta"].unconstrained, (np.array([1.5, -0.4, 2.2]) - 0.7) / 1.8, rtol=1e-5)
    np.testing.assert_allclose(rb.unwrap(t)["theta"], plain["theta"], rtol=1e-5)


def test_reparameterize_keeps_a_real_prior():
    model = {"theta": rb.Real(jnp.array([0.5, 1.0]), prior=dist.Normal(1.0, 2.0))}
    t = rb.reparameterize(model, lambda m: m["theta"], loc=1.0, scale=2.0, centered=0.0)
    assert isinstance(t["theta"].prior, dist.Normal)
    np.testing.assert_allclose(rb.log_prior(t), rb.log_prior(model), rtol=1e-6)


def test_from_unconstrained_is_vmap_safe():
    xt = jnp.arange(6.0).reshape(3, 2)
    out = jax.vmap(lambda z: rb.unwrap(rb.LocScale.from_unconstrained(z, 1.0, 2.0, centered=0.0)))(xt)
    np.testing.assert_allclose(out, 1.0 + 2.0 * np.asarray(xt))


def test_errors():
    with pytest.raises(TypeError, match=r"rb.reparameterize"):
        rb.LocScale(jnp.zeros(2), rb.Ref("mu"), rb.Ref("tau"), centered=0.0)
    rb.LocScale(jnp.zeros(2), rb.Ref("mu"), rb.Ref("tau"), centered=1.0)  # x̃ = x: fine
    with pytest.raises(ValueError, match="centered must lie in"):
        rb.LocScale(0.0, 0.0, 1.0, centered=1.5)
    with pytest.raises(ValueError, match="scale must be positive"):
        rb.LocScale(0.0, 0.0, -1.0, centered=0.0)
    with pytest.raises(ValueError, match="finite"):
        rb.LocScale(jnp.array([0.0, jnp.nan]), 0.0, 1.0)
    with pytest.raises(ValueError, match="support"):
        rb.LocScale(0.0, 0.0, 1.0, prior=dist.HalfNormal(1.0))
    with pytest.raises(TypeError, match="root="):
        rb.LocScale(jnp.zeros(2), rb.Ref("mu"), rb.Ref("tau")).with_centered(0.0)
    with pytest.raises(TypeError, match="give loc= and scale="):
        rb.reparameterize({"theta": jnp.zeros(2)}, lambda m: m["theta"], centered=0.0)
    with pytest.raises(TypeError, match="cannot become one"):
        rb.reparameterize({"s": rb.Positive(1.0)}, lambda m: m["s"], loc=0.0, scale=1.0, centered=0.0)


# ------------------------------------------------------------------ prior-only NUTS


def _mcse_check(x, mean, sd, az):
    """``x`` (chain, draw): mean within 5 MCSE, sd within 5 MCSE of its own estimate."""
    mcse_mean = float(az.mcse(x, method="mean"))
    mcse_sd = float(az.mcse(x, method="sd"))
    assert abs(x.mean() - mean) < 5 * mcse_mean, (x.mean(), mean, mcse_mean)
    assert abs(x.std() - sd) < 5 * mcse_sd + 0.01 * sd, (x.std(), sd, mcse_sd)


@pytest.mark.slow
@pytest.mark.parametrize("c", [0.0, 0.5, 1.0])
def test_prior_only_hierarchical_normal_moments(c):
    """mu ~ N(0, 1), tau ~ LogNormal(0, 0.5), theta_i ~ N(mu, tau): E theta = 0,
    Var theta = 1 + E tau² = 1 + e^0.5, log tau ~ N(0, 0.5)."""
    from reparam_bridge import arviz as az  # the ArviZ 0.2x/1.x adapter

    def log_joint(m):
        return (
            dist.Normal(0.0, 1.0).log_prob(m["mu"])
            + dist.LogNormal(0.0, 0.5).log_prob(m["tau"])
            + dist.Normal(m["mu"], m["tau"]).log_prob(m["theta"]).sum()
        )

    model = hier(c, theta=jnp.zeros(3), mu=0.0, tau=1.0)
    post = rb.sample(
        model,
        log_joint,
        key=jax.random.key(3),
        num_warmup=500,
        num_samples=1000,
        num_chains=4,
        progress_bar=False,
        target_accept_prob=0.95,
    )
    draws = post.draws
    # The centred form keeps a (mild) funnel, so a few divergences are its nature (that is
    # what tutorial 02 measures); the moments must be right all the same.
    allowed = 40 if c == 1.0 else 10  # 1% vs 0.25% of 4000 draws
    assert int(post.sample_stats["diverging"].sum()) <= allowed
    _mcse_check(np.asarray(draws["mu"]), 0.0, 1.0, az)
    _mcse_check(np.log(np.asarray(draws["tau"])), 0.0, 0.5, az)
    for i in range(3):
        _mcse_check(np.asarray(draws["theta"][..., i]), 0.0, np.sqrt(1 + np.exp(0.5)), az)
