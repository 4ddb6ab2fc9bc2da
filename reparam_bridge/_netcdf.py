"""Saving and loading ArviZ data (either ArviZ line) as netCDF."""

import importlib.util
import os
from typing import Any

from ._arviz import import_arviz


def netcdf_engine() -> str:
    """``"h5netcdf"`` (a dependency of reparam_bridge) or else ``"netcdf4"``; an ImportError naming
    what to install when neither is importable."""
    if importlib.util.find_spec("h5netcdf") and importlib.util.find_spec("h5py"):
        return "h5netcdf"
    if importlib.util.find_spec("netCDF4"):
        return "netcdf4"
    raise ImportError(
        "Saving/loading ArviZ data needs a netCDF backend: pip install h5netcdf h5py "
        "(dependencies of reparam_bridge), or netCDF4."
    )


def to_netcdf(idata: Any, path: str | os.PathLike) -> str:
    """Write ``idata`` (either kind) to the netCDF file ``path``; returns ``path``."""
    path = os.fspath(path)
    idata.to_netcdf(path, engine=netcdf_engine())
    return path


def from_netcdf(path: str | os.PathLike):
    """Read what :func:`to_netcdf` wrote, fully into memory (the file is closed again)."""
    az = import_arviz()
    idata = az.from_netcdf(os.fspath(path), engine=netcdf_engine())
    if hasattr(idata, "children"):  # DataTree opens lazily: load, then release the file
        idata = idata.load()
        idata.close()
    return idata
