"""Where the bridge's arrays live: the mesh the chains of ``rb.sample`` run on, a user's sharded
data kept sharded (with ``Auto`` axes, so that XLA lays out the gradient of ``log_joint``), and
the draws gathered back to the host (every process gets the whole).

Example:
    >>> import jax.numpy as jnp
    >>> args = (jnp.ones(3),)
    >>> auto_axes(args) is args, args_are_sharded(args)
    (True, False)
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jaxtyping import PyTree

CHAINS = "chains"  # the mesh axis the chains are split along


def _sharded_leaves(args: tuple) -> list[jax.Array]:
    return [
        x
        for x in jax.tree_util.tree_leaves(args)
        if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
    ]


def auto_axes(args: tuple) -> tuple:
    """``args`` with every array on an explicit-axis mesh (``jax.make_mesh``'s default since
    JAX 0.7) moved to the same mesh with ``Auto`` axes: the same devices and the same split, no
    data moved. Under explicit axes JAX types each array with its sharding and refuses what it
    cannot type, e.g. ``jax.grad`` of ``(x @ w).sum()`` over row-sharded ``x`` ("contracting
    dimensions are sharded"), so the user's own ``log_joint`` gradient fails; with ``Auto`` axes
    XLA chooses the layouts and inserts the cross-device reduction."""
    axis_type = getattr(jax.sharding, "AxisType", None)
    if axis_type is None:  # a JAX without sharding in types: every mesh is Auto
        return args

    def auto(x):
        sharding = getattr(x, "sharding", None) if isinstance(x, jax.Array) else None
        if not isinstance(sharding, NamedSharding):
            return x
        mesh = sharding.mesh
        if all(t == axis_type.Auto for t in (getattr(mesh, "axis_types", None) or ())):
            return x
        auto_mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(axis_type.Auto,) * len(mesh.axis_names))
        return jax.device_put(x, NamedSharding(auto_mesh, sharding.spec, memory_kind=sharding.memory_kind))

    leaves, treedef = jax.tree_util.tree_flatten(args)
    moved = [auto(x) for x in leaves]
    if all(a is b for a, b in zip(moved, leaves)):  # the common case: nothing to rebuild
        return args
    return treedef.unflatten(moved)


def args_are_sharded(args: tuple) -> bool:
    """Whether some array in ``args`` is split over several devices (then ``rb.sample``
    keeps it so, through this module, rather than NumPyro's MCMC, which would gather it)."""
    return bool(_sharded_leaves(args))


def chain_layout(args: tuple, num_chains: int) -> tuple[Mesh, P]:
    """The mesh and the spec of the chain axis: the data's mesh if ``args`` are sharded
    (chains split along its ``"chains"`` axis if it has one, else replicated), else a 1-D
    mesh ``("chains",)`` over every device of every process."""
    data = _sharded_leaves(args)
    meshes = {x.sharding.mesh for x in data if isinstance(x.sharding, NamedSharding)}
    if len(meshes) > 1:
        raise ValueError("rb.sample: the sharded arrays in *args use different meshes; place them all on one Mesh.")
    if data and not meshes:
        raise TypeError(
            f"rb.sample: a sharded argument has a {type(data[0].sharding).__name__}; place data with "
            "jax.device_put(x, NamedSharding(mesh, PartitionSpec('data'))) so that its mesh is known."
        )
    mesh = meshes.pop() if meshes else Mesh(np.array(jax.devices()), (CHAINS,))
    spec = P(CHAINS) if CHAINS in mesh.axis_names else P()
    n = mesh.shape[CHAINS] if CHAINS in mesh.axis_names else 1
    if num_chains % n:
        raise ValueError(
            f"rb.sample(chain_method='sharded'): num_chains={num_chains} is not a multiple of the {n} "
            f"devices along the mesh axis '{CHAINS}'; use num_chains={n * max(1, round(num_chains / n))} "
            "(or any multiple of jax.device_count())."
        )
    return mesh, spec


def to_global(x: Any, sharding: NamedSharding) -> jax.Array:
    """``x`` (the same value on every process) as one global array with ``sharding``."""
    if isinstance(x, jax.Array) and x.sharding.device_set == set(sharding.mesh.devices.flat):
        return x  # already placed by the user over the mesh's devices: keep it as it is
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        raise ValueError("rb.sample: an argument spans processes but not the devices of the sampling mesh.")
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def gather(tree: PyTree) -> PyTree:
    """Host copies of global arrays; with several processes every process gets the whole."""
    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
