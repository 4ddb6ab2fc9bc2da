"""The centred / non-centred family of a location-scale variable, as a :class:`Bijector`.

Gorinova, Moore & Hoffman (2020), "Automatic Reparameterisation of Probabilistic Programs";
NumPyro's ``LocScaleReparam``. The free array ``x̃`` and the value ``x`` are related by

    x = loc + scale^(1-c) · (x̃ - c·loc),       log|∂x/∂x̃| = (1-c) · Σ log scale,

so ``c = 1`` is the centred parameterisation (``x̃ = x``) and ``c = 0`` the non-centred one
(``x = loc + scale·x̃``). Because the log-Jacobian is added to the density, a prior written on
``x`` in the user's ``log_joint`` (``Normal(loc, scale).log_prob(x)``) is correct for every ``c``.
"""

from collections.abc import Callable
from typing import Any, Self

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree
from numpyro.distributions import Distribution, constraints

from .. import _tree
from .._tree import NonTrainable, contains_refs, unwrap
from .base import Bijector
from .checks import as_float_array, build, check_prior, frozen_or_live, is_traced


def _check_centered(centered: Any) -> Any:
    """A Python float in [0, 1] (the usual case), or a float array of per-element centredness
    (values checked in [0, 1] when concrete; traced while it is being learned)."""
    if isinstance(centered, NonTrainable):
        centered = centered.tree
    if is_traced(centered) or np.ndim(centered) > 0:
        c = as_float_array(centered)
        if not is_traced(c) and not bool(jnp.all((c >= 0.0) & (c <= 1.0))):
            raise ValueError(
                "LocScale: every element of centered must lie in [0, 1] (1 = centred, 0 = non-centred), "
                f"got {np.asarray(c)}."
            )
        return c
    try:
        c = float(centered)
    except (TypeError, ValueError):
        raise TypeError(
            f"LocScale: centered must be a float in [0, 1] or an array of them (per element), got "
            f"{centered!r}. To learn it by gradient, use rb.geometry.learn_centredness."
        ) from None
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"LocScale: centered must lie in [0, 1] (1 = centred, 0 = non-centred), got {c}.")
    return c


def _stored(c: Any) -> Any:
    # An array centredness is frozen like a constant loc/scale: never free, never sampled.
    return c if isinstance(c, float) else NonTrainable(c)


def _is_one(c: Any) -> bool:
    """``c`` is (concretely) 1 everywhere: ``x̃ = x``, so no loc/scale value is needed."""
    if isinstance(c, float):
        return c == 1.0
    return not is_traced(c) and bool(jnp.all(jnp.asarray(c) == 1.0))


def _scale_power(scale: Array, c: Any) -> Array:
    if isinstance(c, float) and c == 0.0:
        return scale
    return jnp.exp((1.0 - c) * jnp.log(scale))


def _forward(xt: Array, loc: Array, scale: Array, c: Any) -> Array:
    if isinstance(c, float) and c == 1.0:  # exactly the identity, whatever loc and scale are
        return xt + jnp.zeros_like(loc) + jnp.zeros_like(scale)
    return loc + _scale_power(scale, c) * (xt - c * loc)


def _inverse(x: Array, loc: Array, scale: Array, c: Any) -> Array:
    if isinstance(c, float) and c == 1.0:
        return x + jnp.zeros_like(loc) + jnp.zeros_like(scale)
    return c * loc + (x - loc) / _scale_power(scale, c)


def _check_values(x: Array, loc: Array, scale: Array, where: str) -> Array:
    """``x``, checked with ``loc`` and ``scale``; when traced, by ``eqx.error_if`` at run time."""
    if is_traced(x, loc, scale):
        try:
            jnp.broadcast_shapes(jnp.shape(x), jnp.shape(loc), jnp.shape(scale))
        except ValueError:
            raise ValueError(f"{where}: value, loc and scale shapes do not broadcast.") from None
        ok = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(loc)) & jnp.all(jnp.isfinite(scale)) & jnp.all(scale > 0)
        return eqx.error_if(x, ~ok, f"{where}: value, loc and scale must be finite and scale positive.")
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(f"{where}: value must be finite, got {np.asarray(x)}.")
    if not (bool(jnp.all(jnp.isfinite(loc))) and bool(jnp.all(jnp.isfinite(scale)))):
        raise ValueError(
            f"{where}: loc and scale must be finite, got loc={np.asarray(loc)}, scale={np.asarray(scale)}."
        )
    if not bool(jnp.all(scale > 0)):
        raise ValueError(f"{where}: scale must be positive, got {np.asarray(scale)}.")
    try:
        jnp.broadcast_shapes(jnp.shape(x), jnp.shape(loc), jnp.shape(scale))
    except ValueError:
        raise ValueError(
            f"{where}: value, loc and scale shapes {jnp.shape(x)}, {jnp.shape(loc)}, {jnp.shape(scale)} "
            "do not broadcast."
        ) from None
    return x


class LocScale(Bijector):
    """A real array ``x`` with a location and a scale, stored in the centred/non-centred
    family: free array ``x̃``, ``x = loc + scale^(1-c)·(x̃ - c·loc)``.

    ``centered=1.0`` samples ``x`` itself; ``centered=0.0`` samples ``x̃ = (x - loc)/scale``,
    which removes the funnel of a hierarchical model when the data are weak. The user's
    ``log_joint`` is the same for every ``c``: write the prior on ``x``
    (``Normal(loc, scale).log_prob(x)``) and the log-Jacobian ``(1-c)·Σ log scale`` makes the
    density of ``x̃`` right.

    ``loc`` and ``scale`` may be constants, wrapped parameters (``rb.Positive(...)``) or — the
    hierarchical case — :class:`Ref` s to sibling parameters (``rb.Ref("tau")``).

    **Construction from a value.** The constructor takes the constrained value ``x``, like every
    bijector, and needs the values of ``loc`` and ``scale`` to compute ``x̃``. Those are known
    for constants and wrapped parameters, and not needed for ``centered=1`` (``x̃ = x``); but a
    :class:`Ref` has a value only inside its whole tree. So, with a ``Ref`` and ``c < 1``:

    * build the model centred and convert it, which keeps every constrained value:
      ``rb.reparameterize(model, lambda m: m.theta, centered=0.0)``;
    * or give the free array directly: ``LocScale.from_unconstrained(x̃, loc, scale, centered=c)``
      (``x̃ = 0`` with ``loc = 0`` puts ``x`` at 0 for every ``c``).

    We chose this over silently guessing ``loc``/``scale`` (wrong values) or storing a
    half-built node that ``sample`` would have to finish (a hidden second step).
    :meth:`with_centered` changes ``c`` keeping ``x`` on a node without references;
    :func:`reparameterize` does it inside a tree.

    Args:
        value: the constrained value ``x``.
        loc, scale: constants, wrapped parameters or :class:`Ref` s; broadcast against ``x``.
        centered: ``c`` in ``[0, 1]`` (1 = centred, 0 = non-centred): a Python float, or an
            array broadcasting against ``x`` for a per-element centredness (stored frozen in an
            :class:`NonTrainable`, never sampled; ``rb.geometry.learn_centredness`` learns one).
        prior: optional NumPyro distribution over ``x`` (real support), with constant
            ``loc``/``scale`` usually; with references write the prior in ``log_joint``.

    Example:
        >>> import jax.numpy as jnp
        >>> import numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> theta = rb.LocScale(jnp.array([1.0, 3.0]), loc=1.0, scale=2.0, centered=0.0)
        >>> theta.unconstrained, rb.unwrap(theta)
        (Array([0., 1.], dtype=float32), Array([1., 3.], dtype=float32))
        >>> round(float(rb.log_det_jacobian(theta)), 4)  # 2 · log 2
        1.3863
        >>> model = {"mu": rb.Real(0.5), "tau": rb.Positive(2.0),
        ...          "theta": rb.LocScale(jnp.array([1.0, -1.0]), rb.Ref("mu"), rb.Ref("tau"))}
        >>> nc = rb.reparameterize(model, lambda m: m["theta"], centered=0.0)
        >>> nc["theta"].unconstrained, rb.unwrap(nc)["theta"]
        (Array([ 0.25, -0.75], dtype=float32), Array([ 1., -1.], dtype=float32))
    """

    unconstrained: Array
    loc: Any
    scale: Any
    centered: Any  # a Python float (static for partition), or NonTrainable(array) per element
    prior: Distribution | None

    def __init__(
        self,
        value: ArrayLike,
        loc: Any = 0.0,
        scale: Any = 1.0,
        *,
        centered: Any = 1.0,
        prior: Distribution | None = None,
    ):
        c = _check_centered(centered)
        self.loc = frozen_or_live("loc", loc, owner="LocScale", required=True)
        self.scale = frozen_or_live("scale", scale, owner="LocScale", required=True)
        self.centered = _stored(c)
        self.prior = prior
        x = as_float_array(value)
        if contains_refs((self.loc, self.scale)):
            if not _is_one(c):
                raise TypeError(
                    f"LocScale(centered={c}): loc/scale given as rb.Ref have values only inside the "
                    "whole tree, and x̃ = c·loc + (x - loc)/scale^(1-c) needs them. Build it centred "
                    "(centered=1.0, where x̃ = x) and convert with rb.reparameterize(model, lambda m: "
                    f"m.<path>, centered={c}), or pass the free array with "
                    "LocScale.from_unconstrained(x_tilde, loc, scale, centered=...)."
                )
            if is_traced(x):
                x = eqx.error_if(x, ~jnp.all(jnp.isfinite(x)), "LocScale: value must be finite.")
            elif not bool(jnp.all(jnp.isfinite(x))):
                raise ValueError(f"LocScale: value must be finite, got {np.asarray(x)}.")
            self.unconstrained = x
        else:
            loc_v, scale_v = unwrap(self.loc), unwrap(self.scale)
            x = _check_values(x, loc_v, scale_v, "LocScale")
            shape = jnp.broadcast_shapes(jnp.shape(x), jnp.shape(loc_v), jnp.shape(scale_v), jnp.shape(c))
            self.unconstrained = jnp.broadcast_to(_inverse(x, loc_v, scale_v, c), shape).astype(x.dtype)
        if prior is not None:
            check_prior("LocScale", prior, constraints.real, jnp.shape(self.unconstrained))

    @classmethod
    def from_unconstrained(
        cls,
        unconstrained: ArrayLike,
        loc: Any = 0.0,
        scale: Any = 1.0,
        *,
        centered: Any = 1.0,
        prior: Distribution | None = None,
    ) -> Self:
        """Build from the free array ``x̃`` without validating it (``jit``/``vmap``-safe).

        Example:
            >>> import reparam_bridge as rb
            >>> t = rb.LocScale.from_unconstrained(0.5, loc=rb.Ref("mu"), scale=rb.Ref("tau"), centered=0.0)
            >>> rb.unwrap({"mu": 1.0, "tau": 4.0, "t": t})["t"]
            Array(3., dtype=float32)
        """
        return build(
            cls,
            unconstrained=as_float_array(unconstrained),
            loc=frozen_or_live("loc", loc, owner="LocScale", required=True),
            scale=frozen_or_live("scale", scale, owner="LocScale", required=True),
            centered=_stored(_check_centered(centered)),
            prior=prior,
        )

    def unwrap(self) -> Array:
        return _forward(self.unconstrained, self.loc, self.scale, self.centered)

    def log_det_jacobian(self) -> Float[Array, ""]:
        c = self.centered
        if isinstance(c, float) and c == 1.0:
            return jnp.zeros((), dtype=jnp.result_type(self.unconstrained))
        shape = jnp.broadcast_shapes(
            jnp.shape(self.unconstrained), jnp.shape(self.loc), jnp.shape(self.scale), jnp.shape(c)
        )
        return jnp.sum(jnp.broadcast_to((1.0 - c) * jnp.log(self.scale), shape))

    def with_centered(self, centered: Any, *, root: PyTree | None = None) -> "LocScale":
        """The same constrained value in the parameterisation with centredness ``centered``.

        A node holding :class:`Ref` s needs ``root``, the whole wrapped tree it belongs to
        (or use :func:`reparameterize`, which also puts the new node back in the tree).

        Example:
            >>> import reparam_bridge as rb
            >>> t = rb.LocScale(3.0, loc=1.0, scale=4.0, centered=1.0)
            >>> t2 = t.with_centered(0.0)
            >>> t2.unconstrained, rb.unwrap(t2)
            (Array(0.5, dtype=float32), Array(3., dtype=float32))
        """
        c = _check_centered(centered)
        if contains_refs(self):
            if root is None:
                raise TypeError(
                    "LocScale.with_centered: this node's loc/scale are rb.Ref, resolved only in the "
                    "whole tree; pass root=<the wrapped model>, or use rb.reparameterize(model, where, "
                    "centered=...)."
                )
        inner = _tree.inner(self, root if contains_refs(self) else None)
        x = inner.unwrap()
        xt = _inverse(x, inner.loc, inner.scale, c)
        return build(
            type(self), unconstrained=xt, loc=self.loc, scale=self.scale, centered=_stored(c), prior=self.prior
        )


def reparameterize(
    model: PyTree,
    where: Callable[[PyTree], Any],
    *,
    centered: Any,
    loc: Any = None,
    scale: Any = None,
) -> PyTree:
    """Put the parameter at ``where(model)`` into the :class:`LocScale` parameterisation with
    centredness ``centered``, keeping every constrained value of ``model``.

    ``where(model)`` may be a :class:`LocScale` (``loc``/``scale`` default to its own), an
    :class:`rb.Real <Real>` (its prior is kept) or a plain float array (then ``loc`` and
    ``scale`` are required). ``loc``/``scale`` may be constants, wrapped parameters or
    :class:`Ref` s, resolved against ``model``'s current values. Returns a new tree.

    Example:
        >>> import jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> model = {"mu": rb.Real(1.0), "tau": rb.Positive(2.0), "theta": jnp.array([3.0, 0.0])}
        >>> nc = rb.reparameterize(model, lambda m: m["theta"], loc=rb.Ref("mu"),
        ...                        scale=rb.Ref("tau"), centered=0.0)
        >>> nc["theta"].unconstrained, rb.unwrap(nc)["theta"]
        (Array([ 1. , -0.5], dtype=float32), Array([3., 0.], dtype=float32))
    """
    from .named import Real

    c = _check_centered(centered)
    node = where(model)
    values = unwrap(model)
    x = as_float_array(where(values))
    if isinstance(node, LocScale):
        loc = node.loc if loc is None else loc
        scale = node.scale if scale is None else scale
        prior = node.prior
    elif isinstance(node, Real) or (eqx.is_array(node) and jnp.issubdtype(jnp.result_type(node), jnp.floating)):
        if loc is None or scale is None:
            raise TypeError(
                f"reparameterize: the parameter is a {type(node).__name__}, not a LocScale; give "
                "loc= and scale= (constants, wrapped parameters or rb.Ref('path'))."
            )
        prior = getattr(node, "prior", None)
    else:
        raise TypeError(
            f"reparameterize: where(model) must select a LocScale, an rb.Real or a float array, got "
            f"{type(node).__name__}. A LocScale value is real-valued, so a constrained parameter "
            "(Positive, Bounded, ...) cannot become one."
        )
    new = LocScale.from_unconstrained(x, loc, scale, centered=1.0, prior=prior)
    loc_v, scale_v = _resolved(new, model)
    x = _check_values(x, loc_v, scale_v, "reparameterize")
    xt = _inverse(x, loc_v, scale_v, c)
    new = LocScale.from_unconstrained(xt.astype(x.dtype), new.loc, new.scale, centered=c, prior=prior)
    return eqx.tree_at(where, model, new)


def _resolved(node: LocScale, root: PyTree) -> tuple[Array, Array]:
    inner = _tree.inner(node, root)
    return jnp.asarray(inner.loc), jnp.asarray(inner.scale)
