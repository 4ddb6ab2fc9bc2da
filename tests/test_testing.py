"""rb.testing.check_bijector: every named bijector passes it, and it catches broken ones.

Every named bijector gets the log-Jacobian, round-trip and edge checks on its own, and SBC
(NUTS through the bijector, prior-only and with a likelihood) in one joint run over a tree of
all of them with independent priors whose densities do not use the maps under test (Dirichlet,
LKJ, Wishart, order statistics, ...): one compilation instead of sixteen.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.distributions import constraints
from numpyro.distributions import transforms as T

import reparam_bridge as rb
from reparam_bridge.testing import OrderStatistics, ProductPrior, check_bijector


class ZeroSumGaussian:
    """Isotropic Gaussian on the zero-sum hyperplane: sampled by NumPyro's ZeroSumNormal, its
    log-density written directly as Σ log N(yᵢ) (no transform involved)."""

    def __init__(self, n):
        self.d = dist.ZeroSumNormal(1.0, event_shape=(n,))

    def sample(self, key):
        return self.d.sample(key)

    def log_prob(self, y):
        return dist.Normal().log_prob(y).sum()


def shifted(base, loc, scale):
    return dist.TransformedDistribution(base, T.AffineTransform(loc, scale))


I2 = jnp.eye(2)
# name: (factory, value, prior)
NAMED = {
    "Real": (rb.Real, 0.5, dist.Normal(1.0, 2.0)),
    "Positive_exp": (rb.Positive, 1.0, dist.Gamma(3.0, 2.0)),
    "Positive_softplus": (lambda v: rb.Positive(v, transform="softplus"), 1.0, dist.LogNormal(0.0, 0.5)),
    "Bounded_lower": (lambda v: rb.Bounded(v, lower=1.0), 2.0, shifted(dist.Gamma(2.0, 1.0), 1.0, 1.0)),
    "Bounded_upper": (lambda v: rb.Bounded(v, upper=2.0), 1.0, shifted(dist.Gamma(2.0, 1.0), 2.0, -1.0)),
    "Bounded_both": (lambda v: rb.Bounded(v, lower=-1.0, upper=3.0), 0.5, shifted(dist.Beta(2.0, 3.0), -1.0, 4.0)),
    "Simplex": (rb.Simplex, jnp.array([0.2, 0.3, 0.5]), dist.Dirichlet(jnp.array([1.0, 2.0, 3.0]))),
    "Ordered": (rb.Ordered, jnp.array([-1.0, 0.0, 1.0]), OrderStatistics(dist.Normal(), 3)),
    "PositiveOrdered": (rb.PositiveOrdered, jnp.array([0.5, 1.0, 2.0]), OrderStatistics(dist.Gamma(2.0, 1.0), 3)),
    "CorrCholesky": (
        rb.CorrCholesky,
        jnp.linalg.cholesky(jnp.array([[1.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 1.0]])),
        dist.LKJCholesky(3, 2.0),
    ),
    "CorrMatrix": (rb.CorrMatrix, jnp.array([[1.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 1.0]]), dist.LKJ(3, 2.0)),
    "CovCholesky": (rb.CovCholesky, jnp.array([[1.0, 0.0], [0.5, 2.0]]), dist.WishartCholesky(4.0, scale_matrix=I2)),
    "PositiveDefinite": (rb.PositiveDefinite, jnp.array([[2.0, 0.5], [0.5, 1.0]]), dist.Wishart(4.0, scale_matrix=I2)),
    "ZeroSum": (rb.ZeroSum, jnp.array([1.0, -0.5, -0.5]), ZeroSumGaussian(3)),
    "Constrained": (lambda v: rb.Constrained(v, constraints.unit_interval), 0.4, dist.Beta(2.0, 2.0)),
    "LocScale": (lambda v: rb.LocScale(v, loc=1.0, scale=2.0, centered=0.0), 0.5, dist.Normal(1.0, 2.0)),
}


@pytest.mark.parametrize("name", sorted(NAMED))
def test_named_bijector_passes_deterministic_checks(name):
    factory, value, _ = NAMED[name]
    report = check_bijector(factory, jnp.asarray(value), sbc=False)
    assert report.ok, str(report)
    status = {f.check: f.status for f in report.findings}
    assert status == {
        "log-Jacobian": "passed",
        "round trip": "passed",
        "edges float32": "passed",
        "edges float64": "passed",
        "SBC": "skipped",
    }, str(report)


@pytest.mark.slow
def test_every_named_bijector_is_calibrated_under_nuts():
    tree = {name: factory(jnp.asarray(value)) for name, (factory, value, _) in NAMED.items()}
    prior = ProductPrior({name: p for name, (_, _, p) in NAMED.items()})
    report = check_bijector(tree, prior=prior, key=jax.random.key(3))
    assert report.ok, str(report)
    # every bijector's coordinates were tested, prior-only and with a likelihood
    tested = {q.split("'")[1] for _, q in report.sbc_p if q.startswith("[")}
    assert tested == set(NAMED)
    assert {s for s, _ in report.sbc_p} == {"prior", "with likelihood"}


# --------------------------------------------------------------------------------------
# broken bijectors: check_bijector must say so


class ScaledExp(rb.Bijector):
    """``x = 2·exp(raw)``; ``mistake`` selects a deliberate error in the log-Jacobian."""

    raw: jax.Array
    mistake: str = "none"

    def __init__(self, value, mistake="none"):
        self.raw = jnp.log(jnp.asarray(value) / 2.0)
        self.mistake = mistake

    def unwrap(self):
        return 2.0 * jnp.exp(self.raw)

    def log_det_jacobian(self):
        right = jnp.sum(jnp.log(2.0) + self.raw)
        return {"none": right, "sign": -right, "missing": jnp.sum(self.raw)}[self.mistake]


def _status(report):
    return {f.check: f.status for f in report.findings}


def test_correct_user_bijector_passes():
    report = check_bijector(ScaledExp, jnp.array([0.5, 3.0]), sbc=False)
    assert report.ok, str(report)


@pytest.mark.parametrize("mistake", ["sign", "missing"])
def test_catches_a_wrong_log_jacobian(mistake):
    report = check_bijector(lambda v: ScaledExp(v, mistake), jnp.array([0.5, 3.0]), sbc=False)
    assert not report.ok
    assert _status(report)["log-Jacobian"] == "failed"
    text = str(report)
    assert "jacfwd+slogdet" in text and "free arrays" in text  # says where
    if mistake == "sign":
        assert "sign-flipped" in text
    with pytest.raises(rb.testing.BijectorCheckError, match="log-Jacobian"):
        check_bijector(lambda v: ScaledExp(v, mistake), jnp.array([0.5, 3.0]), sbc=False, raise_on_failure=True)


@pytest.mark.slow
def test_sbc_alone_catches_a_wrong_log_jacobian():
    # a log-Jacobian off by the constant-free term raw (x = 2 exp(raw), Jacobian 2 exp(raw), we
    # drop exp(raw)): NUTS then samples prior × 1/x, and the ranks show it
    report = check_bijector(lambda v: ScaledExp(v, "sign"), jnp.array([1.0]), prior=dist.Gamma(3.0, 1.0).expand([1]))
    assert _status(report)["SBC"] == "failed", str(report)
    assert "not uniform" in str(report)


class BadInverse(ScaledExp):
    """Right map and log-Jacobian, but the constructor forgets the factor 2."""

    def __init__(self, value):
        self.raw = jnp.log(jnp.asarray(value))
        self.mistake = "none"


def test_catches_a_broken_round_trip():
    report = check_bijector(BadInverse, jnp.array([0.5, 3.0]), sbc=False)
    assert _status(report)["round trip"] == "failed"
    assert _status(report)["log-Jacobian"] == "passed"
    assert "does not invert unwrap()" in str(report)


class Overflowing(rb.Bijector):
    """A sigmoid written naively: 1/(1+exp(-raw)), log-Jacobian log(s) + log(1-s) (−inf at ±edge in float32)."""

    raw: jax.Array

    def unwrap(self):
        return 1.0 / (1.0 + jnp.exp(-self.raw))

    def log_det_jacobian(self):
        s = self.unwrap()
        return jnp.sum(jnp.log(s) + jnp.log1p(-s))


def test_catches_non_finite_edges():
    report = check_bijector(Overflowing(jnp.zeros(2)), sbc=False)
    assert _status(report)["log-Jacobian"] == "passed"
    assert _status(report)["edges float32"] == "failed"
    assert "log space" in str(report)


def test_wrong_coordinate_count_is_explained():
    report = check_bijector(rb.Simplex(jnp.array([0.2, 0.8])), coords=lambda v: v, sbc=False)
    assert "pass coords=" in str(report)


def test_factory_needs_a_value():
    with pytest.raises(TypeError, match="value="):
        check_bijector(rb.Simplex)


def test_ecdf_test_rejects_non_uniform_ranks():
    from reparam_bridge._sbc import ecdf_uniformity

    rng = np.random.default_rng(0)
    p_uniform, _ = ecdf_uniformity(rng.integers(0, 64, 128), 64)
    p_high, shape = ecdf_uniformity(np.minimum(rng.integers(0, 64, 128) + 20, 63), 64)
    assert p_uniform > 0.01 and p_high < 1e-3
    assert "rank high" in shape
