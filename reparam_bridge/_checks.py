"""Pre-flight checks shared by every public entry point (nothing here compiles or samples).

Each check raises ``TypeError``/``ValueError`` naming the argument or the parameter path and
what to do, or, where the library cannot know whether something is a mistake, warns once
with ``rb.ReliabilityWarning``. Entry points call :func:`preflight` (the model) and the
small argument checks before any ``jit``, so a typo costs nothing.

Example:
    >>> import reparam_bridge as rb
    >>> check_int("num_chains", 0, "rb.sample", minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: rb.sample: num_chains must be an int >= 1, got 0.
"""

import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree
from numpyro.distributions import Distribution

from ._caches import Cache
from ._paths import path_to_str
from ._tree import NonTrainable, Unwrappable


class ReliabilityWarning(UserWarning):
    """A result or an input the library cannot vouch for (non-converged fit, untrustworthy
    draws, a free array that may be data). The message says what and why."""


# ----------------------------------------------------------------------------------------
# arguments


def check_int(name: str, value: Any, what: str, *, minimum: int = 0) -> int:
    """``value`` as an int ``>= minimum`` (bools are refused: ``True`` is no count)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what}: {name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def check_positive_float(name: str, value: Any, what: str, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int past float's range
        v = float("nan")
    if not (math.isfinite(v) and v > 0):  # a Python float: NumPy's scalar ufunc cost ~1 us
        raise ValueError(f"{what}: {name} must be a finite float > 0{' or None' if allow_none else ''}, got {value!r}.")
    return v


def check_key(key: Any, what: str) -> None:
    """A JAX PRNG key: a typed key (``jax.random.key``) or a raw ``uint32[2]`` (``PRNGKey``)."""
    if key is None:
        raise TypeError(f"{what}: needs key=jax.random.key(...) (or jax.random.PRNGKey(...)).")
    if not isinstance(key, jax.Array):
        raise TypeError(f"{what}: key must be a JAX PRNG key (jax.random.key(0)), got {type(key).__name__}.")
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{what}: key must be a single key, got a batch of shape {key.shape}; pass one key.")
        return
    if key.dtype != jnp.uint32 or key.shape != (2,):
        raise TypeError(
            f"{what}: key must be jax.random.key(seed) or jax.random.PRNGKey(seed), got an array of "
            f"dtype {key.dtype} and shape {key.shape}."
        )


def check_choice(name: str, value: Any, choices: Iterable[Any], what: str) -> None:
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{what}: {name}={value!r} is not one of {choices}.")


def check_callable(name: str, fn: Any, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"{what}: {name} must be a function fn(unwrapped_model, *args), got {type(fn).__name__}.")


def check_sample_args(num_warmup, num_samples, num_chains, chain_method, kernel, init_jitter, thinning):
    """The scalar arguments of ``rb.sample``, checked before anything is traced."""
    what = "rb.sample"
    if num_warmup is not None:  # None: the default, shorter for a seeded start (init=approx)
        check_int("num_warmup", num_warmup, what, minimum=0)
    check_int("num_samples", num_samples, what, minimum=1)
    check_int("num_chains", num_chains, what, minimum=1)
    check_int("thinning", thinning, what, minimum=1)
    if thinning > num_samples:
        raise ValueError(f"{what}: thinning={thinning} keeps no draw of num_samples={num_samples}; lower it.")
    if chain_method is not None and not callable(chain_method):
        check_choice("chain_method", chain_method, ("parallel", "vectorized", "sequential", "sharded"), what)
    if isinstance(kernel, str):
        check_choice("kernel", kernel.lower(), ("nuts", "hmc"), what)
    elif not callable(kernel):
        raise TypeError(f"{what}: kernel must be 'nuts', 'hmc' or a NumPyro kernel class, got {kernel!r}.")
    try:
        ok = float(init_jitter) >= 0 and np.isfinite(float(init_jitter))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what}: init_jitter must be a finite float >= 0, got {init_jitter!r}.")


def check_checkpoint_args(checkpoint: Any, every: Any, num_samples: int, thinning: int) -> int | None:
    """The chunk length for ``rb.sample(checkpoint=...)`` (``None`` without a checkpoint)."""
    what = "rb.sample"
    if checkpoint is None:
        if every is not None:
            raise ValueError(f"{what}: checkpoint_every={every!r} needs checkpoint=DIRECTORY.")
        return None
    if not isinstance(checkpoint, (str, bytes)) and not hasattr(checkpoint, "__fspath__"):
        raise TypeError(f"{what}: checkpoint must be a directory path, got {type(checkpoint).__name__}.")
    if thinning != 1:
        raise ValueError(
            f"{what}: checkpoint= needs thinning=1 (chunks of thinned draws would not line up); "
            "thin the draws after sampling instead."
        )
    if os.path.exists(os.path.join(os.fspath(checkpoint), "checkpoint.json")):
        raise FileExistsError(
            f"{what}: {os.fspath(checkpoint)} already holds a checkpoint. Continue it with "
            "rb.Posterior.load(directory, model).resume(), or give an empty directory."
        )
    if every is None:
        return max(1, num_samples // 10)
    return check_int("checkpoint_every", every, what, minimum=1)


def check_kernel_kwargs(kernel: Any, kwargs: dict[str, Any], what: str) -> None:
    """Unknown kernel options fail here, not after the first compilation."""
    try:
        params = inspect.signature(kernel).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in kwargs if k not in params or k == "potential_fn"]
    if unknown:
        known = sorted(k for k in params if k not in ("model", "potential_fn"))
        raise TypeError(
            f"{what}: {getattr(kernel, '__name__', kernel)} has no option {unknown[0]!r} "
            f"(passed as **kernel_kwargs); its options are {known}."
        )


# ----------------------------------------------------------------------------------------
# the model tree


def _foreign_base() -> type | None:
    # paramax stays optional: if it was never imported, no paramax wrapper can be in a tree.
    paramax = sys.modules.get("paramax")
    return getattr(paramax, "AbstractUnwrappable", None) if paramax is not None else None


def foreign_wrappers(tree: PyTree) -> list[tuple[str, str]]:
    """``(path, "paramax.Class")`` of every wrapper from another library (paramax, flowjax)
    that rb's ``unwrap`` does not know; ``[]`` when paramax is not imported."""
    base = _foreign_base()
    if base is None:
        return []
    is_foreign = lambda x: isinstance(x, base) and not isinstance(x, Unwrappable)
    return [
        (path_to_str(path), f"{type(leaf).__module__.split('.')[0]}.{type(leaf).__name__}")
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_foreign)[0]
        if is_foreign(leaf)
    ]


def check_no_foreign(tree: PyTree, what: str) -> None:
    bad = foreign_wrappers(tree)
    if bad:
        path, cls = bad[0]
        more = f" (and {len(bad) - 1} more: {', '.join(p for p, _ in bad[1:])})" if len(bad) > 1 else ""
        raise TypeError(
            f"{what}: the node at '{path}' is a {cls}, a wrapper rb does not unwrap, so its arrays "
            f"would be treated as free parameters{more}. Use the rb equivalent (rb.NonTrainable, "
            "rb.Parameterize, rb.WeightNormalization), or call paramax.unwrap on that node first."
        )


def _is_frozen(x: Any) -> bool:
    return isinstance(x, (NonTrainable, Distribution))


def _free_leaves(tree: PyTree) -> list[tuple[str, Any, bool]]:
    """``(path, leaf, inside_a_wrapper)`` for every leaf that ``partition`` makes free."""
    out = []

    def visit(node, prefix, inside):
        is_leaf = lambda x: x is not node and (_is_frozen(x) or isinstance(x, Unwrappable))
        for path, leaf in jax.tree_util.tree_flatten_with_path(node, is_leaf=is_leaf)[0]:
            if _is_frozen(leaf):
                continue
            if isinstance(leaf, Unwrappable) and leaf is not node:
                visit(leaf, prefix + tuple(path), True)
            elif eqx.is_inexact_array(leaf):
                out.append((path_to_str(prefix + tuple(path)), leaf, inside))

    visit(tree, (), isinstance(tree, Unwrappable) and not _is_frozen(tree))
    return out


def preflight(model: PyTree, what: str, *, density: bool) -> None:
    """Checks of the model tree alone, before anything is compiled.

    ``density``: the free arrays parameterise a log-density (``sample``, ``map_estimate``,
    ``laplace``), so complex free arrays are refused."""
    check_no_foreign(model, what)
    leaves = _free_leaves(model)
    if density:
        cplx = [p for p, x, _ in leaves if jnp.iscomplexobj(x)]
        if cplx:
            raise TypeError(
                f"{what}: the free array at '{cplx[0]}' is complex; a log-density needs real "
                "parameters. Store the real and imaginary parts as two real arrays."
            )
    if jax.config.jax_enable_x64:
        narrow = [(p, x.dtype) for p, x, _ in leaves if jnp.finfo(x.dtype).bits < 64 and not jnp.iscomplexobj(x)]
        wide = [p for p, x, _ in leaves if jnp.finfo(x.dtype).bits >= 64]
        if narrow and (density or wide):
            path, dtype = narrow[0]
            raise TypeError(
                f"{what}: the free array at '{path}' is {dtype} while jax_enable_x64 is on (JAX's "
                "samplers and the other arrays are float64, and mixed precision fails inside them). "
                "Build the model with float64 values, e.g. jax.tree_util.tree_map(lambda x: "
                "x.astype('float64') if eqx.is_inexact_array(x) else x, model)."
            )


_WARNED: set[tuple[str, str]] = set()


def warn_unwrapped_free(model: PyTree, what: str) -> None:
    """Warn, once per path, about free float arrays outside every wrapper: the sampler treats
    them as parameters, but they may be data stored on the module."""
    loose = [p for p, _, inside in _free_leaves(model) if not inside and (what, p) not in _WARNED]
    if loose:
        _WARNED.update((what, p) for p in loose)
        warnings.warn(
            f"{what}: the float array(s) at {', '.join(repr(p) for p in loose)} are outside every "
            "wrapper, so they are sampled as free parameters with whatever prior log_joint gives "
            "them. If that is data, wrap it in rb.NonTrainable (or store it as an argument); if it "
            "is a parameter, wrap it in rb.Real(...) to say so and silence this warning.",
            ReliabilityWarning,
            stacklevel=3,
        )


def check_density_output(out: Any, what: str, fn_name: str = "log_joint") -> None:
    """``out`` (from ``jax.eval_shape``) must be a real floating scalar."""
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(f"{what}: {fn_name} must return a JAX scalar, got {type(out).__name__}.")
    if shape != ():
        raise ValueError(
            f"{what}: {fn_name} must return a scalar log-density, got shape {shape}; sum the "
            "pointwise terms (and pass log_likelihood= for the pointwise version)."
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{what}: {fn_name} returned a {dtype} scalar; a log-density must be a real float "
            "(an integer or boolean result has zero gradient and makes a flat target). Return "
            "the float log-density, e.g. dist.Normal(...).log_prob(y).sum()."
        )


def tree_signature(tree: PyTree) -> Any:
    """What a check of ``tree`` can read, hashable: the tree structure, arrays by shape, dtype
    and weak type (PRNG keys included), other leaves by type and value (``1`` vs ``True``), and
    whether x64 is on. ``None`` when it is not hashable (e.g. an unhashable static field)."""
    return flat_signature(tree)[2]


def flat_signature(tree: PyTree) -> tuple[list, Any, Any]:
    """``(leaves, treedef, tree_signature(tree))`` from one flatten (a caller that also needs
    the leaves flattens once: an Equinox model's flatten is Python, ~20-40 us a call)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    try:
        sig = tuple(
            (x.shape, x.dtype, getattr(x, "weak_type", False)) if eqx.is_array(x) else (type(x), x) for x in leaves
        )
        key = (treedef, sig, jax.config.jax_enable_x64)
        hash(key)
    except Exception:
        key = None
    return leaves, treedef, key


# Checks already passed, by what they read (a signature): a repeated fit of the same model
# on new data of the same shapes skips them (bench_fit: ~0.5 ms a call against 18 ms for
# 3,000 Adam steps). A failed check raises every time; nothing is cached for it.
_PASSED = Cache(32)  # the keys may hold user functions and their closures


def once(key: Any, check: Callable[[], Any]) -> Any:
    """``check()``'s result, computed once per ``key`` (``None``: every time)."""
    if key is not None and key in _PASSED:
        return _PASSED[key]
    out = check()
    if key is not None:
        _PASSED.put(key, out)
    return out


def eval_density(
    fn: Callable, model: PyTree, args: tuple, what: str, fn_name: str = "log_joint", *, sig: Any = False
) -> None:
    """Trace ``fn(unwrap(model), *args)`` abstractly (no compile) and check its output; once
    per signature: tracing the user's function again costs more than a whole short fit
    (bench_fit: ~6 ms against 18 ms for 3,000 Adam steps), and its output's shape cannot change
    while the signature does not. ``sig``: ``tree_signature((model, args))`` if the caller has it."""
    sig = tree_signature((model, args)) if sig is False else sig
    once(None if sig is None else ("eval_density", fn, sig), lambda: _eval_density(fn, model, args, what, fn_name))


def _eval_density(fn: Callable, model: PyTree, args: tuple, what: str, fn_name: str) -> None:
    from ._density import partition
    from ._tree import unwrap

    params, static = partition(model)
    try:
        out = jax.eval_shape(lambda p: fn(unwrap(eqx.combine(p, static)), *args), params)
    except Exception as e:
        e.add_note(f"{what}: raised by {fn_name}(unwrap(model), *args) while checking its output.")
        raise
    check_density_output(out, what, fn_name)
