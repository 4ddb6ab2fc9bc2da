"""rb.sample's chain methods: "parallel" over JAX CPU devices (in a subprocess, since the
device count is fixed when JAX starts) and "sequential" in-process.

Cost on 2 CPU cores: about 15 s (the subprocess re-imports JAX and compiles once).
"""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import numpyro.distributions as dist
import pytest

import reparam_bridge as rb


def _model():
    return {"mu": rb.Real(0.0), "sigma": rb.Positive(1.0)}


def _log_joint(m, y):
    return (
        dist.Normal(0.0, 10.0).log_prob(m["mu"])
        + dist.HalfNormal(5.0).log_prob(m["sigma"])
        + dist.Normal(m["mu"], m["sigma"]).log_prob(y).sum()
    )


Y = np.array([0.8, 1.2, 1.0, 0.9, 1.4])

_PARALLEL = textwrap.dedent(
    """
    import jax, numpy as np, numpyro.distributions as dist
    import reparam_bridge as rb

    assert jax.local_device_count() == 4, jax.devices()
    model = {"mu": rb.Real(0.0), "sigma": rb.Positive(1.0)}
    def log_joint(m, y):
        return (dist.Normal(0.0, 10.0).log_prob(m["mu"]) + dist.HalfNormal(5.0).log_prob(m["sigma"])
                + dist.Normal(m["mu"], m["sigma"]).log_prob(y).sum())
    y = np.array([0.8, 1.2, 1.0, 0.9, 1.4])
    post = rb.sample(model, log_joint, y, key=jax.random.key(0), num_warmup=200, num_samples=150,
                     num_chains=4, progress_bar=False)
    assert post.mcmc.chain_method == "parallel", post.mcmc.chain_method
    mu, sigma = np.asarray(post.draws["mu"]), np.asarray(post.draws["sigma"])
    assert mu.shape == (4, 150) and sigma.shape == (4, 150), (mu.shape, sigma.shape)
    assert np.all(np.isfinite(mu)) and np.all(sigma > 0)
    assert post.sample_stats["diverging"].shape == (4, 150)
    # the four chains are different chains, not copies of one
    assert len({round(float(m), 6) for m in mu[:, -1]}) == 4
    assert abs(float(mu.mean()) - float(y.mean())) < 0.5
    print("OK parallel", mu.shape)
    """
)


def test_parallel_chains_over_cpu_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", _PARALLEL], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK parallel (4, 150)" in out.stdout


def test_sequential_chains_in_process(monkeypatch):
    # the bridge's loop: the chains one after another in one compiled program, compiled once
    # (NumPyro's sequential method compiles its loop again for every chain)
    from reparam_bridge import _progress, _sharded

    ticks = []
    tick = _progress.LoopProgress.tick
    monkeypatch.setattr(
        _progress.LoopProgress, "tick", staticmethod(lambda step: (ticks.append(int(step)), tick(step)))
    )
    # 1,000 draws: at 500, r-hat of this Student-t-like posterior read up to 1.024 (8 keys: <= 1.013);
    # at 1,000 <= 1.0065 over 16 runs (JAX 0.10 and 0.12)
    kwargs = dict(num_warmup=300, num_samples=1000, num_chains=3, chain_method="sequential")
    rb.clear_caches()
    post = rb.sample(_model(), _log_joint, Y, key=jax.random.key(1), progress_bar=True, **kwargs)
    assert len(_sharded._RUNS) == 1 and post.mcmc is None
    # the bar counts every chain's iterations in turn, not the first chain's again and again
    assert sorted(ticks) == [c * 1300 + k for c in range(3) for k in range(13, 1301, 13)], ticks
    mu, sigma = np.asarray(post.draws["mu"]), np.asarray(post.draws["sigma"])
    assert mu.shape == (3, 1000) and sigma.shape == (3, 1000)
    assert np.all(np.isfinite(mu)) and np.all(sigma > 0)
    assert post.sample_stats["n_steps"].shape == (3, 1000)
    assert not np.array_equal(mu[0], mu[1])
    idata = post.to_inference_data()
    assert idata.posterior["mu"].shape == (3, 1000)
    # the posterior: mu's mean and sd against the exact ones (quadrature over mu and sigma),
    # within 4 MCSE (ArviZ's, which knows the sd's error grows with the tails: mu's posterior is
    # Student-t-like). A long NumPyro run was the reference before: its own sd was 0.175
    # against the exact 0.2036, so it passed or failed by the luck of the starting points.
    import arviz as az
    from scipy import stats

    grid_mu, grid_s = np.linspace(-3.0, 5.0, 2001)[:, None], np.linspace(1e-3, 8.0, 4001)[None, :]
    lp = stats.norm(0, 10).logpdf(grid_mu) + stats.halfnorm(scale=5).logpdf(grid_s)
    lp = lp + stats.norm(grid_mu[..., None], grid_s[..., None]).logpdf(Y).sum(-1)
    p = np.exp(lp - lp.max()).sum(1)
    p /= p.sum()
    exact_mean = float(np.sum(p * grid_mu[:, 0]))
    exact_sd = float(np.sqrt(np.sum(p * (grid_mu[:, 0] - exact_mean) ** 2)))
    from reparam_bridge.arviz import mcse

    x = mu.astype(np.float64)
    assert abs(x.mean() - exact_mean) < 4 * mcse(x, method="mean"), (x.mean(), exact_mean)
    assert abs(x.std() - exact_sd) < 4 * mcse(x, method="sd"), (x.std(), exact_sd)
    assert float(az.rhat(idata, var_names=["mu"])["mu"]) < 1.02
    # a second call of the same shapes compiles nothing
    again = rb.sample(_model(), _log_joint, Y, key=jax.random.key(2), progress_bar=True, **kwargs)
    assert len(_sharded._RUNS) == 1 and not np.array_equal(np.asarray(again.draws["mu"]), mu)
    # resume continues the same chains: the old draws kept, new ones after them, no new warmup
    # (the adapted step size, the same in every new draw of a chain), and in two steps the same
    # draws as in one
    more = post.resume(100)
    assert more.draws["mu"].shape == (3, 1100) and more.sample_stats["n_steps"].shape == (3, 1100)
    np.testing.assert_array_equal(np.asarray(more.draws["mu"])[:, :1000], mu)
    step = np.asarray(more.sample_stats["step_size"])
    np.testing.assert_array_equal(step[:, 1000:], np.repeat(step[:, 999:1000], 100, axis=1))
    two = more.resume(100)  # the same program as the first resume
    one = post.resume(200)
    np.testing.assert_array_equal(np.asarray(two.draws["mu"]), np.asarray(one.draws["mu"]))
    assert not np.array_equal(np.asarray(more.draws["mu"])[:, 1000:], mu[:, :100])


def test_clear_caches_forgets_the_compiled_sampler():
    from reparam_bridge import _checks, _sharded

    kw = dict(num_warmup=100, num_samples=50, num_chains=2, chain_method="sequential", progress_bar=False)
    first = rb.sample(_model(), _log_joint, Y, key=jax.random.key(0), **kw)
    rb.map_estimate(_model(), _log_joint, Y, steps=5, progress_bar=False, tol=None)  # its checks are kept
    assert _sharded._RUNS and _checks._PASSED
    rb.clear_caches()
    assert not _sharded._RUNS and not _checks._PASSED
    post = rb.sample(_model(), _log_joint, Y, key=jax.random.key(0), **kw)  # compiled afresh: the same draws
    assert len(_sharded._RUNS) == 1
    np.testing.assert_array_equal(np.asarray(post.draws["mu"]), np.asarray(first.draws["mu"]))


SHIFT = 0.0


def test_a_changed_global_is_sampled_not_the_cached_one():
    # the default (the bridge's loop) keeps its compiled sampler, but a log_joint that reads a
    # global sees its new value, as with NumPyro's MCMC (which traces every call)
    global SHIFT

    def log_joint(m, y):
        return _log_joint(m, y + SHIFT)

    kw = dict(num_warmup=200, num_samples=200, num_chains=2, progress_bar=False)
    before = rb.sample(_model(), log_joint, Y, key=jax.random.key(3), **kw)
    SHIFT = 3.0
    try:
        after = rb.sample(_model(), log_joint, Y, key=jax.random.key(3), **kw)
    finally:
        SHIFT = 0.0
    assert before.mcmc is None and after.mcmc is None  # the default on CPU: the bridge's loop
    assert abs(float(np.mean(before.draws["mu"])) - Y.mean()) < 1.0
    assert abs(float(np.mean(after.draws["mu"])) - (Y.mean() + 3.0)) < 1.0


def test_ensemble_kernels_keep_numpyros_vectorized_chains():
    from numpyro.infer import AIES

    post = rb.sample(
        _model(),
        _log_joint,
        Y,
        key=jax.random.key(0),
        kernel=AIES,
        num_chains=8,
        num_warmup=100,
        num_samples=50,
        progress_bar=False,
    )
    assert post.mcmc.chain_method == "vectorized" and post.draws["mu"].shape == (8, 50)
    with pytest.raises(ValueError, match="AIES.*vectorized"):
        rb.sample(_model(), _log_joint, Y, key=jax.random.key(0), kernel=AIES, num_chains=8, chain_method="sequential")


def test_thinning_means_what_it_means_in_numpyro():
    # num_samples iterations after warmup, num_samples // thinning of them kept (the last of each
    # block): the same on the default loop as with NumPyro's MCMC, and the thinned draws are the
    # unthinned run's at those iterations (the chains' random streams do not depend on it)
    kw = dict(num_warmup=50, num_samples=11, num_chains=2, progress_bar=False, kernel="hmc", num_steps=3)
    kw["trajectory_length"] = None
    thinned = rb.sample(_model(), _log_joint, Y, key=jax.random.key(5), thinning=3, **kw)
    every = rb.sample(_model(), _log_joint, Y, key=jax.random.key(5), **kw)
    numpyro = rb.sample(_model(), _log_joint, Y, key=jax.random.key(5), thinning=3, chain_method="vectorized", **kw)
    assert thinned.mcmc is None and thinned.draws["mu"].shape == numpyro.draws["mu"].shape == (2, 3)
    assert (np.asarray(thinned._last_state.i) == 61).all()
    np.testing.assert_array_equal(np.asarray(thinned.draws["mu"]), np.asarray(every.draws["mu"])[:, 4::3])


_INTERRUPTED = textwrap.dedent(
    """
    import signal, sys, jax, jax.numpy as jnp, numpyro.distributions as dist
    import reparam_bridge as rb

    model = {"mu": rb.Real(0.0), "x": rb.Real(jnp.zeros(20))}
    def log_joint(m):
        return dist.Normal(0, 1).log_prob(m["mu"]) + dist.Normal(m["mu"], 1).log_prob(m["x"]).sum()
    try:  # ~40 minutes uninterrupted on this project's CPU VM
        rb.sample(model, log_joint, key=jax.random.key(0), num_warmup=10_000_000, num_samples=100,
                  num_chains=2, chain_method="sequential")
    except KeyboardInterrupt as e:
        jax.effects_barrier()  # the runtime is sound: no callback error left behind
        # the caller's SIGINT handler and wakeup fd are back
        print("STOPPED", e, signal.getsignal(signal.SIGINT) is signal.default_int_handler,
              signal.set_wakeup_fd(-1), flush=True)
    """
)


def test_ctrl_c_stops_the_bridges_loop(tmp_path):
    # The main thread waits inside XLA, where Python delivers no KeyboardInterrupt until the run
    # ends (here ~40 minutes); the bar's next tick (a hundredth of a chain) must stop it. Before
    # the first tick nothing is sent: SIGINT then would interrupt Python itself, not the loop.
    import re
    import signal

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    proc = subprocess.Popen(
        [sys.executable, "-c", _INTERRUPTED], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        seen = ""
        while not re.search(r"[1-9][0-9]*/20000200", seen):  # the bar has moved: the loop runs
            ch = proc.stderr.read(1)  # (the bar's first tick comes ~20 s after start here)
            assert ch, seen[-2000:]
            seen += ch
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "STOPPED rb.sample: interrupted (Ctrl-C)" in out and out.strip().endswith("True -1"), out
    assert "callback failed" not in err and "Exception ignored" not in err, err[-3000:]
