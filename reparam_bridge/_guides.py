"""Variational families over the flattened free arrays: mean-field and full-rank Gaussians,
and flowjax normalising flows (an optional dependency, imported lazily).

Every guide is an ``eqx.Module`` with ``sample(key, shape) -> (*shape, n)`` and
``log_prob(z) -> shape``, so the ELBO loop and the sticking-the-landing estimator (which
evaluates ``log_prob`` with the parameters' gradients stopped) treat them alike.
"""

import sys
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray

from ._unwrappable import NonTrainable


def import_flowjax():
    """flowjax and paramax, or an ImportError naming the extra that installs them."""
    try:
        import flowjax  # noqa: F401
        import flowjax.bijections
        import flowjax.distributions
        import flowjax.flows
        import paramax  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "normalising-flow guides (rb.variational(guide='flow'), rb.geometry.neutra) need flowjax: "
            "pip install 'reparam_bridge[flows]' (or pip install flowjax)."
        ) from e
    return flowjax


def is_frozen(x: Any) -> bool:
    """Leaves the optimiser must not move: ``rb.NonTrainable`` and paramax's ``NonTrainable``."""
    if isinstance(x, NonTrainable):
        return True
    paramax = sys.modules.get("paramax")
    return paramax is not None and isinstance(x, paramax.NonTrainable)


def trainable_partition(guide: Any) -> tuple[Any, Any]:
    """``(trainable, static)`` of a guide: its inexact arrays outside frozen wrappers."""
    return eqx.partition(guide, eqx.is_inexact_array, is_leaf=is_frozen)


def _inv_softplus(x: Array) -> Array:
    return x + jnp.log(-jnp.expm1(-x))


class MeanField(eqx.Module):
    """``N(loc, diag(softplus(raw_scale))²)``; the softplus keeps the scale positive
    without exp's blow-up early in optimisation (NumPyro's ``AutoNormal`` does the same)."""

    loc: Array
    raw_scale: Array

    @classmethod
    def init(cls, loc: Array, scale: float) -> "MeanField":
        return cls(loc, jnp.full_like(loc, _inv_softplus(jnp.asarray(scale, loc.dtype))))

    @property
    def scale(self) -> Array:
        return jax.nn.softplus(self.raw_scale)

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        return self.loc + self.scale * jax.random.normal(key, (*shape, self.loc.shape[-1]), self.loc.dtype)

    def log_prob(self, z: Array) -> Array:
        u = (z - self.loc) / self.scale
        return jnp.sum(-0.5 * u**2 - jnp.log(self.scale) - 0.5 * jnp.log(2 * jnp.pi), axis=-1)

    def moments(self, key: PRNGKeyArray) -> tuple[Array, Array]:
        return self.loc, jnp.diag(self.scale**2)


class FullRank(eqx.Module):
    """``N(loc, L Lᵀ)`` with ``L`` lower triangular, its diagonal ``softplus(raw_diag)``."""

    loc: Array
    raw_diag: Array
    off_diag: Array  # (n, n); only the strictly lower triangle is used

    @classmethod
    def init(cls, loc: Array, scale: float) -> "FullRank":
        n = loc.shape[-1]
        return cls(loc, jnp.full_like(loc, _inv_softplus(jnp.asarray(scale, loc.dtype))), jnp.zeros((n, n), loc.dtype))

    @property
    def scale_tril(self) -> Array:
        return jnp.tril(self.off_diag, -1) + jnp.diag(jax.nn.softplus(self.raw_diag))

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        eps = jax.random.normal(key, (*shape, self.loc.shape[-1]), self.loc.dtype)
        return self.loc + eps @ self.scale_tril.T

    def log_prob(self, z: Array) -> Array:
        L = self.scale_tril
        d = z - self.loc
        u = jax.scipy.linalg.solve_triangular(L, d.reshape(-1, d.shape[-1]).T, lower=True).T.reshape(d.shape)
        n = z.shape[-1]
        return -0.5 * jnp.sum(u**2, -1) - jnp.sum(jnp.log(jnp.diag(L))) - 0.5 * n * jnp.log(2 * jnp.pi)

    def moments(self, key: PRNGKeyArray) -> tuple[Array, Array]:
        L = self.scale_tril
        return self.loc, L @ L.T


class Flow(eqx.Module):
    """A flowjax distribution over the ``n`` flattened free arrays."""

    dist: Any

    def sample(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> Array:
        return self.dist.sample(key, shape)

    def log_prob(self, z: Array) -> Array:
        return self.dist.log_prob(z)

    def moments(self, key: PRNGKeyArray, num_draws: int = 4000) -> tuple[Array, Array]:
        z = self.sample(key, (num_draws,))
        return jnp.mean(z, 0), jnp.atleast_2d(jnp.cov(z, rowvar=False))


def default_flow(key: PRNGKeyArray, loc: Array, scale: float, *, flow_layers: int = 4, nn_width: int = 32) -> Any:
    """A flowjax flow started near ``N(loc, scale² I)``: affine coupling layers (RealNVP; both
    directions cost one pass, so the sticking-the-landing ``log q`` is cheap) between a
    standard normal base and a final elementwise affine map, so the networks see standardised
    inputs. With one coordinate, a masked autoregressive layer instead.

    The coupling scales are ``exp`` of the conditioner's output (flowjax's default is a
    softplus): a funnel's scale ``exp(v/2)`` is then a linear function away, and tanh
    conditioners keep the map smooth, which NUTS needs when the flow preconditions it."""
    import_flowjax()
    import paramax
    from flowjax.bijections import Affine, Chain
    from flowjax.distributions import StandardNormal, Transformed
    from flowjax.flows import coupling_flow, masked_autoregressive_flow

    n = loc.shape[-1]
    base = StandardNormal((n,))
    transformer = eqx.tree_at(lambda a: a.scale, Affine(), replace=paramax.Parameterize(jnp.exp, jnp.zeros(())))
    make = coupling_flow if n >= 2 else masked_autoregressive_flow
    flow = make(
        key,
        base_dist=base,
        transformer=transformer,
        flow_layers=flow_layers,
        nn_width=nn_width,
        nn_activation=jax.nn.tanh,
        invert=False,
    )
    return Transformed(base, Chain([flow.bijection, Affine(loc, jnp.full((n,), scale, loc.dtype))]))


def make_guide(guide: Any, loc: Array, key: PRNGKeyArray, init_scale: float) -> Any:
    """The guide module for ``rb.variational(guide=...)``."""
    if isinstance(guide, str):
        kind = guide.lower().replace("-", "").replace("_", "")
        if kind == "meanfield":
            return MeanField.init(loc, init_scale)
        if kind == "fullrank":
            return FullRank.init(loc, init_scale)
        if kind == "flow":
            return Flow(default_flow(key, loc, init_scale))
        raise ValueError(f"guide must be 'meanfield', 'fullrank', 'flow' or a flowjax distribution, got {guide!r}.")
    if isinstance(guide, (MeanField, FullRank, Flow)):
        return guide
    flowjax = import_flowjax()
    if isinstance(guide, flowjax.distributions.AbstractDistribution):
        if guide.shape != loc.shape or guide.cond_shape is not None:
            raise ValueError(
                f"guide: the flowjax distribution has shape {guide.shape} (condition {guide.cond_shape}); it must be "
                f"an unconditional distribution of shape {loc.shape}, the number of free scalars of the model."
            )
        return Flow(guide)
    raise TypeError(
        f"guide must be 'meanfield', 'fullrank', 'flow' or a flowjax distribution, got {type(guide).__name__}."
    )
