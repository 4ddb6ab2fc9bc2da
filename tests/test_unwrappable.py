"""Unwrappables: behaviour against paramax 0.0.5 (same inputs, same outputs) and klax's
documented examples (klax needs Python >= 3.12, so its examples are reproduced here).

Cost: about 5 s.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reparam_bridge as rb

paramax = pytest.importorskip("paramax")


def _same(a, b):
    """Equal structure (dicts, tuples, strings, ints) and equal array values."""
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb, f"{ta} != {tb}"
    for x, y in zip(la, lb):
        if isinstance(x, (jax.Array, np.ndarray)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
            assert jnp.asarray(x).dtype == jnp.asarray(y).dtype
        else:
            assert x == y


# --------------------------------------------------------------------------------------
# paramax parity


def test_unwrap_tuple_example_matches_paramax():
    ours = rb.unwrap(("abc", 1, rb.Parameterize(jnp.exp, jnp.zeros(3))))
    theirs = paramax.unwrap(("abc", 1, paramax.Parameterize(jnp.exp, jnp.zeros(3))))
    _same(ours, theirs)
    assert repr(ours) == repr(theirs) == "('abc', 1, Array([1., 1., 1.], dtype=float32))"


def test_nested_unwrap_innermost_first_matches_paramax():
    x = jnp.array([0.5, -1.0, 2.0])
    calls = []

    def rec(name, fn):
        def f(*a, **k):
            calls.append(name)
            return fn(*a, **k)

        return f

    def build(P):
        inner = P(rec("inner", lambda a, *, shift: a + shift), x, shift=jnp.array(1.0))
        middle = P(rec("middle", jnp.exp), inner)
        return {"m": P(rec("outer", lambda a, b: a * b), middle, P(rec("b", jnp.sin), x)), "raw": x}

    ours = rb.unwrap(build(rb.Parameterize))
    order_ours, calls[:] = list(calls), []
    theirs = paramax.unwrap(build(paramax.Parameterize))
    _same(ours, theirs)
    np.testing.assert_allclose(ours["m"], jnp.exp(x + 1) * jnp.sin(x), rtol=1e-6)
    assert order_ours == calls  # the same order of evaluation
    assert order_ours.index("inner") < order_ours.index("middle") < order_ours.index("outer")


def test_unwrap_leaves_plain_trees_alone():
    tree = {"a": jnp.ones(2), "b": [1, "x", None], "c": (jnp.int32(3),)}
    _same(rb.unwrap(tree), paramax.unwrap(tree))
    _same(rb.unwrap(tree), tree)


def test_unwrap_inside_equinox_module_matches_paramax():
    key = jax.random.key(0)
    lin = eqx.nn.Linear(3, 2, key=key)

    def wrap(P, W):
        return eqx.tree_at(lambda m: (m.weight, m.bias), lin, (W(lin.weight), P(jnp.exp, lin.bias)))

    ours = rb.unwrap(wrap(rb.Parameterize, rb.WeightNormalization))
    theirs = paramax.unwrap(wrap(paramax.Parameterize, paramax.WeightNormalization))
    x = jnp.arange(3.0)
    np.testing.assert_array_equal(ours(x), theirs(x))


def test_parameterize_kwargs_matches_paramax():
    x = jnp.linspace(-2.0, 2.0, 5)
    ours = rb.unwrap(rb.Parameterize(jnp.clip, x, min=-1.0, max=0.5))
    theirs = paramax.unwrap(paramax.Parameterize(jnp.clip, x, min=-1.0, max=0.5))
    _same(ours, theirs)


def test_non_trainable_stops_gradient_like_paramax():
    w = jnp.array([1.0, 2.0, 3.0])

    def loss(unwrap):
        def f(tree):
            t = unwrap(tree)
            return jnp.sum(t["frozen"] ** 2 + t["free"] ** 2)

        return f

    g_ours = jax.grad(loss(rb.unwrap))({"frozen": rb.NonTrainable(w), "free": w})
    g_theirs = jax.grad(loss(paramax.unwrap))({"frozen": paramax.NonTrainable(w), "free": w})
    np.testing.assert_array_equal(g_ours["frozen"].tree, jnp.zeros(3))
    np.testing.assert_array_equal(g_ours["free"], 2 * w)
    np.testing.assert_array_equal(g_ours["frozen"].tree, g_theirs["frozen"].tree)
    np.testing.assert_array_equal(g_ours["free"], g_theirs["free"])
    # the value itself passes through unchanged, ints and other leaves included
    tree = rb.NonTrainable({"w": w, "n": 3, "i": jnp.arange(2)})
    _same(rb.unwrap(tree), paramax.unwrap(paramax.NonTrainable({"w": w, "n": 3, "i": jnp.arange(2)})))


def test_non_trainable_on_a_module_stops_all_gradients():
    lin = eqx.nn.Linear(2, 2, key=jax.random.key(1))
    g = eqx.filter_grad(lambda m: jnp.sum(rb.unwrap(m)(jnp.ones(2))))(rb.NonTrainable(lin))
    for leaf in jax.tree_util.tree_leaves(g):
        np.testing.assert_array_equal(leaf, jnp.zeros_like(leaf))


def test_non_trainable_function_matches_paramax():
    tree = {"w": jnp.ones(3), "n": 3, "i": jnp.arange(3), "s": "name", "already": rb.NonTrainable(jnp.ones(2))}
    ptree = {**tree, "already": paramax.NonTrainable(jnp.ones(2))}
    ours, theirs = rb.non_trainable(tree), paramax.non_trainable(ptree)
    for k in tree:
        assert type(ours[k]).__name__ == type(theirs[k]).__name__, k
    assert isinstance(ours["already"].tree, jax.Array)  # not wrapped twice
    _same(rb.unwrap(ours), paramax.unwrap(theirs))
    # and nothing it wrapped is free any more
    assert jax.tree_util.tree_leaves(rb.partition(ours)[0]) == []


def test_weight_normalization_matches_paramax():
    w = jax.random.normal(jax.random.key(2), (4, 3))
    ours, theirs = rb.WeightNormalization(w), paramax.WeightNormalization(w)
    _same(rb.unwrap(ours), paramax.unwrap(theirs))
    np.testing.assert_array_equal(ours.scale.args[0], theirs.scale.args[0])
    # the rows of the unwrapped weight have norm = scale = 1/||w_row|| at initialisation
    np.testing.assert_allclose(jnp.linalg.norm(rb.unwrap(ours), axis=-1), 1 / jnp.linalg.norm(w, axis=-1), rtol=1e-5)
    # nested: weight-normalise an already wrapped weight
    nested_ours = rb.WeightNormalization(rb.Parameterize(jnp.tanh, w))
    nested_theirs = paramax.WeightNormalization(paramax.Parameterize(jnp.tanh, w))
    _same(rb.unwrap(nested_ours), paramax.unwrap(nested_theirs))
    # same gradients with respect to the wrapped arrays
    f_ours = lambda t: jnp.sum(jnp.sin(rb.unwrap(t)))  # noqa: E731
    f_theirs = lambda t: jnp.sum(jnp.sin(paramax.unwrap(t)))  # noqa: E731
    g1, g2 = eqx.filter_grad(f_ours)(ours), eqx.filter_grad(f_theirs)(theirs)
    np.testing.assert_allclose(g1.weight, g2.weight, rtol=1e-6)
    np.testing.assert_allclose(g1.scale.args[0], g2.scale.args[0], rtol=1e-6)


def test_contains_unwrappables_matches_paramax():
    cases = [
        (jnp.ones(2), jnp.ones(2)),
        ({"a": 1, "b": [jnp.ones(2)]}, {"a": 1, "b": [jnp.ones(2)]}),
        ({"a": rb.Parameterize(jnp.exp, 1.0)}, {"a": paramax.Parameterize(jnp.exp, 1.0)}),
        ([1, (2, rb.NonTrainable(jnp.ones(1)))], [1, (2, paramax.NonTrainable(jnp.ones(1)))]),
        (rb.WeightNormalization(jnp.ones((2, 2))), paramax.WeightNormalization(jnp.ones((2, 2)))),
    ]
    for ours, theirs in cases:
        assert rb.contains_unwrappables(ours) == paramax.contains_unwrappables(theirs)
    assert rb.contains_unwrappables({"s": rb.Positive(1.0)})
    assert not rb.contains_unwrappables(rb.unwrap({"s": rb.Positive(1.0)}))


def test_vmapped_construction_equals_one_at_a_time():
    keys = jax.random.split(jax.random.key(3), 4)
    make_ours = lambda k: rb.WeightNormalization(jax.random.normal(k, (3, 2)))  # noqa: E731
    make_theirs = lambda k: paramax.WeightNormalization(jax.random.normal(k, (3, 2)))  # noqa: E731
    vm_ours, vm_theirs = eqx.filter_vmap(make_ours)(keys), eqx.filter_vmap(make_theirs)(keys)
    singles = [make_ours(k) for k in keys]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[eqx.filter(s, eqx.is_array) for s in singles])
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(vm_ours, eqx.is_array)), jax.tree_util.tree_leaves(stacked), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(rb.unwrap(vm_ours), jnp.stack([rb.unwrap(s) for s in singles]), rtol=1e-6)
    np.testing.assert_array_equal(rb.unwrap(vm_ours), paramax.unwrap(vm_theirs))
    # the same for bijectors, both from constrained values and from unconstrained ones
    vals = jnp.array([0.5, 1.0, 4.0])
    vm = eqx.filter_vmap(lambda v: rb.Positive(v, transform="softplus"))(vals)
    one = [rb.Positive(v, transform="softplus") for v in vals]
    np.testing.assert_allclose(vm.unconstrained, jnp.stack([o.unconstrained for o in one]), rtol=1e-6)
    simplexes = jax.random.dirichlet(jax.random.key(4), jnp.ones(3), (4,))
    vm = eqx.filter_vmap(rb.Simplex)(simplexes)
    one = [rb.Simplex(s) for s in simplexes]
    np.testing.assert_allclose(vm.unconstrained, jnp.stack([o.unconstrained for o in one]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rb.unwrap(vm), simplexes, rtol=1e-5, atol=1e-6)
    us = jax.random.normal(jax.random.key(5), (4, 3))
    vm = eqx.filter_vmap(rb.CorrCholesky.from_unconstrained)(us)
    np.testing.assert_allclose(
        rb.unwrap(vm), jnp.stack([rb.unwrap(rb.CorrCholesky.from_unconstrained(u)) for u in us]), rtol=1e-6, atol=1e-7
    )


# --------------------------------------------------------------------------------------
# klax documented examples (klax/_wrappers.py)


def test_klax_parameterize_example():
    positive = rb.Parameterize(jnp.exp, jnp.zeros(3))
    assert repr(rb.unwrap(positive)) == "Array([1., 1., 1.], dtype=float32)"


def test_klax_unwrap_example():
    params = rb.Parameterize(jnp.exp, jnp.zeros(3))
    assert repr(rb.unwrap(("abc", 1, params))) == "('abc', 1, Array([1., 1., 1.], dtype=float32))"


def test_klax_non_trainable_wraps_arrays_and_constraints():
    tree = {"w": jnp.ones(2), "c": rb.NonNegative(-jnp.ones(2)), "n": 2, "i": jnp.arange(2)}
    frozen = rb.non_trainable(tree)
    assert isinstance(frozen["w"], rb.NonTrainable)
    assert isinstance(frozen["c"], rb.NonTrainable) and isinstance(frozen["c"].tree, rb.NonNegative)
    assert isinstance(frozen["c"].tree.parameter, jax.Array)  # the constraint's array is not wrapped again
    assert frozen["n"] == 2 and isinstance(frozen["i"], jax.Array)  # ints untouched
    # klax's suggested filter: is_leaf on (NonTrainable, Constraint) keeps them out of the params
    params, _ = eqx.partition(
        rb.non_trainable(tree), eqx.is_inexact_array, is_leaf=lambda x: isinstance(x, (rb.NonTrainable, rb.Constraint))
    )
    assert not any(eqx.is_inexact_array(x) for x in jax.tree_util.tree_leaves(params))
    np.testing.assert_array_equal(rb.unwrap(frozen)["c"], jnp.zeros(2))
    assert rb.non_trainable(frozen)["c"] is frozen["c"]  # idempotent


@pytest.mark.parametrize("cls", [rb.Symmetric, rb.SkewSymmetric])
def test_klax_symmetric_shape_errors(cls):
    for bad in (jnp.ones(3), jnp.ones((2, 3)), jnp.ones((4, 2, 3))):
        with pytest.raises(ValueError, match=r"\(\.\.\., N, N\)"):
            cls(bad)
    with pytest.raises(ValueError, match=cls.__name__):
        cls(jnp.ones((2, 3)))
    # a wrapped parameter is checked through its unwrapped shape
    with pytest.raises(ValueError):
        cls(rb.Parameterize(jnp.exp, jnp.ones((2, 3))))


def test_symmetric_and_skew_values():
    p = jax.random.normal(jax.random.key(6), (5, 3, 3))
    s, k = rb.unwrap(rb.Symmetric(p)), rb.unwrap(rb.SkewSymmetric(p))
    np.testing.assert_allclose(s, jnp.swapaxes(s, -1, -2))
    np.testing.assert_allclose(k, -jnp.swapaxes(k, -1, -2))
    np.testing.assert_allclose(s + k, p, rtol=1e-6, atol=1e-6)
    # wrapping a wrapped parameter unwraps the inner one first
    nested = rb.unwrap(rb.Symmetric(rb.Parameterize(jnp.exp, p)))
    np.testing.assert_allclose(nested, 0.5 * (jnp.exp(p) + jnp.swapaxes(jnp.exp(p), -1, -2)), rtol=1e-6)


def test_user_subclass_and_abstractness():
    with pytest.raises(TypeError):
        rb.Unwrappable()  # abstract

    class Doubled(rb.Unwrappable):
        x: jax.Array

        def unwrap(self):
            return 2 * self.x

    _same(rb.unwrap({"d": Doubled(rb.Parameterize(jnp.exp, jnp.zeros(2)))}), {"d": jnp.full(2, 2.0)})
