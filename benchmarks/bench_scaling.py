"""Scaling with the number of free parameters (10 → 100,000): time per gradient, ``rb.sample``
wall time, posterior extraction (``Posterior.draws`` + ``to_inference_data()``) and peak memory.

Each size runs in its own subprocess so that ``resource.getrusage(...).ru_maxrss`` (peak
resident memory; tracemalloc cannot see XLA's buffers and JAX reports no memory stats on CPU)
measures that size alone. The model is a hierarchical log-normal: ``x_i > 0`` (``rb.Positive``,
so unwrap does real work), ``log x_i ~ Normal(mu, 1)``, ``y_i ~ Normal(x_i, 0.5)``; NUTS with
``max_tree_depth=6`` (this measures cost per step, not mixing).

Extraction is also timed on synthetic draws over a grid of draws × parameters (no sampling)
to show it is linear in their product. Writes ``benchmarks/figures/scaling.png``.

    python benchmarks/bench_scaling.py --quick
"""

import json
import pathlib
import resource
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
FIGURE = HERE / "figures" / "scaling.png"


def _model(p):
    import jax.numpy as jnp
    import numpyro.distributions as dist

    import reparam_bridge as rb

    model = {"mu": rb.Real(0.0), "x": rb.Positive(jnp.ones(p - 1))}

    def log_joint(m, y):
        return (dist.Normal(0.0, 1.0).log_prob(m["mu"]) + dist.LogNormal(m["mu"], 1.0).log_prob(m["x"]).sum()
                + dist.Normal(m["x"], 0.5).log_prob(y).sum())

    return model, log_joint


def child(p: int, warmup: int, samples: int, chains: int) -> dict:
    """One size, in a fresh process."""
    import jax
    import numpy as np

    import reparam_bridge as rb

    common.warm_up_arviz()  # one-off imports are not extraction
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    y = jax.random.lognormal(jax.random.key(0), shape=(p - 1,)) + 0.5 * jax.random.normal(jax.random.key(1), (p - 1,))
    model, log_joint = _model(p)
    params, static = rb.partition(model)
    ld = common.logdensity_fn(log_joint, static, (y,))
    grad = common.grad_time_in_loop(jax.value_and_grad(ld), params, n=200)
    post, t_sample = common.timed(lambda: rb.sample(model, log_joint, y, key=jax.random.key(2), num_warmup=warmup,
                                                    num_samples=samples, num_chains=chains, max_tree_depth=6,
                                                    chain_method="vectorized", progress_bar=False))
    rss_sample = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _, t_extract = common.timed(lambda: (post.draws, post.to_inference_data()))
    rss_extract = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return dict(p=p, grad=grad, t_sample=t_sample, t_extract=t_extract, draws=chains * samples,
                steps=int(np.sum(post.sample_stats["n_steps"])), rss0_mb=rss0 / 1024,
                rss_sample_mb=rss_sample / 1024, rss_extract_mb=rss_extract / 1024)


def extraction_grid(sizes, draws_list, repeats) -> list[dict]:
    """Extraction time on synthetic draws: (chains=4) × draws × parameters."""
    import jax
    import jax.numpy as jnp

    import reparam_bridge as rb

    out = []
    for p in sizes:
        model, _ = _model(p)
        params, static = rb.partition(model)
        for d in draws_list:
            samples = jax.tree_util.tree_map(lambda x: 0.1 * jnp.ones((4, d, *x.shape), x.dtype), params)
            times = []
            for _ in range(repeats):
                post = rb.Posterior(model, static, samples, {})
                times.append(common.timed(lambda: (post.draws, post.to_inference_data()))[1])
            out.append(dict(p=p, draws=4 * d, elements=4 * d * p, t=sorted(times)[len(times) // 2]))
            print(f"  extraction: {p:>7d} params x {4 * d:>5d} draws: {out[-1]['t'] * 1e3:8.1f} ms", flush=True)
    return out


def plot(runs, grid):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=70)
    p = [r["p"] for r in runs]
    ax = axes[0]
    ax.loglog(p, [r["grad"] * 1e6 for r in runs], "o-", label="gradient (µs)")
    ax.loglog(p, [r["t_sample"] / max(r["steps"], 1) * 1e6 for r in runs], "s-", label="sample: µs / leapfrog step")
    ax.set_xlabel("free parameters")
    ax.set_title("time")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.loglog(p, [r["t_sample"] for r in runs], "s-", label="rb.sample (s)")
    ax.loglog(p, [r["t_extract"] for r in runs], "o-", label="extraction (s)")
    ax.set_xlabel("free parameters")
    ax.set_title("sampling vs extraction")
    ax.legend(fontsize=8)
    ax2 = ax.twinx()
    ax2.semilogx(p, [r["rss_extract_mb"] for r in runs], "k--", alpha=0.5)
    ax2.set_ylabel("peak RSS (MB, dashed)")
    ax = axes[2]
    e = np.array([g["elements"] for g in grid], float)
    t = np.array([g["t"] for g in grid])
    ax.loglog(e, t, "o", label="measured")
    per, fixed = np.polyfit(e, t, 1)  # t = fixed + per * elements (least squares)
    xs = np.geomspace(e.min(), e.max(), 20)
    ax.loglog(xs, fixed + per * xs, "--", label=f"{fixed * 1e3:.0f} ms + {per * 1e9:.2f} ns × n")
    ax.set_xlabel("draws × parameters")
    ax.set_title("extraction (4 chains)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE)
    return fixed, per


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--child", type=str, default=None, help="internal: run one size")
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(*json.loads(args.child))), flush=True)
        return
    if args.quick:
        sizes, warmup, samples = [10, 1_000, 100_000], 30, 30
        grid_sizes, grid_draws, reps = [100, 10_000, 100_000], [25, 250], 2
    else:
        sizes, warmup, samples = [10, 100, 1_000, 10_000, 100_000], 200, 200
        grid_sizes, grid_draws, reps = [100, 1_000, 10_000, 100_000], [25, 100, 250], 3
    print(f"# bench_scaling: {common.machine()}\n# sample: 2 vectorized chains, {warmup} warmup + {samples} draws",
          flush=True)
    t0 = time.perf_counter()
    runs = []
    for size in sizes:
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps([size, warmup, samples, 2])],
                             capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(out.stdout, out.stderr)
            raise RuntimeError(f"size {size} failed")
        runs.append(json.loads(line[7:]))
        r = runs[-1]
        print(f"  {size:>7d} params: grad {r['grad'] * 1e6:9.1f} µs, sample {r['t_sample']:6.1f} s "
              f"({r['steps']} leapfrog steps), extraction {r['t_extract'] * 1e3:7.1f} ms "
              f"({r['t_extract'] / r['t_sample'] * 100:.1f}% of sampling), peak RSS {r['rss_sample_mb']:.0f} MB "
              f"after sample, {r['rss_extract_mb']:.0f} MB after extraction (after imports: {r['rss0_mb']:.0f} MB)",
              flush=True)
    common.warm_up_arviz()
    grid = extraction_grid(grid_sizes, grid_draws, reps)
    fixed, per = plot(runs, grid)
    rows = [[f"{r['p']:,}", f"{r['grad'] * 1e6:.1f}", f"{r['t_sample'] / max(r['steps'], 1) * 1e6:.1f}",
             f"{r['t_sample']:.1f}", f"{r['t_extract'] * 1e3:.0f}", f"{r['t_extract'] / r['t_sample'] * 100:.1f}",
             f"{r['rss_sample_mb']:.0f}", f"{r['rss_extract_mb'] - r['rss_sample_mb']:.0f}"] for r in runs]
    common.print_table("Scaling (rb.sample, 2 vectorized chains)", rows, header=[
        "free params", "grad (µs)", "µs / leapfrog step", "sample (s)", "extraction (ms)", "extraction / sample (%)",
        "peak RSS (MB)", "extra RSS in extraction (MB)"])
    print(f"\nextraction vs n = draws×parameters, least squares: {fixed * 1e3:.0f} ms + {per * 1e9:.2f} ns × n "
          f"(a fixed compile + a linear term); figure: {FIGURE.relative_to(HERE.parent)}")
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
