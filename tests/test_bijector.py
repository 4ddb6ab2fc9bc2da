"""Named bijectors: log-Jacobians against ``jax.jacfwd``, round trips, validation, priors, edges.

Cost: about 30 s on one core (the Jacobian property test dominates: ~35 specs x 8 examples).
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from conftest import drop_last, identity, jacfwd_logdet, lower, strict_lower
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpyro.distributions import constraints as C

import reparam_bridge as rb


@dataclass(frozen=True, eq=False)  # hashed by identity, for the compiled-function caches
class Spec:
    name: str
    cls: type
    shape: tuple  # shape of the free (unconstrained) array
    coords: Callable = identity  # independent coordinates of the constrained value
    config: dict = field(default_factory=dict)

    def make(self, u):
        return self.cls.from_unconstrained(u, **self.config)

    def construct(self, value, **kw):
        return self.cls(value, **self.config, **kw)

    def __repr__(self):
        return self.name


def drop_last_two(v):
    return v[..., :-1, :-1]


ARRAY_LO, ARRAY_HI = np.array([-1.0, 0.0, 2.0]), np.array([0.5, 3.0, 2.5])

SPECS = [
    Spec("Real", rb.Real, (3,)),
    Spec("Real-scalar", rb.Real, ()),
    Spec("Positive-exp", rb.Positive, (3,)),
    Spec("Positive-softplus", rb.Positive, (3,), config={"transform": "softplus"}),
    Spec("Bounded-lower", rb.Bounded, (3,), config={"lower": 1.5}),
    Spec("Bounded-upper", rb.Bounded, (3,), config={"upper": -1.0}),
    Spec("Bounded-both", rb.Bounded, (3,), config={"lower": -2.0, "upper": 3.0}),
    Spec("Bounded-array-both", rb.Bounded, (3,), config={"lower": ARRAY_LO, "upper": ARRAY_HI}),
    Spec("Bounded-array-lower", rb.Bounded, (3,), config={"lower": ARRAY_LO}),
    Spec("Bounded-array-upper", rb.Bounded, (3,), config={"upper": ARRAY_HI}),
    Spec("Simplex", rb.Simplex, (3,), drop_last),
    Spec("Ordered", rb.Ordered, (4,)),
    Spec("PositiveOrdered", rb.PositiveOrdered, (4,)),
    Spec("CorrCholesky", rb.CorrCholesky, (6,), strict_lower),
    Spec("CorrCholesky-2", rb.CorrCholesky, (1,), strict_lower),
    Spec("CorrMatrix", rb.CorrMatrix, (6,), strict_lower),
    Spec("CovCholesky", rb.CovCholesky, (6,), lower),
    Spec("PositiveDefinite", rb.PositiveDefinite, (6,), lower),
    Spec("ZeroSum", rb.ZeroSum, (3,), drop_last),
    Spec("Constrained-unit_interval", rb.Constrained, (), config={"constraint": C.unit_interval}),
    Spec("Constrained-greater_than", rb.Constrained, (3,), config={"constraint": C.greater_than(2.0)}),
    Spec("Constrained-softplus_positive", rb.Constrained, (3,), config={"constraint": C.softplus_positive}),
    Spec("Constrained-ordered_vector", rb.Constrained, (4,), config={"constraint": C.ordered_vector}),
    Spec("Constrained-interval", rb.Constrained, (2,), config={"constraint": C.interval(-1.0, 3.0)}),
    Spec("Constrained-simplex", rb.Constrained, (3,), drop_last, config={"constraint": C.simplex}),
    Spec("Constrained-zero_sum", rb.Constrained, (3,), drop_last, config={"constraint": C.zero_sum(1)}),
    Spec("Constrained-zero_sum-2axes", rb.Constrained, (2, 3), drop_last_two, config={"constraint": C.zero_sum(2)}),
    Spec("Constrained-corr_cholesky", rb.Constrained, (3,), strict_lower, config={"constraint": C.corr_cholesky}),
    Spec("Constrained-positive_definite", rb.Constrained, (6,), lower, config={"constraint": C.positive_definite}),
    Spec("Constrained-lower_cholesky", rb.Constrained, (6,), lower, config={"constraint": C.lower_cholesky}),
    # batched values: the log-Jacobian must be the sum over the batch
    Spec("Positive-batch", rb.Positive, (2, 3)),
    Spec("Bounded-batch-array", rb.Bounded, (2, 3), config={"lower": ARRAY_LO, "upper": ARRAY_HI}),
    Spec("Simplex-batch", rb.Simplex, (2, 3), drop_last),
    Spec("Ordered-batch", rb.Ordered, (2, 3)),
    Spec("PositiveOrdered-batch", rb.PositiveOrdered, (2, 3)),
    Spec("CorrCholesky-batch", rb.CorrCholesky, (2, 3), strict_lower),
    Spec("CorrMatrix-batch", rb.CorrMatrix, (2, 3), strict_lower),
    Spec("CovCholesky-batch", rb.CovCholesky, (2, 3), lower),
    Spec("PositiveDefinite-batch", rb.PositiveDefinite, (2, 3), lower),
    Spec("ZeroSum-batch", rb.ZeroSum, (2, 3), drop_last),
]
NAMED = [
    rb.Real,
    rb.Positive,
    rb.Bounded,
    rb.Simplex,
    rb.Ordered,
    rb.PositiveOrdered,
    rb.CorrCholesky,
    rb.CorrMatrix,
    rb.CovCholesky,
    rb.PositiveDefinite,
    rb.ZeroSum,
    rb.Constrained,
]


def test_every_named_bijector_is_covered():
    assert {s.cls for s in SPECS} == set(NAMED)


def free_arrays(spec, scale=3.0):
    return hnp.arrays(np.float64, spec.shape, elements=st.floats(-scale, scale, allow_subnormal=False))


PROPERTY = settings(
    max_examples=8, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@PROPERTY
@given(data=st.data())
def test_log_det_jacobian_matches_jacfwd(spec, data, x64):
    u = jnp.asarray(data.draw(free_arrays(spec)))
    ldj, reference = _ldj_and_reference(spec)(u)
    assert ldj.shape == ()
    np.testing.assert_allclose(ldj, reference, rtol=1e-7, atol=1e-7)


@functools.cache
def _ldj_and_reference(spec):
    # compiled once per spec (eager jacfwd is slow); the reference is jacfwd of the whole map
    # from rb.partition's free arrays to the independent coordinates
    return jax.jit(lambda u: (rb.log_det_jacobian(spec.make(u)), jacfwd_logdet(spec.make(u), spec.coords)))


@pytest.mark.parametrize("spec", SPECS, ids=repr)
@settings(PROPERTY, max_examples=4)  # constructors run eagerly (they validate), so fewer draws
@given(data=st.data())
def test_round_trip(spec, data, x64):
    u = jnp.asarray(data.draw(free_arrays(spec, scale=2.5)))
    value = rb.unwrap(spec.make(u))
    b = spec.construct(value)
    np.testing.assert_allclose(rb.unwrap(b), value, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(b.unconstrained, u, rtol=1e-6, atol=1e-6)
    # and the named bijector's own log-Jacobian is the same from both directions
    np.testing.assert_allclose(rb.log_det_jacobian(b), rb.log_det_jacobian(spec.make(u)), rtol=1e-8, atol=1e-8)


def test_round_trip_float32_keeps_dtype():
    b = rb.Simplex(jnp.array([0.2, 0.3, 0.5]))
    assert b.unconstrained.dtype == jnp.float32
    np.testing.assert_allclose(rb.unwrap(b), [0.2, 0.3, 0.5], rtol=1e-5)
    assert rb.unwrap(rb.Positive(2)).dtype == jnp.float32  # an int becomes a float


def _ordinary_values(rng, k, dtype):
    """Ordinary values of the coupled bijectors, as users compute them (normalised, centred)."""
    import numpyro.distributions as dist

    corr = np.asarray(dist.LKJ(k, 1.0).sample(jax.random.PRNGKey(int(rng.integers(1 << 30)))), np.float64)
    cov = np.cov(rng.normal(size=(k, 3 * k)))
    p = rng.dirichlet(np.ones(k)).astype(dtype)
    z = rng.normal(size=k).astype(dtype)
    return [
        (rb.Simplex, p / p.sum(), "elementwise"),
        (rb.ZeroSum, z - z.mean(), "vector max"),
        (rb.Ordered, np.sort(rng.normal(size=k)).astype(dtype), "vector max"),
        (rb.PositiveOrdered, np.sort(rng.exponential(size=k)).astype(dtype), "elementwise"),
        (rb.CorrCholesky, np.linalg.cholesky(corr).astype(dtype), "row norm"),
        (rb.CovCholesky, np.linalg.cholesky(cov).astype(dtype), "row norm"),
        (rb.CorrMatrix, corr.astype(dtype), "sqrt(d_i d_j)"),
        (rb.PositiveDefinite, cov.astype(dtype), "sqrt(d_i d_j)"),
    ]


def _natural_scale(v, kind):
    if kind == "elementwise":
        return np.abs(v)
    if kind == "vector max":
        return np.max(np.abs(v), axis=-1, keepdims=True)
    if kind == "row norm":
        return np.linalg.norm(v, axis=-1, keepdims=True)
    d = np.sqrt(np.diagonal(v))
    return d[:, None] * d[None, :]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constructors_return_ordinary_values_to_a_few_ulps(dtype):
    # Issue 11: "a constructor returns the value it was given to within a few ulps (relative)".
    # Measured with each entry's natural scale; the bound is 32 ulps plus 4·sqrt(n) for a map
    # that couples n entries (rounding of a sum grows like sqrt(n)), the constructors' own rule.
    rng = np.random.default_rng(0)
    with jax.enable_x64(dtype == np.float64):
        for k in (3, 8, 30):
            for _ in range(5):
                for cls, value, kind in _ordinary_values(rng, k, dtype):
                    back = np.asarray(rb.unwrap(cls(value)), np.float64)
                    ulps = np.abs(back - value) / _natural_scale(value.astype(np.float64), kind) / np.finfo(dtype).eps
                    n = value.shape[-1] ** (2 if value.ndim == 2 else 1)
                    assert ulps.max() <= 32 + 4 * np.sqrt(n), (cls.__name__, k, ulps.max())


def test_simplex_keeps_tiny_entries():
    # NumPyro's stick-breaking gave this last entry back 840x too small (1 - z cancels)
    v = np.array([0.9999, 1e-4 - 1e-8, 1e-8], np.float32)
    back = np.asarray(rb.unwrap(rb.Simplex(v)))
    np.testing.assert_allclose(back, v, rtol=32 * np.finfo(np.float32).eps)  # measured: 8 ulps


# --------------------------------------------------------------------------------------
# validation

_BAD = [
    # (wrapper, config, bad value, words the message must contain)
    (rb.Real, {}, jnp.nan, "finite"),
    (rb.Real, {}, jnp.inf, "finite"),
    (rb.Positive, {}, -1.0, "support"),
    (rb.Positive, {}, 0.0, ""),
    (rb.Positive, {}, jnp.array([1.0, jnp.nan]), "finite"),
    (rb.Positive, {"transform": "softplus"}, -0.5, "support"),
    (rb.Bounded, {"lower": 0.0, "upper": 1.0}, 1.5, "support"),
    (rb.Bounded, {"lower": 0.0, "upper": 1.0}, 1.0, "boundary"),
    (rb.Bounded, {"lower": 0.0}, 0.0, ""),
    (rb.Bounded, {"upper": 2.0}, 3.0, "support"),
    (rb.Bounded, {"lower": ARRAY_LO, "upper": ARRAY_HI}, jnp.array([0.0, 1.0, 3.0]), "support"),
    (rb.Simplex, {}, jnp.array([0.5, 0.6]), "sum to 1"),
    (rb.Simplex, {}, jnp.array([1.0, 0.0]), ""),
    (rb.Simplex, {}, jnp.array([0.5, 0.5, 0.0]), ""),
    (rb.Simplex, {}, jnp.array([0.0, 1.0]), ""),
    (rb.Simplex, {}, jnp.array([0.2, jnp.nan, 0.8]), "finite"),
    (rb.Simplex, {}, 1.0, "dimension"),
    (rb.Simplex, {}, jnp.array([1.0]), "2 entries"),
    (rb.Ordered, {}, jnp.array([1.0, 0.0]), "support"),
    (rb.Ordered, {}, jnp.array([1.0, 1.0]), ""),
    (rb.Ordered, {}, 1.0, "dimension"),
    (rb.PositiveOrdered, {}, jnp.array([-1.0, 2.0]), "support"),
    (rb.PositiveOrdered, {}, jnp.array([0.0, 2.0]), ""),
    (rb.PositiveOrdered, {}, jnp.array([2.0, 1.0]), "support"),
    (rb.CorrCholesky, {}, jnp.array([[1.0, 0.0], [0.5, 0.5]]), "support"),
    (rb.CorrCholesky, {}, jnp.array([[1.0, 0.0], [1.0, 0.0]]), ""),
    (rb.CorrCholesky, {}, jnp.array([[1.0, 0.3], [0.0, 1.0]]), "support"),
    (rb.CorrCholesky, {}, jnp.ones((2, 3)), "square"),
    (rb.CorrCholesky, {}, jnp.ones(3), "dimension"),
    (rb.CorrMatrix, {}, jnp.array([[1.0, 0.5], [0.2, 1.0]]), "symmetric"),
    (rb.CorrMatrix, {}, jnp.array([[1.0, 1.0], [1.0, 1.0]]), ""),
    (rb.CorrMatrix, {}, jnp.array([[2.0, 0.5], [0.5, 2.0]]), "support"),
    (rb.CovCholesky, {}, jnp.array([[-1.0, 0.0], [0.5, 1.0]]), "support"),
    (rb.CovCholesky, {}, jnp.array([[0.0, 0.0], [0.5, 1.0]]), ""),
    (rb.CovCholesky, {}, jnp.array([[1.0, 0.3], [0.5, 1.0]]), "support"),
    (rb.PositiveDefinite, {}, jnp.array([[1.0, 2.0], [2.0, 1.0]]), "support"),
    (rb.PositiveDefinite, {}, jnp.array([[1.0, 1.0], [1.0, 1.0]]), ""),
    (rb.PositiveDefinite, {}, jnp.array([[1.0, 0.5], [0.0, 1.0]]), ""),
    (rb.PositiveDefinite, {}, jnp.ones(3), "dimension"),
    (rb.PositiveDefinite, {}, jnp.full((2, 2), jnp.nan), "finite"),
    (rb.ZeroSum, {}, jnp.array([1.0, 1.0]), "sum"),
    (rb.ZeroSum, {}, 0.0, "dimension"),
    (rb.Constrained, {"constraint": C.unit_interval}, 1.5, "support"),
    (rb.Constrained, {"constraint": C.unit_interval}, 1.0, "boundary"),
    (rb.Constrained, {"constraint": C.unit_interval}, jnp.nan, "finite"),
    (rb.Constrained, {"constraint": C.greater_than(2.0)}, 1.0, "support"),
    (rb.Constrained, {"constraint": C.ordered_vector}, 1.0, "dimension"),
    (rb.Constrained, {"constraint": C.simplex}, jnp.array([1.0, 0.0]), ""),
]


@pytest.mark.parametrize("cls, config, value, words", _BAD, ids=[f"{c.__name__}-{i}" for i, (c, *_) in enumerate(_BAD)])
def test_constructor_refuses(cls, config, value, words):
    with pytest.raises(ValueError, match=cls.__name__) as info:
        cls(value, **config)
    assert words in str(info.value)


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="Positive.*transform"):
        rb.Positive(1.0, transform="square")
    with pytest.raises(ValueError, match="Bounded"):
        rb.Bounded(1.0)
    with pytest.raises(ValueError, match="Bounded.*lower < upper"):
        rb.Bounded(1.0, lower=2.0, upper=1.0)
    with pytest.raises(ValueError, match="Bounded.*finite"):
        rb.Bounded(1.0, lower=-jnp.inf)
    with pytest.raises(ValueError, match="Constrained"):
        rb.Constrained(jnp.ones(3), C.sphere)  # biject_to knows no transform for it
    with pytest.raises(TypeError, match="Constrained"):
        rb.Constrained(1.0, "positive")


def test_from_unconstrained_does_not_validate_and_is_jit_vmap_safe():
    # no check: NaN goes through (it runs under jit/vmap, where nothing is concrete)
    assert jnp.isnan(rb.unwrap(rb.Positive.from_unconstrained(jnp.nan)))
    f = jax.jit(jax.vmap(lambda u: rb.unwrap(rb.Simplex.from_unconstrained(u))))
    out = f(jnp.zeros((5, 3)))
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-6)
    # constructors may run under vmap too (validation is skipped on tracers)
    vals = jnp.array([0.5, 1.0, 2.0])
    batched = eqx.filter_vmap(lambda v: rb.Bounded(v, lower=0.0, upper=3.0))(vals)
    np.testing.assert_allclose(rb.unwrap(batched), vals, rtol=1e-6)


# --------------------------------------------------------------------------------------
# priors

_PRIOR_OK = [
    (lambda p: rb.Positive(1.0, prior=p), dist.HalfNormal(1.0)),
    (lambda p: rb.Positive(1.0, prior=p), dist.LogNormal(0.0, 1.0)),
    (lambda p: rb.Positive(1.0, prior=p), dist.Exponential(2.0)),
    (lambda p: rb.Positive(1.0, transform="softplus", prior=p), dist.HalfNormal(1.0)),
    (lambda p: rb.Bounded(0.3, lower=0.0, upper=1.0, prior=p), dist.Beta(2.0, 3.0)),
    (lambda p: rb.Bounded(0.5, lower=-1.0, upper=2.0, prior=p), dist.Uniform(-1.0, 2.0)),
    (
        lambda p: rb.Bounded(jnp.array([0.0, 1.0, 2.2]), lower=ARRAY_LO, upper=ARRAY_HI, prior=p),
        dist.Uniform(ARRAY_LO, ARRAY_HI),
    ),
    (lambda p: rb.Real(0.0, prior=p), dist.Normal(0.0, 1.0)),
    (lambda p: rb.Simplex(jnp.array([0.2, 0.3, 0.5]), prior=p), dist.Dirichlet(jnp.ones(3))),
    (lambda p: rb.CorrCholesky(jnp.eye(3), prior=p), dist.LKJCholesky(3, 2.0)),
    (lambda p: rb.CorrMatrix(jnp.eye(3), prior=p), dist.LKJ(3, 2.0)),
    (lambda p: rb.PositiveDefinite(jnp.eye(3), prior=p), dist.Wishart(5.0, scale_tril=jnp.eye(3))),
    (lambda p: rb.ZeroSum(jnp.array([1.0, -1.0, 0.0]), prior=p), dist.ZeroSumNormal(1.0, (3,))),
    (lambda p: rb.Constrained(0.5, C.unit_interval, prior=p), dist.Beta(1.0, 1.0)),
]


@pytest.mark.parametrize("build, prior", _PRIOR_OK, ids=[type(p).__name__ for _, p in _PRIOR_OK])
def test_matching_prior_accepted(build, prior):
    b = build(prior)
    assert b.prior is prior
    assert jnp.isfinite(rb.log_prior(b))


_PRIOR_BAD = [
    (lambda p: rb.Positive(1.0, prior=p), dist.Normal(0.0, 1.0), "Positive"),
    (lambda p: rb.Positive(1.0, prior=p), dist.Beta(2.0, 2.0), "Positive"),
    (lambda p: rb.Bounded(0.3, lower=0.0, upper=1.0, prior=p), dist.Uniform(0.0, 2.0), "Bounded"),
    (lambda p: rb.Bounded(0.3, lower=0.0, upper=1.0, prior=p), dist.HalfNormal(1.0), "Bounded"),
    (lambda p: rb.Bounded(2.0, lower=1.0, prior=p), dist.HalfNormal(1.0), "Bounded"),
    (lambda p: rb.Real(0.5, prior=p), dist.HalfNormal(1.0), "Real"),
    (lambda p: rb.Simplex(jnp.array([0.2, 0.8]), prior=p), dist.Normal(0.0, 1.0), "Simplex"),
    (lambda p: rb.Ordered(jnp.array([0.2, 0.8]), prior=p), dist.Dirichlet(jnp.ones(2)), "Ordered"),
    (lambda p: rb.CorrCholesky(jnp.eye(2), prior=p), dist.LKJ(2, 1.0), "CorrCholesky"),
    (lambda p: rb.CorrMatrix(jnp.eye(2), prior=p), dist.LKJCholesky(2, 1.0), "CorrMatrix"),
]


@pytest.mark.parametrize("build, prior, name", _PRIOR_BAD, ids=[f"{n}-{type(p).__name__}" for _, p, n in _PRIOR_BAD])
def test_prior_with_other_support_refused(build, prior, name):
    with pytest.raises(ValueError, match=f"{name}.*support"):
        build(prior)


def test_prior_must_be_a_distribution():
    with pytest.raises(TypeError, match="Positive.*Distribution"):
        rb.Positive(1.0, prior=lambda x: 0.0)


# --------------------------------------------------------------------------------------
# edges: ±30 unconstrained gives finite values, log-Jacobians and gradients


EDGE_SPECS = [s for s in SPECS if "batch" not in s.name and s.name != "CorrCholesky-2"]


@functools.cache
def _edge_fn(spec):
    def f(x):
        return rb.log_det_jacobian(spec.make(x)) + jnp.sum(rb.unwrap(spec.make(x)))

    return jax.jit(lambda x: (rb.unwrap(spec.make(x)), rb.log_det_jacobian(spec.make(x)), jax.grad(f)(x)))


def _edge_check(spec, fill, dtype):
    u = jnp.full(spec.shape, fill, dtype)
    alternating = jnp.where(jnp.arange(u.size).reshape(u.shape) % 2 == 0, fill, -fill).astype(dtype)
    for x in (u, alternating):
        value, ldj, g = _edge_fn(spec)(x)
        for what, a in (("value", value), ("log-Jacobian", ldj), ("gradient", g)):
            assert bool(jnp.all(jnp.isfinite(a))), f"{spec.name} at u={np.asarray(x)}: {what} {a}"
        assert value.dtype == dtype and g.dtype == dtype


@pytest.mark.parametrize("fill", [30.0, -30.0])
@pytest.mark.parametrize("spec", EDGE_SPECS, ids=repr)
def test_edges_float32(spec, fill):
    _edge_check(spec, fill, jnp.float32)


@pytest.mark.parametrize("fill", [30.0, -30.0])
@pytest.mark.parametrize("spec", EDGE_SPECS, ids=repr)
def test_edges_float64(spec, fill, x64):
    _edge_check(spec, fill, jnp.float64)


# --------------------------------------------------------------------------------------
# nesting and references


def test_nested_bound_two_free_arrays_and_summed_jacobian(x64):
    tree = rb.Bounded.from_unconstrained(
        jnp.array([0.3, -1.2]), lower=0.0, upper=rb.Positive.from_unconstrained(jnp.array(0.7))
    )
    params, _ = rb.partition(tree)
    assert len(jax.tree_util.tree_leaves(params)) == 2

    # independent coordinates of the whole map: the inner value (the bound) and the outer one
    def coords(value):
        return value

    def whole(t):  # the unwrapped tree only shows b; expose the bound too for the Jacobian
        return {"upper": rb.unwrap(t.upper), "b": rb.unwrap(t)}

    params, static = rb.partition(tree)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    J = jax.jacfwd(lambda x: jax.flatten_util.ravel_pytree(whole(eqx.combine(unravel(x), static)))[0])(flat)
    expected = np.linalg.slogdet(np.asarray(J))[1]
    np.testing.assert_allclose(rb.log_det_jacobian(tree), expected, rtol=1e-10)
    # and it is the sum of the two bijectors' own terms
    upper = rb.unwrap(tree.upper)
    inner_only = rb.Bounded.from_unconstrained(tree.unconstrained, lower=0.0, upper=upper)
    np.testing.assert_allclose(
        rb.log_det_jacobian(tree), rb.log_det_jacobian(tree.upper) + rb.log_det_jacobian(inner_only), rtol=1e-10
    )
    assert jnp.all(rb.unwrap(tree) < upper) and jnp.all(rb.unwrap(tree) > 0)


def test_ref_resolution_and_jacobian(x64):
    tree = {"a": rb.Positive(2.0), "b": rb.Bounded.from_unconstrained(jnp.array(0.0), upper=rb.Ref("a"))}
    values = rb.unwrap(tree)
    np.testing.assert_allclose(values["a"], 2.0)
    np.testing.assert_allclose(values["b"], 1.0)  # 2 - exp(0)
    params, _ = rb.partition(tree)
    assert len(jax.tree_util.tree_leaves(params)) == 2
    np.testing.assert_allclose(rb.log_det_jacobian(tree), jacfwd_logdet(tree, identity), rtol=1e-10)
    np.testing.assert_allclose(rb.log_det_jacobian(tree), np.log(2.0), rtol=1e-10)

    # a chain of references, written in any order
    chain = {"c": rb.Bounded.from_unconstrained(jnp.array(0.3), lower=rb.Ref("b")), **tree}
    np.testing.assert_allclose(rb.log_det_jacobian(chain), jacfwd_logdet(chain, identity), rtol=1e-10)
    assert rb.unwrap(chain)["c"] > rb.unwrap(chain)["b"]


def test_ref_errors():
    circular = {
        "a": rb.Bounded.from_unconstrained(0.0, lower=rb.Ref("b")),
        "b": rb.Bounded.from_unconstrained(0.0, lower=rb.Ref("a")),
    }
    with pytest.raises(ValueError, match="circular"):
        rb.unwrap(circular)
    with pytest.raises(ValueError, match="circular"):
        rb.log_det_jacobian(circular)
    with pytest.raises(ValueError, match="nowhere"):
        rb.unwrap({"b": rb.Bounded.from_unconstrained(0.0, upper=rb.Ref("nowhere"))})
    with pytest.raises(TypeError, match="Bounded.*from_unconstrained"):
        rb.Bounded(1.0, upper=rb.Ref("a"))


@pytest.mark.parametrize(
    "constraint, named, n",
    [
        (C.simplex, rb.Simplex, 3),
        (C.positive_ordered_vector, rb.PositiveOrdered, 3),
        (C.corr_cholesky, rb.CorrCholesky, 3),
        (C.corr_matrix, rb.CorrMatrix, 3),
        (C.lower_cholesky, rb.CovCholesky, 6),
        (C.positive_definite, rb.PositiveDefinite, 6),
    ],
)
def test_constrained_uses_the_named_bijectors_map(constraint, named, n):
    # Where a named bijector has its own map, Constrained over the same constraint uses it: the
    # same values, log-Jacobians and log-densities, also far out where NumPyro's maps fail in
    # float32 (its stick-breaking log-Jacobian is off by 13 nats at u = (20, -20), -inf at 80)
    for scale in (1.0, 20.0, 80.0):
        u = jnp.asarray(np.where(np.arange(n) % 2 == 0, scale, -scale), jnp.float32)
        a, b = rb.Constrained.from_unconstrained(u, constraint), named.from_unconstrained(u)
        np.testing.assert_array_equal(rb.unwrap(a), rb.unwrap(b))
        np.testing.assert_array_equal(rb.log_det_jacobian(a), rb.log_det_jacobian(b))


def test_constrained_simplex_log_density_is_the_simplexs():
    # also batched as independent(simplex) (a Dirichlet(...).to_event(1) support)
    u2 = jnp.array([[20.0, -20.0], [80.0, -80.0]])
    batched = rb.Constrained.from_unconstrained(u2, C.independent(C.simplex, 1))
    np.testing.assert_array_equal(rb.log_det_jacobian(batched), rb.log_det_jacobian(rb.Simplex.from_unconstrained(u2)))
    with pytest.raises(ValueError, match="every entry must be > 0"):
        rb.Constrained(jnp.array([[0.5, 0.5, 0.0]]), C.independent(C.simplex, 1))
    u = jnp.array([20.0, -20.0])
    prior = dist.Dirichlet(jnp.array([1.5, 2.0, 3.0]))
    log_p = lambda w: rb.log_density(lambda m: 0.0, {"w": w})  # noqa: E731
    expected = log_p(rb.Simplex.from_unconstrained(u, prior=prior))
    assert float(log_p(rb.Constrained.from_unconstrained(u, C.simplex, prior=prior))) == float(expected)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_far_values_of_elementwise_maps_are_accepted_and_kept(dtype, request):
    if dtype == "float64":
        request.getfixturevalue("x64")
    # exp(log v) is off by about |log v| / 2 ulps (1e-100 in float64: 50), the rounding of the
    # stored log carried through exp: such values were refused as "not representable", and a
    # float64 user was told to use float64
    exponents = np.linspace(-300, 300, 601) if dtype == "float64" else np.linspace(-37, 38, 301)
    for e in exponents:
        v = np.asarray(10.0**e, dtype)
        per_entry = rb.Constrained(jnp.asarray([v]), C.independent(C.positive, 1))  # elementwise too
        for wrapper in (rb.Positive(v), rb.Bounded(v, lower=0.0), per_entry):
            got = np.ravel(rb.unwrap(wrapper))[0]
            assert got.dtype == np.dtype(dtype)
            ulps = abs(float(got) - float(v)) / (np.finfo(dtype).eps * float(v))
            assert ulps <= 1 + abs(float(np.log(v))), (wrapper, v, got, ulps)
    if dtype == "float64":  # a simplex entry of 1e-100 is still refused, without advice to use float64
        with pytest.raises(ValueError, match="not representable") as info:
            rb.Simplex(jnp.array([0.5, 0.5 - 1e-100, 1e-100], dtype))
        assert "Use float64" not in str(info.value)


def test_constrained_refuses_jax_array_bounds_in_its_static_constraint():
    import jax.numpy as jnp
    import pytest
    from numpyro.distributions import constraints

    import reparam_bridge as rb

    with pytest.raises(TypeError, match="rb.Bounded"):
        rb.Constrained(0.5, constraints.interval(jnp.array(0.0), jnp.array(1.0)))
    assert float(rb.unwrap(rb.Constrained(0.5, constraints.interval(0.0, 1.0)))) == pytest.approx(0.5)


def test_values_near_zero_use_their_natural_scale():
    # an entry's round trip is judged against its natural scale: the bounds of a Bounded value,
    # the vector of an ordered Constrained (as rb.Ordered), not its own (tiny or zero) digits
    from numpyro.distributions import constraints

    for b, want in [
        (rb.Bounded(0.0, lower=-1.0, upper=2.0), 0.0),
        (rb.Bounded(1e-3, lower=-10.0), 1e-3),
        (rb.Constrained(jnp.array([-1.0, 1e-4, 1.0]), constraints.ordered_vector), [-1.0, 1e-4, 1.0]),
    ]:
        np.testing.assert_allclose(rb.unwrap(b), want, atol=64 * np.finfo(np.float32).eps * 10)


def test_stick_breaking_never_gives_an_exact_zero():
    # float32 products underflow at x = (60, 60); a 0 entry made Dirichlet(0.5) +inf
    import numpyro.distributions as dist

    b = rb.Simplex.from_unconstrained(jnp.array([60.0, 60.0]))
    assert bool(jnp.all(rb.unwrap(b) > 0))
    g = jax.grad(lambda u: dist.Dirichlet(jnp.full(3, 0.5)).log_prob(rb.unwrap(rb.Simplex.from_unconstrained(u))))(
        b.unconstrained
    )
    assert bool(jnp.all(jnp.isfinite(g)))
