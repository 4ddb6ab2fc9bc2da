"""``rb.sample(..., chain_method="sharded")``: NumPyro's kernel driven on a JAX device mesh.

NumPyro's own ``"parallel"`` method is ``pmap`` over the local devices of one process, and
its MCMC closes over the data, which puts every argument on one device. Here NumPyro's
kernel (``kernel.init`` / ``kernel.sample`` under ``vmap`` over chains, as its
``"vectorized"`` method does, so warmup adapts each chain separately) runs inside one jitted
function whose inputs carry shardings:

* **many chains**: the chain axis is split over a ``Mesh`` of ``jax.devices()`` (every
  device of every process after ``jax.distributed.initialize``) with ``shard_map``; within a
  device the chains are vectorized. Each device runs its own NUTS loops: no device waits
  for the longest trajectory of another.
* **big data**: ``*args`` placed with a ``NamedSharding`` stay sharded (they are arguments
  of the compiled function, never constants), the chains are replicated over the data's
  devices, and the log-likelihood sum is a cross-device reduction that XLA inserts. When
  the data's mesh has an axis named ``"chains"``, the chains are split along it too.

The draws are gathered to the host (on every process, process 0 included) into an ordinary
:class:`~reparam_bridge.Posterior`.

The same loop serves ``chain_method="sequential"`` (the default on CPU): on one device, the
chains one after another under ``lax.map``, NumPyro's kernel unbatched (traced ~5x faster than
under ``vmap``, compiled once). Either way the compiled sampler is kept per configuration (and
per fingerprint of the density, so a changed global is seen), and ``Posterior.resume`` continues
the chains from the last states it returns. The two recipes, which run unchanged on one CPU:

    >>> import jax, numpy as np, numpyro.distributions as dist
    >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    >>> import reparam_bridge as rb
    >>> model = {"mu": rb.Real(0.0), "sigma": rb.Positive(1.0)}
    >>> def log_joint(m, y):
    ...     return dist.Normal(0, 10).log_prob(m["mu"]) + dist.Normal(m["mu"], m["sigma"]).log_prob(y).sum()
    >>> y = np.random.default_rng(0).normal(1.0, 1.0, 64 * jax.device_count()).astype(np.float32)
    >>> # many chains: a multiple of the device count, split over every device of every process
    >>> post = rb.sample(model, log_joint, y, key=jax.random.key(0), num_chains=2 * jax.device_count(),
    ...                  chain_method="sharded", num_warmup=100, num_samples=100, progress_bar=False)
    >>> post.draws["mu"].shape == (2 * jax.device_count(), 100)
    True
    >>> # big data: split along the observation axis; it stays split, chains are replicated
    >>> mesh = jax.make_mesh((jax.device_count(),), ("data",))
    >>> ys = jax.device_put(y, NamedSharding(mesh, P("data")))
    >>> fit = rb.map_estimate(model, log_joint, ys, steps=100, progress_bar=False)
    >>> post = rb.sample(fit.model, log_joint, ys, key=jax.random.key(1), num_chains=2,
    ...                  num_warmup=100, num_samples=100, progress_bar=False)
    >>> post.draws["sigma"].shape, ys.sharding.spec == P("data")
    ((2, 100), True)
"""

import hashlib
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import PyTree
from numpyro.infer import HMC

from . import _effort
from ._caches import Cache
from ._mesh import CHAINS, chain_layout, gather, to_global
from ._progress import LoopProgress
from ._util import max_tree_depth, to_sample_stats


def sample_sharded(
    model: PyTree,
    static: PyTree,
    log_joint: Callable,
    args: tuple,
    kernel: type,
    kernel_kwargs: dict,
    init_params: PyTree,
    key: jax.Array,
    *,
    num_warmup: int,
    num_samples: int,
    thinning: int,
    log_likelihood: Callable | None,
    progress_bar: bool = False,
    sequential: bool = False,
    state: Any = None,
):
    """Run ``kernel`` over the chains of ``init_params`` (leading axis ``num_chains``) on the
    mesh of :func:`chain_layout`; returns a :class:`Posterior` (``mcmc=None``). The bar (on
    process 0) advances from inside the compiled loop, about 100 times a run.

    ``sequential``: ``chain_method="sequential"``: on one device, the chains one after another
    (``lax.map``) in one compiled program. NumPyro's own sequential method compiles its loop
    again for every chain (its ``fori_collect`` wraps the body in a new ``jit`` each call), and
    its vectorized method traces NUTS under ``vmap`` (~2.3 s of eight schools' 12 s); an
    unbatched NUTS traces in ~0.5 s and compiles no slower (``benchmarks/README.md``).

    ``state``: the kernel's last state of an earlier run (chain axis first; ``num_warmup=0``):
    :meth:`Posterior.resume` continues those chains (see :func:`resume`)."""
    from ._posterior import HMC_FIELDS, Posterior

    num_chains = jax.tree_util.tree_leaves(init_params)[0].shape[0]
    if thinning < 1:
        raise ValueError(f"rb.sample: thinning must be >= 1, got {thinning}.")
    if sequential:
        mesh, spec = Mesh(np.array(jax.local_devices()[:1]), (CHAINS,)), P()
    else:
        mesh, spec = chain_layout(args, num_chains)
    chains, replicated = NamedSharding(mesh, spec), NamedSharding(mesh, P())

    keys = jax.random.split(key, num_chains)
    keys = jax.random.key_data(keys) if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys
    keys = to_global(np.asarray(keys), chains)
    init = jax.tree_util.tree_map(lambda x: to_global(x, chains), init_params)  # (a resume's: already placed)
    # The data's arrays and a seeded mass matrix and step size are arguments of the compiled
    # function: constants would be copied onto one device, and the program is reused by the next
    # call with new values of the same shapes (a warm start brings a new mass matrix and step
    # size every time). The rest is closed over: the model's static part and the kernel's other
    # options, whose values NumPyro reads in Python; with an array among them (unhashable) the
    # sampler is compiled for this call only.
    arrays, others = eqx.partition(args, _is_data)
    options = dict(kernel_kwargs)
    seeded = {k: jax.tree_util.tree_map(jnp.asarray, options.pop(k)) for k in _SEEDED if options.get(k) is not None}
    dynamic = jax.tree_util.tree_map(lambda x: to_global(x, replicated), (arrays, seeded))
    leaves, closed = jax.tree_util.tree_flatten((others, static, options))
    fields = HMC_FIELDS if issubclass(kernel, HMC) else ()
    total = num_warmup + num_samples  # as NumPyro's MCMC: thinning keeps num_samples // thinning of them
    every = max(1, total // 100) if progress_bar else 0  # also how soon Ctrl-C stops a run
    bar_total = total * num_chains if sequential else total  # in sequence, the bar runs over every chain
    # leaves by type and value: 1, 1.0 and True compare equal but trace differently
    typed = tuple((type(x), x) for x in leaves)
    # the effort flag too: a sampler compiled with less optimisation is not one compiled with full
    config = (log_joint, typed, closed, kernel, num_warmup, num_samples, thinning, mesh, spec, fields, sequential)
    config += (_effort.flag(), _fingerprint(log_joint, static, args, init_params))
    with LoopProgress(bar_total if jax.process_index() == 0 and every else 0, sequential):
        draws, last = _compiled_run((*config, every))(keys, init, dynamic, state)
        out = jax.tree_util.tree_map(np.asarray, draws) if sequential else gather(draws)  # (this process's)
    samples = jax.tree_util.tree_map(jnp.asarray, out.pop("z"))
    stats = to_sample_stats(out, max_tree_depth(kernel, kernel_kwargs)) if fields else {}
    post = Posterior(
        model, static, samples, stats, mcmc=None, log_joint=log_joint, args=args, log_likelihood=log_likelihood
    )
    # what resume() needs: the chains' last states (on their devices) and how they were run
    post._last_state = last
    post._loop = dict(
        kernel=kernel, kernel_kwargs=kernel_kwargs, thinning=thinning, sequential=sequential, num_samples=num_samples
    )
    return post


def resume(post: Any, num_samples: int | None, progress_bar: bool) -> Any:
    """:meth:`Posterior.resume` of a run of this module's loop: the same chains from their last
    states (step size and mass matrix as adapted), ``num_samples`` more draws (default: as many
    as the run had), no warmup."""
    loop = post._loop
    num_samples = loop["num_samples"] if num_samples is None else num_samples  # iterations, as rb.sample's
    new = sample_sharded(
        post.model,
        post._static,
        post._log_joint,
        post._args,
        loop["kernel"],
        loop["kernel_kwargs"],
        post._last_state.z,
        jax.random.key(0),  # unused: each chain's key is in its state
        num_warmup=0,
        num_samples=num_samples,
        thinning=loop["thinning"],
        log_likelihood=post._log_likelihood,
        progress_bar=progress_bar,
        sequential=loop["sequential"],
        state=post._last_state,
    )
    out = post._append(new._samples, new.sample_stats, None, new._last_state)
    out._loop = {**loop, "num_samples": num_samples}  # the next resume() runs as many (as NumPyro's)
    return out


_SEEDED = ("inverse_mass_matrix", "step_size")  # kernel options NumPyro only uses in jnp/lax ops


def _fingerprint(log_joint: Callable, static: PyTree, args: tuple, init_params: PyTree) -> tuple:
    """The density as the compiled sampler would see it: its jaxpr (operations and literals) and
    its constants (closed-over arrays, and globals read while tracing), traced now on abstract
    values (~10-50 ms, plus hashing NumPy constants). Part of the sampler's cache key, so that a
    ``log_joint`` reading a global that has changed since a sampler was compiled gets a new
    one: NumPyro's ``MCMC`` traces on every call, and a kept sampler must not silently sample
    the old density."""
    from ._posterior import free_logdensity

    one = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), init_params)
    spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if _is_data(x) else x  # noqa: E731
    abstract = jax.tree_util.tree_map(spec, args)
    arrays, others = eqx.partition(abstract, lambda x: isinstance(x, jax.ShapeDtypeStruct))
    closed = jax.make_jaxpr(lambda p, a: free_logdensity(log_joint, static, eqx.combine(a, others))(p))(one, arrays)
    return str(closed.jaxpr), tuple(_value_id(c) for c in closed.consts)


def _value_id(x: Any) -> Any:
    """A constant of the density, as a cache key: a JAX array by identity (immutable; the key
    holds it, so its id is not reused), anything else (NumPy arrays can change in place) by a
    hash of its bytes (~0.3 s for 200 MB)."""
    if isinstance(x, jax.Array):
        return _Same(x)
    host = np.ascontiguousarray(x)  # no copy when it already is
    return host.shape, str(host.dtype), hashlib.blake2b(memoryview(host).cast("B")).hexdigest()


class _Same:
    """Equal to another only if it holds the very same object."""

    def __init__(self, x: Any):
        self.x = x

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.x is self.x

    def __hash__(self) -> int:
        return id(self.x)


def _is_data(x: Any) -> bool:
    """An array the compiled sampler takes as an argument (PRNG keys stay closed over)."""
    return eqx.is_array(x) and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


# Compiled samplers by everything static about them (a second ``rb.sample`` of the same model
# and data shapes compiles nothing: NUTS takes seconds to compile), including the density's
# fingerprint (a changed global makes a new one). At most a few: each holds log_joint and its
# closure.
_RUNS = Cache(8)


def _compiled_run(config: tuple) -> Callable:
    try:
        run = _RUNS.get(config)
    except Exception:  # something static is unhashable or not comparable: compiled for this call only
        return _build_run(config)
    if run is None:
        run = _RUNS.put(config, _build_run(config))
    return run


def _build_run(config: tuple) -> Callable:
    from ._posterior import free_logdensity

    log_joint, typed, closed, kernel, num_warmup, num_samples, thinning, mesh, spec, fields, sequential = config[:11]
    every = config[-1]  # (config[11:13]: the effort flag and the density's fingerprint, only cache keys here)
    total = num_warmup + num_samples
    # NumPyro's thinning (fori_collect): num_samples // thinning draws, the last of each block of
    # `thinning` iterations counted from num_warmup + num_samples % thinning
    kept, start = num_samples // thinning, num_warmup + num_samples % thinning
    others, static, options = jax.tree_util.tree_unflatten(closed, [x for _, x in typed])

    def collect(state):
        out = {"z": state.z}
        for name in fields:
            value = state
            for part in name.split("."):
                value = getattr(value, part)
            out[name] = value
        return out

    def run(keys, init, dynamic, state):
        """The draws ``(chain, draw, ...)`` and the chains' last states (chain axis first)."""
        if sequential:  # one chain at a time: NumPyro's unbatched kernel, traced once
            chains = jnp.arange(jax.tree_util.tree_leaves(init)[0].shape[0])
            return jax.lax.map(lambda x: run_chains(x[0], x[1], x[2], dynamic, x[3]), (keys, init, chains, state))
        draws, last = run_chains(keys, init, 0, dynamic, state)
        return jax.tree_util.tree_map(lambda x: jnp.swapaxes(x, 0, 1), draws), last

    def run_chains(keys, init, chain, dynamic, state):
        """The chains of ``keys`` (a chain axis: NumPyro's vectorized path, vmap of its init and
        sample; none: one chain, ``chain`` of the bar's count), from ``state`` if given (a
        resume; the kernel's init still runs, to set it up), draws shaped (draw, ...)."""
        arrays, seeded = dynamic
        logdensity = free_logdensity(log_joint, static, eqx.combine(arrays, others))
        sampler = kernel(potential_fn=lambda p: -logdensity(p), **options, **seeded)
        first = sampler.init(jax.random.wrap_key_data(keys), num_warmup, init, (), {})
        state = first if state is None else state
        # One loop over warmup and sampling compiles NUTS once (a loop for each would compile
        # it twice); draw k is written at slot k // thinning, in place.
        buffer = jax.tree_util.tree_map(lambda x: jnp.zeros((kept, *x.shape), x.dtype), collect(state))

        def body(i, carry):
            state, buffer = carry
            state = sampler.sample(state, (), {})
            if every:  # the bar: a host callback every `every` iterations
                done = chain * total + i + 1
                jax.lax.cond((i + 1) % every == 0, lambda: jax.debug.callback(LoopProgress.tick, done), lambda: None)
            k = i - start
            keep = (k >= 0) & ((k + 1) % thinning == 0)
            slot = jnp.maximum(k, 0) // thinning

            def write(buf, new):
                old = jax.lax.dynamic_index_in_dim(buf, slot, keepdims=False)
                return jax.lax.dynamic_update_index_in_dim(buf, jnp.where(keep, new, old), slot, 0)

            return state, jax.tree_util.tree_map(write, buffer, collect(state))

        state, draws = jax.lax.fori_loop(0, total, body, (state, buffer))
        return draws, state

    if spec == P(CHAINS):
        # manual over the chain axis only: each device runs its own chains' loops; any other
        # mesh axis (the data's) stays under XLA's automatic partitioning
        run = jax.shard_map(
            run, mesh=mesh, in_specs=(spec, spec, P(), spec), out_specs=spec, axis_names={CHAINS}, check_vma=False
        )
    return jax.jit(run)
