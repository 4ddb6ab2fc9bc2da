"""The one traversal (``_tree.py``) and the one-pass bijector contract.

Counts are taken with Python-side counters while JAX traces (``jax.jit(...).lower``): what
runs at trace time is exactly what ends up in the compiled program.
"""

import collections

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

import reparam_bridge as rb
from reparam_bridge import _tree
from reparam_bridge._bijectors import maps

CALLS = collections.Counter()


class OnePass(rb.Bijector):
    """exp, in the one-pass form."""

    raw: jax.Array

    def unwrap_and_log_det(self):
        CALLS["one_pass"] += 1
        return jnp.exp(self.raw), jnp.sum(self.raw)


class TwoMethods(rb.Bijector):
    """exp, in the two-method form (as tutorial 04 and older user code write it)."""

    raw: jax.Array

    def unwrap(self):
        CALLS["unwrap"] += 1
        return jnp.exp(self.raw)

    def log_det_jacobian(self):
        CALLS["log_det"] += 1
        return jnp.sum(self.raw)


def _trace_count(fn, *args):
    CALLS.clear()
    jax.jit(fn).lower(*args)
    return dict(CALLS)


@pytest.fixture
def count_corr(monkeypatch):
    original = maps.corr_cholesky_parts

    def counted(x):
        CALLS["corr"] += 1
        return original(x)

    monkeypatch.setattr(maps, "corr_cholesky_parts", counted)


def _model():
    C = jnp.array([[1.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 1.0]])
    return {
        # "b" refers to "a" before the walk reaches it: "a" is still evaluated once
        "b": rb.Bounded.from_unconstrained(jnp.array(0.2), lower=0.0, upper=rb.Ref("a")),
        "a": OnePass(jnp.array(0.5)),
        "c": TwoMethods(jnp.array([0.1, -0.3])),
        "C": rb.CorrMatrix(C, prior=dist.LKJ(3, 2.0)),
        "s": rb.Positive(1.5, prior=dist.HalfNormal(2.0)),
    }


def _log_joint(m):
    return dist.Normal(0.0, 1.0).log_prob(m["b"]) + jnp.sum(m["c"]) + m["C"][0, 1] + m["a"] * m["s"]


def test_log_density_evaluates_each_forward_map_once_per_trace(count_corr):
    model = _model()
    params, static = rb.partition(model)
    counts = _trace_count(lambda p: rb.log_density(_log_joint, eqx.combine(p, static)), params)
    assert counts == {"one_pass": 1, "unwrap": 1, "log_det": 1, "corr": 1}
    # and under a gradient, as the samplers trace it: once more for nothing
    counts = _trace_count(jax.value_and_grad(lambda p: rb.log_density(_log_joint, eqx.combine(p, static))), params)
    assert counts == {"one_pass": 1, "unwrap": 1, "log_det": 1, "corr": 1}
    # without the Jacobian, no log-Jacobian is traced at all
    counts = _trace_count(lambda p: rb.log_density(_log_joint, eqx.combine(p, static), jacobian=False), params)
    assert counts == {"one_pass": 1, "unwrap": 1, "corr": 1}


def test_numpyro_random_module_evaluates_each_forward_map_once(count_corr):
    model = _model()

    def np_model():
        m = rb.numpyro.random_module("m", model)
        numpyro.factor("lj", _log_joint(m))

    values = rb.numpyro.init_values("m", model)
    counts = _trace_count(lambda v: numpyro.infer.util.log_density(np_model, (), {}, v)[0], values)
    assert counts == {"one_pass": 1, "unwrap": 1, "log_det": 1, "corr": 1}


def test_one_pass_density_is_the_sum_of_its_terms(x64):
    model = _model()
    values = rb.unwrap(model)
    lp = _log_joint(values) + rb.log_prior(model) + rb.log_det_jacobian(model)
    np.testing.assert_allclose(rb.log_density(_log_joint, model), lp, rtol=1e-12)
    # each term by hand: exp maps (log-Jacobian = raw), the Bounded's sigmoid, the CorrMatrix's own
    a = jnp.exp(0.5)
    t = jax.nn.sigmoid(0.2)
    by_hand = 0.5 + (0.1 - 0.3) + jnp.log(a * t * (1 - t)) + jnp.log(1.5)
    corr = model["C"]
    by_hand += corr.log_det_jacobian()
    np.testing.assert_allclose(rb.log_det_jacobian(model), by_hand, rtol=1e-10)
    expected_prior = dist.LKJ(3, 2.0).log_prob(values["C"]) + dist.HalfNormal(2.0).log_prob(1.5)
    np.testing.assert_allclose(rb.log_prior(model), expected_prior, rtol=1e-10)


def test_derived_methods_agree_with_the_one_pass_form(x64):
    for node in (
        OnePass(jnp.array([0.2, -1.0])),
        TwoMethods(jnp.array([0.2, -1.0])),
        rb.CorrCholesky(jnp.eye(3)),
        rb.Simplex(jnp.array([0.2, 0.3, 0.5])),
    ):
        value, log_det = node.unwrap_and_log_det()
        np.testing.assert_allclose(value, node.unwrap(), rtol=1e-12)
        np.testing.assert_allclose(log_det, node.log_det_jacobian(), rtol=1e-12)


def test_a_bijector_needs_one_of_the_two_forms():
    class Neither(rb.Bijector):
        raw: jax.Array

    class OnlyValue(rb.Bijector):
        raw: jax.Array

        def unwrap(self):
            return self.raw

    for cls in (Neither, OnlyValue):
        with pytest.raises(TypeError, match="unwrap_and_log_det"):
            cls(jnp.zeros(2))


def test_the_same_node_at_two_paths_counts_twice_as_after_partition():
    p = rb.Positive(2.0, prior=dist.LogNormal(0.0, 1.0))
    tree = {"a": p, "b": p}
    params, static = rb.partition(tree)
    rebuilt = eqx.combine(params, static)  # two distinct nodes now
    lj = lambda m: m["a"] * m["b"]  # noqa: E731
    np.testing.assert_allclose(rb.log_density(lj, tree), rb.log_density(lj, rebuilt), rtol=1e-6)
    np.testing.assert_allclose(rb.log_det_jacobian(tree), 2 * np.log(2.0), rtol=1e-6)


def test_refs_by_negative_index_and_to_refs_share_one_evaluation():
    tree = {
        "xs": [OnePass(jnp.array(0.0)), OnePass(jnp.array(1.0))],
        "last": rb.Ref("xs.-1"),
        "alias": rb.Ref("last"),
        "b": rb.Bounded.from_unconstrained(jnp.array(0.0), lower=0.0, upper=rb.Ref("alias")),
    }
    counts = _trace_count(lambda t: rb.log_density(lambda m: 0.0, t), tree)
    assert counts == {"one_pass": 2}
    values = rb.unwrap(tree)
    np.testing.assert_allclose(values["last"], np.e, rtol=1e-6)
    np.testing.assert_allclose(values["b"], np.e / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="circular.*x -> y -> x"):
        rb.unwrap({"x": rb.Ref("y"), "y": rb.Ref("x")})


def test_walk_and_fold_see_the_same_paths():
    tree = {
        "s": rb.Positive(1.0),
        "frozen": rb.NonTrainable(rb.Real(0.0)),
        "b": rb.Bounded.from_unconstrained(0.0, lower=rb.Positive(1.0), upper=5.0),
    }
    walked = [(p, type(n).__name__, frozen) for p, n, frozen in _tree.walk(tree)]
    assert walked == [
        ("b", "Bounded", False),
        ("b.lower", "Positive", False),
        ("b.upper", "NonTrainable", True),
        ("frozen", "NonTrainable", True),
        ("frozen.tree", "Real", True),
        ("s", "Positive", False),
    ]
    folded = []
    _tree.fold(tree, lambda v: folded.append((v.path, type(v.node).__name__, v.frozen)) or v.inner.unwrap())
    assert sorted(folded) == sorted(walked)  # the same nodes, innermost first
    assert [p for p, _, _ in folded].index("b.lower") < [p for p, _, _ in folded].index("b")


def test_apply_leaves_refs_in_place():
    tree = {"a": rb.Positive(2.0), "c": rb.Clamp(jnp.array([-1.0, 3.0]), lower=0.0, upper=1.0), "r": rb.Ref("a")}
    applied = rb.apply(tree)
    assert isinstance(applied["r"], rb.Ref)
    np.testing.assert_array_equal(applied["c"].parameter, [0.0, 1.0])


def test_free_filter_is_the_one_frozen_decision():
    tree = {
        "w": jnp.ones(2),
        "f": rb.NonTrainable(jnp.ones(2)),
        "p": rb.Real(0.0, prior=dist.Normal(0.0, 1.0)),
        "n": jnp.arange(3),
    }
    spec = _tree.free_filter(tree)
    assert spec["w"] is True and spec["f"] is False and spec["n"] is False
    assert spec["p"].unconstrained is True and spec["p"].prior is False
    params, _ = rb.partition(tree)
    assert [x.shape for x in jax.tree_util.tree_leaves(params)] == [(), (2,)]


def test_constructor_checks_hold_under_jit_and_vmap():
    # traced values cannot be checked when the bijector is built: eqx.error_if checks them
    # when the compiled function runs, with the same message as outside jit
    positive = jax.jit(lambda v: rb.unwrap(rb.Positive(v)))
    np.testing.assert_allclose(positive(2.0), 2.0, rtol=1e-6)
    with pytest.raises(Exception, match="Positive: value must be finite and strictly inside the support"):
        jax.block_until_ready(positive(-1.0))
    bounded = jax.vmap(lambda v: rb.unwrap(rb.Bounded(v, lower=0.0, upper=1.0)))
    np.testing.assert_allclose(bounded(jnp.array([0.25, 0.5])), [0.25, 0.5], rtol=1e-6)
    with pytest.raises(Exception, match="Bounded: value must be finite"):
        jax.block_until_ready(bounded(jnp.array([0.5, 1.5])))
    bounds = jax.jit(lambda lo, hi: rb.unwrap(rb.Bounded.from_unconstrained(0.0, lower=lo, upper=hi)))
    with pytest.raises(Exception, match="Bounded: need lower < upper"):
        jax.block_until_ready(bounds(1.0, 0.0))
    with pytest.raises(Exception, match="Bounded: lower must be finite"):
        jax.block_until_ready(bounds(-jnp.inf, 0.0))
    locscale = jax.jit(lambda s: rb.unwrap(rb.LocScale(1.0, 0.0, s, centered=0.0)))
    np.testing.assert_allclose(locscale(2.0), 1.0, rtol=1e-6)
    with pytest.raises(Exception, match="LocScale: value, loc and scale must be finite and scale positive"):
        jax.block_until_ready(locscale(-1.0))


def test_constructor_checks_under_jit_are_the_eager_ones():
    # every check a constructor makes on a concrete value is made on a traced one: shapes at
    # trace time (with the eager message), values by eqx.error_if when the program runs
    from numpyro.distributions import constraints

    def under_jit(build, value):
        return jax.block_until_ready(jax.jit(lambda v: rb.unwrap(build(v)))(value))

    shape_cases = [  # (build, value, message): refused while tracing
        (rb.Simplex, jnp.array([1.0]), "Simplex: the last axis needs at least 2 entries"),
        (lambda v: rb.Bounded(v, lower=jnp.zeros(3)), 1.0, "Bounded: lower has shape"),
        (rb.CorrMatrix, jnp.ones((2, 3)), "CorrMatrix: value must be square"),
    ]
    value_cases = [  # refused when the compiled function runs
        (rb.Simplex, jnp.array([0.5, 0.5, 0.0]), "Simplex: value must be finite and strictly inside"),
        (rb.ZeroSum, jnp.array([1e-3, -1e-3, 1e-6]), "ZeroSum: value must be finite and strictly inside"),
        (lambda v: rb.Constrained(v, constraints.simplex), jnp.array([0.5, 0.5, 0.0]), "Constrained: value must"),
        (
            lambda v: {"m": rb.Real(0.0), "t": rb.LocScale(v, rb.Ref("m"), 1.0)},
            jnp.nan,
            "LocScale: value must be finite",
        ),
    ]
    for build, value, message in shape_cases + value_cases:
        with pytest.raises(Exception):  # eagerly too
            build(value)
        with pytest.raises(Exception, match=message):
            under_jit(build, value)
    np.testing.assert_allclose(under_jit(rb.Simplex, jnp.array([0.2, 0.3, 0.5])), [0.2, 0.3, 0.5], rtol=1e-6)
    with jax.enable_x64(True):  # a sum off 1 by 1e-9: inside NumPyro's simplex support (1e-6), refused eagerly
        off = jnp.array([0.2, 0.3, 0.5 + 1e-9], jnp.float64)
        with pytest.raises(ValueError, match="sum to 1"):
            rb.Simplex(off)
        with pytest.raises(Exception, match="Simplex: value must be finite and strictly inside"):
            under_jit(rb.Simplex, off)


def test_zero_sum_accepts_centred_float32_vectors_eagerly_and_under_jit():
    # its sum tolerance is the value's own dtype's rounding (a float64 copy's made the eager check
    # refuse 934 of 1,000 centred float32 vectors)
    x = jax.random.normal(jax.random.key(1), (200, 7))
    x = x - x.mean(-1, keepdims=True)
    for row in x:
        np.testing.assert_allclose(rb.unwrap(rb.ZeroSum(row)), row, atol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(lambda v: rb.unwrap(rb.ZeroSum(v))))(x), x, atol=1e-6)
