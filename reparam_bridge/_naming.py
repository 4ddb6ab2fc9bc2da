"""Variable names of draws: the model's dotted attribute paths (ArviZ, the Laplace draws).

Which nodes are variables is the traversal's decision (``_tree.top_level``, ``_tree.free_filter``):
a top-level wrapper or a plain array whose value depends on free arrays.
"""

import jax
import numpy as np
from jaxtyping import PyTree

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
    _, treedef = top_level(model)
    values = treedef.flatten_up_to(draws)
    root_is_node = is_node(model)  # a wrapper at the root: its value's own paths name it
    out: dict[str, np.ndarray] = {}
    for name, i in random_nodes(model):
        for path, leaf in jax.tree_util.tree_flatten_with_path(values[i])[0]:
            if hasattr(leaf, "shape") and np.issubdtype(np.asarray(leaf).dtype, np.number):
                key = name if not path else path_to_str(path) if root_is_node else f"{name}.{path_to_str(path)}"
                out[key] = np.asarray(leaf)
    return out
