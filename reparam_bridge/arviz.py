"""``rb.arviz``, the ArviZ adapter: every difference between ArviZ 0.2x (``InferenceData``) and ArviZ 1.x
(``xarray.DataTree``, arviz-base/-stats) lives here, and the rest of the package calls only this.

Variable names are the model's dotted attribute paths. The statistics (:func:`summary`,
:func:`ess`, :func:`rhat`, :func:`mcse`, :func:`psislw`) are called with explicit settings so
that the same draws give the same numbers on both ArviZ lines (their defaults differ: 1.x's
summary reports an 89 % ETI and a different tail ESS, its ``psislw`` takes log-likelihoods and
a different tail length).

Example:
    >>> import numpy as np
    >>> import reparam_bridge as rb
    >>> x = np.random.default_rng(0).normal(size=(2, 100))
    >>> idata = rb.arviz.to_inference_data({"mu": x}, attrs={"note": "demo"})
    >>> rb.arviz.groups(idata), rb.arviz.group(idata, "posterior")["mu"].shape
    (['posterior'], (2, 100))
    >>> rb.arviz.attrs(idata)["note"], rb.arviz.attrs(idata)["creation_library"]
    ('demo', 'reparam_bridge')
    >>> list(rb.arviz.summary(idata).columns)
    ['mean', 'sd', 'hdi_3%', 'hdi_97%', 'mcse_mean', 'mcse_sd', 'ess_bulk', 'ess_tail', 'r_hat']
"""

from ._arviz import SAMPLE_DIMS as SAMPLE_DIMS
from ._arviz import arviz_major as arviz_major
from ._arviz import attrs as attrs
from ._arviz import coords_and_dims as coords_and_dims
from ._arviz import ess as ess
from ._arviz import from_numpyro as from_numpyro
from ._arviz import group as group
from ._arviz import groups as groups
from ._arviz import import_arviz as import_arviz
from ._arviz import mcse as mcse
from ._arviz import provenance as provenance
from ._arviz import rhat as rhat
from ._arviz import summary as summary
from ._arviz import to_inference_data as to_inference_data
from ._naming import draws_to_dict as draws_to_dict
from ._naming import random_nodes as random_nodes
from ._netcdf import from_netcdf as from_netcdf
from ._netcdf import netcdf_engine as netcdf_engine
from ._netcdf import to_netcdf as to_netcdf
from ._psis import Loo as Loo
from ._psis import loo as loo
from ._psis import psislw as psislw

__all__ = [
    "SAMPLE_DIMS",
    "Loo",
    "arviz_major",
    "attrs",
    "coords_and_dims",
    "draws_to_dict",
    "ess",
    "from_netcdf",
    "from_numpyro",
    "group",
    "groups",
    "import_arviz",
    "loo",
    "mcse",
    "netcdf_engine",
    "provenance",
    "psislw",
    "random_nodes",
    "rhat",
    "summary",
    "to_inference_data",
    "to_netcdf",
]
