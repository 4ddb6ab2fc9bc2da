"""The seeded path (approximation -> rb.sample(init=approx) at the seeded default warmup)
reproduces posteriordb reference posteriors: the checks of test_posteriordb (means within
5 MCSE, sds within 10 %, r-hat < 1.01, divergences at most 1 %). Slow (about 1.5 minutes on 2
shared cores): one Laplace-seeded and one Pathfinder-seeded posterior. Where k-hat < 0.5 the
approximation's own PSIS-resampled draws (``approx.to_posterior``, no MCMC) reproduce them too."""

import warnings

import jax
import pytest

import reparam_bridge as rb
from reparam_bridge._warmstart import SEEDED_NUM_WARMUP

from .posteriordb_models import CASES, load, reference_draws
from .test_posteriordb import (
    NUM_CHAINS,
    NUM_SAMPLES,
    check_divergences,
    check_draws,
    needs_data,
)

pytestmark = pytest.mark.slow


@needs_data
@pytest.mark.parametrize(
    "name, approx, chain_method",
    # NumPyro's MCMC, and the default on CPU (the bridge's loop, chains in sequence)
    [
        ("eight_schools-eight_schools_noncentered", "pathfinder", "vectorized"),
        ("kidiq-kidscore_momiq", "laplace", None),
    ],
)
def test_seeded_path_reproduces_reference(name, approx, chain_method):
    case, posterior = CASES[name], load(name)
    with jax.enable_x64(case.x64):
        data = case.data(posterior["data"])
        model = case.init(data)
        key = jax.random.key(0)
        if approx == "pathfinder":
            q = rb.pathfinder(model, case.log_joint, data, key=key)
        else:
            q = rb.laplace(model, case.log_joint, data, key=key, progress_bar=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rb.GoodApproximationWarning)
            post = rb.sample(
                model,
                case.log_joint,
                data,
                key=key,
                init=q,
                num_samples=NUM_SAMPLES,
                num_chains=NUM_CHAINS,
                chain_method=chain_method,
                progress_bar=False,
                **case.sample_kwargs,
            )
        if post.mcmc is not None:
            assert post.mcmc.num_warmup == SEEDED_NUM_WARMUP
        else:  # the bridge's loop: each chain's last state counts its iterations
            assert (post._last_state.i == SEEDED_NUM_WARMUP + NUM_SAMPLES).all()
        values = reference_draws(case, post.draws, data, list(posterior["reference"]))
    failures = check_draws(values, posterior["reference"]) + check_divergences(post)
    assert not failures, f"{name} ({approx}):\n  " + "\n  ".join(failures)


@needs_data
@pytest.mark.parametrize("name", ["kidiq-kidscore_momiq", "arma-arma11"])
def test_offered_draws_reproduce_reference(name):
    # the draws rb.sample's GoodApproximationWarning offers: Laplace's PSIS draws, resampled
    case, posterior = CASES[name], load(name)
    with jax.enable_x64(case.x64):
        data = case.data(posterior["data"])
        q = rb.laplace(
            case.init(data), case.log_joint, data, key=jax.random.key(0), num_psis_draws=4000, progress_bar=False
        )
        assert q.khat < 0.5, q.khat
        post = q.to_posterior(jax.random.key(1), num_samples=NUM_SAMPLES, num_chains=NUM_CHAINS)
        values = reference_draws(case, post.draws, data, list(posterior["reference"]))
    n = NUM_SAMPLES * NUM_CHAINS
    cap = 1 / (1 / q.ess + 1 / n)  # importance sampling, then resampling n draws
    failures = check_draws(values, posterior["reference"], ess_cap=cap)
    assert not failures, f"{name} (offered draws, IS ESS {q.ess:.0f}):\n  " + "\n  ".join(failures)
