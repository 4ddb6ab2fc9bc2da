"""Shared test helpers: a float64 switch and the reference log-Jacobian by ``jax.jacfwd``."""

import gc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import reparam_bridge as rb


def pytest_runtest_teardown(item, nextitem):
    """Drop JAX's compiled programs after each test file. Every XLA executable holds a few
    memory maps; one process running the whole suite kept ~6,000 more per file and crashed
    (segfault in ``backend_compile_and_load``) at the kernel's limit of 65,530 maps
    (``vm.max_map_count``). Cleared per file, it grows by ~1,000 per file instead."""
    if nextitem is None or nextitem.path != item.path:  # doctest items have no .module
        jax.clear_caches()
        gc.collect()


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats (restored afterwards, so doctests keep float32)."""
    with jax.enable_x64(True):
        yield


def jacfwd_logdet(tree, coords):
    """``log|det ∂ coords(unwrap(tree)) / ∂ free arrays|`` by dense ``jax.jacfwd``: the
    reference every ``log_det_jacobian`` is checked against. The free arrays are exactly
    ``rb.partition(tree)[0]``, so this also checks that partition returns the right arrays."""
    params, static = rb.partition(tree)
    flat, unravel = ravel_pytree(params)

    def f(x):
        return jnp.concatenate(
            [jnp.ravel(c) for c in jax.tree_util.tree_leaves(coords(rb.unwrap(eqx.combine(unravel(x), static))))]
        )

    J = jax.jacfwd(f)(flat)
    assert J.shape[0] == J.shape[1], f"{J.shape}: coordinates and free arrays differ in number"
    sign, logdet = jnp.linalg.slogdet(J)  # traceable, so callers may jit it
    return jnp.where(sign == 0, jnp.nan, logdet)  # a singular Jacobian never matches


# independent coordinates of constrained values (the log-Jacobian convention of DESIGN.md)
def identity(v):
    return v


def drop_last(v):
    return v[..., :-1]


def strict_lower(v):
    r, c = np.tril_indices(v.shape[-1], -1)
    return v[..., r, c]


def lower(v):
    r, c = np.tril_indices(v.shape[-1])
    return v[..., r, c]
