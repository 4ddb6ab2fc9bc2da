"""NUTS/HMC sampling of wrapped models through NumPyro, and the :class:`Posterior`."""

import copy
import functools
import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray, PyTree
from numpyro.infer import HMC, MCMC, NUTS

from . import _arviz, _checkpoint, _checks, _persist, _warmstart
from ._density import check_bijective, gather, partition
from ._naming import draws_to_dict
from ._paths import leaves_with_paths
from ._sharded import args_are_sharded, sample_sharded
from ._tree import unwrap
from ._trust import check_draws
from ._util import NegLogDensity, tree_depth

_EXTRA_FIELDS = ("diverging", "num_steps", "energy", "potential_energy", "accept_prob", "adapt_state.step_size")


def _logdensity_fn(log_joint: Callable, static: PyTree, args: tuple) -> Callable[[PyTree], Array]:
    neg = NegLogDensity(log_joint, True, static)
    return lambda params: -neg(params, *args)


def _check_key(key: Any) -> None:
    _checks.check_key(key, "rb.sample")


def check_model(model: PyTree, log_joint: Callable, args: tuple, what: str) -> tuple[PyTree, PyTree]:
    """Every check that needs no compilation: bijective wrappers, free arrays, scalar density."""
    _checks.check_callable("log_joint", log_joint, what)
    _checks.preflight(model, what, density=True)
    check_bijective(model, what)
    params, static = partition(model)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError(
            f"{what}: the model has no free arrays to sample (every array is frozen, static or "
            "not a float). Wrap parameters in rb.Real/rb.Positive/... or use float arrays."
        )
    try:
        out = jax.eval_shape(lambda p: log_joint(unwrap(eqx.combine(p, static)), *args), params)
    except Exception as e:
        e.add_note(f"{what}: raised by log_joint(unwrap(model), *args) while checking its output shape.")
        raise
    _checks.check_density_output(out, what)
    _checks.warn_unwrapped_free(model, what)
    return params, static


def diagnose_nonfinite(model: PyTree, log_joint: Callable, args: tuple) -> str | None:
    """Say which parameter makes the log-density at ``model`` non-finite (``None`` if finite)."""
    bijectors = gather(model).bijectors
    for b in bijectors:
        path, node, value = b.path, b.node, b.value
        if not all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(value)):
            return f"the value of '{path}' ({type(node).__name__}) is not finite"
        if not bool(jnp.isfinite(jnp.sum(b.log_det))):
            return f"the log-Jacobian of '{path}' ({type(node).__name__}) is not finite"
        prior = getattr(node, "prior", None)
        if prior is not None and not bool(jnp.isfinite(jnp.sum(prior.log_prob(value)))):
            return f"the prior of '{path}' is not finite at its value {np.asarray(value)}"
    params, static = partition(model)
    for path, leaf in leaves_with_paths(params):
        if leaf is not None and not bool(jnp.all(jnp.isfinite(leaf))):
            return f"the free array '{path}' holds non-finite values"
    lj = lambda p: log_joint(unwrap(eqx.combine(p, static)), *args)
    try:
        value = jax.jit(lj)(params)  # jitted: NumPyro's argument validation raises only eagerly
    except Exception:  # the search below still names the parameter
        value = jnp.nan
    if bool(jnp.isfinite(value)):
        return None
    # log_joint itself is -inf/nan (say, a data-dependent bound is violated): name the
    # parameters that, moved alone, make it finite; else those with a non-finite gradient.
    owners = sorted((b.path for b in bijectors), key=len, reverse=True)
    name = lambda path: next((o for o in owners if path == o or path.startswith(o + ".")), path)
    suspects = list(dict.fromkeys(name(p) for p in _movable_leaves(jax.jit(lj), params)))
    if suspects:
        return (
            f"log_joint(unwrap(model), *args) is {float(value)} at the initial point and becomes finite "
            f"when only {', '.join(repr(s) for s in suspects)} is moved: its initial value is outside "
            "what log_joint allows (e.g. a bound that depends on the data)"
        )
    grads = jax.grad(lambda p: jnp.nan_to_num(lj(p), nan=-1e30, neginf=-1e30))(params)
    suspects = [name(p) for p, g in leaves_with_paths(grads) if g is not None and not bool(jnp.all(jnp.isfinite(g)))]
    where = f"; the parameters involved: {', '.join(suspects)}" if suspects else ""
    return f"log_joint(unwrap(model), *args) is {float(value)} at the initial point{where}"


def _movable_leaves(fn: Callable, params: PyTree) -> list[str]:
    """Paths of the free arrays which, shifted alone in unconstrained space, make ``fn`` finite."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    paths = [path for path, _ in leaves_with_paths(params)]
    found = []
    for i, leaf in enumerate(leaves):
        for step in (0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 4.0, -4.0, 8.0, -8.0, 16.0, -16.0):
            moved = [leaf + step if j == i else x for j, x in enumerate(leaves)]
            if bool(jnp.isfinite(fn(jax.tree_util.tree_unflatten(treedef, moved)))):
                found.append(paths[i])
                break
    return found


@functools.partial(jax.jit, static_argnums=2)  # one compilation rather than one per leaf shape
def _initial_params(params: PyTree, key: PRNGKeyArray, num_chains: int, jitter: float) -> PyTree:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    jittered = [
        leaf[None] + jitter * jax.random.uniform(k, (num_chains, *leaf.shape), leaf.dtype, -1.0, 1.0)
        for leaf, k in zip(leaves, keys)
    ]
    return jax.tree_util.tree_unflatten(treedef, jittered)


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
            ``"parallel"`` (one chain per local device), ``"vectorized"``, ``"sequential"``.
            Default: ``"sharded"`` when some array in ``args`` is split over devices (it stays
            split; see ``reparam_bridge._sharded``), else ``"parallel"`` when there are enough
            devices, else ``"vectorized"``. ``"sharded"`` returns ``mcmc=None`` (no ``resume``).
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
    _checks.check_sample_args(num_warmup, num_samples, num_chains, chain_method, kernel, init_jitter, thinning)
    every = _checks.check_checkpoint_args(checkpoint, checkpoint_every, num_samples, thinning)
    _checks.check_kernel_kwargs({"nuts": NUTS, "hmc": HMC}.get(str(kernel).lower(), kernel), kernel_kwargs, "rb.sample")
    params, static = check_model(model, log_joint, args, "rb.sample")

    init_key, run_key = jax.random.split(key)
    if _warmstart.is_seed(init):  # an rb.laplace/rb.pathfinder/ensemble result: starts, metric, warmup
        init_params, num_warmup, kernel_kwargs = _warmstart.seed(
            init, params, init_key, num_chains, num_warmup, kernel_kwargs, init_jitter
        )
    elif init is None:
        init_params = _initial_params(params, init_key, num_chains, init_jitter)
    else:
        init_params = _stack_inits(init, static, num_chains)
    num_warmup = _warmstart.DEFAULT_NUM_WARMUP if num_warmup is None else num_warmup
    # The same compiled potential checks the starts and serves NumPyro (no extra compile);
    # the data is its argument, not a constant, so sharded data stays sharded.
    neg_log_density = NegLogDensity(log_joint, True, static)
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

    sharded = chain_method == "sharded" or (chain_method is None and args_are_sharded(args))
    if sharded and checkpoint is not None:
        raise ValueError(
            "rb.sample: checkpoint= is not supported with chain_method='sharded' (or sharded data) yet; "
            "drop checkpoint= or pass chain_method='vectorized'."
        )
    if sharded:
        post = sample_sharded(
            model,
            static,
            log_joint,
            args,
            _kernel_class(kernel),
            kernel_kwargs,
            init_params,
            run_key,
            num_warmup=num_warmup,
            num_samples=num_samples,
            thinning=thinning,
            log_likelihood=log_likelihood,
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
            )
            writer = _checkpoint.start(checkpoint, model, config, (log_joint, args, log_likelihood), num_samples)
            mcmc.warmup(run_key, init_params=init_params, extra_fields=_extra_fields(mcmc))
            writer.commit(None, None, mcmc.post_warmup_state)
            parts = _checkpoint.run_chunks(
                mcmc, mcmc.post_warmup_state, num_samples, every, writer, _extra_fields(mcmc), fresh=False
            )
            post = Posterior._from_chunks(model, static, mcmc, log_joint, args, log_likelihood, parts, writer)
        else:
            mcmc.run(run_key, init_params=init_params, extra_fields=_extra_fields(mcmc))
            post = Posterior._from_mcmc(model, static, mcmc, log_joint, args, log_likelihood)
    post.coords, post.dims = coords, dims
    if coords is not None or dims is not None:
        post.to_inference_data()  # bad coords/dims fail here, not at the user's later call
    check_draws(post._samples, post.sample_stats)
    return post


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
        _kernel_class(kernel)(potential_fn=potential_fn, **kernel_kwargs),
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


def _kernel_class(kernel: type | str) -> type:
    if isinstance(kernel, str):
        kernels = {"nuts": NUTS, "hmc": HMC}
        if kernel.lower() not in kernels:
            raise ValueError(f"kernel must be 'nuts', 'hmc' or a NumPyro kernel class, got {kernel!r}.")
        kernel = kernels[kernel.lower()]
    return kernel


def _extra_fields(mcmc: MCMC) -> tuple[str, ...]:
    # The HMC family (NUTS included) has the fields ArviZ's sample_stats need; other kernels
    # (BarkerMH, ...) have other states, so nothing extra is collected for them.
    return _EXTRA_FIELDS if isinstance(mcmc.sampler, HMC) else ()


def _sample_stats(extra: dict[str, Array], max_tree_depth: Any = None) -> dict[str, np.ndarray]:
    if "num_steps" not in extra:
        return {}
    n_steps = np.asarray(extra["num_steps"])
    out = {
        "diverging": np.asarray(extra["diverging"], dtype=bool),
        "n_steps": n_steps,
        "tree_depth": tree_depth(n_steps),
        "energy": np.asarray(extra["energy"]),
        "lp": -np.asarray(extra["potential_energy"]),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "step_size": np.asarray(extra["adapt_state.step_size"]),
    }
    if max_tree_depth is not None:  # NUTS: (warmup, sampling) depths or one for both
        depth = max_tree_depth[-1] if isinstance(max_tree_depth, tuple) else max_tree_depth
        out["reached_max_treedepth"] = out["tree_depth"] >= int(depth)
    return out


def _batched_unwrap(static: PyTree, samples: PyTree) -> PyTree:
    """Unwrap every (chain, draw) of ``samples``; one compiled vmap over the flattened draws."""
    leaves = jax.tree_util.tree_leaves(samples)
    chains, draws = leaves[0].shape[:2]
    flat = jax.tree_util.tree_map(lambda x: x.reshape(chains * draws, *x.shape[2:]), samples)
    out = eqx.filter_jit(eqx.filter_vmap(lambda p: unwrap(eqx.combine(p, static))))(flat)
    return jax.tree_util.tree_map(lambda x: x.reshape(chains, draws, *x.shape[1:]) if eqx.is_array(x) else x, out)


class Posterior:
    """Draws from :func:`sample`.

    Attributes:
        draws: the user's model type, unwrapped, every array leaf shaped ``(chain, draw, ...)``.
        unconstrained: the wrapped model whose free arrays are the sampled unconstrained
            values, shaped ``(chain, draw, ...)``.
        sample_stats: ``diverging``, ``n_steps``, ``tree_depth``, ``energy``, ``lp``,
            ``acceptance_rate``, ``step_size`` (ArviZ names), each ``(chain, draw)``.
        mcmc: the NumPyro ``MCMC`` object (``None`` after :meth:`load`).
    """

    def __init__(
        self,
        model,
        static,
        samples,
        sample_stats,
        *,
        mcmc=None,
        log_joint=None,
        args=(),
        log_likelihood=None,
        log_likelihood_values=None,
    ):
        self.model = model
        self._static = static
        self._samples = samples
        self.sample_stats = sample_stats
        self.mcmc = mcmc
        self._log_joint = log_joint
        self._args = args
        self._log_likelihood = log_likelihood
        self._log_likelihood_values = log_likelihood_values
        self._draws = None
        self._last_state = None
        self._writer = None  # a checkpoint directory's writer: resume keeps writing there
        self._config = None  # the kernel settings, when loaded from a checkpoint
        self.coords: dict | None = None  # az.from_numpyro's coords/dims, used by to_inference_data
        self.dims: dict | None = None
        self.inference_library = "numpyro"  # attrs["inference_library"]; rb.blackjax sets "blackjax"

    @classmethod
    def _from_mcmc(cls, model, static, mcmc, log_joint, args, log_likelihood):
        samples = mcmc.get_samples(group_by_chain=True)
        stats = _sample_stats(
            mcmc.get_extra_fields(group_by_chain=True), getattr(mcmc.sampler, "_max_tree_depth", None)
        )
        post = cls(
            model, static, samples, stats, mcmc=mcmc, log_joint=log_joint, args=args, log_likelihood=log_likelihood
        )
        post._last_state = mcmc.last_state
        return post

    @classmethod
    def _from_chunks(cls, model, static, mcmc, log_joint, args, log_likelihood, parts, writer):
        samples, extras, state = parts
        samples, extras = _checkpoint.concat(samples, extras)
        post = cls(
            model,
            static,
            samples,
            _sample_stats(extras),
            mcmc=mcmc,
            log_joint=log_joint,
            args=args,
            log_likelihood=log_likelihood,
        )
        post._last_state, post._writer = state, writer
        return post

    @property
    def num_chains(self) -> int:
        return int(jax.tree_util.tree_leaves(self._samples)[0].shape[0])

    @property
    def num_draws(self) -> int:
        return int(jax.tree_util.tree_leaves(self._samples)[0].shape[1])

    @property
    def unconstrained(self) -> PyTree:
        return eqx.combine(self._samples, self._static)

    @property
    def draws(self) -> PyTree:
        if self._draws is None:
            self._draws = _batched_unwrap(self._static, self._samples)
        return self._draws

    def _pointwise_log_likelihood(self) -> dict[str, np.ndarray] | None:
        if self._log_likelihood_values is None and self._log_likelihood is not None:
            fn, args = self._log_likelihood, self._args
            flat = jax.tree_util.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), self._samples)
            static = self._static
            pointwise = lambda p, a: fn(unwrap(eqx.combine(p, static)), *a)  # noqa: E731 - data as argument
            out = eqx.filter_jit(eqx.filter_vmap(pointwise, in_axes=(0, None)))(flat, args)
            out = out if isinstance(out, dict) else {"obs": out}
            self._log_likelihood_values = {
                k: np.asarray(v).reshape(self.num_chains, self.num_draws, *np.shape(v)[1:]) for k, v in out.items()
            }
        return self._log_likelihood_values

    def to_inference_data(self, *, coords: dict | None = None, dims: dict | None = None):
        """ArviZ data (``InferenceData`` on ArviZ 0.2x, ``xarray.DataTree`` on 1.x) with the groups
        ``posterior`` (variables named by attribute paths), ``unconstrained_posterior`` (the
        sampled free arrays, named by their paths: ``"sigma.unconstrained"``), ``sample_stats``
        (with ``reached_max_treedepth`` under NUTS) and, when a pointwise ``log_likelihood`` was
        given, ``log_likelihood``. ``coords``/``dims`` mean what they mean in ``az.from_numpyro``
        (default: those given to ``rb.sample``); an unconstrained array of the same shape as its
        value takes the value's dims. The attrs name ``inference_library="numpyro"`` and the versions.

        Example:
            >>> import jax, numpyro.distributions as dist
            >>> import reparam_bridge as rb
            >>> from reparam_bridge import _arviz
            >>> model = {"theta": rb.Positive(jax.numpy.ones(2))}
            >>> post = rb.sample(model, lambda m: dist.Exponential(1.0).log_prob(m["theta"]).sum(),
            ...                  key=jax.random.key(0), num_warmup=50, num_samples=50, num_chains=1,
            ...                  progress_bar=False, coords={"arm": ["a", "b"]}, dims={"theta": ["arm"]})
            >>> idata = post.to_inference_data()
            >>> _arviz.group(idata, "unconstrained_posterior")["theta.unconstrained"].dims
            ('chain', 'draw', 'arm')
            >>> _arviz.attrs(idata)["inference_library"]
            'numpyro'
        """
        from ._paths import leaves_with_paths

        unconstrained = {p: np.asarray(x) for p, x in leaves_with_paths(partition(self.unconstrained)[0])}
        return _arviz.to_inference_data(
            draws_to_dict(self.model, self.draws),
            sample_stats=self.sample_stats,
            log_likelihood=self._pointwise_log_likelihood(),
            unconstrained_posterior=unconstrained,
            coords=self.coords if coords is None else coords,
            dims=self.dims if dims is None else dims,
            inference_library=self.inference_library,
        )

    def resume(
        self,
        num_samples: int | None = None,
        *,
        progress_bar: bool = False,
        log_joint: Callable[..., Any] | None = None,
        args: tuple | None = None,
    ) -> "Posterior":
        """Continue the same chains (same step size and mass matrix, no new warmup) for
        ``num_samples`` more draws; returns a Posterior holding the old and the new draws.

        After ``Posterior.load`` of a checkpoint directory, ``num_samples=None`` finishes the
        planned run, and the new chunks are written to the same directory. ``log_joint``
        and ``args`` are needed only when the checkpoint could not pickle them."""
        if num_samples is not None:
            num_samples = _checks.check_int("num_samples", num_samples, "resume", minimum=1)
        if self._writer is not None:
            return self._resume_checkpoint(num_samples, progress_bar, log_joint, args)
        if self.mcmc is None:
            raise ValueError(
                "resume: this Posterior has no sampler state (it was loaded from a Posterior.save "
                "directory, which keeps draws only). To resume after loading, sample with "
                "rb.sample(..., checkpoint=DIR) and load that directory."
            )
        # A shallow copy shares NumPyro's compiled functions but leaves this Posterior's MCMC
        # (and any other Posterior resumed from it) untouched.
        mcmc = copy.copy(self.mcmc)
        mcmc._collection_params = dict(mcmc._collection_params)
        mcmc.post_warmup_state = self._last_state
        if num_samples is not None:
            mcmc.num_samples = int(num_samples)
        mcmc._set_collection_params()
        mcmc.progress_bar = progress_bar
        mcmc.run(self._last_state.rng_key, extra_fields=_extra_fields(mcmc))
        new = Posterior._from_mcmc(self.model, self._static, mcmc, self._log_joint, self._args, self._log_likelihood)
        return self._append(new._samples, new.sample_stats, mcmc, new._last_state)

    def _append(self, samples, stats, mcmc, last_state) -> "Posterior":
        cat = lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)], axis=1)
        if self.num_draws:
            samples = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b], axis=1), self._samples, samples)
            stats = {k: cat(self.sample_stats[k], stats[k]) for k in stats if k in self.sample_stats}
        out = Posterior(
            self.model,
            self._static,
            samples,
            stats,
            mcmc=mcmc,
            log_joint=self._log_joint,
            args=self._args,
            log_likelihood=self._log_likelihood,
        )
        out._last_state, out._writer, out._config = last_state, self._writer, self._config
        out.coords, out.dims = self.coords, self.dims
        check_draws(out._samples, out.sample_stats, "resume")
        return out

    def _resume_checkpoint(self, num_samples, progress_bar, log_joint, args) -> "Posterior":
        writer = self._writer
        done, planned = writer.manifest["done"], writer.manifest["planned"]
        if num_samples is None:
            num_samples = planned - done
            if num_samples <= 0:
                raise ValueError(
                    f"resume: the checkpointed run is complete ({done} draws per chain); pass "
                    "num_samples=N to draw N more."
                )
        writer.manifest = {**writer.manifest, "planned": max(planned, done + num_samples)}
        if log_joint is not None:
            self._log_joint, self._args = log_joint, tuple(args or ())
        mcmc, fresh = self.mcmc, False
        if mcmc is None:
            if self._log_joint is None:
                raise TypeError(
                    "resume: the checkpoint holds no log_joint (it did not pickle: a lambda or a "
                    "closure); pass resume(n, log_joint=..., args=(...))."
                )
            cfg = self._config
            potential_fn = jax.jit(lambda p: -_logdensity_fn(self._log_joint, self._static, self._args)(p))
            mcmc = MCMC(
                _kernel_class(cfg["kernel"])(potential_fn=potential_fn, **cfg["kernel_kwargs"]),
                num_warmup=cfg["num_warmup"],
                num_samples=cfg["every"],
                num_chains=cfg["num_chains"],
                chain_method=cfg["chain_method"],
                progress_bar=progress_bar,
            )
            fresh = True
        every = self._config["every"] if self._config else max(1, mcmc.num_samples)
        samples, extras, state = _checkpoint.run_chunks(
            mcmc, self._last_state, num_samples, every, writer, _extra_fields(mcmc), fresh=fresh
        )
        samples, extras = _checkpoint.concat(samples, extras)
        return self._append(samples, _sample_stats(extras), mcmc, state)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``posterior.nc`` (ArviZ netCDF), ``unconstrained.eqx`` (equinox serialisation
        of the sampled free arrays) and ``meta.json`` (sizes and the model's signature) into
        ``directory``, atomically: a new directory is built beside it and swapped in, so a
        crash leaves the old contents or the new, never a mix."""
        _persist.save_posterior(self, os.fspath(directory))

    @classmethod
    def load(cls, directory: str | os.PathLike, model: PyTree) -> "Posterior":
        """Read what :meth:`save` or ``rb.sample(..., checkpoint=directory)`` wrote; ``model``
        gives the structure (any values) and must match what was saved (names, wrapper kinds,
        shapes, dtypes): a mismatch, a missing or a damaged file is an error naming it."""
        _checks.check_no_foreign(model, "Posterior.load")
        params, static = partition(model)
        like = lambda n, c=None: jax.tree_util.tree_map(
            lambda x: jnp.zeros((c if c is not None else 1, n, *x.shape), x.dtype), params
        )
        if not _checkpoint.is_checkpoint(directory):
            return _persist.load_posterior(cls, os.fspath(directory), model, static, like)
        got = _checkpoint.load(directory, model, like)
        lj, args, ll = got.target if got.target is not None else (None, (), None)
        post = cls(
            model,
            static,
            got.samples,
            _sample_stats(got.extras) if got.extras else {},
            log_joint=lj,
            args=args,
            log_likelihood=ll,
        )
        post._last_state, post._writer, post._config = got.state, got.writer, got.config
        return post

    def __repr__(self) -> str:
        div = int(np.sum(self.sample_stats.get("diverging", 0)))
        return f"Posterior(num_chains={self.num_chains}, num_draws={self.num_draws}, divergences={div})"
