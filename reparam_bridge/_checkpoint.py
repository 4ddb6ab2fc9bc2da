"""``rb.sample(..., checkpoint=DIR)``: draws and the full sampler state on disk as the chains
run, so that a killed process loses nothing.

Layout of ``DIR`` (every file written to a temporary name, then ``os.replace``d, so a reader
never sees half a file; ``checkpoint.json`` is replaced last and is the only source of truth):

- ``checkpoint.json``: the model signature, the plan (draws wanted), the list of committed
  draw chunks, the number of draws they hold and the state file that follows them;
- ``config.pkl``: the kernel class and its arguments, ``num_warmup``, ``num_chains``,
  ``chain_method`` and the chunk length;
- ``target.pkl``: ``(log_joint, args, log_likelihood)`` when they pickle (module-level
  functions do; lambdas do not, and ``resume`` then takes ``log_joint=`` and ``args=``);
- ``draws_000000.npz`` ...: one per chunk: the unconstrained draws ``(chain, draw, ...)`` and
  the sampler's extra fields;
- ``state_000003.pkl``: NumPyro's last state (position, gradient, step size, inverse mass
  matrix, RNG key, iteration) after the last committed chunk.

Warmup is not split (NumPyro's adaptation windows are planned over the whole warmup): a
process killed during warmup has nothing to resume. Sampling runs in chunks of ``every``
draws, each continuing from the previous chunk's state with its RNG key exactly as one long
run does, so chunked, interrupted-and-resumed and uninterrupted runs give the same draws.
"""

import os
import pickle
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jaxtyping import PyTree

from . import _persist
from ._util import to_numpy

MANIFEST = "checkpoint.json"
_WHAT = "checkpoint"


class _Key(NamedTuple):  # a typed PRNG key, as raw data and its implementation's name
    data: np.ndarray
    impl: str


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_host(state: PyTree) -> PyTree:
    """The sampler state as NumPy arrays (typed keys as their raw data), picklable."""
    return jax.tree_util.tree_map(
        lambda x: _Key(to_numpy(jax.random.key_data(x)), str(jax.random.key_impl(x))) if _is_key(x) else to_numpy(x),
        state,
    )


def from_host(state: PyTree) -> PyTree:
    def back(x):
        if isinstance(x, _Key):
            return jax.random.wrap_key_data(x.data, impl=x.impl)
        return jax.numpy.asarray(x)

    return jax.tree_util.tree_map(back, state, is_leaf=lambda x: isinstance(x, _Key))


class Writer:
    """Commits chunks of draws and the state after them to ``directory``."""

    def __init__(self, directory: str, manifest: dict[str, Any]):
        self.directory, self.manifest = directory, manifest

    def _path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def commit(self, samples: PyTree | None, extras: dict[str, Any] | None, state: PyTree) -> None:
        m = dict(self.manifest)
        k = len(m["chunks"])
        if samples is not None:
            name = f"draws_{k:06d}.npz"
            arrays = {f"leaf_{i}": np.asarray(x) for i, x in enumerate(jax.tree_util.tree_leaves(samples))}
            arrays.update({f"extra:{key}": np.asarray(v) for key, v in (extras or {}).items()})
            _persist.atomic_write(self._path(name), lambda tmp: _savez(tmp, arrays))
            m["chunks"] = m["chunks"] + [name]
            m["done"] = m["done"] + int(np.shape(jax.tree_util.tree_leaves(samples)[0])[1])
        state_name = f"state_{k:06d}.pkl"
        _persist.write_pickle(self._path(state_name), to_host(state))
        old = m.get("state")
        m["state"] = state_name
        _persist.write_json(self._path(MANIFEST), m)  # the commit point
        self.manifest = m
        if old and old != state_name and os.path.exists(self._path(old)):
            os.remove(self._path(old))


def _savez(tmp: str, arrays: dict[str, np.ndarray]) -> None:
    with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
        np.savez(f, **arrays)


def start(directory: str, model: PyTree, config: dict[str, Any], target: tuple, planned: int) -> Writer:
    """Create the checkpoint directory (refusing one that already holds a checkpoint)."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(os.path.join(directory, MANIFEST)):
        raise FileExistsError(
            f"rb.sample(checkpoint=...): {directory} already holds a checkpoint. Continue it with "
            "rb.Posterior.load(directory, model).resume(), or give an empty directory."
        )
    os.makedirs(directory, exist_ok=True)
    _persist.write_pickle(os.path.join(directory, "config.pkl"), config)
    try:
        blob = pickle.dumps(target)
    except Exception:  # a lambda or closure: resume will need log_joint= and args=
        blob = None
    if blob is not None:
        _persist.atomic_write(os.path.join(directory, "target.pkl"), lambda tmp: open(tmp, "wb").write(blob))
    manifest = {
        "format": _persist.FORMAT,
        "signature": _persist.signature(model),
        "planned": int(planned),
        "chunks": [],
        "done": 0,
        "state": None,
        "target": blob is not None,
    }
    return Writer(directory, manifest)


def run_chunks(
    mcmc: Any, state: PyTree, n: int, every: int, writer: Writer, extra_fields: tuple, fresh: bool
) -> tuple[list, list, PyTree]:
    """``n`` more draws from ``state`` in chunks of ``every``, each committed to ``writer``.
    ``fresh``: ``mcmc`` has never run (after a load), so its kernel is set up from the state."""
    samples, extras = [], []
    done = 0
    while done < n:
        k = min(every, n - done)
        mcmc.num_samples = k
        mcmc.post_warmup_state = state
        # init_params only lets a fresh kernel build its functions; the state is used as is
        init = getattr(state, "z", None) if fresh else None
        mcmc.run(state.rng_key, init_params=init, extra_fields=extra_fields)
        fresh = False
        chunk = mcmc.get_samples(group_by_chain=True)
        extra = mcmc.get_extra_fields(group_by_chain=True)
        state = mcmc.last_state
        writer.commit(chunk, extra, state)
        samples.append(chunk)
        extras.append(extra)
        done += k
    return samples, extras, state


def concat(samples: list, extras: list) -> tuple[PyTree, dict[str, np.ndarray]]:
    cat = lambda *xs: np.concatenate([np.asarray(x) for x in xs], axis=1)
    out = jax.tree_util.tree_map(lambda *xs: jax.numpy.asarray(cat(*xs)), *samples)
    extra = {k: cat(*[e[k] for e in extras]) for k in extras[0]} if extras and extras[0] else {}
    return out, extra


class Loaded(NamedTuple):
    samples: PyTree
    extras: dict[str, np.ndarray]
    state: PyTree
    config: dict[str, Any]
    target: tuple | None
    writer: Writer


def is_checkpoint(directory: str) -> bool:
    return os.path.exists(os.path.join(os.fspath(directory), MANIFEST))


def load(directory: str, model: PyTree, params_like: Callable[[int], PyTree]) -> Loaded:
    """Everything committed in ``directory``; ``params_like(n)`` gives the treedef of
    the free arrays (n draws). Raises naming the file that is missing or damaged."""
    directory = os.path.abspath(os.fspath(directory))
    what = "Posterior.load"
    manifest = _persist.read_json(os.path.join(directory, MANIFEST), what)
    _persist.check_model(manifest["signature"], model, directory, what)
    if manifest["state"] is None:
        raise ValueError(
            f"{what}: {directory} holds no sampler state: the run was stopped during warmup, "
            "which is not checkpointed. Start it again."
        )
    config = _persist.read(os.path.join(directory, "config.pkl"), _unpickle, what)
    state = from_host(_persist.read(os.path.join(directory, manifest["state"]), _unpickle, what))
    treedef = jax.tree_util.tree_structure(params_like(0))
    samples, extras = [], []
    for name in manifest["chunks"]:
        data = _persist.read(os.path.join(directory, name), lambda p: dict(np.load(p)), what)
        leaves = [data[f"leaf_{i}"] for i in range(treedef.num_leaves)]
        samples.append(jax.tree_util.tree_unflatten(treedef, leaves))
        extras.append({k[len("extra:") :]: v for k, v in data.items() if k.startswith("extra:")})
    if samples:
        samples, extras = concat(samples, extras)
    else:
        samples, extras = params_like(0), {}
    target = None
    if manifest.get("target"):
        try:
            target = _persist.read(os.path.join(directory, "target.pkl"), _unpickle, what)
        except ValueError:  # e.g. log_joint's module is not importable here: resume asks for it
            target = None
    return Loaded(samples, extras, state, config, target, Writer(directory, manifest))


def _unpickle(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)
