"""rb.sample(checkpoint=DIR): a real subprocess is SIGKILLed mid-run, then the run is
resumed here; the draws must equal an uninterrupted run's, none lost, none duplicated."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import reparam_bridge as rb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODEL = """
import jax.numpy as jnp, numpyro.distributions as dist
import reparam_bridge as rb
Y = jnp.array([0.8, 1.2, 1.0, 0.9, 1.4, 0.7])
def model():
    return {"mu": rb.Real(0.0), "sigma": rb.Positive(1.0), "z": rb.Real(jnp.zeros(2))}
def log_joint(m, y):
    return (dist.Normal(0, 10).log_prob(m["mu"]) + dist.HalfNormal(5).log_prob(m["sigma"])
            + dist.Normal(0, 1).log_prob(m["z"]).sum()
            + dist.Normal(m["mu"], m["sigma"]).log_prob(y).sum())
"""

CHILD = """
import sys, jax
import reparam_bridge as rb
import ckpt_model as cm
rb.sample(cm.model(), cm.log_joint, cm.Y, key=jax.random.key(7), num_warmup=50, num_samples=NUM_SAMPLES,
          num_chains=2, chain_method="vectorized", progress_bar=False, checkpoint=sys.argv[1],
          checkpoint_every=EVERY)
"""

NUM_SAMPLES, EVERY = 60, 15


def _done(directory):
    try:
        with open(os.path.join(directory, "checkpoint.json")) as f:
            return json.load(f)["done"]
    except (FileNotFoundError, json.JSONDecodeError):
        return -1


def test_sigkill_mid_run_then_resume_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    (tmp_path / "ckpt_model.py").write_text(textwrap.dedent(MODEL))
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(CHILD).replace("NUM_SAMPLES", str(NUM_SAMPLES)).replace("EVERY", str(EVERY)))
    directory = str(tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, str(tmp_path)])}
    child = subprocess.Popen(
        [sys.executable, str(script), directory], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 600
        while _done(directory) < 2 * EVERY:  # at least two chunks committed
            if child.poll() is not None:
                pytest.fail(f"the child ended before it was killed: {child.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "the child wrote no chunk in time"
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    monkeypatch.syspath_prepend(str(tmp_path))
    import ckpt_model as cm

    done = _done(directory)
    assert 2 * EVERY <= done < NUM_SAMPLES and done % EVERY == 0
    # A chunk file written but never committed (killed before the manifest) must be ignored.
    orphan = os.path.join(directory, f"draws_{done // EVERY:06d}.npz")
    with open(orphan, "wb") as f:
        f.write(b"half a file")

    loaded = rb.Posterior.load(directory, cm.model())
    assert loaded.num_chains == 2 and loaded.num_draws == done
    resumed = loaded.resume()  # finishes the planned run, in the same directory
    assert resumed.num_draws == NUM_SAMPLES

    reference = rb.sample(
        cm.model(),
        cm.log_joint,
        cm.Y,
        key=jax.random.key(7),
        num_warmup=50,
        num_samples=NUM_SAMPLES,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    for name in ("mu", "sigma", "z"):
        ref = np.asarray(reference.draws[name])
        # the draws on disk at the kill are exactly the reference's first `done`: none lost...
        np.testing.assert_array_equal(np.asarray(loaded.draws[name]), ref[:, :done])
        # ...and the resumed run continues the same chains: nothing duplicated or skipped
        np.testing.assert_array_equal(np.asarray(resumed.draws[name]), ref)
    # the same sample_stats as an uninterrupted run (reached_max_treedepth included), loaded and resumed
    assert set(loaded.sample_stats) == set(resumed.sample_stats) == set(reference.sample_stats)
    for stat in ("diverging", "n_steps", "step_size", "lp", "reached_max_treedepth"):
        np.testing.assert_array_equal(resumed.sample_stats[stat], reference.sample_stats[stat])
    # every draw is distinct (a duplicated chunk would repeat whole rows)
    mu = np.asarray(resumed.draws["z"])[..., 0]
    assert all(len(np.unique(mu[c])) > 0.5 * NUM_SAMPLES for c in range(2))

    # the directory now holds the whole run, and a second load sees all of it
    again = rb.Posterior.load(directory, cm.model())
    assert again.num_draws == NUM_SAMPLES
    np.testing.assert_array_equal(np.asarray(again.draws["mu"]), np.asarray(reference.draws["mu"]))
    with pytest.raises(ValueError, match="complete"):
        again.resume()
    # a model with swapped wrapper kinds is refused, naming the parameter
    wrong = {"mu": rb.Positive(1.0), "sigma": rb.Positive(1.0), "z": rb.Real(np.zeros(2, np.float32))}
    with pytest.raises(ValueError, match="'mu.unconstrained' is inside a Real"):
        rb.Posterior.load(directory, wrong)


def test_a_checkpointed_run_has_the_same_sample_stats(tmp_path, monkeypatch):
    (tmp_path / "ckpt_model.py").write_text(textwrap.dedent(MODEL))
    monkeypatch.syspath_prepend(str(tmp_path))
    import ckpt_model as cm

    kw = dict(key=jax.random.key(1), num_warmup=20, num_samples=10, num_chains=2, progress_bar=False)
    kw.update(chain_method="vectorized", max_tree_depth=3)
    plain = rb.sample(cm.model(), cm.log_joint, cm.Y, **kw)
    saved = rb.sample(cm.model(), cm.log_joint, cm.Y, checkpoint=str(tmp_path / "run"), checkpoint_every=5, **kw)
    assert "reached_max_treedepth" in plain.sample_stats
    assert set(saved.sample_stats) == set(plain.sample_stats)
    np.testing.assert_array_equal(
        saved.sample_stats["reached_max_treedepth"], plain.sample_stats["reached_max_treedepth"]
    )
