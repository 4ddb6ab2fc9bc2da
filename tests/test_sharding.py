"""Chains and data across devices and processes (``chain_method="sharded"``, sharded ``*args``).

The device count is fixed when JAX starts, so the multi-device checks run in subprocesses
with ``--xla_force_host_platform_device_count``; they dump the optimised HLO of every program
they compile (``--xla_dump_to``) to show what each device holds. The multi-process test starts
two real processes that meet through ``jax.distributed.initialize`` on localhost.

Reference posterior (exact): ``mu ~ Normal(0, 10)``, ``y_i ~ Normal(mu, 2)`` gives a normal
posterior for ``mu``; ``s ~ Gamma(3, 2)`` with no data keeps its prior (a check of the
``Positive`` Jacobian). Moments are compared within Monte Carlo standard errors.

Cost on 2 CPU cores: about 2 minutes of CPU time (four JAX start-ups, six NUTS compilations);
the subprocess timeouts (20 and 15 minutes) only bound a hung run on a heavily loaded machine.
"""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reparam_bridge as rb

COMMON = textwrap.dedent(
    """
    import jax, numpy as np, numpyro.distributions as dist
    from numpyro.diagnostics import effective_sample_size
    import reparam_bridge as rb

    SIGMA_Y, PRIOR_SD = 2.0, 10.0

    def model():
        return {"mu": rb.Real(0.0), "s": rb.Positive(1.0)}

    def log_joint(m, y):
        return (dist.Normal(0.0, PRIOR_SD).log_prob(m["mu"]) + dist.Gamma(3.0, 2.0).log_prob(m["s"])
                + dist.Normal(m["mu"], SIGMA_Y).log_prob(y).sum())

    def data(n):
        return np.random.default_rng(0).normal(1.0, SIGMA_Y, n).astype(np.float32)

    def reference(y):
        precision = 1 / PRIOR_SD**2 + len(y) / SIGMA_Y**2
        return {"mu": (float(np.sum(y, dtype=np.float64)) / SIGMA_Y**2 / precision, precision**-0.5),
                "s": (1.5, 0.75**0.5)}

    def check_moments(draws, ref, what, z=4.5):
        # mean and sd of each variable against the exact ones, within z Monte Carlo s.e.
        for name, (mean, sd) in ref.items():
            x = np.asarray(draws[name], np.float64)
            ess = float(effective_sample_size(x))
            m, s = x.mean(), x.std()
            mcse_mean = s / np.sqrt(ess)
            mcse_sd = np.sqrt(np.var((x - m) ** 2) / ess) / (2 * s)
            assert abs(m - mean) < z * mcse_mean, (what, name, "mean", m, mean, mcse_mean, ess)
            assert abs(s - sd) < z * mcse_sd, (what, name, "sd", s, sd, mcse_sd, ess)
    """
)

FOUR_DEVICES = COMMON + textwrap.dedent(
    r"""
    import glob, os, re, sys
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    dump = sys.argv[1]
    assert jax.device_count() == 4, jax.devices()

    def programs(name):
        out = {}
        for path in glob.glob(os.path.join(dump, f"*.jit_{name}.*after_optimizations.txt")):
            out[os.path.basename(path)] = open(path).read()
        return out

    def newest_run():
        texts = programs("run")
        return texts[max(texts)]

    # 1. many chains: 8 chains, 2 per device, small replicated data
    y = data(20)
    try:
        rb.sample(model(), log_joint, y, key=jax.random.key(0), num_chains=6, chain_method="sharded")
    except ValueError as e:
        assert "num_chains=6" in str(e) and "multiple" in str(e), e
    else:
        raise AssertionError("num_chains=6 over 4 devices was accepted")
    post = rb.sample(model(), log_joint, y, key=jax.random.key(1), num_warmup=400, num_samples=400,
                     num_chains=8, chain_method="sharded", progress_bar=False)
    assert post.mcmc is None and post.draws["mu"].shape == (8, 400), post.draws["mu"].shape
    assert post.sample_stats["diverging"].shape == (8, 400) and post.sample_stats["n_steps"].min() >= 1
    assert post.sample_stats["reached_max_treedepth"].shape == (8, 400)
    assert len(set(np.round(post.sample_stats["step_size"][:, -1], 6))) == 8, "one step size per chain"
    assert post.to_inference_data().posterior["s"].shape == (8, 400)
    check_moments(post.draws, reference(y), "chains")
    hlo = newest_run()
    # every device runs its own chains' NUTS loops: the program is split 4 ways and no
    # device ever waits on another (no collective at all)
    assert "num_partitions=4" in hlo, hlo[:300]
    for op in ("all-reduce(", "all-gather(", "collective-permute(", "all-to-all("):
        assert op not in hlo, op
    # resume: the same chains, from their last states on their devices, no new warmup
    more = post.resume(100)
    assert more.draws["mu"].shape == (8, 500) and more.mcmc is None
    np.testing.assert_array_equal(np.asarray(more.draws["mu"])[:, :400], np.asarray(post.draws["mu"]))
    np.testing.assert_array_equal(more.sample_stats["step_size"][:, 400:], post.sample_stats["step_size"][:, -1:].repeat(100, 1))

    # 2. big data: 4008 observations split over 4 devices; chains replicated
    N = 4008
    y = data(N)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    ys = jax.device_put(y, NamedSharding(mesh, P("data")))
    fit = rb.map_estimate(model(), log_joint, ys, steps=300, progress_bar=False)
    lap = rb.laplace(model(), log_joint, ys, steps=300, progress_bar=False)
    post = rb.sample(model(), log_joint, ys, key=jax.random.key(2), num_warmup=300, num_samples=300,
                     num_chains=4, progress_bar=False)  # sharded data: the sharded driver by default
    ref = reference(y)
    assert abs(float(rb.unwrap(fit.model)["mu"]) - ref["mu"][0]) < 0.05 * ref["mu"][1]
    assert abs(float(rb.unwrap(lap.mean)["mu"]) - ref["mu"][0]) < 0.05 * ref["mu"][1]
    assert abs(float(lap.covariance[0, 0]) ** 0.5 / ref["mu"][1] - 1) < 0.01
    check_moments(post.draws, ref, "data")
    hlo = newest_run()
    assert "all-reduce(" in hlo, "the log-likelihood sum is not a cross-device reduction"
    # no compiled program of map_estimate, laplace or sample holds the whole data set: every
    # shape is per device (1002 observations), never 4008 (a gather, or a constant copy)
    whole = [name for name, text in programs("*").items() if re.search(rf"[\[,]{N}[\],]", text)]
    assert not whole, whole
    assert ys.sharding.spec == P("data")

    # 3. both: a 2 x 2 mesh, chains along "chains", data along "data"
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("chains", "data"))
    ys = jax.device_put(y, NamedSharding(mesh, P("data")))
    post = rb.sample(model(), log_joint, ys, key=jax.random.key(3), num_warmup=300, num_samples=300,
                     num_chains=4, chain_method="sharded", progress_bar=False)
    check_moments(post.draws, ref, "chains x data")
    hlo = newest_run()
    assert "num_partitions=4" in hlo and "all-reduce(" in hlo
    whole = [name for name, text in programs("*").items() if re.search(rf"[\[,]{N}[\],]", text)]
    assert not whole, whole

    # 4. an explicit-axis mesh (jax.make_mesh's default in new JAX), under which plain
    # jax.grad of this log_joint raises: the library moves the data to Auto axes, no copy
    if hasattr(jax.sharding, "AxisType"):
        mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
        ys = jax.device_put(y, NamedSharding(mesh, P("data")))
        fit = rb.map_estimate(model(), log_joint, ys, steps=300, progress_bar=False)
        assert abs(float(rb.unwrap(fit.model)["mu"]) - ref["mu"][0]) < 0.05 * ref["mu"][1]
        post = rb.sample(fit.model, log_joint, ys, key=jax.random.key(5), num_warmup=300, num_samples=300,
                         num_chains=4, progress_bar=False)
        check_moments(post.draws, ref, "explicit axes")
        assert "all-reduce(" in newest_run()
        whole = [name for name, text in programs("*").items() if re.search(rf"[\[,]{N}[\],]", text)]
        assert not whole, whole
        # the other entry points take the same data and give the right answer; not checked
        # for gathering: rb.variational's compiled loop closes over the data (a known gap)
        ens = rb.map_estimate_ensemble(model(), log_joint, ys, key=jax.random.key(6), num_starts=3)
        assert np.allclose(np.asarray(rb.unwrap(ens.models)["mu"]), ref["mu"][0], atol=0.05 * ref["mu"][1])
        q = rb.variational(model(), log_joint, ys, key=jax.random.key(7), steps=1000, progress_bar=False)
        assert abs(float(rb.unwrap(q.mean)["mu"]) - ref["mu"][0]) < 0.2 * ref["mu"][1]
        fn, pos = rb.blackjax.logdensity(fit.model, log_joint, ys)
        assert abs(float(jax.grad(fn)(pos)["mu"].unconstrained)) < 1.0  # near the mode

    # 4b. a fit run under a mesh context leaves nothing behind that breaks a fit outside it
    if hasattr(jax, "set_mesh"):
        import jax.numpy as jnp
        def sq(m, x):
            return -jnp.mean((m["w"] * x - 1.0) ** 2)
        xs = jnp.linspace(0.0, 1.0, 8)
        with jax.set_mesh(jax.make_mesh((4,), ("d",))):
            try:
                rb.map_estimate({"w": rb.Real(0.0)}, sq, xs, steps=7, progress_bar=False)
            except Exception:
                pass  # whether JAX accepts it under the context is not the point here
        out = rb.map_estimate({"w": rb.Real(0.0)}, sq, xs, steps=7, progress_bar=False)
        assert np.isfinite(np.asarray(out.losses)).all()

    # 5. last (its program does hold the whole data set): NumPyro's own chain methods on split
    # data gather it into constants, and say so
    import warnings
    ys = jax.device_put(y, NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rb.sample(model(), log_joint, ys, key=jax.random.key(2), num_warmup=20, num_samples=20,
                  num_chains=1, chain_method="vectorized", progress_bar=False)
    said = [str(w.message) for w in caught if "split over devices" in str(w.message)]
    assert said and "chain_method='vectorized'" in said[0], [str(w.message) for w in caught]
    print("OK four devices")
    """
)


def _env(devices: int) -> dict:
    env = dict(os.environ)
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    env["JAX_PLATFORMS"] = "cpu"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.slow
def test_chains_and_data_over_four_devices(tmp_path):
    env = _env(4)
    env["XLA_FLAGS"] += f" --xla_dump_to={tmp_path} --xla_dump_hlo_as_text"
    out = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES, str(tmp_path)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    assert "OK four devices" in out.stdout


TWO_PROCESSES = COMMON + textwrap.dedent(
    """
    import sys
    port, process_id, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # CPU collectives across processes go through gloo (the default in recent JAX; explicit
    # for older ones)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
    post = rb.sample(model(), log_joint, data(20), key=jax.random.key(4), num_warmup=400,
                     num_samples=400, num_chains=8, chain_method="sharded", progress_bar=False)
    if jax.process_index() == 0:
        np.savez(out, mu=np.asarray(post.draws["mu"]), s=np.asarray(post.draws["s"]),
                 diverging=post.sample_stats["diverging"], n_steps=post.sample_stats["n_steps"])
    jax.distributed.shutdown()
    print("OK process", process_id)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_sample_one_posterior(tmp_path):
    env, out = _env(2), tmp_path / "draws.npz"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, str(port), str(i), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=900))
    finally:
        for p in procs:  # never leave a process waiting for its peer
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (stdout, stderr) in zip(procs, logs):
        assert p.returncode == 0, stderr[-4000:]
    assert "OK process 0" in logs[0][0] and "OK process 1" in logs[1][0]
    got = np.load(out)
    assert got["mu"].shape == (8, 400) and got["diverging"].shape == (8, 400)
    # a single-process run (this process: one device) of the same posterior, and the exact one
    ns = {}
    exec(COMMON, ns)  # noqa: S102 - the very code the two processes ran
    single = rb.sample(
        ns["model"](),
        ns["log_joint"],
        ns["data"](20),
        key=jax.random.key(5),
        num_warmup=400,
        num_samples=400,
        num_chains=8,
        chain_method="sharded",
        progress_bar=False,
    )
    ns["check_moments"]({"mu": got["mu"], "s": got["s"]}, ns["reference"](ns["data"](20)), "two processes")
    ns["check_moments"](single.draws, ns["reference"](ns["data"](20)), "one process")
    for name in ("mu", "s"):
        a, b = np.asarray(got[name], np.float64), np.asarray(single.draws[name], np.float64)
        se = np.hypot(
            a.std() / np.sqrt(float(ns["effective_sample_size"](a))),
            b.std() / np.sqrt(float(ns["effective_sample_size"](b))),
        )
        assert abs(a.mean() - b.mean()) < 4.5 * se, (name, a.mean(), b.mean(), se)


def test_sharded_on_one_device_is_an_ordinary_posterior():
    # the same user code on one CPU: chains vectorized on the one device
    post = rb.sample(
        {"m": rb.Real(0.0)},
        lambda m: -0.5 * m["m"] ** 2,
        key=jax.random.key(6),
        num_warmup=100,
        num_samples=50,
        num_chains=3,
        chain_method="sharded",
        kernel="hmc",
        num_steps=5,
        trajectory_length=None,
        progress_bar=False,
    )
    assert post.draws["m"].shape == (3, 50) and post.sample_stats["n_steps"].shape == (3, 50)
    assert "Posterior(num_chains=3, num_draws=50" in repr(post)
    with pytest.raises(ValueError, match="thinning"):
        rb.sample(
            {"m": rb.Real(0.0)},
            lambda m: -0.5 * m["m"] ** 2,
            key=jax.random.key(6),
            num_chains=2,
            chain_method="sharded",
            thinning=0,
        )


def test_sharded_sampler_compiles_once_per_shape(caplog):
    # A second call with new data of the same shapes reuses the compiled sampler (NUTS takes
    # seconds to compile) and samples the new posterior: mu | y ~ Normal(mean(y) n/(n+1), 1/(n+1)).
    import logging

    def log_joint(m, y):
        return -0.5 * m["mu"] ** 2 - 0.5 * jnp.sum((y - m["mu"]) ** 2)

    def run(y, seed, step_size):
        return rb.sample(
            {"mu": rb.Real(0.0)},
            log_joint,
            y,
            key=jax.random.key(seed),
            num_warmup=200,
            num_samples=500,
            num_chains=2,
            chain_method="sharded",
            progress_bar=False,
            step_size=step_size,  # as a warm start seeds it: a new value every call
            max_tree_depth=np.int64(6),  # a NumPy scalar option stays a Python-side value
        )

    y = np.linspace(-1.0, 1.0, 15).astype(np.float32)
    run(y, 0, 0.5)
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles():
        post = run(y + 3.0, 1, 0.25)  # new values, same shapes
    compiled = [r.getMessage() for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
    assert not [m for m in compiled if "jit(run)" in m], compiled
    n = len(y)
    mean, sd = float(np.sum(y + 3.0)) / (n + 1), (n + 1) ** -0.5
    draws = np.asarray(post.draws["mu"], np.float64).ravel()
    assert abs(draws.mean() - mean) < 5 * sd / np.sqrt(len(draws) / 4), (draws.mean(), mean)


def test_sharded_sampler_shows_a_progress_bar(capfd, monkeypatch):
    from reparam_bridge import _progress

    ticks = []
    tick = _progress.LoopProgress.tick
    monkeypatch.setattr(
        _progress.LoopProgress, "tick", staticmethod(lambda step: (ticks.append(int(step)), tick(step)))
    )
    rb.sample(
        {"m": rb.Real(0.0)},
        lambda m: -0.5 * m["m"] ** 2,
        key=jax.random.key(0),
        num_warmup=60,
        num_samples=40,
        num_chains=2,
        chain_method="sharded",
        progress_bar=True,
    )
    err = capfd.readouterr().err
    assert "rb.sample (sharded)" in err and "100/100" in err, err[-500:]
    assert ticks and min(ticks) < 100, ticks  # advanced from inside the compiled loop, not only at the end
