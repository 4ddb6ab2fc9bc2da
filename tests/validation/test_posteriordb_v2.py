"""rb.sample reproduces the second set of posteriordb reference posteriors (slow; run in CI).

The same checks as ``test_posteriordb.py``: every reference quantity's mean within 5 MCSE
(``MCSE = sqrt(sd²/ESS_bulk + ref_sd²/10000)``), sd within 10 %, r-hat < 1.01, at most 1 %
divergent transitions. Set ``REPARAM_BRIDGE_VALIDATION_RESULTS=<file.jsonl>`` to append one
row per posterior (for ``benchmarks/validation_table.py``, which writes
``benchmarks/validation.md``).

Cost: per-posterior seconds are in ``benchmarks/validation.md``. Measured only on an overloaded
machine (load 14-30 on 2 cores): 44-200 s per posterior for ten of them; Lotka-Volterra and the
HSGP (accel_gp, tree depth ~10) are the expensive ones and were not timed to completion.
"""

import importlib.util
import json
import os
import time

import jax
import numpy as np
import pytest

import reparam_bridge as rb
from reparam_bridge import arviz as az  # the ArviZ 0.2x/1.x adapter

from .posteriordb_models import reference_draws
from .posteriordb_v2_models import CASES_V2, load_v2, posteriordb_v2_dir, wrappers_used
from .test_posteriordb import check_divergences, check_draws

pytestmark = pytest.mark.slow

NUM_CHAINS, NUM_WARMUP, NUM_SAMPLES = 4, 500, 1000
RESULTS_ENV = "REPARAM_BRIDGE_VALIDATION_RESULTS"

needs_data = pytest.mark.skipif(
    posteriordb_v2_dir() is None,
    reason="no posteriordb_v2 folder (../shared/posteriordb_v2 or $REPARAM_BRIDGE_POSTERIORDB_V2)",
)


def worst_z(values: dict[str, np.ndarray], reference: dict[str, dict], ref_draws: int | None = 10_000) -> float:
    """The largest ``|mean - ref_mean| / MCSE`` over the quantities (the statistic ``check_draws`` bounds by 5)."""
    worst = 0.0
    for key, ref in reference.items():
        v = np.asarray(values[key], dtype=np.float64)
        ess = float(az.ess(v, method="bulk"))
        mcse = np.sqrt(v.std(ddof=1) ** 2 / ess + (ref["sd"] ** 2 / ref_draws if ref_draws else 0.0))
        worst = max(worst, abs(v.mean() - ref["mean"]) / mcse)
    return worst


def record(row: dict) -> None:
    """Append ``row`` to ``$REPARAM_BRIDGE_VALIDATION_RESULTS`` when it is set."""
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def run_v2(name: str, seed: int = 0):
    case, posterior = CASES_V2[name], load_v2(name)
    with jax.enable_x64(case.x64):
        data = case.data(posterior["data"])
        model = case.init(data)
        post = rb.sample(
            model,
            case.log_joint,
            data,
            key=jax.random.key(seed),
            num_warmup=NUM_WARMUP,
            num_samples=NUM_SAMPLES,
            num_chains=NUM_CHAINS,
            chain_method="vectorized",
            progress_bar=False,
            **case.sample_kwargs,
        )
        values = reference_draws(case, post.draws, data, list(posterior["reference"]))
    return model, post, values


@needs_data
def test_every_v2_posterior_has_a_model():
    folder = posteriordb_v2_dir()
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(CASES_V2)


@needs_data
@pytest.mark.parametrize("name", sorted(CASES_V2))
def test_reproduces_reference_v2(name):
    if name.startswith("hudson_lynx_hare") and importlib.util.find_spec("diffrax") is None:
        pytest.skip("the Lotka-Volterra model needs diffrax: pip install 'reparam_bridge[ode]'")
    start = time.perf_counter()
    model, post, values = run_v2(name)
    seconds = time.perf_counter() - start
    reference = load_v2(name)["reference"]
    failures = check_draws(values, reference) + check_divergences(post)
    record(
        {
            "posterior": name,
            "set": "posteriordb_v2",
            "dimension": len(reference),
            "wrappers": wrappers_used(model),
            "passed": not failures,
            "worst_z": worst_z(values, reference),
            "divergences": int(np.asarray(post.sample_stats["diverging"]).sum()),
            "draws": f"{NUM_CHAINS}x{NUM_SAMPLES}",
            "seconds": round(seconds, 1),
        }
    )
    assert not failures, f"{name}:\n  " + "\n  ".join(failures)
