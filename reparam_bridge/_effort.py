"""How hard XLA optimises the programs of ``rb.sample`` and ``rb.laplace``: ``rb.compile_effort``.

On CPU, XLA spends most of a small model's time-to-posterior optimising the programs it
compiles: NUTS on eight schools compiles for ~6 s and then runs 4 x 1,300 transitions in ~3 s.
With JAX's ``jax_disable_most_optimizations`` the same program compiles in ~3 s, while each
element-wise operation runs 2-5x slower on the models measured (matrix products call the same library routines either
way). So a small model is faster end to end with less optimisation, and a large one much slower
(a 400-kflop gradient: 68 -> 286 us; some graphs far more). ``"auto"`` decides per call from the
work the run will do, counted on the density's jaxpr (deterministic for a model and run length).
Measurements: ``benchmarks/README.md`` ("compile effort").
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
# optimisation, measured on this project's CPU VM: ~0.5 ns for a Student-t regression's gradient
# (N=1,000: 7.6 -> 37.8 us for ~60,000 operations), ~1.7 ns in NUTS on gp_pois_regr (4 chains x
# 1,300 transitions of ~170 leapfrogs: 12 -> 27 s); and the extra the run may cost at most,
# about a third of what less optimisation saves on NUTS's compile (~3 s on eight schools).
_SECONDS_PER_OP = 1.5e-9
_BUDGET_SECONDS = 1.0
_GRADIENT_COST = 3.0  # a value and its gradient against the value alone (reverse mode)


def _current() -> str:
    mode = getattr(_local, "mode", None) or os.environ.get("REPARAM_BRIDGE_COMPILE_EFFORT", "auto")
    if mode not in _MODES:
        raise ValueError(f"compile effort must be one of {_MODES}, got {mode!r} (REPARAM_BRIDGE_COMPILE_EFFORT).")
    return mode


@contextlib.contextmanager
def compile_effort(mode: str) -> Iterator[None]:
    """How much XLA optimises the programs that ``rb.sample`` and ``rb.laplace`` called in
    this block (this thread) compile: ``"auto"`` (the default; the environment variable
    ``REPARAM_BRIDGE_COMPILE_EFFORT`` sets the default), ``"full"`` (XLA's default optimisation,
    always) or ``"quick"`` (``jax_disable_most_optimizations`` while they run: about half the
    compile time; element-wise code runs slower, 2-5x on the models measured, far more on some
    graphs). ``"auto"`` is quick on CPU only when the run's counted element-wise work is small
    enough that it should cost under a second more. The draws for a key depend on the choice
    (floating-point rounding), never their distribution. ``Posterior.resume`` reuses its run's
    compiled sampler where it is still in memory, and otherwise (after ``Posterior.load``)
    compiles as its run did under ``"auto"`` (the same draws as an uninterrupted run) or as an
    explicit mode says.

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
    trip count is unknown) or a jaxpr that cannot be made or counted."""
    try:
        ops = _count(jax.make_jaxpr(fn)(*args).jaxpr)
    except Exception:  # noqa: BLE001 - any failure means "do not guess": full optimisation
        return math.inf
    return ops if math.isfinite(ops) else math.inf


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


# Gradients per NUTS transition assumed: a tree of depth 6. Warm-started chains on the
# posteriordb regressions of benchmarks/ take 3-15, eight schools ~10, gp_pois_regr ~170 (which
# the bound then leaves at full optimisation: 3,300 operations a gradient).
_LEAPFROGS_PER_TRANSITION = 64


def sampler_evaluations(num_chains: int, transitions: int, kernel_kwargs: dict) -> int:
    """The gradients a run of ``transitions`` NUTS (or HMC, ``num_steps`` each) transitions per
    chain is assumed to take."""
    per = kernel_kwargs.get("num_steps") or _LEAPFROGS_PER_TRANSITION
    return num_chains * transitions * int(per)


def decide(ops: Callable[[], float], evaluations: float) -> bool:
    """Whether to compile with less optimisation: as ``compile_effort`` says, else (``"auto"``)
    never off CPU (not measured there) and on CPU when ``evaluations`` gradients of a density of
    ``ops()`` element-wise operations (counted only then: it traces the density) would cost at
    most ``_BUDGET_SECONDS`` more."""
    mode = _current()
    if mode != "auto":
        return mode == "quick"
    if jax.default_backend() != "cpu":
        return False
    return _GRADIENT_COST * ops() * evaluations * _SECONDS_PER_OP <= _BUDGET_SECONDS


def explicit() -> bool | None:
    """``True``/``False`` where ``compile_effort`` asks for ``"quick"``/``"full"``, else ``None``."""
    mode = _current()
    return None if mode == "auto" else mode == "quick"


_LOCK = threading.RLock()


@contextlib.contextmanager
def effort(quick_compile: bool) -> Iterator[None]:
    """The programs compiled in this block with less optimisation if ``quick_compile``.

    ``jax_disable_most_optimizations`` is a process-wide flag read when a program compiles (not
    part of JAX's cache key; NumPyro's programs take no per-program options): it is set for the
    block and restored after it, even on error. One block at a time (a lock: two overlapping
    blocks cannot restore it out of order). A program that another thread compiles meanwhile
    gets the same setting; caches of compiled programs kept here key on it (``flag()``)."""
    if not quick_compile:
        yield
        return
    with _LOCK:
        before = flag()
        jax.config.update("jax_disable_most_optimizations", True)
        try:
            yield
        finally:
            jax.config.update("jax_disable_most_optimizations", before)


def flag() -> bool:
    """Whether programs compiled now get less optimisation (for the keys of compiled-program caches)."""
    return bool(jax.config.read("jax_disable_most_optimizations"))
