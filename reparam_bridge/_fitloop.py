"""The compiled optimisation loop behind :func:`~reparam_bridge.fit` and
:func:`~reparam_bridge.map_estimate`: mini-batches, one ``lax.fori_loop`` chunk with traced
start and stop steps, the replay that names the step and parameters of a failure, and the
plan that cuts a run into chunks by time (for the progress bar)."""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PRNGKeyArray, PyTree

from ._constraint import apply
from ._density import partition
from ._paths import path_to_str
from ._util import flat_jit

# ----------------------------------------------------------------------------------------
# mini-batches


def batch_size_of(args: tuple) -> int:
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


class Loop(NamedTuple):
    """Everything static about a run; hashable, so equal runs share one compiled loop."""

    objective: Callable
    optimizer: Any
    batch_size: int | None
    n_data: int
    project: bool

    def value_fn(self, params, static, batch):
        return self.objective(eqx.combine(params, static), *batch)

    def step(self, params, opt_state, static, args, key, i):
        batch = get_batch(args, key, i, self.batch_size, self.n_data)
        value, grads = jax.value_and_grad(self.value_fn)(params, static, batch)
        kwargs = {}
        if isinstance(self.optimizer, optax.GradientTransformationExtraArgs):
            kwargs = dict(value=value, grad=grads, value_fn=lambda p: self.value_fn(p, static, batch))
        updates, opt_state = self.optimizer.update(grads, opt_state, params, **kwargs)
        params = optax.apply_updates(params, updates)
        if self.project:
            params = partition(apply(eqx.combine(params, static)))[0]
        return params, opt_state, value, grads


@flat_jit
def run_chunk(loop: Loop, static, params, opt_state, losses, start, stop, key, args, origin):
    """Steps ``start`` to ``stop - 1`` (both traced), their losses written into ``losses``.

    The carry is the state, the last gradient and the first step whose gradient was
    non-finite: more per-step bookkeeping (per-leaf norms, selecting the old state after a
    failure) costs as much as a whole step of a small model. Failures are found afterwards:
    the first non-finite loss or gradient of the chunk, or non-finite parameters at its end;
    :func:`diagnose` replays to say which. Returns ``first_bad``: that step (for a gradient,
    the step after it), ``stop`` if only the final parameters are bad, or -1; and ``info``,
    one vector for the host: the gradient's
    norm at the returned point, then per leaf of ``params`` its norm, then per leaf
    ``max |origin|``, ``max |params - origin|`` and ``max |params|`` (``origin``: the
    parameters the run started from), from which the host tells a parameter running away
    without reading the parameters back."""

    def body(i, carry):
        params, opt_state, losses, grad_bad, _ = carry
        params, opt_state, value, grads = loop.step(params, opt_state, static, args, key, i)
        # sum(g * 0) is 0 if every g is finite, else nan (a sum of g itself could overflow)
        finite = jnp.isfinite(sum(jnp.sum(g * 0) for g in jax.tree_util.tree_leaves(grads)))
        grad_bad = jnp.where((grad_bad < 0) & ~finite, i, grad_bad)
        # a dynamic_update_slice, updated in place (``.at[i].set`` is a scatter: ~10 % of a small step)
        losses = jax.lax.dynamic_update_index_in_dim(losses, value.astype(losses.dtype), i, 0)
        return params, opt_state, losses, grad_bad, grads

    no_grad = jax.tree_util.tree_map(jnp.zeros_like, params)
    carry = (params, opt_state, losses, jnp.asarray(-1, start.dtype), no_grad)
    carry = jax.lax.fori_loop(start, stop, body, carry)
    params, opt_state, losses, grad_bad, _ = carry
    # The gradient at the point returned, so that a NaN there (a degenerate optimum such as a
    # scale collapsing to 0) is an error, and convergence is judged where we stop: one more
    # iteration of the same body (JAX reuses its trace: the loss is still traced once), of
    # which only the gradient is kept.
    grads = jax.tree_util.tree_leaves(jax.lax.fori_loop(stop, stop + 1, body, carry)[4])
    leaf_norms = jnp.stack([jnp.sqrt(jnp.sum(jnp.real(g * jnp.conj(g)))) for g in grads])  # complex too
    final_gnorm = jnp.sqrt(jnp.sum(jnp.square(leaf_norms)))
    steps = jnp.arange(losses.shape[0], dtype=start.dtype)
    bad_value = ~jnp.isfinite(losses) & (steps >= start) & (steps < stop)
    never = jnp.iinfo(start.dtype).max
    first_bad = jnp.min(
        jnp.stack(
            [
                jnp.where(jnp.any(bad_value), jnp.argmax(bad_value), never),
                # a non-finite gradient at step i: diagnose replays to step i (first_bad - 1)
                jnp.where(grad_bad >= 0, grad_bad + 1, never),
                jnp.where(_all_finite(params), never, stop),
                jnp.where(jnp.isfinite(final_gnorm), never, stop + 1),
            ]
        ).astype(start.dtype)
    )
    first_bad = jnp.where(first_bad == never, -1, first_bad)

    def leaf_max(tree):
        return jnp.stack([jnp.max(jnp.abs(x), initial=0.0) for x in jax.tree_util.tree_leaves(tree)])

    moved = jax.tree_util.tree_map(jnp.subtract, params, origin)
    info = jnp.concatenate([final_gnorm[None], leaf_norms, leaf_max(origin), leaf_max(moved), leaf_max(params)])
    return params, opt_state, losses, first_bad, info.astype(losses.dtype)


class Info(NamedTuple):
    """``run_chunk``'s ``info`` vector, read on the host."""

    final_gnorm: float
    leaf_norms: np.ndarray  # (leaves,)
    extents: np.ndarray  # (3, leaves): max |origin|, max |moved|, max |end|

    @classmethod
    def of(cls, info: np.ndarray) -> "Info":
        n = (len(info) - 1) // 4
        return cls(float(info[0]), info[1 : 1 + n], info[1 + n :].reshape(3, n))


_INIT: dict = {}


def init_state(optimizer: Any, params):
    """``optimizer.init(params)``. Most optax states start as constants that do not depend on
    the parameters' values (Adam's zeros and count, L-BFGS's memory): those are made once per
    optimizer and parameter shapes and reused (JAX arrays are immutable), which saves a
    dispatch a call (~0.1-0.25 ms, against 18 ms for 3,000 Adam steps in bench_fit). Other
    states come from a ``jax.jit`` cached here."""
    leaves = jax.tree_util.tree_leaves(params)
    try:
        key = (optimizer, jax.tree_util.tree_structure(params), _context())
        key += tuple((x.shape, x.dtype, getattr(x, "weak_type", False), getattr(x, "sharding", None)) for x in leaves)
        entry = _INIT.get(key)
    except TypeError:  # an unhashable optimizer: compiled per call
        return jax.jit(optimizer.init)(params)
    if entry is None:
        if len(_INIT) >= 16:
            _INIT.pop(next(iter(_INIT)))
        init = jax.jit(optimizer.init)
        # kept only for small models: a large one's state is memory, and its fit is long anyway
        small = sum(x.size * x.dtype.itemsize for x in leaves) <= _SMALL_BYTES
        constant = small and not _reads_inputs(jax.make_jaxpr(optimizer.init)(params).jaxpr)
        entry = _INIT[key] = (init, init(params) if constant else None)
    init, state = entry
    return init(params) if state is None else state


_SMALL_BYTES = 1 << 16  # 64 KiB of parameters


def _context() -> tuple:
    """What decides where a new array goes (a cached one must not outlive it)."""
    mesh = getattr(jax.sharding, "get_abstract_mesh", lambda: None)()
    return (mesh, jax.config.jax_default_device)


def _reads_inputs(jaxpr) -> bool:
    """Whether any output of ``jaxpr`` depends on its inputs (a sub-program counts as reading
    all of its inputs)."""
    live = set(jaxpr.invars)
    used = lambda vs: any(isinstance(v, jax.extend.core.Var) and v in live for v in vs)  # noqa: E731
    for eqn in jaxpr.eqns:
        if used(eqn.invars):
            live.update(eqn.outvars)
    return used(jaxpr.outvars)


_CONSTANTS: dict = {}


def constant(value: Any, dtype: Any, shape: tuple = ()) -> Array:
    """``jnp.full(shape, value, dtype)``, made once and reused (JAX arrays are immutable and
    these are uncommitted, so any device may use them): the loop's start and stop steps and
    its empty loss buffer are the same in every call of a repeated fit, and a NumPy input costs
    a host-to-device copy per call (~0.05 ms each in bench_fit)."""
    if math.prod(shape) * np.dtype(dtype).itemsize > _SMALL_BYTES:
        return jnp.full(shape, value, dtype)
    key = (value, np.dtype(dtype), shape, _context())
    out = _CONSTANTS.get(key)
    if out is None:
        if len(_CONSTANTS) >= 64:
            _CONSTANTS.pop(next(iter(_CONSTANTS)))
        out = _CONSTANTS[key] = jnp.full(shape, value, dtype)
    return out


# Seconds per step of each loop seen in this process, keyed like the compiled loop: the
# next run of the same loop is cut into chunks by time from its first chunk on.
SECONDS_PER_STEP: dict = {}
_CHUNK_SECONDS = 0.25  # bar updates about four times a second


def diagnose(loop: Loop, static, params, opt_state, losses, start: int, bad: int, key, args, what: str) -> str:
    """The error message for a failure found at global step ``bad`` of the chunk that began
    at ``start`` with ``params``/``opt_state``: replay to step ``bad - 1`` (the same compiled
    loop, stopped earlier) and look at its gradient."""
    prev = bad - 1
    if prev >= start:
        at, *_ = run_chunk(loop, static, params, opt_state, losses, np.int32(start), np.int32(prev), key, args, params)
        batch = get_batch(args, key, jnp.asarray(prev), loop.batch_size, loop.n_data)
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
    if bad < len(losses) and not np.isfinite(float(losses[bad])):
        return (
            f"{what}: the loss became non-finite ({float(losses[bad])}) at step {bad} "
            "(0-based); no result is returned. Check the data and the initial values, lower the "
            "learning rate, or constrain the parameter that leaves its domain."
        )
    return (
        f"{what}: the optimiser made the parameters non-finite at step {prev} (0-based) although "
        "the loss and gradient were finite; no result is returned. Lower the learning rate."
    )


class Plan:
    """Where each chunk stops. ``chunk_size`` if given; else by time: with no timing for
    this loop yet, a first chunk of a twentieth of the steps (it also compiles), a second
    as long (timed), then chunks of about ``_CHUNK_SECONDS``; without a bar, one chunk."""

    def __init__(self, steps: int, chunk_size: int | None, progress_bar: bool, per_step: float | None):
        self.steps, self.chunk_size, self.bar, self.per_step = steps, chunk_size, progress_bar, per_step
        self.timed_chunks = 0

    def next_stop(self, start: int) -> int:
        left = self.steps - start
        if self.chunk_size is not None:
            n = int(self.chunk_size)
        elif not self.bar or left <= 100:
            n = left
        elif self.per_step is None:
            n = max(50, math.ceil(self.steps / 20))
        else:
            n = max(1, int(_CHUNK_SECONDS / max(self.per_step, 1e-9)))
            if left - n < n // 2:  # no short last chunk
                n = left
        return start + min(n, left)

    def short(self) -> bool:
        """One chunk, known to take under ``_CHUNK_SECONDS``: a bar would only flash (tqdm's
        ``delay=`` idea), and drawing it costs a tenth of a 3,000-step fit of a small model."""
        return self.chunk_size is None and self.per_step is not None and self.steps * self.per_step < _CHUNK_SECONDS

    def record(self, start: int, stop: int, seconds: float) -> None:
        self.timed_chunks += 1
        if self.timed_chunks > 1 or self.per_step is not None:  # the first may have compiled
            self.per_step = seconds / (stop - start)
