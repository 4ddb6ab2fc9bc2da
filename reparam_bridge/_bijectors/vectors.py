"""Named bijectors whose value has structure along its last axis: simplex, ordered, zero-sum."""

from typing import ClassVar

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike
from numpyro.distributions import Distribution, constraints
from numpyro.distributions import transforms as T

from .checks import check_open_simplex, round_trip_tolerance
from .maps import CumsumExpTransform, StickBreakingTransform, ZeroSumTransform
from .named import NamedBijector, vector_max_scale


class Simplex(NamedBijector):
    """A probability vector (last axis sums to one), NumPyro's stick-breaking map;
    the log-Jacobian is with respect to all but the last coordinate.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.unwrap(rb.Simplex(jnp.array([0.25, 0.25, 0.5]))).round(4)
        Array([0.25, 0.25, 0.5 ], dtype=float32)
    """

    event_ndim: ClassVar[int] = 1

    def __init__(self, value: ArrayLike, *, prior: Distribution | None = None):
        self._init_from_value(value, prior)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        super()._check_shape(shape)
        if shape[-1] < 2:
            raise ValueError(f"Simplex: the last axis needs at least 2 entries, got shape {shape}.")

    def _inside(self, value: Array) -> Array:  # open, and summing to 1, as _check_value says
        tol = round_trip_tolerance(value.dtype, value.shape[-1])
        return jnp.all(value > 0) & jnp.all(jnp.abs(jnp.sum(value, axis=-1) - 1) <= tol)

    def _check_value(self, value: Array) -> None:
        super()._check_value(value)
        check_open_simplex("Simplex", value)
        # the map normalises by the sum, so a sum off by more than the round-trip tolerance
        # would change the value: refuse it with the fix rather than as "not representable"
        tol = round_trip_tolerance(value.dtype, value.shape[-1])
        sums = np.sum(np.asarray(value, np.float64), axis=-1)
        if np.any(np.abs(sums - 1) > tol):
            raise ValueError(
                f"Simplex: the last axis must sum to 1 (to {tol:.2g}), got sums {sums}. "
                "Normalise it: value / value.sum(-1, keepdims=True)."
            )

    def transform(self) -> T.Transform:
        return StickBreakingTransform()


class Ordered(NamedBijector):
    """A strictly increasing vector: ``y₀ = u₀, yᵢ = yᵢ₋₁ + exp(uᵢ)`` (NumPyro/Stan).

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.unwrap(rb.Ordered(jnp.array([-1.0, 0.0, 2.0])))
        Array([-1.,  0.,  2.], dtype=float32)
    """

    event_ndim: ClassVar[int] = 1

    def __init__(self, value: ArrayLike, *, prior: Distribution | None = None):
        self._init_from_value(value, prior)

    def _value_scale(self, value: Array) -> Array:  # entries are sums: their vector's size
        return vector_max_scale(value)

    def transform(self) -> T.Transform:
        return T.OrderedTransform()


class PositiveOrdered(NamedBijector):
    """A strictly increasing positive vector, ``y = cumsum(exp(u))`` (Stan's map).

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.unwrap(rb.PositiveOrdered(jnp.array([0.5, 1.0, 3.0])))
        Array([0.5, 1. , 3. ], dtype=float32)
    """

    event_ndim: ClassVar[int] = 1

    def __init__(self, value: ArrayLike, *, prior: Distribution | None = None):
        self._init_from_value(value, prior)

    def transform(self) -> T.Transform:
        return CumsumExpTransform()


class ZeroSum(NamedBijector):
    """A vector whose last axis sums to zero (NumPyro's ``ZeroSumTransform``); pairs with
    ``ZeroSumNormal``. The log-Jacobian is w.r.t. the first n-1 coordinates.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.unwrap(rb.ZeroSum(jnp.array([1.0, -3.0, 2.0]))).round(4)
        Array([ 1., -3.,  2.], dtype=float32)
    """

    event_ndim: ClassVar[int] = 1

    def __init__(self, value: ArrayLike, *, prior: Distribution | None = None):
        self._init_from_value(value, prior)

    def _value_scale(self, value: Array) -> Array:  # entries are sums: their vector's size
        return vector_max_scale(value)

    @staticmethod
    def _sum_tolerance(value: Array) -> Array:
        # the projection spreads a sum s over n entries (|s|/sqrt(n) each), hence the sqrt(n)
        n = value.shape[-1]
        return np.sqrt(n) * round_trip_tolerance(value.dtype, n) * jnp.max(jnp.abs(value), axis=-1)

    def _inside(self, value: Array) -> Array:  # summing to 0, as _check_value says
        return jnp.all(jnp.abs(jnp.sum(value, axis=-1)) <= self._sum_tolerance(value))

    def _check_value(self, value: Array) -> None:
        super()._check_value(value)
        v = np.asarray(value, np.float64)
        tol = np.asarray(self._sum_tolerance(value), np.float64)  # (the value's own dtype's rounding)
        sums = np.sum(v, axis=-1)
        if np.any(np.abs(sums) > tol):
            raise ValueError(
                f"ZeroSum: the last axis must sum to 0 (to {np.max(tol):.2g}), got sums {sums}. "
                "Centre it: value - value.mean(-1, keepdims=True)."
            )

    def support(self) -> constraints.Constraint:
        return constraints.zero_sum(1)

    def transform(self) -> T.Transform:
        return ZeroSumTransform(1)
