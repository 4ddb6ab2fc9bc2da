"""Variational inference over the free, unconstrained arrays: mean-field, full-rank and
normalising-flow guides, fitted by maximising the ELBO with the sticking-the-landing gradient
(Roeder, Wu & Duvenaud 2017: the score term of ``log q``, zero in expectation, is dropped by
stopping the gradient through ``q``'s parameters, so the variance vanishes as ``q → p``)."""

import math
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._approx import Approximation
from ._density import check_bijective, log_density, partition
from ._guides import Flow, make_guide, trainable_partition
from ._mesh import auto_axes
from ._util import coordinate_names


def flat_log_density(log_joint: Callable, model: PyTree, args: tuple, what: str):
    """``(flat, unravel, static, log_p)``: the model's free arrays flattened, and ``log_p(z)``
    the unconstrained log-density (``jacobian=True``) at flat coordinates ``z``."""
    check_bijective(model, what)
    model, args = auto_axes((model, args))
    params, static = partition(model)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError(f"{what}: the model has no free arrays (every array is frozen, static or not a float).")
    flat, unravel = ravel_pytree(params)

    def log_p(z: Array) -> Array:
        return log_density(log_joint, eqx.combine(unravel(z), static), *args, jacobian=True)

    return flat, unravel, static, log_p


def negative_elbo(
    trainable: PyTree,
    static: PyTree,
    extra: Any,
    log_p: Callable[[Array, Any], Array],
    key: PRNGKeyArray,
    num_particles: int,
    stick_the_landing: bool = True,
) -> Float[Array, ""]:
    """Monte Carlo ``-ELBO`` of the guide ``eqx.combine(trainable, static)``, whose gradient is
    the sticking-the-landing estimator: ``z = T_φ(ε)`` carries the gradient to ``φ`` while
    ``log q`` is evaluated with ``φ`` stopped (for ``q = p`` every draw's gradient is exactly 0)."""
    q = eqx.combine(trainable, static)
    z = q.sample(key, (num_particles,))
    frozen = jax.lax.stop_gradient(trainable) if stick_the_landing else trainable
    log_q = eqx.combine(frozen, static).log_prob(z)
    lp = jax.vmap(lambda zi: log_p(zi, extra))(z)
    return -jnp.mean(lp - log_q)


def fit_elbo(
    guide: Any,
    log_p: Callable[[Array, Any], Array],
    extra: Any,
    *,
    key: PRNGKeyArray,
    steps: int,
    optimizer: optax.GradientTransformation,
    num_particles: int,
    progress_bar: bool,
    what: str,
) -> tuple[Any, Any, Array]:
    """Maximise ``E_q[log_p(z, extra) - log q(z)]`` over the guide's trainable arrays and
    ``extra`` (a PyTree of arrays, e.g. centredness logits; may be ``None``) with optax.

    Sticking the landing: ``z = T_φ(ε)`` carries the gradient to ``φ``, ``log q`` is evaluated
    with ``φ`` stopped. Runs as compiled ``lax.scan`` chunks (about 20, for the tqdm bar).
    Returns ``(guide, extra, losses)``, ``losses`` the negative ELBO estimate of every step."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"{what}: steps must be a positive int, got {steps!r}.")
    if not isinstance(num_particles, (int, np.integer)) or num_particles < 1:
        raise ValueError(f"{what}: num_particles must be a positive int, got {num_particles!r}.")
    trainable, static = trainable_partition(guide)

    def loss(state, step_key):
        return negative_elbo(state[0], static, state[1], log_p, step_key, num_particles)

    def chunk(state, opt_state, keys):
        def body(carry, k):
            state, opt_state = carry
            value, grads = jax.value_and_grad(loss)(state, k)
            updates, opt_state = optimizer.update(grads, opt_state, state)
            new = optax.apply_updates(state, updates)
            # A non-finite step (a draw in a region where log p is -inf) is skipped, not applied.
            ok = jnp.isfinite(value) & jnp.all(
                jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(new)])
            )
            new = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, state)
            return (new, opt_state), value

        (state, opt_state), values = jax.lax.scan(body, (state, opt_state), keys)
        return state, opt_state, values

    state = (trainable, extra)
    opt_state = optimizer.init(state)
    n_chunks = min(20, steps) if progress_bar else 1
    sizes = [steps // n_chunks + (i < steps % n_chunks) for i in range(n_chunks)]
    run = jax.jit(chunk)
    keys = jax.random.split(key, steps)
    losses, done = [], 0
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=what, leave=True)
    try:
        for size in sizes:
            state, opt_state, values = run(state, opt_state, keys[done : done + size])
            done += size
            losses.append(values)
            if bar is not None:
                bar.update(size)
                bar.set_postfix(elbo=f"{-float(jnp.mean(values[-max(1, size // 4) :])):.6g}")
    finally:
        if bar is not None:
            bar.close()
    losses = jnp.concatenate(losses)
    if not bool(jnp.any(jnp.isfinite(losses))):
        raise ValueError(
            f"{what}: every ELBO estimate was non-finite: the guide's draws fall where the model's "
            "log-density is -inf or nan. Start the model at valid values (e.g. rb.map_estimate) or "
            "lower init_scale."
        )
    trainable, extra = state
    return eqx.combine(trainable, static), extra, losses


class VariationalResult(Approximation):
    """A fitted variational approximation ``q`` of the density of the free arrays, from
    :func:`variational`: an :class:`~reparam_bridge.Approximation` like ``rb.laplace``'s result
    (``sample``, ``sample_unconstrained``, ``to_inference_data``, warm starts of ``rb.sample``).

    Attributes:
        mean: the wrapped model at ``q``'s mean (in unconstrained coordinates).
        covariance: ``(n, n)`` covariance of ``q`` over the flattened free arrays (exact for the
            Gaussians, from draws for a flow), labelled by ``names``.
        names: one label per coordinate, e.g. ``"tau.unconstrained"``.
        khat: Pareto k-hat of PSIS with ``q`` as proposal for the true density (``nan`` if
            skipped): below ~0.5 ``q`` is good, above 0.7 unreliable.
        pool: ``(num_psis_draws, n)`` the flat draws of ``q`` behind :attr:`khat`.
        log_weights: their smoothed, normalised PSIS log-weights; :meth:`to_posterior`
            resamples :attr:`pool` with them.
        ess: importance-sampling ESS ``1 / Σ w²`` of those weights.
        guide: the fitted guide (``MeanField``, ``FullRank`` or ``Flow`` around a flowjax
            distribution), with ``sample(key, shape)`` and ``log_prob(z)`` over flat coordinates.
        losses: the negative ELBO estimate at every optimisation step.
    """

    mean: PyTree
    covariance: Float[Array, "n n"]
    names: tuple[str, ...] = eqx.field(static=True)
    khat: float = eqx.field(static=True)
    pool: Float[Array, "draws n"]
    log_weights: Float[Array, " draws"]
    ess: float = eqx.field(static=True)
    guide: Any
    losses: Float[Array, " steps"]

    _library: ClassVar[str] = "reparam_bridge.variational"

    @property
    def elbo(self) -> float:
        """The ELBO, averaged over the last tenth of the steps."""
        if self.losses.shape[0] == 0:
            return math.nan
        tail = self.losses[-max(1, self.losses.shape[0] // 10) :]
        return -float(jnp.mean(tail))

    def _unconstrained(self, key: PRNGKeyArray, shape: tuple[int, ...]) -> tuple[Array, Array]:
        z = self.guide.sample(key, shape)
        return z, z  # no separate noise: the flow's base draws stay inside it


def default_guide_optimizer(guide: Any, learning_rate: float | None, steps: int) -> optax.GradientTransformation:
    # Flows have many more parameters than the Gaussians and need smaller steps. The rate
    # decays (cosine, to 1/20): where q cannot equal p the STL gradient keeps some variance,
    # and a decaying step averages it out (Robbins-Monro). Clipping keeps one bad draw (a huge
    # gradient near a boundary) from throwing the fit off.
    lr = learning_rate if learning_rate is not None else (5e-3 if isinstance(guide, Flow) else 2e-2)
    schedule = optax.cosine_decay_schedule(lr, max(int(steps), 1), alpha=0.05)
    return optax.chain(optax.clip_by_global_norm(10.0), optax.adam(schedule))


def build_result(
    guide: Any,
    losses: Array,
    static: PyTree,
    unravel: Callable,
    log_p: Callable,
    key: PRNGKeyArray,
    num_psis_draws: int,
    names: tuple[str, ...],
) -> VariationalResult:
    """Moments and PSIS diagnostics of a fitted guide."""
    from ._psis import psislw

    k_mom, k_psis = jax.random.split(key)
    mean, cov = guide.moments(k_mom)
    khat, lw, ess = math.nan, jnp.zeros((0,)), math.nan
    z = jnp.zeros((0, mean.shape[-1]), mean.dtype)
    if num_psis_draws:
        z = guide.sample(k_psis, (int(num_psis_draws),))
        log_ratios = np.asarray(jax.jit(jax.vmap(log_p))(z) - guide.log_prob(z), dtype=np.float64)
        log_ratios = np.where(np.isfinite(log_ratios), log_ratios, -np.inf)
        lw, khat = psislw(log_ratios)
        ess = float(1.0 / np.sum(np.exp(2 * lw)))
        lw = jnp.asarray(lw)
    return VariationalResult(
        mean=eqx.combine(unravel(mean), static),
        covariance=cov,
        names=names,
        khat=float(khat),
        pool=z,
        log_weights=lw,
        ess=ess,
        guide=guide,
        losses=losses,
    )


def variational(
    model: PyTree,
    log_joint: Callable[..., Float[Array, ""]],
    *args: Any,
    key: PRNGKeyArray,
    guide: Any = "meanfield",
    steps: int = 2000,
    num_particles: int = 8,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    init_scale: float = 0.1,
    num_psis_draws: int = 1000,
    progress_bar: bool = True,
) -> VariationalResult:
    """Variational inference on the free, unconstrained arrays of ``model``: maximise the ELBO
    ``E_q[log p(z) - log q(z)]``, ``log p`` = ``rb.log_density(log_joint, model, *args,
    jacobian=True)``, with the sticking-the-landing gradient estimator and optax.

    Args:
        model: the wrapped model; ``q`` starts centred at its current free arrays.
        log_joint: ``log_joint(unwrapped_model, *args)`` as for ``rb.sample``.
        key: PRNG key for the guide's initialisation, the ELBO draws and PSIS.
        guide: ``"meanfield"`` (diagonal Gaussian), ``"fullrank"`` (Gaussian with a Cholesky
            factor), ``"flow"`` (4 flowjax affine coupling layers, RealNVP, or one masked
            autoregressive layer for a single scalar; needs the ``flows`` extra) or any
            unconditional flowjax distribution over the ``n`` flattened free scalars (e.g.
            ``flowjax.flows.coupling_flow(...)``).
        steps: optimiser steps; ``num_particles`` draws per ELBO estimate.
        optimizer: an optax transformation (default: Adam, gradients clipped, learning rate
            ``learning_rate`` (2e-2 for Gaussians, 5e-3 for flows) decaying by a cosine to 1/20).
        init_scale: the guide's initial standard deviation in unconstrained coordinates.
        num_psis_draws: draws for the PSIS k-hat (0 skips it).

    Returns:
        A :class:`VariationalResult`: ``.mean``, ``.covariance``, ``.names``, ``.khat``,
        ``.sample``, ``.to_inference_data`` (as ``rb.laplace``'s), ``.guide``, ``.losses``,
        ``.elbo``; ``rb.sample(..., init=result)`` starts NUTS from it.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> y = jnp.array([0.3, -0.1, 0.5, 0.2])
        >>> model = {"mu": rb.Real(0.0, prior=dist.Normal(0.0, 1.0))}
        >>> log_joint = lambda m, y: dist.Normal(m["mu"], 1.0).log_prob(y).sum()
        >>> q = rb.variational(model, log_joint, y, key=jax.random.key(0), steps=1000, progress_bar=False)
        >>> abs(float(q.covariance[0, 0]) - 0.2) < 0.02, q.khat < 0.5  # exact variance 1 / (1 + 4)
        (True, True)
        >>> q.sample(jax.random.key(1), 100, num_chains=2)["mu"].shape
        (2, 100)
    """
    if key is None or not isinstance(key, jax.Array):
        raise TypeError("rb.variational needs key=jax.random.key(...).")
    flat, unravel, static, log_p = flat_log_density(log_joint, model, args, "rb.variational")
    k_init, k_fit, k_diag = jax.random.split(key, 3)
    q = make_guide(guide, flat, k_init, init_scale)
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
        what="rb.variational",
    )
    names = tuple(coordinate_names(partition(model)[0]))
    return build_result(q, losses, static, unravel, log_p, k_diag, num_psis_draws, names)
