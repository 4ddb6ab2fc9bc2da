"""The common interface of posterior approximations over the free, unconstrained arrays
(:class:`~reparam_bridge.LaplaceResult`, Pathfinder, variational fits): draws, ArviZ data,
the PSIS k-hat, and what ``rb.sample(init=approx)`` needs to warm-start NUTS."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._arviz import to_inference_data
from ._density import partition
from ._naming import draws_to_dict


class Approximation(eqx.Module):
    """Base class of approximations ``q`` of the density of the free, unconstrained arrays.

    A subclass declares the fields below and implements :meth:`_unconstrained`; everything
    else (draws as the user's model type, ArviZ data, per-chain starts, the flat
    representation the warm start uses) follows from them.

    Attributes:
        mean: the wrapped model at the approximation's mean (or mode) in unconstrained space.
        covariance: ``(n, n)`` covariance of the flattened free arrays, in the order of
            ``jax.flatten_util.ravel_pytree(rb.partition(mean)[0])``; ``names`` labels it.
        names: one label per coordinate, e.g. ``"s.unconstrained"``.
        khat: Pareto k-hat of PSIS with ``q`` as proposal for the true unconstrained density
            (``nan`` if not computed). Below ~0.5 ``q`` is good, 0.5-0.7 usable with
            importance weights, above 0.7 unreliable.
    """

    mean: eqx.AbstractVar[PyTree]
    covariance: eqx.AbstractVar[Float[Array, "n n"]]
    names: eqx.AbstractVar[tuple[str, ...]]
    khat: eqx.AbstractVar[float]

    # ``attrs["inference_library"]`` of :meth:`to_inference_data`.
    _library: ClassVar[str] = "reparam_bridge"

    def _unconstrained(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> tuple[Array, Array]:
        """Flat unconstrained draws shaped ``(*shape, n)`` and whatever the subclass needs
        alongside them (Laplace: the standard-normal noise)."""
        raise NotImplementedError

    # ---- flat representation -------------------------------------------------------------
    @property
    def flat_mean(self) -> Float[Array, " n"]:
        """The mean as one flat vector (the coordinates of :attr:`covariance`)."""
        return ravel_pytree(partition(self.mean)[0])[0]

    @property
    def unravel(self):
        """Function from a flat ``(n,)`` vector to the free arrays of :attr:`mean` (combine
        with ``rb.partition(approx.mean)[1]`` to get a wrapped model)."""
        return ravel_pytree(partition(self.mean)[0])[1]

    @property
    def num_dims(self) -> int:
        return int(self.flat_mean.shape[0])

    def draws_flat(self, key: PRNGKeyArray, num_draws: int, num_chains: int = 1) -> Float[Array, "chain draw n"]:
        """Flat unconstrained draws, shaped ``(num_chains, num_draws, n)``."""
        return self._unconstrained(key, (num_chains, num_draws))[0]

    def resampled_flat(self, key: PRNGKeyArray, num_draws: int, num_chains: int = 1) -> Float[Array, "chain draw n"]:
        """Flat draws of the *posterior*, shaped ``(num_chains, num_draws, n)``: the PSIS
        draws ``pool`` resampled with their weights where the approximation kept them, else
        :meth:`draws_flat`."""
        pool, log_weights = getattr(self, "pool", None), getattr(self, "log_weights", None)
        if pool is None or log_weights is None or log_weights.shape[0] == 0:
            return self.draws_flat(key, num_draws, num_chains)
        # folded: a user who passes rb.laplace's key here too must not resample with the very
        # bits that drew the pool (the index would track the pool's noise)
        key = jax.random.fold_in(key, 1)
        idx = jax.random.choice(key, pool.shape[0], (num_chains, num_draws), replace=True, p=jnp.exp(log_weights))
        return pool[idx]

    def _unravel_batched(self, z: Array) -> PyTree:
        unravel = self.unravel
        fn = unravel
        for _ in range(z.ndim - 1):
            fn = jax.vmap(fn)
        return fn(z)

    # ---- draws ------------------------------------------------------------------------------
    def sample_unconstrained(self, key: PRNGKeyArray, num_draws: int, num_chains: int = 1) -> PyTree:
        """The wrapped model with free arrays drawn from ``q``, leaves shaped
        ``(chain, draw, ...)`` (the analogue of ``Posterior.unconstrained``)."""
        static = partition(self.mean)[1]
        return eqx.combine(self._unravel_batched(self.draws_flat(key, num_draws, num_chains)), static)

    def sample(self, key: PRNGKeyArray, num_draws: int, num_chains: int = 1) -> PyTree:
        """Draws as the user's model type, unwrapped, every array leaf shaped ``(chain, draw, ...)``."""
        from ._posterior import unwrap_draws

        static = partition(self.mean)[1]
        return unwrap_draws(static, self._unravel_batched(self.draws_flat(key, num_draws, num_chains)))

    def to_inference_data(self, key: PRNGKeyArray, num_draws: int = 1000, num_chains: int = 1):
        """``arviz.InferenceData`` of ``sample(key, num_draws, num_chains)``, variables named
        by attribute paths as for ``rb.sample``; ``attrs["pareto_khat"]`` holds :attr:`khat`."""
        draws = self.sample(key, num_draws, num_chains)
        return to_inference_data(
            draws_to_dict(self.mean, draws),
            inference_library=self._library,
            attrs={"pareto_khat": self.khat},
        )

    # ---- what a warm start needs ----------------------------------------------------------
    def initial_params(self, key: PRNGKeyArray, num_chains: int) -> PyTree:
        """Free arrays of ``num_chains`` independent draws, leading axis the chain: dispersed
        starting points for ``rb.sample(init=...)``."""
        return self._unravel_batched(self.draws_flat(key, num_chains, 1)[0])

    def inverse_mass_matrix(self, dense: bool = False) -> Float[Array, "..."]:
        """The covariance (``dense=True``) or its diagonal: the inverse mass matrix that makes
        the approximated posterior roughly isotropic for HMC."""
        cov = jnp.asarray(self.covariance)
        return cov if dense else jnp.diag(cov)

    def to_posterior(self, key: PRNGKeyArray, num_samples: int = 1000, num_chains: int = 4):
        """Draws of the posterior as an ``rb.Posterior`` (``draws``, ``to_inference_data``,
        ``save``), with no MCMC behind it: use it when :attr:`khat` < 0.5 says the
        approximation is good.

        Where the approximation kept its PSIS draws (``pool`` and ``log_weights``: Laplace,
        Pathfinder and variational fits), these are the pool resampled with the PSIS weights (sampling-importance
        resampling, as Stan's Pathfinder returns), so they follow the true posterior, not the
        Gaussian; else ``q``'s own draws. Resampled draws repeat: they carry at most ``ess``
        (the weights' effective sample size) draws' worth of information, whatever
        ``num_samples * num_chains`` is and whatever ArviZ's ESS of them says."""
        from ._warmstart import approximation_posterior

        return approximation_posterior(self, key, num_samples, num_chains)
