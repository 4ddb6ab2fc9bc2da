"""The posteriordb posteriors that have reference draws, written as wrapped Equinox modules.

Each :class:`Case` holds a wrapped model at a reasonable starting point, ``log_joint(m, data)``
over the *constrained* values (exactly the Stan model: a flat prior is no term, Stan's
``cauchy`` on a ``<lower=0>`` parameter is a half-Cauchy), and ``quantities(m, data)``: the
named quantities of the reference (derived ones such as eight schools' ``theta`` or the GP's
``f`` computed per draw). :func:`reference_draws` maps reference keys (``"beta[1]"``, 1-based
as in Stan) to ``(chain, draw)`` arrays.

The data are read from ``../shared/posteriordb`` next to the repository, or from the folder
named by the environment variable ``REPARAM_BRIDGE_POSTERIORDB``.
"""

import dataclasses
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jaxtyping import Array

import reparam_bridge as rb

ENV_VAR = "REPARAM_BRIDGE_POSTERIORDB"
_REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_dir(env_var: str, name: str) -> Path | None:
    """``$env_var`` (must exist), else ``<repo>/../shared/<name>``, else ``None``."""
    env = os.environ.get(env_var)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"${env_var}={env!r} is not a directory.")
        return path
    path = _REPO_ROOT.parent / "shared" / name
    return path if path.is_dir() else None


def load_json(env_var: str, name: str, posterior: str) -> dict[str, Any]:
    """The JSON of ``<posterior>.json`` in :func:`shared_dir` (keys ``data``, ``reference``, ...)."""
    folder = shared_dir(env_var, name)
    if folder is None:
        raise FileNotFoundError(f"no {name} folder: set ${env_var} or put it at ../shared/{name}.")
    with open(folder / f"{posterior}.json") as f:
        return json.load(f)


def posteriordb_dir() -> Path | None:
    """The folder holding the posteriordb JSON files (``$REPARAM_BRIDGE_POSTERIORDB`` wins), or ``None``."""
    return shared_dir(ENV_VAR, "posteriordb")


def load(posterior: str) -> dict[str, Any]:
    """The JSON of ``<posterior>.json`` (keys ``data``, ``reference``, ...)."""
    return load_json(ENV_VAR, "posteriordb", posterior)


def _f(x: Any) -> Array:
    """Float array in the current default precision (float64 inside ``jax.enable_x64``)."""
    return jnp.asarray(np.asarray(x, dtype=np.float64), dtype=jnp.result_type(float))


# --------------------------------------------------------------------------------------
# eight_schools_noncentered


class EightSchools(eqx.Module):
    theta_trans: rb.Real
    mu: rb.Real
    tau: rb.Positive


def eight_schools_data(raw: dict) -> dict[str, Array]:
    return {"y": _f(raw["y"]), "sigma": _f(raw["sigma"])}


def eight_schools_init(data: dict) -> EightSchools:
    return EightSchools(rb.Real(jnp.zeros_like(data["y"])), rb.Real(_f(0.0)), rb.Positive(_f(1.0)))


def eight_schools_log_joint(m: EightSchools, data: dict) -> Array:
    theta = m.mu + m.tau * m.theta_trans
    return (
        dist.Normal(0.0, 1.0).log_prob(m.theta_trans).sum()
        + dist.Normal(0.0, 5.0).log_prob(m.mu)
        + dist.HalfCauchy(5.0).log_prob(m.tau)
        + dist.Normal(theta, data["sigma"]).log_prob(data["y"]).sum()
    )


def eight_schools_quantities(m: EightSchools, data: dict) -> dict[str, Array]:
    return {"theta": m.mu + m.tau * m.theta_trans, "mu": m.mu, "tau": m.tau}


# --------------------------------------------------------------------------------------
# arK: y[t] ~ N(alpha + sum_k beta[k] y[t-k], sigma) for t > K


class ArK(eqx.Module):
    alpha: rb.Real
    beta: rb.Real
    sigma: rb.Positive


def ark_data(raw: dict) -> dict[str, Array]:
    y, K = np.asarray(raw["y"], dtype=np.float64), int(raw["K"])
    lags = np.stack([y[K - k : len(y) - k] for k in range(1, K + 1)], axis=1)  # lags[:, k-1] = y[t-k]
    return {"lags": _f(lags), "y": _f(y[K:])}


def ark_init(data: dict) -> ArK:
    K = data["lags"].shape[1]
    return ArK(rb.Real(_f(0.0)), rb.Real(_f(np.zeros(K))), rb.Positive(_f(1.0)))


def ark_log_joint(m: ArK, data: dict) -> Array:
    mean = m.alpha + data["lags"] @ m.beta
    return (
        dist.Normal(0.0, 10.0).log_prob(m.alpha)
        + dist.Normal(0.0, 10.0).log_prob(m.beta).sum()
        + dist.HalfCauchy(2.5).log_prob(m.sigma)
        + dist.Normal(mean, m.sigma).log_prob(data["y"]).sum()
    )


def _identity_quantities(m: eqx.Module, data: dict) -> dict[str, Array]:
    """Every field of the (unwrapped) model, by its name."""
    return {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}


# --------------------------------------------------------------------------------------
# arma11


class Arma11(eqx.Module):
    mu: rb.Real
    phi: rb.Real
    theta: rb.Real
    sigma: rb.Positive


def arma11_data(raw: dict) -> dict[str, Array]:
    return {"y": _f(raw["y"])}


def arma11_init(data: dict) -> Arma11:
    return Arma11(rb.Real(_f(0.0)), rb.Real(_f(0.0)), rb.Real(_f(0.0)), rb.Positive(_f(1.0)))


def arma11_errors(m: Arma11, y: Array) -> Array:
    """err[1] = y[1] - (mu + phi mu); err[t] = y[t] - (mu + phi y[t-1] + theta err[t-1])."""
    err1 = y[0] - (m.mu + m.phi * m.mu)

    def step(err_prev, y_pair):
        y_prev, y_t = y_pair
        err = y_t - (m.mu + m.phi * y_prev + m.theta * err_prev)
        return err, err

    _, rest = jax.lax.scan(step, err1, (y[:-1], y[1:]))
    return jnp.concatenate([err1[None], rest])


def arma11_log_joint(m: Arma11, data: dict) -> Array:
    return (
        dist.Normal(0.0, 10.0).log_prob(m.mu)
        + dist.Normal(0.0, 2.0).log_prob(m.phi)
        + dist.Normal(0.0, 2.0).log_prob(m.theta)
        + dist.HalfCauchy(2.5).log_prob(m.sigma)
        + dist.Normal(0.0, m.sigma).log_prob(arma11_errors(m, data["y"])).sum()
    )


# --------------------------------------------------------------------------------------
# gp_pois_regr: f = chol(K_SE(x; alpha, rho) + 1e-10 I) f_tilde; k ~ Poisson(exp(f))


class GpPoisRegr(eqx.Module):
    rho: rb.Positive
    alpha: rb.Positive
    f_tilde: rb.Real


def gp_data(raw: dict) -> dict[str, Array]:
    return {"x": _f(raw["x"]), "k": _f(raw["k"])}


def gp_init(data: dict) -> GpPoisRegr:
    return GpPoisRegr(rb.Positive(_f(6.0)), rb.Positive(_f(2.0)), rb.Real(jnp.zeros_like(data["x"])))


def gp_f(m: GpPoisRegr, x: Array) -> Array:
    d2 = (x[:, None] - x[None, :]) ** 2
    cov = m.alpha**2 * jnp.exp(-0.5 * d2 / m.rho**2) + 1e-10 * jnp.eye(x.shape[0], dtype=x.dtype)
    return jnp.linalg.cholesky(cov) @ m.f_tilde


def gp_log_joint(m: GpPoisRegr, data: dict) -> Array:
    f = gp_f(m, data["x"])
    return (
        dist.Gamma(25.0, 4.0).log_prob(m.rho)
        + dist.HalfNormal(2.0).log_prob(m.alpha)
        + dist.Normal(0.0, 1.0).log_prob(m.f_tilde).sum()
        + dist.Poisson(jnp.exp(f)).log_prob(data["k"]).sum()
    )


def gp_quantities(m: GpPoisRegr, data: dict) -> dict[str, Array]:
    return {"rho": m.rho, "alpha": m.alpha, "f": gp_f(m, data["x"])}


# --------------------------------------------------------------------------------------
# kidscore_momiq: kid_score ~ N(beta[1] + beta[2] mom_iq, sigma); flat beta, half-Cauchy sigma


class KidscoreMomiq(eqx.Module):
    beta: rb.Real
    sigma: rb.Positive


def kidscore_data(raw: dict) -> dict[str, Array]:
    return {"mom_iq": _f(raw["mom_iq"]), "kid_score": _f(raw["kid_score"])}


def kidscore_init(data: dict) -> KidscoreMomiq:
    y = data["kid_score"]
    return KidscoreMomiq(rb.Real(jnp.stack([jnp.mean(y), jnp.zeros_like(y[0])])), rb.Positive(jnp.std(y)))


def kidscore_log_joint(m: KidscoreMomiq, data: dict) -> Array:
    mean = m.beta[0] + m.beta[1] * data["mom_iq"]
    return dist.HalfCauchy(2.5).log_prob(m.sigma) + dist.Normal(mean, m.sigma).log_prob(data["kid_score"]).sum()


# --------------------------------------------------------------------------------------
# logmesquite_logvas: log(weight) ~ N(X beta, sigma); flat beta, flat sigma > 0


class LogmesquiteLogvas(eqx.Module):
    beta: rb.Real
    sigma: rb.Positive


def logmesquite_data(raw: dict) -> dict[str, Array]:
    d = {k: np.asarray(v, dtype=np.float64) for k, v in raw.items() if isinstance(v, list)}
    X = np.stack(
        [
            np.ones_like(d["weight"]),
            np.log(d["diam1"] * d["diam2"] * d["canopy_height"]),
            np.log(d["diam1"] * d["diam2"]),
            np.log(d["diam1"] / d["diam2"]),
            np.log(d["total_height"]),
            np.log(d["density"]),
            d["group"],
        ],
        axis=1,
    )
    return {"X": _f(X), "log_weight": _f(np.log(d["weight"]))}


def logmesquite_init(data: dict) -> LogmesquiteLogvas:
    y = data["log_weight"]
    beta = jnp.zeros(data["X"].shape[1], y.dtype).at[0].set(jnp.mean(y))
    return LogmesquiteLogvas(rb.Real(beta), rb.Positive(jnp.std(y)))


def logmesquite_log_joint(m: LogmesquiteLogvas, data: dict) -> Array:
    return dist.Normal(data["X"] @ m.beta, m.sigma).log_prob(data["log_weight"]).sum()


# --------------------------------------------------------------------------------------
# registry


@dataclass(frozen=True)
class Case:
    """One posterior: how to build its data and starting model, its density and quantities.

    Attributes:
        posterior: the posteriordb name (the JSON file's stem).
        data: ``raw JSON data -> dict of arrays`` (call inside the wanted precision).
        init: ``data -> wrapped model`` at a reasonable starting point.
        log_joint: ``(unwrapped model, data) -> scalar`` over constrained values.
        quantities: ``(unwrapped model, data) -> {name: array}`` for one draw; ``name[i]``
            in the reference is ``quantities[name][i - 1]``.
        x64: sample in float64 (needed where float32 is not accurate enough).
        sample_kwargs: extra keyword arguments for ``rb.sample`` (kernel options).
    """

    posterior: str
    data: Callable[[dict], dict[str, Array]]
    init: Callable[[dict], eqx.Module]
    log_joint: Callable[[Any, dict], Array]
    quantities: Callable[[Any, dict], dict[str, Array]] = _identity_quantities
    x64: bool = False
    sample_kwargs: dict[str, Any] = field(default_factory=dict)


CASES: dict[str, Case] = {
    case.posterior: case
    for case in [
        Case("arK-arK", ark_data, ark_init, ark_log_joint, sample_kwargs={"dense_mass": True}),  # correlated lags
        Case("arma-arma11", arma11_data, arma11_init, arma11_log_joint),
        Case(
            "eight_schools-eight_schools_noncentered",
            eight_schools_data,
            eight_schools_init,
            eight_schools_log_joint,
            eight_schools_quantities,
            sample_kwargs={"target_accept_prob": 0.9},
        ),
        # K + 1e-10 I is singular in float32: the Cholesky needs float64.
        Case("gp_pois_regr-gp_pois_regr", gp_data, gp_init, gp_log_joint, gp_quantities, x64=True),
        # flat priors and strongly correlated coefficients: a dense mass matrix
        Case(
            "kidiq-kidscore_momiq", kidscore_data, kidscore_init, kidscore_log_joint, sample_kwargs={"dense_mass": True}
        ),
        Case(
            "mesquite-logmesquite_logvas",
            logmesquite_data,
            logmesquite_init,
            logmesquite_log_joint,
            sample_kwargs={"dense_mass": True},
        ),
    ]
}


def posteriors_with_reference() -> list[str]:
    """Names of every posterior in the folder that has a ``reference``."""
    folder = posteriordb_dir()
    if folder is None:
        return []
    return sorted(p.stem for p in folder.glob("*.json") if "reference" in json.loads(p.read_text()))


_KEY = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<index>[0-9, ]+)\])?$")


def parse_key(key: str) -> tuple[str, tuple[int, ...]]:
    """``"beta[1]" -> ("beta", (0,))``, ``"L[2,1]" -> ("L", (1, 0))``, ``"mu" -> ("mu", ())``."""
    match = _KEY.match(key)
    if match is None:
        raise ValueError(f"cannot parse reference key {key!r}")
    index = match["index"]
    return match["name"], tuple(int(i) - 1 for i in index.split(",")) if index else ()


def reference_draws(case: Case, draws: eqx.Module, data: dict, keys: list[str]) -> dict[str, np.ndarray]:
    """``{reference key: (chain, draw) array}`` from ``Posterior.draws`` (leaves ``(chain, draw, ...)``)."""
    per_draw = lambda m: case.quantities(m, data)  # noqa: E731
    values = eqx.filter_jit(eqx.filter_vmap(eqx.filter_vmap(per_draw)))(draws)
    out = {}
    for key in keys:
        name, index = parse_key(key)
        if name not in values:
            raise KeyError(f"{case.posterior}: no quantity {name!r} for reference key {key!r}")
        out[key] = np.asarray(values[name])[(slice(None), slice(None), *index)]
    return out
