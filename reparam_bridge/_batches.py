"""Mini-batches for ``rb.fit(..., batch_size=...)``: each step draws ``batch_size`` rows, with
replacement, along the leading axis shared by every data argument.

Example:
    >>> import jax, jax.numpy as jnp
    >>> x, y = jnp.arange(10.0), jnp.arange(10.0) * 2
    >>> n = batch_size_of((x, y))
    >>> bx, by = get_batch((x, y), jax.random.key(0), jnp.asarray(3), 4, n)
    >>> n, bx.shape, bool(jnp.all(by == 2 * bx))
    (10, (4,), True)
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray


def batch_size_of(args: tuple) -> int:
    """The length of the leading axis that every array in ``args`` shares (the number of rows
    to draw from); a ``ValueError`` naming the argument otherwise."""
    sizes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(args)[0]:
        if not eqx.is_array_like(leaf) or jnp.ndim(leaf) == 0:
            raise ValueError(
                f"fit(batch_size=...): every data argument is split along its leading axis, but "
                f"args{jax.tree_util.keystr(path)} is {type(leaf).__name__} with shape "
                f"{jnp.shape(leaf)}. Close over data that should not be batched inside loss_fn."
            )
        sizes[f"args{jax.tree_util.keystr(path)}"] = jnp.shape(leaf)[0]
    if not sizes:
        raise ValueError("fit(batch_size=...) needs data arguments to batch; none were given.")
    if len(set(sizes.values())) > 1:
        raise ValueError(
            "fit(batch_size=...): all data arguments must share their leading (batch) axis, got "
            + ", ".join(f"{k}: {v}" for k, v in sizes.items())
            + "."
        )
    return next(iter(sizes.values()))


def get_batch(args: tuple, key: PRNGKeyArray | None, step: Array, batch_size: int | None, n: int):
    """The rows of ``args`` that step ``step`` uses (all of them when ``batch_size`` is None)."""
    if batch_size is None:
        return args
    # Uniform indices, drawn afresh each step from fold_in(key, step).
    idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, n)
    return jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), args)
