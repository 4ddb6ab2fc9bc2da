"""Posteriors for bench_time_to_posterior: the validation cases of
``tests/validation/posteriordb_models.py`` plus a few simple posteriordb models written here
(the Stan programs in ``../shared/posteriordb_v2/stan``), all wrapped Equinox modules."""

import json
import os
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import reparam_bridge as rb
from tests.validation.posteriordb_models import CASES as VALIDATION_CASES
from tests.validation.posteriordb_models import Case

ROOT = Path(__file__).resolve().parents[1]


def _find(posterior: str) -> Path:
    folders = [os.environ.get("REPARAM_BRIDGE_POSTERIORDB", "")]
    for base in (ROOT.parent, ROOT.parent.parent):
        folders += [base / "shared" / "posteriordb", base / "shared" / "posteriordb_v2"]
    for folder in folders:
        if folder and (Path(folder) / f"{posterior}.json").is_file():
            return Path(folder) / f"{posterior}.json"
    raise FileNotFoundError(f"{posterior}.json not found in {folders}")


def _f(x):
    return jnp.asarray(np.asarray(x, dtype=np.float64), dtype=jnp.result_type(float))


class Regression(eqx.Module):
    beta: rb.Real
    sigma: rb.Positive


def _regression(design, y_key, prior_beta=None, prior_sigma=None, half_cauchy=None):
    def data(raw):
        X = np.column_stack(design(raw))
        return {"X": _f(X), "y": _f(np.asarray(raw[y_key]) if isinstance(y_key, str) else y_key(raw))}

    def init(data):
        return Regression(rb.Real(jnp.zeros(data["X"].shape[1])), rb.Positive(_f(1.0)))

    def log_joint(m, data):
        lp = dist.Normal(data["X"] @ m.beta, m.sigma).log_prob(data["y"]).sum()
        if prior_beta is not None:
            lp = lp + dist.Normal(0.0, prior_beta).log_prob(m.beta).sum()
        if prior_sigma is not None:
            lp = lp + dist.HalfNormal(prior_sigma).log_prob(m.sigma)
        if half_cauchy is not None:
            lp = lp + dist.HalfCauchy(half_cauchy).log_prob(m.sigma)
        return lp

    return data, init, log_joint


def _mesquite(raw):
    g = {
        k: np.log(np.asarray(raw[k], dtype=np.float64))
        for k in ("diam1", "diam2", "canopy_height", "total_height", "density")
    }
    return [
        np.ones_like(g["diam1"]),
        g["diam1"],
        g["diam2"],
        g["canopy_height"],
        g["total_height"],
        g["density"],
        np.asarray(raw["group"], dtype=np.float64),
    ]


def _kidscore(raw):
    hs, iq = np.asarray(raw["mom_hs"], float), np.asarray(raw["mom_iq"], float)
    return [np.ones_like(hs), hs, iq, hs * iq]


class Kilpisjarvi(eqx.Module):
    alpha: rb.Real
    beta: rb.Real
    sigma: rb.Positive


def _kilpis_data(raw):
    return {k: _f(raw[k]) for k in ("x", "y", "pmualpha", "psalpha", "pmubeta", "psbeta")}


def _kilpis_init(data):
    return Kilpisjarvi(rb.Real(_f(0.0)), rb.Real(_f(0.0)), rb.Positive(_f(1.0)))


def _kilpis_log_joint(m, d):
    return (
        dist.Normal(d["pmualpha"], d["psalpha"]).log_prob(m.alpha)
        + dist.Normal(d["pmubeta"], d["psbeta"]).log_prob(m.beta)
        + dist.Normal(m.alpha + m.beta * d["x"], m.sigma).log_prob(d["y"]).sum()
    )


def _case(name, parts, **kw):
    data, init, log_joint = parts
    return Case(name, data, init, log_joint, **kw)


EXTRA = {
    c.posterior: c
    for c in [
        _case("earnings-earn_height", _regression(lambda r: [np.ones(len(r["height"])), r["height"]], "earn")),
        _case("kidiq-kidscore_interaction", _regression(_kidscore, "kid_score", half_cauchy=2.5)),
        _case("sblrc-blr", _regression(lambda r: [np.asarray(r["X"], float)], "y", prior_beta=10.0, prior_sigma=10.0)),
        _case("mesquite-logmesquite", _regression(_mesquite, lambda r: np.log(np.asarray(r["weight"], float)))),
        Case("kilpisjarvi_mod-kilpisjarvi", _kilpis_data, _kilpis_init, _kilpis_log_joint),
    ]
}
CASES = {**VALIDATION_CASES, **EXTRA}


def data_and_model(case: Case):
    with open(_find(case.posterior)) as f:
        raw = json.load(f)["data"]
    data = case.data(raw)
    return case.init(data), data
