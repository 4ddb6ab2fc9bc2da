"""Free parameters and log-densities of wrapped trees."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree
from numpyro.distributions import Distribution

from ._bijector import Bijector, walk_bijectors
from ._paths import path_to_str
from ._unwrappable import NonTrainable, Unwrappable, contains_refs, unwrap


def _is_frozen(x: Any) -> bool:
    return isinstance(x, (NonTrainable, Distribution))


def free_filter(tree: PyTree) -> PyTree:
    """Boolean filter spec: ``True`` exactly at the free (optimised / sampled) arrays."""
    return jax.tree_util.tree_map(
        lambda x: False if _is_frozen(x) else eqx.is_inexact_array(x), tree, is_leaf=_is_frozen
    )


def partition(tree: PyTree) -> tuple[PyTree, PyTree]:
    """Split ``tree`` into ``(params, static)``: ``params`` holds exactly the free arrays.

    Free arrays are the inexact arrays outside :class:`NonTrainable` and outside priors;
    bounds, transforms and static fields never are. ``eqx.combine(params, static)`` rebuilds
    the tree.

    Example:
        >>> import equinox as eqx, jax
        >>> import reparam_bridge as rb
        >>> tree = {"s": rb.Positive(1.0), "frozen": rb.NonTrainable(jax.numpy.ones(2))}
        >>> params, static = rb.partition(tree)
        >>> [x.shape for x in jax.tree_util.tree_leaves(params)]
        [()]
        >>> bool(eqx.tree_equal(eqx.combine(params, static), tree))
        True
    """
    return eqx.partition(tree, free_filter(tree))


def log_prior(tree: PyTree) -> Float[Array, ""]:
    """Sum of the priors attached with ``prior=`` to the bijectors of ``tree``, each
    evaluated at its constrained value.

    Example:
        >>> import numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> tree = {"mu": rb.Real(0.0, prior=dist.Normal(0.0, 1.0))}
        >>> round(float(rb.log_prior(tree)), 4)
        -0.9189
    """
    total = jnp.zeros(())
    for path, _, inner in walk_bijectors(tree):
        prior = getattr(inner, "prior", None)
        if prior is not None:
            try:
                total = total + jnp.sum(prior.log_prob(inner.unwrap()))
            except (ValueError, TypeError) as e:
                raise ValueError(f"log_prior: the prior of '{path}' fails on its value: {e}") from e
    return total


_INSTEAD = {
    "NonNegative": "rb.Positive (or rb.Bounded(lower=0))",
    "Clamp": "rb.Bounded(lower=..., upper=...)",
    "Parameterize": "a named bijector (rb.Positive, rb.Bounded, rb.Constrained, ...) or your own rb.Bijector subclass",
    "WeightNormalization": "a plain weight array, or a rb.Bijector subclass with its log-Jacobian",
    "Symmetric": "rb.PositiveDefinite (for SPD matrices) or a rb.Bijector over the lower triangle",
    "SkewSymmetric": "a rb.Bijector over the strictly lower triangle",
}
_FROZEN_REF = "NonTrainable holding an rb.Ref"


def non_bijective_paths(tree: PyTree) -> list[tuple[str, str]]:
    """``(path, class name)`` of every wrapper in ``tree`` that has no log-Jacobian
    (anything but a :class:`Bijector` or a :class:`NonTrainable`), outermost first."""
    found = []

    def _visit(node, prefix):
        if isinstance(node, NonTrainable):
            if contains_refs(node):  # stop_gradient would cut the referenced parameter's gradient
                found.append((path_to_str(prefix), _FROZEN_REF))
            return
        if not isinstance(node, Bijector):
            found.append((path_to_str(prefix), type(node).__name__))
            return
        for path, child in jax.tree_util.tree_flatten_with_path(
            node, is_leaf=lambda x: isinstance(x, Unwrappable) and x is not node
        )[0]:
            if isinstance(child, Unwrappable) and child is not node:
                _visit(child, prefix + tuple(path))

    for path, leaf in jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, Unwrappable)
    )[0]:
        if isinstance(leaf, Unwrappable):
            _visit(leaf, tuple(path))
    return found


def check_bijective(tree: PyTree, what: str = "log_density(..., jacobian=True)") -> None:
    """Raise ``TypeError`` naming the first wrapper that has no log-Jacobian."""
    bad = non_bijective_paths(tree)
    if bad:
        path, cls = bad[0]
        if cls == _FROZEN_REF:
            raise TypeError(
                f"{what}: the rb.NonTrainable at '{path}' holds an rb.Ref; freezing stops the gradient "
                "to the referenced parameter, so gradient-based samplers would be wrong. Put a "
                "constant there instead of the Ref, or leave the node unfrozen."
            )
        instead = _INSTEAD.get(cls, "a rb.Bijector (named, or your own subclass)")
        more = f" (and {len(bad) - 1} more: {', '.join(p for p, _ in bad[1:])})" if len(bad) > 1 else ""
        raise TypeError(
            f"{what}: the parameter at '{path}' is a {cls}, which has no log-Jacobian, so the "
            f"density in unconstrained space is undefined{more}. Use {instead} instead, or wrap it "
            "in rb.NonTrainable to hold it fixed."
        )


def log_density(
    log_joint: Callable[..., Any], tree: PyTree, *args: Any, jacobian: bool = True
) -> Float[Array, ""]:
    """``log_joint(unwrap(tree), *args) + log_prior(tree)``, plus ``log_det_jacobian(tree)``
    when ``jacobian`` (the density of the free, unconstrained arrays, which samplers need).

    Example:
        >>> import numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> tree = {"s": rb.Positive(1.0, prior=dist.Exponential(1.0))}
        >>> float(rb.log_density(lambda m: 0.0, tree)), float(rb.log_density(lambda m: 0.0, tree, jacobian=False))
        (-1.0, -1.0)
    """
    from ._checks import check_no_foreign

    check_no_foreign(tree, "log_density")  # a trace-time walk: nothing per step under jit
    if jacobian:
        check_bijective(tree)
    value = jnp.asarray(log_joint(unwrap(tree), *args))
    if value.shape != ():
        raise ValueError(
            f"log_joint must return a scalar, got shape {value.shape}; sum the pointwise terms."
        )
    total = value + log_prior(tree)
    if jacobian:
        from ._bijector import log_det_jacobian

        total = total + log_det_jacobian(tree)
    return total
