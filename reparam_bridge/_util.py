"""Small helpers shared by the fitting, Laplace, geometry and sampler-adapter modules."""

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, PyTree
from numpyro.infer import NUTS

from ._density import log_density, partition
from ._paths import path_to_str


def coordinate_names(params: PyTree) -> list[str]:
    """One name per entry of ``ravel_pytree(params)``: ``"tau.unconstrained"``, ``"w[0,1]"``.

    Example:
        >>> import jax.numpy as jnp
        >>> coordinate_names({"s": jnp.zeros(()), "w": jnp.zeros((1, 2))})
        ['s', 'w[0,0]', 'w[0,1]']
    """
    names = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        base = path_to_str(path)
        shape = np.shape(leaf)
        names.extend([base] if shape == () else [f"{base}[{','.join(map(str, i))}]" for i in np.ndindex(*shape)])
    return names


class NegLogDensity(NamedTuple):
    """``-rb.log_density(log_joint, eqx.combine(params, static), *args, jacobian=jacobian)``.

    A NamedTuple, so equal wrappers compare and hash equal (a jit cache hit when it is a
    static argument, as in ``rb.map_estimate``) and cost nothing to build. ``static=None``
    (the default) means ``params`` is already the whole wrapped model.

    Example:
        >>> import reparam_bridge as rb
        >>> model = {"s": rb.Positive(1.0)}
        >>> params, static = rb.partition(model)
        >>> log_joint = lambda m: -m["s"]
        >>> float(NegLogDensity(log_joint, False)(model)), float(NegLogDensity(log_joint, True, static)(params))
        (1.0, 1.0)
        >>> NegLogDensity(log_joint, True) == NegLogDensity(log_joint, True)
        True
    """

    log_joint: Callable[..., Any]
    jacobian: bool = True
    static: PyTree = None

    def __call__(self, params: PyTree, *args: Any) -> Float[Array, ""]:
        model = params if self.static is None else eqx.combine(params, self.static)
        return -log_density(self.log_joint, model, *args, jacobian=self.jacobian)


class HessianAt(NamedTuple):
    """What :func:`neg_log_density_hessian` returns (all in the order of ``names``)."""

    flat: Float[Array, " n"]  # the free arrays of the point, flattened (``ravel_pytree``)
    unravel: Callable[[Array], PyTree]
    names: tuple[str, ...]
    neg_log_p: Callable[..., Float[Array, ""]]  # (flat free arrays, args=the data) -> -log density
    grad: Float[Array, " n"]  # of ``neg_log_p`` at ``flat``
    hessian: Float[Array, "n n"]  # of ``neg_log_p`` at ``flat``, symmetrised


def neg_log_density_hessian(log_joint: Callable[..., Any], model: PyTree, args: tuple) -> HessianAt:
    """Gradient and (symmetrised) Hessian of ``-rb.log_density(..., jacobian=True)`` over the
    flattened free arrays of ``model``, at ``model``; one compiled call.

    Example:
        >>> import jax.numpy as jnp, numpyro.distributions as dist
        >>> import reparam_bridge as rb
        >>> model = {"x": rb.Real(jnp.zeros(2))}
        >>> log_joint = lambda m: dist.Normal(0.0, jnp.array([1.0, 2.0])).log_prob(m["x"]).sum()
        >>> h = neg_log_density_hessian(log_joint, model, ())
        >>> h.names, [round(float(v), 2) for v in jnp.diag(h.hessian)]
        (('x.unconstrained[0]', 'x.unconstrained[1]'), [1.0, 0.25])
    """
    params, static = partition(model)
    flat, unravel = ravel_pytree(params)
    density = NegLogDensity(log_joint, True, static)

    def neg_log_p(x, args=args):
        return density(unravel(x), *args)

    # the data is an argument of the compiled function (a constant would be copied onto one
    # device, gathering data that the caller sharded)
    def grad_and_hessian(x, a):  # one compiled call: eager ops would each compile a program
        hess = jax.hessian(neg_log_p)(x, a)
        return jax.grad(neg_log_p)(x, a), 0.5 * (hess + hess.T)

    grad, hess = eqx.filter_jit(grad_and_hessian)(flat, args)
    return HessianAt(flat, unravel, tuple(coordinate_names(params)), neg_log_p, grad, hess)


def tree_depth(n_steps: ArrayLike) -> np.ndarray:
    """NUTS tree depth from the number of leapfrog steps (``floor(log2 n) + 1``, int64).

    Example:
        >>> tree_depth([1, 3, 7, 8]).tolist()
        [1, 2, 3, 4]
    """
    return (np.floor(np.log2(np.maximum(np.asarray(n_steps), 1))) + 1).astype(np.int64)


def to_sample_stats(extra: dict[str, Array], max_tree_depth: Any = None) -> dict[str, np.ndarray]:
    """ArviZ's ``sample_stats`` (as ``az.from_numpyro`` names them) from NumPyro's HMC extra fields;
    ``reached_max_treedepth`` where ``max_tree_depth`` (NUTS's) is known."""
    if "num_steps" not in extra:
        return {}
    n_steps = np.asarray(extra["num_steps"])
    out = {
        "diverging": np.asarray(extra["diverging"], dtype=bool),
        "n_steps": n_steps,
        "tree_depth": tree_depth(n_steps),
        "energy": np.asarray(extra["energy"]),
        "lp": -np.asarray(extra["potential_energy"]),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "step_size": np.asarray(extra["adapt_state.step_size"]),
    }
    if max_tree_depth is not None:  # NUTS: (warmup, sampling) depths or one for both
        depth = max_tree_depth[-1] if isinstance(max_tree_depth, tuple) else max_tree_depth
        out["reached_max_treedepth"] = out["tree_depth"] >= int(depth)
    return out


def max_tree_depth(kernel: type, kernel_kwargs: dict) -> Any:
    """A kernel's ``max_tree_depth`` as ``MCMC`` reports it: for NUTS (and its subclasses) the
    option given, else NUTS's default (10); ``None`` for kernels that build no tree (``HMC``).

    Example:
        >>> from numpyro.infer import HMC, NUTS
        >>> max_tree_depth(NUTS, {}), max_tree_depth(NUTS, {"max_tree_depth": 6}), max_tree_depth(HMC, {})
        (10, 6, None)
    """
    if not (isinstance(kernel, type) and issubclass(kernel, NUTS)):
        return None
    return kernel_kwargs.get("max_tree_depth", inspect.signature(NUTS).parameters["max_tree_depth"].default)


def sampler_max_tree_depth(sampler: Any) -> Any:
    """:func:`max_tree_depth` of a kernel instance (the value it was built with): NumPyro's
    ``HMC`` also carries a ``_max_tree_depth``, but builds no tree, so it gets ``None`` here."""
    return getattr(sampler, "_max_tree_depth", None) if isinstance(sampler, NUTS) else None


def to_numpy(x: Array) -> np.ndarray:
    """``x`` as a NumPy array: ``np.asarray``, since ``jax.device_get`` costs ~55 us more a call
    (measured warm, one small array; the fit loop's read of its result was 77 us against 8.5).
    Under a transfer guard the library's own transfer must be explicit, so there it is
    ``jax.device_get``."""
    if jax.config.jax_transfer_guard or jax.config.jax_transfer_guard_device_to_host:
        return jax.device_get(x)
    return np.asarray(x)


def host_rng(key: Any) -> np.random.Generator:
    """A NumPy generator seeded by the bits of the JAX ``key`` (typed or raw ``uint32[2]``), for
    the few numbers of chains' starting points. Why not ``jax.random``: in a fresh process each
    new shape compiles its threefry kernel (~0.5 s on CPU, measured) for a handful of numbers.

    Example:
        >>> import jax
        >>> a, b = host_rng(jax.random.key(0)).random(), host_rng(jax.random.PRNGKey(0)).random()
        >>> a == b != host_rng(jax.random.key(1)).random()
        True
    """
    bits = key
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        bits = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(bits, np.uint32).ravel().tolist())
