"""ArviZ conversion (every ArviZ-version difference); variable names come from ``_naming``."""

import warnings
from typing import Any

import numpy as np

from ._naming import draws_to_dict, random_nodes  # noqa: F401 - moved to _naming; old import path


def import_arviz():
    """Import ArviZ without its 0.x "major refactor" FutureWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def to_inference_data(
    posterior: dict[str, np.ndarray],
    sample_stats: dict[str, np.ndarray] | None = None,
    log_likelihood: dict[str, np.ndarray] | None = None,
    observed_data: dict[str, np.ndarray] | None = None,
    attrs: dict[str, Any] | None = None,
):
    """``arviz.InferenceData`` (ArviZ 0.x) or ``DataTree`` (ArviZ ≥ 1.0) from group dicts."""
    az = import_arviz()
    groups = {
        "posterior": posterior,
        "sample_stats": sample_stats,
        "log_likelihood": log_likelihood,
        "observed_data": observed_data,
    }
    groups = {k: {n: np.asarray(v) for n, v in g.items()} for k, g in groups.items() if g}
    attrs = {"creation_library": "reparam_bridge", **(attrs or {})}
    if int(az.__version__.split(".")[0]) >= 1:  # ArviZ 1.x: from_dict({"group": {...}})
        return az.from_dict(groups, attrs=attrs)
    return az.from_dict(**groups, attrs=attrs)
