"""Multi-start optimisation: :func:`map_estimate_ensemble` and :func:`fit_ensemble` run one
optimisation per start in a single compiled, vmapped call, with the Equinox ensemble idiom
(the models are built under ``eqx.filter_vmap``, so every free array gains a leading
``start`` axis while bijectors, bounds and static fields stay shared).

The optimisation loop is a plain ``lax.scan`` of optax steps here rather than
``rb.fit``'s chunked loop: a vmapped run has no per-chunk progress bar or early NaN report
to offer, and keeping it separate leaves ``rb.fit``'s dispatch free to change.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._constraint import apply, contains_constraints
from ._density import check_bijective, partition
from ._mesh import auto_axes
from ._tree import unwrap
from ._util import NegLogDensity


class EnsembleResult(eqx.Module):
    """What :func:`map_estimate_ensemble` and :func:`fit_ensemble` return.

    Attributes:
        models: the optimised models, still wrapped, every free array with a leading
            ``start`` axis (index it with :meth:`model`).
        losses: ``(start, steps)`` loss at the start of every step.
        final_loss: ``(start,)`` loss at each optimum (``inf`` where the run failed).
        mode_labels: ``(start,)`` which distinct optimum each start reached (0 = best).
        num_modes: the number of distinct optima among the finite ones.
        multimodal: ``num_modes > 1``: the starts disagree (several modes, or runs that
            have not converged: more ``steps`` tells which).
    """

    models: PyTree
    losses: Float[Array, "start steps"]
    final_loss: Float[Array, " start"]
    mode_labels: tuple[int, ...] = eqx.field(static=True)
    num_modes: int = eqx.field(static=True)

    @property
    def multimodal(self) -> bool:
        return self.num_modes > 1

    @property
    def num_starts(self) -> int:
        return int(self.final_loss.shape[0])

    def model(self, i: int | None = None) -> PyTree:
        """The ``i``-th optimised model (default: the one with the lowest loss)."""
        i = int(jnp.nanargmin(self.final_loss)) if i is None else i
        params, static = partition(self.models)
        return eqx.combine(jax.tree_util.tree_map(lambda x: x[i], params), static)

    def initial_params(self, key: PRNGKeyArray, num_chains: int, jitter: float = 0.0) -> PyTree:
        """Free arrays for ``num_chains`` chains, leading axis the chain: the distinct optima in
        turn (best first, so every mode gets a chain), plus uniform jitter of half-width
        ``jitter`` so that chains at one optimum do not start at the same point."""
        params = partition(self.models)[0]
        order = _chain_order(np.asarray(self.final_loss), self.mode_labels, num_chains)
        starts = jax.tree_util.tree_map(lambda x: x[jnp.asarray(order)], params)
        leaves, treedef = jax.tree_util.tree_flatten(starts)
        keys = jax.random.split(key, len(leaves))
        leaves = [x + jitter * jax.random.uniform(k, x.shape, x.dtype, -1.0, 1.0) for x, k in zip(leaves, keys)]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def __repr__(self) -> str:
        losses = ", ".join(f"{v:.4g}" for v in np.asarray(self.final_loss))
        return f"EnsembleResult(num_starts={self.num_starts}, num_modes={self.num_modes}, final_loss=[{losses}])"


def _chain_order(final_loss: np.ndarray, labels: tuple[int, ...], num_chains: int) -> list[int]:
    ok = [i for i in np.argsort(final_loss) if np.isfinite(final_loss[i])]
    firsts = list(dict.fromkeys(labels[i] for i in ok))
    by_mode = {m: [i for i in ok if labels[i] == m] for m in firsts}
    order, r = [], 0
    while len(order) < num_chains:
        for m in firsts:
            members = by_mode[m]
            order.append(members[r % len(members)])
            if len(order) == num_chains:
                break
        r += 1
    return order


def _cluster(flat: np.ndarray, loss: np.ndarray, rtol: float, loss_tol: float) -> tuple[tuple[int, ...], int]:
    """Label optima: two agree when their losses differ by < ``loss_tol`` and their unconstrained
    values by < ``rtol`` relative (per coordinate, scaled by ``1 + |value|``). Label 0 is the best."""
    labels = [-1] * len(loss)
    reps: list[int] = []
    for i in np.argsort(loss):
        if not np.isfinite(loss[i]):
            continue
        for m, j in enumerate(reps):
            close = np.all(np.abs(flat[i] - flat[j]) <= rtol * (1.0 + np.abs(flat[j])))
            if close and abs(loss[i] - loss[j]) < loss_tol:
                labels[i] = m
                break
        else:
            labels[i] = len(reps)
            reps.append(i)
    return tuple(labels), len(reps)


def _perturbed_ensemble(model: PyTree, key: PRNGKeyArray, num_starts: int, init_radius: float) -> PyTree:
    """The ensemble idiom: build ``num_starts`` models under ``eqx.filter_vmap``; start 0 is
    the model as given, the others are perturbed uniformly in unconstrained space."""
    params, static = partition(model)

    @eqx.filter_vmap
    def make(k, scale):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        ks = jax.random.split(k, len(leaves))
        moved = [
            x + scale * init_radius * jax.random.uniform(kk, x.shape, x.dtype, -1.0, 1.0) for x, kk in zip(leaves, ks)
        ]
        return eqx.combine(jax.tree_util.tree_unflatten(treedef, moved), static)

    scale = jnp.ones(num_starts).at[0].set(0.0)
    return make(jax.random.split(key, num_starts), scale)


@eqx.filter_jit
def _run(objective: Callable, optimizer, ensemble: PyTree, args: tuple, steps: int, project: bool):
    params, static = partition(ensemble)

    def one(p):
        value_fn = lambda q: objective(eqx.combine(q, static), *args)  # noqa: E731
        extra = isinstance(optimizer, optax.GradientTransformationExtraArgs)

        def body(carry, _):
            p, state = carry
            value, grads = jax.value_and_grad(value_fn)(p)
            kw = dict(value=value, grad=grads, value_fn=value_fn) if extra else {}
            updates, state = optimizer.update(grads, state, p, **kw)
            new = optax.apply_updates(p, updates)
            if project:
                new = partition(apply(eqx.combine(new, static)))[0]
            # a failed run (non-finite loss) keeps its last finite point and reports inf
            ok = jnp.isfinite(value)
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, p)
            return (new, state), value

        (p, _), values = jax.lax.scan(body, (p, optimizer.init(p)), None, length=steps)
        final = value_fn(p)
        return p, values, jnp.where(jnp.isfinite(final), final, jnp.inf)

    out, values, final = jax.vmap(one)(params)
    return eqx.combine(out, static), values, final


def _ensemble(objective, model, args, key, num_starts, init_radius, optimizer, steps, rtol, loss_tol, what):
    if not (isinstance(num_starts, int) and num_starts >= 1):
        raise ValueError(f"{what}: num_starts must be a positive integer, got {num_starts!r}.")
    if key is None or not isinstance(key, jax.Array):
        raise TypeError(f"{what} needs key=jax.random.key(...) to perturb the starts.")
    model, args = auto_axes((model, args))
    params, _ = partition(model)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError(f"{what}: the model has no free arrays to optimise.")
    ensemble = _perturbed_ensemble(model, key, num_starts, init_radius)
    models, losses, final = _run(objective, optimizer, ensemble, args, int(steps), contains_constraints(model))
    flat = np.asarray(jax.vmap(lambda p: ravel_pytree(p)[0])(partition(models)[0]))
    final_np = np.asarray(final, dtype=np.float64)
    if not np.isfinite(final_np).any():
        raise ValueError(
            f"{what}: every start ended at a non-finite loss; start from valid values or lower init_radius."
        )
    labels, num_modes = _cluster(flat, final_np, rtol, loss_tol)
    return EnsembleResult(models=models, losses=losses, final_loss=final, mode_labels=labels, num_modes=num_modes)


def map_estimate_ensemble(
    model: PyTree,
    log_joint: Callable[..., Float[Array, ""]],
    *args: Any,
    key: PRNGKeyArray,
    num_starts: int = 8,
    init_radius: float = 2.0,
    jacobian: bool = True,
    optimizer: optax.GradientTransformation | None = None,
    steps: int | None = None,
    rtol: float = 1e-2,
    loss_tol: float = 1e-2,
) -> EnsembleResult:
    """:func:`map_estimate` from ``num_starts`` starts at once (one compiled, vmapped run).

    Start 0 is ``model`` itself; the others add uniform noise of half-width ``init_radius`` to
    its free, unconstrained arrays (Stan's ``init=2`` convention). ``jacobian=True`` (the
    default here) finds modes of the density ``rb.sample`` explores, so the optima can be
    per-chain starts: ``rb.sample(model, log_joint, *args, key=..., init=result)``. Optima
    that differ (loss by ``loss_tol`` or values by ``rtol``) are counted in ``num_modes``.
    Default optimiser: ``optax.lbfgs()`` for 100 steps (``optax.adam(1e-2)``, 1,000 steps,
    with :class:`Constraint` s).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> # a density with modes at x = -2 and x = +2
        >>> log_joint = lambda m: jnp.logaddexp(-0.5 * (m["x"] - 2) ** 2, -0.5 * (m["x"] + 2) ** 2)
        >>> res = rb.map_estimate_ensemble({"x": rb.Real(0.3)}, log_joint, key=jax.random.key(0),
        ...                                num_starts=6, init_radius=4.0)
        >>> res.multimodal, res.num_modes
        (True, 2)
    """
    if jacobian:
        check_bijective(model, "map_estimate_ensemble(..., jacobian=True)")
    if optimizer is None and not contains_constraints(model):
        optimizer, steps = optax.lbfgs(), 100 if steps is None else steps
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    steps = 1000 if steps is None else steps
    return _ensemble(
        NegLogDensity(log_joint, jacobian),
        model,
        args,
        key,
        num_starts,
        init_radius,
        optimizer,
        steps,
        rtol,
        loss_tol,
        "map_estimate_ensemble",
    )


def fit_ensemble(
    model: PyTree,
    loss_fn: Callable[..., Float[Array, ""]],
    *args: Any,
    key: PRNGKeyArray,
    num_starts: int = 8,
    init_radius: float = 2.0,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 1000,
    rtol: float = 1e-2,
    loss_tol: float = 1e-2,
) -> EnsembleResult:
    """:func:`fit` of ``loss_fn(unwrap(model), *args)`` from ``num_starts`` starts at once (one
    compiled, vmapped run; default ``optax.adam(1e-2)``); see :func:`map_estimate_ensemble`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> loss = lambda m: (m["s"] - 3.0) ** 2
        >>> res = rb.fit_ensemble({"s": rb.Positive(1.0)}, loss, key=jax.random.key(0), num_starts=4, steps=2000)
        >>> res.num_modes, round(float(rb.unwrap(res.model())["s"]), 3)
        (1, 3.0)
    """
    objective = lambda m, *a: loss_fn(unwrap(m), *a)  # noqa: E731
    optimizer = optax.adam(1e-2) if optimizer is None else optimizer
    return _ensemble(
        objective, model, args, key, num_starts, init_radius, optimizer, steps, rtol, loss_tol, "fit_ensemble"
    )
