"""Building and reading ArviZ data on both ArviZ lines (0.2x ``InferenceData``, 1.x
``xarray.DataTree``) and the statistics called with explicit settings so both give the same
numbers. The public face is ``rb.arviz`` (``arviz.py``); PSIS is in ``_psis.py``, netCDF in
``_netcdf.py``.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(2, 100))
    >>> groups(to_inference_data({"mu": x}))
    ['posterior']
"""

import importlib
import importlib.metadata
import importlib.util
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def import_arviz():
    """Import ArviZ without its 0.x "major refactor" FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


# ----------------------------------------------------------------------------------------
# building InferenceData (0.x) / DataTree (1.x)

SAMPLE_DIMS = ("chain", "draw")
_GROUPS = ("posterior", "unconstrained_posterior", "sample_stats", "log_likelihood", "observed_data")


def arviz_major() -> int:
    """The installed ArviZ's major version: 0 (``InferenceData``) or 1 (``DataTree``)."""
    return int(import_arviz().__version__.split(".")[0])


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


def provenance(inference_library: str | None = None) -> dict[str, str]:
    """The attrs ``az.from_numpyro`` users expect: who made the draws and with which versions.

    Example:
        >>> p = provenance("numpyro")
        >>> p["inference_library"], p["creation_library"], sorted(p)[:2]
        ('numpyro', 'reparam_bridge', ['arviz_version', 'creation_library'])
    """
    out = {
        "creation_library": "reparam_bridge",
        "creation_library_version": _version("reparam_bridge"),
        "arviz_version": import_arviz().__version__,
    }
    if inference_library:
        out["inference_library"] = inference_library
        out["inference_library_version"] = _version(inference_library.split(".")[0])
    return out


def _event_shape(group: str, array: np.ndarray) -> tuple[int, ...]:
    return array.shape if group == "observed_data" else array.shape[2:]


def _checked_dims(groups: dict, coords: Mapping | None, dims: Mapping | None) -> dict[str, list[str]] | None:
    """``dims`` as ``az.from_numpyro`` reads it ({variable: [dim, ...]} for the non-sample
    axes, coordinates from ``coords``), checked against the arrays, plus the dims that an
    unconstrained variable (``"theta.unconstrained"``) takes from its constrained value
    (``"theta"``) when their shapes agree."""
    if dims is None and coords is None:
        return None
    if coords is not None and not isinstance(coords, Mapping):
        raise TypeError(f"coords must be a dict {{dim: labels}}, got {type(coords).__name__}.")
    if dims is not None and not isinstance(dims, Mapping):
        raise TypeError(f"dims must be a dict {{variable: [dim, ...]}}, got {type(dims).__name__}.")
    dims = {str(k): [v] if isinstance(v, str) else list(v) for k, v in (dims or {}).items()}
    shapes = {name: (g, _event_shape(g, a)) for g, d in groups.items() for name, a in d.items()}
    for name, names in dims.items():
        if name not in shapes:
            raise ValueError(f"dims: there is no variable {name!r}; the variables are {sorted(shapes)}.")
        group, shape = shapes[name]
        if len(names) > len(shape):
            raise ValueError(
                f"dims[{name!r}] names {len(names)} dimensions but {name!r} has shape {shape} "
                "per draw (chain and draw are not named in dims)."
            )
        for d, size in zip(names, shape):
            if coords and d in coords and len(coords[d]) != size:
                raise ValueError(
                    f"coords[{d!r}] has {len(coords[d])} labels but dimension {d!r} of {name!r} has size {size}."
                )
    post = groups.get("posterior", {})
    for name, array in groups.get("unconstrained_posterior", {}).items():
        owner = max((p for p in post if name.startswith(p + ".") and p in dims), key=len, default=None)
        if name not in dims and owner is not None and array.shape == post[owner].shape:
            dims[name] = dims[owner]
    return dims


def to_inference_data(
    posterior: Mapping[str, np.ndarray],
    *,
    sample_stats: Mapping[str, np.ndarray] | None = None,
    log_likelihood: Mapping[str, np.ndarray] | None = None,
    observed_data: Mapping[str, np.ndarray] | None = None,
    unconstrained_posterior: Mapping[str, np.ndarray] | None = None,
    coords: Mapping[str, Sequence] | None = None,
    dims: Mapping[str, Sequence[str]] | None = None,
    inference_library: str | None = None,
    attrs: Mapping[str, Any] | None = None,
):
    """``arviz.InferenceData`` (ArviZ 0.2x) or ``xarray.DataTree`` (ArviZ 1.x) from group dicts.

    Every group but ``observed_data`` holds ``(chain, draw, ...)`` arrays. ``coords`` and
    ``dims`` mean what they mean in ``az.from_numpyro``. :func:`provenance` and ``attrs`` are
    written on every group and on the root (read them back with :func:`attrs`).
    """
    az = import_arviz()
    groups = {
        "posterior": posterior,
        "unconstrained_posterior": unconstrained_posterior,
        "sample_stats": sample_stats,
        "log_likelihood": log_likelihood,
        "observed_data": observed_data,
    }
    groups = {k: {n: np.asarray(v) for n, v in g.items()} for k, g in groups.items() if g}
    for group_name, variables in groups.items():  # ArviZ drops them silently (a coordinate wins)
        reserved = sorted(set(variables) & set(SAMPLE_DIMS)) if group_name != "observed_data" else []
        if reserved:
            raise ValueError(
                f"a variable of the {group_name} group is named {reserved[0]!r}, which ArviZ uses for a "
                f"dimension: it would be lost. Rename it (e.g. '{reserved[0]}_')."
            )
    dims = _checked_dims(groups, coords, dims)
    meta = {**provenance(inference_library), **(attrs or {})}
    coords = dict(coords) if coords else None
    if arviz_major() >= 1:  # ArviZ 1.x: from_dict({"group": {...}}), attrs per group
        idata = az.from_dict(groups, coords=coords, dims=dims, attrs={g: dict(meta) for g in groups})
    else:  # 0.x's from_dict has no unconstrained_posterior argument: add it as a group
        unconstrained = groups.pop("unconstrained_posterior", None)
        idata = az.from_dict(**groups, coords=coords, dims=dims, attrs=meta)
        if unconstrained:
            idata.add_groups(unconstrained_posterior=az.dict_to_dataset(unconstrained, coords=coords, dims=dims))
        for name in idata.groups():
            idata[name].attrs.update(meta)
    idata.attrs.update(meta)
    return idata


# ----------------------------------------------------------------------------------------
# reading it back


def groups(idata: Any) -> list[str]:
    """Names of the groups (``["posterior", "sample_stats", ...]``) of either kind of object."""
    if hasattr(idata, "children"):  # DataTree: .groups is a tuple of paths ('/', '/posterior', ...)
        return list(idata.children)
    return list(idata.groups())


def group(idata: Any, name: str):
    """Group ``name`` as an ``xarray.Dataset`` (``None`` when absent)."""
    import xarray as xr

    if name not in groups(idata):
        return None
    node = idata[name]
    return node if isinstance(node, xr.Dataset) else node.to_dataset()


def attrs(idata: Any) -> dict[str, Any]:
    """The metadata written by :func:`to_inference_data` (root attrs over the first group's)."""
    first = groups(idata)[:1]
    return {**(dict(group(idata, first[0]).attrs) if first else {}), **dict(idata.attrs)}


def coords_and_dims(idata: Any, name: str = "posterior") -> tuple[dict, dict]:
    """The user-given ``coords``/``dims`` of group ``name`` (ArviZ's default ``x_dim_0`` names left out)."""
    ds = group(idata, name)
    coords, dims = {}, {}
    if ds is None:
        return coords, dims
    for var, da in ds.data_vars.items():
        own = [d for d in da.dims if d not in SAMPLE_DIMS]
        if own and any(d != f"{var}_dim_{i}" for i, d in enumerate(own)):
            dims[str(var)] = [str(d) for d in own]
            coords.update({str(d): ds.coords[d].values.tolist() for d in own if d in ds.coords})
    return coords, dims


# ----------------------------------------------------------------------------------------
# statistics: explicit settings, so both ArviZ lines give the same numbers


def _stat(fn: str, data: Any, **kwargs: Any) -> Any:
    az = import_arviz()
    if isinstance(data, np.ndarray) or np.isscalar(data) or isinstance(data, (list, tuple)):
        data = np.asarray(data, dtype=np.float64)  # float32 draws: compute in float64 on both lines
    if arviz_major() >= 1:
        if kwargs.get("method") == "tail":  # 0.x's default tail ESS: min over the 5 % and 95 % quantiles
            kwargs["prob"] = (0.05, 0.95)
        if isinstance(data, np.ndarray) and data.ndim == 1:  # 0.x reads a 1-d array as one chain
            data = data[None]
    out = getattr(az, fn)(data, **kwargs)
    if isinstance(data, np.ndarray):
        out = np.asarray(out)
        return float(out) if out.ndim == 0 else out
    return out


def ess(x: Any, method: str = "bulk") -> Any:
    """ArviZ's effective sample size of ``(chain, draw)`` draws (``"bulk"``, ``"tail"``, ``"mean"``,
    ...): a float for an array, a Dataset for a Dataset."""
    return _stat("ess", x, method=method)


def rhat(x: Any) -> Any:
    """ArviZ's rank-normalised split R-hat of ``(chain, draw)`` draws."""
    return _stat("rhat", x)


def mcse(x: Any, method: str = "mean") -> Any:
    """ArviZ's Monte Carlo standard error (``method="mean"`` or ``"sd"``) of ``(chain, draw)`` draws."""
    return _stat("mcse", x, method=method)


def _posterior_dataset(data: Any, var_names: Sequence[str] | None):
    import xarray as xr

    if isinstance(data, dict):  # (InferenceData and DataTree are Mappings too)
        data = to_inference_data(data)
    ds = data if isinstance(data, xr.Dataset) else group(data, "posterior")
    if var_names is not None:
        missing = [v for v in var_names if v not in ds.data_vars]
        if missing:
            raise ValueError(f"summary: no variable(s) {missing}; the posterior has {sorted(map(str, ds.data_vars))}.")
        ds = ds[list(var_names)]
    return ds.astype(np.float64)


def summary(data: Any, var_names: Sequence[str] | None = None, kind: str = "all", hdi_prob: float = 0.94):
    """``az.summary`` with ArviZ 0.2x's columns and settings on both ArviZ lines, unrounded.

    ``data``: an InferenceData/DataTree, a posterior ``xarray.Dataset`` or ``{name: (chain,
    draw, ...)}``. ``kind``: ``"all"``, ``"stats"`` (mean, sd, HDI) or ``"diagnostics"``
    (MCSE, bulk and tail ESS, R-hat). Rows are named as ArviZ names them: ``"mu"``,
    ``"theta[0]"`` (or the coordinate label: ``"theta[Choate]"``).
    """
    import pandas as pd

    if kind not in ("all", "stats", "diagnostics"):
        raise ValueError(f"summary: kind must be 'all', 'stats' or 'diagnostics', got {kind!r}.")
    az = import_arviz()
    ds = _posterior_dataset(data, var_names)
    lo, hi = f"hdi_{100 * (1 - hdi_prob) / 2:g}%", f"hdi_{100 * (1 + hdi_prob) / 2:g}%"
    columns: dict[str, Any] = {}
    if kind in ("all", "stats"):
        columns["mean"] = ds.mean(SAMPLE_DIMS)
        columns["sd"] = ds.std(SAMPLE_DIMS, ddof=1)
        hdi = az.hdi(ds, prob=hdi_prob) if arviz_major() >= 1 else az.hdi(ds, hdi_prob=hdi_prob)
        bound = "ci_bound" if "ci_bound" in hdi.dims else "hdi"
        columns[lo], columns[hi] = hdi.isel({bound: 0}), hdi.isel({bound: 1})
    if kind in ("all", "diagnostics"):
        columns["mcse_mean"], columns["mcse_sd"] = mcse(ds, "mean"), mcse(ds, "sd")
        columns["ess_bulk"], columns["ess_tail"] = ess(ds, "bulk"), ess(ds, "tail")
        columns["r_hat"] = rhat(ds)
    rows: dict[str, list[float]] = {}
    for var, da in ds.data_vars.items():
        own = [d for d in da.dims if d not in SAMPLE_DIMS]
        for idx in np.ndindex(*[ds.sizes[d] for d in own]):
            labels = [ds[d].values[i] if d in ds.coords else i for d, i in zip(own, idx)]
            name = f"{var}[{', '.join(str(x) for x in labels)}]" if own else str(var)
            rows[name] = [float(c[var].transpose(*own).values[idx]) for c in columns.values()]
    return pd.DataFrame.from_dict(rows, orient="index", columns=list(columns))


def from_numpyro(mcmc: Any, *, log_likelihood: bool = True, coords: Mapping | None = None, dims: Mapping | None = None):
    """``az.from_numpyro`` with the same groups on both lines (1.x leaves ``log_likelihood`` out
    unless asked; 0.2x includes it by default)."""
    return import_arviz().from_numpyro(mcmc, log_likelihood=log_likelihood, coords=coords, dims=dims)
