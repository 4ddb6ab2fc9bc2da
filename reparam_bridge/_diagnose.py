"""What is wrong with a model, found before compiling (:func:`check_model`) or after a
non-finite start (:func:`diagnose_nonfinite`), always naming the parameter path."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from . import _checks
from ._density import check_bijective, gather, partition
from ._naming import check_names
from ._paths import leaves_with_paths
from ._tree import unwrap


def check_model(model: PyTree, log_joint: Callable, args: tuple, what: str) -> tuple[PyTree, PyTree]:
    """Every check that needs no compilation: bijective wrappers, free arrays, scalar density."""
    _checks.check_callable("log_joint", log_joint, what)
    _checks.preflight(model, what, density=True)
    check_bijective(model, what)
    params, static = partition(model)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError(
            f"{what}: the model has no free arrays to sample (every array is frozen, static or "
            "not a float). Wrap parameters in rb.Real/rb.Positive/... or use float arrays."
        )
    values = []  # the unwrapped model's shapes, for its variables' names (no second trace)

    def density(p):
        m = unwrap(eqx.combine(p, static))
        values.append(
            jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if eqx.is_array(x) else x, m)
        )
        return log_joint(m, *args)

    try:
        out = jax.eval_shape(density, params)
    except Exception as e:
        e.add_note(f"{what}: raised by log_joint(unwrap(model), *args) while checking its output shape.")
        raise
    _checks.check_density_output(out, what)
    check_names(model, values[0], what)
    _checks.warn_unwrapped_free(model, what)
    return params, static


def check_log_likelihood(fn: Callable | None, params: PyTree, static: PyTree, args: tuple, what: str) -> None:
    """``log_likelihood`` (if given) is a function returning pointwise values: a float array with
    one entry per observation, or a dict of them (a summed scalar would make ``az.loo`` see one
    observation)."""
    if fn is None:
        return
    _checks.check_callable("log_likelihood", fn, what)
    try:
        out = eqx.filter_eval_shape(lambda p: fn(unwrap(eqx.combine(p, static)), *args), params)
    except Exception as e:
        e.add_note(f"{what}: raised by log_likelihood(unwrap(model), *args) while checking its output shape.")
        raise
    for name, leaf in out.items() if isinstance(out, dict) else [("obs", out)]:
        shaped = hasattr(leaf, "shape") and hasattr(leaf, "dtype")  # (an array's shape and dtype)
        if not (shaped and jnp.issubdtype(leaf.dtype, jnp.floating)):
            got = f"an array of {leaf.dtype}" if shaped else f"a Python {type(leaf).__name__}"
            raise TypeError(
                f"{what}: log_likelihood must return a float array of pointwise log-likelihoods (or a dict "
                f"of them); '{name}' is {got}."
            )
        if leaf.ndim == 0:
            raise ValueError(
                f"{what}: log_likelihood returned one number for '{name}'; return one log-likelihood per "
                "observation (do not sum them; a single observation as shape (1,)): az.loo and az.waic "
                "need them pointwise."
            )


def diagnose_nonfinite(model: PyTree, log_joint: Callable, args: tuple) -> str | None:
    """Say which parameter makes the log-density at ``model`` non-finite (``None`` if finite)."""
    bijectors = gather(model).bijectors
    for b in bijectors:
        path, node, value = b.path, b.node, b.value
        if not all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree_util.tree_leaves(value)):
            return f"the value of '{path}' ({type(node).__name__}) is not finite"
        if not bool(jnp.isfinite(jnp.sum(b.log_det))):
            return f"the log-Jacobian of '{path}' ({type(node).__name__}) is not finite"
        prior = getattr(node, "prior", None)
        if prior is not None and not bool(jnp.isfinite(jnp.sum(prior.log_prob(value)))):
            return f"the prior of '{path}' is not finite at its value {np.asarray(value)}"
    params, static = partition(model)
    for path, leaf in leaves_with_paths(params):
        if leaf is not None and not bool(jnp.all(jnp.isfinite(leaf))):
            return f"the free array '{path}' holds non-finite values"
    lj = lambda p: log_joint(unwrap(eqx.combine(p, static)), *args)
    try:
        value = jax.jit(lj)(params)  # jitted: NumPyro's argument validation raises only eagerly
    except Exception:  # the search below still names the parameter
        value = jnp.nan
    if bool(jnp.isfinite(value)):
        return None
    # log_joint itself is -inf/nan (say, a data-dependent bound is violated): name the
    # parameters that, moved alone, make it finite; else those with a non-finite gradient.
    owners = sorted((b.path for b in bijectors), key=len, reverse=True)
    name = lambda path: next((o for o in owners if path == o or path.startswith(o + ".")), path)
    suspects = list(dict.fromkeys(name(p) for p in _movable_leaves(jax.jit(lj), params)))
    if suspects:
        return (
            f"log_joint(unwrap(model), *args) is {float(value)} at the initial point and becomes finite "
            f"when only {', '.join(repr(s) for s in suspects)} is moved: its initial value is outside "
            "what log_joint allows (e.g. a bound that depends on the data)"
        )
    grads = jax.grad(lambda p: jnp.nan_to_num(lj(p), nan=-1e30, neginf=-1e30))(params)
    suspects = [name(p) for p, g in leaves_with_paths(grads) if g is not None and not bool(jnp.all(jnp.isfinite(g)))]
    where = f"; the parameters involved: {', '.join(suspects)}" if suspects else ""
    return f"log_joint(unwrap(model), *args) is {float(value)} at the initial point{where}"


def _movable_leaves(fn: Callable, params: PyTree) -> list[str]:
    """Paths of the free arrays which, shifted alone in unconstrained space, make ``fn`` finite."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    paths = [path for path, _ in leaves_with_paths(params)]
    found = []
    for i, leaf in enumerate(leaves):
        for step in (0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 4.0, -4.0, 8.0, -8.0, 16.0, -16.0):
            moved = [leaf + step if j == i else x for j, x in enumerate(leaves)]
            if bool(jnp.isfinite(fn(jax.tree_util.tree_unflatten(treedef, moved)))):
                found.append(paths[i])
                break
    return found
