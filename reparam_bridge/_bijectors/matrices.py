"""Named bijectors of square matrices: correlation and covariance matrices, Cholesky factors."""

from typing import ClassVar

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike
from numpyro.distributions import Distribution
from numpyro.distributions import transforms as T

from .maps import CorrCholeskyTransform, CorrMatrixTransform, LowerCholeskyTransform, positive_definite_transform
from .named import NamedBijector, diagonal_scale, row_norm_scale


class _SquareMatrixBijector(NamedBijector):
    event_ndim: ClassVar[int] = 2

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        super()._check_shape(shape)
        if shape[-1] != shape[-2]:
            raise ValueError(f"{type(self).__name__}: value must be square (..., d, d), got shape {shape}.")

    def _value_scale(self, value: Array) -> Array:  # Cholesky factors override it by row norm
        return diagonal_scale(value)


class _CholeskyFactorBijector(_SquareMatrixBijector):
    def _value_scale(self, value: Array) -> Array:
        return row_norm_scale(value)


class CorrCholesky(_CholeskyFactorBijector):
    """Cholesky factor of a correlation matrix (lower triangular, unit-norm rows); the
    log-Jacobian is with respect to the strictly lower triangle. Use with ``LKJCholesky``.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> L = jnp.array([[1.0, 0.0], [0.6, 0.8]])
        >>> bool(jnp.allclose(rb.unwrap(rb.CorrCholesky(L)), L, atol=1e-6))
        True
    """

    def __init__(self, value: ArrayLike, *, prior: Distribution | None = None):
        self._init_from_value(value, prior)

    def transform(self) -> T.Transform:
        return CorrCholeskyTransform()


class CorrMatrix(_SquareMatrixBijector):
    """A correlation matrix; the log-Jacobian is with respect to its strictly lower triangle.
    Use with ``LKJ``.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> C = jnp.array([[1.0, 0.3], [0.3, 1.0]])
        >>> bool(jnp.allclose(rb.unwrap(rb.CorrMatrix(C)), C, atol=1e-6))
        True
    """

    def __init__(self, value: ArrayLike, *, prior: Distribution | None = None):
        self._init_from_value(value, prior)

    def _check_value(self, value: Array) -> None:
        super()._check_value(value)
        if not bool(jnp.allclose(value, jnp.swapaxes(value, -1, -2))):
            raise ValueError("CorrMatrix: value must be symmetric.")

    def transform(self) -> T.Transform:
        return CorrMatrixTransform()


class CovCholesky(_CholeskyFactorBijector):
    """Lower-triangular Cholesky factor with positive diagonal (NumPyro's
    ``LowerCholeskyTransform``: exp on the diagonal); log-Jacobian w.r.t. the lower triangle.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> L = jnp.array([[2.0, 0.0], [0.5, 1.0]])
        >>> bool(jnp.allclose(rb.unwrap(rb.CovCholesky(L)), L))
        True
    """

    def __init__(self, value: ArrayLike, *, prior: Distribution | None = None):
        self._init_from_value(value, prior)

    def transform(self) -> T.Transform:
        return LowerCholeskyTransform()


class PositiveDefinite(_SquareMatrixBijector):
    """A symmetric positive-definite (covariance) matrix ``L Lᵀ``; log-Jacobian w.r.t. its
    lower triangle. Use with ``Wishart``/``InverseWishart``-style priors.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> S = jnp.array([[2.0, 0.5], [0.5, 1.0]])
        >>> bool(jnp.allclose(rb.unwrap(rb.PositiveDefinite(S)), S, atol=1e-5))
        True
    """

    def __init__(self, value: ArrayLike, *, prior: Distribution | None = None):
        self._init_from_value(value, prior)

    def transform(self) -> T.Transform:
        return positive_definite_transform()
