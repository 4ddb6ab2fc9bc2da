"""Variable names of draws: the model's dotted attribute paths (ArviZ, the Laplace draws).

Which nodes are variables is the traversal's decision (``_tree.top_level``, ``_tree.free_filter``):
a top-level wrapper or a plain array whose value depends on free arrays.
"""

import jax
import numpy as np
from jaxtyping import PyTree

from ._arviz import SAMPLE_DIMS
from ._paths import path_to_str
from ._tree import free_filter, is_node, top_level


def random_nodes(model: PyTree) -> list[tuple[str, int]]:
    """``(name, index)`` of each top-level node of ``model`` (a wrapper or a plain array)
    whose value depends on free arrays; ``index`` is its position among the leaves of
    ``model`` flattened with wrappers as leaves.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> random_nodes({"s": rb.Positive(1.0), "fixed": rb.NonTrainable(jnp.ones(2)), "w": jnp.zeros(3)})
        [('s', 1), ('w', 2)]
    """
    flat, treedef = top_level(model)
    free = treedef.flatten_up_to(free_filter(model))
    return [
        (path if path != "<root>" else "value", i)
        for i, ((path, _), is_free) in enumerate(zip(flat, free))
        if any(jax.tree_util.tree_leaves(is_free))
    ]


def draws_to_dict(model: PyTree, draws: PyTree) -> dict[str, np.ndarray]:
    """Flatten unwrapped ``draws`` (leaves shaped ``(chain, draw, ...)``) into
    ``{dotted path: array}``, keeping only quantities that depend on free arrays.

    A wrapper whose value is itself a PyTree (say a dict ``{"a": ..., "b": ...}``) gives one
    variable per leaf: ``"pair.a"``, ``"pair.b"`` (just ``"a"``, ``"b"`` when that wrapper is
    the whole model; a single array at the root is ``"value"``).
    """
    return {key: np.asarray(leaf) for key, leaf in _named_leaves(model, draws)}


def check_names(model: PyTree, values: PyTree, what: str) -> None:
    """Before sampling: every variable of ``model`` (``values``: its unwrapped values, or their
    shapes) gets a name of its own that ArviZ keeps (two parameters with one dotted path, or one
    named ``chain``/``draw``, would be lost)."""
    try:
        names = [key for key, _ in _named_leaves(model, values)]
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    reserved = sorted(set(names) & set(SAMPLE_DIMS))
    if reserved:
        raise ValueError(
            f"{what}: a parameter is named {reserved[0]!r}, a dimension of ArviZ's draws, so it would be "
            f"lost from the posterior: rename it (e.g. '{reserved[0]}_')."
        )


def _named_leaves(model: PyTree, values: PyTree):
    """``(dotted path, leaf)`` of each numeric leaf of the values of the random nodes."""
    _, treedef = top_level(model)
    values = treedef.flatten_up_to(values)
    root_is_node = is_node(model)  # a wrapper at the root: its value's own paths name it
    seen = set()
    for name, i in random_nodes(model):
        for path, leaf in jax.tree_util.tree_flatten_with_path(values[i])[0]:
            if hasattr(leaf, "shape") and np.issubdtype(np.dtype(leaf.dtype), np.number):
                key = name if not path else path_to_str(path) if root_is_node else f"{name}.{path_to_str(path)}"
                if key in seen:  # e.g. a key "a.b" beside a nested a -> b: one would replace the other
                    raise ValueError(
                        f"two parameters of the model are both named '{key}' (variables are named by "
                        "their dotted attribute path): rename one of them."
                    )
                seen.add(key)
                yield key, leaf
