"""Seconds per 400 effective draws, model to ArviZ data, on posteriordb posteriors.

Three workflows on the same posterior, each timed from the model to an ArviZ
``InferenceData`` (compilation, optimisation/approximation, warmup, sampling, conversion):

* ``bridge``: ``rb.laplace`` (or ``rb.pathfinder`` with ``--approx pathfinder``), then
  ``rb.sample(..., init=approx)`` at the seeded default warmup, 1,000 draws x 4 chains,
  ``post.to_inference_data()``;
* ``native``: NumPyro ``MCMC(NUTS(model), num_warmup=1000, num_samples=1000, num_chains=4)``
  at its defaults (``init_to_uniform``, diagonal mass matrix), the model written with
  ``ImproperUniform`` sites on the same supports plus ``numpyro.factor`` of the same
  ``log_joint`` (how a Stan program is written in NumPyro), ``az.from_numpyro``;
* ``blackjax``: ``blackjax.window_adaptation`` (1,000 steps) + NUTS (1,000 draws), 4 chains
  vmapped, on ``rb.blackjax.logdensity``; ``rb.blackjax.posterior(...).to_inference_data()``.

Effective draws: the minimum bulk ESS over every scalar of every posterior variable; a run
whose maximum r-hat exceeds 1.01 counts as failed (``inf``). Each posterior runs in its own
process (XLA's JIT keeps its code mapped: many posteriors in one process hit the LLVM mmap
limit); the three workflows alternate order over repeats inside it.

    python -m benchmarks.bench_time_to_posterior              # every posterior, 1 repeat
    python -m benchmarks.bench_time_to_posterior --repeats 3 --only eight_schools
    python -m benchmarks.bench_time_to_posterior --offer-draws 0.7  # PSIS-resampled draws where k-hat < 0.7
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

import reparam_bridge as rb

from . import common  # also silences ArviZ's FutureWarning
from ._posteriors import CASES, data_and_model

warnings.filterwarnings("ignore")
NUM_WARMUP, NUM_SAMPLES, NUM_CHAINS = 1000, 1000, 4
OFFER_PSIS_DRAWS = 10_000


def _az():
    import arviz as az

    return az


def min_ess_max_rhat(idata) -> tuple[float, float]:
    az = _az()
    post = idata.posterior
    ess = az.ess(post, method="bulk")
    rhat = az.rhat(post)
    e = min(float(np.min(ess[v].values)) for v in ess.data_vars)
    r = max(float(np.max(rhat[v].values)) for v in rhat.data_vars)
    return e, r


def moments(idata, cap=np.inf) -> dict:
    """Per scalar: mean, sd and bulk ESS (capped at ``cap``: an importance-resampled
    posterior's draws repeat, so ArviZ's ESS of them overstates what they carry)."""
    az = _az()
    post = idata.posterior
    ess = az.ess(post, method="bulk")
    out = {}
    for v in post.data_vars:
        x = np.asarray(post[v].values, np.float64)
        x = x.reshape(x.shape[0] * x.shape[1], -1)
        out[v] = (x.mean(0), x.std(0), np.minimum(np.asarray(ess[v].values, np.float64).ravel(), cap))
    return out


def max_z(a: dict, b: dict) -> float:
    """The largest |mean difference| over every scalar, in combined Monte Carlo standard errors."""
    zs = [
        np.abs(a[v][0] - b[v][0]) / np.sqrt(a[v][1] ** 2 / a[v][2] + b[v][1] ** 2 / b[v][2])
        for v in a
        if v in b and a[v][0].shape == b[v][0].shape
    ]
    return float(np.max(np.concatenate(zs))) if zs else float("nan")


def native_model(model, log_joint, data):
    """NumPyro model: one ImproperUniform site per bijector field on its support, the density
    as a factor. NumPyro does its own transforms and Jacobians."""
    fields = [f.name for f in dataclasses.fields(model) if isinstance(getattr(model, f.name), rb.Bijector)]
    supports = {n: getattr(model, n).support() for n in fields}
    shapes = {n: jnp.shape(rb.unwrap(getattr(model, n))) for n in fields}
    template = rb.unwrap(model)

    def npmodel():
        values = [numpyro.sample(n, dist.ImproperUniform(supports[n], (), shapes[n])) for n in fields]
        m = eqx.tree_at(lambda t: [getattr(t, n) for n in fields], template, values)
        numpyro.factor("log_joint", log_joint(m, data))

    return npmodel


def run_bridge(case, seed, approx_kind, num_warmup=None, offer=None, chain_method=None):
    """``offer``: where the approximation's k-hat is below ``offer`` (0.5 in ``rb.sample``'s
    warning; 0.7 is PSIS's reliability bound for 10,000 draws), its PSIS-resampled draws are the
    result (``approx.to_posterior``, no MCMC; Laplace with ``OFFER_PSIS_DRAWS`` PSIS draws), as
    ``rb.sample``'s warning suggests. Their effective draws are capped at
    ``1 / (1 / ESS_IS + 1 / N)``: the variance of a mean of ``N`` draws resampled from weighted
    draws is that of importance sampling plus that of the resampling."""
    model, data = data_and_model(case)
    t0 = time.perf_counter()
    key = jax.random.key(seed)
    if approx_kind == "pathfinder":
        approx = rb.pathfinder(model, case.log_joint, data, key=key)
    else:
        psis = {"num_psis_draws": OFFER_PSIS_DRAWS} if offer is not None else {}
        approx = rb.laplace(model, case.log_joint, data, progress_bar=False, key=key, **psis)
    if offer is not None and approx.khat < offer:
        idata = approx.to_posterior(jax.random.fold_in(key, 1), NUM_SAMPLES, NUM_CHAINS).to_inference_data()
        cap = 1 / (1 / approx.ess + 1 / (NUM_SAMPLES * NUM_CHAINS))
        return time.perf_counter() - t0, idata, {"khat": float(approx.khat), "is_ess": float(approx.ess), "cap": cap}
    post = rb.sample(
        model,
        case.log_joint,
        data,
        key=key,
        init=approx,
        num_warmup=num_warmup,
        num_samples=NUM_SAMPLES,
        num_chains=NUM_CHAINS,
        chain_method=chain_method,
        progress_bar=False,
        **case.sample_kwargs,
    )
    idata = post.to_inference_data()
    return time.perf_counter() - t0, idata, {"khat": float(approx.khat)}


def run_native(case, seed):
    model, data = data_and_model(case)
    t0 = time.perf_counter()
    mcmc = MCMC(
        NUTS(native_model(model, case.log_joint, data)),
        num_warmup=NUM_WARMUP,
        num_samples=NUM_SAMPLES,
        num_chains=NUM_CHAINS,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(seed))
    idata = _az().from_numpyro(mcmc)
    idata.posterior = idata.posterior.drop_vars([v for v in idata.posterior.data_vars if v == "log_joint"])
    return time.perf_counter() - t0, idata, {}


def run_blackjax(case, seed):
    import blackjax

    model, data = data_and_model(case)
    t0 = time.perf_counter()
    logdensity_fn, position = rb.blackjax.logdensity(model, case.log_joint, data)

    def one_chain(key, position):
        warm_key, run_key = jax.random.split(key)
        warmup = blackjax.window_adaptation(blackjax.nuts, logdensity_fn)
        (state, params), _ = warmup.run(warm_key, position, num_steps=NUM_WARMUP)
        step = blackjax.nuts(logdensity_fn, **params).step

        def body(state, key):
            state, info = step(key, state)
            return state, (state.position, info)

        _, (positions, info) = jax.lax.scan(body, state, jax.random.split(run_key, NUM_SAMPLES))
        return positions, info

    key = jax.random.key(seed)
    init_key, run_key = jax.random.split(key)
    leaves, treedef = jax.tree_util.tree_flatten(position)
    keys = jax.random.split(init_key, len(leaves))
    # the same start as rb.sample's default: the model's values plus uniform jitter of 0.1
    starts = jax.tree_util.tree_unflatten(
        treedef,
        [
            x[None] + 0.1 * jax.random.uniform(k, (NUM_CHAINS, *x.shape), x.dtype, -1.0, 1.0)
            for x, k in zip(leaves, keys)
        ],
    )
    positions, info = jax.jit(jax.vmap(one_chain))(jax.random.split(run_key, NUM_CHAINS), starts)
    idata = rb.blackjax.posterior(model, positions, info).to_inference_data()
    return time.perf_counter() - t0, idata, {}


def child(name, repeats, seed, approx_kind, warmups=None, sides=None, offer=None, chain_method=None) -> dict:
    case = CASES[name]
    runners = {
        "bridge": lambda s: run_bridge(case, s, approx_kind, offer=offer, chain_method=chain_method),
        "native": lambda s: run_native(case, s),
        "blackjax": lambda s: run_blackjax(case, s),
    }
    for w in warmups or []:  # the seeded warmup measurement: bridge at other num_warmup
        runners[f"bridge_w{w}"] = lambda s, w=w: run_bridge(case, s, approx_kind, w)
    order = [k for k in runners if not sides or k in sides]
    out = {k: [] for k in order}
    summaries = {}
    # One-off process costs (ArviZ's import, ~2.7 s; JAX's backend start-up) are paid before any
    # timing: else they land on whichever workflow runs first (the bridge, with one repeat).
    _az()
    jax.block_until_ready(jax.jit(lambda x: x + 1)(1.0))
    with jax.enable_x64(case.x64):
        for r in range(repeats):
            for k in order[r % len(order) :] + order[: r % len(order)]:  # rotate which workflow goes first
                # every run cold: the bridge keeps compiled programs per signature (its fit loop, its
                # sampler) and a repeat would reuse them where NumPyro and BlackJAX compile anew
                rb.clear_caches()
                c0 = time.process_time()
                secs, idata, extra = runners[k](seed + r)
                cpu = time.process_time() - c0  # all threads: the work done, robust to other jobs
                ess, rhat = min_ess_max_rhat(idata)
                ess = min(ess, extra.get("cap", np.inf))
                summaries.setdefault(k, []).append(moments(idata, extra.get("cap", np.inf)))
                per400 = secs * 400 / ess if rhat <= 1.01 else float("inf")
                cpu400 = cpu * 400 / ess if rhat <= 1.01 else float("inf")
                out[k].append(
                    {
                        "seconds": secs,
                        "cpu": cpu,
                        "min_ess": ess,
                        "max_rhat": rhat,
                        "per400": per400,
                        "cpu400": cpu400,
                        **extra,
                    }
                )
    if "bridge" in summaries and "native" in summaries:  # do the bridge's draws agree with NUTS's?
        for i, run in enumerate(out["bridge"]):
            run["max_z_vs_native"] = max_z(summaries["bridge"][i], summaries["native"][i])
    return out


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=None, help="substrings of posterior names")
    p.add_argument("--child", default=None, help=argparse_hidden)
    p.add_argument("--approx", default="laplace", choices=["laplace", "pathfinder"])
    p.add_argument("--out", default=None, help="append JSON lines here")
    p.add_argument("--warmups", nargs="*", type=int, default=[], help="also run the bridge at these num_warmup")
    p.add_argument(
        "--sides", nargs="*", default=None, help="only these workflows (bridge, native, blackjax, bridge_wN)"
    )
    p.add_argument(
        "--offer-draws",
        type=float,
        nargs="?",
        const=0.5,
        default=None,
        metavar="KHAT",
        help="bridge: where k-hat < KHAT (default 0.5), the approximation's PSIS-resampled draws are the result",
    )
    p.add_argument(
        "--bridge-chain-method", default=None, help="rb.sample's chain_method for the bridge (default: its default)"
    )
    a = p.parse_args(argv)
    repeats = a.repeats or 1
    if a.child:
        res = child(a.child, repeats, a.seed, a.approx, a.warmups, a.sides, a.offer_draws, a.bridge_chain_method)
        print("RESULT " + json.dumps({"posterior": a.child, **res}), flush=True)
        return
    names = [n for n in CASES if not a.only or any(s in n for s in a.only)]
    rows = []
    for name in names:
        cmd = (
            [
                sys.executable,
                "-m",
                "benchmarks.bench_time_to_posterior",
                "--child",
                name,
                "--repeats",
                str(repeats),
                "--seed",
                str(a.seed),
                "--approx",
                a.approx,
                "--warmups",
                *map(str, a.warmups),
            ]
            + (["--sides", *a.sides] if a.sides else [])
            + (["--offer-draws", str(a.offer_draws)] if a.offer_draws is not None else [])
            + (["--bridge-chain-method", a.bridge_chain_method] if a.bridge_chain_method else [])
        )
        proc = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[1],
            env={**os.environ},
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        res = json.loads(line[7:])
        rows.append(res)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(res) + "\n")
        print(format_row(res), flush=True)
    summarize(rows)


argparse_hidden = "internal: run one posterior in this process"


def _median(xs):
    return float(np.median(xs)) if xs else float("nan")


def format_row(res: dict) -> str:
    extra = [k for k in res if k.startswith("bridge_w")]
    if "native" not in res or "blackjax" not in res or "bridge" not in res:
        return (
            f"| {res['posterior']} | "
            + " | ".join(
                f"{k} {_median([x['per400'] for x in v]):.2f}s/400 ({_median([x['seconds'] for x in v]):.1f}s, "
                f"ess {_median([x['min_ess'] for x in v]):.0f}, rhat {max(x['max_rhat'] for x in v):.3f})"
                for k, v in res.items()
                if k != "posterior"
            )
            + " |"
        )
    b, n, j = (_median([x["per400"] for x in res[k]]) for k in ("bridge", "native", "blackjax"))
    detail = ", ".join(
        f"{k} {_median([x['seconds'] for x in res[k]]):.1f}s ess {_median([x['min_ess'] for x in res[k]]):.0f} "
        f"rhat {max(x['max_rhat'] for x in res[k]):.3f}"
        for k in ("bridge", "native", "blackjax")
    )
    khat = _median([x.get("khat", float("nan")) for x in res["bridge"]])
    if any("is_ess" in x for x in res["bridge"]):
        is_ess = _median([x["is_ess"] for x in res["bridge"] if "is_ess" in x])
        detail += f"; draws offered (IS ESS {is_ess:.0f} of {OFFER_PSIS_DRAWS})"
    if any("max_z_vs_native" in x for x in res["bridge"]):
        detail += f"; max |z| vs native {max(x['max_z_vs_native'] for x in res['bridge']):.1f}"
    more = "".join(f" {k}: {_median([x['per400'] for x in res[k]]):.2f}" for k in extra)
    bc, nc, jc = (_median([x["cpu400"] for x in res[k]]) for k in ("bridge", "native", "blackjax"))
    detail += f"; CPU-s/400 {bc:.2f} / {nc:.2f} / {jc:.2f} (ratios {bc / nc:.2f}, {bc / jc:.2f})"
    return f"| {res['posterior']} | {b:.2f} | {n:.2f} | {j:.2f} | {b / n:.2f} | {b / j:.2f} | {khat:.2f} | {detail}{more} |"


def summarize(rows):
    rows = [r for r in rows if all(k in r for k in ("bridge", "native", "blackjax"))]
    if not rows:
        return
    r_n = [_median([x["per400"] for x in r["bridge"]]) / _median([x["per400"] for x in r["native"]]) for r in rows]
    r_j = [_median([x["per400"] for x in r["bridge"]]) / _median([x["per400"] for x in r["blackjax"]]) for r in rows]
    c_n = [_median([x["cpu400"] for x in r["bridge"]]) / _median([x["cpu400"] for x in r["native"]]) for r in rows]
    c_j = [_median([x["cpu400"] for x in r["bridge"]]) / _median([x["cpu400"] for x in r["blackjax"]]) for r in rows]
    print(
        f"wall: median bridge/native {np.median(r_n):.2f} (max {np.max(r_n):.2f}); "
        f"median bridge/blackjax {np.median(r_j):.2f} (max {np.max(r_j):.2f}); {len(rows)} posteriors"
    )
    print(
        f"CPU:  median bridge/native {np.median(c_n):.2f} (max {np.max(c_n):.2f}); "
        f"median bridge/blackjax {np.median(c_j):.2f} (max {np.max(c_j):.2f})"
    )


if __name__ == "__main__":
    main()
