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

from . import _sbc

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


def _as_dtype(tree: Any, dtype) -> Any:
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)


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
        t64 = _as_dtype(tree, jnp.float64)
        p64, s64 = rb.partition(t64)
        u0, unravel = ravel_pytree(p64)
        build = lambda z: eqx.combine(unravel(z), s64)  # the from_unconstrained path
        pts = u0 + spread * jax.random.normal(k_pts, (num_points, n), dtype=jnp.float64)
        _check_jacobian(report, build, coords, pts, n)
        _check_round_trip(report, build, factory, pts)
    for dtype in (jnp.float32, jnp.float64):
        with jax.enable_x64(dtype == jnp.float64):
            _check_edges(report, _as_dtype(tree, dtype), coords, edge, dtype)
    if not sbc:
        report.add("SBC", [], skipped="sbc=False")
    elif prior is None:
        report.add("SBC", [], skipped="no prior: give prior= (a distribution over the value) to run SBC")
    else:
        _check_sbc(report, tree, prior, coords, names, k_sbc, sbc_replicates, sbc_draws, sbc_warmup, sbc_thin, alpha)
    if raise_on_failure:
        report.raise_on_failure()
    return report


def _check_jacobian(report, build, coords, pts, n) -> None:
    def pair(z):
        out = coords(rb.unwrap(build(z)))
        return out, rb.log_det_jacobian(build(z))

    out0, ldj0 = pair(pts[0])
    if out0.size != n:
        report.add(
            "log-Jacobian",
            [
                (
                    f"the value has {out0.size} independent coordinates but there are {n} free numbers; "
                    "pass coords= (value -> the independent coordinates, README 'Bijectors and conventions')"
                )
            ],
        )
        return
    if jnp.shape(ldj0) != ():
        report.add("log-Jacobian", [f"log_det_jacobian() must return a scalar, got shape {jnp.shape(ldj0)}; sum it"])
        return

    def at(z):
        sign, ref = jnp.linalg.slogdet(jax.jacfwd(lambda x: pair(x)[0])(z))
        return sign, ref, pair(z)[1]

    signs, refs, ldjs = jax.jit(jax.vmap(at))(pts)
    failures = []
    for z, sign, ref, ours in zip(pts, signs, refs, np.asarray(ldjs)):
        ours = float(ours)
        where = f"at free arrays {_sbc.describe(z)} (value {_sbc.describe(rb.unwrap(build(z)))})"
        if float(sign) == 0:
            failures.append(f"the map is singular {where}: it is not a bijection onto the coordinates")
        elif not abs(ours - float(ref)) <= 1e-6 * max(1.0, abs(float(ref))):
            hint = (
                "it looks sign-flipped (log|det| of the inverse map)"
                if abs(ours + float(ref)) < 1e-6 * max(1, abs(ours))
                else "look for a missing or extra term, or a Jacobian taken w.r.t. other coordinates"
            )
            failures.append(
                f"log_det_jacobian() = {ours:.6g} but jacfwd+slogdet gives {float(ref):.6g} {where}; {hint}"
            )
    report.add("log-Jacobian", failures[:3], f"matches jacfwd+slogdet at {len(pts)} random points (float64)")


def _check_round_trip(report, build, factory, pts) -> None:
    if factory is None:
        report.add("round trip", [], skipped="pass a factory (value -> bijector), e.g. the class, to check it")
        return
    failures = []
    for z in pts:
        v = rb.unwrap(build(z))
        try:
            again = factory(v)
        except (ValueError, TypeError) as e:
            failures.append(
                f"the factory rejected the value {_sbc.describe(v)} made from free arrays {_sbc.describe(z)}: {e}"
            )
            continue
        z2, _ = ravel_pytree(rb.partition(again)[0])
        v2 = rb.unwrap(again)
        if z2.shape != z.shape or not np.allclose(np.asarray(z2, np.float64), z, rtol=1e-6, atol=1e-6):
            failures.append(
                f"free arrays {_sbc.describe(z)} -> value -> factory gives free arrays {_sbc.describe(z2)}: "
                "the constructor's inverse map does not invert unwrap()"
            )
        elif not all(
            np.allclose(a, b, rtol=1e-6, atol=1e-8)
            for a, b in zip(jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(v2))
        ):
            failures.append(f"value {_sbc.describe(v)} -> factory -> unwrap gives {_sbc.describe(v2)}")
    report.add("round trip", failures[:3], f"factory(unwrap(u)) recovers u at {len(pts)} points (float64)")


def _check_edges(report, tree, coords, edge, dtype) -> None:
    params, static = rb.partition(tree)
    u0, unravel = ravel_pytree(params)
    n = u0.size
    alt = jnp.where(jnp.arange(n) % 2 == 0, edge, -edge).astype(dtype)
    named = [
        ("all +edge", jnp.full(n, edge, dtype)),
        ("all -edge", jnp.full(n, -edge, dtype)),
        ("alternating ±edge", alt),
        ("alternating ∓edge", -alt),
    ]
    named += [(f"free[{i}] = {s}edge", u0.at[i].set(s * edge)) for i in sorted({0, n - 1}) for s in (1, -1)]

    def parts(z):
        m = eqx.combine(unravel(z), static)
        return coords(rb.unwrap(m)), rb.log_det_jacobian(m)

    def finite(z):
        (v, ldj), g = parts(z), jax.grad(lambda x: parts(x)[1] + jnp.sum(parts(x)[0]))(z)
        return jnp.stack([jnp.all(jnp.isfinite(v)), jnp.isfinite(ldj), jnp.all(jnp.isfinite(g))])

    ok = np.asarray(jax.jit(jax.vmap(finite))(jnp.stack([z for _, z in named])))
    failures = []
    for (label, z), row in zip(named, ok):
        bad = [what for what, good in zip(("value", "log-Jacobian", "gradient"), row) if not good]
        if bad:
            failures.append(
                f"{' and '.join(bad)} not finite at {label} ({edge:g}); compute it in log space "
                "(logsumexp, softplus, log1p) so nothing over/underflows"
            )
    name = np.dtype(dtype).name
    report.add(
        f"edges {name}", failures[:3], f"value, log-Jacobian and gradient finite at ±{edge:g} ({len(named)} points)"
    )


def _check_sbc(report, tree, prior, coords, coord_names, key, replicates, draws, warmup, thin, alpha) -> None:
    params, static = rb.partition(_as_dtype(tree, jnp.float32))  # SBC runs in float32: cheaper
    u0, unravel = ravel_pytree(params)
    model = lambda z: eqx.combine(unravel(z), static)

    def log_prior(v):
        return jnp.sum(prior.log_prob(v))

    def q_of_value(v):
        return jnp.concatenate([coords(v), jnp.atleast_1d(log_prior(v))])

    def sample_prior(k):
        return q_of_value(prior.sample(k))

    k_scale, k_run = jax.random.split(key)
    nq = q_of_value(rb.unwrap(model(u0))).size
    noise = 0.5 * _sbc.prior_scale(sample_prior, k_scale)[: nq - 1]

    def logdensity(z, y, w):
        m = model(z)
        v = rb.unwrap(m)
        lik = jnp.sum(-0.5 * ((y - coords(v)) / noise) ** 2)
        return log_prior(v) + rb.log_det_jacobian(m) + w * lik

    def observe(k, truth):
        return truth[: nq - 1] + noise * jax.random.normal(k, noise.shape)

    weights = np.repeat([0.0, 1.0], replicates // 2)
    ranks, divs = _sbc.run_sbc(
        logdensity,
        sample_prior,
        lambda z: q_of_value(rb.unwrap(model(z))),
        observe,
        u0,
        key=k_run,
        weights=weights,
        num_warmup=warmup,
        num_draws=draws,
        thin=thin,
    )
    names = list(coord_names)[: nq - 1] + ["log prior density"]
    level = alpha / (2 * nq)
    failures = []
    for w, setting in ((0.0, "prior"), (1.0, "with likelihood")):
        rows = weights == w
        for j, qname in enumerate(names):
            p, shape = _sbc.ecdf_uniformity(ranks[rows, j], draws + 1)
            report.sbc_p[(setting, qname)] = p
            if p < level:
                failures.append(
                    f"{setting}: ranks of {qname} are not uniform (ECDF leaves the simultaneous band, "
                    f"p = {p:.2g} < {level:.2g}){'; ' + shape if shape else ''}. A wrong log-Jacobian "
                    "makes NUTS sample the wrong density: run the log-Jacobian check"
                )
    div_rate = divs.sum() / (len(weights) * draws * thin)
    msg = (
        f"ranks uniform for {nq} quantities x 2 settings ({len(weights)} replicates, {draws} draws each; "
        f"min p {min(report.sbc_p.values()):.2g}, level {level:.2g}); divergences {100 * div_rate:.2f}%"
    )
    report.add("SBC", failures[:4], msg)
