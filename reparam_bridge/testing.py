"""Check a bijector — named or your own — before trusting it: :func:`check_bijector`.

One call runs four checks and returns a :class:`BijectorReport` that says what failed, where,
and what to look at:

1. **log-Jacobian**: ``rb.log_det_jacobian`` against ``jax.jacfwd`` + ``slogdet`` of the map from
   the free arrays to the *independent coordinates* of the value (README, "Bijectors and
   conventions": simplex/zero-sum drop the last entry, correlation matrices keep the strict lower
   triangle, covariance matrices the lower triangle), in float64 at random points;
2. **round trip**: building from a value (your factory, i.e. the constructor) recovers the free
   arrays that produced it, and gives back the value;
3. **edges**: value, log-Jacobian and its gradient stay finite far out in unconstrained space
   (``±edge``), in float32 and float64;
4. **SBC**: simulation-based calibration (Talts et al. 2018) of BlackJAX NUTS through the
   bijector on ``prior`` alone and with a Gaussian likelihood; ranks judged uniform by the ECDF
   simultaneous band (Säilynoja et al. 2022) at family-wise level ``alpha``.

Example:
    >>> import jax.numpy as jnp
    >>> import reparam_bridge as rb
    >>> report = rb.testing.check_bijector(rb.Simplex, jnp.array([0.2, 0.3, 0.5]), sbc=False)
    >>> report.ok, [f.check for f in report.findings]
    (True, ['log-Jacobian', 'round trip', 'edges float32', 'edges float64', 'SBC'])
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import reparam_bridge as rb  # the public API only (bound lazily: this module is imported by the package)

from . import _bijector_checks

__all__ = [
    "BijectorCheckError",
    "BijectorReport",
    "Finding",
    "OrderStatistics",
    "ProductPrior",
    "check_bijector",
    "coordinates",
]


class BijectorCheckError(AssertionError):
    """Raised by ``check_bijector(..., raise_on_failure=True)``; the message is the report."""


@dataclass(frozen=True)
class Finding:
    check: str
    status: Literal["passed", "failed", "skipped"]
    message: str


@dataclass
class BijectorReport:
    """What :func:`check_bijector` found. ``ok`` is true when nothing failed; ``str(report)``
    lists every check; ``sbc_p`` holds the rank test's p-value per ``(setting, quantity)``."""

    name: str
    findings: list[Finding] = field(default_factory=list)
    sbc_p: dict[tuple[str, str], float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "failed"]

    def add(self, check: str, failures: list[str], ok_message: str = "", skipped: str = "") -> None:
        if skipped:
            self.findings.append(Finding(check, "skipped", skipped))
        elif failures:
            self.findings.append(Finding(check, "failed", "\n    ".join(failures)))
        else:
            self.findings.append(Finding(check, "passed", ok_message))

    def __str__(self) -> str:
        head = f"check_bijector({self.name}): " + (
            "all checks passed" if self.ok else f"{len(self.failures)} check(s) FAILED"
        )
        lines = [f"  {f.status.upper():7s} {f.check}: {f.message}" for f in self.findings]
        return "\n".join([head, *lines])

    def raise_on_failure(self) -> "BijectorReport":
        if not self.ok:
            raise BijectorCheckError(str(self))
        return self


def coordinates(value: Any, num_free: int) -> jax.Array:
    """The independent coordinates of ``value`` (a PyTree of arrays), flattened: all entries when
    their number is ``num_free``, else the README's conventions tried in turn (drop the last entry
    of the last axis; the strict lower triangle; the lower triangle)."""
    leaves = [jnp.ravel(x) for x in jax.tree_util.tree_leaves(value)]
    full = jnp.concatenate(leaves) if leaves else jnp.zeros((0,))
    if full.size == num_free or not (len(leaves) == 1 and jnp.ndim(value) >= 1):
        return full
    v = jnp.asarray(value)
    candidates = [v[..., :-1]]
    if v.ndim >= 2 and v.shape[-1] == v.shape[-2]:
        d = v.shape[-1]
        candidates += [v[..., r, c] for r, c in (np.tril_indices(d, -1), np.tril_indices(d))]
    for c in candidates:
        if c.size == num_free:
            return jnp.ravel(c)
    return full


class OrderStatistics:
    """The sorted values of ``n`` iid draws of a scalar NumPyro distribution ``base`` — a prior
    for ordered vectors whose density (``n! ∏ base(yᵢ)``) does not use any ordering transform.

    Example:
        >>> import jax, numpyro.distributions as dist
        >>> p = OrderStatistics(dist.Exponential(1.0), 3)
        >>> y = p.sample(jax.random.key(0)); bool((jnp.diff(y) > 0).all())
        True
    """

    def __init__(self, base: Any, n: int):
        self.base, self.n = base, n

    def sample(self, key):
        return jnp.sort(self.base.sample(key, (self.n,)))

    def log_prob(self, y):
        ordered = jnp.all(jnp.diff(y) > 0)
        return jnp.where(ordered, jnp.sum(self.base.log_prob(y)), -jnp.inf)


class ProductPrior:
    """Independent priors over the entries of a dict-valued tree (e.g. ``{"s": rb.Simplex(...),
    "L": rb.CorrCholesky(...)}``): ``sample`` draws each, ``log_prob`` sums them.

    Example:
        >>> import jax, numpyro.distributions as dist
        >>> p = ProductPrior({"a": dist.Normal(), "b": dist.Gamma(2.0, 1.0)})
        >>> sorted(p.sample(jax.random.key(0)))
        ['a', 'b']
    """

    def __init__(self, priors: dict[str, Any]):
        self.priors = dict(priors)

    def sample(self, key):
        keys = jax.random.split(key, len(self.priors))
        return {name: p.sample(k) for (name, p), k in zip(self.priors.items(), keys)}

    def log_prob(self, value):
        return sum(jnp.sum(p.log_prob(value[name])) for name, p in self.priors.items())


def _default_coords(tree: Any, n: int) -> tuple[Callable[[Any], jax.Array], list[str]]:
    """Coordinates and their names: per wrapped node of a container tree (each node's own
    convention, named by its path), else :func:`coordinates` of the whole value."""
    nodes = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: isinstance(x, rb.Unwrappable))
    counts = [
        ravel_pytree(rb.partition(node)[0])[0].size if isinstance(node, rb.Unwrappable) else jnp.size(node)
        for _, node in nodes
    ]
    try:
        values = jax.tree_util.tree_leaves(rb.unwrap(tree))
        per_node = len(nodes) > 1 and len(values) == len(nodes) and sum(counts) == n
    except (TypeError, ValueError, KeyError, AttributeError):  # e.g. a lone node holding an rb.Ref
        per_node = False
    if not per_node:
        fn = lambda v: coordinates(v, n)
        return fn, [f"coordinate {i}" for i in range(n)]

    def fn(v):
        return jnp.concatenate([coordinates(x, c) for x, c in zip(jax.tree_util.tree_leaves(v), counts)])

    names = [f"{jax.tree_util.keystr(path)}[{i}]" for (path, _), c in zip(nodes, counts) for i in range(c)]
    return fn, names


def _name(obj: Any) -> str:
    return getattr(obj, "__name__", None) or type(obj).__name__


def check_bijector(
    bijector_or_factory: Any,
    value: Any = None,
    *,
    prior: Any = None,
    coords: Callable[[Any], jax.Array] | None = None,
    key: jax.Array | None = None,
    num_points: int = 6,
    spread: float = 2.0,
    edge: float = 30.0,
    sbc: bool = True,
    sbc_replicates: int = 128,
    sbc_draws: int = 63,
    sbc_warmup: int = 100,
    sbc_thin: int = 1,
    alpha: float = 0.01,
    raise_on_failure: bool = False,
) -> BijectorReport:
    """Check a bijector's log-Jacobian, round trip, edges and sampling calibration.

    Args:
        bijector_or_factory: a wrapped tree (a bijector, or a dict/module of them), or a factory
            ``value -> wrapped tree`` (a constructor such as ``rb.Simplex`` or
            ``lambda v: rb.Bounded(v, lower=0.0, upper=1.0)``); a factory enables the round trip.
        value: a constrained value for the factory (required with one).
        prior: the SBC prior over the value: a NumPyro distribution, or any object with
            ``sample(key)`` and ``log_prob(value)``; default the bijector's own ``prior``. Its
            density must not be computed through the map under test (e.g. ``Dirichlet`` for a
            simplex, :class:`OrderStatistics` for ordered vectors), else SBC checks nothing.
        coords: ``value -> flat independent coordinates``; default :func:`coordinates`.
        key: PRNG key (default ``jax.random.key(0)``).
        num_points, spread: random points ``u₀ + spread·N(0, 1)`` around the free arrays ``u₀``.
        edge: magnitude of the unconstrained edge points (``±edge``).
        sbc, sbc_replicates, sbc_draws, sbc_warmup, sbc_thin: run SBC with this many replicates
            (half prior-only, half with a likelihood), posterior draws per replicate (ranks
            take ``sbc_draws + 1`` values), warm-up steps and thinning.
        alpha: family-wise level of the rank tests (Bonferroni over settings and quantities).
        raise_on_failure: raise :class:`BijectorCheckError` (an ``AssertionError``) on a failure.
    """
    key = jax.random.key(0) if key is None else key
    is_tree = isinstance(bijector_or_factory, rb.Unwrappable) or (
        not callable(bijector_or_factory) and rb.contains_unwrappables(bijector_or_factory)
    )
    factory = None if is_tree else bijector_or_factory
    if factory is not None and value is None:
        raise TypeError("check_bijector: with a factory, give value= (a constrained value it accepts).")
    tree = bijector_or_factory if is_tree else factory(value)
    name = _name(bijector_or_factory) if factory else ""
    report = BijectorReport(type(tree).__name__ if name in ("", "<lambda>") else name)
    flat0, _ = ravel_pytree(rb.partition(tree)[0])
    n = flat0.size
    if n == 0:
        raise ValueError("check_bijector: the tree has no free arrays (nothing to check).")
    if coords is None:
        coords, names = _default_coords(tree, n)
    else:
        names = [f"coordinate {i}" for i in range(n)]
    prior = prior if prior is not None else getattr(tree, "prior", None)
    k_pts, k_sbc = jax.random.split(key)

    with jax.enable_x64(True):
        t64 = _bijector_checks.as_dtype(tree, jnp.float64)
        p64, s64 = rb.partition(t64)
        u0, unravel = ravel_pytree(p64)
        build = lambda z: eqx.combine(unravel(z), s64)  # the from_unconstrained path
        pts = u0 + spread * jax.random.normal(k_pts, (num_points, n), dtype=jnp.float64)
        _bijector_checks.check_jacobian(report, build, coords, pts, n)
        _bijector_checks.check_round_trip(report, build, factory, pts)
    for dtype in (jnp.float32, jnp.float64):
        with jax.enable_x64(dtype == jnp.float64):
            _bijector_checks.check_edges(report, _bijector_checks.as_dtype(tree, dtype), coords, edge, dtype)
    if not sbc:
        report.add("SBC", [], skipped="sbc=False")
    elif prior is None:
        report.add("SBC", [], skipped="no prior: give prior= (a distribution over the value) to run SBC")
    else:
        _bijector_checks.check_sbc(
            report, tree, prior, coords, names, k_sbc, sbc_replicates, sbc_draws, sbc_warmup, sbc_thin, alpha
        )
    if raise_on_failure:
        report.raise_on_failure()
    return report
