"""NeuTra (Hoffman et al. 2019, "NeuTra-lizing bad geometry in Hamiltonian Monte Carlo using
neural transport"): fit a normalising flow ``q = T#N(0, I)`` to the posterior by VI, then run
NUTS on the base coordinates ``b``, where the density ``p(T(b))·|det ∂T/∂b|`` is close to a
standard normal whatever the original geometry (funnels included).

Here the flow becomes one :class:`Bijector` at the root of the tree, :class:`NeuTra`: its free
array is ``b``; ``unwrap`` maps ``b`` through the flow to the original model's flat free arrays
and unwraps the original model (so draws come back in the user's type and names); its
log-Jacobian is the flow's plus everything the original tree carried (its bijectors'
log-Jacobians and attached priors)."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from . import _checks
from ._bijectors.base import Bijector
from ._density import log_det_jacobian, log_prior, partition
from ._guides import Flow, default_flow, import_flowjax, make_guide
from ._neutra_tune import fine_tune as tune
from ._neutra_tune import skip_flow
from ._unwrappable import NonTrainable, unwrap
from ._util import coordinate_names
from ._variational import build_result, default_guide_optimizer, fit_elbo, flat_log_density


class _Spec:
    """The non-array part of ``(flow bijection, original static tree)``, with the unravel
    function of the original free arrays. Hashed by identity: one per :func:`neutra` call."""

    def __init__(self, treedef, is_array: tuple[bool, ...], others: tuple, unravel: Callable, names: tuple):
        self.treedef, self.is_array, self.others, self.unravel, self.names = treedef, is_array, others, unravel, names

    def rebuild(self, arrays) -> tuple[Any, PyTree]:
        arrays, others = iter(arrays), iter(self.others)
        leaves = [next(arrays) if a else next(others) for a in self.is_array]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


class NeuTra(Bijector):
    """The root of a NeuTra-preconditioned model, from :func:`neutra`: free array ``b`` (the
    flow's base coordinates); value = the original model, unwrapped, at ``z = T(b)``.

    The flow and the original tree's static part are frozen (never sampled; stored flattened
    so that the original's wrappers, which hold no arrays there, are not visited on their own).

    Attributes:
        unconstrained: the base coordinates ``b``, shape ``(n,)``.
    """

    unconstrained: Array
    frozen: Any  # NonTrainable(tuple of arrays): the flow's and the original static part's arrays
    spec: _Spec = eqx.field(static=True)

    def _parts(self) -> tuple[Any, PyTree]:
        arrays = self.frozen.tree if isinstance(self.frozen, NonTrainable) else self.frozen
        return self.spec.rebuild(arrays)

    def wrapped(self) -> PyTree:
        """The original wrapped model whose free arrays are ``T(b)``: e.g.
        ``jax.vmap(lambda b: rb.partition(m.with_base(b).wrapped())[0])`` maps base draws back."""
        bijection, static = self._parts()
        return eqx.combine(self.spec.unravel(bijection.transform(self.unconstrained)), static)

    def with_base(self, b: Array) -> "NeuTra":
        """The same model at base coordinates ``b``."""
        return eqx.tree_at(lambda m: m.unconstrained, self, jnp.asarray(b, self.unconstrained.dtype))

    def unwrap(self) -> PyTree:
        return unwrap(self.wrapped())

    def log_det_jacobian(self) -> Float[Array, ""]:
        bijection, static = self._parts()
        z, log_det = bijection.transform_and_log_det(self.unconstrained)
        tree = eqx.combine(self.spec.unravel(z), static)
        # The original tree's own log-Jacobians and priors: the root hides its bijectors from
        # rb.log_det_jacobian / rb.log_prior, so it counts them here.
        return log_det + log_det_jacobian(tree) + log_prior(tree)


def neutra_model(flow: Any, static: PyTree, unravel: Callable, names: tuple[str, ...]) -> NeuTra:
    """A :class:`NeuTra` root at ``b = 0`` for a trained flowjax distribution ``flow`` over
    the flat free arrays of the original model (``static``/``unravel`` from its partition)."""
    import_flowjax()
    import paramax
    from flowjax.distributions import AbstractTransformed, StandardNormal

    dist = paramax.unwrap(flow)
    if isinstance(dist, AbstractTransformed):
        dist = dist.merge_transforms()  # Normal(loc, scale) bases become an affine first layer
    if not isinstance(dist, AbstractTransformed) or not isinstance(dist.base_dist, StandardNormal):
        raise ValueError(
            "rb.geometry.neutra: the flow must be a flowjax transformed distribution whose base is a "
            f"(standard) normal, got {type(dist).__name__}"
            + (f" with base {type(dist.base_dist).__name__}" if isinstance(dist, AbstractTransformed) else "")
            + ". Build it with e.g. flowjax.flows.masked_autoregressive_flow(key, base_dist=Normal(jnp.zeros(n)))."
        )
    leaves, treedef = jax.tree_util.tree_flatten((dist.bijection, static))
    is_array = tuple(eqx.is_array(x) for x in leaves)
    spec = _Spec(treedef, is_array, tuple(x for x, a in zip(leaves, is_array) if not a), unravel, names)
    arrays = tuple(x for x, a in zip(leaves, is_array) if a)
    n = dist.base_dist.shape[-1]
    return NeuTra(jnp.zeros((n,), jnp.result_type(float)), NonTrainable(arrays), spec)


AUTO_FINE_TUNE = 16_000


def auto_fine_tune(flow: Any, n: int, steps: int) -> int:
    """:func:`neutra`'s ``fine_tune=None``: the tail fine-tune for the default flow
    (``AUTO_FINE_TUNE`` steps) when it is trained (``steps``) and has more than one coordinate;
    none for a user's flow (which may not have the standard normal base the fine-tune needs)."""
    return AUTO_FINE_TUNE if flow is None and steps and n >= 2 else 0


def neutra(
    model: PyTree,
    log_joint: Callable[..., Float[Array, ""]],
    *args: Any,
    key: PRNGKeyArray,
    flow: Any = None,
    steps: int = 3000,
    num_particles: int = 8,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    init_scale: float = 1.0,
    num_psis_draws: int = 1000,
    progress_bar: bool = True,
    return_approximation: bool = False,
    fine_tune: int | None = None,
) -> NeuTra:
    """Precondition ``model`` with a normalising flow trained by VI (NeuTra): returns a model
    whose free arrays are the flow's base coordinates, for ``rb.sample``.

    The flow ``T`` is fitted by :func:`rb.variational <reparam_bridge.variational>` (ELBO,
    sticking the landing) to the density of the model's flattened free arrays; the returned
    :class:`NeuTra` root has free array ``b`` and value ``unwrap(model at z = T(b))``, its
    log-Jacobian counting the flow. ``rb.sample`` on it runs NUTS in ``b`` (nearly a standard
    normal when ``q`` is good), and ``.draws`` / ``.to_inference_data()`` come back in the
    user's model type and names. ``rb.geometry.compare`` takes it like any other model.

    Arguments not listed below are as for :func:`rb.variational <reparam_bridge.variational>`.

    Args:
        model: the wrapped model (every wrapper a bijector); ``q`` starts near its current values.
        flow: ``None`` (affine coupling layers with tanh conditioners; see ``fine_tune``) or an
            unconditional flowjax distribution over the ``n`` flat free scalars with a normal
            base, trained from where it is (``steps=0`` uses it as given, e.g. already trained).
        return_approximation: also return the ``VariationalResult`` (``.khat``: below ~0.7 the
            flow is good enough that NUTS in ``b`` mixes well).
        init_scale: the default flow starts as ``N(current values, init_scale² I)``.
        fine_tune: after the ELBO, this many steps of a fine-tune that flattens the flow's
            tails (``reparam_bridge/_neutra_tune.py``); with ``flow=None`` (and more than one
            coordinate) the flow is then 8 coupling layers with linear-skip conditioners.
            ``None`` (the default): ``AUTO_FINE_TUNE`` (16,000) steps when ``flow=None``, ``steps``
            is not 0 and there is more than one coordinate, else none; ``0`` gives the ELBO-only
            flow of earlier versions (4 coupling layers). It costs ~35-100 s on one CPU core for
            the models below.

    Sample the returned model with ``target_accept_prob=0.95``. Measured (4 chains x 1,000
    draws, flow seeds 0-9, targets >= 5x plain NUTS's min ESS per gradient and <= 20 of 4,000
    divergent): at NUTS's default 0.8, Neal's funnel (10 coordinates) met them on 9 of 10 flows
    (173-432x) and centred eight schools on 7 of 10 (11-231x); the misses were divergences, and
    they swing with the NUTS key for one flow (214, 1, 17, 22 at four keys). At 0.95 every flow
    that missed gave 5-10 divergent, 21-265x plain NUTS at 0.95. (The ELBO alone, ``fine_tune=0``:
    2x with 82-149 divergent on schools.) Which seeds missed differed between two sweeps of this code
    sessions apart: no seed is special.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> model = {"v": rb.Real(0.0), "x": rb.Real(jnp.zeros(2))}
        >>> def funnel(m):
        ...     return dist.Normal(0, 3).log_prob(m["v"]) + dist.Normal(0, jnp.exp(m["v"] / 2)).log_prob(m["x"]).sum()
        >>> pre = rb.geometry.neutra(model, funnel, key=jax.random.key(0), steps=300, progress_bar=False,
        ...                          fine_tune=0)  # ELBO only, to be quick; the default adds the tail fine-tune
        >>> rb.partition(pre)[0].unconstrained.shape  # the base coordinates
        (3,)
        >>> post = rb.sample(pre, funnel, key=jax.random.key(1), num_warmup=100, num_samples=100,
        ...                  num_chains=1, progress_bar=False)
        >>> post.draws["x"].shape, sorted(rb.arviz.draws_to_dict(pre, post.draws))
        ((1, 100, 2), ['v', 'x'])
    """
    if key is None or not isinstance(key, jax.Array):
        raise TypeError("rb.geometry.neutra needs key=jax.random.key(...).")
    what = "rb.geometry.neutra"
    import_flowjax()
    flat, unravel, static, log_p = flat_log_density(log_joint, model, args, what)
    if fine_tune is None:
        fine_tune = auto_fine_tune(flow, flat.shape[-1], steps)
    fine_tune = _checks.check_int("fine_tune", fine_tune, what, minimum=0)
    k_init, k_fit, k_diag = jax.random.split(key, 3)
    if flow is None and fine_tune:
        q = Flow(skip_flow(k_init, flat, init_scale))
    elif flow is None:
        q = Flow(default_flow(k_init, flat, init_scale))
    else:
        q = make_guide(flow, flat, k_init, init_scale)
    if not isinstance(q, Flow):
        raise TypeError(f"{what}: flow must be None or a flowjax distribution, got {type(flow).__name__}.")
    if fine_tune and not isinstance(q.dist.base_dist, import_flowjax().distributions.StandardNormal):
        # the fine-tune works on the bijection alone; a trained Normal base would be left out of it
        raise ValueError(
            f"{what}: fine_tune needs a flow whose base is flowjax's StandardNormal, got "
            f"{type(q.dist.base_dist).__name__}; put its affine map into the bijection, or use flow=None."
        )
    losses = jnp.zeros((0,))
    if steps:
        optimizer = optimizer if optimizer is not None else default_guide_optimizer(q, learning_rate, steps)
        q, _, losses = fit_elbo(
            q,
            lambda z, _: log_p(z),
            None,
            key=k_fit,
            steps=steps,
            optimizer=optimizer,
            num_particles=num_particles,
            progress_bar=progress_bar,
            what=what,
        )
    if fine_tune:
        q = Flow(
            tune(q.dist, log_p, jax.random.fold_in(key, 99), steps=fine_tune, progress_bar=progress_bar, what=what)
        )
    names = tuple(coordinate_names(partition(model)[0]))
    out = neutra_model(q.dist, static, unravel, names)
    if return_approximation:
        return out, build_result(q, losses, static, unravel, log_p, k_diag, num_psis_draws, names)
    return out
