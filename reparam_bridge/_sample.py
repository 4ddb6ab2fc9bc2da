"""NUTS/HMC sampling of wrapped models through NumPyro: :func:`sample`."""

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree
from numpyro.infer import HMC, MCMC, NUTS
from numpyro.infer.ensemble import EnsembleSampler

from . import _checkpoint, _checks, _effort, _warmstart
from ._density import partition
from ._diagnose import check_log_likelihood, check_model, diagnose_nonfinite
from ._mesh import args_are_sharded, auto_axes
from ._paths import leaves_with_paths
from ._posterior import Posterior, extra_fields_for, kernel_class
from ._sharded import sample_sharded
from ._trust import check_draws
from ._util import NegLogDensity, host_rng


def _check_key(key: Any) -> None:
    _checks.check_key(key, "rb.sample")


def _initial_params(params: PyTree, key: PRNGKeyArray, num_chains: int, jitter: float) -> PyTree:
    """``num_chains`` starts: every free value plus uniform jitter in ``[-jitter, jitter]``,
    drawn on the host (``host_rng``: no threefry compile in a fresh process)."""
    rng = host_rng(key)

    def jittered(leaf):
        u = rng.uniform(-1.0, 1.0, (num_chains, *leaf.shape))
        return jnp.asarray(np.asarray(leaf)[None] + jitter * u, leaf.dtype)

    return jax.tree_util.tree_map(jittered, params)


def _stack_inits(init: Any, static: PyTree, num_chains: int) -> PyTree:
    """Per-chain initial values: a list of wrapped models, or one wrapped model whose free
    arrays carry a leading chain axis."""
    if isinstance(init, (list, tuple)):
        if len(init) != num_chains:
            raise ValueError(f"init: got {len(init)} models for num_chains={num_chains}.")
        parts = [partition(m)[0] for m in init]
        return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *parts)
    params = partition(init)[0]
    for path, leaf in leaves_with_paths(params):
        if leaf.shape[:1] != (num_chains,):
            raise ValueError(f"init: free array '{path}' needs a leading chain axis of {num_chains}, got {leaf.shape}.")
    return params


def sample(
    model: PyTree,
    log_joint: Callable[..., Any],
    *args: Any,
    key: PRNGKeyArray,
    num_warmup: int | None = None,
    num_samples: int = 1000,
    num_chains: int = 4,
    chain_method: str | None = None,
    progress_bar: bool = True,
    kernel: type | str = "nuts",
    init: Any = None,
    init_jitter: float = 0.1,
    thinning: int = 1,
    log_likelihood: Callable[..., Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    coords: dict[str, Any] | None = None,
    dims: dict[str, list[str]] | None = None,
    **kernel_kwargs: Any,
) -> "Posterior":
    """Sample the free arrays of ``model`` with NumPyro NUTS (or HMC) in unconstrained space.

    The target is ``log_density(log_joint, model, *args, jacobian=True)``. Chains start at
    the model's current values (e.g. the MAP) plus uniform jitter of half-width
    ``init_jitter`` in unconstrained space, or at ``init`` (a list of ``num_chains`` wrapped
    models, or one whose free arrays have a leading chain axis).

    ``init`` may also be an approximation (``rb.laplace``, ``rb.pathfinder``) or an
    ``rb.map_estimate_ensemble`` result: a warm start. Chains then start at independent draws
    of the approximation (or at the ensemble's optima), and the initial inverse mass matrix
    (diagonal or dense per ``dense_mass``) and step size come from its covariance, with
    ``num_warmup`` defaulting to ``SEEDED_NUM_WARMUP`` (300) instead of 1,000 (measured in
    ``benchmarks/bench_time_to_posterior.py``). A warning says when the approximation is
    already good (k-hat < 0.5) and its draws would do (``approx.to_posterior(key)``).

    Args:
        num_warmup: warmup steps (default 1,000; 300 for a seeded ``init``).
        chain_method: ``"sharded"``: chains split over every device of every process (a
            ``Mesh`` of ``jax.devices()``; after ``jax.distributed.initialize`` too), vectorized
            within a device; ``num_chains`` a multiple of the device count. Or NumPyro's
            ``"parallel"`` (one chain per local device) or ``"vectorized"`` (chains under
            ``vmap``; the only one for ensemble kernels such as ``AIES``). ``"sequential"``: the
            chains one after another in one compiled program, the bridge's loop (NumPyro's own
            ``"sequential"``, which compiles again for each chain, runs only with
            ``checkpoint=``).
            Default: ``"sharded"`` when some array in ``args`` is split over devices (it stays
            split; see ``reparam_bridge._sharded``), else ``"parallel"`` when there are enough
            local devices, else on CPU ``"sequential"`` (measured fastest on every posterior
            tried, ``benchmarks/README.md``), else ``"vectorized"``. ``"sharded"`` and
            ``"sequential"`` return ``mcmc=None`` (``resume`` works) and keep their compiled
            sampler for the next call of the same shapes (compiled again when the model's
            frozen part or the kernel options hold arrays). A ``log_joint`` that reads a
            changed global is compiled anew (the cache is keyed by the density's jaxpr and
            constants), as NumPyro's ``MCMC`` traces every call. ``"sequential"`` with the
            progress bar on: Ctrl-C (in the main thread) stops the run at the bar's next tick
            (a hundredth of a chain) and raises ``KeyboardInterrupt`` (the run's draws are lost:
            ``checkpoint=`` keeps them).
        thinning: keep every ``thinning``-th draw, as NumPyro's ``MCMC``: ``num_samples //
            thinning`` draws per chain out of ``num_samples`` iterations after warmup.
        kernel: ``"nuts"``, ``"hmc"`` or a NumPyro kernel class taking ``potential_fn``.
        log_likelihood: optional ``fn(unwrapped_model, *args)`` returning pointwise
            log-likelihoods (an array, or a dict of arrays): stored for ``az.loo``/``az.waic``.
        checkpoint: a directory: after warmup, draws are taken in chunks of
            ``checkpoint_every`` (default ``num_samples // 10``, at least 1) and each chunk, with
            the full sampler state after it, is written there atomically. After a crash,
            ``rb.Posterior.load(checkpoint, model).resume()`` finishes the run with the same
            draws an uninterrupted run gives (see ``_checkpoint``).
        coords, dims: labels for :meth:`Posterior.to_inference_data`, as in ``az.from_numpyro``:
            ``coords={"school": names}, dims={"theta": ["school"]}`` (``dims`` keys are variable
            names: attribute paths, or ``"obs"``/your keys for the log-likelihood).
        **kernel_kwargs: passed to the kernel (``dense_mass``, ``target_accept_prob``,
            ``max_tree_depth``, ...).

    A ``rb.ReliabilityWarning`` says when the draws cannot be trusted (non-finite draws,
    mostly divergent transitions, split r-hat or ESS far off), with the numbers.

    Example:
        >>> import jax, numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> model = {"mu": rb.Real(0.0), "sigma": rb.Positive(1.0)}
        >>> def log_joint(m, y):
        ...     return (dist.Normal(0, 10).log_prob(m["mu"]) + dist.HalfNormal(5).log_prob(m["sigma"])
        ...             + dist.Normal(m["mu"], m["sigma"]).log_prob(y).sum())
        >>> y = jax.numpy.array([0.8, 1.2, 1.0, 0.9])
        >>> post = rb.sample(model, log_joint, y, key=jax.random.key(0), num_warmup=200,
        ...                  num_samples=200, num_chains=2, progress_bar=False)
        >>> post.draws["mu"].shape, post.sample_stats["diverging"].shape
        ((2, 200), (2, 200))
    """
    _check_key(key)
    model, args = auto_axes((model, args))
    _checks.check_sample_args(num_warmup, num_samples, num_chains, chain_method, kernel, init_jitter, thinning)
    every = _checks.check_checkpoint_args(checkpoint, checkpoint_every, num_samples, thinning)
    _checks.check_kernel_kwargs({"nuts": NUTS, "hmc": HMC}.get(str(kernel).lower(), kernel), kernel_kwargs, "rb.sample")
    ensemble = isinstance(kernel, type) and issubclass(kernel, EnsembleSampler)  # NumPyro's: vectorized only
    if ensemble and chain_method in ("sequential", "sharded") and num_chains > 1:
        raise ValueError(
            f"rb.sample: {kernel.__name__} moves its chains together (an ensemble): it needs "
            f"chain_method='vectorized' (or None), not {chain_method!r}."
        )
    params, static = check_model(model, log_joint, args, "rb.sample")
    check_log_likelihood(log_likelihood, params, static, args, "rb.sample")

    init_key, run_key = jax.random.split(key)
    if _warmstart.is_seed(init):  # an rb.laplace/rb.pathfinder/ensemble result: starts, metric, warmup
        # its draws run once (no work to count): quick on CPU unless rb.compile_effort("full") (0.7 s -> 0.3 s)
        with _effort.effort(_effort.decide(lambda: 0.0, 0)):
            init_params, num_warmup, kernel_kwargs = _warmstart.seed(
                init, params, init_key, num_chains, num_warmup, kernel_kwargs, init_jitter
            )
    elif init is None:
        init_params = _initial_params(params, init_key, num_chains, init_jitter)
    else:
        init_params = _stack_inits(init, static, num_chains)
    num_warmup = _warmstart.DEFAULT_NUM_WARMUP if num_warmup is None else num_warmup
    neg_log_density = NegLogDensity(log_joint, True, static)
    # less XLA optimisation where the run's work is small (see _effort: ~half NUTS's compile)
    first = jax.tree_util.tree_map(lambda x: x[0], init_params)
    quick = _effort.decide(
        lambda: _effort.elementwise_ops(lambda p, a: neg_log_density(p, *a), first, args),
        _effort.sampler_evaluations(num_chains, num_warmup + num_samples, kernel_kwargs),  # (thinning keeps fewer)
    )
    with _effort.effort(quick):
        # One compiled potential checks the starts (an error before the sampler compiles) and
        # serves NumPyro's MCMC; the bridge's loop compiles its own inside its program. The data
        # is its argument, not a constant, so sharded data stays sharded.
        potential_fn = functools.partial(eqx.filter_jit(lambda p, a: neg_log_density(p, *a)), a=args)
        init_lp = np.array(
            [-float(potential_fn(jax.tree_util.tree_map(lambda x: x[c], init_params))) for c in range(num_chains)]
        )
        if not bool(np.all(np.isfinite(init_lp))):
            chain = int(np.argmin(np.isfinite(init_lp)))
            start = eqx.combine(jax.tree_util.tree_map(lambda x: x[chain], init_params), static)
            why = diagnose_nonfinite(start, log_joint, args) or "the log-density is not finite"
            raise ValueError(
                f"rb.sample: the initial point of chain {chain} has a non-finite log-density: {why}. "
                "Start from valid values (e.g. the result of rb.map_estimate) or pass init=."
            )

        sharded = chain_method == "sharded" or (chain_method is None and args_are_sharded(args) and not ensemble)
        if not sharded and args_are_sharded(args):
            warnings.warn(
                f"rb.sample: *args are split over devices, but chain_method={chain_method!r} samples on one "
                "device, so the whole data set is gathered there. Pass chain_method=None or 'sharded' to "
                "keep them split.",
                UserWarning,
                stacklevel=2,
            )
        if sharded and checkpoint is not None:
            raise ValueError(
                "rb.sample: checkpoint= is not supported with chain_method='sharded' (or sharded data) yet; "
                "drop checkpoint= or pass chain_method='vectorized'."
            )
        # chains in sequence: the bridge's loop, compiled once (NumPyro's compiles per chain);
        # by default on CPU where there are fewer devices than chains (measured: _default_method)
        if chain_method is None and not sharded:
            if ensemble or not isinstance(kernel_class(kernel), type):  # (a partial(NUTS, ...): NumPyro's MCMC)
                chain_method = "vectorized"
            elif checkpoint is None:
                chain_method = _default_method(num_chains)
        sequential = chain_method == "sequential" and checkpoint is None and not sharded
        if sharded or sequential:
            post = sample_sharded(
                model,
                static,
                log_joint,
                args,
                kernel_class(kernel),
                kernel_kwargs,
                init_params,
                run_key,
                num_warmup=num_warmup,
                num_samples=num_samples,
                thinning=thinning,
                log_likelihood=log_likelihood,
                progress_bar=progress_bar,
                sequential=sequential,
            )
        else:
            mcmc, init_params = _mcmc(
                kernel,
                potential_fn,
                kernel_kwargs,
                num_warmup,
                num_samples,
                num_chains,
                chain_method,
                progress_bar,
                thinning,
                init_params,
            )
            if checkpoint is not None:
                config = dict(
                    kernel=kernel,
                    kernel_kwargs=kernel_kwargs,
                    num_warmup=num_warmup,
                    num_chains=num_chains,
                    chain_method=mcmc.chain_method,
                    every=every,
                    quick_compile=quick,
                )
                writer = _checkpoint.start(checkpoint, model, config, (log_joint, args, log_likelihood), num_samples)
                mcmc.warmup(run_key, init_params=init_params, extra_fields=extra_fields_for(mcmc))
                writer.commit(None, None, mcmc.post_warmup_state)
                parts = _checkpoint.run_chunks(
                    mcmc, mcmc.post_warmup_state, num_samples, every, writer, extra_fields_for(mcmc), fresh=False
                )
                post = Posterior._from_chunks(model, static, mcmc, log_joint, args, log_likelihood, parts, writer)
            else:
                mcmc.run(run_key, init_params=init_params, extra_fields=extra_fields_for(mcmc))
                post = Posterior._from_mcmc(model, static, mcmc, log_joint, args, log_likelihood)
    post.coords, post.dims = coords, dims
    post._quick_compile = quick  # a resumed run compiles as this one did: the same draws
    if coords is not None or dims is not None:
        post.to_inference_data()  # bad coords/dims fail here, not at the user's later call
    check_draws(post._samples, post.sample_stats)
    return post


def _default_method(num_chains: int) -> str:
    """``"parallel"`` (NumPyro's ``pmap``, one chain per device) where there are enough local
    devices; else on CPU ``"sequential"``, the bridge's compiled loop; else (an accelerator)
    ``"vectorized"``. On CPU the chains in sequence beat NumPyro's vectorized method on every
    posterior measured (``benchmarks/README.md``, "Default chain_method"): an unbatched NUTS
    traces ~5x faster and compiles no slower, runs without waiting for the longest tree of the
    batch, and a second call of the same shapes compiles nothing (no arrays in the frozen part)."""
    if jax.local_device_count() >= num_chains > 1:
        return "parallel"
    # (several processes: each samples on its own, as NumPyro's MCMC does there)
    return "sequential" if jax.default_backend() == "cpu" and jax.process_count() == 1 else "vectorized"


def _mcmc(
    kernel,
    potential_fn,
    kernel_kwargs,
    num_warmup,
    num_samples,
    num_chains,
    chain_method,
    progress_bar,
    thinning,
    init_params,
):
    """NumPyro's MCMC for the single-process chain methods, and the starts in its layout."""
    if chain_method is None:
        chain_method = "parallel" if jax.local_device_count() >= num_chains > 1 else "vectorized"
    mcmc = MCMC(
        kernel_class(kernel)(potential_fn=potential_fn, **kernel_kwargs),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=progress_bar,
        thinning=thinning,
    )
    if num_chains == 1:
        init_params = jax.tree_util.tree_map(lambda x: x[0], init_params)
    return mcmc, init_params
