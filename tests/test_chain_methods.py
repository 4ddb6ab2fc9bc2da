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


def test_sequential_chains_in_process(capsys):
    # the bridge's loop: the chains one after another in one compiled program, compiled once
    # (NumPyro's sequential method compiles its loop again for every chain)
    from reparam_bridge import _sharded

    kwargs = dict(num_warmup=300, num_samples=500, num_chains=3, chain_method="sequential")
    before = len(_sharded._RUNS)
    post = rb.sample(_model(), _log_joint, Y, key=jax.random.key(1), progress_bar=True, **kwargs)
    assert len(_sharded._RUNS) == before + 1 and post.mcmc is None
    # the bar counts every chain's iterations, not the first chain's
    assert "2400/2400" in capsys.readouterr().err
    mu, sigma = np.asarray(post.draws["mu"]), np.asarray(post.draws["sigma"])
    assert mu.shape == (3, 500) and sigma.shape == (3, 500)
    assert np.all(np.isfinite(mu)) and np.all(sigma > 0)
    assert post.sample_stats["n_steps"].shape == (3, 500)
    assert not np.array_equal(mu[0], mu[1])
    idata = post.to_inference_data()
    assert idata.posterior["mu"].shape == (3, 500)
    # the posterior: mu's mean and sd against a long NumPyro run, within Monte Carlo error
    ref = rb.sample(
        _model(),
        _log_joint,
        Y,
        key=jax.random.key(9),
        num_warmup=500,
        num_samples=4000,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    import arviz as az

    ess = float(az.ess(idata, var_names=["mu"])["mu"])
    r = np.asarray(ref.draws["mu"]).ravel()
    assert abs(mu.mean() - r.mean()) < 4 * r.std() / np.sqrt(ess), (mu.mean(), r.mean(), ess)
    assert float(az.rhat(idata, var_names=["mu"])["mu"]) < 1.02
    # a second call of the same shapes compiles nothing; resume is refused by name
    again = rb.sample(_model(), _log_joint, Y, key=jax.random.key(2), progress_bar=True, **kwargs)
    assert len(_sharded._RUNS) == before + 1 and not np.array_equal(np.asarray(again.draws["mu"]), mu)
    with pytest.raises(ValueError, match="chain_method='vectorized'"):
        post.resume(10)
