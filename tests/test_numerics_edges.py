"""Every named bijector at unconstrained ±100: finite value, log-Jacobian and gradient in
float64; never a NaN in float32 (where float32 overflows, inf is acceptable)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reparam_bridge as rb

SPECS = {
    "Real": (rb.Real, 3, {}),
    "Positive": (rb.Positive, 3, {}),
    "Positive-softplus": (rb.Positive, 3, {"transform": "softplus"}),
    "Bounded-lower": (rb.Bounded, 3, {"lower": 1.0}),
    "Bounded-upper": (rb.Bounded, 3, {"upper": 1.0}),
    "Bounded-interval": (rb.Bounded, 3, {"lower": 0.0, "upper": 2.0}),
    "Simplex": (rb.Simplex, 3, {}),
    "Ordered": (rb.Ordered, 3, {}),
    "PositiveOrdered": (rb.PositiveOrdered, 3, {}),
    "CorrCholesky": (rb.CorrCholesky, 6, {}),
    "CorrMatrix": (rb.CorrMatrix, 6, {}),
    "CovCholesky": (rb.CovCholesky, 10, {}),
    "PositiveDefinite": (rb.PositiveDefinite, 10, {}),
    "ZeroSum": (rb.ZeroSum, 3, {}),
}
EDGES = {
    "+100": lambda n: np.full(n, 100.0),
    "-100": lambda n: np.full(n, -100.0),
    "alternating": lambda n: np.where(np.arange(n) % 2 == 0, 100.0, -100.0),
}


def _evaluate(cls, u, config):
    def parts(u):
        b = cls.from_unconstrained(u, **config)
        return rb.unwrap(b), rb.log_det_jacobian(b)

    value, logdet = parts(u)
    grad_logdet = jax.grad(lambda u: parts(u)[1])(u)
    grad_value = jax.grad(lambda u: jnp.sum(parts(u)[0]))(u)
    return [np.asarray(x) for x in (value, logdet, grad_logdet, grad_value)]


@pytest.mark.parametrize("edge", list(EDGES))
@pytest.mark.parametrize("name", list(SPECS))
def test_float64_is_finite_at_plus_minus_100(name, edge, x64):
    cls, n, config = SPECS[name]
    u = jnp.asarray(EDGES[edge](n), jnp.float64)
    for what, x in zip(
        ("value", "log-Jacobian", "gradient of the log-Jacobian", "gradient of the value"), _evaluate(cls, u, config)
    ):
        assert np.all(np.isfinite(x)), (name, edge, what, x)


@pytest.mark.parametrize("edge", list(EDGES))
@pytest.mark.parametrize("name", list(SPECS))
def test_float32_never_nan_at_plus_minus_100(name, edge):
    cls, n, config = SPECS[name]
    u = jnp.asarray(EDGES[edge](n), jnp.float32)
    for what, x in zip(
        ("value", "log-Jacobian", "gradient of the log-Jacobian", "gradient of the value"), _evaluate(cls, u, config)
    ):
        assert not np.any(np.isnan(x)), (name, edge, what, x)
