"""The :class:`Posterior` that :func:`rb.sample` returns: draws, statistics, ArviZ data,
resume (in memory or from a checkpoint), save and load."""

import copy
import os
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree
from numpyro.infer import HMC, MCMC, NUTS

from . import _arviz, _checkpoint, _checks, _effort, _persist
from ._density import partition
from ._naming import draws_to_dict
from ._paths import leaves_with_paths
from ._tree import unwrap
from ._trust import check_draws
from ._util import NegLogDensity, max_tree_depth, sampler_max_tree_depth, to_sample_stats

HMC_FIELDS = ("diverging", "num_steps", "energy", "potential_energy", "accept_prob", "adapt_state.step_size")


def free_logdensity(log_joint: Callable, static: PyTree, args: tuple) -> Callable[[PyTree], Array]:
    neg = NegLogDensity(log_joint, True, static)
    return lambda params: -neg(params, *args)


def kernel_class(kernel: type | str) -> type:
    if isinstance(kernel, str):
        kernels = {"nuts": NUTS, "hmc": HMC}
        if kernel.lower() not in kernels:
            raise ValueError(f"kernel must be 'nuts', 'hmc' or a NumPyro kernel class, got {kernel!r}.")
        kernel = kernels[kernel.lower()]
    return kernel


def extra_fields_for(mcmc: MCMC) -> tuple[str, ...]:
    # The HMC family (NUTS included) has the fields ArviZ's sample_stats need; other kernels
    # (BarkerMH, ...) have other states, so nothing extra is collected for them.
    return HMC_FIELDS if isinstance(mcmc.sampler, HMC) else ()


def unwrap_draws(static: PyTree, samples: PyTree) -> PyTree:
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
        mcmc: the NumPyro ``MCMC`` object where NumPyro's MCMC ran (``chain_method`` "vectorized"
            or "parallel", or ``checkpoint=``); ``None`` for the bridge's own loop ("sequential",
            the default on CPU, and "sharded") and after :meth:`load`.
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
        self._loop = None  # how the bridge's own loop ran (chain_method 'sequential'/'sharded'): for resume
        self._quick_compile = False  # whether rb.sample compiled with less optimisation (_effort)
        self.coords: dict | None = None  # az.from_numpyro's coords/dims, used by to_inference_data
        self.dims: dict | None = None
        self.inference_library = "numpyro"  # attrs["inference_library"]; rb.blackjax sets "blackjax"

    @classmethod
    def _from_mcmc(cls, model, static, mcmc, log_joint, args, log_likelihood):
        samples = mcmc.get_samples(group_by_chain=True)
        stats = to_sample_stats(mcmc.get_extra_fields(group_by_chain=True), sampler_max_tree_depth(mcmc.sampler))
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
            to_sample_stats(extras, sampler_max_tree_depth(mcmc.sampler)),
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
            self._draws = unwrap_draws(self._static, self._samples)
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
            >>> model = {"theta": rb.Positive(jax.numpy.ones(2))}
            >>> post = rb.sample(model, lambda m: dist.Exponential(1.0).log_prob(m["theta"]).sum(),
            ...                  key=jax.random.key(0), num_warmup=50, num_samples=50, num_chains=1,
            ...                  progress_bar=False, coords={"arm": ["a", "b"]}, dims={"theta": ["arm"]})
            >>> idata = post.to_inference_data()
            >>> rb.arviz.group(idata, "unconstrained_posterior")["theta.unconstrained"].dims
            ('chain', 'draw', 'arm')
            >>> rb.arviz.attrs(idata)["inference_library"]
            'numpyro'
        """
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
        # compiled as the first run was (the same draws), unless rb.compile_effort says otherwise
        explicit = _effort.explicit()
        with _effort.effort(self._quick_compile if explicit is None else explicit):
            return self._resume(num_samples, progress_bar, log_joint, args)

    def _resume(self, num_samples, progress_bar, log_joint, args) -> "Posterior":
        if self._writer is not None:
            return self._resume_checkpoint(num_samples, progress_bar, log_joint, args)
        if self.mcmc is None and self._loop is not None:  # the bridge's own loop ran it
            from ._sharded import resume

            return resume(self, num_samples, progress_bar)
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
        mcmc.run(self._last_state.rng_key, extra_fields=extra_fields_for(mcmc))
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
        out._loop = self._loop
        out._quick_compile = self._quick_compile
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
            potential_fn = jax.jit(lambda p: -free_logdensity(self._log_joint, self._static, self._args)(p))
            mcmc = MCMC(
                kernel_class(cfg["kernel"])(potential_fn=potential_fn, **cfg["kernel_kwargs"]),
                num_warmup=cfg["num_warmup"],
                num_samples=cfg["every"],
                num_chains=cfg["num_chains"],
                chain_method=cfg["chain_method"],
                progress_bar=progress_bar,
            )
            fresh = True
        every = self._config["every"] if self._config else max(1, mcmc.num_samples)
        samples, extras, state = _checkpoint.run_chunks(
            mcmc, self._last_state, num_samples, every, writer, extra_fields_for(mcmc), fresh=fresh
        )
        samples, extras = _checkpoint.concat(samples, extras)
        return self._append(samples, to_sample_stats(extras, sampler_max_tree_depth(mcmc.sampler)), mcmc, state)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``posterior.nc`` (ArviZ netCDF), ``unconstrained.eqx`` (equinox serialisation
        of the sampled free arrays) and ``meta.json`` (sizes and the model's signature) into
        ``directory``, atomically: a new directory is built beside it and swapped in, so a
        crash leaves the old contents or the new, never a mix. ``directory`` must be new, empty
        or an earlier save: one holding other files is refused (``FileExistsError``), not replaced,
        and so is the working directory or one above it (``ValueError``)."""
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
        cfg = got.config or {}
        depth = max_tree_depth(kernel_class(cfg["kernel"]), cfg["kernel_kwargs"]) if cfg else None
        post = cls(
            model,
            static,
            got.samples,
            to_sample_stats(got.extras, depth) if got.extras else {},
            log_joint=lj,
            args=args,
            log_likelihood=ll,
        )
        post._last_state, post._writer, post._config = got.state, got.writer, got.config
        post._quick_compile = bool(cfg.get("quick_compile", False))
        return post

    def __repr__(self) -> str:
        div = int(np.sum(self.sample_stats.get("diverging", 0)))
        return f"Posterior(num_chains={self.num_chains}, num_draws={self.num_draws}, divergences={div})"
