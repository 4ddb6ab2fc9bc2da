"""Maximum a posteriori: :func:`map_estimate`, :func:`~reparam_bridge.fit` of the negative
log-density, with L-BFGS by default and a convergence judgement."""

from collections.abc import Callable
from typing import Any

import optax
from jaxtyping import Array, Float, PyTree

from . import _checks
from ._constraint import contains_constraints
from ._density import check_bijective
from ._fit import FitResult, run_fit
from ._util import NegLogDensity


def map_estimate(
    model: PyTree,
    log_joint: Callable[..., Float[Array, ""]],
    *args: Any,
    jacobian: bool = False,
    optimizer: optax.GradientTransformation | None = None,
    steps: int | None = None,
    **fit_kwargs: Any,
) -> FitResult:
    """Maximum a posteriori: maximise ``log_joint(unwrap(model), *args) + log_prior(model)``.

    ``jacobian=False`` (the default) gives the usual MAP, the mode of the posterior density
    of the *constrained* values, which does not depend on how the model is parameterised.
    ``jacobian=True`` also adds ``log_det_jacobian(model)`` and so finds the mode of the
    density of the free, *unconstrained* arrays that ``rb.sample`` and :func:`~reparam_bridge.laplace` work
    with. The two differ: for a scale ``s = rb.Positive(...)`` (``s = exp(u)``) with posterior
    ``LogNormal(mu, sigma)``, the constrained density peaks at ``s = exp(mu - sigma²)`` while
    the density of ``u = log s`` is ``Normal(mu, sigma)`` and peaks at ``u = mu``, i.e.
    ``s = exp(mu)`` — larger by a factor ``exp(sigma²)``. Use ``jacobian=False`` for a
    point estimate, ``jacobian=True`` to start a sampler or centre a Laplace approximation.

    The default optimiser is ``optax.lbfgs()`` (zoom line search) for ``steps=100``: on
    smooth full-batch MAP problems it converges in tens of steps where Adam needs thousands
    (on the power-law example of ``benchmarks/bench_fit.py``, L-BFGS reaches the optimum,
    loss 37.26, in about 20 steps; ``adam(1e-2)`` is at 244 after 1,000). With ``batch_size`` or with
    :class:`~reparam_bridge.Constraint` s in the model, where a line search is wrong, the default is
    ``optax.adam(1e-2)`` for ``steps=1000``. ``fit_kwargs`` go to :func:`~reparam_bridge.fit`; ``tol`` defaults
    to ``1e-3`` here (without Constraints), so the fit stops once converged, ``converged`` says
    whether it did and a ``rb.ReliabilityWarning`` says when it did not.

    Returns the same :class:`~reparam_bridge.FitResult` as :func:`~reparam_bridge.fit`; ``losses`` holds the negative
    log-density.

    Example:
        >>> import jax.numpy as jnp
        >>> import numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> # posterior of s is LogNormal(0, 0.5): modes exp(-0.25) and exp(0)
        >>> model = {"s": rb.Positive(2.0, prior=dist.LogNormal(0.0, 0.5))}
        >>> nothing = lambda m: 0.0
        >>> a = rb.map_estimate(model, nothing, progress_bar=False)
        >>> b = rb.map_estimate(model, nothing, jacobian=True, progress_bar=False)
        >>> round(float(rb.unwrap(a.model)["s"]), 4), round(float(rb.unwrap(b.model)["s"]), 4)
        (0.7788, 1.0)
    """
    _checks.check_callable("log_joint", log_joint, "map_estimate")
    flat = _checks.flat_signature((model, args))
    sig = flat[2]

    def checks() -> bool:  # of the model alone: once per signature
        _checks.preflight(model, "map_estimate", density=True)
        if jacobian:
            check_bijective(model, "map_estimate(..., jacobian=True)")
        return contains_constraints(model)

    constrained = _checks.once(None if sig is None else ("map_estimate", jacobian, sig), checks)
    if optimizer is None and fit_kwargs.get("batch_size") is None and not constrained:
        optimizer = _default_lbfgs()
        steps = 100 if steps is None else steps
    steps = 1000 if steps is None else steps
    _checks.eval_density(log_joint, model, args, "map_estimate", sig=sig)
    # A MAP is only useful at an optimum: judged by default, and a warning if not reached.
    # (Not with Constraints: a projected optimum at a bound has a non-zero gradient.)
    judged = fit_kwargs.get("rtol") is None and not constrained
    fit_kwargs.setdefault("tol", _MAP_TOL if judged else None)
    return run_fit(
        NegLogDensity(log_joint, jacobian),
        model,
        args,
        optimizer=optimizer,
        steps=steps,
        what="map_estimate",
        checked=(constrained,),
        flat=flat,
        **{**_FIT_DEFAULTS, **fit_kwargs},
    )


_MAP_TOL = 1e-3  # gradient norm <= 1e-3 * max(1, |log density|): reached by L-BFGS in float32


_FIT_DEFAULTS = dict(opt_state=None, batch_size=None, key=None, progress_bar=True, chunk_size=None)

_DEFAULT_LBFGS: list = []


def _default_lbfgs() -> optax.GradientTransformation:
    if not _DEFAULT_LBFGS:
        _DEFAULT_LBFGS.append(optax.lbfgs())
    return _DEFAULT_LBFGS[0]
