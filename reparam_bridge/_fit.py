"""Optimisation of wrapped models with optax: :func:`fit` (any loss) and :func:`map_estimate`.

The loop works on the free arrays from :func:`partition`, rebuilds and unwraps the model
inside the loss, and projects :class:`Constraint` s with :func:`apply` after every step. It is
one ``eqx.filter_jit``-compiled ``lax.scan`` per chunk of steps; every chunk has the same
length (the last one is padded and its extra steps masked), so a run compiles exactly once.
"""

import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._constraint import apply, contains_constraints
from ._density import check_bijective, log_density, partition
from ._paths import path_to_str
from ._unwrappable import unwrap


class FitResult(eqx.Module):
    """What :func:`fit` and :func:`map_estimate` return.

    Attributes:
        model: the optimised model, **still wrapped** (call :func:`unwrap` or
            :func:`finalize` to use it, or hand it to ``rb.sample`` as a starting point).
        losses: the loss at the start of every step of this call, shape ``(steps,)``
            (for :func:`map_estimate`, the negative log-density).
        opt_state: the final optimiser state; pass it back as ``opt_state=`` to resume.
    """

    model: PyTree
    losses: Float[Array, " steps"]
    opt_state: PyTree


_DEFAULT_ADAM: list = []


def _default_adam() -> optax.GradientTransformation:
    # One shared instance, so that repeated fits with the default hit the jit cache.
    if not _DEFAULT_ADAM:
        _DEFAULT_ADAM.append(optax.adam(1e-2))
    return _DEFAULT_ADAM[0]


class _UnwrappedLoss(eqx.Module):
    # ``loss_fn(unwrap(model), *args)``; a Module so equal wrappers hash equal (jit cache).
    loss_fn: Callable = eqx.field(static=True)

    def __call__(self, model, *args):
        return self.loss_fn(unwrap(model), *args)


class _NegLogDensity(eqx.Module):
    log_joint: Callable = eqx.field(static=True)
    jacobian: bool = eqx.field(static=True)

    def __call__(self, model, *args):
        return -log_density(self.log_joint, model, *args, jacobian=self.jacobian)


# ----------------------------------------------------------------------------------------
# mini-batches


def _batch_size_of(args: tuple) -> int:
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


def _get_batch(args: tuple, key: PRNGKeyArray | None, step: Array, batch_size: int | None, n: int):
    if batch_size is None:
        return args
    # Uniform indices, drawn afresh each step from fold_in(key, step).
    idx = jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0, n)
    return jax.tree_util.tree_map(lambda x: jnp.take(x, idx, axis=0), args)


# ----------------------------------------------------------------------------------------
# the compiled loop


def _all_finite(tree: PyTree) -> Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _make_step(objective, static, optimizer, batch_size, n_data, project):
    extra_args = isinstance(optimizer, optax.GradientTransformationExtraArgs)

    def value_fn(params, batch):
        return objective(eqx.combine(params, static), *batch)

    def step(carry, args, key, n_steps):
        params, opt_state, i, status = carry
        batch = _get_batch(args, key, i, batch_size, n_data)
        value, grads = jax.value_and_grad(value_fn)(params, batch)
        kwargs = {}
        if extra_args:
            kwargs = dict(value=value, grad=grads, value_fn=lambda p: value_fn(p, batch))
        updates, new_opt_state = optimizer.update(grads, opt_state, params, **kwargs)
        new_params = optax.apply_updates(params, updates)
        if project:
            new_params = partition(apply(eqx.combine(new_params, static)))[0]
        # status: 0 fine, 1 non-finite loss, 2 non-finite gradient (first bad step kept).
        bad = jnp.where(jnp.isfinite(value), jnp.where(_all_finite(grads), 0, 2), 1)
        status = jnp.where(status == 0, bad, status)
        keep = (status == 0) & (i < n_steps)
        select = lambda new, old: jax.tree_util.tree_map(  # noqa: E731
            lambda a, b: jnp.where(keep, a, b), new, old
        )
        params = select(new_params, params)
        opt_state = select(new_opt_state, opt_state)
        i = jnp.where(keep, i + 1, i)
        return (params, opt_state, i, status), value

    return step


@eqx.filter_jit
def _run_chunk(objective, static, optimizer, batch_size, n_data, project, chunk, params, opt_state,
               i, status, n_steps, key, args):
    step = _make_step(objective, static, optimizer, batch_size, n_data, project)
    carry, values = jax.lax.scan(
        lambda c, _: step(c, args, key, n_steps), (params, opt_state, i, status), None, length=chunk
    )
    return carry, values


def _nonfinite_paths(objective, static, params, args, key, step, batch_size, n_data) -> list[str]:
    batch = _get_batch(args, key, jnp.asarray(step), batch_size, n_data)
    grads = jax.grad(lambda p: objective(eqx.combine(p, static), *batch))(params)
    return [
        path_to_str(path)
        for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
        if not bool(jnp.all(jnp.isfinite(g)))
    ]


def _fit(objective, model, args, *, optimizer, steps, opt_state, batch_size, key, progress_bar,
         chunk_size, what) -> FitResult:
    if not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"{what}: steps must be a non-negative int, got {steps!r}.")
    optimizer = _default_adam() if optimizer is None else optimizer
    params, static = partition(model)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError(
            f"{what}: the model has no free arrays to optimise (everything is static or "
            "rb.NonTrainable)."
        )
    n_data = 0
    if batch_size is not None:
        if key is None:
            raise ValueError(f"{what}: batch_size={batch_size} needs key= (a jax.random key) to draw batches.")
        n_data = _batch_size_of(args)
        if not 0 < batch_size <= n_data:
            raise ValueError(f"{what}: batch_size must be in 1..{n_data} (the data size), got {batch_size}.")
        batch_size = int(batch_size)
    if opt_state is None:
        opt_state = optimizer.init(params)
    project = contains_constraints(model)
    steps = int(steps)
    chunk = int(chunk_size) if chunk_size is not None else _default_chunk(steps, progress_bar)
    if chunk < 1:
        raise ValueError(f"{what}: chunk_size must be >= 1, got {chunk_size}.")
    n_chunks = math.ceil(steps / chunk) if steps else 0

    i, status = jnp.asarray(0), jnp.asarray(0)
    n_steps = jnp.asarray(steps)
    losses = []
    bar = None
    if progress_bar and n_chunks:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=what, leave=True)
    try:
        for c in range(n_chunks):
            (params, opt_state, i, status), values = _run_chunk(
                objective, static, optimizer, batch_size, n_data, project, chunk,
                params, opt_state, i, status, n_steps, key, args,
            )
            done = min(steps, (c + 1) * chunk)
            losses.append(values[: done - c * chunk])
            code = int(status)
            if code:
                bad = int(i)
                loss = float(jnp.concatenate(losses)[bad])
                if code == 1:
                    raise ValueError(
                        f"{what}: the loss became non-finite ({loss}) at step {bad} (0-based); "
                        "no result is returned. Check the data and the initial values, lower the "
                        "learning rate, or constrain the parameter that leaves its domain."
                    )
                paths = _nonfinite_paths(objective, static, params, args, key, bad, batch_size, n_data)
                raise ValueError(
                    f"{what}: the gradient became non-finite at step {bad} (0-based; loss {loss}) "
                    f"for parameter(s) {paths}; no result is returned. Lower the learning rate or "
                    "reparameterise those parameters."
                )
            if bar is not None:
                bar.update(done - c * chunk)
                bar.set_postfix(loss=f"{float(values[done - c * chunk - 1]):.6g}")
    finally:
        if bar is not None:
            bar.close()
    losses = jnp.concatenate(losses) if losses else jnp.zeros((0,))
    return FitResult(model=eqx.combine(params, static), losses=losses, opt_state=opt_state)


def _default_chunk(steps: int, progress_bar: bool) -> int:
    if not progress_bar or steps <= 100:
        return max(steps, 1)
    # About 20 updates of the bar, each chunk at least 50 steps.
    return max(50, math.ceil(steps / 20))


def fit(
    model: PyTree,
    loss_fn: Callable[..., Float[Array, ""]],
    *args: Any,
    optimizer: optax.GradientTransformation | None = None,
    steps: int = 1000,
    opt_state: PyTree | None = None,
    batch_size: int | None = None,
    key: PRNGKeyArray | None = None,
    progress_bar: bool = True,
    chunk_size: int | None = None,
) -> FitResult:
    """Minimise ``loss_fn(unwrap(model), *args)`` over the free arrays of ``model`` with optax.

    After every optimiser step the :class:`Constraint` s of the model are applied
    (:func:`apply`), so e.g. a :class:`NonNegative` parameter is exactly non-negative;
    :class:`NonTrainable` content, bounds and static fields never move. The input model is
    not modified.

    Args:
        model: the wrapped model (any PyTree).
        loss_fn: ``loss_fn(unwrapped_model, *args) -> scalar``.
        *args: data, passed through to ``loss_fn`` (and split into batches if
            ``batch_size`` is given).
        optimizer: any optax transformation (default ``optax.adam(1e-2)``). Ones that need
            extra arguments, such as ``optax.lbfgs``, get ``value``, ``grad`` and ``value_fn``.
        steps: number of optimiser steps.
        opt_state: an optimiser state from a previous result, to resume from.
        batch_size: if given, each step uses ``batch_size`` rows drawn uniformly (with
            replacement) along the leading axis shared by every array in ``args``.
        key: a ``jax.random`` key, required with ``batch_size``.
        progress_bar: show a tqdm bar with the current loss.
        chunk_size: steps per compiled ``lax.scan`` (and per bar update). Default: all steps
            when the bar is off, else about 20 chunks.

    Returns:
        A :class:`FitResult` with ``.model`` (still wrapped), ``.losses`` and ``.opt_state``.

    Raises:
        ValueError: if the loss or a gradient becomes NaN or infinite, naming the step (and
            the parameters whose gradient is non-finite); no partial result is returned.

    Example:
        >>> import jax.numpy as jnp, optax
        >>> import reparam_bridge as rb
        >>> x = jnp.linspace(0.0, 1.0, 20)
        >>> y = -2.0 * x + 1.0
        >>> model = {"slope": rb.NonNegative(jnp.array(1.0)), "offset": jnp.array(0.0)}
        >>> loss = lambda m, x, y: jnp.mean((m["slope"] * x + m["offset"] - y) ** 2)
        >>> res = rb.fit(model, loss, x, y, optimizer=optax.adam(0.05), steps=300, progress_bar=False)
        >>> float(rb.finalize(res.model)["slope"]), res.losses.shape
        (0.0, (300,))
    """
    return _fit(
        _UnwrappedLoss(loss_fn), model, args, optimizer=optimizer, steps=steps, opt_state=opt_state,
        batch_size=batch_size, key=key, progress_bar=progress_bar, chunk_size=chunk_size, what="fit",
    )


def map_estimate(
    model: PyTree,
    log_joint: Callable[..., Float[Array, ""]],
    *args: Any,
    jacobian: bool = False,
    optimizer: optax.GradientTransformation | None = None,
    steps: int | None = None,
    **fit_kwargs: Any,
) -> FitResult:
    """Maximum a posteriori: maximise ``log_joint(unwrap(model), *args) + log_prior(model)``.

    ``jacobian=False`` (the default) gives the usual MAP, the mode of the posterior density
    of the *constrained* values, which does not depend on how the model is parameterised.
    ``jacobian=True`` also adds ``log_det_jacobian(model)`` and so finds the mode of the
    density of the free, *unconstrained* arrays that ``rb.sample`` and :func:`laplace` work
    with. The two differ: for a scale ``s = rb.Positive(...)`` (``s = exp(u)``) with posterior
    ``LogNormal(mu, sigma)``, the constrained density peaks at ``s = exp(mu - sigma²)`` while
    the density of ``u = log s`` is ``Normal(mu, sigma)`` and peaks at ``u = mu``, i.e.
    ``s = exp(mu)`` — larger by a factor ``exp(sigma²)``. Use ``jacobian=False`` for a
    point estimate, ``jacobian=True`` to start a sampler or centre a Laplace approximation.

    The default optimiser is ``optax.lbfgs()`` (zoom line search) for ``steps=100``: on
    smooth full-batch MAP problems it converges in tens of steps where Adam needs thousands
    (on the power-law example of ``benchmarks/bench_fit.py``, L-BFGS reaches the optimum in
    about 20 steps; ``adam(1e-2)`` is still far off after 3,000). With ``batch_size`` or with
    :class:`Constraint` s in the model, where a line search is wrong, the default is
    ``optax.adam(1e-2)`` for ``steps=1000``. ``fit_kwargs`` go to :func:`fit`.

    Returns the same :class:`FitResult` as :func:`fit`; ``losses`` holds the negative
    log-density.

    Example:
        >>> import jax.numpy as jnp
        >>> import numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> # posterior of s is LogNormal(0, 0.5): modes exp(-0.25) and exp(0)
        >>> model = {"s": rb.Positive(2.0, prior=dist.LogNormal(0.0, 0.5))}
        >>> nothing = lambda m: 0.0
        >>> a = rb.map_estimate(model, nothing, progress_bar=False)
        >>> b = rb.map_estimate(model, nothing, jacobian=True, progress_bar=False)
        >>> round(float(rb.unwrap(a.model)["s"]), 4), round(float(rb.unwrap(b.model)["s"]), 4)
        (0.7788, 1.0)
    """
    if jacobian:
        check_bijective(model, "map_estimate(..., jacobian=True)")
    if optimizer is None and fit_kwargs.get("batch_size") is None and not contains_constraints(model):
        optimizer = _default_lbfgs()
        steps = 100 if steps is None else steps
    steps = 1000 if steps is None else steps
    return _fit(
        _NegLogDensity(log_joint, jacobian), model, args, optimizer=optimizer, steps=steps,
        what="map_estimate", **{**_FIT_DEFAULTS, **fit_kwargs},
    )


_FIT_DEFAULTS = dict(opt_state=None, batch_size=None, key=None, progress_bar=True, chunk_size=None)

_DEFAULT_LBFGS: list = []


def _default_lbfgs() -> optax.GradientTransformation:
    if not _DEFAULT_LBFGS:
        _DEFAULT_LBFGS.append(optax.lbfgs())
    return _DEFAULT_LBFGS[0]
