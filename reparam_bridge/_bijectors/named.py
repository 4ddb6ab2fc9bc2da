"""The named bijectors: one free array ``unconstrained`` mapped by a constraint's map."""

from abc import abstractmethod
from typing import Any, ClassVar, Literal, Self

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike
from numpyro.distributions import Distribution, constraints
from numpyro.distributions import transforms as T

from .. import _tree
from .._tree import NonTrainable, contains_refs
from .base import Bijector
from .checks import (
    as_float_array,
    build,
    check_bound_shape,
    check_open_simplex,
    check_prior,
    check_round_trip,
    check_value_type,
    frozen_or_live,
    is_simplex,
    is_traced,
    support_text,
)
from .maps import biject_to, forward_and_log_det


# The natural scale each entry's round-trip error is measured against (see check_round_trip).
def vector_max_scale(v: Array) -> Array:  # entries that are sums (ordered, zero-sum): the vector's size
    return jnp.max(jnp.abs(v), axis=-1, keepdims=True)


def row_norm_scale(v: Array) -> Array:  # an entry of a Cholesky factor: its row's norm
    return jnp.linalg.norm(v, axis=-1, keepdims=True)


def diagonal_scale(v: Array) -> Array:  # a covariance entry: sqrt(Σ_ii Σ_jj)
    d = jnp.sqrt(jnp.abs(jnp.diagonal(v, axis1=-2, axis2=-1)))
    return d[..., :, None] * d[..., None, :]


def bounds_scale(v: Array, *bounds: Any) -> Array:
    """``lower + exp(u)`` near 0 with ``lower = -10`` is known to ~10·eps, not to its own digits."""
    scale = jnp.abs(v)
    for bound in bounds:
        if bound is not None:
            scale = jnp.maximum(scale, jnp.abs(jnp.asarray(bound, v.dtype)))
    return scale


class NamedBijector(Bijector):
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

    def unwrap_and_log_det(self) -> tuple[Array, Array]:
        value, log_det = forward_and_log_det(self.transform(), self.unconstrained)
        return value, log_det if jnp.ndim(log_det) == 0 else jnp.sum(log_det)

    def unwrap(self) -> Array:  # the value alone: no log-Jacobian traced
        return self.transform()(self.unconstrained)

    # -- construction -------------------------------------------------------------------

    def _init_from_value(self, value: ArrayLike, prior: Distribution | None, **config: Any) -> None:
        """Set the configuration fields, validate ``value`` and store its unconstrained image.

        Under ``jit``/``vmap`` (traced value or bounds) the value checks ride along with the
        result (``eqx.error_if``) and raise when the compiled function runs."""
        name = type(self).__name__
        check_value_type(name, "value", value)
        value = as_float_array(value)
        for key, val in {**config, "prior": prior, "unconstrained": value}.items():
            object.__setattr__(self, key, val)
        if contains_refs(self):
            raise TypeError(
                f"{name}: a configuration given as rb.Ref is only known inside the whole tree; "
                f"build this one with {name}.from_unconstrained(...)."
            )
        inner = _tree.inner(self)  # wrapped bounds -> their values
        self._check_shape(value.shape)  # shapes are static: checked now, traced or not
        for key, val in config.items():  # constant bounds must not grow the parameter
            if isinstance(val, NonTrainable) and eqx.is_array(val.tree):
                check_bound_shape(name, key, val.tree, value.shape)
        if is_traced(value, inner):
            support = inner.support()
            unconstrained = inner.transform().inv(value)
            ok = jnp.all(jnp.isfinite(value)) & jnp.all(support(value)) & jnp.all(jnp.isfinite(unconstrained))
            ok = ok & self._inside(value)
            unconstrained = eqx.error_if(
                unconstrained,
                ~ok,
                f"{name}: value must be finite and strictly inside the support {support_text(support)}.",
            )
            object.__setattr__(self, "unconstrained", unconstrained)
            if prior is not None:
                check_prior(name, prior, support, value.shape)
            return
        self._check_value(value)
        support = inner.support()
        if not bool(jnp.all(support(value))):
            raise ValueError(f"{name}: value lies outside the support {support_text(support)}: {np.asarray(value)}.")
        unconstrained = inner.transform().inv(value)
        if not bool(jnp.all(jnp.isfinite(unconstrained))):
            raise ValueError(
                f"{name}: value is on the boundary of the support {support_text(support)}, "
                f"where the unconstrained image is infinite: {np.asarray(value)}. Move it inside."
            )
        event_size = int(np.prod(value.shape[value.ndim - self.event_ndim :]))
        recovered = inner.transform()(unconstrained)
        base = inner.transform()  # an elementwise map (also under independent) gets the |u| allowance
        while isinstance(base, T.IndependentTransform):
            base = base.base_transform
        elementwise = unconstrained if base.domain.event_dim == 0 else None
        check_round_trip(name, value, recovered, self._value_scale(value), event_size, elementwise)
        object.__setattr__(self, "unconstrained", unconstrained)
        if prior is not None:
            check_prior(name, prior, support, value.shape)

    def _value_scale(self, value: Array) -> Array:
        """The size each entry's round-trip error is measured against: its own magnitude.
        Maps whose entries are known only to the rounding of a sum (ordered, zero-sum,
        matrices) override it."""
        return jnp.abs(value)

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        """Checks of the value's shape alone, made also when the value is traced."""
        if len(shape) < self.event_ndim:
            raise ValueError(
                f"{type(self).__name__}: value needs at least {self.event_ndim} dimension(s), got shape {shape}."
            )

    def _check_value(self, value: Array) -> None:
        """Checks of a concrete value (its shape is checked already), each with its own message."""
        if not bool(jnp.all(jnp.isfinite(value))):
            raise ValueError(f"{type(self).__name__}: value must be finite, got {np.asarray(value)}.")

    def _inside(self, value: Array) -> Array | bool:
        """What ``_check_value`` requires beyond the support, as one traced boolean (``eqx.error_if``
        under ``jit``/``vmap``)."""
        return True

    @classmethod
    def from_unconstrained(cls, unconstrained: ArrayLike, *, prior: Distribution | None = None, **config: Any) -> Self:
        """Build from unconstrained values, without validation (``jit``/``vmap``-safe).

        Takes the same keyword configuration as the constructor.
        """
        return build(cls, unconstrained=jnp.asarray(unconstrained), prior=prior, **cls._config(**config))

    @classmethod
    def _config(cls, **config: Any) -> dict[str, Any]:
        return config


# --------------------------------------------------------------------------------------
# named bijectors


class Real(NamedBijector):
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


class Positive(NamedBijector):
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


class Bounded(NamedBijector):
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
        if lo is not None and hi is not None:
            if is_traced(lo, hi):  # checked when the compiled function runs
                upper = NonTrainable(eqx.error_if(hi, ~jnp.all(lo < hi), "Bounded: need lower < upper."))
            elif not bool(jnp.all(lo < hi)):
                raise ValueError(f"Bounded: need lower < upper, got lower={lo}, upper={hi}.")
        return {"lower": lower, "upper": upper}

    def _value_scale(self, value: Array) -> Array:
        inner = _tree.inner(self)
        return bounds_scale(value, inner.lower, inner.upper)

    def support(self) -> constraints.Constraint:
        if self.upper is None:
            return constraints.greater_than(self.lower)
        if self.lower is None:
            return constraints.less_than(self.upper)
        return constraints.interval(self.lower, self.upper)

    def transform(self) -> T.Transform:
        return biject_to(self.support())


class Constrained(NamedBijector):
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
            biject_to(constraint)
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

    def _value_scale(self, value: Array) -> Array:  # as the named bijector of the same constraint
        c = self.constraint
        if isinstance(c, (constraints._OrderedVector, constraints._ZeroSum)):
            return vector_max_scale(value)
        if isinstance(c, (constraints._CorrCholesky, constraints._LowerCholesky)):
            return row_norm_scale(value)
        if isinstance(c, (constraints._PositiveDefinite, constraints._CorrMatrix)):
            return diagonal_scale(value)
        if isinstance(c, constraints._Interval):
            return bounds_scale(value, c.lower_bound, c.upper_bound)
        if isinstance(c, (constraints._GreaterThan, constraints._LessThan)):
            bound = getattr(c, "lower_bound", None) if isinstance(c, constraints._GreaterThan) else c.upper_bound
            return bounds_scale(value, bound)
        return jnp.abs(value)

    def _check_value(self, value: Array) -> None:
        super()._check_value(value)
        if is_simplex(self.constraint):
            check_open_simplex("Constrained", value)

    def _inside(self, value: Array) -> Array | bool:
        return jnp.all(value > 0) if is_simplex(self.constraint) else True

    def transform(self) -> T.Transform:
        # The registry's map: where a named bijector has its own map (for the log-Jacobian
        # convention, numerical safety or geometry; see maps.py), Constrained uses the same one.
        return biject_to(self.constraint)
