"""Optimisation benchmarks: ``rb.map_estimate`` / ``rb.fit`` against the same loop written by
hand in optax, and the cost of unwrapping a wrapped Equinox MLP in a jitted forward pass.

Everything runs side by side in one process on the same data, alternating which side goes
first, several repeats, medians reported. Ratios are bridge / hand-written (lower is better).

``rb.map_estimate`` runs as users run it, with its progress bar on (tqdm writes to stderr,
sent to ``os.devnull`` here so that the tables stay readable).

    python benchmarks/bench_fit.py           # full (about 3 min on 2 CPU cores)
    python benchmarks/bench_fit.py --quick   # smoke run (about 30 s)
    python benchmarks/bench_fit.py --processes 5   # the Adam rows in 5 fresh processes: median ratio
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpyro.distributions as dist
import optax

import reparam_bridge as rb


def block(out):
    """Wait for a call's result. For a run of one step or more, ``rb.map_estimate`` /
    ``rb.fit`` return the model and optimiser state as outputs of the compiled loop whose summary
    they read before returning (the NaN and convergence checks), so those are computed on return;
    the losses are that loop's output too, or (stopped early) a fresh copy: waiting on them is
    enough (checked by :func:`check_ready`). Flattening the whole result to wait on every leaf
    would charge the bridge ~50 us of harness work a call (Equinox's Python flatten of the model
    and of the optimiser state, 3x that on cold caches after a computation) that the hand loop's
    tuple does not pay."""
    return jax.block_until_ready(out.losses if isinstance(out, rb.FitResult) else out)


def check_ready(result):
    """Every array of a just-returned :class:`rb.FitResult` but its losses is computed (what
    :func:`block` relies on)."""
    arrays = jax.tree_util.tree_leaves((result.model, result.opt_state))
    pending = [x for x in arrays if isinstance(x, jax.Array) and not x.is_ready()]
    assert not pending, f"map_estimate returned {len(pending)} arrays still being computed"


def timed(fn):
    t = time.perf_counter()
    block(fn())
    return time.perf_counter() - t


# --------------------------------------------------------------------------------------
# (a) map_estimate vs a hand-written optax loop


class PowerLaw(eqx.Module):
    amplitude: object
    power: object
    noise: object


def log_joint(m, x, y):
    return dist.Normal(m.amplitude * x**m.power, m.noise).log_prob(y).sum()


def neg_log_p(raw, x, y):
    """``-log_joint`` written by hand on raw unconstrained arrays (exp by hand), for the hand loops."""
    log_a, power, log_noise = raw
    return -dist.Normal(jnp.exp(log_a) * x**power, jnp.exp(log_noise)).log_prob(y).sum()


def make_hand_loop(optimizer, steps):
    """The loop a user would write: raw unconstrained arrays, exp by hand, jit + lax.scan."""

    @jax.jit
    def run(raw, x, y):
        def step(carry, _):
            raw, state = carry
            value, grad = jax.value_and_grad(neg_log_p)(raw, x, y)
            updates, state = optimizer.update(
                grad, state, raw, value=value, grad=grad, value_fn=lambda r: neg_log_p(r, x, y)
            )
            return (optax.apply_updates(raw, updates), state), value

        (raw, state), losses = jax.lax.scan(step, (raw, optimizer.init(raw)), None, length=steps)
        return raw, losses

    return run


def make_python_loop(optimizer, steps):
    """The loop most optax users write: a jitted step called from a Python loop under a tqdm
    bar (one dispatch per step; the losses stay on the device, so dispatch stays asynchronous)."""
    from tqdm.auto import tqdm

    @jax.jit
    def step(raw, state, x, y):
        value, grad = jax.value_and_grad(neg_log_p)(raw, x, y)
        updates, state = optimizer.update(grad, state, raw)
        return optax.apply_updates(raw, updates), state, value

    def run(raw, x, y):
        state, losses = optimizer.init(raw), []
        for _ in tqdm(range(steps)):
            raw, state, value = step(raw, state, x, y)
            losses.append(value)
        return raw, jnp.stack(losses)

    return run


def cpu_timed(fn):
    t = time.process_time()
    block(fn())
    return time.process_time() - t


def bench_map(optimizer_name, steps, repeats, n_data=200, progress_bar=True, python_loop=True):
    """Steady-state wall and CPU time of ``steps`` steps, compile time, and, from a second
    run of ``steps // 10``, the per-step cost and the fixed cost of one call."""
    x = jnp.linspace(0.5, 5.0, n_data)
    y = 2.5 * x**1.7 + 0.3 * jax.random.normal(jax.random.key(0), x.shape)
    optimizer = {"adam": optax.adam(1e-2), "lbfgs": optax.lbfgs()}[optimizer_name]
    model = PowerLaw(rb.Positive(1.0), rb.Real(1.0), rb.Positive(1.0))
    raw = (jnp.array(0.0), jnp.array(1.0), jnp.array(0.0))
    short = max(steps // 10, 1)
    hands = {steps: make_hand_loop(optimizer, steps), short: make_hand_loop(optimizer, short)}

    def call(side, n):
        if side == "bridge":
            return lambda: rb.map_estimate(
                model, log_joint, x, y, optimizer=optimizer, steps=n, progress_bar=progress_bar
            )
        return lambda: hands[n](raw, x, y)

    first = {side: timed(call(side, steps)) for side in ("bridge", "hand")}  # trace+compile+run
    for side in ("bridge", "hand"):
        timed(call(side, short))
    wall = {"bridge": [], "hand": []}
    cpu = {(side, n): [] for side in ("bridge", "hand") for n in (steps, short)}
    for r in range(repeats):
        order = ("bridge", "hand") if r % 2 == 0 else ("hand", "bridge")
        for side in order:
            wall[side].append(timed(call(side, steps)))
            for n in (steps, short):
                cpu[side, n].append(cpu_timed(call(side, n)))
    med = lambda v: statistics.median(v)  # noqa: E731
    steady = {k: med(v) for k, v in wall.items()}
    c = {k: med(v) for k, v in cpu.items()}
    per_step = {side: (c[side, steps] - c[side, short]) / (steps - short) for side in ("bridge", "hand")}
    fixed = {side: c[side, short] - per_step[side] * short for side in ("bridge", "hand")}
    compile_ = {k: first[k] - steady[k] for k in first}
    python_loop_s = None
    if python_loop and optimizer_name == "adam":  # the common hand-written alternative, for scale (a few runs)
        loop = make_python_loop(optimizer, steps)
        timed(lambda: loop(raw, x, y))
        python_loop_s = statistics.median(timed(lambda: loop(raw, x, y)) for _ in range(3))
    result = call("bridge", steps)()
    check_ready(result)
    b = rb.unwrap(result.model)
    h = call("hand", steps)()[0]
    agree = abs(float(b.power) - float(h[1])) < 1e-3
    return {
        "case": f"map_estimate {optimizer_name} x{steps}",
        "bridge_s": steady["bridge"],
        "hand_s": steady["hand"],
        "ratio": steady["bridge"] / steady["hand"],
        "cpu_ratio": c["bridge", steps] / c["hand", steps],
        "step_ratio": per_step["bridge"] / per_step["hand"],
        "step_us": (per_step["bridge"] * 1e6, per_step["hand"] * 1e6),
        "fixed_ms": (fixed["bridge"] * 1e3, fixed["hand"] * 1e3),
        "compile_ratio": compile_["bridge"] / compile_["hand"],
        "bridge_compile_s": compile_["bridge"],
        "hand_compile_s": compile_["hand"],
        "agree": agree,
        "python_loop_s": python_loop_s,
    }


def bench_one_step(repeats, n_data=200):
    """The fixed cost of a call: one Adam step, bridge (bar on, as users run it) and hand loop,
    alternating, medians of wall time. What the bridge adds per call, whatever the run length."""
    x = jnp.linspace(0.5, 5.0, n_data)
    y = 2.5 * x**1.7 + 0.3 * jax.random.normal(jax.random.key(0), x.shape)
    optimizer = optax.adam(1e-2)
    model = PowerLaw(rb.Positive(1.0), rb.Real(1.0), rb.Positive(1.0))
    raw = (jnp.array(0.0), jnp.array(1.0), jnp.array(0.0))
    hand = make_hand_loop(optimizer, 1)
    calls = {
        "bridge": lambda: rb.map_estimate(model, log_joint, x, y, optimizer=optimizer, steps=1, progress_bar=True),
        "hand": lambda: hand(raw, x, y),
    }
    for fn in calls.values():  # compile, and let the bridge time its loop (no bar from the third call)
        for _ in range(3):
            timed(fn)
    check_ready(calls["bridge"]())
    times = {"bridge": [], "hand": []}
    for r in range(repeats):
        for side in ("bridge", "hand") if r % 2 == 0 else ("hand", "bridge"):
            times[side].append(timed(calls[side]))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"case": "map_estimate adam x1", "bridge_s": med["bridge"], "hand_s": med["hand"]}


# --------------------------------------------------------------------------------------
# (b) unwrap overhead in a jitted forward pass


def wrap_mlp(mlp, wrapper):
    def _wrap(x):
        return wrapper(x) if eqx.is_inexact_array(x) else x

    return jax.tree_util.tree_map(_wrap, mlp)


def bench_forward(wrapper_name, repeats, batch=256, width=256, depth=3, inner=50):
    mlp = eqx.nn.MLP(64, 8, width, depth, key=jax.random.key(0))
    if wrapper_name == "Positive":  # keep the values the same: wrap |w|, compare to plain |w|
        mlp = jax.tree_util.tree_map(lambda x: jnp.abs(x) + 1e-3 if eqx.is_inexact_array(x) else x, mlp)
    wrapper = {"Real": rb.Real, "Positive": rb.Positive}[wrapper_name]
    wrapped = wrap_mlp(mlp, wrapper)
    xs = jax.random.normal(jax.random.key(1), (batch, 64))

    # ``inner`` forward passes per call (a scan), so that the dispatch cost does not dominate
    def forward_fn(unwrap):
        @eqx.filter_jit
        def f(model, xs):
            def body(c, _):
                out = jax.vmap(unwrap(model))(xs + c)
                return c + 1e-3 * out.mean(), None

            return jax.lax.scan(body, 0.0, None, length=inner)[0]

        return f

    plain_f = forward_fn(lambda m: m)
    wrapped_f = forward_fn(rb.unwrap)
    timed(lambda: plain_f(mlp, xs))
    timed(lambda: wrapped_f(wrapped, xs))
    times = {"bridge": [], "hand": []}
    for r in range(repeats):
        order = ("bridge", "hand") if r % 2 == 0 else ("hand", "bridge")
        for side in order:
            fn = (lambda: wrapped_f(wrapped, xs)) if side == "bridge" else (lambda: plain_f(mlp, xs))
            times[side].append(timed(fn))
    steady = {k: statistics.median(v) for k, v in times.items()}
    return {
        "case": f"MLP forward, rb.{wrapper_name} weights",
        "bridge_s": steady["bridge"],
        "hand_s": steady["hand"],
        "ratio": steady["bridge"] / steady["hand"],
    }


def across_processes(n, repeats, lengths):
    """Each Adam row in ``n`` fresh processes, in turn, and the median of their wall ratios."""
    ratios = {steps: [] for steps in lengths}
    for i in range(n):
        for steps in lengths:
            reps = repeats if steps == lengths[0] else max(3, repeats // 3)  # as in the tables
            cmd = [sys.executable, __file__, "--one", str(steps), "--repeats", str(reps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            ratios[steps].append(r["ratio"])
            print(
                f"process {i + 1}: adam x{steps}: {r['bridge_s'] * 1e3:.2f}/{r['hand_s'] * 1e3:.2f} ms = "
                f"{r['ratio']:.3f} (per step {r['step_ratio']:.3f})",
                flush=True,
            )
    for steps, v in ratios.items():
        print(
            f"map_estimate adam x{steps}: median of {n} processes {statistics.median(v):.3f} "
            f"(range {min(v):.3f}-{max(v):.3f})"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
    parser.add_argument("--repeats", type=int, default=None, help="repeats (default 21, --quick 5)")
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="instead of the tables: the adam rows again in this many fresh processes, each its own "
        "alternating repeats, and the median of their ratios (one process's ratio moves by up to "
        "+-0.1 with where its code lands in memory)",
    )
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child of --processes
    opts = parser.parse_args()
    repeats = opts.repeats or (5 if opts.quick else 21)
    steps = 500 if opts.quick else 3000
    long_steps = 2000 if opts.quick else 20000
    if opts.one is not None:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            r = bench_map("adam", opts.one, repeats, python_loop=False)
        print(json.dumps({k: r[k] for k in ("ratio", "bridge_s", "hand_s", "step_ratio")}))
        return
    if opts.processes:
        across_processes(opts.processes, repeats, (steps, long_steps))
        return

    print(
        f"machine: {platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
        f"jax {jax.__version__}, optax {optax.__version__}"
    )
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):  # the progress bars
        rows = [
            bench_map("adam", steps, repeats),
            bench_map("adam", long_steps, max(3, repeats // 3)),
            bench_map("lbfgs", steps // 10, repeats),
        ]
    print(
        "\n(a) map_estimate (progress bar on) vs hand-written optax loop (jit + lax.scan on raw "
        "arrays); ratios bridge/hand, medians; last column: the same steps as a Python loop over a "
        "jitted step under tqdm (median of 3)"
    )
    print(
        f"{'case':26s} {'wall b/h (ms)':>15s} {'wall':>6s} {'cpu':>6s} {'per-step b/h (us)':>18s} "
        f"{'step':>6s} {'fixed b/h (ms)':>15s} {'compile b/h (s)':>16s} {'compile':>7s}  same optimum"
        "  python loop (ms)"
    )
    for r in rows:
        print(
            f"{r['case']:26s} {r['bridge_s'] * 1e3:7.2f}/{r['hand_s'] * 1e3:<7.2f} {r['ratio']:6.3f} "
            f"{r['cpu_ratio']:6.3f} {r['step_us'][0]:8.2f}/{r['step_us'][1]:<9.2f} {r['step_ratio']:6.3f} "
            f"{r['fixed_ms'][0]:7.3f}/{r['fixed_ms'][1]:<7.3f} {r['bridge_compile_s']:7.2f}/"
            f"{r['hand_compile_s']:<8.2f} {r['compile_ratio']:7.2f}  {str(r['agree']):12s}"
            + (f"  {r['python_loop_s'] * 1e3:.0f}" if r["python_loop_s"] else "")
        )
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one Adam step does not converge: map_estimate warns
        one = bench_one_step(max(101, 10 * repeats))
    print(
        f"{one['case']:26s} {one['bridge_s'] * 1e3:7.3f}/{one['hand_s'] * 1e3:<7.3f} "
        f"(ms; the fixed cost of a call: bridge minus hand = {(one['bridge_s'] - one['hand_s']) * 1e3:.2f} ms)"
    )
    print("\n(b) jitted forward pass, wrapped vs plain Equinox MLP (64-256-256-256-8, batch 256)")
    print(f"{'case':32s} {'bridge s':>10s} {'plain s':>10s} {'ratio':>7s}")
    for name in ("Real", "Positive"):
        r = bench_forward(name, repeats)
        print(f"{r['case']:32s} {r['bridge_s']:10.4f} {r['hand_s']:10.4f} {r['ratio']:7.3f}")
    print(
        "\ntargets: map_estimate/hand <= 1.05; rb.Real-wrapped/plain forward <= 1.02 "
        "(rb.Positive pays one exp per weight per pass: reported, no target)"
    )


if __name__ == "__main__":
    main()
