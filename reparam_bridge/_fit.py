"""Optimisation of wrapped models with optax: :func:`fit` (any loss) and :func:`map_estimate`.

The loop works on the free arrays from :func:`partition`, rebuilds and unwraps the model
inside the loss, and projects :class:`Constraint` s with :func:`apply` after every step. It is
one compiled ``lax.scan`` per chunk of steps (arrays traced, everything else static, as
``eqx.filter_jit``); every chunk has the same length (when the chunk size does not divide
the steps, the last chunk is padded and its extra steps masked), so a run compiles once.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from . import _checks
from ._constraint import apply, contains_constraints
from ._convergence import Tolerance, report
from ._density import check_bijective, partition
from ._paths import path_to_str
from ._tree import unwrap
from ._util import NegLogDensity


class FitResult(eqx.Module):
    """What :func:`fit` and :func:`map_estimate` return.

    Attributes:
        model: the optimised model, **still wrapped** (call :func:`unwrap` or
            :func:`finalize` to use it, or hand it to ``rb.sample`` as a starting point).
        losses: the loss at the start of every step of this call, shape ``(steps,)``
            (for :func:`map_estimate`, the negative log-density).
        opt_state: the final optimiser state; pass it back as ``opt_state=`` to resume.
        converged: ``True``/``False`` whether ``tol``/``rtol`` was met; ``None`` if not judged.
        grad_norm: the norm of the gradient of the loss at the returned model.
    """

    model: PyTree
    losses: Float[Array, " steps"]
    opt_state: PyTree
    # Whether the tolerance was met (None: not judged, e.g. no tolerance given to fit) and
    # the gradient norm at the returned point; static, so results stay plain PyTrees.
    converged: bool | None = eqx.field(static=True, default=None)
    grad_norm: float | None = eqx.field(static=True, default=None)


_DEFAULT_ADAM: list = []


def _default_adam() -> optax.GradientTransformation:
    # One shared instance, so that repeated fits with the default hit the jit cache.
    if not _DEFAULT_ADAM:
        _DEFAULT_ADAM.append(optax.adam(1e-2))
    return _DEFAULT_ADAM[0]


class _UnwrappedLoss(NamedTuple):
    # ``loss_fn(unwrap(model), *args)``; a NamedTuple so equal wrappers hash equal (jit
    # cache) and cost nothing to build.
    loss_fn: Callable

    def __call__(self, model, *args):
        return self.loss_fn(unwrap(model), *args)


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


class _Loop(NamedTuple):
    """Everything static about a run; hashable, so equal runs share one compiled chunk."""

    objective: Callable
    optimizer: Any
    batch_size: int | None
    n_data: int
    project: bool
    chunk: int
    masked: bool
    init: bool  # initialise the optimiser state inside the chunk

    def value_fn(self, params, static, batch):
        return self.objective(eqx.combine(params, static), *batch)

    def step(self, params, opt_state, static, args, key, i):
        batch = _get_batch(args, key, i, self.batch_size, self.n_data)
        value, grads = jax.value_and_grad(self.value_fn)(params, static, batch)
        kwargs = {}
        if isinstance(self.optimizer, optax.GradientTransformationExtraArgs):
            kwargs = dict(value=value, grad=grads, value_fn=lambda p: self.value_fn(p, static, batch))
        updates, opt_state = self.optimizer.update(grads, opt_state, params, **kwargs)
        params = optax.apply_updates(params, updates)
        if self.project:
            params = partition(apply(eqx.combine(params, static)))[0]
        return params, opt_state, value, optax.global_norm(grads)


def _chunk(loop: _Loop, static, params, opt_state, start, n_steps, key, args):
    """``loop.chunk`` steps from global step ``start``; steps at or beyond ``n_steps`` leave
    the state unchanged when ``loop.masked`` (only a padded last chunk needs it).

    The carry is the optimiser state alone: per-step bookkeeping in the carry (selecting
    the old state after a failure) costs as much as a whole step of a small model. Failures
    are found afterwards instead: the first non-finite loss of the chunk, or non-finite
    parameters at its end (a non-finite gradient makes the next parameters non-finite with
    every optax optimiser that does not filter NaNs); :func:`_diagnose` replays to say which.
    Returns ``first_bad``: that step's index in the chunk, the number of steps run if only the
    final parameters are bad, or -1."""

    if loop.init:
        opt_state = loop.optimizer.init(params)

    def body(carry, i):
        params, opt_state = carry
        new_params, new_opt_state, value, gnorm = loop.step(params, opt_state, static, args, key, i)
        if loop.masked:
            keep = i < n_steps
            new_params, new_opt_state = jax.tree_util.tree_map(
                lambda a, b: jnp.where(keep, a, b), (new_params, new_opt_state), (params, opt_state)
            )
        return (new_params, new_opt_state), (value, gnorm)

    steps = start + jnp.arange(loop.chunk, dtype=start.dtype)
    (params, opt_state), (values, gnorms) = jax.lax.scan(body, (params, opt_state), steps)
    # The gradient at the point returned, so that a NaN there (a degenerate optimum such as
    # a scale collapsing to 0) is an error, and convergence is judged where we stop: one more
    # iteration of the same body, its update discarded. Same function, same shapes: JAX reuses
    # the body's trace, so the loss is still traced once per compilation.
    end = jnp.minimum(loop.chunk, n_steps - start)
    _, (_, final_gnorm) = jax.lax.scan(body, (params, opt_state), (start + end)[None])
    final_gnorm = final_gnorm[0]
    live = steps < n_steps
    never = jnp.asarray(loop.chunk + 2, start.dtype)
    first_bad = jnp.min(jnp.stack([
        jnp.where(jnp.any(~jnp.isfinite(values) & live), jnp.argmax(~jnp.isfinite(values) & live), never),
        # a non-finite gradient at step i: _diagnose replays to step i (first_bad - 1)
        jnp.where(jnp.any(~jnp.isfinite(gnorms) & live), jnp.argmax(~jnp.isfinite(gnorms) & live) + 1, never),
        jnp.where(_all_finite(params), never, end),
        jnp.where(jnp.isfinite(final_gnorm), never, end + 1),
    ]).astype(start.dtype))
    first_bad = jnp.where(first_bad == never, -1, first_bad)
    return params, opt_state, values, first_bad, final_gnorm


class _Box(eqx.Module):
    optimizer: Any = eqx.field(static=True)


@eqx.filter_jit
def _init_state(box: _Box, params):
    return box.optimizer.init(params)


class _Treedef:
    """The non-array part of the inputs of a chunk: a treedef and its non-array leaves,
    hashable, so that it can be a static argument of ``jax.jit``."""

    def __init__(self, treedef, is_array: tuple[bool, ...], others: tuple):
        self.treedef, self.is_array, self.others = treedef, is_array, others
        self._hash = hash((treedef, is_array, others))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return (isinstance(other, _Treedef) and self.treedef == other.treedef
                and self.is_array == other.is_array and self.others == other.others)

    def combine(self, arrays):
        arrays, others = iter(arrays), iter(self.others)
        leaves = [next(arrays) if a else next(others) for a in self.is_array]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _chunk_jit(loop, treedef: _Treedef, arrays):
    return _chunk(loop, *treedef.combine(arrays))


def _run_chunk(loop: _Loop, *inputs):
    """``_chunk`` compiled: what ``eqx.filter_jit`` does (arrays traced, everything else
    static), with one flatten and ``jax.jit``'s C++ dispatch, which cuts the fixed cost of a
    call by about half; falls back to ``eqx.filter_jit`` if a non-array leaf is unhashable."""
    leaves, treedef = jax.tree_util.tree_flatten(inputs)
    is_array = tuple(eqx.is_array(x) for x in leaves)
    try:
        spec = _Treedef(treedef, is_array, tuple(x for x, a in zip(leaves, is_array) if not a))
    except TypeError:  # an unhashable static leaf
        return _chunk_filter_jit(loop, *inputs)
    return _chunk_jit(loop, spec, [x for x, a in zip(leaves, is_array) if a])


_chunk_filter_jit = eqx.filter_jit(_chunk)


def _diagnose(loop: _Loop, static, params, opt_state, start: int, bad: int, values, key, args,
              what: str) -> str:
    """The error message for a failure found at global step ``bad`` of the chunk that began
    at ``start`` with ``params``/``opt_state``: replay to step ``bad - 1`` (error path only,
    so the extra compile is fine) and look at its gradient."""
    prev = bad - 1
    if prev >= start:
        replay = loop._replace(masked=True)  # same init flag: same opt_state input
        at, *_ = _run_chunk(replay, static, params, opt_state, np.asarray(start, np.int32),
                            np.asarray(prev, np.int32), key, args)
        batch = _get_batch(args, key, jnp.asarray(prev), loop.batch_size, loop.n_data)
        value, grads = jax.value_and_grad(loop.value_fn)(at, static, batch)
        paths = [
            path_to_str(path)
            for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]
            if not bool(jnp.all(jnp.isfinite(g)))
        ]
        if paths:
            return (
                f"{what}: the gradient became non-finite at step {prev} (0-based; loss "
                f"{float(value)}) for parameter(s) {paths}; no result is returned. Lower the "
                "learning rate or reparameterise those parameters."
            )
    if bad - start < len(values) and not np.isfinite(float(values[bad - start])):
        return (
            f"{what}: the loss became non-finite ({float(values[bad - start])}) at step {bad} "
            "(0-based); no result is returned. Check the data and the initial values, lower the "
            "learning rate, or constrain the parameter that leaves its domain."
        )
    return (
        f"{what}: the optimiser made the parameters non-finite at step {prev} (0-based) although "
        "the loss and gradient were finite; no result is returned. Lower the learning rate."
    )


def _fit(objective, model, args, *, optimizer, steps, opt_state, batch_size, key, progress_bar,
         chunk_size, what, tol=None, rtol=None, warn=None) -> FitResult:
    steps = _checks.check_int("steps", steps, what, minimum=0)
    tolerance = Tolerance.of(tol, rtol, what)
    _checks.preflight(model, what, density=what.startswith("map_estimate"))
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"{what}: optimizer must be an optax transformation (optax.adam(1e-2)), got {optimizer!r}.")
    if key is not None:
        _checks.check_key(key, what)
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
    steps = int(steps)
    # with a tolerance, chunks are the points where the loop may stop early
    chunk = int(chunk_size) if chunk_size is not None else _default_chunk(steps, progress_bar or tolerance.active)
    if chunk < 1:
        raise ValueError(f"{what}: chunk_size must be >= 1, got {chunk_size}.")
    n_chunks = -(-steps // chunk)
    # A single chunk initialises the optimiser itself (one dispatch, not two); several
    # chunks share one compiled function, so the state is initialised beforehand.
    fused_init = opt_state is None and n_chunks == 1
    if opt_state is None and not fused_init:
        opt_state = _init_state(_Box(optimizer), params)
    loop = _Loop(objective, optimizer, batch_size, n_data, contains_constraints(model), chunk,
                 masked=steps % chunk != 0, init=fused_init)

    losses = []
    start_params, final_gnorm = params, float("nan")
    n_steps = np.asarray(steps, np.int32)
    bar = None
    if progress_bar and n_chunks:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=what, leave=True)
    try:
        for c in range(n_chunks):
            start = np.asarray(c * chunk, np.int32)
            try:
                new_params, new_opt_state, values, first_bad, final_gnorm = _run_chunk(
                    loop, static, params, opt_state, start, n_steps, key, args
                )
            except TypeError as e:  # checked here, not up front, to keep the per-call cost nil
                if "scalar" in str(e):
                    raise ValueError(
                        f"{what}: the loss must be a scalar (JAX said: {str(e).splitlines()[0]}); "
                        "reduce it, e.g. with .sum() or .mean()."
                    ) from e
                raise
            first_bad = int(first_bad)
            if first_bad >= 0:
                raise ValueError(_diagnose(loop, static, params, opt_state, c * chunk,
                                           c * chunk + first_bad, values, key, args, what))
            params, opt_state = new_params, new_opt_state
            if loop.init and c + 1 < n_chunks:
                loop = loop._replace(init=False)
            n = min(chunk, steps - c * chunk)
            losses.append(values if n == chunk else values[:n])
            if bar is not None:
                bar.update(n)
                bar.set_postfix(loss=f"{float(values[n - 1]):.6g}")
            final_gnorm = float(final_gnorm)
            if tolerance.active and tolerance.met(np.concatenate([np.asarray(v) for v in losses]), final_gnorm):
                break
    finally:
        if bar is not None:
            bar.close()
    if len(losses) == 1:
        losses = losses[0]
    else:
        losses = jnp.concatenate(losses) if losses else jnp.zeros((0,))
    warn = tolerance.active if warn is None else warn
    def grads_at_end():  # on the warning path only: per-parameter gradients for the message
        batch = _get_batch(args, key, jnp.asarray(steps), loop.batch_size, loop.n_data)
        return jax.grad(loop.value_fn)(params, static, batch)

    converged = report(what, tolerance, losses, final_gnorm, start_params, params, grads_at_end,
                       warn=warn and batch_size is None, steps=steps)
    return FitResult(model=eqx.combine(params, static), losses=losses, opt_state=opt_state,
                     converged=converged, grad_norm=final_gnorm)


def _default_chunk(steps: int, progress_bar: bool) -> int:
    if not progress_bar or steps <= 100:
        return max(steps, 1)
    # About 20 updates of the bar, each chunk at least 50 steps; a divisor of steps when
    # there is one close by, so that no chunk needs masking.
    target = max(50, math.ceil(steps / 20))
    for size in range(target, 2 * target + 1):
        if steps % size == 0:
            return size
    return target


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
    tol: float | None = None,
    rtol: float | None = None,
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
            when the bar is off and no tolerance is given, else about 20 chunks.
        tol: stop (at the end of a chunk) once the gradient norm is at most
            ``tol * max(1, |loss|)``; ``rtol``: once the loss changed by at most
            ``rtol * max(1, |loss|)`` in one step. If given and not met, a
            ``rb.ReliabilityWarning`` says so; ``result.converged`` records it.

    Returns:
        A :class:`FitResult` with ``.model`` (still wrapped), ``.losses`` and ``.opt_state``.

    Raises:
        ValueError: if the loss or a gradient becomes NaN or infinite (also at the returned
            point), naming the step (and the parameters whose gradient is non-finite), or if the
            objective is unbounded along a parameter that ran away; no partial result is returned.

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
        tol=tol, rtol=rtol,
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
    (on the power-law example of ``benchmarks/bench_fit.py``, L-BFGS reaches the optimum,
    loss 37.26, in about 20 steps; ``adam(1e-2)`` is at 244 after 1,000). With ``batch_size`` or with
    :class:`Constraint` s in the model, where a line search is wrong, the default is
    ``optax.adam(1e-2)`` for ``steps=1000``. ``fit_kwargs`` go to :func:`fit`; ``tol`` defaults
    to ``1e-3`` here (without Constraints), so the fit stops once converged, ``converged`` says
    whether it did and a ``rb.ReliabilityWarning`` says when it did not.

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
    _checks.check_callable("log_joint", log_joint, "map_estimate")
    _checks.preflight(model, "map_estimate", density=True)
    if jacobian:
        check_bijective(model, "map_estimate(..., jacobian=True)")
    if optimizer is None and fit_kwargs.get("batch_size") is None and not contains_constraints(model):
        optimizer = _default_lbfgs()
        steps = 100 if steps is None else steps
    steps = 1000 if steps is None else steps
    _checks.eval_density(log_joint, model, args, "map_estimate")
    # A MAP is only useful at an optimum: judged by default, and a warning if not reached.
    # (Not with Constraints: a projected optimum at a bound has a non-zero gradient.)
    judged = fit_kwargs.get("rtol") is None and not contains_constraints(model)
    fit_kwargs.setdefault("tol", _MAP_TOL if judged else None)
    return _fit(
        NegLogDensity(log_joint, jacobian), model, args, optimizer=optimizer, steps=steps,
        what="map_estimate", **{**_FIT_DEFAULTS, **fit_kwargs},
    )


_MAP_TOL = 1e-3  # gradient norm <= 1e-3 * max(1, |log density|): reached by L-BFGS in float32


_FIT_DEFAULTS = dict(opt_state=None, batch_size=None, key=None, progress_bar=True, chunk_size=None)

_DEFAULT_LBFGS: list = []


def _default_lbfgs() -> optax.GradientTransformation:
    if not _DEFAULT_LBFGS:
        _DEFAULT_LBFGS.append(optax.lbfgs())
    return _DEFAULT_LBFGS[0]
