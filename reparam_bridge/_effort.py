"""How hard XLA optimises the programs of ``rb.sample`` and ``rb.laplace``: ``rb.compile_effort``.

On CPU, XLA spends most of a small model's time-to-posterior optimising the programs it
compiles: NUTS on eight schools compiles for ~6 s and then runs 4 x 1,300 transitions in ~3 s.
With JAX's ``jax_disable_most_optimizations`` the same program compiles in ~3 s, while each
element-wise operation runs 2-5x slower (matrix products call the same library routines either
way). So a small model is faster end to end with less optimisation, and a large one much slower
(a 400-kflop gradient: 68 -> 286 us). ``"auto"`` decides per call from the work the run will do,
counted on the density's jaxpr (deterministic: the same model and run length always get the same
programs, so the same draws for a key). Measurements: ``benchmarks/README.md``.
"""

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax

_MODES = ("auto", "full", "quick")
_local = threading.local()

# Extra seconds per element-wise operation of a run's gradients when compiled with less
# optimisation (measured on this project's CPU VM: a Student-t regression's gradient, N=1,000:
# 7.6 -> 37.8 us for ~60,000 operations, ~0.5 ns each), and the extra the run may cost at most:
# about a third of what less optimisation saves on NUTS's compile (~3 s on eight schools).
_SECONDS_PER_OP = 0.5e-9
_BUDGET_SECONDS = 1.0
_GRADIENT_COST = 3.0  # a value and its gradient against the value alone (reverse mode)


def _current() -> str:
    mode = getattr(_local, "mode", None) or os.environ.get("REPARAM_BRIDGE_COMPILE_EFFORT", "auto")
    if mode not in _MODES:
        raise ValueError(f"compile effort must be one of {_MODES}, got {mode!r} (REPARAM_BRIDGE_COMPILE_EFFORT).")
    return mode


@contextlib.contextmanager
def compile_effort(mode: str) -> Iterator[None]:
    """How much XLA optimises the programs ``rb.sample`` and ``rb.laplace`` compile in this
    block (this thread): ``"auto"`` (the default; also set by the environment variable
    ``REPARAM_BRIDGE_COMPILE_EFFORT``), ``"full"`` (XLA's default optimisation, always) or
    ``"quick"`` (``jax_disable_most_optimizations``: about half the compile time, element-wise
    work 2-5x slower). ``"auto"`` compiles quickly on CPU when the run's element-wise work is
    small enough that the slower code costs under a second; the draws for a key depend on the
    choice (floating-point rounding), never their distribution.

    Example:
        >>> import reparam_bridge as rb
        >>> with rb.compile_effort("full"):
        ...     pass  # rb.sample(...) here compiles with XLA's full optimisation
    """
    if mode not in _MODES:
        raise ValueError(f"rb.compile_effort: mode must be one of {_MODES}, got {mode!r}.")
    before = getattr(_local, "mode", None)
    _local.mode = mode
    try:
        yield
    finally:
        _local.mode = before


def elementwise_ops(fn: Callable[..., Any], *args: Any) -> float:
    """Element-wise operations of one call of ``fn(*args)``, counted on its jaxpr: the size
    of every output, times the length of each enclosing ``scan``; matrix products (library
    calls, as fast either way) count their output only. ``inf`` for a ``while_loop`` (its
    trip count is unknown) or a jaxpr that cannot be made."""
    try:
        closed = jax.make_jaxpr(fn)(*args)
    except Exception:  # noqa: BLE001 - any failure means "do not guess": full optimisation
        return math.inf
    return _count(closed.jaxpr)


def _count(jaxpr: Any) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "while":
            return math.inf
        inner = [p for p in eqn.params.values() if hasattr(p, "jaxpr") or hasattr(p, "eqns")]
        inner += [b for p in eqn.params.values() if isinstance(p, tuple) for b in p if hasattr(b, "jaxpr")]
        if inner:
            counts = [_count(getattr(j, "jaxpr", j)) for j in inner]
            work = max(counts) if name == "cond" else sum(counts)
            total += work * (eqn.params.get("length", 1) if name == "scan" else 1)
        else:
            total += sum(math.prod(getattr(v.aval, "shape", ())) for v in eqn.outvars)
    return total


# Gradients per NUTS transition assumed: a tree of depth 4, typical of a warm-started chain
# (the eight schools and posteriordb regressions of benchmarks/ take 3-15).
_LEAPFROGS_PER_TRANSITION = 16


def sampler_evaluations(num_chains: int, num_warmup: int, num_samples: int) -> int:
    """The gradients a NUTS run of this length is assumed to take."""
    return num_chains * (num_warmup + num_samples) * _LEAPFROGS_PER_TRANSITION


def quick(ops: float, evaluations: float) -> bool:
    """Whether to compile with less optimisation: never off CPU (not measured there), always
    or never as ``compile_effort`` says, else when ``evaluations`` gradients of a density of
    ``ops`` element-wise operations would cost at most ``_BUDGET_SECONDS`` more."""
    mode = _current()
    if mode != "auto":
        return mode == "quick"
    if jax.default_backend() != "cpu":
        return False
    return _GRADIENT_COST * ops * evaluations * _SECONDS_PER_OP <= _BUDGET_SECONDS


@contextlib.contextmanager
def effort(quick_compile: bool) -> Iterator[None]:
    """The programs compiled in this block with less optimisation if ``quick_compile``.

    ``jax_disable_most_optimizations`` is a process-wide flag read when a program compiles (not
    part of JAX's cache key): it is set for the block and restored after it, even on error.
    A program compiled meanwhile in another thread gets the same setting."""
    if not quick_compile:
        yield
        return
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
