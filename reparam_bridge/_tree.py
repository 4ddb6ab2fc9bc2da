"""The one traversal of wrapped trees, and the node kinds it knows.

Every feature that visits wrappers goes through this module: :func:`unwrap`, the projection
of constraints (``rb.apply``), the densities (one pass gathering values, priors and
log-Jacobians), the checks made before compilation, and the names of ArviZ variables and
NumPyro sites. Three things are decided here and nowhere else:

* **where a node is**: its JAX key path, shown as a dotted path (``"layers.0.weight"``);
* **what a** :class:`Ref` **points at**: the value of the node at that path of the wrapped
  tree, computed once (memoised by key path) whichever of the Ref or the node is met first;
  cycles raise ``ValueError`` naming the chain;
* **frozen or free**: an array is free unless it sits in a :class:`NonTrainable` or in a
  prior distribution stored on the model (:func:`is_frozen`, :func:`free_filter`).

Two walks: :func:`fold` (innermost first, with values) and :func:`walk` (outermost first,
structure only, for checks that must not compute anything).
"""

from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import equinox as eqx
import jax.tree_util as jtu
from jax import lax
from jaxtyping import PyTree
from numpyro.distributions import Distribution

from ._paths import get_by_path, key_to_str, path_to_str

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

    # ``rb.non_trainable`` wraps a node of this class whole (rather than its arrays one by
    # one) when True: a bijector's log-Jacobian and prior, a constraint's projection, only
    # make sense for the node as a whole.
    freeze_whole: ClassVar[bool] = False

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


# ----------------------------------------------------------------------------------------
# frozen or free


def is_frozen(x: Any) -> bool:
    """Whether ``x`` is a node whose arrays are never free: a :class:`NonTrainable`, or a
    prior distribution stored on the model (its parameters are data, not posterior variables)."""
    return isinstance(x, (NonTrainable, Distribution))


def free_filter(tree: PyTree) -> PyTree:
    """Boolean filter spec: ``True`` exactly at the free (optimised / sampled) arrays."""
    return jtu.tree_map(lambda x: False if is_frozen(x) else eqx.is_inexact_array(x), tree, is_leaf=is_frozen)


def free_mask(tree: PyTree) -> list[bool]:
    """Whether each leaf of ``tree`` (in ``jax.tree_util.tree_leaves`` order) is free: the
    decision of :func:`free_filter`, one bool per leaf (a frozen node: one ``False`` per leaf)."""
    mask: list[bool] = []
    for x in jtu.tree_leaves(tree, is_leaf=is_frozen):
        if is_frozen(x):
            mask.extend([False] * len(jtu.tree_leaves(x)))
        else:
            mask.append(eqx.is_inexact_array(x))
    return mask


def is_node(x: Any) -> bool:
    """A node that names a variable as a whole: a wrapper, a :class:`Ref` or a stored prior."""
    return isinstance(x, (Unwrappable, Ref, Distribution))


def top_level(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    """``([(dotted path, node or leaf)], treedef)`` of ``tree`` flattened with every
    :func:`is_node` kept whole: the outermost wrappers and the plain leaves."""
    flat, treedef = jtu.tree_flatten_with_path(tree, is_leaf=is_node)
    return [(path_to_str(kp), x) for kp, x in flat], treedef


def contains_refs(tree: PyTree) -> bool:
    return any(isinstance(x, Ref) for x in jtu.tree_leaves(tree, is_leaf=lambda x: isinstance(x, Ref)))


def contains_unwrappables(tree: PyTree) -> bool:
    """Whether ``tree`` holds any :class:`Unwrappable`.

    Example:
        >>> import reparam_bridge as rb
        >>> rb.contains_unwrappables({"a": rb.Positive(1.0)}), rb.contains_unwrappables({"a": 1.0})
        (True, False)
    """
    is_u = lambda x: isinstance(x, Unwrappable)  # noqa: E731
    return any(is_u(x) for x in jtu.tree_leaves(tree, is_leaf=is_u))


# ----------------------------------------------------------------------------------------
# the traversal


class Visit(NamedTuple):
    """What :func:`fold` hands its ``visit`` function for each wrapper."""

    path: str  # dotted path in the wrapped tree ("<root>" for the root itself)
    node: Unwrappable  # the wrapper as stored in the tree
    inner: Unwrappable  # the same wrapper, its sub-nodes replaced by their results, Refs by values
    frozen: bool  # a NonTrainable or inside one: its arrays are not free


def _wrapper_or_ref(x: Any) -> bool:
    return isinstance(x, (Unwrappable, Ref))


def children(node: Any) -> list[tuple[tuple, Any]]:
    """``(key path, child)`` of the wrappers and Refs directly below ``node`` (outermost ones)."""
    flat = jtu.tree_flatten_with_path(node, is_leaf=lambda x: x is not node and _wrapper_or_ref(x))[0]
    return [(kp, x) for kp, x in flat if x is not node and _wrapper_or_ref(x)]


def unwrap_node(v: Visit) -> Any:
    """The default ``visit`` of :func:`fold`: the wrapper's own value."""
    return v.inner.unwrap()


class _Fold:
    """One bottom-up pass over a tree: each wrapper's result computed once, at its key path."""

    def __init__(self, root: PyTree, visit: Callable[[Visit], Any], refs: bool):
        self.root, self.visit, self.refs = root, visit, refs
        self.memo: dict[tuple, Any] = {}
        self.active: list[tuple] = []  # key paths being computed, for cycles

    def map(self, prefix: tuple, tree: PyTree, frozen: bool, skip: Any = None) -> PyTree:
        """``tree`` (found at ``prefix``) with every wrapper replaced by its result; ``skip``
        is a wrapper whose *fields* are mapped (it is not replaced itself)."""

        def fn(kp, x):
            if isinstance(x, Ref):
                return self.value_at(prefix + kp, x, frozen) if self.refs else x
            if isinstance(x, Unwrappable) and x is not skip:
                return self.wrapper(prefix + kp, x, frozen)
            return x

        return jtu.tree_map_with_path(fn, tree, is_leaf=lambda x: x is not skip and _wrapper_or_ref(x))

    def wrapper(self, kp: tuple, node: Unwrappable, frozen: bool) -> Any:
        if kp in self.memo:
            return self.memo[kp]
        self.enter(kp)
        try:
            frozen = frozen or isinstance(node, NonTrainable)
            inner = self.map(kp, node, frozen, skip=node)
            out = self.visit(Visit(path_to_str(kp), node, inner, frozen))
        finally:
            self.active.pop()
        self.memo[kp] = out
        return out

    def enter(self, kp: tuple) -> None:
        if kp in self.active:
            chain = " -> ".join(path_to_str(k) for k in self.active[self.active.index(kp) :] + [kp])
            raise ValueError(f"circular rb.Ref references: {chain}; a Ref must not (indirectly) refer back to itself.")
        self.active.append(kp)

    def resolve(self, path: str) -> Any:
        """The value at ``path`` of the wrapped tree; past a wrapper's fields the path goes
        on inside that wrapper's value (``"pair.a"`` when ``pair`` unwraps to ``{"a": ...}``)."""
        node, kp, frozen = self.root, (), False
        parts = path.split(".")
        for i, part in enumerate(parts):
            frozen = frozen or isinstance(node, NonTrainable)
            step = _child(node, part)
            if step is not None:
                key, node = step
                kp = kp + (key,)
                continue
            if not isinstance(node, Unwrappable):
                try:  # an attribute that is not a PyTree child (a static field)
                    node, kp = get_by_path(node, part), kp + (jtu.GetAttrKey(part),)
                    continue
                except KeyError:
                    raise ValueError(
                        f"rb.Ref({path!r}) points at nothing: no {part!r} in the node at "
                        f"{'.'.join(parts[:i]) or '<root>'}."
                    ) from None
            value = self.wrapper(kp, node, frozen)
            try:
                return get_by_path(value, ".".join(parts[i:]))
            except KeyError as e:
                raise ValueError(f"rb.Ref({path!r}) points at nothing: {e.args[0]}") from None
        return self.value_at(kp, node, frozen or isinstance(node, NonTrainable))

    def value_at(self, kp: tuple, node: Any, frozen: bool) -> Any:
        if isinstance(node, Unwrappable):
            return self.wrapper(kp, node, frozen)
        if isinstance(node, Ref):  # a Ref to a Ref
            self.enter(kp)
            try:
                return self.resolve(node.path)
            finally:
                self.active.pop()
        return self.map(kp, node, frozen)


def _child(node: Any, part: str) -> tuple[Any, Any] | None:
    """``(JAX key, child)`` of ``node`` named ``part`` (a field, dict key or index), else None:
    the same key the traversal gives that child, so a Ref and the walk share one memo entry."""
    if isinstance(node, (list, tuple)) and part.lstrip("-").isdigit() and -len(node) <= int(part) < 0:
        part = str(int(part) % len(node))
    for kp, child in jtu.tree_flatten_with_path(node, is_leaf=lambda x: x is not node)[0]:
        if kp and key_to_str(kp[0]) == part:
            return kp[0], child
    return None


def fold(tree: PyTree, visit: Callable[[Visit], Any] = unwrap_node, *, refs: bool = True) -> PyTree:
    """Replace every wrapper of ``tree`` by ``visit(Visit(...))``, innermost first, each
    wrapper once; with ``refs``, each :class:`Ref` by the value it points at.

    ``visit`` sees the wrapper with its sub-nodes already replaced (``Visit.inner``), so
    ``visit = lambda v: v.inner.unwrap()`` is :func:`unwrap` and a density can gather a
    bijector's value, log-Jacobian and prior in the same call.

    Example:
        >>> import reparam_bridge as rb
        >>> seen = []
        >>> def visit(v):
        ...     seen.append(v.path)
        ...     return v.inner.unwrap()
        >>> tree = {"a": rb.Positive(1.0), "b": rb.Bounded.from_unconstrained(0.0, lower=0.0, upper=rb.Ref("a"))}
        >>> float(fold(tree, visit)["b"]), seen  # "a" once, though "b" refers to it
        (0.5, ['a', 'b.lower', 'b'])
    """
    f = _Fold(tree, visit, refs)
    if _wrapper_or_ref(tree):
        return f.value_at((), tree, False)
    return f.map((), tree, False)


def inner(node: Unwrappable, root: PyTree | None = None) -> Unwrappable:
    """``node`` with its sub-nodes unwrapped and its Refs resolved against ``root`` (the
    whole wrapped tree): ready for ``node.unwrap()``."""
    f = _Fold(node if root is None else root, unwrap_node, True)
    # key paths outside the root's own, so memoised values cannot be confused with its nodes
    prefix = () if root is None else (jtu.GetAttrKey("<node>"),)
    return f.map(prefix, node, isinstance(node, NonTrainable), skip=node)


def walk(
    tree: PyTree, enter: Callable[[Unwrappable], bool] = lambda node: True
) -> Iterator[tuple[str, Unwrappable, bool]]:
    """``(dotted path, wrapper, frozen)`` for the wrappers of ``tree``, outermost first,
    going into a wrapper's fields only where ``enter(wrapper)``. Computes no values."""

    def _visit(kp, node, frozen):
        frozen = frozen or isinstance(node, NonTrainable)
        yield path_to_str(kp), node, frozen
        if enter(node):
            for ckp, child in children(node):
                if isinstance(child, Unwrappable):
                    yield from _visit(kp + ckp, child, frozen)

    for kp, x in jtu.tree_flatten_with_path(tree, is_leaf=_wrapper_or_ref)[0]:
        if isinstance(x, Unwrappable):
            yield from _visit(kp, x, False)


def unwrap(tree: PyTree) -> PyTree:
    """Unwrap every :class:`Unwrappable` in ``tree``, innermost first (as ``paramax.unwrap``),
    resolving :class:`Ref` s.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> params = rb.Parameterize(jnp.exp, jnp.zeros(3))
        >>> rb.unwrap(("abc", 1, params))
        ('abc', 1, Array([1., 1., 1.], dtype=float32))
    """
    return fold(tree)
