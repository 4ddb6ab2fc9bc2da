"""Checks and construction helpers shared by the bijectors: values, bounds, priors."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike
from numpyro.distributions import Distribution, constraints

from .._tree import NonTrainable, Ref, Unwrappable


def build(cls, **fields):
    """Create a Module instance without running ``__init__`` (no validation): the path
    ``from_unconstrained`` uses, safe under ``jit`` and ``vmap``."""
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


def as_float_array(value: ArrayLike) -> Array:
    arr = jnp.asarray(value)
    dtype = arr.dtype if jnp.issubdtype(arr.dtype, jnp.inexact) else jnp.result_type(float)
    return jnp.asarray(value, dtype=dtype)  # an explicit dtype drops JAX's weak type


def is_traced(*xs: Any) -> bool:
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
    arr = as_float_array(x)
    hint = "" if required else " (use None for no bound)"
    if is_traced(arr):  # checked when the compiled function runs
        arr = eqx.error_if(arr, ~jnp.all(jnp.isfinite(arr)), f"{owner}: {name} must be finite{hint}.")
    elif not bool(jnp.all(jnp.isfinite(arr))):
        raise ValueError(f"{owner}: {name} must be finite{hint}, got {x}.")
    return NonTrainable(arr)


def constraint_key(c: constraints.Constraint) -> tuple[str, tuple]:
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


def same_support(a: constraints.Constraint, b: constraints.Constraint) -> bool:
    (fa, ba), (fb, bb) = constraint_key(a), constraint_key(b)
    if fa != fb:
        return False
    elementwise = ("real", "greater_than", "less_than", "interval")
    if fa not in elementwise and a.event_dim != b.event_dim:  # e.g. zero_sum over 2 axes vs 1
        return False
    for x, y in zip(ba, bb):
        if is_traced(x, y):
            continue
        if not np.allclose(np.asarray(x), np.asarray(y)):
            return False
    return True


def support_text(c: constraints.Constraint) -> str:
    family, bounds = constraint_key(c)
    if is_traced(*bounds):
        return family + "(traced bounds)"
    return family + (str(tuple(np.asarray(b).tolist() for b in bounds)) if bounds else "")


def check_prior(
    name: str, prior: Distribution, support: constraints.Constraint, value_shape: tuple | None = None
) -> None:
    if not isinstance(prior, Distribution):
        raise TypeError(f"{name}: prior must be a numpyro Distribution, got {type(prior).__name__}.")
    if not same_support(prior.support, support):
        raise ValueError(
            f"{name}: the prior's support {support_text(prior.support)} does not match the "
            f"bijector's support {support_text(support)}, so it would put mass where the value "
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


def is_simplex(constraint: constraints.Constraint) -> bool:
    """A simplex constraint, also one per batch entry (``independent(simplex, k)``)."""
    while isinstance(constraint, constraints._IndependentConstraint):
        constraint = constraint.base_constraint
    return isinstance(constraint, constraints._Simplex)


def check_open_simplex(name: str, value: Array) -> None:
    # NumPyro's simplex support is closed and its inverse stick-breaking clips, so a 0 in the
    # last entry would otherwise pass as an unconstrained value of about ±87.
    if not bool(jnp.all(value > 0)):
        raise ValueError(
            f"{name}: every entry must be > 0; a 0 lies on the boundary of the simplex, where the "
            f"unconstrained image is infinite: {np.asarray(value)}. Move it inside."
        )


# ----------------------------------------------------------------------------------------
# constructors of the named bijectors (called from their shared ``_init_from_value``)


def check_value_type(owner: str, name: str, value: Any) -> None:
    """A real number or array: strings, objects and complex values are refused."""
    if isinstance(value, (str, bytes)) or (not eqx.is_array_like(value) and not isinstance(value, (list, tuple))):
        raise TypeError(f"{owner}: {name} must be a real number or array, got {type(value).__name__}.")
    if jnp.iscomplexobj(value) or (isinstance(value, (list, tuple)) and np.iscomplexobj(np.asarray(value))):
        raise TypeError(
            f"{owner}: {name} is complex ({value!r}); a constrained parameter is real. "
            "Store the real and imaginary parts as two real parameters."
        )


def check_bound_shape(owner: str, name: str, bound: Any, value_shape: tuple[int, ...]) -> None:
    """A bound must broadcast to the value's shape *without growing it*."""
    shape = tuple(np.shape(bound))
    try:
        out = np.broadcast_shapes(shape, value_shape)
    except ValueError:
        out = None
    if out != tuple(value_shape):
        raise ValueError(
            f"{owner}: {name} has shape {shape}, which does not broadcast to the value's shape "
            f"{tuple(value_shape)} (it would {'change' if out is None else 'grow'} the parameter"
            f"{'' if out is None else f' to {out}'}). Give one bound per element or a scalar."
        )


_ULPS = 32  # "a few ulps": an elementwise round trip (exp/log, sigmoid/logit) stays well within


def round_trip_tolerance(dtype: Any, event_size: int = 1) -> float:
    """Relative tolerance of a round trip (and of a simplex's or zero-sum vector's sum)."""
    return float((_ULPS + 4 * np.sqrt(event_size)) * np.finfo(dtype).eps)


def check_round_trip(
    owner: str, value: Any, recovered: Any, scale: Any, event_size: int = 1, unconstrained: Any = None
) -> None:
    """The constructor stores ``inv(value)``; ``recovered = transform(inv(value))`` must give
    ``value`` back to within ``_ULPS + 4·√event_size`` ulps of ``scale``, else the value is not
    representable in this dtype (e.g. a simplex entry below the others' rounding error, a
    simplex that does not sum to one) and is refused.

    ``scale`` is the natural size of each entry, elementwise ``|value|`` for most maps, but the
    row norm of a Cholesky factor or ``sqrt(Σ_ii Σ_jj)`` of a covariance: a tiny off-diagonal
    entry is known to the rounding of its row, not to its own digits. The ``√event_size`` term:
    a map that couples n entries sums them, and rounding errors of a sum grow like √n (measured
    round trips of ordinary values: ≤ 10 ulps for 30 entries, ≤ 45 for 1,000).

    ``unconstrained``, for an elementwise map (same shape as ``value``): each entry may be off
    by ``|u|`` ulps more, the rounding of ``u = inv(value)`` itself carried through the map
    (``exp(log v)`` is off by about ``|log v| / 2`` ulps: ``1e-100`` in float64 by 50)."""
    v, r = np.asarray(value), np.asarray(recovered)
    if v.shape != r.shape or not np.issubdtype(v.dtype, np.floating):
        return
    eps = np.finfo(v.dtype).eps
    tol = round_trip_tolerance(v.dtype, event_size)
    scale = np.broadcast_to(np.asarray(scale, np.float64), v.shape)
    scale = np.where(scale > 0, scale, np.max(np.abs(v), initial=0.0))
    err = np.abs(r.astype(np.float64) - v.astype(np.float64))
    if unconstrained is not None and np.shape(unconstrained) == v.shape:
        tol = tol + eps * np.abs(np.asarray(unconstrained, np.float64))
    bad = err > tol * scale
    if bad.any():
        rel = err / np.maximum(scale, np.finfo(v.dtype).tiny)
        i = np.unravel_index(int(np.argmax(np.where(bad, rel, 0))), v.shape)
        where = f"[{', '.join(map(str, i))}]" if v.ndim else ""
        wider = (
            "Use float64 (jax.config.update('jax_enable_x64', True)) or m" if eps > np.finfo(np.float64).eps else "M"
        )
        raise ValueError(
            f"{owner}: value{where} = {v[i]!r} is not representable in {v.dtype}: unwrapping would give "
            f"{r[i]!r} (error {rel[i] / eps:.3g} ulps, more than {np.broadcast_to(tol, v.shape)[i] / eps:.3g}). "
            f"{wider}ove the value away from the support's edge."
        )
