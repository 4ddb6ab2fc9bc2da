"""Free parameters (``partition``) and densities (``log_prior``, ``log_density``).

Cost: about 5 s.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import identity, jacfwd_logdet

import reparam_bridge as rb


class Layer(eqx.Module):
    weight: object
    bias: object


class Net(eqx.Module):
    layers: list
    name: str = eqx.field(static=True, default="net")


def _free(tree):
    return jax.tree_util.tree_leaves(rb.partition(tree)[0])


# --------------------------------------------------------------------------------------
# partition


def test_bounded_with_array_bounds_has_one_free_array():
    b = rb.Bounded(jnp.array([0.5, 1.5, 2.2]), lower=jnp.array([0.0, 1.0, 2.0]), upper=jnp.array([1.0, 3.0, 2.5]))
    free = _free(b)
    assert len(free) == 1 and free[0] is b.unconstrained
    for one_sided in (rb.Bounded(jnp.ones(3), lower=jnp.zeros(3)), rb.Bounded(jnp.ones(3), upper=jnp.full(3, 2.0))):
        assert len(_free(one_sided)) == 1


def test_only_unconstrained_arrays_are_free():
    w = jnp.ones((2, 2))
    tree = {
        "pos": rb.Positive(jnp.ones(3), transform="softplus", prior=dist.HalfNormal(jnp.ones(3))),
        "mu": rb.Real(jnp.zeros(2), prior=dist.Normal(jnp.zeros(2), jnp.full(2, 3.0))),
        "c": rb.Constrained(0.5, dist.constraints.unit_interval, prior=dist.Beta(jnp.array(2.0), jnp.array(2.0))),
        "frozen": rb.NonTrainable({"a": jnp.ones(4), "b": rb.Positive(2.0)}),
        "frozen_leaves": rb.non_trainable({"w": w}),
        "plain": w,  # a bare inexact array is free (as in equinox)
        "ints": jnp.arange(3),
        "text": "hello",
        "n": 3,
        "net": Net([Layer(rb.Positive(jnp.ones(2)), jnp.zeros(2))]),
    }
    free = _free(tree)
    expected = [
        tree["c"].unconstrained,
        tree["mu"].unconstrained,
        tree["net"].layers[0].weight.unconstrained,
        tree["net"].layers[0].bias,
        w,
        tree["pos"].unconstrained,
    ]  # dict keys sorted
    assert len(free) == len(expected)
    for a, b in zip(free, expected):
        assert a is b
    params, static = rb.partition(tree)
    assert eqx.tree_equal(eqx.combine(params, static), tree)
    # the priors' arrays, the NonTrainable contents, ints and static fields sit in `static`
    assert isinstance(static["pos"].prior, dist.HalfNormal)
    np.testing.assert_array_equal(static["pos"].prior.scale, jnp.ones(3))
    np.testing.assert_array_equal(static["mu"].prior.scale, jnp.full(2, 3.0))
    assert eqx.tree_equal(static["frozen"], tree["frozen"]) and eqx.tree_equal(
        static["frozen_leaves"], tree["frozen_leaves"]
    )
    np.testing.assert_array_equal(static["ints"], jnp.arange(3))
    assert static["pos"].kind == "softplus" and static["net"].name == "net"
    # log-densities over the recombined tree are the same
    lj = lambda m: jnp.sum(m["plain"]) + jnp.sum(m["net"].layers[0].weight)  # noqa: E731
    assert rb.log_density(lj, eqx.combine(params, static)) == rb.log_density(lj, tree)


def test_grad_through_partition_reaches_only_free_arrays():
    tree = {
        "s": rb.Positive(2.0),
        "b": rb.Bounded(0.5, lower=0.0, upper=jnp.array(1.0)),
        "k": rb.NonTrainable(jnp.ones(2)),
    }
    params, static = rb.partition(tree)

    def f(p):
        m = rb.unwrap(eqx.combine(p, static))
        return m["s"] ** 2 + m["b"] + jnp.sum(m["k"])

    g = jax.grad(f)(params)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(params)
    np.testing.assert_allclose(g["s"].unconstrained, 2 * 2.0 * 2.0, rtol=1e-6)  # d(e^{2u})/du at e^u=2
    np.testing.assert_allclose(g["b"].unconstrained, 0.25, rtol=1e-6)  # sigmoid' at 0


# --------------------------------------------------------------------------------------
# log_density refuses wrappers without a log-Jacobian


_NON_BIJECTIVE = {
    "Parameterize": lambda w: rb.Parameterize(jnp.exp, w),
    "WeightNormalization": lambda w: rb.WeightNormalization(w),
    "Symmetric": lambda w: rb.Symmetric(w),
    "SkewSymmetric": lambda w: rb.SkewSymmetric(w),
    "NonNegative": lambda w: rb.NonNegative(w),
    "Clamp": lambda w: rb.Clamp(w, lower=0.0, upper=2.0),
}


def _net(weight):
    return Net([Layer(weight, rb.Real(jnp.zeros(2))), Layer(rb.Positive(jnp.ones((2, 2))), jnp.zeros(2))])


def _log_joint(m, x):
    h = x
    for layer in m.layers:
        h = jnp.tanh(layer.weight @ h + layer.bias)
    return dist.Normal(0.0, 1.0).log_prob(h).sum()


@pytest.mark.parametrize("name", list(_NON_BIJECTIVE))
def test_log_density_refuses_non_bijective_wrappers(name):
    w = jnp.array([[0.5, 0.2], [0.1, 0.7]])
    net = _net(_NON_BIJECTIVE[name](w))
    x = jnp.array([1.0, -1.0])
    with pytest.raises(TypeError, match=r"'layers\.0\.weight'") as info:
        rb.log_density(_log_joint, net, x)
    msg = str(info.value)
    assert name in msg and "instead" in msg and "NonTrainable" in msg
    # jacobian=False (MAP, fitting) accepts it: log_joint + priors, nothing more
    value = rb.log_density(_log_joint, net, x, jacobian=False)
    np.testing.assert_allclose(value, _log_joint(rb.unwrap(net), x) + rb.log_prior(net), rtol=1e-6)
    # frozen inside NonTrainable it has no free arrays, so the density is defined
    frozen = _net(rb.NonTrainable(_NON_BIJECTIVE[name](w)))
    value = rb.log_density(_log_joint, frozen, x)
    expected = _log_joint(rb.unwrap(frozen), x) + rb.log_det_jacobian(frozen)
    np.testing.assert_allclose(value, expected, rtol=1e-6)


def test_refusal_names_nested_paths_inside_bijectors():
    tree = {"x": rb.Bounded.from_unconstrained(0.0, lower=0.0, upper=rb.Parameterize(jnp.exp, 1.0))}
    with pytest.raises(TypeError, match=r"'x\.upper'.*Parameterize"):
        rb.log_density(lambda m: m["x"], tree)
    # several offenders: the first is named and the others counted
    tree = {"a": rb.NonNegative(jnp.ones(1)), "b": rb.Symmetric(jnp.eye(2))}
    with pytest.raises(TypeError, match=r"'a'.*1 more: b"):
        rb.log_density(lambda m: 0.0, tree)


def test_log_joint_must_return_a_scalar():
    tree = {"mu": rb.Real(jnp.zeros(3))}
    with pytest.raises(ValueError, match="scalar"):
        rb.log_density(lambda m: dist.Normal(m["mu"], 1.0).log_prob(jnp.ones(3)), tree)


# --------------------------------------------------------------------------------------
# values


def test_log_prior_sums_attached_priors():
    s = jnp.array([0.5, 1.0, 2.0])
    p = jnp.array([0.2, 0.3, 0.5])
    L = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    tree = {
        "s": rb.Positive(s, prior=dist.HalfNormal(2.0)),
        "net": Net([Layer(rb.Simplex(p, prior=dist.Dirichlet(jnp.full(3, 2.0))), jnp.zeros(2))]),
        "L": rb.CorrCholesky(L, prior=dist.LKJCholesky(2, 3.0)),
        "b": rb.Bounded(0.25, lower=0.0, upper=1.0, prior=dist.Beta(2.0, 5.0)),
        "no_prior": rb.Real(1.0),
        # a prior on a bijector nested as a bound is counted too
        "nested": rb.Bounded(0.5, lower=0.0, upper=rb.Positive(3.0, prior=dist.Exponential(1.0))),
    }
    expected = (
        dist.HalfNormal(2.0).log_prob(s).sum()
        + dist.Dirichlet(jnp.full(3, 2.0)).log_prob(p)
        + dist.LKJCholesky(2, 3.0).log_prob(L)
        + dist.Beta(2.0, 5.0).log_prob(0.25)
        + dist.Exponential(1.0).log_prob(3.0)
    )
    np.testing.assert_allclose(rb.log_prior(tree), expected, rtol=1e-5)
    assert rb.log_prior({"x": jnp.ones(2), "r": rb.Real(0.0)}) == 0.0


def test_log_density_is_the_density_of_the_free_arrays(x64):
    # LogNormal prior on exp(u): the free array u is standard normal
    u = jnp.array([-0.7, 0.3, 1.9])
    tree = {"s": rb.Positive.from_unconstrained(u, prior=dist.LogNormal(0.0, 1.0))}
    np.testing.assert_allclose(rb.log_density(lambda m: 0.0, tree), dist.Normal().log_prob(u).sum(), rtol=1e-12)
    # Beta(1, 1) on a sigmoid: the free array is standard logistic
    v = jnp.array([-2.0, 0.4])
    tree = {"p": rb.Bounded.from_unconstrained(v, lower=0.0, upper=1.0, prior=dist.Beta(1.0, 1.0))}
    np.testing.assert_allclose(rb.log_density(lambda m: 0.0, tree), dist.Logistic().log_prob(v).sum(), rtol=1e-12)


def test_log_density_adds_likelihood_prior_and_jacobian(x64):
    x = jnp.linspace(0.1, 2.0, 7)
    y = 1.5 * x**0.5 + 0.1 * jnp.sin(7 * x)
    tree = {
        "amp": rb.Positive(1.2, prior=dist.HalfNormal(2.0)),
        "pow": rb.Bounded(0.4, lower=0.0, upper=1.0),
        "noise": rb.Positive(0.3, transform="softplus", prior=dist.Exponential(1.0)),
    }

    def log_joint(m, x, y):
        return dist.Normal(m["amp"] * x ** m["pow"], m["noise"]).log_prob(y).sum()

    m = rb.unwrap(tree)
    lp = dist.HalfNormal(2.0).log_prob(m["amp"]) + dist.Exponential(1.0).log_prob(m["noise"])
    np.testing.assert_allclose(
        rb.log_density(log_joint, tree, x, y, jacobian=False), log_joint(m, x, y) + lp, rtol=1e-12
    )
    full = rb.log_density(log_joint, tree, x, y)
    np.testing.assert_allclose(full, log_joint(m, x, y) + lp + jacfwd_logdet(tree, identity), rtol=1e-12)
    # differentiable and jittable over the free arrays
    params, static = rb.partition(tree)
    g = jax.jit(jax.grad(lambda p: rb.log_density(log_joint, eqx.combine(p, static), x, y)))(params)
    assert all(bool(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(g))


def test_prior_shape_must_not_outgrow_the_value():
    import jax.numpy as jnp
    import numpyro.distributions as dist
    import pytest

    import reparam_bridge as rb

    with pytest.raises(ValueError, match="counted more than once"):
        rb.Positive(1.0, prior=dist.HalfNormal(jnp.ones(5)))
    rb.Positive(jnp.ones(5), prior=dist.HalfNormal(1.0))  # broadcasting up to the value is fine


def test_non_trainable_freezes_bijectors_whole_and_leaves_priors_alone():
    import jax
    import jax.numpy as jnp
    import numpyro.distributions as dist

    import reparam_bridge as rb

    model = {"s": rb.Positive(2.0, prior=dist.HalfNormal(jnp.array(1.0))), "w": jnp.ones(2)}
    frozen = rb.non_trainable(model)
    assert isinstance(frozen["s"], rb.NonTrainable) and isinstance(frozen["s"].tree, rb.Positive)
    assert float(rb.log_prior(frozen)) == 0.0 and float(rb.log_det_jacobian(frozen)) == 0.0
    assert jax.tree_util.tree_leaves(rb.partition(frozen)[0]) == []
    assert float(rb.unwrap(frozen)["s"]) == 2.0


def test_distributions_on_a_module_are_not_posterior_variables():
    import equinox as eqx
    import jax.numpy as jnp
    import numpyro.distributions as dist

    import reparam_bridge as rb
    from reparam_bridge.arviz import random_nodes

    class M(eqx.Module):
        p: dist.Distribution
        mu: rb.Real
        c: rb.NonTrainable

    names = [
        name for name, _ in random_nodes(M(dist.Normal(jnp.zeros(3), 1.0), rb.Real(0.0), rb.NonTrainable(jnp.ones(2))))
    ]
    assert names == ["mu"]


def test_refs_inside_one_wrapper_and_bare_refs_resolve():
    import jax.numpy as jnp
    import pytest

    import reparam_bridge as rb

    class Pair(rb.Bijector):
        mu: rb.Real
        x: rb.Bijector

        def unwrap(self):
            return {"mu": self.mu, "x": self.x}

        def log_det_jacobian(self):
            return jnp.zeros(())

    x = rb.Bounded.from_unconstrained(jnp.array(0.0), upper=rb.Ref("p.mu"))
    tree = {"p": Pair(rb.Real(4.0), x), "alias": rb.Ref("p.x")}
    values = rb.unwrap(tree)
    assert float(values["p"]["x"]) == pytest.approx(3.0)  # 4 - exp(0)
    assert float(values["alias"]) == pytest.approx(3.0)
    loop = {
        "a": rb.Bounded.from_unconstrained(0.0, upper=rb.Ref("b")),
        "b": rb.Bounded.from_unconstrained(0.0, upper=rb.Ref("a")),
    }
    with pytest.raises(ValueError, match="circular"):
        rb.unwrap(loop)


def test_a_frozen_node_holding_a_ref_is_refused_for_sampling():
    import jax.numpy as jnp
    import pytest

    import reparam_bridge as rb

    tree = {
        "mu": rb.Real(1.0),
        "theta": rb.NonTrainable(rb.LocScale.from_unconstrained(jnp.array(0.5), rb.Ref("mu"), 1.0, centered=0.0)),
    }
    with pytest.raises(TypeError, match="'theta'.*holds an rb.Ref"):
        rb.log_density(lambda m: 0.0, tree)
    assert jnp.isfinite(rb.log_density(lambda m: 0.0, tree, jacobian=False))
