"""Which ``chain_method`` should ``rb.sample`` use on CPU? Seconds for 4 chains (compile
included, and the steady-state re-run) with ``vectorized``, ``sequential`` and ``parallel``
(4 host devices via ``XLA_FLAGS=--xla_force_host_platform_device_count=4``, which must be
set before JAX starts: every variant runs in its own process).

    python -m benchmarks.bench_chain_method [--only kidiq] [--repeats 2]
    python -m benchmarks.bench_chain_method --only nuts:hier_logistic nuts:gp nuts:multi_gp nuts:mlp
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("vectorized", "sequential", "parallel")


def child(name: str, method: str, seed: int) -> dict:
    import warnings

    import arviz as az
    import jax
    import numpy as np

    import reparam_bridge as rb

    from ._posteriors import CASES, data_and_model

    warnings.filterwarnings("ignore")
    if name.startswith(
        "nuts:"
    ):  # bench_nuts.py's larger posteriors: nuts:hier_logistic, nuts:gp, nuts:multi_gp, nuts:mlp
        from . import bench_nuts

        case = getattr(bench_nuts, name[5:])()
        model, log_joint, data, x64 = case.model, case.log_joint, case.args, False
        kwargs = {"max_tree_depth": case.max_tree_depth}
    else:
        case = CASES[name]
        (model, data), log_joint, x64, kwargs = data_and_model(case), case.log_joint, case.x64, case.sample_kwargs
        data = (data,)
    out = {}
    with jax.enable_x64(x64):
        for label in ("first", "again"):
            t0 = time.perf_counter()
            post = rb.sample(
                model,
                log_joint,
                *data,
                key=jax.random.key(seed),
                num_warmup=500,
                num_samples=500,
                num_chains=4,
                chain_method=method,
                progress_bar=False,
                **kwargs,
            )
            jax.block_until_ready(post.draws)
            out[label] = time.perf_counter() - t0
            if label == "first":
                ess = az.ess(post.to_inference_data().posterior, method="bulk")
                out["ess"] = min(float(np.min(ess[v].values)) for v in ess.data_vars)
                out["steps"] = int(np.sum(post.sample_stats["n_steps"]))
    out["devices"] = jax.local_device_count()
    return out


def main(argv=None):
    from .common import parser

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=["kidiq-kidscore_momiq", "eight_schools", "arK"])
    p.add_argument("--child", nargs=2, default=None)
    a = p.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(a.child[0], a.child[1], a.seed)), flush=True)
        return
    from ._posteriors import CASES

    names = [n for n in CASES if any(s in n for s in a.only)] + [s for s in a.only if s.startswith("nuts:")]
    for name in names:
        res = {m: [] for m in METHODS}
        for r in range(a.repeats or 1):
            for m in METHODS[r % 3 :] + METHODS[: r % 3]:
                env = dict(os.environ)
                if m == "parallel":
                    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
                proc = subprocess.run(
                    [sys.executable, "-m", "benchmarks.bench_chain_method", "--child", name, m],
                    check=False,
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=Path(__file__).resolve().parents[1],
                )
                line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
                if line is None:
                    print(name, m, "failed", proc.stderr[-1500:])
                    continue
                res[m].append(json.loads(line[7:]))
        cells = []
        for m in METHODS:
            if res[m]:
                first = sorted(x["first"] for x in res[m])[len(res[m]) // 2]
                again = sorted(x["again"] for x in res[m])[len(res[m]) // 2]
                ess = sorted(x["ess"] for x in res[m])[len(res[m]) // 2]
                cells.append(f"{m} {first:.1f}s / {again:.1f}s (ESS {ess:.0f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
