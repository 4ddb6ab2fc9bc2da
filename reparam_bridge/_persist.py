"""Atomic writes and the model signature that ``Posterior.save``/``load`` and checkpoints
store, so that loading with a different model is an error naming the difference.

Example:
    >>> import reparam_bridge as rb
    >>> a = signature({"s": rb.Positive(1.0)})
    >>> b = signature({"s": rb.Bounded(0.5, lower=0.0, upper=1.0)})
    >>> mismatch(a, b)
    "'s.unconstrained' is inside a Positive in the saved model but inside a Bounded in the model given"
"""

import json
import os
import pickle
import shutil
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jaxtyping import PyTree

from ._paths import path_to_str
from ._tree import Unwrappable

FORMAT = 1


def library_version() -> str:
    from . import __version__

    return str(__version__)


def _owners(model: PyTree) -> dict[str, str]:
    """``{free-leaf path: class of the innermost wrapper holding it}``."""
    from ._tree import free_filter

    out: dict[str, str] = {}

    def visit(node, prefix, owner):
        is_leaf = lambda x: x is not node and isinstance(x, Unwrappable)
        for path, leaf in jax.tree_util.tree_flatten_with_path(node, is_leaf=is_leaf)[0]:
            full = prefix + tuple(path)
            if isinstance(leaf, Unwrappable) and leaf is not node:
                visit(leaf, full, type(leaf).__name__)
            else:
                out[path_to_str(full)] = owner

    visit(model, (), type(model).__name__ if isinstance(model, Unwrappable) else "")
    free = {path_to_str(p) for p, f in jax.tree_util.tree_flatten_with_path(free_filter(model))[0] if f}
    return {p: o for p, o in out.items() if p in free}


def signature(model: PyTree) -> dict[str, Any]:
    """Names, wrapper kinds, shapes and dtypes of the free arrays, and the library version."""
    from ._density import partition

    owners = _owners(model)
    params = partition(model)[0]
    leaves = [
        {
            "path": path_to_str(p),
            "shape": list(np.shape(x)),
            "dtype": str(np.asarray(x).dtype),
            "kind": owners.get(path_to_str(p), ""),
        }
        for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    return {"format": FORMAT, "version": library_version(), "model_type": type(model).__name__, "leaves": leaves}


def mismatch(saved: dict[str, Any], given: dict[str, Any]) -> str | None:
    """The first difference between two signatures, in words; ``None`` if they agree."""
    a = {x["path"]: x for x in saved["leaves"]}
    b = {x["path"]: x for x in given["leaves"]}
    if list(a) != list(b):
        missing, extra = [p for p in a if p not in b], [p for p in b if p not in a]
        if missing or extra:
            return (
                f"the saved model has free arrays {missing} that the model given lacks"
                if missing
                else f"the model given has free arrays {extra} that the saved model lacks"
            )
        return "the free arrays are in a different order (a different model class?)"
    for p in a:
        if a[p]["kind"] != b[p]["kind"]:
            return (
                f"'{p}' is inside a {a[p]['kind'] or 'plain array'} in the saved model but inside a "
                f"{b[p]['kind'] or 'plain array'} in the model given"
            )
        if a[p]["shape"] != b[p]["shape"]:
            return f"'{p}' has shape {tuple(a[p]['shape'])} in the saved model but {tuple(b[p]['shape'])} in the model given"
        if a[p]["dtype"] != b[p]["dtype"]:
            return f"'{p}' is {a[p]['dtype']} in the saved model but {b[p]['dtype']} in the model given"
    return None


def check_model(saved: dict[str, Any], model: PyTree, directory: str, what: str) -> None:
    if saved.get("version") != library_version():
        # Versions differ: a mismatch below is then the likely reason; say both.
        note = f" (saved by reparam_bridge {saved.get('version')}, this is {library_version()})"
    else:
        note = ""
    diff = mismatch(saved, signature(model))
    if diff:
        raise ValueError(
            f"{what}: the model does not match what was saved in {directory}: {diff}{note}. Pass the "
            "same model structure (same wrappers, shapes and dtypes; any values) that was sampled."
        )


# ----------------------------------------------------------------------------------------
# atomic files and directories


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then ``os.replace(tmp, path)``: readers see the old file or the new one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj: Any) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f)

    atomic_write(path, w)


def write_pickle(path: str, obj: Any) -> None:
    def w(tmp):
        with open(tmp, "wb") as f:
            pickle.dump(obj, f)

    atomic_write(path, w)


def replace_directory(build: Callable[[str], None], directory: str) -> None:
    """Write a whole directory atomically: ``build(tmp_dir)`` in a sibling temporary directory,
    then swap it in with ``os.replace``; an existing ``directory`` is replaced only once the
    new one is complete (a crash leaves the old one or the new one, never a mix)."""
    directory = os.path.abspath(directory)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = _sibling(directory, "tmp")
    try:
        build(tmp)
        if os.path.isdir(directory):
            old = _sibling(directory, "old")
            os.replace(directory, os.path.join(old, "d"))
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if os.path.exists(directory):
                raise FileExistsError(f"{directory} exists and is not a directory.")
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _sibling(directory: str, kind: str) -> str:
    """A new empty directory beside ``directory``. ``os.mkdir`` (not ``tempfile.mkdtemp``,
    whose 0700 would become the saved directory's mode) applies the user's umask."""
    parent, name = os.path.split(directory)
    while True:
        path = os.path.join(parent, f".{name}.{kind}-{uuid.uuid4().hex[:12]}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:  # (a 48-bit name taken: try another)
            continue


def read(path: str, reader: Callable[[str], Any], what: str) -> Any:
    """``reader(path)``, any failure re-raised as ``ValueError`` naming the file."""
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{what}: {path} is missing; the directory is incomplete or not one that "
            "Posterior.save / rb.sample(checkpoint=...) wrote."
        )
    try:
        return reader(path)
    except Exception as e:  # h5py, json, pickle and numpy all raise their own kinds
        raise ValueError(
            f"{what}: could not read {path} ({type(e).__name__}: {e}); the file is damaged. "
            "Save again (or resume from an intact checkpoint)."
        ) from e


def read_json(path: str, what: str) -> Any:
    def r(p):
        with open(p) as f:
            return json.load(f)

    return read(path, r, what)


# ----------------------------------------------------------------------------------------
# Posterior.save / Posterior.load (the netCDF engine is the ArviZ adapter's choice)


SAVED_FILES = ("meta.json", "posterior.nc", "unconstrained.eqx")


def save_posterior(post: Any, directory: str) -> None:
    import equinox as eqx

    from ._netcdf import to_netcdf

    # the directory is replaced whole: only an empty one or an earlier save may be overwritten,
    # and never the working directory or one above it (the process would be left in a deleted one)
    here = os.path.realpath(directory)
    try:
        cwd = os.path.realpath(os.getcwd())
    except FileNotFoundError:  # the working directory itself was deleted: nothing to protect
        cwd = None
    if cwd is not None and os.path.isdir(here) and os.path.commonpath([here, cwd]) == here:
        raise ValueError(
            f"Posterior.save: {directory!r} is the working directory or holds it, and save replaces the "
            "whole directory it writes; save into a subdirectory (post.save('run'))."
        )
    others = sorted(set(os.listdir(directory)) - set(SAVED_FILES)) if os.path.isdir(directory) else []
    if others:
        listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise FileExistsError(
            f"Posterior.save: {directory} holds files that Posterior.save did not write ({listed}); "
            "save replaces the whole directory, so it writes only into a new or empty directory or "
            "over an earlier save. Pick another directory."
        )
    idata = post.to_inference_data()

    def build(tmp):
        to_netcdf(idata, os.path.join(tmp, "posterior.nc"))
        eqx.tree_serialise_leaves(os.path.join(tmp, "unconstrained.eqx"), post._samples)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(
                {"num_chains": post.num_chains, "num_draws": post.num_draws, "signature": signature(post.model)}, f
            )

    replace_directory(build, directory)


def load_posterior(cls: type, directory: str, model: PyTree, static: PyTree, like: Callable) -> Any:
    import equinox as eqx

    from . import _arviz
    from ._netcdf import from_netcdf

    what = "Posterior.load"
    meta = read_json(os.path.join(directory, "meta.json"), what)
    if "signature" in meta:  # saves before the signature was stored are read unchecked
        check_model(meta["signature"], model, directory, what)
    shaped = like(meta["num_draws"], meta["num_chains"])
    samples = read(os.path.join(directory, "unconstrained.eqx"), lambda p: eqx.tree_deserialise_leaves(p, shaped), what)
    idata = read(os.path.join(directory, "posterior.nc"), from_netcdf, what)
    stats, loglik = (_arviz.group(idata, g) for g in ("sample_stats", "log_likelihood"))
    stats = {k: np.asarray(v) for k, v in stats.data_vars.items()} if stats is not None else {}
    loglik = {k: np.asarray(v) for k, v in loglik.data_vars.items()} if loglik is not None else None
    out = cls(model, static, samples, stats, log_likelihood_values=loglik)
    coords, dims = {}, {}
    for name in ("posterior", "log_likelihood"):  # the labels of both groups rb.sample was given
        c, d = _arviz.coords_and_dims(idata, name)
        coords.update(c)
        dims.update(d)
    out.coords, out.dims = coords or None, dims or None
    return out
