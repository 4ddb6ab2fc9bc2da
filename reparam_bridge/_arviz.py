"""ArviZ conversion: variable names are the model's dotted attribute paths."""

import warnings
from typing import Any

import jax
import numpy as np
from jaxtyping import PyTree

from ._density import free_filter
from ._paths import path_to_str
from numpyro.distributions import Distribution

from ._unwrappable import Unwrappable


def import_arviz():
    """Import ArviZ without its 0.x "major refactor" FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _is_node(x: Any) -> bool:
    # wrappers, and priors stored on a module (frozen, never posterior variables)
    return isinstance(x, (Unwrappable, Distribution))


def random_nodes(model: PyTree) -> list[tuple[str, int]]:
    """``(name, index)`` of each top-level node of ``model`` (a wrapper or a plain array)
    whose value depends on free arrays; ``index`` is its position among the leaves of
    ``model`` flattened with wrappers as leaves."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(model, is_leaf=_is_node)
    free = treedef.flatten_up_to(free_filter(model))
    return [
        (path_to_str(path) if path else "value", i)
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
    treedef = jax.tree_util.tree_structure(model, is_leaf=_is_node)
    values = treedef.flatten_up_to(draws)
    root_is_node = _is_node(model)  # a wrapper at the root: its value's own paths name it
    out: dict[str, np.ndarray] = {}
    for name, i in random_nodes(model):
        for path, leaf in jax.tree_util.tree_flatten_with_path(values[i])[0]:
            if hasattr(leaf, "shape") and np.issubdtype(np.asarray(leaf).dtype, np.number):
                key = name if not path else path_to_str(path) if root_is_node else f"{name}.{path_to_str(path)}"
                out[key] = np.asarray(leaf)
    return out


def to_inference_data(
    posterior: dict[str, np.ndarray],
    sample_stats: dict[str, np.ndarray] | None = None,
    log_likelihood: dict[str, np.ndarray] | None = None,
    observed_data: dict[str, np.ndarray] | None = None,
    attrs: dict[str, Any] | None = None,
):
    """``arviz.InferenceData`` (ArviZ 0.x) or ``DataTree`` (ArviZ ≥ 1.0) from group dicts."""
    az = import_arviz()
    groups = {
        "posterior": posterior,
        "sample_stats": sample_stats,
        "log_likelihood": log_likelihood,
        "observed_data": observed_data,
    }
    groups = {k: {n: np.asarray(v) for n, v in g.items()} for k, g in groups.items() if g}
    attrs = {"creation_library": "reparam_bridge", **(attrs or {})}
    if int(az.__version__.split(".")[0]) >= 1:  # ArviZ 1.x: from_dict({"group": {...}})
        return az.from_dict(groups, attrs=attrs)
    return az.from_dict(**groups, attrs=attrs)
