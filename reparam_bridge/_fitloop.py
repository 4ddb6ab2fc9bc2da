"""The compiled optimisation loop behind :func:`~reparam_bridge.fit` and
:func:`~reparam_bridge.map_estimate`: one ``lax.fori_loop`` chunk with traced start and stop
steps, and the replay that names the step and parameters of a failure (the plan that cuts a run
into chunks is in ``_fitplan.py``, mini-batches in ``_batches.py``)."""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, PyTree

from . import _effort, _tree
from ._batches import get_batch
from ._caches import Cache
from ._constraint import apply
from ._convergence import leaf_names
from ._density import partition
from ._util import to_numpy


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

    def value_and_grad(self, params, static, batch):
        """``jax.value_and_grad(value_fn)``, traced once per compile although the loop calls it
        twice (the step, and the gradient at the point returned): a jit of its own, kept per loop."""
        fn = _VALUE_AND_GRAD.get(self)
        if fn is None:
            fn = _VALUE_AND_GRAD.put(self, eqx.filter_jit(jax.value_and_grad(self.value_fn)))
        return fn(params, static, batch)

    def step(self, params, opt_state, static, args, key, i):
        batch = get_batch(args, key, i, self.batch_size, self.n_data)
        value, grads = self.value_and_grad(params, static, batch)
        kwargs = {}
        if isinstance(self.optimizer, optax.GradientTransformationExtraArgs):
            kwargs = dict(value=value, grad=grads, value_fn=lambda p: self.value_fn(p, static, batch))
        updates, opt_state = self.optimizer.update(grads, opt_state, params, **kwargs)
        params = optax.apply_updates(params, updates)
        if self.project:
            params = partition(apply(eqx.combine(params, static)))[0]
        return params, opt_state, value, grads


_VALUE_AND_GRAD = Cache(32)


class Spec:
    """Everything static about one fit's inputs, made once per signature: the loop, and the
    flattened ``(model, args)`` (tree structure, which leaves are arrays, the other leaves'
    values, which arrays are free). The compiled loop takes it as a static argument, with the
    arrays as flat lists: the inputs are flattened once per call, where ``eqx.filter_jit`` (or
    a flatten per argument) would flatten and partition them again (~0.3 ms a call, against
    9 ms for 3,000 Adam steps of a small model in ``benchmarks/bench_fit.py``). Equal (and
    hashed) by ``key``, what it was made from, so that one made again for the same signature
    finds its compiled loop; the hash is computed once."""

    def __init__(self, key: Any, loop: Loop, leaves: list, treedef: Any, model: PyTree):
        self.key, self._hash = key, hash(key)
        free_mask = _tree.free_mask(model)
        self.loop, self.treedef = loop, treedef
        self.is_array = tuple(eqx.is_array(x) for x in leaves)
        self.values = tuple(x for x, a in zip(leaves, self.is_array) if not a)
        arrays = [i for i, a in enumerate(self.is_array) if a]  # leaf index of each array
        n_model = len(free_mask)  # the model's leaves come first, then the data's
        self.free = tuple(k for k, i in enumerate(arrays) if i < n_model and free_mask[i])
        self.names = leaf_names(partition(model)[0])  # of the free arrays
        self.loss_dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
        self.state: Any = None  # (devices, the optimiser's initial state) when it is a constant
        # per run length: whether its loop has compiled (the loss buffer's length is in the
        # program), its seconds per step (a later run is cut into chunks by time from its first
        # chunk on), and the step the last run stopped early at (its tolerance met)
        self.ran: set[tuple[int, bool]] = set()
        self.seconds_per_step: dict[int, float] = {}
        self.stopped: dict[int, int] = {}

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Spec) and self.key == other.key)

    def initial_state(self, free: list, params: Callable[[], PyTree]) -> tuple[list, Any]:
        """The optimiser's initial state for the free arrays ``free`` (``params()``: their
        tree), flattened; a constant one is kept here for later calls with arrays on the same
        devices."""
        where = tuple(getattr(x, "sharding", None) for x in free)
        if self.state is not None and self.state[0] == where:
            return self.state[1]
        state, reusable = init_state(self.loop.optimizer, params())
        flat = jax.tree_util.tree_flatten(state)
        self.state = (where, flat) if reusable else None
        return flat

    def arrays(self, leaves: list) -> list:
        return [x for x, a in zip(leaves, self.is_array) if a]

    def with_free(self, arrays: list, free: list) -> list:
        out = list(arrays)
        for k, x in zip(self.free, free):
            out[k] = x
        return out

    def rebuild(self, arrays: list) -> tuple:
        """``(model, args)`` from the arrays (inside the trace, or on the host)."""
        arrays_, values = iter(arrays), iter(self.values)
        leaves = [next(arrays_) if a else next(values) for a in self.is_array]
        return self.treedef.unflatten(leaves)

    def model(self, arrays: list) -> PyTree:
        return self.rebuild(arrays)[0]


@functools.partial(jax.jit, static_argnums=(0, 1))
def run(spec: Spec, state_def: Any, arrays: list, state: list, losses, start, stop, key, origin: list):
    """Steps ``start`` to ``stop - 1`` (both traced) of the fit that ``spec`` describes, from
    the model and data in ``arrays``; their losses written into ``losses``.

    The carry is the state and the losses: more per-step bookkeeping costs as much as a whole
    step of a small model. A step whose gradient is not finite writes a NaN loss
    (``value + sum(|g| * 0)``, fused with the write), so the first non-finite loss of the chunk
    is the first failed step, whatever the optimiser then does with that gradient.

    Returns the free arrays, the state, the losses and ``info``, one vector for the host
    (:class:`Info`): ``first_bad`` (that step; ``stop`` if only the final parameters or the
    gradient there are bad; else -1), at the returned point the gradient's norm and the loss,
    the first loss and the last few (up to ``stop``), then per free leaf the gradient's norm,
    ``max |origin|``, ``max |params - origin|`` and ``max |params|`` (``origin``: the free
    arrays the run started from), from which the host tells a parameter running away without
    reading the parameters back.

    The optimiser's state comes and goes as its leaves (``state_def``: its tree structure): an
    optax state holds trees shaped like the model, whose flatten is Python (Equinox), and
    would run twice per call at dispatch."""
    model, args = spec.rebuild(arrays)
    params, static = partition(model)
    opt_state = jax.tree_util.tree_unflatten(state_def, state)
    loop = spec.loop

    def body(i, carry):
        params, opt_state, losses = carry
        params, opt_state, value, grads = loop.step(params, opt_state, static, args, key, i)
        # sum(|g| * 0) is 0 if every g is finite, else nan (a sum of g itself could overflow;
        # |g|: real also for complex parameters)
        poison = sum(jnp.sum(jnp.abs(g) * 0) for g in jax.tree_util.tree_leaves(grads))
        # a dynamic_update_slice, updated in place (``.at[i].set`` is a scatter: ~10 % of a small step)
        losses = jax.lax.dynamic_update_index_in_dim(losses, (value + poison).astype(losses.dtype), i, 0)
        return params, opt_state, losses

    params, opt_state, losses = jax.lax.fori_loop(start, stop, body, (params, opt_state, losses))
    # The gradient (and loss) at the point returned, so that a NaN there (a degenerate optimum
    # such as a scale collapsing to 0) is an error, and convergence is judged where we stop (the
    # batch of step ``stop``). Not one more iteration of ``body``: XLA would compile the
    # optimiser's update twice (L-BFGS's line search: +1.7 s of a 3.8 s compile, eight schools).
    batch = get_batch(args, key, stop, loop.batch_size, loop.n_data)
    final_value, grads = loop.value_and_grad(params, static, batch)
    grads = jax.tree_util.tree_leaves(grads)
    leaf_norms = jnp.stack([jnp.sqrt(jnp.sum(jnp.real(g * jnp.conj(g)))) for g in grads])  # complex too
    final_gnorm = jnp.sqrt(jnp.sum(jnp.square(leaf_norms)))
    steps = jnp.arange(losses.shape[0], dtype=start.dtype)
    bad_value = ~jnp.isfinite(losses) & (steps >= start) & (steps < stop)
    never = jnp.iinfo(start.dtype).max
    final_bad = ~(_all_finite(params) & jnp.isfinite(final_gnorm))
    # a min over the steps, not any + argmax: argmax is a variadic reduction, slow on XLA:CPU
    # (at 3,000 steps ~8 us a call more, at 20,000 ~35, measured on one core)
    first_bad = jnp.minimum(
        jnp.min(jnp.where(bad_value, steps, never), initial=never), jnp.where(final_bad, stop, never)
    )
    first_bad = jnp.where(first_bad == never, -1, first_bad)

    def extents(start, end):  # max |start|, max |end - start|, max |end|
        if start.size <= _STACKED:  # one reduction (kernel) for the three: less to compile
            return jnp.max(jnp.abs(jnp.stack([start, end - start, end]).reshape(3, -1)), axis=1, initial=0.0)
        # a large leaf: XLA materialises the stack (3x the leaf in scratch memory), so three reductions
        return jnp.stack([jnp.max(jnp.abs(x), initial=0.0) for x in (start, end - start, end)])

    free = jax.tree_util.tree_leaves(params)
    n = min(_TAIL, losses.shape[0])  # the last n losses written (fewer if stop < n: the host cuts)
    tail = jax.lax.dynamic_slice_in_dim(losses, jnp.clip(stop - n, 0, losses.shape[0] - n), n)
    # first_bad as two floats, each exact in float32 (a float32 holds integers only up to 2**24)
    high = jnp.floor_divide(first_bad, _SPLIT)
    head = [high, first_bad - high * _SPLIT, final_gnorm, final_value, losses[0] if losses.shape[0] else 0.0]
    rows = jnp.stack([extents(a, b).astype(losses.dtype) for a, b in zip(origin, free)], axis=1)
    info = jnp.concatenate([jnp.stack([jnp.asarray(x, losses.dtype) for x in head]), tail, leaf_norms, rows.ravel()])
    return free, jax.tree_util.tree_leaves(opt_state), losses, info.astype(losses.dtype)


_STACKED = 4096  # elements: a leaf up to this size has its three extents taken in one reduction
_TAIL = 5  # losses the host reads after each chunk: enough for every convergence test
_SPLIT = 4096  # first_bad = high * _SPLIT + low


class Info(NamedTuple):
    """``run``'s ``info`` vector, read on the host as Python floats (the convergence tests
    and the runaway check read a handful of numbers, where NumPy's per-call cost dominated).
    One array (``_util.to_numpy``): on an accelerator each array read is a transfer."""

    first_bad: int  # the first failed step, or -1
    final_gnorm: float
    final_value: float
    losses: list[float]  # the first loss and the last up to ``_TAIL`` (all of them if that is fewer)
    leaf_norms: list[float]  # (leaves,)
    extents: tuple[list[float], list[float], list[float]]  # max |origin|, max |moved|, max |end|

    @classmethod
    def of(cls, info: Array | np.ndarray, n_losses: int, n_steps: int) -> "Info":
        """``n_losses``: the length of the loss buffer; ``n_steps``: the losses written."""
        info = to_numpy(info).tolist()
        first_bad = int(info[0]) * _SPLIT + int(info[1])
        m = min(_TAIL, n_losses)
        tail = info[5 : 5 + m]
        losses = tail[:n_steps] if n_steps <= m else info[4:5] + tail
        rest = info[5 + m :]
        n = len(rest) // 4
        extents = (rest[n : 2 * n], rest[2 * n : 3 * n], rest[3 * n :])
        return cls(first_bad, info[2], info[3], losses, rest[:n], extents)


_INIT = Cache(16)


def init_state(optimizer: Any, params) -> tuple[Any, bool]:
    """``(optimizer.init(params), reusable)``. Most optax states start as constants that do
    not depend on the parameters' values (Adam's zeros and count, L-BFGS's memory): those are
    made once per optimizer and parameter shapes and reused (``reusable``: JAX arrays are
    immutable), which saves a dispatch a call (~0.1-0.25 ms, against 9 ms for 3,000 Adam steps
    in bench_fit). Other states come from a ``jax.jit`` cached here."""
    leaves = jax.tree_util.tree_leaves(params)
    try:
        key = (optimizer, jax.tree_util.tree_structure(params), context())
        key += tuple((x.shape, x.dtype, getattr(x, "weak_type", False), getattr(x, "sharding", None)) for x in leaves)
        entry = _INIT.get(key)
    except TypeError:  # an unhashable optimizer: compiled per call
        return jax.jit(lambda p: strong_types(optimizer.init(p)))(params), False
    if entry is None:
        init = jax.jit(lambda p: strong_types(optimizer.init(p)))
        # kept only for small models: a large one's state is memory, and its fit is long anyway
        small = sum(x.size * x.dtype.itemsize for x in leaves) <= _SMALL_BYTES
        constant = small and not _reads_inputs(jax.make_jaxpr(optimizer.init)(params).jaxpr)
        entry = _INIT.put(key, (init, init(params) if constant else None))
    init, state = entry
    return (init(params), False) if state is None else (state, True)


_SMALL_BYTES = 1 << 16  # 64 KiB of parameters


def strong_types(tree: PyTree) -> PyTree:
    """``tree`` with no weakly typed arrays. The loop's outputs are strongly typed, so a state
    that starts weak (optax's L-BFGS counters and scalars are Python numbers) made the second
    chunk of a run a new signature: the whole loop compiled again (+2.5-3 s for L-BFGS)."""
    weak = lambda x: getattr(x, "weak_type", False)  # noqa: E731
    return jax.tree_util.tree_map(lambda x: jax.lax.convert_element_type(x, x.dtype) if weak(x) else x, tree)


def context() -> tuple:
    """What decides where a new array goes (a cached one must not outlive it), and how hard XLA
    optimises a program compiled now (``_effort``: not part of JAX's own cache key)."""
    mesh = getattr(jax.sharding, "get_abstract_mesh", lambda: None)()
    return (mesh, jax.config.jax_default_device, _effort.flag())


def _reads_inputs(jaxpr) -> bool:
    """Whether any output of ``jaxpr`` depends on its inputs (a sub-program counts as reading
    all of its inputs)."""
    live = set(jaxpr.invars)
    used = lambda vs: any(isinstance(v, jax.extend.core.Var) and v in live for v in vs)  # noqa: E731
    for eqn in jaxpr.eqns:
        if used(eqn.invars):
            live.update(eqn.outvars)
    return used(jaxpr.outvars)


_CONSTANTS = Cache(64)


def constant(value: Any, dtype: Any, shape: tuple = ()) -> Array:
    """``jnp.full(shape, value, dtype)``, made once and reused (JAX arrays are immutable and
    these are uncommitted, so any device may use them): the loop's start and stop steps and
    its empty loss buffer are the same in every call of a repeated fit, and a NumPy input costs
    a host-to-device copy per call (~0.05 ms each in bench_fit)."""
    if math.prod(shape) * np.dtype(dtype).itemsize > _SMALL_BYTES:  # not kept: made on the device
        return jnp.full(shape, value, dtype)
    key = (value, np.dtype(dtype), shape, context())
    out = _CONSTANTS.get(key)
    if out is None:
        out = _CONSTANTS.put(key, _full(value, dtype, shape))
    return out


def _full(value: Any, dtype: Any, shape: tuple) -> Array:
    # A copy of a small NumPy array: ``jnp.full`` compiles three small programs the first time
    # it meets a shape (~0.1 s of a fresh process's first fit, measured), this compiles none.
    return jax.device_put(np.full(shape, value, dtype))


def diagnose(replay: Callable[[int], Info], bad: int, names: list[str], what: str) -> str:
    """The error message for a failure found at global step ``bad``: ``replay(k)`` runs the
    same compiled loop from the chunk's start to step ``k`` and returns its :class:`Info`,
    whose loss and per-leaf gradient norms are those at step ``k``'s parameters."""
    at = replay(bad)
    if not np.isfinite(at.final_value):
        return (
            f"{what}: the loss became non-finite ({at.final_value}) at step {bad} "
            "(0-based); no result is returned. Check the data and the initial values, lower the "
            "learning rate, or constrain the parameter that leaves its domain."
        )
    paths = [name for name, g in zip(names, at.leaf_norms) if not math.isfinite(g)]
    if paths:
        return (
            f"{what}: the gradient became non-finite at step {bad} (0-based; loss {at.final_value}) for "
            f"parameter(s) {paths}; no result is returned. Lower the learning rate or reparameterise "
            "those parameters."
        )
    # only at the end of a run: the parameters are non-finite where the loss and gradient are not
    return (
        f"{what}: the parameters are non-finite after step {bad - 1} (0-based) although the loss and "
        "gradient stayed finite: the optimiser's update overflowed; no result is returned. Lower the "
        "learning rate."
    )
