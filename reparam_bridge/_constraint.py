"""Constraints (klax-style): unwrappables with a non-differentiable ``apply()`` projection,
run after each optimiser step by :func:`fit`."""

from abc import abstractmethod
from typing import ClassVar, Self

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, PyTree

from ._tree import Unwrappable, fold, unwrap


class Constraint(Unwrappable[Array]):
    """Abstract: ``unwrap()`` gives the value used by the model, ``apply()`` returns a
    projected copy of ``self`` (e.g. clamped), called after every optimiser step.

    Constraints have no log-Jacobian, so :func:`sample` refuses them: use the matching
    :class:`Bijector` (``NonNegative`` → :class:`Positive`, ``Clamp`` → :class:`Bounded`).
    """

    freeze_whole: ClassVar[bool] = True  # rb.non_trainable freezes a constraint whole (klax)

    @abstractmethod
    def apply(self) -> Self:
        """A modified copy of ``self``; nothing is mutated."""


def apply(tree: PyTree) -> PyTree:
    """Apply every :class:`Constraint` of ``tree`` (innermost first) and return the new tree.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.apply(("abc", 1, rb.NonNegative(-1 * jnp.ones(3))))
        ('abc', 1, NonNegative(parameter=f32[3]))
        >>> rb.unwrap(rb.apply(rb.NonNegative(-1 * jnp.ones(3))))
        Array([0., 0., 0.], dtype=float32)
    """

    # innermost first, Refs left in place: a projection changes the wrapped tree, not values
    return fold(tree, lambda v: v.inner.apply() if isinstance(v.inner, Constraint) else v.inner, refs=False)


def finalize(tree: PyTree) -> PyTree:
    """``unwrap(apply(tree))``: the callable model after training.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.finalize({"slope": rb.NonNegative(jnp.array([-0.5, 2.0]))})
        {'slope': Array([0., 2.], dtype=float32)}
    """
    return unwrap(apply(tree))


def contains_constraints(tree: PyTree) -> bool:
    """Whether ``tree`` holds any :class:`Constraint`."""
    is_c = lambda x: isinstance(x, Constraint)  # noqa: E731
    return any(is_c(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=is_c))


class NonNegative(Constraint):
    """Non-negativity by clamping (klax ``NonNegative``): ``max(parameter, 0)``.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.unwrap(rb.NonNegative(jnp.array([-1.0, 2.0])))
        Array([0., 2.], dtype=float32)
    """

    parameter: Array

    def unwrap(self) -> Array:
        return jnp.maximum(self.parameter, 0)

    def apply(self) -> Self:
        return eqx.tree_at(lambda c: c.parameter, self, jnp.maximum(self.parameter, 0))


class Clamp(Constraint):
    """Two-sided clamp to ``[lower, upper]`` (either may be ``None``); the bounds are not trained.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.finalize(rb.Clamp(jnp.array([-3.0, 0.5, 7.0]), lower=0.0, upper=1.0))
        Array([0. , 0.5, 1. ], dtype=float32)
    """

    parameter: Array
    lower: float | None = eqx.field(static=True)
    upper: float | None = eqx.field(static=True)

    def __init__(self, parameter: ArrayLike, lower: float | None = None, upper: float | None = None):
        if lower is not None and upper is not None and not lower < upper:
            raise ValueError(f"Clamp: need lower < upper, got lower={lower}, upper={upper}.")
        self.parameter = parameter
        self.lower = None if lower is None else float(lower)
        self.upper = None if upper is None else float(upper)

    def unwrap(self) -> Array:
        return jnp.clip(self.parameter, self.lower, self.upper)

    def apply(self) -> Self:
        return eqx.tree_at(lambda c: c.parameter, self, unwrap(self))
