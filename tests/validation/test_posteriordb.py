"""rb.sample reproduces the posteriordb reference posteriors (slow; run in CI).

For every reference quantity: ``|mean - ref_mean| < 5 MCSE`` with
``MCSE = sqrt(sd² / ESS_bulk + ref_sd² / 10000)`` (ESS from ArviZ, the reference has 10,000
draws), ``|sd - ref_sd| / ref_sd < 0.10`` and ``r_hat < 1.01``; divergences are at most 1%.
A user-written ``rb.Bijector`` with a bound that depends on another parameter is checked the
same way against a posterior known in closed form.

Cost (2 shared CPU cores): about 1.5-2 minutes in all, mostly compilation and the GP.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from jaxtyping import Array

import reparam_bridge as rb
from reparam_bridge import arviz as az  # the ArviZ 0.2x/1.x adapter: same calls, same numbers

from .posteriordb_models import CASES, load, posteriordb_dir, posteriors_with_reference, reference_draws

pytestmark = pytest.mark.slow

NUM_CHAINS, NUM_WARMUP, NUM_SAMPLES = 4, 1000, 1000
MAX_DIVERGENT_FRACTION = 0.01  # the GP (non-centred, data-dominated) has 1-25 in 4000 over seeds 0-4


def check_draws(
    values: dict[str, np.ndarray], reference: dict[str, dict], ref_draws: int | None = 10_000, ess_cap: float = np.inf
) -> list[str]:
    """Every failed check, as text. ``values[key]`` is ``(chain, draw)``; ``reference[key]`` has
    ``mean`` and ``sd`` (from ``ref_draws`` independent draws, or exact when ``None``).
    ``ess_cap``: the most information the draws can carry (importance-resampled draws repeat,
    and ArviZ's ESS of them overstates it)."""
    failures = []
    for key, ref in reference.items():
        v = np.asarray(values[key], dtype=np.float64)
        ess = min(float(az.ess(v, method="bulk")), ess_cap)
        r_hat = float(az.rhat(v))
        mean, sd = v.mean(), v.std(ddof=1)
        ref_var = ref["sd"] ** 2 / ref_draws if ref_draws else 0.0
        mcse = np.sqrt(sd**2 / ess + ref_var)
        z = (mean - ref["mean"]) / mcse
        rel = abs(sd - ref["sd"]) / ref["sd"]
        where = f"{key}: mean {mean:.5g} vs {ref['mean']:.5g} ({z:+.1f} MCSE), sd {sd:.5g} vs {ref['sd']:.5g}"
        if not abs(z) < 5:
            failures.append(f"{where}: mean off by more than 5 MCSE (ESS {ess:.0f})")
        if not rel < 0.10:
            failures.append(f"{where}: sd off by {100 * rel:.1f}% (> 10%)")
        if not r_hat < 1.01:
            failures.append(f"{key}: r_hat {r_hat:.4f} >= 1.01")
    return failures


def check_divergences(post: rb.Posterior) -> list[str]:
    diverging = np.asarray(post.sample_stats["diverging"])
    if diverging.mean() > MAX_DIVERGENT_FRACTION:
        return [f"{int(diverging.sum())} divergent transitions of {diverging.size}"]
    return []


def run_case(name: str, seed: int = 0, log_joint=None, **overrides) -> tuple[rb.Posterior, dict[str, np.ndarray]]:
    """Sample posterior ``name`` (optionally with another ``log_joint``); return the posterior and
    ``{reference key: (chain, draw)}``."""
    case, posterior = CASES[name], load(name)
    with jax.enable_x64(case.x64):
        data = case.data(posterior["data"])
        post = rb.sample(
            case.init(data),
            log_joint or case.log_joint,
            data,
            key=jax.random.key(seed),
            num_warmup=NUM_WARMUP,
            num_samples=NUM_SAMPLES,
            num_chains=NUM_CHAINS,
            chain_method=None,  # the default: on CPU the bridge's loop, chains in sequence
            progress_bar=False,
            **{**case.sample_kwargs, **overrides},
        )
        values = reference_draws(case, post.draws, data, list(posterior["reference"]))
    return post, values


needs_data = pytest.mark.skipif(
    posteriordb_dir() is None, reason="no posteriordb folder (../shared/posteriordb or $REPARAM_BRIDGE_POSTERIORDB)"
)


@needs_data
def test_every_reference_posterior_has_a_model():
    available = posteriors_with_reference()
    assert available, "no posterior with a reference found"
    assert set(available) <= set(CASES), f"no model for {sorted(set(available) - set(CASES))}"


@needs_data
@pytest.mark.parametrize("name", sorted(CASES))
def test_reproduces_reference(name):
    post, values = run_case(name)
    failures = check_draws(values, load(name)["reference"]) + check_divergences(post)
    assert not failures, f"{name}:\n  " + "\n  ".join(failures)
    # the draws are the user's model type, and ArviZ sees them under attribute names
    model = CASES[name].init(CASES[name].data(load(name)["data"]))
    assert type(post.draws) is type(model)
    idata = post.to_inference_data()
    fields = [f for f in type(model).__dataclass_fields__]
    assert sorted(idata.posterior.data_vars) == sorted(fields)


# --------------------------------------------------------------------------------------
# a user-written bijector whose bound is another parameter: 0 < b < a
#
# a ~ Gamma(3, 1) (attached as a prior), b | a ~ Uniform(0, a), y_i | a ~ Exponential(a).
# Integrating b out, a | y ~ Gamma(3 + n, 1 + sum y) and b | a, y ~ Uniform(0, a), so
# E b = E a / 2 and Var b = E a² / 3 - (E a)² / 4.

Y = jnp.array([0.3, 0.8, 0.1, 0.5, 1.2])
SHAPE, RATE = 3.0 + Y.size, 1.0 + float(Y.sum())
MEAN_A, VAR_A = SHAPE / RATE, SHAPE / RATE**2
EXACT = {
    "a": {"mean": MEAN_A, "sd": VAR_A**0.5},
    "b": {"mean": MEAN_A / 2, "sd": ((VAR_A + MEAN_A**2) / 3 - MEAN_A**2 / 4) ** 0.5},
}


def _log_sigmoid_jacobian(raw: Array) -> Array:
    return jax.nn.log_sigmoid(raw) + jax.nn.log_sigmoid(-raw)


class UpTo(rb.Bijector):
    """``{"a": a, "b": a·sigmoid(raw)}``, ``a`` a nested wrapped parameter."""

    raw: Array
    a: rb.Positive

    def unwrap(self):
        return {"a": self.a, "b": self.a * jax.nn.sigmoid(self.raw)}

    def log_det_jacobian(self):  # d b / d raw; a's own Jacobian is counted at a
        return jnp.sum(jnp.log(self.a) + _log_sigmoid_jacobian(self.raw))


class Below(rb.Bijector):
    """``upper·sigmoid(raw)`` where ``upper`` is another parameter (an ``rb.Ref``)."""

    raw: Array
    upper: rb.Ref

    def unwrap(self):
        return self.upper * jax.nn.sigmoid(self.raw)

    def log_det_jacobian(self):
        return jnp.sum(jnp.log(self.upper) + _log_sigmoid_jacobian(self.raw))


class Nested(eqx.Module):
    ab: UpTo


class Referenced(eqx.Module):
    a: rb.Positive
    b: eqx.Module


def _a_prior():
    return rb.Positive(2.0, prior=dist.Gamma(3.0, 1.0))


def _log_joint(a, b, y):
    return dist.Uniform(0.0, a).log_prob(b) + dist.Exponential(a).log_prob(y).sum()


@pytest.mark.parametrize(
    "model, get",
    [
        (Nested(UpTo(jnp.array(0.0), _a_prior())), lambda m: (m.ab["a"], m.ab["b"])),
        (UpTo(jnp.array(0.0), _a_prior()), lambda m: (m["a"], m["b"])),  # the bijector is the whole model
        (Referenced(_a_prior(), Below(jnp.array(0.0), rb.Ref("a"))), lambda m: (m.a, m.b)),
        (
            Referenced(_a_prior(), rb.Bounded.from_unconstrained(0.0, lower=0.0, upper=rb.Ref("a"))),
            lambda m: (m.a, m.b),
        ),
    ],
    ids=["nested-subclass", "root-subclass", "ref-subclass", "ref-Bounded"],
)
def test_user_bijector_with_parameter_dependent_bound(model, get):
    post = rb.sample(
        model,
        lambda m, y: _log_joint(*get(m), y),
        Y,
        key=jax.random.key(1),
        num_warmup=NUM_WARMUP,
        num_samples=NUM_SAMPLES,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    a, b = get(post.draws)
    assert a.shape == b.shape == (NUM_CHAINS, NUM_SAMPLES)
    assert bool(jnp.all((b > 0) & (b < a)))
    failures = check_draws({"a": a, "b": b}, EXACT, ref_draws=None) + check_divergences(post)
    assert not failures, "\n  ".join(failures)
    idata = post.to_inference_data()
    names = sorted(idata.posterior.data_vars)
    assert names == (["ab.a", "ab.b"] if isinstance(model, Nested) else ["a", "b"])
    summary = az.summary(idata)
    assert summary["r_hat"].max() < 1.01
