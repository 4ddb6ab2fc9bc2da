"""Optimisation of wrapped models with optax: :func:`fit` (any loss) and :func:`map_estimate`.

The loop works on the free arrays from :func:`partition`, rebuilds and unwraps the model
inside the loss, and projects :class:`Constraint` s with :func:`apply` after every step. It is
one compiled ``lax.fori_loop`` (arrays traced, everything else static: ``_fitloop.Spec``)
whose start and stop steps are *traced*: a run is cut into chunks (for the progress bar)
of any lengths without compiling again, and the losses go into one buffer of all the steps.
Chunks are sized by time: a run expected to take under a quarter of a second is one chunk
(one dispatch, as a hand-written loop), a longer one updates the bar about four times a second.
The loop itself lives in ``_fitloop.py``; this module checks the input and drives it.
"""

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from . import _checks
from ._batches import batch_size_of, get_batch
from ._caches import Cache
from ._constraint import contains_constraints
from ._convergence import Movement, Tolerance, report
from ._density import partition
from ._fitloop import Info, Loop, Spec, constant, context, diagnose, run, strong_types
from ._fitplan import Plan
from ._mesh import auto_axes
from ._tree import unwrap
from ._util import to_numpy


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

    @classmethod
    def _of(cls, model, losses, opt_state, converged, grad_norm) -> "FitResult":
        # Built as equinox's own unflatten builds a module (object.__new__ + setattr): its
        # __init__ checks every leaf of every field for misuse, ~0.1-0.3 ms a fit (bench_fit).
        result = object.__new__(cls)
        fields = dict(model=model, losses=losses, opt_state=opt_state, converged=converged, grad_norm=grad_norm)
        for name, value in fields.items():
            object.__setattr__(result, name, value)
        return result


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


def run_fit(
    objective,
    model,
    args,
    *,
    optimizer,
    steps,
    opt_state,
    batch_size,
    key,
    progress_bar,
    chunk_size,
    what,
    tol=None,
    rtol=None,
    warn=None,
    checked=None,
    flat=None,
) -> FitResult:
    # checked: (contains_constraints(model),) when the caller has run the pre-flight checks;
    # flat: _checks.flat_signature((model, args)) when the caller has it (one flatten a call)
    steps = _checks.check_int("steps", steps, what, minimum=0)
    tolerance = Tolerance.of(tol, rtol, what)
    leaves, treedef, sig = _checks.flat_signature((model, args)) if flat is None else flat
    if checked is None:

        def checks() -> bool:  # of the model, once per signature of (model, args)
            _checks.preflight(model, what, density=what.startswith("map_estimate"))
            return contains_constraints(model)

        checked = (_checks.once(None if sig is None else ("fit", what, sig), checks),)
    constrained = checked[0]
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"{what}: optimizer must be an optax transformation (optax.adam(1e-2)), got {optimizer!r}.")
    if key is not None:
        _checks.check_key(key, what)
    optimizer = _default_adam() if optimizer is None else optimizer
    n_data = 0
    if batch_size is not None:
        if key is None:
            raise ValueError(f"{what}: batch_size={batch_size} needs key= (a jax.random key) to draw batches.")
        n_data = batch_size_of(args)
        if not 0 < batch_size <= n_data:
            raise ValueError(f"{what}: batch_size must be in 1..{n_data} (the data size), got {batch_size}.")
        batch_size = int(batch_size)
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"{what}: chunk_size must be >= 1, got {chunk_size}.")
    spec = _spec(Loop(objective, optimizer, batch_size, n_data, constrained), leaves, treedef, sig, model, what)
    if not spec.free:
        raise ValueError(f"{what}: the model has no free arrays to optimise (everything is static or rb.NonTrainable).")
    arrays = spec.arrays(auto_axes(leaves))
    origin = [arrays[k] for k in spec.free]
    if opt_state is None:
        state, state_def = spec.initial_state(origin, lambda: partition(spec.model(arrays))[0])
    else:
        state, state_def = jax.tree_util.tree_flatten(strong_types(opt_state))
    losses = constant(0.0, spec.loss_dtype, (steps,))
    # with a tolerance, chunk ends are where the loop may stop early
    plan = Plan(
        steps,
        chunk_size,
        progress_bar or tolerance.active,
        spec.seconds_per_step.get(steps),
        compiled=(steps, key is None) in spec.ran,
        stopped=spec.stopped.get(steps) if tolerance.active else None,
    )

    def result(arrays: list, state: list) -> tuple[PyTree, PyTree]:  # the model and state returned
        return spec.model(arrays), jax.tree_util.tree_unflatten(state_def, state)

    info, bar, out = None, None, None
    if progress_bar and steps and not plan.short():
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=what, leave=True)
    try:
        start = 0
        while start < steps:
            stop = plan.next_stop(start)
            t0 = time.perf_counter()
            chunk = (arrays, state, losses, constant(start, np.int32))

            def replay(k, chunk=chunk):  # the same compiled loop, stopped at step k
                return Info.of(run(spec, state_def, *chunk, np.int32(k), key, origin)[3], steps, k)

            try:
                new_free, new_state, new_losses, info = run(
                    spec, state_def, *chunk, constant(stop, np.int32), key, origin
                )
            except TypeError as e:  # checked here, not up front, to keep the per-call cost nil
                if "scalar" in str(e):
                    raise ValueError(
                        f"{what}: the loss must be a scalar (JAX said: {str(e).splitlines()[0]}); "
                        "reduce it, e.g. with .sum() or .mean()."
                    ) from e
                raise
            new_arrays = spec.with_free(arrays, new_free)
            if stop == steps:
                # The result, built while the last chunk computes: where the computation has a
                # core of its own this costs (almost) no time; after the read it would (0.28 ms of
                # Python after a 3,000-step loop: +0.25-0.5 ms after the read, +0.03-0.16 before
                # it; two cores, cold caches after XLA's work). On one core it saves nothing.
                out = result(new_arrays, new_state)
            info = Info.of(info, steps, stop)  # one transfer: everything the host needs
            if info.first_bad >= 0:
                raise ValueError(diagnose(replay, info.first_bad, spec.names, what))
            plan.record(start, stop, time.perf_counter() - t0)
            arrays, state, losses = new_arrays, new_state, new_losses
            if bar is not None:
                bar.update(stop - start)
                bar.set_postfix(loss=f"{float(info.losses[-1]):.6g}", refresh=False)
            start = stop
            if tolerance.active and tolerance.met(info.losses, info.final_gnorm):
                break
    finally:
        if bar is not None:
            bar.close()
    if plan.per_step is not None:
        spec.seconds_per_step[steps] = plan.per_step
    if info is not None:
        spec.ran.add((steps, key is None))
        if start < steps:
            spec.stopped[steps] = start
        else:
            spec.stopped.pop(steps, None)
    warn = tolerance.active if warn is None else warn
    out_model, out_state = result(arrays, state) if out is None else out  # None: stopped early, or no step
    if info is None:  # no step ran: the state may be a cached constant (init_state); the user gets a copy
        out_state = jax.tree_util.tree_map(lambda x: jnp.copy(x) if eqx.is_array(x) else x, out_state)
        params, static = partition(out_model)
        movement, summary, final_gnorm = Movement.of(params, params), np.zeros(0), float("nan")
        losses = jnp.zeros((0,), losses.dtype)
    else:
        movement, summary, final_gnorm = Movement(spec.names, info.extents), info.losses, info.final_gnorm
        if start < steps:  # stopped early: the losses of the steps run
            losses = jnp.asarray(to_numpy(losses)[:start])

    def grad_norms():  # on the warning path only: per-leaf gradient norms for the message
        if info is not None:  # computed by the compiled loop (an eager jax.grad here cost ~40 ms)
            return info.leaf_norms
        batch = get_batch(args, key, jnp.asarray(start), spec.loop.batch_size, spec.loop.n_data)  # steps=0
        grads = jax.tree_util.tree_leaves(jax.grad(spec.loop.value_fn)(params, static, batch))
        return [np.linalg.norm(np.ravel(g)) for g in grads]

    converged = report(
        what,
        tolerance,
        summary,
        final_gnorm,
        movement,
        grad_norms,
        warn=warn and batch_size is None,
        steps=steps,
    )
    return FitResult._of(out_model, losses, out_state, converged, final_gnorm)


_SPECS = Cache(32)  # the keys hold user functions and their closures


def _spec(loop: Loop, leaves: list, treedef: Any, sig: Any, model: PyTree, what: str) -> Spec:
    """The :class:`Spec` of this fit, made once per loop, signature and device context (the
    last 32 kept, for their timings and initial state; one made again is equal to the old one
    and finds its compiled loop)."""
    if sig is None:
        raise TypeError(f"{what}: {_unhashable(leaves, treedef)}")
    key = (loop, sig, context())
    spec = _SPECS.pop(key, None)  # and put back last: the least recently used goes first
    if spec is None:
        spec = Spec(key, loop, leaves, treedef, model)
    return _SPECS.put(key, spec)


def _unhashable(leaves: list, treedef: Any) -> str:
    """Which leaf of ``(model, args)`` cannot be a static value of the compiled loop, and what
    to do about it."""
    paths = jax.tree_util.tree_flatten_with_path(jax.tree_util.tree_unflatten(treedef, leaves))[0]
    for path, leaf in paths:
        if not eqx.is_array(leaf):
            try:
                hash(leaf)
            except TypeError:
                where = "the model" if path and path[0] == jax.tree_util.SequenceKey(0) else "the data"
                return (
                    f"{where} holds a {type(leaf).__name__} at {jax.tree_util.keystr(path[1:]) or '<root>'}, "
                    "which cannot be hashed, and every value that is not an array is compiled into the "
                    "loop as a constant. Pass arrays (e.g. jnp.asarray), or mark the field "
                    "eqx.field(static=True) with a hashable value."
                )
    return "the model or data cannot be hashed (its tree structure); pass arrays in plain containers."


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
        progress_bar: show a tqdm bar with the current loss (not drawn when an earlier run of the
            same loop says this one takes under a quarter of a second: it would only flash).
        chunk_size: steps per dispatch of the compiled loop (and per bar update); any
            value reuses the same compiled loop. Default: all steps when the bar is off and no
            tolerance is given, else chunks of about a quarter of a second.
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
    return run_fit(
        _UnwrappedLoss(loss_fn),
        model,
        args,
        optimizer=optimizer,
        steps=steps,
        opt_state=opt_state,
        batch_size=batch_size,
        key=key,
        progress_bar=progress_bar,
        chunk_size=chunk_size,
        what="fit",
        tol=tol,
        rtol=rtol,
    )
