"""BlackJAX adapter: the same log-density the NumPyro path samples, for any BlackJAX kernel.

BlackJAX is an optional dependency: nothing here imports it. :func:`logdensity` returns a
plain JAX function over the free-array PyTree (what every BlackJAX sampling algorithm takes
as ``logdensity_fn``) and the initial position; :func:`posterior` turns BlackJAX positions
(and NUTS infos) with leading ``(chain, draw)`` axes back into a :class:`~reparam_bridge.Posterior`,
so ``.draws`` and ``.to_inference_data()`` work exactly as after :func:`~reparam_bridge.sample`.

Example:
    >>> import jax, jax.numpy as jnp, numpyro.distributions as dist
    >>> import reparam_bridge as rb
    >>> model = {"mu": rb.Real(0.0), "sigma": rb.Positive(1.0)}
    >>> def log_joint(m, y):
    ...     return dist.Normal(m["mu"], m["sigma"]).log_prob(y).sum() - 0.5 * m["mu"] ** 2
    >>> logdensity_fn, position = rb.blackjax.logdensity(model, log_joint, jnp.array([0.5, 1.5]))
    >>> round(float(logdensity_fn(position)), 4)  # log_joint + log-Jacobian (log sigma = 0)
    -3.0879
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, PyTree

from ._diagnose import check_model
from ._mesh import auto_axes
from ._posterior import Posterior, free_logdensity
from ._util import tree_depth

__all__ = ["logdensity", "posterior"]


def logdensity(model: PyTree, log_joint: Callable[..., Any], *args: Any) -> tuple[Callable[[PyTree], Array], PyTree]:
    """``(logdensity_fn, initial_position)`` for BlackJAX.

    ``logdensity_fn(position)`` is ``rb.log_density(log_joint, model, *args, jacobian=True)``
    with the model's free arrays replaced by ``position`` (a PyTree shaped like
    ``rb.partition(model)[0]``): the density of the unconstrained coordinates, the same
    target :func:`~reparam_bridge.sample` hands to NumPyro. ``initial_position`` is
    ``rb.partition(model)[0]``, the model's current (e.g. MAP) values. The same checks as
    ``rb.sample`` run first (no free arrays, non-bijective wrappers, non-scalar ``log_joint``).

    Example:
        >>> import blackjax  # doctest: +SKIP
        >>> fn, pos = rb.blackjax.logdensity(model, log_joint, y)  # doctest: +SKIP
        >>> warmup = blackjax.window_adaptation(blackjax.nuts, fn)  # doctest: +SKIP
        >>> (state, params), _ = warmup.run(key, pos, num_steps=500)  # doctest: +SKIP
    """
    model, args = auto_axes((model, args))
    params, static = check_model(model, log_joint, args, "rb.blackjax.logdensity")
    return free_logdensity(log_joint, static, args), params


def _stat(info: Any, name: str) -> np.ndarray | None:
    value = getattr(info, name, None)
    return None if value is None else np.asarray(value)


def posterior(
    model: PyTree,
    positions: PyTree,
    info: Any = None,
    *,
    chain_axis: bool = True,
    step_size: ArrayLike | None = None,
) -> Posterior:
    """A :class:`~reparam_bridge.Posterior` from BlackJAX positions.

    Args:
        model: the wrapped model given to :func:`logdensity` (its structure is used).
        positions: the ``position`` field of BlackJAX states (or the states themselves),
            every leaf shaped ``(chain, draw, ...)`` (``(draw, ...)`` with ``chain_axis=False``).
            Given the states, their ``logdensity`` becomes the ``lp`` sample stat.
        info: optional NUTS/HMC infos with the same leading axes; their divergences, step
            counts (and the tree depth they imply), energies and acceptance rates become
            ``sample_stats`` (ArviZ names).
        chain_axis: whether the leaves have a leading chain axis; if not, one is added.
        step_size: the adapted step size (``parameters["step_size"]`` from
            ``blackjax.window_adaptation``), a scalar or one per chain; recorded as the
            ``step_size`` sample stat, as after :func:`~reparam_bridge.sample`.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> model = {"s": rb.Positive(1.0)}
        >>> positions = {"s": rb.Positive.from_unconstrained(jnp.zeros((2, 3)))}  # 2 chains, 3 draws
        >>> post = rb.blackjax.posterior(model, rb.partition(positions)[0])
        >>> post.draws["s"]
        Array([[1., 1., 1.],
               [1., 1., 1.]], dtype=float32)
    """
    params, static = check_model(model, lambda m, *a: jnp.zeros(()), (), "rb.blackjax.posterior")
    states, positions = positions, getattr(positions, "position", positions)
    lp = getattr(states, "logdensity", None) if states is not positions else None
    if not chain_axis:
        positions = jax.tree_util.tree_map(lambda x: x[None], positions)
        info = None if info is None else jax.tree_util.tree_map(lambda x: x[None], info)
        lp = None if lp is None else lp[None]
    want = jax.tree_util.tree_structure(params)
    got = jax.tree_util.tree_structure(positions)
    if want != got:
        raise ValueError(
            "rb.blackjax.posterior: positions do not have the structure of rb.partition(model)[0] "
            f"(expected {want}, got {got}); pass state.position from a chain started at the position "
            "rb.blackjax.logdensity returned."
        )
    for p, x in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(positions)):
        if x.ndim < 2 or x.shape[2:] != p.shape:
            raise ValueError(
                f"rb.blackjax.posterior: a position leaf has shape {x.shape}, expected (chain, draw, *{p.shape}); "
                "stack draws along axis 1 and chains along axis 0 (or pass chain_axis=False for one chain)."
            )
    stats: dict[str, np.ndarray] = {}
    if info is not None:
        names = {
            "diverging": "is_divergent",
            "n_steps": "num_integration_steps",
            "energy": "energy",
            "acceptance_rate": "acceptance_rate",
        }
        for arviz_name, field in names.items():
            value = _stat(info, field)
            if value is not None:
                stats[arviz_name] = value.astype(bool) if arviz_name == "diverging" else value
        if "n_steps" in stats:
            stats["tree_depth"] = tree_depth(stats["n_steps"])
    chains, draws = jax.tree_util.tree_leaves(positions)[0].shape[:2]
    if lp is not None:
        stats["lp"] = np.asarray(lp)
    if step_size is not None:
        size = np.asarray(step_size)
        if size.shape not in ((), (1,), (chains,)):
            raise ValueError(
                f"rb.blackjax.posterior: step_size has shape {size.shape}; give one step size or one per "
                f"chain ({chains})."
            )
        stats["step_size"] = np.broadcast_to(size.reshape(-1, 1) if size.ndim else size, (chains, draws)).copy()
    post = Posterior(model, static, positions, stats)
    post.inference_library = "blackjax"
    return post
