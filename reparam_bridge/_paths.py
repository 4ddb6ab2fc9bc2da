"""Names from PyTree key paths: ``("layers", 0, "weight") -> "layers.0.weight"``."""

from collections.abc import Callable, Iterator
from typing import Any

import jax.tree_util as jtu


def key_to_str(key: Any) -> str:
    if isinstance(key, jtu.GetAttrKey):
        return key.name
    if isinstance(key, jtu.SequenceKey):
        return str(key.idx)
    if isinstance(key, jtu.DictKey):
        return str(key.key)
    if isinstance(key, jtu.FlattenedIndexKey):
        return str(key.key)
    return str(key).strip(".[]'\"")


def path_to_str(path: tuple) -> str:
    """Join a JAX key path with dots; the root itself is ``"<root>"``."""
    return ".".join(key_to_str(k) for k in path) if path else "<root>"


def leaves_with_paths(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> Iterator[tuple[str, Any]]:
    """``(dotted path, leaf)`` for every leaf of ``tree``."""
    for path, leaf in jtu.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]:
        yield path_to_str(path), leaf


def get_by_path(tree: Any, path: str) -> Any:
    """The node of ``tree`` at a dotted ``path`` such as ``"layers.0.weight"``.

    Raises ``KeyError`` naming the first part that is missing.
    """
    node = tree
    for part in path.split("."):
        if hasattr(node, part) and not isinstance(node, (dict, list, tuple)):
            node = getattr(node, part)
            continue
        candidates = [part] + ([int(part)] if part.lstrip("-").isdigit() else [])
        for key in candidates:
            if isinstance(node, (list, tuple)) and not isinstance(key, int):
                continue
            try:
                node = node[key]
                break
            except (KeyError, IndexError, TypeError):
                continue
        else:
            raise KeyError(f"no node at path {path!r} (missing part {part!r})")
    return node
