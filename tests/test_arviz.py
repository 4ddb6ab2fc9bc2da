"""The ArviZ adapter: the same numbers on ArviZ 0.2x (Python 3.11) and ArviZ 1.x (3.12, 3.13).

``tests/data/arviz_golden.json`` was written once by ``python tests/test_arviz.py --write``
and is compared against by every Python/ArviZ combination that runs this file. It holds:

- ``laplace``: seeded ``rb.laplace(...).sample`` draws, their adapter summary and the k-hat.
  The draws are a few float32 operations on ``jax.random.normal`` (no chaotic dynamics), so
  every JAX version reproduces them to a few float32 ulps: compared with ``rtol=1e-5``
  (float32 epsilon is 1.2e-7; ~100 ulps of slack for XLA's reordering of sums and
  transcendental approximations), and anything else (a different key, a different draw
  order, a changed transform) fails by orders of magnitude.
- ``summary_of_golden_draws``: the summary of exactly those stored draws, computed on
  ArviZ 0.23. Recomputing it from the same float64 input on any ArviZ line must agree to
  ``rtol=1e-9``: this isolates ArviZ's version from JAX's.
- ``nuts``: seeded ``rb.sample`` draws and summary per JAX version. NUTS in float32 is
  chaotic (a one-ulp difference flips a U-turn decision), and Python 3.11 resolves an older
  JAX than 3.12+, so NUTS draws are compared bit for bit only under the JAX version that
  wrote them (Python 3.12 and 3.13 share one); within a run, the same seed gives the same
  draws always.
"""

import json
import os
import stat
import sys

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro.infer import NUTS

import reparam_bridge as rb
from reparam_bridge import arviz as rbaz

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "arviz_golden.json")
Y = jnp.array([0.9, 1.4, 0.2, 1.1, 0.7, 1.6, 0.4, 1.0])


def model():
    return {"mu": rb.Real(0.0), "sigma": rb.Positive(1.0), "theta": rb.Real(jnp.zeros(2))}


def log_joint(m, y):
    return (
        dist.Normal(0.0, 2.0).log_prob(m["mu"])
        + dist.HalfNormal(1.0).log_prob(m["sigma"])
        + dist.Normal(m["mu"], 1.0).log_prob(m["theta"]).sum()
        + dist.Normal(m["mu"] + m["theta"].sum(), m["sigma"]).log_prob(y).sum()
    )


def laplace_run():
    approx = rb.laplace(model(), log_joint, Y, progress_bar=False, key=jax.random.key(3))
    idata = approx.to_inference_data(jax.random.key(4), num_draws=300, num_chains=2)
    return approx, idata


def nuts_run():
    return rb.sample(
        model(),
        log_joint,
        Y,
        key=jax.random.key(5),
        num_warmup=150,
        num_samples=150,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )


def posterior_arrays(idata) -> dict[str, np.ndarray]:
    return {str(k): np.asarray(v) for k, v in rbaz.group(idata, "posterior").data_vars.items()}


def table(df) -> dict[str, dict[str, float]]:
    return {row: {col: float(df.loc[row, col]) for col in df.columns} for row in df.index}


def assert_tables_close(got, want, rtol, atol=0.0):
    assert sorted(got) == sorted(want)
    for row in want:
        for col, value in want[row].items():
            np.testing.assert_allclose(got[row][col], value, rtol=rtol, atol=atol, err_msg=f"{row} {col}")


@pytest.fixture(scope="module")
def nuts_post():
    return nuts_run()


@pytest.fixture(scope="module")
def golden():
    with open(GOLDEN) as f:
        return json.load(f)


def test_summary_of_the_same_draws_is_the_same_on_every_arviz(golden):
    draws = {k: np.asarray(v, dtype=np.float32) for k, v in golden["laplace"]["draws"].items()}
    got = table(rbaz.summary(rbaz.to_inference_data(draws)))
    assert_tables_close(got, golden["summary_of_golden_draws"], rtol=1e-9, atol=1e-12)


def test_same_seed_same_laplace_draws_summary_and_khat(golden):
    approx, idata = laplace_run()
    want = golden["laplace"]
    draws = posterior_arrays(idata)
    for name, value in want["draws"].items():
        np.testing.assert_allclose(draws[name], np.asarray(value, np.float32), rtol=1e-5, atol=1e-6, err_msg=name)
    # ESS/R-hat are smooth in the draws except through ranks, which ulp-level changes do not reorder here
    assert_tables_close(table(rbaz.summary(idata)), want["summary"], rtol=1e-4, atol=1e-5)
    assert approx.khat == pytest.approx(want["khat"], abs=1e-3)
    assert rbaz.attrs(idata)["pareto_khat"] == pytest.approx(approx.khat)  # kept by ArviZ 1.x too


def test_same_seed_same_nuts_draws(golden, nuts_post):
    post, again = nuts_post, nuts_run()
    a, b = posterior_arrays(post.to_inference_data()), posterior_arrays(again.to_inference_data())
    for name in a:  # within one JAX: bit for bit, and the ArviZ posterior is the draws themselves
        np.testing.assert_array_equal(a[name], b[name])
    np.testing.assert_array_equal(a["sigma"], np.asarray(post.draws["sigma"]))
    want = golden["nuts"].get(jax.__version__)
    if want is None:
        pytest.skip(f"no golden NUTS draws for JAX {jax.__version__} (have {sorted(golden['nuts'])})")
    for name, value in want["draws"].items():
        np.testing.assert_array_equal(a[name], np.asarray(value, np.float32), err_msg=name)
    assert_tables_close(table(rbaz.summary(post.to_inference_data())), want["summary"], rtol=1e-9, atol=1e-12)


def test_psislw_same_numbers_as_arviz_0x(golden):
    log_ratios = np.random.default_rng(0).normal(size=1000) * 0.5
    lw, khat = rbaz.psislw(log_ratios)
    assert khat == pytest.approx(golden["psis"]["khat"], abs=1e-12)
    np.testing.assert_allclose(lw[:20], golden["psis"]["log_weights_head"], rtol=1e-12)
    assert np.exp(lw).sum() == pytest.approx(1.0)


def test_provenance_attrs_and_groups(nuts_post):
    post = nuts_post
    idata = post.to_inference_data()
    import numpyro

    attrs = rbaz.attrs(idata)
    assert attrs["inference_library"] == "numpyro"
    assert attrs["inference_library_version"] == numpyro.__version__
    assert attrs["creation_library"] == "reparam_bridge"
    assert attrs["arviz_version"] == rbaz.import_arviz().__version__
    assert set(rbaz.groups(idata)) == {"posterior", "unconstrained_posterior", "sample_stats"}
    unc = rbaz.group(idata, "unconstrained_posterior")
    assert set(unc.data_vars) == {"mu.unconstrained", "sigma.unconstrained", "theta.unconstrained"}
    np.testing.assert_allclose(np.exp(unc["sigma.unconstrained"].values), post.draws["sigma"], rtol=1e-6)
    stats = rbaz.group(idata, "sample_stats")
    np.testing.assert_array_equal(stats["reached_max_treedepth"].values, post.sample_stats["tree_depth"] >= 10)


def test_reached_max_treedepth_is_flagged():
    # a badly scaled Gaussian with a unit mass matrix and no adaptation needs long trajectories
    lj = lambda m: dist.Normal(0.0, jnp.array([1.0, 300.0])).log_prob(m["x"]).sum()  # noqa: E731
    post = rb.sample(
        {"x": rb.Real(jnp.zeros(2))},
        lj,
        key=jax.random.key(0),
        num_warmup=0,
        num_samples=30,
        num_chains=1,
        progress_bar=False,
        max_tree_depth=3,
        adapt_step_size=False,
        step_size=0.5,
    )
    s = post.sample_stats
    np.testing.assert_array_equal(s["reached_max_treedepth"], s["tree_depth"] >= 3)
    assert s["reached_max_treedepth"].any()


def test_every_chain_method_reports_the_same_sample_stats_for_hmc_and_nuts():
    # HMC builds no tree: no reached_max_treedepth, whichever loop ran it (NumPyro's HMC object
    # carries a _max_tree_depth all the same, which the vectorized path used to report)
    lj = lambda m: dist.Normal(0.0, 1.0).log_prob(m["a"]["chain"])  # noqa: E731 - a nested 'chain' is fine

    class SubNUTS(NUTS):  # a subclass is NUTS too (it has a tree), whatever its signature
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

    keys = {}
    for kernel in ("hmc", "nuts", SubNUTS):
        for method in ("sequential", "vectorized"):
            post = rb.sample(
                {"a": {"chain": rb.Real(0.0)}},
                lj,
                key=jax.random.key(0),
                num_warmup=10,
                num_samples=10,
                num_chains=1,
                progress_bar=False,
                kernel=kernel,
                chain_method=method,
            )
            keys[kernel, method] = set(post.sample_stats)
            assert list(rbaz.group(post.to_inference_data(), "posterior").data_vars) == ["a.chain"]
    assert (
        keys["hmc", "sequential"] == keys["hmc", "vectorized"]
        and "reached_max_treedepth" not in keys["hmc", "vectorized"]
    )
    assert (
        keys["nuts", "sequential"] == keys["nuts", "vectorized"]
        and "reached_max_treedepth" in keys["nuts", "vectorized"]
    )
    assert keys[SubNUTS, "vectorized"] == keys[SubNUTS, "sequential"] == keys["nuts", "vectorized"]


def test_coords_and_dims_as_in_from_numpyro(tmp_path):
    y = jnp.array([0.3, 1.2, -0.4, 0.8])
    m = {"mu": rb.Real(0.0), "theta": rb.Positive(jnp.ones(2))}
    lj = lambda m, y: (
        dist.Normal(0, 1).log_prob(m["mu"])
        + dist.Exponential(1.0).log_prob(m["theta"]).sum()  # noqa: E731
        + dist.Normal(m["mu"], m["theta"].sum()).log_prob(y).sum()
    )
    ll = lambda m, y: dist.Normal(m["mu"], m["theta"].sum()).log_prob(y)  # noqa: E731
    coords, dims = {"arm": ["left", "right"], "obs_id": list("abcd")}, {"theta": ["arm"], "obs": ["obs_id"]}
    post = rb.sample(
        m,
        lj,
        y,
        key=jax.random.key(0),
        num_warmup=50,
        num_samples=40,
        num_chains=2,
        progress_bar=False,
        log_likelihood=ll,
        coords=coords,
        dims=dims,
    )
    idata = post.to_inference_data()
    theta = rbaz.group(idata, "posterior")["theta"]
    assert theta.dims == ("chain", "draw", "arm") and list(theta["arm"].values) == ["left", "right"]
    assert rbaz.group(idata, "unconstrained_posterior")["theta.unconstrained"].dims == ("chain", "draw", "arm")
    assert rbaz.group(idata, "log_likelihood")["obs"].dims == ("chain", "draw", "obs_id")
    assert "theta[left]" in rbaz.summary(idata).index
    assert rbaz.loo(idata).n_data_points == 4
    # to_inference_data(coords=, dims=) overrides what rb.sample was given
    other = post.to_inference_data(dims={"theta": ["side"]}, coords={"side": [1, 2]})
    assert rbaz.group(other, "posterior")["theta"].dims == ("chain", "draw", "side")
    # they survive save/load
    post.save(tmp_path / "run")
    loaded = rb.Posterior.load(tmp_path / "run", m)
    assert rbaz.group(loaded.to_inference_data(), "posterior")["theta"].dims == ("chain", "draw", "arm")
    assert rbaz.group(loaded.to_inference_data(), "log_likelihood")["obs"].dims == ("chain", "draw", "obs_id")
    assert rbaz.attrs(rbaz.from_netcdf(tmp_path / "run" / "posterior.nc"))["inference_library"] == "numpyro"
    # bad input names the variable and what is wrong
    with pytest.raises(ValueError, match="no variable 'thetta'"):
        post.to_inference_data(dims={"thetta": ["arm"]})
    with pytest.raises(ValueError, match="coords\\['arm'\\] has 3 labels"):
        post.to_inference_data(coords={"arm": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="names 2 dimensions"):
        post.to_inference_data(dims={"mu": ["a", "b"]})


def test_save_never_deletes_files_it_did_not_write(tmp_path, nuts_post, monkeypatch):
    target = tmp_path / "results"
    target.mkdir()
    (target / "other_run.csv").write_text("important")
    with pytest.raises(FileExistsError, match="other_run.csv"):
        nuts_post.save(target)
    assert sorted(os.listdir(target)) == ["other_run.csv"]  # untouched, and nothing half-written beside it
    assert sorted(os.listdir(tmp_path)) == ["results"]
    # a new directory, then the same one again (an earlier save is replaced), with the user's umask
    fresh = tmp_path / "run"
    nuts_post.save(fresh)
    nuts_post.save(fresh)
    assert sorted(os.listdir(fresh)) == ["meta.json", "posterior.nc", "unconstrained.eqx"]
    umask = os.umask(0o022)  # (mkdtemp's 0700 would differ from 0755 whatever CI's umask is)
    try:
        nuts_post.save(fresh)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o755
    assert sorted(os.listdir(tmp_path)) == ["results", "run"]
    # never the working directory (or one above it): the process would be left in a deleted one
    monkeypatch.chdir(fresh)
    for here in (".", str(tmp_path)):
        with pytest.raises(ValueError, match="working directory"):
            nuts_post.save(here)
    assert sorted(os.listdir(fresh)) == ["meta.json", "posterior.nc", "unconstrained.eqx"] and os.getcwd() == str(fresh)
    (tmp_path / "results" / "lnk").symlink_to(tmp_path)  # the same directory through a link
    with pytest.raises(ValueError, match="working directory"):
        nuts_post.save(tmp_path / "results" / "lnk" / "run")
    assert os.getcwd() == str(fresh)


def test_every_plot_writes_a_png(tmp_path, nuts_post):
    post = nuts_post
    idata = post.to_inference_data()
    paths = [
        rb.geometry.plot_trace(post, tmp_path / "trace.png", title="trace"),
        rb.geometry.plot_trace(idata, tmp_path / "trace_idata.png", var_names=["mu", "theta[1]", "log(sigma)"]),
        rb.geometry.plot_pair(post, ["mu", "theta[0]", "log(sigma)"], tmp_path / "pair.png"),
        rb.geometry.plot_pair(idata, ["mu", "sigma"], tmp_path / "pair_idata.png"),
        rb.geometry.plot_pair(
            post, ["mu.unconstrained", "sigma.unconstrained"], tmp_path / "pair_unc.png", unconstrained=True
        ),
    ]
    table = rb.geometry.compare(
        {"a": (model(), log_joint)}, Y, key=jax.random.key(0), num_warmup=50, num_samples=50, num_chains=2
    )
    paths.append(rb.geometry.plot_condition_numbers(table, tmp_path / "cond.png"))
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", p
        assert os.path.getsize(p) > 10_000, p


def _write_golden() -> None:
    approx, idata = laplace_run()
    draws = posterior_arrays(idata)
    stored = {k: v.astype(np.float32) for k, v in draws.items()}
    old = {}
    if os.path.exists(GOLDEN):
        with open(GOLDEN) as f:
            old = json.load(f)
    post = nuts_run()
    nuts = dict(old.get("nuts", {}))
    nuts[jax.__version__] = {
        "draws": {k: v.tolist() for k, v in posterior_arrays(post.to_inference_data()).items()},
        "summary": table(rbaz.summary(post.to_inference_data())),
    }
    lw, khat = rbaz.psislw(np.random.default_rng(0).normal(size=1000) * 0.5)
    out = {
        "written_with": {
            "python": sys.version.split()[0],
            "jax": jax.__version__,
            "arviz": rbaz.import_arviz().__version__,
        },
        "laplace": {
            "draws": {k: v.tolist() for k, v in stored.items()},
            "summary": table(rbaz.summary(idata)),
            "khat": approx.khat,
        },
        "summary_of_golden_draws": table(rbaz.summary(rbaz.to_inference_data(stored))),
        "psis": {"khat": khat, "log_weights_head": lw[:20].tolist()},
        "nuts": nuts,
    }
    if old:  # only NUTS draws are added per JAX version; the rest stays as ArviZ 0.2x wrote it
        out = {**old, "nuts": nuts}
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", GOLDEN)


if __name__ == "__main__" and "--write" in sys.argv:
    _write_golden()
