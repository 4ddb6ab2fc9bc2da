"""The four checks of :func:`reparam_bridge.testing.check_bijector`, each adding its
findings to the report: log-Jacobian against ``jax.jacfwd`` + ``slogdet``, round trip through the
factory, finiteness far out in unconstrained space, and simulation-based calibration."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import reparam_bridge as rb  # the public API only (bound lazily: imported while the package loads)

from . import _sbc


def as_dtype(tree: Any, dtype) -> Any:
    return jax.tree_util.tree_map(lambda x: x.astype(dtype) if eqx.is_inexact_array(x) else x, tree)


def check_jacobian(report, build, coords, pts, n) -> None:
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


def check_round_trip(report, build, factory, pts) -> None:
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


def check_edges(report, tree, coords, edge, dtype) -> None:
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


def check_sbc(report, tree, prior, coords, coord_names, key, replicates, draws, warmup, thin, alpha) -> None:
    params, static = rb.partition(as_dtype(tree, jnp.float32))  # SBC runs in float32: cheaper
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
