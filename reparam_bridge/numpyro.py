"""Wrapped Equinox modules inside ordinary NumPyro models.

:func:`random_module` turns the free arrays of a wrapped module into latent sample sites
(for ``MCMC``, ``Predictive``, ``SVI`` with autoguides, ``az.from_numpyro``);
:func:`module` turns them into ``numpyro.param`` sites (for SVI point estimates and
network training). Site names are ``"<name>.<dotted path>"``.

This submodule is ``rb.numpyro``; inside it ``numpyro`` is the real NumPyro package
(absolute imports).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from jaxtyping import Array, PyTree
from numpyro.distributions import Distribution, constraints

from ._bijectors.checks import check_prior
from ._density import check_bijective, gather, partition, prior_term
from ._paths import path_to_str
from ._tree import NonTrainable, Unwrappable, free_filter, top_level

__all__ = ["from_values", "init_values", "module", "random_module"]

PriorSpec = Mapping[str, Distribution] | Callable[[str, tuple[int, ...]], Distribution | None] | None


def _site(name: str, path: str) -> str:
    return name if path == "<root>" else f"{name}.{path}"


def _free_leaves(tree: PyTree) -> tuple[list[tuple[str, Array]], Any, PyTree]:
    """``[(path, free array)]``, the treedef of the free part and the static part."""
    params, static = partition(tree)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    return [(path_to_str(k), leaf) for k, leaf in flat], treedef, static


def _plain_paths(tree: PyTree) -> dict[str, Array]:
    """Free arrays that sit outside every wrapper: their own constrained value."""
    return {path: x for path, x in top_level(tree)[0] if eqx.is_inexact_array(x)}


def _expand_to(prior: Distribution, shape: tuple[int, ...], what: str) -> Distribution:
    """``prior`` as a distribution whose event shape is exactly ``shape``."""
    ev = prior.event_shape
    batch = shape[: len(shape) - len(ev)]
    if len(ev) > len(shape) or shape[len(shape) - len(ev):] != ev:
        raise ValueError(f"{what}: the prior's event shape {ev} does not fit the array's shape {shape}.")
    try:
        prior = prior.expand(batch) if prior.batch_shape != batch else prior
    except ValueError as e:
        raise ValueError(f"{what}: the prior's batch shape {prior.batch_shape} does not broadcast to {batch}.") from e
    return prior.to_event(len(batch)) if batch else prior


def _resolve_priors(name: str, tree: PyTree, prior: PriorSpec) -> tuple[dict, dict]:
    """Split ``prior`` into ``(plain, wrapped)``: priors of free arrays outside wrappers and
    priors of wrapped constrained values, both by dotted path; every check happens here."""
    if prior is None:
        return {}, {}
    plain = _plain_paths(tree)
    wrapped = {b.path: b for b in gather(tree, jacobian=False).bijectors}
    where = f"rb.numpyro.random_module({name!r})"
    if isinstance(prior, Distribution):
        raise TypeError(
            f"{where}: prior must be a dict {{path: distribution}} or a callable (path, shape) -> "
            "distribution or None, not a single distribution (the supports of wrapped values differ)."
        )
    if isinstance(prior, Mapping):
        unknown = sorted(set(prior) - set(plain) - set(wrapped))
        if unknown:
            raise ValueError(
                f"{where}: no free array or wrapped value at prior path(s) {unknown}. Valid paths "
                f"(relative to the module, without {name!r}): {sorted({*plain, *wrapped})}."
            )
        items = dict(prior)
    elif callable(prior):
        items = {p: prior(p, tuple(jnp.shape(x))) for p, x in plain.items()}
        for p, b in wrapped.items():
            value = b.value
            shape = tuple(jnp.shape(value)) if eqx.is_array(value) else jax.tree_util.tree_map(jnp.shape, value)
            items[p] = prior(p, shape)
        items = {p: d for p, d in items.items() if d is not None}
    else:
        raise TypeError(f"{where}: prior must be a dict, a callable or None, got {type(prior).__name__}.")

    plain_priors, wrapped_priors = {}, {}
    for path, d in items.items():
        what = f"{where}: prior for {path!r}"
        if not isinstance(d, Distribution):
            raise TypeError(f"{what} must be a numpyro Distribution, got {type(d).__name__}.")
        if path in plain:
            plain_priors[path] = _expand_to(d, tuple(jnp.shape(plain[path])), what)
            continue
        b = wrapped[path]
        value = b.value
        if not eqx.is_array(value):
            raise ValueError(f"{what}: the value there is a PyTree, not an array; put priors on its parts' bijectors.")
        if hasattr(b.inner, "support"):
            check_prior(what, d, b.inner.support())
        if jnp.broadcast_shapes(d.shape(), jnp.shape(value)) != jnp.shape(value):
            raise ValueError(f"{what}: the prior's shape {d.shape()} is larger than the value's shape {jnp.shape(value)}.")
        wrapped_priors[path] = d
    return plain_priors, wrapped_priors


def _deterministic_sites(name: str, tree: PyTree, values: PyTree) -> None:
    """One deterministic site per array in the value of each top-level wrapper."""
    flat, treedef = top_level(tree)
    for (path, node), value in zip(flat, treedef.flatten_up_to(values)):
        if not isinstance(node, Unwrappable) or isinstance(node, NonTrainable):
            continue
        if not any(jax.tree_util.tree_leaves(free_filter(node))):
            continue
        base = _site(name, path)
        for sub, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
            if eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.number):
                numpyro.deterministic(f"{base}.{path_to_str(sub)}" if sub else base, leaf)


def random_module(name: str, module: PyTree, prior: PriorSpec = None) -> PyTree:
    """Register the free arrays of a wrapped module as latent sites of the current NumPyro
    model and return the module unwrapped (its constrained values).

    Inside a model this adds

    - a latent site ``"<name>.<path>"`` per free array (``rb.partition``), e.g.
      ``"net.layers.0.weight"`` or ``"gp.lengthscale.unconstrained"``: an improper flat
      site, except a free array outside every wrapper that has a prior here, which is
      sampled from that prior (so prior sampling and autoguide initialisation use it);
    - factor sites ``"<name>._log_det_jacobian"`` (``rb.log_det_jacobian``, when there are
      bijectors) and ``"<name>._log_prior"`` (the priors of wrapped values, when any);
    - a deterministic site ``"<name>.<path>"`` per wrapped value, e.g. ``"gp.lengthscale"``
      (a free array outside wrappers is already its own latent site).

    The model's density over the latent sites is then that of ``rb.log_density(..., jacobian=True)``,
    so ``MCMC(NUTS(model))`` samples the same posterior as ``rb.sample``. Wrappers with no
    log-Jacobian (``rb.Parameterize``, ``rb.WeightNormalization``, constraints, ...) are refused.

    Args:
        name: prefix of every site name.
        module: a PyTree (typically an ``eqx.Module``) holding arrays and wrappers.
        prior: priors by dotted path *relative to the module*: a dict ``{path: distribution}``
            or a callable ``(path, shape) -> distribution or None`` (as in
            ``numpyro.contrib.module.random_eqx_module``). Paths are those of free arrays
            outside wrappers (``"linear.weight"``) and of wrapped values (``"lengthscale"``,
            the *constrained* value). A prior given here replaces one attached with ``prior=``.

    Note: wrapped arrays are improper flat sites, so ``Predictive(model, num_samples=...)``
    (prior sampling) works only when every free array sits outside wrappers and has a prior
    here; with posterior samples, autoguides (whose default init falls back to
    ``init_to_uniform``) and MCMC everything works. The factor sites are observed sites to
    NumPyro, so ``az.from_numpyro`` lists them in ``log_likelihood``; pass ``var_name=`` (your
    observed site) to ``az.loo``/``az.waic``.
    To start MCMC from the module's current values use
    ``init_strategy=numpyro.infer.init_to_value(values=rb.numpyro.init_values(name, module))``.

    Example:
        >>> import jax.numpy as jnp, numpyro, numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> gp = {"lengthscale": rb.Positive(1.0), "w": jnp.zeros(2)}
        >>> def model(y=None):
        ...     m = rb.numpyro.random_module("gp", gp, prior={"lengthscale": dist.LogNormal(0.0, 1.0),
        ...                                                   "w": dist.Normal(0.0, 1.0)})
        ...     numpyro.sample("y", dist.Normal(m["w"].sum(), m["lengthscale"]), obs=y)
        >>> values = rb.numpyro.init_values("gp", gp)
        >>> tr = numpyro.handlers.trace(numpyro.handlers.substitute(model, values)).get_trace(y=0.5)
        >>> {k: s["type"] for k, s in tr.items()}  # doctest: +NORMALIZE_WHITESPACE
        {'gp.lengthscale.unconstrained': 'sample', 'gp.w': 'sample', 'gp._log_det_jacobian': 'sample',
         'gp._log_prior': 'sample', 'gp.lengthscale': 'deterministic', 'y': 'sample'}
        >>> lp, _ = numpyro.infer.util.log_density(model, (), {"y": 0.5}, values)
        >>> def log_joint(m):
        ...     return dist.Normal(0.0, 1.0).log_prob(m["w"]).sum() + dist.Normal(m["w"].sum(), m["lengthscale"]).log_prob(0.5)
        >>> wrapped = {"lengthscale": rb.Positive(1.0, prior=dist.LogNormal(0.0, 1.0)), "w": jnp.zeros(2)}
        >>> bool(jnp.isclose(lp, rb.log_density(log_joint, wrapped)))
        True
    """
    check_bijective(module, f"rb.numpyro.random_module({name!r})")
    plain_priors, wrapped_priors = _resolve_priors(name, module, prior)
    leaves, treedef, static = _free_leaves(module)
    new = []
    for path, leaf in leaves:
        site = _site(name, path)
        if path in plain_priors:
            new.append(numpyro.sample(site, plain_priors[path]))
        else:
            new.append(numpyro.sample(site, dist.ImproperUniform(constraints.real, (), jnp.shape(leaf))))
    tree = eqx.combine(jax.tree_util.tree_unflatten(treedef, new), static)

    g = gather(tree)  # one pass: values, log-Jacobians and the values the priors need
    if g.bijectors:
        numpyro.factor(f"{name}._log_det_jacobian", sum(jnp.sum(b.log_det) for b in g.bijectors))
    terms = []
    for b in g.bijectors:
        d = wrapped_priors.get(b.path, b.prior)
        if d is not None:
            terms.append(jnp.sum(d.log_prob(b.value)))
    if terms:
        numpyro.factor(f"{name}._log_prior", sum(terms))
    values = g.values
    _deterministic_sites(name, module, values)
    return values


def module(name: str, module: PyTree) -> PyTree:
    """Register the free arrays of a wrapped module as ``numpyro.param`` sites and return
    the module unwrapped: for SVI point estimates and network training.

    There is one param site per free array, named ``"<name>.<path>"`` (so
    ``svi_result.params["net.layers.0.weight"]``), initialised at the module's current
    values; wrapped arrays are optimised in their unconstrained coordinates, so a
    ``rb.Positive`` stays positive. Priors attached with ``prior=`` enter as a factor site
    ``"<name>._log_prior"`` (no log-Jacobian: with an empty guide, SVI then maximises the
    posterior density in constrained space, like ``rb.map_estimate``). Any wrapper is
    accepted; ``rb.Constraint`` projections are *not* applied by SVI (use a bijector).
    :func:`from_values` rebuilds the fitted (still wrapped) module from ``svi_result.params``.

    Example:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, optax
        >>> from numpyro.infer import SVI, Trace_ELBO
        >>> import reparam_bridge as rb
        >>> net = {"scale": rb.Positive(1.0), "shift": jnp.zeros(())}
        >>> def model(y):
        ...     m = rb.numpyro.module("net", net)
        ...     numpyro.sample("y", dist.Normal(m["shift"], m["scale"]), obs=y)
        >>> y = jnp.array([1.0, 2.0, 3.0])
        >>> svi = SVI(model, lambda y: None, optax.adam(0.1), Trace_ELBO())
        >>> res = svi.run(jax.random.key(0), 500, y, progress_bar=False)
        >>> sorted(res.params)
        ['net.scale.unconstrained', 'net.shift']
        >>> round(float(res.params["net.shift"]), 1), round(float(jnp.exp(res.params["net.scale.unconstrained"])), 2)
        (2.0, 0.82)
        >>> rb.numpyro.from_values("net", net, res.params)["scale"]
        Positive(...)
    """
    leaves, treedef, static = _free_leaves(module)
    new = [numpyro.param(_site(name, path), leaf) for path, leaf in leaves]
    tree = eqx.combine(jax.tree_util.tree_unflatten(treedef, new), static)
    g = gather(tree, jacobian=False)
    priors = [prior_term(b) for b in g.bijectors if b.prior is not None]
    if priors:
        numpyro.factor(f"{name}._log_prior", sum(priors))
    return g.values


def init_values(name: str, module: PyTree) -> dict[str, Array]:
    """``{site name: value}`` of the free arrays of ``module``, as :func:`random_module` and
    :func:`module` name them: for ``numpyro.infer.init_to_value`` (start NUTS at a MAP
    estimate), ``numpyro.handlers.substitute`` or ``log_density``.

    Example:
        >>> import reparam_bridge as rb
        >>> rb.numpyro.init_values("gp", {"lengthscale": rb.Positive(1.0)})
        {'gp.lengthscale.unconstrained': Array(0., dtype=float32)}
    """
    return {_site(name, path): leaf for path, leaf in _free_leaves(module)[0]}


def from_values(name: str, module: PyTree, values: Mapping[str, Array]) -> PyTree:
    """The inverse of :func:`init_values`: ``module`` (still wrapped) with its free arrays
    replaced by ``values[site name]``, e.g. ``svi_result.params`` or one posterior draw.
    Extra keys (other sites) are ignored; a missing one raises ``KeyError`` naming it.

    Example:
        >>> import reparam_bridge as rb
        >>> m = rb.numpyro.from_values("gp", {"s": rb.Positive(1.0)}, {"gp.s.unconstrained": 0.0})
        >>> rb.unwrap(m)
        {'s': Array(1., dtype=float32)}
    """
    leaves, treedef, static = _free_leaves(module)
    missing = [_site(name, p) for p, _ in leaves if _site(name, p) not in values]
    if missing:
        raise KeyError(f"from_values: no value for site(s) {missing}; got {sorted(values)}.")
    new = [jnp.asarray(values[_site(name, p)], dtype=leaf.dtype) for p, leaf in leaves]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, new), static)
