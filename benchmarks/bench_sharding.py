"""Time per draw against the number of devices: chains across devices, and data across devices.

Each device count (1, 2, 4 forced host CPU devices by default, ``--devices``) runs in its own
process, since JAX fixes the device count when it starts. Model: Bayesian logistic
regression, 5 coefficients, ``Normal(0, 1)`` priors; NUTS with ``max_tree_depth=5``.

* **chains**: 16 chains, 20,000 observations (replicated), ``chain_method="sharded"``: the chain
  axis split over the devices, chains vectorized within each.
* **data**: 4 chains, ``--n`` observations (200,000 by default) placed with
  ``NamedSharding(Mesh(devices, ("data",)), P("data"))``: each device holds ``n / d`` rows and the
  log-likelihood sum is a cross-device reduction.

The native alternative (NumPyro's ``"vectorized"`` MCMC on one device, data unsharded) runs in
the one-device process. Time per draw excludes compilation and warmup: each variant runs with
``S`` and ``3 S`` draws and the figure is ``(T(3S) - T(S)) / (2 S)`` per draw of all chains
together, median over repeats, the two lengths alternating order. The sharded sampler is
compiled once per length by an untimed first call (``rb.sample`` keeps it for the next call
of the same shapes); NumPyro's ``MCMC`` is built anew, and compiles, in every call, so its
rows difference two compilations and carry their jitter.

    python benchmarks/bench_sharding.py --quick
"""

import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import common  # noqa: E402


def child(devices: int, n_data: int, draws: int, repeats: int, native: bool) -> dict:
    import jax
    import numpy as np
    import numpyro.distributions as dist
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import reparam_bridge as rb

    assert jax.device_count() == devices, jax.devices()
    model = {"w": rb.Real(np.zeros(5, np.float32))}

    def log_joint(m, x, y):
        return dist.Normal(0.0, 1.0).log_prob(m["w"]).sum() + dist.Bernoulli(logits=x @ m["w"]).log_prob(y).sum()

    def data(n):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, 5)).astype(np.float32)
        y = (rng.uniform(size=n) < 1 / (1 + np.exp(-x @ np.linspace(-1, 1, 5)))).astype(np.float32)
        return x, y

    mesh = Mesh(np.array(jax.devices()), ("data",))
    small = data(20_000)
    big = data(n_data)
    big_sharded = tuple(jax.device_put(a, NamedSharding(mesh, P("data"))) for a in big)
    cases = {
        "chains/sharded": (small, dict(num_chains=16, chain_method="sharded")),
        "data/sharded": (big_sharded, dict(num_chains=4, chain_method="sharded")),
    }
    if native:
        cases["chains/numpyro-vectorized"] = (small, dict(num_chains=16, chain_method="vectorized"))
        cases["data/numpyro-vectorized"] = (big, dict(num_chains=4, chain_method="vectorized"))

    def run(args, kw, n):
        post = rb.sample(
            model,
            log_joint,
            *args,
            key=jax.random.key(0),
            num_warmup=50,
            num_samples=n,
            max_tree_depth=5,
            progress_bar=False,
            **kw,
        )
        return np.asarray(post.sample_stats["n_steps"]).mean()

    out = {}
    for name, (args, kw) in cases.items():
        for n in (draws, 3 * draws):  # compiles (kept by rb.sample for the sharded cases)
            run(args, kw, n)
        per_draw, steps = [], []
        for r in range(repeats):
            times = {}
            for n in (draws, 3 * draws) if r % 2 == 0 else (3 * draws, draws):
                t0 = time.perf_counter()
                steps.append(run(args, kw, n))
                times[n] = time.perf_counter() - t0
            per_draw.append((times[3 * draws] - times[draws]) / (2 * draws))
        out[name] = {
            "ms_per_draw": 1e3 * statistics.median(per_draw),
            "spread": (max(per_draw) - min(per_draw)) / max(statistics.median(per_draw), 1e-12),
            "mean_leapfrog_steps": float(np.mean(steps)),
        }
    return out


def main():
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,2,4")
    p.add_argument("--n", type=int, default=200_000, help="observations in the data case")
    p.add_argument("--child", type=int, default=None, help="(internal)")
    p.add_argument("--native", action="store_true", help="also time NumPyro's vectorized MCMC (one device)")
    a = p.parse_args()
    draws = 50 if a.quick else 150
    repeats = a.repeats or (1 if a.quick else 3)
    if a.child is not None:
        print(json.dumps(child(a.child, a.n, draws, repeats, a.native)), flush=True)
        return
    rows = {}
    for d in map(int, a.devices.split(",")):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={d}")
        root = str(pathlib.Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(x for x in (root, env.get("PYTHONPATH")) if x)
        cmd = [sys.executable, __file__, "--child", str(d), "--n", str(a.n), "--repeats", str(repeats)]
        cmd += ["--quick"] if a.quick else []
        cmd += ["--native"] if a.native and d == 1 else []
        t0 = time.perf_counter()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        rows[d] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{d} device(s): {time.perf_counter() - t0:.0f} s: {rows[d]}", file=sys.stderr, flush=True)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; n={a.n}, {draws}/{3 * draws} draws, {repeats} repeat(s)"
    )
    print("| case | devices | ms per draw (all chains) | spread | speed-up vs 1 device | mean leapfrog steps |")
    print("|---|---|---|---|---|---|")
    for case in ("chains/sharded", "data/sharded"):
        base = rows[min(rows)][case]["ms_per_draw"]
        for d, res in rows.items():
            r = res[case]
            print(
                f"| {case} | {d} | {r['ms_per_draw']:.2f} | {r['spread']:.2f} | {base / r['ms_per_draw']:.2f} "
                f"| {r['mean_leapfrog_steps']:.1f} |"
            )
    for case in ("chains/numpyro-vectorized", "data/numpyro-vectorized"):
        if case in rows.get(1, {}):
            r = rows[1][case]
            print(f"| {case} | 1 | {r['ms_per_draw']:.2f} | {r['spread']:.2f} | | {r['mean_leapfrog_steps']:.1f} |")


if __name__ == "__main__":
    main()
