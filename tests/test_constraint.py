"""Constraints: klax's documented behaviour of ``NonNegative``, ``apply`` and ``finalize``
(reproduced, klax needs Python >= 3.12), plus the two-sided ``Clamp``.

Cost: about 2 s.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reparam_bridge as rb


def test_klax_apply_example():
    # klax.apply(("abc", 1, NonNegative(-1 * ones(3)))): klax's implementation returns the
    # tuple with the *constraint* projected (parameter clamped to 0), still wrapped; its
    # docstring shows the unwrapped array, which is what finalize gives.
    params = rb.NonNegative(-1 * jnp.ones(3))
    out = rb.apply(("abc", 1, params))
    assert out[:2] == ("abc", 1)
    assert isinstance(out[2], rb.NonNegative)
    np.testing.assert_array_equal(out[2].parameter, jnp.zeros(3))
    assert repr(rb.finalize(("abc", 1, params))) == "('abc', 1, Array([0., 0., 0.], dtype=float32))"


def test_apply_returns_a_copy():
    params = rb.NonNegative(jnp.array([-1.0, 2.0, -3.0]))
    tree = {"p": params, "x": jnp.array([-5.0])}
    new = rb.apply(tree)
    np.testing.assert_array_equal(params.parameter, [-1.0, 2.0, -3.0])  # original unchanged
    np.testing.assert_array_equal(tree["p"].parameter, [-1.0, 2.0, -3.0])
    np.testing.assert_array_equal(new["p"].parameter, [0.0, 2.0, 0.0])
    np.testing.assert_array_equal(new["x"], [-5.0])  # non-constraints untouched
    assert new is not tree and new["p"] is not params


def test_non_negative_unwrap_and_apply():
    p = rb.NonNegative(jnp.array([-1.0, 0.0, 2.5]))
    np.testing.assert_array_equal(rb.unwrap(p), [0.0, 0.0, 2.5])
    np.testing.assert_array_equal(rb.apply(p).parameter, [0.0, 0.0, 2.5])
    # unwrap is differentiable (subgradient of max), apply is the projection
    g = jax.grad(lambda q: jnp.sum(rb.unwrap(q) * jnp.array([1.0, 1.0, 3.0])))(p)
    np.testing.assert_array_equal(g.parameter, [0.0, 0.5, 3.0])  # jnp.maximum splits the tie at 0


def test_finalize_is_unwrap_of_apply_inside_a_module():
    lin = eqx.nn.Linear(3, 2, key=jax.random.key(0))
    wrapped = eqx.tree_at(lambda m: m.weight, lin, rb.NonNegative(lin.weight))
    final = rb.finalize(wrapped)
    assert isinstance(final, eqx.nn.Linear)
    np.testing.assert_array_equal(final.weight, jnp.maximum(lin.weight, 0))
    x = jnp.arange(3.0)
    np.testing.assert_array_equal(final(x), rb.unwrap(rb.apply(wrapped))(x))
    assert not rb.contains_unwrappables(final)


def test_apply_reaches_constraints_inside_other_wrappers():
    # klax says constraints should not be nested in each other; inside other unwrappables
    # they are applied, and finalize unwraps innermost first
    x = jnp.array([-2.0, 0.5])
    tree = {"e": rb.Parameterize(jnp.exp, rb.NonNegative(x)), "frozen": rb.NonTrainable(rb.NonNegative(x))}
    applied = rb.apply(tree)
    np.testing.assert_array_equal(applied["e"].args[0].parameter, [0.0, 0.5])
    np.testing.assert_array_equal(applied["frozen"].tree.parameter, [0.0, 0.5])
    np.testing.assert_allclose(rb.finalize(tree)["e"], jnp.exp(jnp.array([0.0, 0.5])))


def test_contains_constraints():
    assert rb.contains_constraints({"a": rb.NonNegative(jnp.ones(2))})
    assert rb.contains_constraints([1, (rb.Clamp(jnp.ones(1), lower=0.0),)])
    assert not rb.contains_constraints({"a": rb.Positive(1.0), "b": rb.Parameterize(jnp.exp, 0.0)})
    assert not rb.contains_constraints(rb.apply({"a": jnp.ones(2)}))


def test_clamp():
    c = rb.Clamp(jnp.array([-3.0, 0.5, 7.0]), lower=0.0, upper=1.0)
    np.testing.assert_array_equal(rb.unwrap(c), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(rb.apply(c).parameter, [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(rb.finalize(rb.Clamp(jnp.array([-3.0, 7.0]), upper=2.0)), [-3.0, 2.0])
    np.testing.assert_array_equal(rb.finalize(rb.Clamp(jnp.array([-3.0, 7.0]), lower=-1.0)), [-1.0, 7.0])
    with pytest.raises(ValueError, match="Clamp.*lower < upper"):
        rb.Clamp(jnp.ones(2), lower=1.0, upper=0.0)
    # the bounds are not free parameters
    params, _ = rb.partition(c)
    assert len(jax.tree_util.tree_leaves(params)) == 1


def test_constraint_is_abstract_and_subclassable():
    with pytest.raises(TypeError):
        rb.Constraint()

    class UnitNorm(rb.Constraint):
        parameter: jax.Array

        def unwrap(self):
            return self.parameter / jnp.linalg.norm(self.parameter)

        def apply(self):
            return eqx.tree_at(lambda c: c.parameter, self, self.unwrap())

    out = rb.apply({"u": UnitNorm(jnp.array([3.0, 4.0]))})
    np.testing.assert_allclose(out["u"].parameter, [0.6, 0.8])
