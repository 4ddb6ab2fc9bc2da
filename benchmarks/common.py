"""Shared timing helpers for the benchmark scripts (not part of the package).

Every figure is measured side by side in one process: the two variants run in alternating
order with the same seeds, and each figure is the median over repeats (the spread is the
min-max range over repeats, relative to the median).
"""

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

warnings.filterwarnings("ignore", category=FutureWarning)  # ArviZ 0.x "major refactor" notice


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small settings, runs in under 2 minutes")
    p.add_argument("--repeats", type=int, default=None, help="repeats per variant (median reported)")
    p.add_argument("--seed", type=int, default=0)
    return p


def nuts_settings(quick: bool) -> dict[str, Any]:
    """The sampler settings every NUTS benchmark shares (bench_nuts and bench_blackjax compare
    engines on exactly these)."""
    n = 100 if quick else 500
    return dict(num_warmup=n, num_samples=n, num_chains=4, target_accept_prob=0.8)


def block(tree: Any) -> Any:
    """Wait for every array in ``tree`` (JAX dispatches asynchronously)."""
    return jax.block_until_ready(tree)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(result, seconds)`` of ``fn()``, blocking on its arrays."""
    t0 = time.perf_counter()
    out = block(fn())
    return out, time.perf_counter() - t0


def time_per_call(fn: Callable, *args: Any, min_time: float = 0.2, max_calls: int = 2000) -> float:
    """Seconds per call of an already compiled ``fn(*args)``: median of 5 batches, each batch
    sized to take about ``min_time / 5``."""
    block(fn(*args))
    t0 = time.perf_counter()
    block(fn(*args))
    one = max(time.perf_counter() - t0, 1e-7)
    n = int(min(max_calls, max(1, min_time / 5 / one)))
    batches = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            out = fn(*args)
        block(out)
        batches.append((time.perf_counter() - t0) / n)
    return statistics.median(batches)


def grad_time_in_loop(value_and_grad: Callable, params: Any, n: int = 500) -> float:
    """Seconds per ``value_and_grad(params)`` inside one jitted ``fori_loop`` of ``n`` calls
    (each moves ``params`` a tiny step along the gradient, so nothing is hoisted): the cost
    NUTS pays per leapfrog step, without Python dispatch. Median of 5 timed loops."""

    def body(_, p):
        _, g = value_and_grad(p)
        return jax.tree_util.tree_map(lambda a, b: a - 1e-7 * b, p, g)

    run = jax.jit(lambda p: jax.lax.fori_loop(0, n, body, p))
    block(run(params))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        block(run(params))
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def logdensity_fn(log_joint, static, args):
    """``params -> rb.log_density(log_joint, eqx.combine(params, static), *args)``: the
    potential ``rb.sample`` hands NumPyro (negated there), through the public API only."""
    import equinox as eqx

    import reparam_bridge as rb

    return lambda params: rb.log_density(log_joint, eqx.combine(params, static), *args, jacobian=True)


def warm_up_arviz() -> None:
    """Import ArviZ/xarray and convert once, so no timed extraction pays the one-off imports."""
    import reparam_bridge as rb

    rb.arviz.to_inference_data({"a": np.zeros((2, 4))}, sample_stats={"diverging": np.zeros((2, 4), bool)})
    min_bulk_ess({"a": np.random.default_rng(0).normal(size=(2, 50))})


def min_bulk_ess(draws: dict[str, np.ndarray]) -> float:
    """Smallest bulk ESS over every scalar element of ``draws`` (``{name: (chain, draw, ...)}``)."""
    import reparam_bridge as rb

    posterior = rb.arviz.group(rb.arviz.to_inference_data({k: np.asarray(v) for k, v in draws.items()}), "posterior")
    ess = rb.arviz.ess(posterior, method="bulk")
    return float(min(np.nanmin(np.asarray(v)) for v in ess.data_vars.values()))


def spread(values: Sequence[float]) -> str:
    """``median`` with the min-max range as ``±%`` of the median."""
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return "nan"
    med = statistics.median(values)
    if len(values) < 2 or med == 0:
        return f"{med:.4g}"
    half = (max(values) - min(values)) / 2 / abs(med) * 100
    return f"{med:.4g} ±{half:.0f}%"


def ratio_row(name: str, bridge: Sequence[float], native: Sequence[float], target: str = "") -> list[str]:
    """A row: figure, bridge (median ±range), native, ratio of medians, ratio range, target."""
    b, n = statistics.median(bridge), statistics.median(native)
    ratios = [x / y for x, y in zip(bridge, native) if y]
    rng = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
    return [name, spread(bridge), spread(native), f"{b / n:.3f}" if n else "nan", rng, target]


def print_table(title: str, rows: list[list[str]], header: Sequence[str] | None = None) -> str:
    header = list(header or ["figure", "bridge", "native", "bridge/native", "per-repeat", "target"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    out = [f"\n### {title}\n", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    text = "\n".join(out)
    print(text, flush=True)
    return text


def machine() -> str:
    cpus = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        model = platform.processor()
    import equinox
    import numpyro

    return (
        f"{model or platform.machine()}, {cpus} CPU cores visible, JAX {jax.__version__} "
        f"({jax.default_backend()}, {jax.device_count()} device(s)), NumPyro {numpyro.__version__}, "
        f"Equinox {equinox.__version__}, Python {platform.python_version()}"
    )
