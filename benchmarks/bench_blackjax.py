"""The bridge's log-density in BlackJAX NUTS (``rb.blackjax.logdensity``) vs BlackJAX on a
hand-written log-density over the unconstrained arrays (log-Jacobians written out).

Same posteriors, data and starts as ``bench_nuts.py``; the same sampler code for both sides:
per chain, ``blackjax.window_adaptation(blackjax.nuts)`` then a ``lax.scan`` of NUTS steps,
vmapped over 4 chains and jitted as one function. Figures as in ``bench_nuts.py``:
compile (first call minus second call of the same jitted function), grad (in-loop), time per
leapfrog step (warmup + sampling) with and without compile, min bulk ESS per second (bulk ESS
is rank-based, so the unconstrained draws give the same figure as the constrained ones), and
the bridge's extraction (``rb.blackjax.posterior(...).to_inference_data()``).

    python benchmarks/bench_blackjax.py --quick
"""

import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench_nuts  # noqa: E402
import common  # noqa: E402

import reparam_bridge as rb  # noqa: E402

try:
    import blackjax
except ImportError:  # pragma: no cover
    sys.exit("bench_blackjax needs blackjax (pip install blackjax)")


# hand-written log-densities over {site: unconstrained array}: positive sites hold the log


def eight_schools_ld(p, y, sigma):
    tau = jnp.exp(p["tau"])
    return (
        dist.Normal(0.0, 5.0).log_prob(p["mu"])
        + dist.HalfCauchy(5.0).log_prob(tau)
        + p["tau"]
        + dist.Normal(0.0, 1.0).log_prob(p["theta_tilde"]).sum()
        + dist.Normal(p["mu"] + tau * p["theta_tilde"], sigma).log_prob(y).sum()
    )


def logistic_ld(p, X, g, y):
    sigma = jnp.exp(p["sigma"])
    logits = p["mu"] + sigma * p["z"][g] + X @ p["beta"]
    return (
        dist.Normal(0.0, 2.0).log_prob(p["mu"])
        + dist.HalfNormal(1.0).log_prob(sigma)
        + p["sigma"]
        + dist.Normal(0.0, 1.0).log_prob(p["z"]).sum()
        + dist.Normal(0.0, 1.0).log_prob(p["beta"]).sum()
        + dist.Bernoulli(logits=logits).log_prob(y).sum()
    )


def gp_ld(p, x, y):
    ls, amp, noise = jnp.exp(p["lengthscale"]), jnp.exp(p["amplitude"]), jnp.exp(p["noise"])
    n = x.shape[0]
    K = amp**2 * jnp.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / ls**2) + (noise**2 + 1e-4) * jnp.eye(n)
    return (
        dist.InverseGamma(3.0, 6.0).log_prob(ls)
        + dist.HalfNormal(2.0).log_prob(amp)
        + dist.HalfNormal(1.0).log_prob(noise)
        + p["lengthscale"]
        + p["amplitude"]
        + p["noise"]
        + dist.MultivariateNormal(jnp.zeros(n), scale_tril=jnp.linalg.cholesky(K)).log_prob(y)
    )


def mlp_ld(p, x, y):
    w = [p[f"w{i}"] for i in range(6)]
    sigma = jnp.exp(p["sigma"])
    h = jnp.tanh(x @ w[0].T + w[1])
    h = jnp.tanh(h @ w[2].T + w[3])
    f = h @ w[4].T + w[5]
    prior = sum(dist.Normal(0.0, 1.0).log_prob(wi).sum() for wi in w)
    return prior + dist.HalfNormal(0.5).log_prob(sigma) + p["sigma"] + dist.Normal(f[:, 0], sigma).log_prob(y).sum()


def make_sampler(logdensity_fn, num_warmup, num_samples, max_tree_depth, target):
    """One jitted function: window adaptation + NUTS, vmapped over chains."""

    def one_chain(key, position):
        warm_key, run_key = jax.random.split(key)
        warmup = blackjax.window_adaptation(
            blackjax.nuts, logdensity_fn, target_acceptance_rate=target, max_num_doublings=max_tree_depth
        )
        (state, params), winfo = warmup.run(warm_key, position, num_steps=num_warmup)
        step = blackjax.nuts(logdensity_fn, **params).step  # params carries max_num_doublings

        def body(state, key):
            state, info = step(key, state)
            return state, (state.position, info)

        _, (positions, info) = jax.lax.scan(body, state, jax.random.split(run_key, num_samples))
        return positions, info, jnp.sum(winfo.info.num_integration_steps)

    return jax.jit(jax.vmap(one_chain))


def bench(case, handwritten, settings, repeats, seed):
    num_chains = settings["num_chains"]
    figs = {k: ([], []) for k in ("compile", "grad", "step_incl", "step_excl", "ess_s", "extract", "share")}
    for r in range(repeats):
        key = jax.random.key(seed + r)
        init_bridge, init_native = bench_nuts.initial_values(case, jax.random.fold_in(key, 7), num_chains)
        keys = jax.random.split(jax.random.split(key)[1], num_chains)
        order = ("bridge", "native") if r % 2 == 0 else ("native", "bridge")
        res = {}
        for side in order:

            def first():
                if side == "bridge":
                    fn, _ = rb.blackjax.logdensity(case.model, case.log_joint, *case.args)
                    start = rb.partition(init_bridge)[0]
                else:
                    fn = lambda p: handwritten(p, *case.args)  # noqa: E731
                    start = init_native
                run = make_sampler(
                    fn,
                    settings["num_warmup"],
                    settings["num_samples"],
                    case.max_tree_depth,
                    settings["target_accept_prob"],
                )
                return run, fn, start, run(keys, start)

            (run, fn, start, out), t_first = common.timed(first)
            _, t_steady = common.timed(lambda: run(keys, start))
            positions, info, warm_steps = out
            if side == "bridge":
                idata, t_extract = common.timed(
                    lambda: rb.blackjax.posterior(case.model, positions, info).to_inference_data()
                )
                draws = {f"v{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(positions))}
            else:
                t_extract = float("nan")
                draws = {k: np.asarray(v) for k, v in positions.items()}
            steps = int(np.sum(info.num_integration_steps)) + int(np.sum(warm_steps))
            res[side] = dict(
                fn=fn,
                start=start,
                t_first=t_first,
                t_steady=t_steady,
                t_extract=t_extract,
                steps=steps,
                ess=common.min_bulk_ess(draws),
                div=int(np.sum(info.is_divergent)),
            )
        b, n = res["bridge"], res["native"]
        np.testing.assert_allclose(
            jax.vmap(b["fn"])(b["start"]),
            jax.vmap(n["fn"])(n["start"]),
            rtol=2e-3,
            err_msg=f"{case.name}: the bridge and the hand-written density differ",
        )
        gb = common.grad_time_in_loop(jax.vmap(jax.value_and_grad(b["fn"])), b["start"])
        gn = common.grad_time_in_loop(jax.vmap(jax.value_and_grad(n["fn"])), n["start"])
        for i, (x, g) in enumerate(((b, gb), (n, gn))):
            figs["compile"][i].append(x["t_first"] - x["t_steady"])
            figs["grad"][i].append(g * 1e6)
            figs["step_incl"][i].append(x["t_first"] / x["steps"] * 1e6)
            figs["step_excl"][i].append(x["t_steady"] / x["steps"] * 1e6)
            figs["ess_s"][i].append(x["ess"] / x["t_first"])
            figs["extract"][i].append(x["t_extract"])
            figs["share"][i].append(x["t_extract"] / x["t_first"] * 100)
        for side in ("bridge", "native"):
            x = res[side]
            print(
                f"  repeat {r} {side:6s}: first {x['t_first']:.2f}s, steady {x['t_steady']:.2f}s, leapfrog steps "
                f"{x['steps']}, min bulk ESS {x['ess']:.0f}, divergences {x['div']}",
                flush=True,
            )
    rows = [
        common.ratio_row("compile time (s)", *figs["compile"]),
        common.ratio_row("grad (4 chains vmapped, in-loop, µs)", *figs["grad"]),
        common.ratio_row("µs / leapfrog step, compile incl.", *figs["step_incl"], target="<= 1.0"),
        common.ratio_row("µs / leapfrog step, compile excl.", *figs["step_excl"], target="<= 1.0"),
        common.ratio_row("min bulk ESS / s (compile incl.)", *figs["ess_s"], target=">= 1.0"),
    ]
    ext = [v for v in figs["share"][0]]
    rows.append(["bridge extraction / sampling (%)", common.spread(ext), "-", "-", "", "<= 10%"])
    return common.print_table(f"BlackJAX: {case.name}", rows, header=None)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated subset: eight,logistic,gp,mlp")
    args = p.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.quick:
        settings = common.nuts_settings(quick=True)
        cases = {
            "eight": (bench_nuts.eight_schools, eight_schools_ld),
            "logistic": (bench_nuts.hier_logistic, logistic_ld),
        }
    else:
        settings = common.nuts_settings(quick=False)
        cases = {
            "eight": (bench_nuts.eight_schools, eight_schools_ld),
            "logistic": (bench_nuts.hier_logistic, logistic_ld),
            "gp": (bench_nuts.gp, gp_ld),
            "mlp": (bench_nuts.mlp, mlp_ld),
        }
    if args.only:
        cases = {k: v for k, v in cases.items() if k in args.only.split(",")}
    print(
        f"# bench_blackjax: {common.machine()}, BlackJAX {blackjax.__version__}\n"
        f"# settings {settings}, repeats {repeats}, seed {args.seed}",
        flush=True,
    )
    common.warm_up_arviz()
    t0 = time.perf_counter()
    for make, ld in cases.values():
        case = make()
        print(f"\n## {case.name}", flush=True)
        bench(case, ld, settings, repeats, args.seed)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
