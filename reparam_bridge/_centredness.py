"""Learned centredness (variationally inferred parameterisation, VIP: Gorinova, Moore &
Hoffman 2020; NumPyro's ``LocScaleReparam(centered=None)``): every :class:`LocScale` gets a
per-element centredness ``c = sigmoid(logit)``, and the ELBO is maximised jointly over the
guide and the logits. Every ``c`` gives a lower bound on the same evidence, so the ELBO is a
fair criterion between parameterisations; the one that lets a simple guide fit best is the
one whose posterior is closest to independent Gaussians, which is what NUTS with a diagonal
mass matrix likes too."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._bijectors.locscale import LocScale, reparameterize
from ._density import log_density, partition
from ._guides import make_guide
from ._mesh import auto_axes
from ._unwrappable import NonTrainable, unwrap
from ._util import coordinate_names
from ._variational import build_result, default_guide_optimizer, fit_elbo, flat_log_density


def _getter(keypath: tuple) -> Callable[[PyTree], Any]:
    def get(tree):
        for k in keypath:
            if isinstance(k, jax.tree_util.GetAttrKey):
                tree = getattr(tree, k.name)
            elif isinstance(k, jax.tree_util.DictKey):
                tree = tree[k.key]
            elif isinstance(k, jax.tree_util.SequenceKey):
                tree = tree[k.idx]
            else:  # pragma: no cover - equinox modules flatten with GetAttrKey
                raise TypeError(f"learn_centredness: cannot follow the key {k!r} of a LocScale's path.")
        return tree

    return get


def locscale_paths(model: PyTree) -> list[tuple]:
    """Key paths of the :class:`LocScale` s of ``model`` outside :class:`NonTrainable`."""
    is_leaf = lambda x: isinstance(x, (LocScale, NonTrainable))  # noqa: E731
    return [
        path
        for path, leaf in jax.tree_util.tree_flatten_with_path(model, is_leaf=is_leaf)[0]
        if isinstance(leaf, LocScale)
    ]


# c = sigmoid(_SPEED · u): the ELBO is flat in c (on the 9-dimensional mixed-data hierarchy of
# tests/test_centredness.py, moving c from 0.5 to its optimum gains ~0.1 nats), so with Adam's
# unit-scale steps u would crawl; the factor gives the centredness larger steps than the guide.
_SPEED = 5.0


def _centredness(u: Array) -> Array:
    return jax.nn.sigmoid(_SPEED * u)


def with_centredness(model: PyTree, getters: list[Callable], cs: list[Any]) -> PyTree:
    """``model`` with the ``centered`` field of each LocScale replaced (free arrays unchanged,
    so the constrained values move: for use inside the ELBO, where ``z`` is the variable)."""
    return eqx.tree_at(lambda m: [g(m).centered for g in getters], model, cs)


def learn_centredness(
    model: PyTree,
    log_joint: Callable[..., Float[Array, ""]],
    *args: Any,
    key: PRNGKeyArray,
    guide: str = "meanfield",
    steps: int = 3000,
    num_particles: int = 16,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float | None = None,
    init_centered: float = 0.5,
    init_scale: float = 0.1,
    num_psis_draws: int = 1000,
    progress_bar: bool = True,
    return_approximation: bool = False,
) -> PyTree:
    """Learn a per-element centredness for every :class:`LocScale` of ``model`` by maximising
    the ELBO jointly over a guide (``rb.variational``'s) and the centredness (VIP).

    Each ``LocScale`` ``x = loc + scale^(1-c)·(x̃ - c·loc)`` gets an array ``c`` of its value's
    shape, ``c = sigmoid(logit)`` starting at ``init_centered``; the guide is over the free
    arrays ``x̃`` of the current ``c``. The result is ``model`` with the learned ``c`` frozen
    (``rb.LocScale(..., centered=array)``) and its free arrays at the guide's mean: ready for
    ``rb.sample``. Groups with much data come out near 1 (centred), groups with little near 0.

    Arguments not listed below are as for :func:`rb.variational <reparam_bridge.variational>`.

    Args:
        model: a wrapped model holding ``rb.LocScale`` s (with constant, wrapped or
            ``rb.Ref`` ``loc``/``scale``); ``LocScale`` s inside ``rb.NonTrainable`` stay as they are.
        guide: ``"meanfield"`` (VIP's choice: it rewards posteriors close to independent) or
            ``"fullrank"``.
        return_approximation: also return the fitted ``VariationalResult`` in the learned
            parameterisation (its draws can start the chains: ``rb.sample(..., init=...)``).

    Example:
        >>> import jax, jax.numpy as jnp, numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> # group 0 has 1 observation, group 1 has 100: non-centre the first, centre the second
        >>> n = jnp.array([1.0, 100.0]); ybar = jnp.array([1.0, -1.0])
        >>> model = {"mu": rb.Real(0.0), "theta": rb.LocScale(jnp.zeros(2), rb.Ref("mu"), 0.3)}
        >>> def log_joint(m, n, ybar):
        ...     return (dist.Normal(0, 5).log_prob(m["mu"]) + dist.Normal(m["mu"], 0.3).log_prob(m["theta"]).sum()
        ...             + dist.Normal(m["theta"], 1 / jnp.sqrt(n)).log_prob(ybar).sum())
        >>> learned = rb.geometry.learn_centredness(model, log_joint, n, ybar, key=jax.random.key(0),
        ...                                         steps=1500, progress_bar=False)
        >>> c = rb.unwrap(learned["theta"].centered)
        >>> bool(c[0] < 0.5 < c[1])
        True
    """
    if key is None or not isinstance(key, jax.Array):
        raise TypeError("rb.geometry.learn_centredness needs key=jax.random.key(...).")
    what = "rb.geometry.learn_centredness"
    paths = locscale_paths(model)
    if not paths:
        raise ValueError(
            f"{what}: the model has no rb.LocScale to learn a centredness for. Wrap the hierarchical "
            "parameters in rb.LocScale(value, loc, scale) (or convert them with rb.reparameterize)."
        )
    if not 0.0 < float(init_centered) < 1.0:
        raise ValueError(f"{what}: init_centered must lie strictly inside (0, 1), got {init_centered}.")
    getters = [_getter(p) for p in paths]
    values = unwrap(model)
    shapes = [jnp.shape(g(values)) for g in getters]
    dtype = jnp.result_type(float)
    # Start at c = init_centered everywhere, keeping every constrained value.
    start = model
    for g, shape in zip(getters, shapes):
        start = reparameterize(start, g, centered=jnp.full(shape, init_centered, dtype))
    args = auto_axes(args)
    flat, unravel, static, _ = flat_log_density(log_joint, start, args, what)

    def log_p(z, logits):
        tree = with_centredness(eqx.combine(unravel(z), static), getters, [_centredness(t) for t in logits])
        return log_density(log_joint, tree, *args, jacobian=True)

    k_init, k_fit, k_diag = jax.random.split(key, 3)
    q = make_guide(guide, flat, k_init, init_scale)
    optimizer = optimizer if optimizer is not None else default_guide_optimizer(q, learning_rate, steps)
    logit = jnp.log(init_centered / (1 - init_centered)) / _SPEED
    logits0 = [jnp.full(shape, logit, dtype) for shape in shapes]
    q, logits, losses = fit_elbo(
        q,
        log_p,
        logits0,
        key=k_fit,
        steps=steps,
        optimizer=optimizer,
        num_particles=num_particles,
        progress_bar=progress_bar,
        what=what,
    )
    cs = [_centredness(t) for t in logits]
    learned_static = with_centredness(static, getters, [NonTrainable(c) for c in cs])
    result = build_result(
        q,
        losses,
        learned_static,
        unravel,
        lambda z: log_p(z, logits),
        k_diag,
        num_psis_draws,
        tuple(coordinate_names(partition(start)[0])),
    )
    learned = result.mean
    return (learned, result) if return_approximation else learned
