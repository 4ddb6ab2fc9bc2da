"""Unwrappables: PyTree nodes that become the value the model really uses on :func:`unwrap`.

Behaviour matches ``paramax.AbstractUnwrappable`` (0.0.5) and klax's ``Unwrappable``:
nested unwrappables are unwrapped innermost first, and ``NonTrainable`` stops gradients.
The node kinds the traversal treats specially (``Unwrappable``, ``Ref``, ``NonTrainable``)
and :func:`unwrap` itself live in ``_tree.py`` and are re-exported here.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree
from numpyro.distributions import Distribution

from ._tree import NonTrainable, Ref, Unwrappable, contains_refs, contains_unwrappables, unwrap

__all__ = [
    "NonTrainable",
    "Parameterize",
    "Ref",
    "SkewSymmetric",
    "Symmetric",
    "Unwrappable",
    "WeightNormalization",
    "contains_refs",
    "contains_unwrappables",
    "non_trainable",
    "unwrap",
]

T = TypeVar("T")


class Parameterize(Unwrappable[T]):
    """Unwraps to ``fn(*args, **kwargs)``; ``args`` and ``kwargs`` may hold trainable arrays.

    Not a bijector: fine for :func:`fit`, refused by :func:`sample` (use a
    :class:`Bijector` there, which also knows its log-Jacobian).

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.unwrap(rb.Parameterize(jnp.exp, jnp.zeros(3)))
        Array([1., 1., 1.], dtype=float32)
    """

    fn: Callable[..., T]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __init__(self, fn: Callable[..., T], *args: Any, **kwargs: Any):
        self.fn = fn
        self.args = tuple(args)
        self.kwargs = kwargs

    def unwrap(self) -> T:
        return self.fn(*self.args, **self.kwargs)


def non_trainable(tree: PyTree) -> PyTree:
    """Wrap every inexact array (and every :class:`Constraint` and :class:`Bijector`) of
    ``tree`` in :class:`NonTrainable`.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> frozen = rb.non_trainable({"w": jnp.ones(2), "n": 3})
        >>> type(frozen["w"]).__name__, frozen["n"]
        ('NonTrainable', 3)
    """
    # A node whose class says ``freeze_whole`` (bijectors: their log-Jacobian and prior then
    # count for nothing; constraints) is frozen whole, and a prior distribution is left
    # alone: neither holds free arrays to wrap one by one.
    def _whole(x):
        return isinstance(x, (NonTrainable, Distribution)) or (isinstance(x, Unwrappable) and x.freeze_whole)

    def _map_fn(leaf):
        if isinstance(leaf, (Distribution, NonTrainable)):
            return leaf
        if eqx.is_inexact_array(leaf) or (isinstance(leaf, Unwrappable) and leaf.freeze_whole):
            return NonTrainable(leaf)
        return leaf

    return jax.tree_util.tree_map(_map_fn, tree, is_leaf=_whole)


def _inv_softplus(x: Array) -> Array:
    return jnp.log(-jnp.expm1(-x)) + x


class WeightNormalization(Unwrappable[Array]):
    """Weight normalisation (Salimans & Kingma 2016): ``scale * weight / ||weight||`` row-wise,
    with ``scale`` kept positive by a softplus and initialised to ``1 / ||weight||``, exactly
    as ``paramax.WeightNormalization`` (0.0.5).

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> w = rb.WeightNormalization(jnp.array([[3.0, 4.0]]))
        >>> rb.unwrap(w).round(4)
        Array([[0.12, 0.16]], dtype=float32)
    """

    weight: Array | Unwrappable[Array]
    scale: Array | Unwrappable[Array]

    def __init__(self, weight: Array | Unwrappable[Array]):
        self.weight = weight
        scale_init = 1 / jnp.linalg.norm(unwrap(weight), axis=-1, keepdims=True)
        self.scale = Parameterize(jax.nn.softplus, _inv_softplus(scale_init))

    def unwrap(self) -> Array:
        weight_norms = jnp.linalg.norm(self.weight, axis=-1, keepdims=True)
        return self.scale * self.weight / weight_norms


def _check_square(name: str, parameter: Any) -> None:
    array = unwrap(parameter)
    if not (jnp.ndim(array) >= 2 and array.shape[-1] == array.shape[-2]):
        raise ValueError(
            f"{name}: the wrapped parameter must have shape (..., N, N), got {jnp.shape(array)}."
        )


class Symmetric(Unwrappable[Array]):
    """Unwraps to the symmetric part ``(p + pᵀ) / 2`` of a square matrix (klax ``Symmetric``).

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.unwrap(rb.Symmetric(jnp.array([[1.0, 2.0], [0.0, 1.0]])))
        Array([[1., 1.],
               [1., 1.]], dtype=float32)
    """

    parameter: Array | Unwrappable[Array]

    def __init__(self, parameter: Array | Unwrappable[Array]):
        _check_square("Symmetric", parameter)
        self.parameter = parameter

    def unwrap(self) -> Array:
        return 0.5 * (self.parameter + jnp.matrix_transpose(self.parameter))


class SkewSymmetric(Unwrappable[Array]):
    """Unwraps to the skew-symmetric part ``(p - pᵀ) / 2`` of a square matrix (klax ``SkewSymmetric``).

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> rb.unwrap(rb.SkewSymmetric(jnp.array([[1.0, 2.0], [0.0, 1.0]])))
        Array([[ 0.,  1.],
               [-1.,  0.]], dtype=float32)
    """

    parameter: Array | Unwrappable[Array]

    def __init__(self, parameter: Array | Unwrappable[Array]):
        _check_square("SkewSymmetric", parameter)
        self.parameter = parameter

    def unwrap(self) -> Array:
        return 0.5 * (self.parameter - jnp.matrix_transpose(self.parameter))
