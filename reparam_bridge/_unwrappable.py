"""Unwrappables: PyTree nodes that become the value the model really uses on :func:`unwrap`.

Behaviour matches ``paramax.AbstractUnwrappable`` (0.0.5) and klax's ``Unwrappable``:
nested unwrappables are unwrapped innermost first, and ``NonTrainable`` stops gradients.
"""

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, PyTree

from ._paths import get_by_path

T = TypeVar("T")


class Unwrappable(eqx.Module, Generic[T]):
    """Abstract PyTree node that stands in for the value :meth:`unwrap` returns.

    Implementer's checklist: store parameters as ordinary fields and implement
    ``unwrap()``, assuming every wrapped sub-node has already been unwrapped.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> class Doubled(rb.Unwrappable):
        ...     x: jnp.ndarray
        ...     def unwrap(self):
        ...         return 2 * self.x
        >>> rb.unwrap(Doubled(jnp.ones(2)))
        Array([2., 2.], dtype=float32)
    """

    @abstractmethod
    def unwrap(self) -> T:
        """The value this node stands for, assuming no wrapped sub-nodes remain."""


class Ref(eqx.Module):
    """A reference, by dotted attribute path from the root of the tree being unwrapped,
    to the unwrapped value of another node.

    It lets two wrappers share one parameter without storing it twice (a PyTree cannot
    alias). The classic use is the scale of a hierarchical prior::

        model = Hier(mu=rb.Real(0.0), tau=rb.Positive(1.0),
                     theta=rb.LocScale(theta0, loc=rb.Ref("mu"), scale=rb.Ref("tau")))

    References are resolved by :func:`unwrap` on the whole tree; cycles raise ``ValueError``.

    Example:
        >>> import reparam_bridge as rb
        >>> tree = {"a": rb.Positive(2.0), "b": rb.Parameterize(lambda a: a + 1, rb.Ref("a"))}
        >>> float(rb.unwrap(tree)["b"])
        3.0
    """

    path: str = eqx.field(static=True)


def _is_unwrappable(x: Any) -> bool:
    return isinstance(x, Unwrappable)


def _is_ref(x: Any) -> bool:
    return isinstance(x, Ref)


def contains_refs(tree: PyTree) -> bool:
    return any(_is_ref(leaf) for leaf in jax.tree_util.tree_leaves(tree, is_leaf=_is_ref))


def _unwrap_plain(tree: PyTree, *, include_self: bool = True) -> PyTree:
    # Identical to paramax.unwrap: innermost unwrappables first.
    def _map_fn(leaf):
        if isinstance(leaf, Unwrappable):
            return _unwrap_plain(leaf, include_self=False).unwrap()
        return leaf

    def is_leaf(x):
        return isinstance(x, Unwrappable) and (include_self or x is not tree)

    return jax.tree_util.tree_map(_map_fn, tree, is_leaf=is_leaf)


def resolve_refs(node: PyTree, root_values: PyTree, *, strict: bool = False) -> PyTree:
    """Replace every :class:`Ref` in ``node`` by the value at its path in the already
    unwrapped ``root_values`` (for callers that hold those values; see :class:`RefResolver`)."""
    del strict

    def _lookup(x):
        if not isinstance(x, Ref):
            return x
        try:
            return get_by_path(root_values, x.path)
        except KeyError as e:
            raise ValueError(f"rb.Ref({x.path!r}) points at nothing: {e.args[0]}") from None

    return jax.tree_util.tree_map(_lookup, node, is_leaf=_is_ref)


class RefResolver:
    """Unwraps a tree whose wrappers hold :class:`Ref` s, each node once (memoised).

    ``Ref(path)`` means the unwrapped value of the node at ``path`` in the *wrapped* tree
    (``"mu"``, ``"pair.mu"``: a field inside a wrapper); where the path goes past a wrapper's
    fields it continues into that wrapper's value (``"pair.a"`` when the wrapper unwraps to a
    dict with key ``"a"``). Cycles raise ``ValueError`` naming the chain.
    """

    def __init__(self, root: PyTree):
        self.root = root
        self._memo: dict[int, Any] = {}
        self._active: list[tuple[int, str]] = []

    def value(self, node: PyTree, label: str = "<root>") -> PyTree:
        key = id(node)
        if key in self._memo:
            return self._memo[key]
        if any(k == key for k, _ in self._active):
            chain = " -> ".join([lbl for _, lbl in self._active] + [label])
            raise ValueError(f"circular rb.Ref references: {chain}; a Ref must not (indirectly) refer back to itself.")
        self._active.append((key, label))
        try:
            out = _unwrap_plain(self.substitute(node))
        finally:
            self._active.pop()
        self._memo[key] = out
        return out

    def substitute(self, node: PyTree) -> PyTree:
        """``node`` with each :class:`Ref` replaced by its value."""
        return jax.tree_util.tree_map(
            lambda x: self.resolve(x.path) if isinstance(x, Ref) else x, node, is_leaf=_is_ref
        )

    def resolve(self, path: str) -> Any:
        node, parts = self.root, path.split(".")
        for i, part in enumerate(parts):
            try:
                node = get_by_path(node, part)
            except KeyError:
                if not isinstance(node, Unwrappable):
                    raise ValueError(
                        f"rb.Ref({path!r}) points at nothing: no {part!r} in the node at "
                        f"{'.'.join(parts[:i]) or '<root>'}."
                    ) from None
                # past this wrapper's fields: continue inside its value
                value = self.value(node, ".".join(parts[:i]))
                try:
                    return get_by_path(value, ".".join(parts[i:]))
                except KeyError as e:
                    raise ValueError(f"rb.Ref({path!r}) points at nothing: {e.args[0]}") from None
        return self.value(node, path)


def _unwrap_with_refs(tree: PyTree) -> PyTree:
    return RefResolver(tree).value(tree)


def unwrap(tree: PyTree) -> PyTree:
    """Unwrap every :class:`Unwrappable` in ``tree``, innermost first (as ``paramax.unwrap``).

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> params = rb.Parameterize(jnp.exp, jnp.zeros(3))
        >>> rb.unwrap(("abc", 1, params))
        ('abc', 1, Array([1., 1., 1.], dtype=float32))
    """
    if contains_refs(tree):
        return _unwrap_with_refs(tree)
    return _unwrap_plain(tree)


def contains_unwrappables(tree: PyTree) -> bool:
    """Whether ``tree`` holds any :class:`Unwrappable`.

    Example:
        >>> import reparam_bridge as rb
        >>> rb.contains_unwrappables({"a": rb.Positive(1.0)}), rb.contains_unwrappables({"a": 1.0})
        (True, False)
    """
    return any(_is_unwrappable(x) for x in jax.tree_util.tree_leaves(tree, is_leaf=_is_unwrappable))


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


class NonTrainable(Unwrappable[T]):
    """Freezes a sub-tree: its arrays are neither optimised by :func:`fit` nor sampled,
    and gradients through them are stopped.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> f = lambda w: (rb.unwrap(w) ** 2).sum()
        >>> jax.grad(f)(rb.NonTrainable(jnp.ones(2))).tree
        Array([0., 0.], dtype=float32)
    """

    tree: T

    def unwrap(self) -> T:
        differentiable, static = eqx.partition(self.tree, eqx.is_array_like)
        return eqx.combine(lax.stop_gradient(differentiable), static)


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
    from numpyro.distributions import Distribution

    from ._bijector import Bijector
    from ._constraint import Constraint

    # A bijector is frozen whole (its log-Jacobian and prior then count for nothing), and a
    # prior distribution is left alone: neither holds free arrays to wrap one by one.
    whole = (NonTrainable, Constraint, Bijector, Distribution)

    def _map_fn(leaf):
        if isinstance(leaf, Distribution) or isinstance(leaf, NonTrainable):
            return leaf
        if eqx.is_inexact_array(leaf) or isinstance(leaf, (Constraint, Bijector)):
            return NonTrainable(leaf)
        return leaf

    return jax.tree_util.tree_map(_map_fn, tree, is_leaf=lambda x: isinstance(x, whole))


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
