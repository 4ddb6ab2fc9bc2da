"""The second set of posteriordb posteriors (``../shared/posteriordb_v2``) as wrapped Equinox modules.

Each Stan constraint maps to a named bijector: ``<lower=0>`` to ``rb.Positive``, ``simplex`` to
``rb.Simplex``, ``positive_ordered`` to ``rb.PositiveOrdered``, unconstrained to ``rb.Real``.
Densities are the Stan programs in ``stan/`` (constants dropped as Stan drops them: a
``normal(0, 1)`` on a ``<lower=0>`` parameter is a half-normal). The Gaussian linear
regressions use their sufficient statistics, ``Σ(y - Xβ)² = RSS + (β - β̂)ᵀXᵀX(β - β̂)`` —
the same density as the Stan program, with a cost independent of the number of rows (diamonds
has 5000). The data are read from ``$REPARAM_BRIDGE_POSTERIORDB_V2`` or
``<repo>/../shared/posteriordb_v2``.
"""

from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array

import reparam_bridge as rb

from .posteriordb_models import Case, _f, load_json, shared_dir

ENV_VAR = "REPARAM_BRIDGE_POSTERIORDB_V2"


def posteriordb_v2_dir() -> Path | None:
    """``$REPARAM_BRIDGE_POSTERIORDB_V2`` (must exist), else ``<repo>/../shared/posteriordb_v2``, else ``None``."""
    return shared_dir(ENV_VAR, "posteriordb_v2")


def load_v2(posterior: str) -> dict[str, Any]:
    return load_json(ENV_VAR, "posteriordb_v2", posterior)


def _np(raw: dict, key: str) -> np.ndarray:
    return np.asarray(raw[key], dtype=np.float64)


# --------------------------------------------------------------------------------------
# Gaussian linear regressions: y ~ N(X beta, sigma) through sufficient statistics


class LinReg(eqx.Module):
    beta: rb.Real
    sigma: rb.Positive


def suff_stats(X: np.ndarray, y: np.ndarray) -> dict[str, Array]:
    """``XᵀX``, the least-squares ``β̂`` and its residual sum of squares (float64 numpy first)."""
    beta_hat, *_ = np.linalg.lstsq(X, y, rcond=None)
    rss = float(np.sum((y - X @ beta_hat) ** 2))
    return {"XtX": _f(X.T @ X), "beta_hat": _f(beta_hat), "rss": _f(rss), "n": _f(len(y)), "sd_y": _f(np.std(y))}


def gaussian_loglik(beta: Array, sigma: Array, s: dict) -> Array:
    """``Σᵢ log N(yᵢ | xᵢβ, σ)``, constants dropped."""
    d = beta - s["beta_hat"]
    ss = s["rss"] + d @ s["XtX"] @ d
    return -s["n"] * jnp.log(sigma) - 0.5 * ss / sigma**2


def linreg_init(s: dict) -> LinReg:
    return LinReg(rb.Real(s["beta_hat"]), rb.Positive(jnp.sqrt(s["rss"] / s["n"])))


def flat(m: LinReg, s: dict) -> Array:  # flat priors on beta and sigma
    return gaussian_loglik(m.beta, m.sigma, s)


def _design(raw: dict, columns: list[np.ndarray], y: np.ndarray) -> dict[str, Array]:
    X = np.stack([np.ones_like(y)] + columns, axis=1)
    return suff_stats(X, y)


def earn_height_data(raw):
    return _design(raw, [_np(raw, "height")], _np(raw, "earn"))


def logearn_interaction_data(raw):
    h, male = _np(raw, "height"), _np(raw, "male")
    return _design(raw, [h, male, h * male], np.log(_np(raw, "earn")))


def kidscore_interaction_data(raw):
    hs, iq = _np(raw, "mom_hs"), _np(raw, "mom_iq")
    return _design(raw, [hs, iq, hs * iq], _np(raw, "kid_score"))


def kidscore_interaction_log_joint(m, s):  # sigma ~ cauchy(0, 2.5) on <lower=0>
    return dist.HalfCauchy(2.5).log_prob(m.sigma) + gaussian_loglik(m.beta, m.sigma, s)


def kidscore_c2_data(raw):
    hs, iq = _np(raw, "mom_hs") - 0.5, _np(raw, "mom_iq") - 100.0
    return _design(raw, [hs, iq, hs * iq], _np(raw, "kid_score"))


def logmesquite_data(raw):
    cols = [np.log(_np(raw, k)) for k in ("diam1", "diam2", "canopy_height", "total_height", "density")]
    return _design(raw, cols + [_np(raw, "group")], np.log(_np(raw, "weight")))


def nes_data(raw):
    age = np.asarray(raw["age_discrete"])
    cols = [_np(raw, "real_ideo"), _np(raw, "race_adj")] + [(age == a).astype(np.float64) for a in (2, 3, 4)]
    cols += [_np(raw, k) for k in ("educ1", "gender", "income")]
    return _design(raw, cols, _np(raw, "partyid7"))


def blr_data(raw):
    return suff_stats(_np(raw, "X"), _np(raw, "y"))


def blr_log_joint(m, s):  # beta ~ normal(0, 10); sigma ~ normal(0, 10) on <lower=0>
    return (
        dist.Normal(0.0, 10.0).log_prob(m.beta).sum()
        + dist.HalfNormal(10.0).log_prob(m.sigma)
        + gaussian_loglik(m.beta, m.sigma, s)
    )


# --------------------------------------------------------------------------------------
# diamonds (brms): centred design, Intercept ~ student_t(3, 8, 10), sigma half-student_t(3, 0, 10)


class Diamonds(eqx.Module):
    b: rb.Real
    Intercept: rb.Real
    sigma: rb.Positive


def diamonds_data(raw):
    X, y = _np(raw, "X"), _np(raw, "Y")
    Xc = X[:, 1:] - X[:, 1:].mean(0)
    return suff_stats(np.concatenate([Xc, np.ones((len(y), 1))], axis=1), y)  # last coefficient: Intercept


def diamonds_init(s):
    return Diamonds(rb.Real(s["beta_hat"][:-1]), rb.Real(s["beta_hat"][-1]), rb.Positive(jnp.sqrt(s["rss"] / s["n"])))


def diamonds_log_joint(m, s):
    return (
        dist.Normal(0.0, 1.0).log_prob(m.b).sum()
        + dist.StudentT(3.0, 8.0, 10.0).log_prob(m.Intercept)
        + dist.StudentT(3.0, 0.0, 10.0).log_prob(m.sigma)
        + gaussian_loglik(jnp.append(m.b, m.Intercept), m.sigma, s)
    )


# --------------------------------------------------------------------------------------
# gp_regr: y ~ MVN(0, K_SE(x; alpha, rho) + sigma I) (sigma, not sigma², on the diagonal, as in Stan)


class GpRegr(eqx.Module):
    rho: rb.Positive
    alpha: rb.Positive
    sigma: rb.Positive


def gp_regr_data(raw):
    return {"x": _f(raw["x"]), "y": _f(raw["y"])}


def gp_regr_init(data):
    return GpRegr(rb.Positive(_f(6.0)), rb.Positive(_f(2.0)), rb.Positive(_f(1.5)))


def gp_regr_log_joint(m, data):
    x = data["x"]
    cov = m.alpha**2 * jnp.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / m.rho**2) + m.sigma * jnp.eye(
        x.size, dtype=x.dtype
    )
    return (
        dist.Gamma(25.0, 4.0).log_prob(m.rho)
        + dist.HalfNormal(2.0).log_prob(m.alpha)
        + dist.HalfNormal(1.0).log_prob(m.sigma)
        + dist.MultivariateNormal(jnp.zeros_like(x), scale_tril=jnp.linalg.cholesky(cov)).log_prob(data["y"])
    )


# --------------------------------------------------------------------------------------
# hmm_drive_0: two-state HMM, simplex transition rows, positive_ordered emission rates


class HmmDrive(eqx.Module):
    theta1: rb.Simplex
    theta2: rb.Simplex
    phi: rb.PositiveOrdered
    lambda_: rb.PositiveOrdered


def hmm_data(raw):
    return {"u": _f(raw["u"]), "v": _f(raw["v"]), "alpha": _f(raw["alpha"])}


def hmm_init(data):
    return HmmDrive(
        rb.Simplex(_f([0.9, 0.1])),
        rb.Simplex(_f([0.1, 0.9])),
        rb.PositiveOrdered(_f([1.5, 6.0])),
        rb.PositiveOrdered(_f([0.03, 0.08])),
    )


def hmm_log_joint(m, data):
    log_theta = jnp.log(jnp.stack([m.theta1, m.theta2]))  # [from j, to k]
    prior = (
        dist.Dirichlet(data["alpha"][0]).log_prob(m.theta1)
        + dist.Dirichlet(data["alpha"][1]).log_prob(m.theta2)
        + dist.Normal(jnp.array([0.0, 3.0]), 1.0).log_prob(m.phi).sum()
        + dist.Normal(jnp.array([0.0, 3.0]), 1.0).log_prob(m.lambda_).sum()
    )
    emit = dist.Exponential(m.phi).log_prob(data["u"][:, None]) + dist.Exponential(m.lambda_).log_prob(
        data["v"][:, None]
    )  # (N, K)

    def forward(gamma, e):  # gamma[t, k] = logsumexp_j(gamma[t-1, j] + log theta[j, k]) + e[t, k]
        gamma = jax.nn.logsumexp(gamma[:, None] + log_theta, axis=0) + e
        return gamma, None

    gamma, _ = jax.lax.scan(forward, emit[0], emit[1:])
    return prior + jax.nn.logsumexp(gamma)


def hmm_quantities(m, data):
    return {"theta1": m.theta1, "theta2": m.theta2, "phi": m.phi, "lambda": m.lambda_}


# --------------------------------------------------------------------------------------
# lotka_volterra: z' = ((alpha - beta v) u, (-gamma + delta u) v), solved with diffrax


class LotkaVolterra(eqx.Module):
    theta: rb.Positive
    z_init: rb.Positive
    sigma: rb.Positive


def lv_data(raw):
    return {"ts": _f(raw["ts"]), "y_init": _f(raw["y_init"]), "y": _f(raw["y"])}


def lv_init(data):
    return LotkaVolterra(
        rb.Positive(_f([0.55, 0.028, 0.8, 0.024])), rb.Positive(_f([33.0, 6.0])), rb.Positive(_f([0.25, 0.25]))
    )


def lv_solve(theta: Array, z0: Array, ts: Array) -> Array:
    """The populations at ``ts`` (Dopri5, adaptive steps, tolerances 1e-6: tighter than Stan's
    rk45 1e-5/1e-3); NaN where the solver fails within its step budget."""
    import diffrax  # the optional ``ode`` extra

    def rhs(t, z, th):
        u, v = z[0], z[1]
        return jnp.stack([(th[0] - th[1] * v) * u, (-th[2] + th[3] * u) * v])

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(rhs),
        diffrax.Dopri5(),
        t0=0.0,
        t1=ts[-1],
        dt0=0.1,
        y0=z0,
        args=theta,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-5),
        max_steps=500,
        throw=False,  # Stan's step budget; early warm-up visits stiff corners: reject them
    )
    ok = sol.result == diffrax.RESULTS.successful
    return jnp.where(ok, sol.ys, jnp.nan)  # (N, 2); NaN makes the log density NaN: NUTS rejects the step


def lv_log_joint(m, data):
    z = lv_solve(m.theta, m.z_init, data["ts"])
    th = m.theta
    prior = (
        dist.Normal(1.0, 0.5).log_prob(th[jnp.array([0, 2])]).sum()
        + dist.Normal(0.05, 0.05).log_prob(th[jnp.array([1, 3])]).sum()
        + dist.LogNormal(-1.0, 1.0).log_prob(m.sigma).sum()
        + dist.LogNormal(jnp.log(10.0), 1.0).log_prob(m.z_init).sum()
    )
    lik = (
        dist.LogNormal(jnp.log(m.z_init), m.sigma).log_prob(data["y_init"]).sum()
        + dist.LogNormal(jnp.log(z), m.sigma).log_prob(data["y"]).sum()
    )
    return prior + lik


# --------------------------------------------------------------------------------------
# accel_gp (brms): Hilbert-space GP for the mean and for log sigma


class AccelGp(eqx.Module):
    Intercept: rb.Real
    sdgp_1: rb.Positive
    lscale_1: rb.Positive
    zgp_1: rb.Real
    Intercept_sigma: rb.Real
    sdgp_sigma_1: rb.Positive
    lscale_sigma_1: rb.Positive
    zgp_sigma_1: rb.Real


def accel_data(raw):
    return {
        "Y": _f(raw["Y"]),
        "X1": _f(raw["Xgp_1"]),
        "slambda1": _f(raw["slambda_1"])[:, 0],
        "Xs": _f(raw["Xgp_sigma_1"]),
        "slambdas": _f(raw["slambda_sigma_1"])[:, 0],
    }


def accel_init(data):
    return AccelGp(
        rb.Real(_f(-10.0)),
        rb.Positive(_f(40.0)),
        rb.Positive(_f(0.08)),
        rb.Real(jnp.zeros(40)),
        rb.Real(_f(2.5)),
        rb.Positive(_f(5.0)),
        rb.Positive(_f(0.1)),
        rb.Real(jnp.zeros(20)),
    )


def _hsgp(X, slambda, sdgp, lscale, z):
    """``X · (sqrt(spd(slambda)) ∘ z)``, spd of the squared-exponential kernel in one dimension."""
    spd = sdgp**2 * jnp.sqrt(2 * jnp.pi) * lscale * jnp.exp(-0.5 * lscale**2 * slambda**2)
    return X @ (jnp.sqrt(spd) * z)


def accel_log_joint(m, d):
    mu = m.Intercept + _hsgp(d["X1"], d["slambda1"], m.sdgp_1, m.lscale_1, m.zgp_1)
    log_sigma = m.Intercept_sigma + _hsgp(d["Xs"], d["slambdas"], m.sdgp_sigma_1, m.lscale_sigma_1, m.zgp_sigma_1)
    ig = dist.InverseGamma(1.124909, 0.0177)
    return (
        dist.StudentT(3.0, -13.0, 36.0).log_prob(m.Intercept)
        + dist.StudentT(3.0, 0.0, 36.0).log_prob(m.sdgp_1)
        + dist.Normal().log_prob(m.zgp_1).sum()
        + ig.log_prob(m.lscale_1)
        + dist.StudentT(3.0, 0.0, 10.0).log_prob(m.Intercept_sigma)
        + dist.StudentT(3.0, 0.0, 36.0).log_prob(m.sdgp_sigma_1)
        + dist.Normal().log_prob(m.zgp_sigma_1).sum()
        + ig.log_prob(m.lscale_sigma_1)
        + dist.Normal(mu, jnp.exp(log_sigma)).log_prob(d["Y"]).sum()
    )


# --------------------------------------------------------------------------------------

_LINREG = {"init": linreg_init, "x64": True, "sample_kwargs": {"dense_mass": True}}

CASES_V2: dict[str, Case] = {
    case.posterior: case
    for case in [
        Case("bball_drive_event_0-hmm_drive_0", hmm_data, hmm_init, hmm_log_joint, hmm_quantities, x64=True),
        # 26 strongly correlated coefficients: a dense mass matrix
        Case(
            "diamonds-diamonds",
            diamonds_data,
            diamonds_init,
            diamonds_log_joint,
            x64=True,
            sample_kwargs={"dense_mass": True},
        ),
        # coefficients of order 1e4 (flat priors): the adapted dense mass matrix takes the scales
        Case("earnings-earn_height", earn_height_data, log_joint=flat, **_LINREG),
        Case("earnings-logearn_interaction", logearn_interaction_data, log_joint=flat, **_LINREG),
        Case("gp_pois_regr-gp_regr", gp_regr_data, gp_regr_init, gp_regr_log_joint, x64=True),
        Case("hudson_lynx_hare-lotka_volterra", lv_data, lv_init, lv_log_joint, x64=True),
        Case(
            "kidiq-kidscore_interaction", kidscore_interaction_data, log_joint=kidscore_interaction_log_joint, **_LINREG
        ),
        Case("kidiq_with_mom_work-kidscore_interaction_c2", kidscore_c2_data, log_joint=flat, **_LINREG),
        Case(
            "mcycle_gp-accel_gp",
            accel_data,
            accel_init,
            accel_log_joint,
            x64=True,
            sample_kwargs={"target_accept_prob": 0.95},
        ),  # 0.9: 1.7% divergent (300+300 draws)
        Case("mesquite-logmesquite", logmesquite_data, log_joint=flat, **_LINREG),
        Case("nes2000-nes", nes_data, log_joint=flat, **_LINREG),
        Case("sblrc-blr", blr_data, log_joint=blr_log_joint, **_LINREG),
    ]
}


def wrappers_used(model: Any) -> list[str]:
    """Sorted names of the wrapper types in a model (for the results table)."""
    leaves = jax.tree_util.tree_leaves(model, is_leaf=lambda x: isinstance(x, rb.Unwrappable))
    return sorted({type(x).__name__ for x in leaves if isinstance(x, rb.Unwrappable)})
