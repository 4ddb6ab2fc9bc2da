"""Bijectors: unwrappables that store *unconstrained* arrays and know their log-Jacobian.

The named bijectors are thin layers over NumPyro's transforms (``biject_to``). Three maps are
our own, each for a stated reason: ``PositiveOrdered`` (Stan's cumulative sum of exponentials
samples better than NumPyro's exp∘ordered), ``CorrCholesky``/``CorrMatrix`` (NumPyro's
``CorrCholeskyTransform`` computes ``sqrt(1 - cumsum(y²))``, which is exactly 0 in float32 at
|x| ≳ 10 and so gives ``-inf`` log-Jacobians and NaN gradients; ours works in log space).
"""

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar, Literal, Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import softplus
from jaxtyping import Array, ArrayLike, Float, PyTree
from numpyro.distributions import Distribution, constraints
from numpyro.distributions import transforms as T

from . import _checks
from ._paths import path_to_str
from ._unwrappable import (
    NonTrainable,
    Ref,
    Unwrappable,
    _unwrap_plain,
    RefResolver,
    contains_refs,
)


class Bijector(Unwrappable[Any]):
    """Abstract bijector: an :class:`Unwrappable` whose free arrays are *unconstrained*.

    Implementer's checklist — a subclass

    1. stores its unconstrained arrays as ordinary fields (anything else that must not be
       sampled goes in ``eqx.field(static=True)``, a :class:`NonTrainable`, or is itself a
       wrapped parameter / :class:`Ref`);
    2. implements ``unwrap()``: the constrained value (an array or any PyTree);
    3. implements ``log_det_jacobian()``: ``log|det ∂(independent coordinates of unwrap())/∂(free arrays)|``
       as a scalar, assuming nested wrappers are already unwrapped;
    4. optionally has a ``prior`` field: a NumPyro distribution over the constrained value.

    Example — a value bounded above by another parameter (``0 < b < a``):
        >>> import jax, jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> class BelowA(rb.Bijector):
        ...     raw: jax.Array
        ...     a: rb.Positive
        ...     def unwrap(self):
        ...         return {"a": self.a, "b": self.a * jax.nn.sigmoid(self.raw)}
        ...     def log_det_jacobian(self):  # d b / d raw; a's own Jacobian is counted at a
        ...         return jnp.sum(jnp.log(self.a) + jax.nn.log_sigmoid(self.raw)
        ...                        + jax.nn.log_sigmoid(-self.raw))
        >>> tree = BelowA(jnp.array(0.0), rb.Positive(4.0))
        >>> float(rb.unwrap(tree)["b"]), round(float(rb.log_det_jacobian(tree)), 4)  # log 4 - 2 log 2 + log 4
        (2.0, 1.3863)
    """

    @abstractmethod
    def log_det_jacobian(self) -> Float[Array, ""]:
        """Scalar log-Jacobian of ``unwrap()`` with respect to this node's free arrays."""


def _is_wrapped(x: Any) -> bool:
    return isinstance(x, Unwrappable)


def walk_bijectors(tree: PyTree) -> Iterator[tuple[str, Bijector, Bijector]]:
    """``(path, bijector, inner)`` for every bijector outside :class:`NonTrainable`, nested
    ones included, where ``inner`` is the bijector with its sub-nodes unwrapped and its
    :class:`Ref` s resolved, ready for ``inner.unwrap()`` / ``inner.log_det_jacobian()``."""
    resolver = RefResolver(tree) if contains_refs(tree) else None

    def _inner(node):
        if resolver is not None and contains_refs(node):
            node = resolver.substitute(node)
        return _unwrap_plain(node, include_self=False)

    def _visit(node, prefix):
        if isinstance(node, NonTrainable):
            return
        children = jax.tree_util.tree_flatten_with_path(
            node, is_leaf=lambda x: _is_wrapped(x) and x is not node
        )[0]
        for path, child in children:
            if _is_wrapped(child) and child is not node:
                yield from _visit(child, prefix + tuple(path))
        if isinstance(node, Bijector):
            yield path_to_str(prefix), node, _inner(node)

    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_wrapped)[0]:
        if _is_wrapped(leaf):
            yield from _visit(leaf, tuple(path))


def log_det_jacobian(tree: PyTree) -> Float[Array, ""]:
    """Sum of ``log_det_jacobian()`` over every bijector in ``tree`` (nested ones at their
    own unwrapped inputs; :class:`NonTrainable` contents count for nothing).

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> tree = {"s": rb.Positive(jnp.e), "x": jnp.zeros(2)}
        >>> rb.log_det_jacobian(tree)  # d exp(u)/du = exp(u) = e
        Array(1., dtype=float32)
    """
    total = jnp.zeros(())
    for _, _, inner in walk_bijectors(tree):
        total = total + jnp.sum(inner.log_det_jacobian())
    return total


# --------------------------------------------------------------------------------------
# helpers


def _build(cls, **fields):
    """Create a Module instance without running ``__init__`` (no validation): the path
    ``from_unconstrained`` uses, safe under ``jit`` and ``vmap``."""
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


def _as_float_array(value: ArrayLike) -> Array:
    arr = jnp.asarray(value)
    dtype = arr.dtype if jnp.issubdtype(arr.dtype, jnp.inexact) else jnp.result_type(float)
    return jnp.asarray(value, dtype=dtype)  # an explicit dtype drops JAX's weak type


def _is_traced(*xs: Any) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(xs))


def frozen_or_live(name: str, x: Any, *, owner: str = "Bounded", required: bool = False) -> Any:
    """A configuration field: constants are frozen in a :class:`NonTrainable` (never free,
    checked finite); wrapped parameters and :class:`Ref` s stay live."""
    if x is None:
        if required:
            raise TypeError(f"{owner}: {name} is required (a constant, a wrapped parameter or rb.Ref).")
        return None
    if isinstance(x, (Unwrappable, Ref)):
        return x
    arr = _as_float_array(x)
    if not _is_traced(arr) and not bool(jnp.all(jnp.isfinite(arr))):
        hint = "" if required else " (use None for no bound)"
        raise ValueError(f"{owner}: {name} must be finite{hint}, got {x}.")
    return NonTrainable(arr)


def _constraint_key(c: constraints.Constraint) -> tuple[str, tuple]:
    """A comparable description of a NumPyro constraint: family and (concrete) bounds."""
    while isinstance(c, constraints._IndependentConstraint):
        c = c.base_constraint
    if isinstance(c, constraints._Interval):  # interval, unit_interval, open_interval
        return "interval", (c.lower_bound, c.upper_bound)
    if isinstance(c, constraints._GreaterThan):  # positive is greater_than(0)
        return "greater_than", (c.lower_bound,)
    if isinstance(c, constraints._LessThan):
        return "less_than", (c.upper_bound,)
    if type(c).__name__ in ("_Real", "_RealVector", "_RealMatrix"):
        return "real", ()
    return type(c).__name__, ()


def _same_support(a: constraints.Constraint, b: constraints.Constraint) -> bool:
    (fa, ba), (fb, bb) = _constraint_key(a), _constraint_key(b)
    if fa != fb:
        return False
    elementwise = ("real", "greater_than", "less_than", "interval")
    if fa not in elementwise and a.event_dim != b.event_dim:  # e.g. zero_sum over 2 axes vs 1
        return False
    for x, y in zip(ba, bb):
        if _is_traced(x, y):
            continue
        if not np.allclose(np.asarray(x), np.asarray(y)):
            return False
    return True


def _support_text(c: constraints.Constraint) -> str:
    family, bounds = _constraint_key(c)
    return family + (str(tuple(np.asarray(b).tolist() for b in bounds)) if bounds else "")


class _NamedBijector(Bijector):
    """Shared machinery of the named bijectors: one free array ``unconstrained``, a NumPyro
    transform built from the (unwrapped) configuration fields, an optional ``prior``."""

    unconstrained: Array
    prior: Distribution | None

    event_ndim: ClassVar[int] = 0

    @abstractmethod
    def transform(self) -> T.Transform:
        """The NumPyro transform from ``unconstrained`` to the constrained value."""

    def support(self) -> constraints.Constraint:
        return self.transform().codomain

    def unwrap(self) -> Array:
        return self.transform()(self.unconstrained)

    def log_det_jacobian(self) -> Array:
        t = self.transform()
        return jnp.sum(t.log_abs_det_jacobian(self.unconstrained, t(self.unconstrained)))

    # -- construction -------------------------------------------------------------------

    def _init_from_value(self, value: ArrayLike, prior: Distribution | None, **config: Any) -> None:
        """Set the configuration fields, validate ``value`` (skipped when traced: under
        ``jit``/``vmap`` nothing concrete can be checked) and store its unconstrained image."""
        name = type(self).__name__
        _checks.check_value_type(name, "value", value)
        value = _as_float_array(value)
        for key, val in {**config, "prior": prior, "unconstrained": value}.items():
            object.__setattr__(self, key, val)
        if contains_refs(self):
            raise TypeError(
                f"{name}: a configuration given as rb.Ref is only known inside the whole tree; "
                f"build this one with {name}.from_unconstrained(...)."
            )
        inner = _unwrap_plain(self, include_self=False)  # wrapped bounds -> their values
        if _is_traced(value, inner):
            object.__setattr__(self, "unconstrained", inner.transform().inv(value))
            return
        self._check_value(value)
        for key, val in config.items():  # constant bounds must not grow the parameter
            if isinstance(val, NonTrainable) and eqx.is_array(val.tree):
                _checks.check_bound_shape(name, key, val.tree, value.shape)
        support = inner.support()
        if not bool(jnp.all(support(value))):
            raise ValueError(
                f"{name}: value lies outside the support {_support_text(support)}: {np.asarray(value)}."
            )
        unconstrained = inner.transform().inv(value)
        if not bool(jnp.all(jnp.isfinite(unconstrained))):
            raise ValueError(
                f"{name}: value is on the boundary of the support {_support_text(support)}, "
                f"where the unconstrained image is infinite: {np.asarray(value)}. Move it inside."
            )
        _checks.check_round_trip(name, value, inner.transform()(unconstrained), coupled=self.event_ndim > 0)
        object.__setattr__(self, "unconstrained", unconstrained)
        if prior is not None:
            _check_prior(name, prior, support, value.shape)

    def _check_value(self, value: Array) -> None:
        name = type(self).__name__
        if value.ndim < self.event_ndim:
            raise ValueError(
                f"{name}: value needs at least {self.event_ndim} dimension(s), got shape {value.shape}."
            )
        if not bool(jnp.all(jnp.isfinite(value))):
            raise ValueError(f"{name}: value must be finite, got {np.asarray(value)}.")

    @classmethod
    def from_unconstrained(cls, unconstrained: ArrayLike, *, prior: Distribution | None = None, **config: Any) -> Self:
        """Build from unconstrained values, without validation (``jit``/``vmap``-safe).

        Takes the same keyword configuration as the constructor.
        """
        return _build(cls, unconstrained=jnp.asarray(unconstrained), prior=prior, **cls._config(**config))

    @classmethod
    def _config(cls, **config: Any) -> dict[str, Any]:
        return config


def _check_prior(
    name: str, prior: Distribution, support: constraints.Constraint, value_shape: tuple | None = None
) -> None:
    if not isinstance(prior, Distribution):
        raise TypeError(f"{name}: prior must be a numpyro Distribution, got {type(prior).__name__}.")
    if not _same_support(prior.support, support):
        raise ValueError(
            f"{name}: the prior's support {_support_text(prior.support)} does not match the "
            f"bijector's support {_support_text(support)}, so it would put mass where the value "
            "cannot go (or none where it can). Use a prior on exactly this support (e.g. "
            "HalfNormal/LogNormal/Exponential for a positive value, Beta or a TruncatedNormal with "
            "these bounds for an interval), or write the term in log_joint."
        )
    if value_shape is not None:
        shape = tuple(prior.batch_shape) + tuple(prior.event_shape)
        try:
            grown = jnp.broadcast_shapes(shape, tuple(value_shape)) != tuple(value_shape)
        except ValueError:
            grown = True
        if grown:
            raise ValueError(
                f"{name}: the prior has shape {shape} but the value has shape {tuple(value_shape)}; "
                "its log-density would be counted more than once. Give the prior the value's shape "
                "(or one that broadcasts to it)."
            )


# --------------------------------------------------------------------------------------
# named bijectors


class Real(_NamedBijector):
    """An unconstrained real array (identity map), optionally with a prior.

    Example:
        >>> import numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> mu = rb.Real(0.5, prior=dist.Normal(0.0, 5.0))
        >>> rb.unwrap(mu), rb.log_det_jacobian(mu)
        (Array(0.5, dtype=float32), Array(0., dtype=float32))
    """

    def __init__(self, value: ArrayLike, *, prior: Distribution | None = None):
        self._init_from_value(value, prior)

    def transform(self) -> T.Transform:
        return T.IdentityTransform()

    def support(self) -> constraints.Constraint:
        return constraints.real


class Positive(_NamedBijector):
    """A positive array, ``exp(u)`` (default) or ``softplus(u)``.

    Example:
        >>> import reparam_bridge as rb
        >>> s = rb.Positive(2.0, transform="softplus")
        >>> round(float(rb.unwrap(s)), 5)
        2.0
    """

    kind: Literal["exp", "softplus"] = eqx.field(static=True)

    def __init__(
        self,
        value: ArrayLike,
        *,
        transform: Literal["exp", "softplus"] = "exp",
        prior: Distribution | None = None,
    ):
        self._init_from_value(value, prior, **self._config(transform=transform))

    @classmethod
    def _config(cls, transform: str = "exp") -> dict[str, Any]:
        if transform not in ("exp", "softplus"):
            raise ValueError(f"Positive: transform must be 'exp' or 'softplus', got {transform!r}.")
        return {"kind": transform}

    def transform(self) -> T.Transform:
        return T.ExpTransform() if self.kind == "exp" else T.SoftplusTransform()


class Bounded(_NamedBijector):
    """A value with a lower bound, an upper bound, or both.

    ``lower + exp(u)``, ``upper - exp(u)`` or ``lower + (upper - lower)·sigmoid(u)``. Constant
    bounds may be arrays (broadcast against the value) and are never free parameters; a bound
    may also be a wrapped parameter or an :class:`Ref` to one.

    Example:
        >>> import jax.numpy as jnp
        >>> import numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> p = rb.Bounded(0.25, lower=0.0, upper=1.0, prior=dist.Beta(2.0, 2.0))
        >>> rb.unwrap(p)
        Array(0.25, dtype=float32)
        >>> params, static = rb.partition(rb.Bounded(jnp.ones(3), lower=jnp.zeros(3)))
        >>> len(jax.tree_util.tree_leaves(params))
        1
    """

    lower: Any
    upper: Any

    def __init__(
        self,
        value: ArrayLike,
        *,
        lower: Any = None,
        upper: Any = None,
        prior: Distribution | None = None,
    ):
        self._init_from_value(value, prior, **self._config(lower=lower, upper=upper))

    @classmethod
    def _config(cls, lower: Any = None, upper: Any = None) -> dict[str, Any]:
        if lower is None and upper is None:
            raise ValueError("Bounded: give lower, upper or both (for no bound use rb.Real).")
        lower, upper = frozen_or_live("lower", lower), frozen_or_live("upper", upper)
        lo = lower.tree if isinstance(lower, NonTrainable) else None
        hi = upper.tree if isinstance(upper, NonTrainable) else None
        if lo is not None and hi is not None and not _is_traced(lo, hi) and not bool(jnp.all(lo < hi)):
            raise ValueError(f"Bounded: need lower < upper, got lower={lo}, upper={hi}.")
        return {"lower": lower, "upper": upper}

    def support(self) -> constraints.Constraint:
        if self.upper is None:
            return constraints.greater_than(self.lower)
        if self.lower is None:
            return constraints.less_than(self.upper)
        return constraints.interval(self.lower, self.upper)

    def transform(self) -> T.Transform:
        return T.biject_to(self.support())


def _check_open_simplex(name: str, value: Array) -> None:
    # NumPyro's simplex support is closed and its inverse stick-breaking clips, so a 0 in the
    # last entry would otherwise pass as an unconstrained value of about ±87.
    if not bool(jnp.all(value > 0)):
        raise ValueError(
            f"{name}: every entry must be > 0; a 0 lies on the boundary of the simplex, where the "
            f"unconstrained image is infinite: {np.asarray(value)}. Move it inside."
        )


class Simplex(_NamedBijector):
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

    def _check_value(self, value: Array) -> None:
        super()._check_value(value)
        if value.shape[-1] < 2:
            raise ValueError(f"Simplex: the last axis needs at least 2 entries, got shape {value.shape}.")
        _check_open_simplex("Simplex", value)

    def transform(self) -> T.Transform:
        return T.StickBreakingTransform()


class Ordered(_NamedBijector):
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

    def transform(self) -> T.Transform:
        return T.OrderedTransform()


class _CumsumExpTransform(T.Transform):
    # Stan's positive_ordered map: y = cumsum(exp(u)). Written here because NumPyro's
    # biject_to(positive_ordered_vector) is exp∘ordered, y = exp(u₀ + Σ exp(uᵢ)), whose
    # curvature couples every coordinate and samples an iid-Exponential prior worse.
    domain = constraints.real_vector
    codomain = constraints.positive_ordered_vector
    sign = 1

    def __call__(self, x):
        return jnp.cumsum(jnp.exp(x), axis=-1)

    def _inverse(self, y):
        return jnp.log(jnp.diff(y, axis=-1, prepend=jnp.zeros_like(y[..., :1])))

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        return jnp.sum(x, axis=-1)


class PositiveOrdered(_NamedBijector):
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
        return _CumsumExpTransform()


def _log1m_tanh_sq(x: Array) -> Array:
    """log(1 - tanh(x)²) = 2·(log 2 - |x| - softplus(-2|x|)), finite for every finite x."""
    ax = jnp.abs(x)
    return 2.0 * (jnp.log(2.0) - ax - softplus(-2.0 * ax))


def _tril_dim(m: int) -> int:
    d = int(round((1 + np.sqrt(1 + 8 * m)) / 2))
    if d * (d - 1) // 2 != m:
        raise ValueError(f"{m} is not a triangular number d(d-1)/2.")
    return d


def _strict_tril(v: Array, d: int) -> Array:
    """Fill the strictly lower triangle row by row (NumPyro's order), keeping ``v``'s dtype."""
    rows, cols = np.tril_indices(d, -1)
    return jnp.zeros(v.shape[:-1] + (d, d), dtype=v.dtype).at[..., rows, cols].set(v)


def _corr_cholesky_parts(x: Array) -> tuple[Array, Array, Array]:
    """Cholesky factor ``L`` of a correlation matrix from ``x`` (NumPyro's order: tanh, then
    signed stick-breaking by rows), plus ``log1m z²`` and the exclusive row cumsum of it, all
    computed in log space so nothing underflows to 0."""
    d = _tril_dim(x.shape[-1])
    z = _strict_tril(jnp.tanh(x), d)
    log1mz2 = _strict_tril(_log1m_tanh_sq(x), d)
    log_rem = jnp.cumsum(log1mz2, axis=-1) - log1mz2  # Σ_{k<j} log(1 - z_ik²)
    scale = jnp.exp(0.5 * log_rem)
    L = z * scale + jnp.eye(d, dtype=x.dtype) * scale
    return L, log1mz2, log_rem


class _CorrCholeskyTransform(T.Transform):
    domain = constraints.real_vector
    codomain = constraints.corr_cholesky

    def __call__(self, x):
        return _corr_cholesky_parts(x)[0]

    def _inverse(self, y):
        return T.CorrCholeskyTransform().inv(y)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        # ∂L_ij/∂x_ij = (1 - z_ij²)·sqrt(Π_{k<j}(1 - z_ik²)); the Jacobian is triangular.
        _, log1mz2, log_rem = _corr_cholesky_parts(x)
        d = log1mz2.shape[-1]
        strict = jnp.tril(jnp.ones((d, d), dtype=bool), -1)
        return jnp.sum(jnp.where(strict, log1mz2 + 0.5 * log_rem, 0.0), axis=(-1, -2))


class _CorrMatrixTransform(T.Transform):
    domain = constraints.real_vector
    codomain = constraints.corr_matrix

    def __call__(self, x):
        L = _corr_cholesky_parts(x)[0]
        return L @ jnp.swapaxes(L, -1, -2)

    def _inverse(self, y):
        return T.CorrCholeskyTransform().inv(jnp.linalg.cholesky(y))

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        # L ↦ C = L Lᵀ on the strict lower triangles has |det| = Π_i L_ii^(d-1-i).
        _, _, log_rem = _corr_cholesky_parts(x)
        d = log_rem.shape[-1]
        log_diag = 0.5 * jnp.diagonal(log_rem, axis1=-2, axis2=-1)
        power = jnp.arange(d - 1, -1, -1, dtype=x.dtype)
        return _CorrCholeskyTransform().log_abs_det_jacobian(x, None) + jnp.sum(power * log_diag, axis=-1)


class _SquareMatrixBijector(_NamedBijector):
    event_ndim: ClassVar[int] = 2

    def _check_value(self, value: Array) -> None:
        super()._check_value(value)
        if value.shape[-1] != value.shape[-2]:
            raise ValueError(f"{type(self).__name__}: value must be square (..., d, d), got shape {value.shape}.")


class CorrCholesky(_SquareMatrixBijector):
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
        return _CorrCholeskyTransform()


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
        return _CorrMatrixTransform()


class _LowerCholeskyTransform(T.LowerCholeskyTransform):
    # NumPyro's map (strict lower triangle, then exp of the diagonal), re-implemented only so
    # that float32 inputs work when jax_enable_x64 is on (NumPyro's vec_to_tril_matrix mixes
    # dtypes there and raises).
    def __call__(self, x):
        n = _tril_dim(x.shape[-1]) - 1  # x has n(n+1)/2 = (n+1)n/2 entries
        return _strict_tril(x[..., :-n], n) + jnp.exp(x[..., -n:])[..., None] * jnp.eye(n, dtype=x.dtype)


class CovCholesky(_SquareMatrixBijector):
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
        return _LowerCholeskyTransform()


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
        return T.ComposeTransform([_LowerCholeskyTransform(), T.CholeskyTransform().inv])


class _ZeroSumTransform(T.ZeroSumTransform):
    # NumPyro's map is an isometry onto the zero-sum hyperplane (log-det 0 w.r.t. its surface
    # measure). Our convention measures the first n-1 coordinates, which adds log(1/√n); over
    # k zero-sum axes (sizes nᵢ = mᵢ + 1) the map is a Kronecker product, so each axis adds
    # log(1/√nᵢ) once per free entry of the other axes.
    def log_abs_det_jacobian(self, x, y, intermediates=None):
        m = x.shape[x.ndim - self.transform_ndims:]
        size = int(np.prod(m))
        total = sum(-0.5 * np.log(mi + 1) * (size // mi) for mi in m)
        return jnp.full(x.shape[: x.ndim - self.transform_ndims], total, dtype=x.dtype)


class ZeroSum(_NamedBijector):
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

    def _check_value(self, value: Array) -> None:
        super()._check_value(value)
        if not bool(jnp.allclose(value.sum(-1), 0.0, atol=1e-5 * (1 + jnp.abs(value).max()))):
            raise ValueError(f"ZeroSum: the last axis must sum to 0, got sums {np.asarray(value.sum(-1))}.")

    def support(self) -> constraints.Constraint:
        return constraints.zero_sum(1)

    def transform(self) -> T.Transform:
        return _ZeroSumTransform(1)


class Constrained(_NamedBijector):
    """Any NumPyro constraint that ``biject_to`` knows, with NumPyro's transform.

    Example:
        >>> from numpyro.distributions import constraints
        >>> import reparam_bridge as rb
        >>> x = rb.Constrained(0.5, constraints.unit_interval)
        >>> rb.unwrap(x)
        Array(0.5, dtype=float32)
    """

    constraint: constraints.Constraint = eqx.field(static=True)

    def __init__(self, value: ArrayLike, constraint: constraints.Constraint, *, prior: Distribution | None = None):
        self._init_from_value(value, prior, **self._config(constraint=constraint))

    @classmethod
    def _config(cls, constraint: constraints.Constraint) -> dict[str, Any]:
        if not isinstance(constraint, constraints.Constraint):
            raise TypeError(f"Constrained: expected a numpyro constraint, got {type(constraint).__name__}.")
        try:
            T.biject_to(constraint)
        except NotImplementedError:
            raise ValueError(f"Constrained: numpyro's biject_to has no transform for {constraint}.") from None
        if any(isinstance(v, jax.Array) for v in vars(constraint).values()):
            # The constraint is a static field (part of the jit cache key): JAX arrays there
            # would recompile for every new instance, and equinox warns about them.
            raise TypeError(
                f"Constrained: {constraint} holds JAX arrays; give Python/NumPy numbers, or use "
                "rb.Bounded(value, lower=..., upper=...) for array bounds."
            )
        return {"constraint": constraint}

    @classmethod
    def from_unconstrained(cls, unconstrained, constraint=None, *, prior=None):  # type: ignore[override]
        return super().from_unconstrained(unconstrained, prior=prior, constraint=constraint)

    @property
    def event_ndim(self) -> int:  # type: ignore[override]
        return self.constraint.event_dim

    def support(self) -> constraints.Constraint:
        return self.constraint

    def _check_value(self, value: Array) -> None:
        super()._check_value(value)
        if isinstance(self.constraint, constraints._Simplex):
            _check_open_simplex("Constrained", value)

    def transform(self) -> T.Transform:
        # Where a named bijector has its own map (for the log-Jacobian convention, numerical
        # safety or geometry; see the module docstring), Constrained uses the same one.
        c = self.constraint
        if isinstance(c, constraints._ZeroSum):
            return _ZeroSumTransform(c.event_dim)
        own = {
            constraints._CorrCholesky: _CorrCholeskyTransform,
            constraints._CorrMatrix: _CorrMatrixTransform,
            constraints._LowerCholesky: _LowerCholeskyTransform,
            constraints._PositiveOrderedVector: _CumsumExpTransform,
        }
        if type(c) in own:
            return own[type(c)]()
        if type(c) is constraints._PositiveDefinite:
            return T.ComposeTransform([_LowerCholeskyTransform(), T.CholeskyTransform().inv])
        return T.biject_to(c)
