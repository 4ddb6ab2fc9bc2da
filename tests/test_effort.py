"""rb.compile_effort and the automatic choice of XLA's optimisation for rb.sample / rb.laplace."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest

import reparam_bridge as rb
from reparam_bridge import _effort


def _flag() -> bool:
    return bool(jax.config.read("jax_disable_most_optimizations"))


def test_elementwise_ops_counts_outputs_scans_and_branches():
    x = jnp.ones(10)
    assert _effort.elementwise_ops(lambda x: jnp.sin(x) + 1.0, x) == 20

    def scanned(x):
        return jax.lax.scan(lambda c, _: (jnp.sin(c) * 2.0, None), x, None, length=7)[0]

    assert _effort.elementwise_ops(scanned, x) == 7 * 20
    # a cond costs its dearer branch
    both = lambda x: jax.lax.cond(x[0] > 0, lambda x: jnp.sin(x) + jnp.cos(x), lambda x: -x, x)  # noqa: E731
    assert 30 < _effort.elementwise_ops(both, x) <= 35  # sin, cos, + (30), and a few scalar ops for the predicate
    # a while loop's trip count is unknown: no guess
    assert _effort.elementwise_ops(lambda x: jax.lax.while_loop(lambda v: v[0] < 5, lambda v: v + 1, x), x) == math.inf


def test_auto_is_quick_for_small_work_only_and_modes_override():
    on_cpu = jax.default_backend() == "cpu"
    assert _effort.decide(lambda: 300, _effort.sampler_evaluations(4, 1300, {})) is on_cpu
    assert _effort.decide(lambda: 1e6, _effort.sampler_evaluations(4, 2000, {})) is False
    # thinning and HMC's fixed trajectories count: 10x the transitions or 16x the steps tip it
    small = 300
    assert _effort.decide(lambda: small, _effort.sampler_evaluations(4, 13_000, {})) is False
    assert _effort.decide(lambda: small, _effort.sampler_evaluations(4, 1300, {"num_steps": 1024})) is False
    with rb.compile_effort("quick"):
        assert _effort.decide(lambda: math.inf, 1e9) is True
        with rb.compile_effort("full"):
            # an explicit mode does not even count the work (no trace of the density)
            assert _effort.decide(lambda: 1 / 0, 1.0) is False
        assert _effort.decide(lambda: math.inf, 1e9) is True  # the outer block's mode again
    with pytest.raises(ValueError, match="'fast'"):
        with rb.compile_effort("fast"):
            pass


def test_bad_environment_value_is_named():
    code = "import reparam_bridge as rb; rb._effort.decide(lambda: 1.0, 1.0)"
    env = {"REPARAM_BRIDGE_COMPILE_EFFORT": "fastest", "PATH": "", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "REPARAM_BRIDGE_COMPILE_EFFORT" in out.stderr


def test_the_flag_is_restored_after_the_block_even_on_error():
    before = _flag()
    with pytest.raises(RuntimeError):
        with _effort.effort(True):
            assert _flag()
            raise RuntimeError("boom")
    assert _flag() is before


def test_the_fit_loop_keeps_programs_of_either_effort_apart():
    # the flag is not in JAX's cache key: the loop's own key carries it, so a fit after a quick
    # Laplace does not reuse the quick program
    model, log_joint, y = _model_and_data()
    with rb.compile_effort("quick"):
        rb.laplace(model, log_joint, y, progress_bar=False)
    compiled = rb._fitloop.run._cache_size()
    with rb.compile_effort("full"):
        rb.laplace(model, log_joint, y, progress_bar=False)
    assert rb._fitloop.run._cache_size() == compiled + 1


def _model_and_data():
    y = jnp.array([0.8, 1.2, 1.0, 0.9, 1.4])
    model = {"mu": rb.Real(0.0), "sigma": rb.Positive(1.0)}

    def log_joint(m, y):
        return (
            dist.Normal(0.0, 10.0).log_prob(m["mu"])
            + dist.HalfNormal(5.0).log_prob(m["sigma"])
            + dist.Normal(m["mu"], m["sigma"]).log_prob(y).sum()
        )

    return model, log_joint, y


def _recording(log_joint, seen):
    """``log_joint`` that records the effort flag whenever it is traced (inside the compile)."""

    def traced(m, y):
        seen.append(_flag())
        return log_joint(m, y)

    return traced


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_sample_under_either_effort_gives_the_posterior_and_restores_the_flag(mode):
    model, log_joint, y = _model_and_data()
    kw = dict(key=jax.random.key(3), num_warmup=300, num_samples=1000, num_chains=2, progress_bar=False)
    seen = []
    with rb.compile_effort(mode):
        post = rb.sample(model, _recording(log_joint, seen), y, **kw)
    assert not _flag()
    assert post._quick_compile is (mode == "quick")
    # the first trace is rb.sample's model check, before the choice; every later one (the starts'
    # potential, NumPyro's program) compiles under it
    assert len(seen) >= 2 and all(s is (mode == "quick") for s in seen[1:])
    # the same posterior as a long reference run, within Monte Carlo error
    ref = rb.sample(model, log_joint, y, **{**kw, "key": jax.random.key(4), "num_samples": 4000})
    mu, mu_ref = np.asarray(post.draws["mu"]), np.asarray(ref.draws["mu"])
    se = math.hypot(float(rb.arviz.mcse(mu)), float(rb.arviz.mcse(mu_ref)))
    assert abs(mu.mean() - mu_ref.mean()) < 4 * se
    se_sd = math.hypot(float(rb.arviz.mcse(mu, method="sd")), float(rb.arviz.mcse(mu_ref, method="sd")))
    assert abs(mu.std() - mu_ref.std()) < 4 * se_sd


def test_auto_chooses_quick_for_a_small_model_and_a_resume_compiles_the_same_way():
    model, log_joint, y = _model_and_data()
    kw = dict(key=jax.random.key(5), num_warmup=100, num_chains=1, progress_bar=False)
    post = rb.sample(model, log_joint, y, num_samples=50, **kw)
    assert post._quick_compile is (jax.default_backend() == "cpu")
    longer = post.resume(50)
    assert longer._quick_compile is post._quick_compile and not _flag()
    # resumed draws are those of one run of 100: same programs, same rounding
    whole = rb.sample(model, log_joint, y, num_samples=100, **kw)
    np.testing.assert_array_equal(np.asarray(longer.draws["mu"]), np.asarray(whole.draws["mu"]))


def test_a_loaded_checkpoint_resumes_as_its_run_compiled_unless_told(tmp_path):
    model, log_joint, y = _model_and_data()
    kw = dict(key=jax.random.key(6), num_warmup=100, num_chains=1, progress_bar=False)
    with rb.compile_effort("quick"):
        rb.sample(model, log_joint, y, num_samples=200, checkpoint=tmp_path / "run", **kw)
    for mode, expected in (("auto", True), ("full", False)):
        seen = []
        with rb.compile_effort(mode):
            post = rb.Posterior.load(tmp_path / "run", model)
            assert post._quick_compile is True
            post.resume(50, log_joint=_recording(log_joint, seen), args=(y,))
        assert seen and all(s is expected for s in seen), (mode, seen)


def test_laplace_under_either_effort_agrees():
    model, log_joint, y = _model_and_data()
    seen_quick, seen_full = [], []
    with rb.compile_effort("quick"):
        a = rb.laplace(model, _recording(log_joint, seen_quick), y, progress_bar=False)
    with rb.compile_effort("full"):
        b = rb.laplace(model, _recording(log_joint, seen_full), y, progress_bar=False)
    assert not _flag()
    assert seen_quick and all(seen_quick) and seen_full and not any(seen_full)
    np.testing.assert_allclose(np.asarray(a.covariance), np.asarray(b.covariance), rtol=1e-4)
