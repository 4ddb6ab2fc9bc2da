"""Compile time of the bridge's potentials vs the native ones, measured cleanly.

What the bridge adds to a sampler's or an optimiser's compile is its potential: the NUTS,
HMC and optax machinery around it is the same code on both sides. So each figure is the
wall time to **trace, lower and compile** ``jax.vmap(jax.value_and_grad(potential))`` over
4 chains (NUTS, as ``chain_method="vectorized"`` calls it) or ``jax.value_and_grad``
(``map_estimate``), with a fresh ``jax.jit`` each time (no cache), the two sides alternating,
medians over repeats; the trace (Python) part is also reported on its own.

* NUTS: the bridge's potential ``-rb.log_density(log_joint, combine(params, static), *args)``
  vs NumPyro's ``initialize_model(...).potential_fn`` of the hand-written model (the one
  ``MCMC(NUTS(model))`` compiles), on the posteriors of ``bench_nuts.py``;
* fit: ``rb.map_estimate``'s objective vs the hand loss of ``bench_fit.py`` (raw arrays).

    python benchmarks/bench_compile.py            # 7 repeats
    python benchmarks/bench_compile.py --quick    # 3 repeats, eight schools + logistic + fit
"""

import pathlib
import statistics
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
from numpyro.infer.util import initialize_model

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench_fit  # noqa: E402
import bench_nuts  # noqa: E402
import common  # noqa: E402

import reparam_bridge as rb  # noqa: E402


def _compile_seconds(make_fn, *args) -> tuple[float, float]:
    """(trace, trace + lower + compile) seconds for a fresh ``jax.jit(make_fn())``."""
    fn = jax.jit(make_fn())
    t0 = time.perf_counter()
    traced = fn.trace(*args)
    t1 = time.perf_counter()
    traced.lower().compile()
    return t1 - t0, time.perf_counter() - t0


def _side_by_side(name: str, bridge, native, repeats: int) -> dict:
    """``bridge``/``native``: (make_fn, args). Alternating order, medians."""
    times = {"bridge": ([], []), "native": ([], [])}
    for side, (make, args) in (("bridge", bridge), ("native", native)):  # one untimed warm-up each
        _compile_seconds(make, *args)
    for r in range(repeats):
        for side in ("bridge", "native") if r % 2 == 0 else ("native", "bridge"):
            make, args = bridge if side == "bridge" else native
            trace, total = _compile_seconds(make, *args)
            times[side][0].append(trace)
            times[side][1].append(total)
    med = {side: (statistics.median(t), statistics.median(c)) for side, (t, c) in times.items()}
    row = dict(
        case=name,
        bridge_trace=med["bridge"][0],
        native_trace=med["native"][0],
        bridge=med["bridge"][1],
        native=med["native"][1],
    )
    row["ratio"] = row["bridge"] / row["native"]
    row["trace_ratio"] = row["bridge_trace"] / row["native_trace"]
    print(
        f"{name:34s} {row['bridge']:7.3f} {row['native']:7.3f} {row['ratio']:6.2f}   "
        f"{row['bridge_trace'] * 1e3:7.1f} {row['native_trace'] * 1e3:7.1f} {row['trace_ratio']:6.2f}",
        flush=True,
    )
    return row


def nuts_case(case: bench_nuts.Case, repeats: int, chains: int = 4) -> dict:
    params, static = rb.partition(case.model)
    init_bridge, init_native = bench_nuts.initial_values(case, jax.random.key(1), chains)
    pb = rb.partition(init_bridge)[0]
    info = initialize_model(jax.random.key(0), case.native, model_args=case.native_args)

    def bridge():
        logdensity = common.logdensity_fn(case.log_joint, static, case.args)
        return jax.vmap(jax.value_and_grad(lambda p: -logdensity(p)))

    def native():
        return jax.vmap(jax.value_and_grad(info.potential_fn))

    return _side_by_side(f"NUTS potential: {case.name}", (bridge, (pb,)), (native, (init_native,)), repeats)


def fit_case(repeats: int) -> dict:
    x = jnp.linspace(0.5, 5.0, 200)
    y = 2.5 * x**1.7 + 0.3 * jax.random.normal(jax.random.key(0), x.shape)
    model = bench_fit.PowerLaw(rb.Positive(1.0), rb.Real(1.0), rb.Positive(1.0))
    params, static = rb.partition(model)
    raw = (jnp.array(0.0), jnp.array(1.0), jnp.array(0.0))

    def bridge():  # what map_estimate differentiates (jacobian=False: log_joint + priors)
        return jax.value_and_grad(
            lambda p, x, y: -rb.log_density(bench_fit.log_joint, eqx.combine(p, static), x, y, jacobian=False)
        )

    def native():
        def neg_log_p(raw, x, y):
            log_a, power, log_noise = raw
            return -bench_fit.dist.Normal(jnp.exp(log_a) * x**power, jnp.exp(log_noise)).log_prob(y).sum()

        return jax.value_and_grad(neg_log_p)

    return _side_by_side("map_estimate objective: power law", (bridge, (params, x, y)), (native, (raw, x, y)), repeats)


def main(argv=None):
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    print(f"# bench_compile: {common.machine()}; repeats {repeats}")
    print(f"{'case':34s} {'compile b/n (s)':>15s} {'ratio':>6s}   {'trace b/n (ms)':>15s} {'ratio':>6s}")
    makers = [bench_nuts.eight_schools, bench_nuts.hier_logistic]
    if not args.quick:
        makers += [bench_nuts.gp, bench_nuts.multi_gp, bench_nuts.mlp]
    rows = [nuts_case(make(), repeats) for make in makers]
    rows.append(fit_case(repeats))
    worst = max(r["ratio"] for r in rows)
    print(f"\ntarget: compile bridge/native <= 1.0 on every row; worst {worst:.2f}")


if __name__ == "__main__":
    main()
