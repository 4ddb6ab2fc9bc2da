"""Small helpers shared by the fitting, Laplace, geometry and sampler-adapter modules."""

import jax
import numpy as np
from jaxtyping import PyTree

from ._paths import path_to_str


def coordinate_names(params: PyTree) -> list[str]:
    """One name per entry of ``ravel_pytree(params)``: ``"tau.unconstrained"``, ``"w[0,1]"``.

    Example:
        >>> import jax.numpy as jnp
        >>> coordinate_names({"s": jnp.zeros(()), "w": jnp.zeros((1, 2))})
        ['s', 'w[0,0]', 'w[0,1]']
    """
    names = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        base = path_to_str(path)
        shape = np.shape(leaf)
        names.extend([base] if shape == () else [f"{base}[{','.join(map(str, i))}]" for i in np.ndindex(*shape)])
    return names
