"""How much of a ``map_estimate`` call over the hand-written optax loop a stripped repeat path could
remove (the figures in ``benchmarks/README.md``, "how much of the 3,000-step gap a stripped call
path could remove").

Not a benchmark: it reaches into the bridge's internals (the cached ``Spec``, the compiled loop
``_fitloop.run``), which ``benchmarks/`` may not. Four sides, alternating in one process, medians:

* ``bridge``: ``rb.map_estimate`` as users call it (progress bar on, default ``tol``);
* ``stripped``: per call only what a repeat needs: flatten ``(model, args)``, the compiled loop,
  the one read of its summary, the NaN check, ``report`` and the result (no argument checks, no
  cached pre-flight checks, no plan, no bar logic);
* ``program``: flatten, dispatch the compiled loop and wait for its losses (nothing read);
* ``hand``: ``jit`` + ``lax.scan`` on raw arrays (``benchmarks/bench_fit.py``'s hand loop).

    taskset -c 1 python experiments/fit_call_breakdown.py --steps 3000 --calls 150
"""

import argparse
import contextlib
import os
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import reparam_bridge as rb  # noqa: E402
from benchmarks.bench_fit import PowerLaw, log_joint, make_hand_loop  # noqa: E402
from reparam_bridge import _checks, _convergence, _fit, _fitloop  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--calls", type=int, default=150)
    opts = parser.parse_args()
    steps = opts.steps
    warnings.simplefilter("ignore")  # Adam x 3,000 does not reach tol: map_estimate warns every call
    x = jnp.linspace(0.5, 5.0, 200)
    y = 2.5 * x**1.7 + 0.3 * jax.random.normal(jax.random.key(0), x.shape)
    optimizer = optax.adam(1e-2)
    model = PowerLaw(rb.Positive(1.0), rb.Real(1.0), rb.Positive(1.0))
    raw = (jnp.array(0.0), jnp.array(1.0), jnp.array(0.0))
    hand = make_hand_loop(optimizer, steps)

    def bridge():
        return rb.map_estimate(model, log_joint, x, y, optimizer=optimizer, steps=steps, progress_bar=True)

    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        for _ in range(3):  # compile, time the loop, settle on one chunk
            bridge()
    spec = next(reversed(_fit._SPECS.values()))  # the Spec the calls above made and kept
    assert spec.state is not None, "the optimiser's initial state is expected to be a kept constant"
    tolerance = _convergence.Tolerance(1e-3, None)  # map_estimate's default

    def stripped(read=True):
        leaves, _, _ = _checks.flat_signature((model, (x, y)))
        arrays = spec.arrays(leaves)
        origin = [arrays[k] for k in spec.free]
        state, state_def = spec.state[1]
        losses = _fitloop.constant(0.0, spec.loss_dtype, (steps,))
        start, stop = _fitloop.constant(0, np.int32), _fitloop.constant(steps, np.int32)
        free, new_state, losses, info = _fitloop.run(spec, state_def, arrays, state, losses, start, stop, None, origin)
        if not read:
            return losses
        new_model = spec.model(spec.with_free(arrays, free))
        opt_state = jax.tree_util.tree_unflatten(state_def, new_state)
        info = _fitloop.Info.of(info, steps, steps)
        if info.first_bad >= 0:
            raise ValueError(f"step {info.first_bad} failed")
        movement = _convergence.Movement(spec.names, info.extents)
        converged = _convergence.report(
            "map_estimate", tolerance, info.losses, info.final_gnorm, movement, lambda: info.leaf_norms,
            warn=True, steps=steps,
        )  # fmt: skip
        return _fit.FitResult._of(new_model, losses, opt_state, converged, info.final_gnorm)

    np.testing.assert_array_equal(np.asarray(stripped().losses), np.asarray(bridge().losses))
    calls = {
        "bridge": lambda: bridge().losses,
        "stripped": lambda: stripped().losses,
        "program": lambda: stripped(read=False),
        "hand": lambda: hand(raw, x, y),
    }
    times = {k: [] for k in calls}
    names = list(calls)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        for i in range(opts.calls):
            for name in names[i % 4 :] + names[: i % 4]:
                t = time.perf_counter()
                jax.block_until_ready(calls[name]())
                times[name].append(time.perf_counter() - t)
    median = {k: statistics.median(v[10:]) for k, v in times.items()}
    print(f"map_estimate adam x{steps}, {opts.calls} calls each; hand loop {median['hand'] * 1e3:.2f} ms")
    for name in ("bridge", "stripped", "program"):
        gap = (median[name] - median["hand"]) * 1e6
        print(f"  {name:9s} {median[name] / median['hand']:.3f} x hand  (+{gap:.0f} us)")


if __name__ == "__main__":
    main()
