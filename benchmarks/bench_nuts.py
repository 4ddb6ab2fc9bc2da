"""NUTS through the bridge (``rb.sample``) vs the same model hand-written in NumPyro.

Side by side in one process: same data, same settings (NUTS, 4 vectorized chains, same
warmup/samples/target_accept_prob/max_tree_depth), the *same* initial unconstrained values
and the same PRNG key for both, alternating order, several repeats, medians.

Figures (each bridge/native):

* compile: first run minus a second, already-compiled run of the same MCMC with the same
  key (everything that only the first call pays: tracing, XLA compilation, init checks);
* grad: one jitted ``value_and_grad`` of the potential, vmapped over the 4 chains;
* step: wall time / leapfrog steps (warmup + sampling), compile included and excluded;
* ESS/s: min bulk ESS over every scalar parameter / wall time of the first run (compile included);
* extraction: ``Posterior.draws`` + ``to_inference_data()`` (bridge) vs ``az.from_numpyro`` (native),
  and its share of the bridge's sampling time.

    python benchmarks/bench_nuts.py --quick          # < 2 min
    python benchmarks/bench_nuts.py --repeats 3      # the README figures
"""

import json
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import initialize_model

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402

import reparam_bridge as rb  # noqa: E402

# what rb.sample collects (its sample_stats), asked of the native MCMC too
_EXTRA_FIELDS = ("diverging", "num_steps", "energy", "potential_energy", "accept_prob", "adapt_state.step_size")

ROOT = pathlib.Path(__file__).resolve().parent
POSTERIORDB = ROOT.parent.parent / "shared" / "posteriordb"


@dataclass
class Case:
    """One benchmark posterior, written twice."""

    name: str
    model: Any  # the wrapped tree
    log_joint: Callable
    args: tuple
    native: Callable  # numpyro model
    native_args: tuple
    sites: list[str]  # native latent sites, in the order of jax.tree_util.tree_leaves(rb.partition(model)[0])
    max_tree_depth: int = 10
    init_radius: float = 2.0


# ---------------------------------------------------------------------------------------------
# (a) eight schools, non-centred


class EightSchools(eqx.Module):
    mu: rb.Real
    tau: rb.Positive
    theta_tilde: rb.Real


def eight_schools() -> Case:
    path = POSTERIORDB / "eight_schools-eight_schools_noncentered.json"
    data = json.loads(path.read_text())["data"]
    y, sigma = jnp.asarray(data["y"], jnp.float32), jnp.asarray(data["sigma"], jnp.float32)

    def log_joint(m, y, sigma):
        theta = m.mu + m.tau * m.theta_tilde
        return (dist.Normal(0.0, 5.0).log_prob(m.mu) + dist.HalfCauchy(5.0).log_prob(m.tau)
                + dist.Normal(0.0, 1.0).log_prob(m.theta_tilde).sum()
                + dist.Normal(theta, sigma).log_prob(y).sum())

    def native(y, sigma):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        with numpyro.plate("J", y.shape[0]):
            theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)

    model = EightSchools(rb.Real(0.0), rb.Positive(1.0), rb.Real(jnp.zeros(8)))
    return Case("eight schools (NC)", model, log_joint, (y, sigma), native, (y, sigma), ["mu", "tau", "theta_tilde"])


# ---------------------------------------------------------------------------------------------
# (b) hierarchical logistic regression: 1,000 observations, 50 groups, 3 covariates


def hier_logistic(n: int = 1000, groups: int = 50, k: int = 3) -> Case:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, k)).astype(np.float32)
    g = rng.integers(0, groups, size=n)
    alpha = 0.3 + 0.8 * rng.normal(size=groups)
    beta = np.array([1.0, -0.5, 0.25])[:k]
    y = (rng.random(n) < 1 / (1 + np.exp(-(alpha[g] + X @ beta)))).astype(np.float32)
    X, g, y = jnp.asarray(X), jnp.asarray(g), jnp.asarray(y)

    # the bridge: priors attached to the parameters, the likelihood in log_joint
    model = {
        "mu": rb.Real(0.0, prior=dist.Normal(0.0, 2.0)),
        "sigma": rb.Positive(1.0, prior=dist.HalfNormal(1.0)),
        "z": rb.Real(jnp.zeros(groups), prior=dist.Normal(0.0, 1.0)),
        "beta": rb.Real(jnp.zeros(k), prior=dist.Normal(0.0, 1.0)),
    }

    def log_joint(m, X, g, y):
        logits = m["mu"] + m["sigma"] * m["z"][g] + X @ m["beta"]
        return dist.Bernoulli(logits=logits).log_prob(y).sum()

    def native(X, g, y):
        mu = numpyro.sample("mu", dist.Normal(0.0, 2.0))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
        beta = numpyro.sample("beta", dist.Normal(0.0, 1.0).expand([k]).to_event(1))
        with numpyro.plate("groups", groups):
            z = numpyro.sample("z", dist.Normal(0.0, 1.0))
        with numpyro.plate("obs", X.shape[0]):
            numpyro.sample("y", dist.Bernoulli(logits=mu + sigma * z[g] + X @ beta), obs=y)

    # dict leaves flatten in sorted key order: beta, mu, sigma, z
    return Case("hier. logistic (1000 obs, 50 groups)", model, log_joint, (X, g, y), native, (X, g, y),
                ["beta", "mu", "sigma", "z"])


# ---------------------------------------------------------------------------------------------
# (c) Gaussian-process regression (Positive hyperparameters) and a multi-output GP with an
#     LKJ prior on the output correlation (CorrCholesky)


def _rbf(x, lengthscale, amplitude):
    d2 = (x[:, None] - x[None, :]) ** 2
    return amplitude**2 * jnp.exp(-0.5 * d2 / lengthscale**2)


class GP(eqx.Module):
    lengthscale: rb.Positive
    amplitude: rb.Positive
    noise: rb.Positive


def gp(n: int = 60) -> Case:
    rng = np.random.default_rng(2)
    x = np.sort(rng.uniform(0, 10, n)).astype(np.float32)
    y = (np.sin(x) + 0.3 * rng.normal(size=n)).astype(np.float32)
    x, y = jnp.asarray(x), jnp.asarray(y)
    jitter = 1e-4 * jnp.eye(n)

    def marginal(ls, amp, noise, x, y):
        K = _rbf(x, ls, amp) + (noise**2) * jnp.eye(n) + jitter
        return dist.MultivariateNormal(jnp.zeros(n), scale_tril=jnp.linalg.cholesky(K))

    def log_joint(m, x, y):
        return (dist.InverseGamma(3.0, 6.0).log_prob(m.lengthscale) + dist.HalfNormal(2.0).log_prob(m.amplitude)
                + dist.HalfNormal(1.0).log_prob(m.noise) + marginal(m.lengthscale, m.amplitude, m.noise, x, y).log_prob(y))

    def native(x, y):
        ls = numpyro.sample("lengthscale", dist.InverseGamma(3.0, 6.0))
        amp = numpyro.sample("amplitude", dist.HalfNormal(2.0))
        noise = numpyro.sample("noise", dist.HalfNormal(1.0))
        numpyro.sample("y", marginal(ls, amp, noise, x, y), obs=y)

    model = GP(rb.Positive(1.0), rb.Positive(1.0), rb.Positive(0.5))
    return Case(f"GP regression (n={n})", model, log_joint, (x, y), native, (x, y),
                ["lengthscale", "amplitude", "noise"])


class MultiGP(eqx.Module):
    lengthscale: rb.Positive
    scales: rb.Positive
    corr: rb.CorrCholesky
    noise: rb.Positive


def multi_gp(n: int = 25, outputs: int = 3) -> Case:
    rng = np.random.default_rng(3)
    x = np.sort(rng.uniform(0, 10, n)).astype(np.float32)
    C = np.array([[1.0, 0.7, -0.3], [0.7, 1.0, -0.1], [-0.3, -0.1, 1.0]])[:outputs, :outputs]
    f = np.linalg.cholesky(np.kron(C, np.exp(-0.5 * (x[:, None] - x[None]) ** 2 / 1.5**2)) + 1e-6 * np.eye(n * outputs))
    y = (f @ rng.normal(size=n * outputs) + 0.2 * rng.normal(size=n * outputs)).astype(np.float32)
    x, y = jnp.asarray(x), jnp.asarray(y)
    eye = jnp.eye(n * outputs)

    def marginal(ls, scales, L, noise, x):
        B = (scales[:, None] * L) @ (scales[:, None] * L).T  # output covariance diag(s) C diag(s)
        K = jnp.kron(B, _rbf(x, ls, 1.0)) + (noise**2 + 1e-4) * eye
        return dist.MultivariateNormal(jnp.zeros(n * outputs), scale_tril=jnp.linalg.cholesky(K))

    def log_joint(m, x, y):
        return (dist.InverseGamma(3.0, 6.0).log_prob(m.lengthscale) + dist.HalfNormal(2.0).log_prob(m.scales).sum()
                + dist.LKJCholesky(outputs, 2.0).log_prob(m.corr) + dist.HalfNormal(1.0).log_prob(m.noise)
                + marginal(m.lengthscale, m.scales, m.corr, m.noise, x).log_prob(y))

    def native(x, y):
        ls = numpyro.sample("lengthscale", dist.InverseGamma(3.0, 6.0))
        scales = numpyro.sample("scales", dist.HalfNormal(2.0).expand([outputs]).to_event(1))
        L = numpyro.sample("corr", dist.LKJCholesky(outputs, 2.0))
        noise = numpyro.sample("noise", dist.HalfNormal(1.0))
        numpyro.sample("y", marginal(ls, scales, L, noise, x), obs=y)

    model = MultiGP(rb.Positive(1.0), rb.Positive(jnp.ones(outputs)), rb.CorrCholesky(jnp.eye(outputs)), rb.Positive(0.5))
    return Case(f"multi-output GP + LKJ ({outputs}x{n})", model, log_joint, (x, y), native, (x, y),
                ["lengthscale", "scales", "corr", "noise"])


# ---------------------------------------------------------------------------------------------
# (d) a small Bayesian MLP (Equinox; plain arrays are free Real parameters)


def mlp(n: int = 100, width: int = 16, max_tree_depth: int = 8) -> Case:
    rng = np.random.default_rng(4)
    x = rng.uniform(-3, 3, (n, 1)).astype(np.float32)
    y = (np.sin(x[:, 0]) + 0.1 * rng.normal(size=n)).astype(np.float32)
    x, y = jnp.asarray(x), jnp.asarray(y)
    net = eqx.nn.MLP(1, "scalar", width, 2, activation=jnp.tanh, key=jax.random.key(0))
    shapes = [(width, 1), (width,), (width, width), (width,), (1, width), (1,)]  # eqx.nn.MLP's leaves

    def log_joint(m, x, y):
        prior = sum(dist.Normal(0.0, 1.0).log_prob(w).sum() for w in jax.tree_util.tree_leaves(eqx.filter(m["net"], eqx.is_array)))
        f = jax.vmap(m["net"])(x)
        return prior + dist.HalfNormal(0.5).log_prob(m["sigma"]) + dist.Normal(f, m["sigma"]).log_prob(y).sum()

    def native(x, y):
        w = [numpyro.sample(f"w{i}", dist.Normal(0.0, 1.0).expand(list(s)).to_event(len(s))) for i, s in enumerate(shapes)]
        sigma = numpyro.sample("sigma", dist.HalfNormal(0.5))
        h = jnp.tanh(x @ w[0].T + w[1])
        h = jnp.tanh(h @ w[2].T + w[3])
        f = (h @ w[4].T + w[5])[:, 0]
        numpyro.sample("y", dist.Normal(f, sigma), obs=y)

    model = {"net": net, "sigma": rb.Positive(0.3)}
    nparams = sum(int(np.prod(s)) for s in shapes) + 1
    return Case(f"Bayesian MLP ({nparams} params)", model, log_joint, (x, y), native, (x, y),
                [f"w{i}" for i in range(6)] + ["sigma"], max_tree_depth=max_tree_depth, init_radius=1.0)


# ---------------------------------------------------------------------------------------------


def initial_values(case: Case, key, num_chains: int):
    """The same unconstrained starting points for both: uniform(-r, r) like NumPyro's init_to_uniform."""
    params, static = rb.partition(case.model)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    r = case.init_radius
    starts = [jax.random.uniform(k, (num_chains, *x.shape), x.dtype, -r, r) for x, k in zip(leaves, keys)]
    native = dict(zip(case.sites, starts))
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, starts), static), native


def native_draws(mcmc: MCMC) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}


def run_bridge(case, key, init, settings):
    post, t_first = common.timed(lambda: rb.sample(
        case.model, case.log_joint, *case.args, key=key, init=init, progress_bar=False,
        chain_method="vectorized", **settings))
    idata, t_extract = common.timed(lambda: post.to_inference_data())
    draws = {k: np.asarray(v) for k, v in idata.posterior.data_vars.items()}
    # the same MCMC again, already compiled, same key and start: compile excluded
    params = rb.partition(init)[0]
    run_key = jax.random.split(key)[1]
    _, t_steady = common.timed(lambda: (post.mcmc.run(run_key, init_params=params, extra_fields=_EXTRA_FIELDS),
                                        post.mcmc.get_samples())[1])
    return dict(mcmc=post.mcmc, t_first=t_first, t_steady=t_steady, t_extract=t_extract, draws=draws,
                sample_steps=int(np.sum(post.sample_stats["n_steps"])), init=params, run_key=run_key,
                divergences=int(np.sum(post.sample_stats["diverging"])))


def run_native(case, key, init, settings):
    run_key = jax.random.split(key)[1]  # rb.sample splits its key the same way
    num = {k: settings[k] for k in ("num_warmup", "num_samples", "num_chains")}
    kw = {k: v for k, v in settings.items() if k not in num}

    def first():
        mcmc = MCMC(NUTS(case.native, **kw), chain_method="vectorized", progress_bar=False, **num)
        mcmc.run(run_key, *case.native_args, init_params=init, extra_fields=_EXTRA_FIELDS)
        extra = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
        return mcmc, native_draws(mcmc), extra

    (mcmc, draws, extra), t_first = common.timed(first)
    _, t_extract = common.timed(lambda: rb.arviz.from_numpyro(mcmc, log_likelihood=False))
    _, t_steady = common.timed(lambda: (mcmc.run(run_key, *case.native_args, init_params=init,
                                                 extra_fields=_EXTRA_FIELDS), mcmc.get_samples())[1])
    return dict(mcmc=mcmc, t_first=t_first, t_steady=t_steady, t_extract=t_extract, draws=draws,
                sample_steps=int(np.sum(extra["num_steps"])), init=init, run_key=run_key,
                divergences=int(np.sum(extra["diverging"])), args=case.native_args)


def warmup_steps(case, side, res, settings) -> int:
    """Leapfrog steps of the warmup phase, replayed (untimed) on a fresh MCMC with the same kernel,
    key and start: NumPyro collects extra fields of the sampling phase only."""
    num = {k: settings[k] for k in ("num_warmup", "num_samples", "num_chains")}
    kw = {k: v for k, v in settings.items() if k not in num}
    if side == "bridge":
        logdensity = common.logdensity_fn(case.log_joint, rb.partition(case.model)[1], case.args)
        kernel, args = NUTS(potential_fn=lambda p: -logdensity(p), **kw), ()
    else:
        kernel, args = NUTS(case.native, **kw), case.native_args
    mcmc = MCMC(kernel, chain_method="vectorized", progress_bar=False, **num)
    mcmc.warmup(res["run_key"], *args, init_params=res["init"], extra_fields=("num_steps",), collect_warmup=True)
    return int(np.sum(np.asarray(mcmc.get_extra_fields()["num_steps"])))


def grad_times(case, init_native, init_bridge):
    """Seconds per ``value_and_grad`` of each potential, vmapped over the chains, measured
    inside one compiled loop (as NUTS calls it: no Python dispatch per call)."""
    params, static = rb.partition(case.model)
    logdensity = common.logdensity_fn(case.log_joint, static, case.args)
    info = initialize_model(jax.random.key(0), case.native, model_args=case.native_args)
    pb, pn = rb.partition(init_bridge)[0], init_native
    vb = jax.vmap(jax.value_and_grad(lambda p: -logdensity(p)))
    vn = jax.vmap(jax.value_and_grad(info.potential_fn))
    np.testing.assert_allclose(vb(pb)[0], vn(pn)[0], rtol=2e-3, atol=1e-3 * float(jnp.max(jnp.abs(vn(pn)[0]))),
                               err_msg=f"{case.name}: the two potentials differ")
    return common.grad_time_in_loop(vb, pb), common.grad_time_in_loop(vn, pn)


def bench(case: Case, settings: dict, repeats: int, seed: int) -> tuple[str, dict]:
    settings = {**settings, "max_tree_depth": case.max_tree_depth}
    figs = {k: ([], []) for k in ("compile", "grad", "step_incl", "step_excl", "ess_s", "extract", "share")}
    notes = []
    for r in range(repeats):
        key = jax.random.key(seed + r)
        init_bridge, init_native = initial_values(case, jax.random.fold_in(key, 7), settings["num_chains"])
        order = ("bridge", "native") if r % 2 == 0 else ("native", "bridge")
        res = {}
        for side in order:
            fn = run_bridge if side == "bridge" else run_native
            res[side] = fn(case, key, init_bridge if side == "bridge" else init_native, settings)
        gb, gn = grad_times(case, init_native, init_bridge)
        for i, side in enumerate(("bridge", "native")):
            x = res[side]
            steps = x["sample_steps"] + warmup_steps(case, side, x, settings)
            ess = common.min_bulk_ess(x["draws"])
            figs["compile"][i].append(x["t_first"] - x["t_steady"])
            figs["grad"][i].append((gb, gn)[i] * 1e6)
            figs["step_incl"][i].append(x["t_first"] / steps * 1e6)
            figs["step_excl"][i].append(x["t_steady"] / steps * 1e6)
            figs["ess_s"][i].append(ess / x["t_first"])
            figs["extract"][i].append(x["t_extract"])
            figs["share"][i].append(x["t_extract"] / x["t_first"] * 100)
            notes.append(f"  repeat {r} {side:6s}: first {x['t_first']:.2f}s, steady {x['t_steady']:.2f}s, "
                         f"leapfrog steps {steps}, min bulk ESS {ess:.0f}, divergences {x['divergences']}, "
                         f"extraction {x['t_extract'] * 1e3:.0f} ms")
        print("\n".join(notes[-2:]), flush=True)
    rows = [
        common.ratio_row("compile time (s)", *figs["compile"]),
        common.ratio_row("grad (4 chains vmapped, in-loop, µs)", *figs["grad"]),
        common.ratio_row("µs / leapfrog step, compile incl.", *figs["step_incl"], target="<= 1.0"),
        common.ratio_row("µs / leapfrog step, compile excl.", *figs["step_excl"], target="<= 1.0"),
        common.ratio_row("min bulk ESS / s (compile incl.)", *figs["ess_s"], target=">= 1.0"),
        common.ratio_row("extraction (s)", *figs["extract"]),
        common.ratio_row("extraction / sampling time (%)", *figs["share"], target="bridge <= 10%"),
    ]
    return common.print_table(case.name, rows), figs


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated subset: eight,logistic,gp,multigp,mlp")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.quick:
        # short chains, small versions; by default two posteriors: a smoke run of the whole protocol
        settings = common.nuts_settings(quick=True)
        cases = {"eight": eight_schools, "logistic": hier_logistic, "gp": lambda: gp(30),
                 "multigp": lambda: multi_gp(10), "mlp": lambda: mlp(50, 8, max_tree_depth=6)}
        args.only = args.only or "eight,logistic"
    else:
        settings = common.nuts_settings(quick=False)
        cases = {"eight": eight_schools, "logistic": hier_logistic, "gp": gp, "multigp": multi_gp, "mlp": mlp}
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only.split(",")}
    print(f"# bench_nuts: {common.machine()}\n# settings {settings}, repeats {repeats}, seed {args.seed}", flush=True)
    common.warm_up_arviz()
    t0 = time.perf_counter()
    for make in cases.values():
        case = make()
        print(f"\n## {case.name}", flush=True)
        bench(case, settings, repeats, args.seed)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
