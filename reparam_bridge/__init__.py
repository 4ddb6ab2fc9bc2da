"""reparam_bridge: one wrapped Equinox PyTree for optax optimisation, NumPyro NUTS and ArviZ.

See ``DESIGN.md`` in the repository for the contract. Example:

    >>> import reparam_bridge as rb
    >>> rb.unwrap({"sigma": rb.Positive(2.0)})
    {'sigma': Array(2., dtype=float32)}
"""

from ._bijector import (
    Bijector,
    Bounded,
    Constrained,
    CorrCholesky,
    CorrMatrix,
    CovCholesky,
    Ordered,
    Positive,
    PositiveDefinite,
    PositiveOrdered,
    Real,
    Simplex,
    ZeroSum,
    log_det_jacobian,
)
from ._constraint import Clamp, Constraint, NonNegative, apply, contains_constraints, finalize
from ._density import log_density, log_prior, partition
from ._fit import FitResult, fit, map_estimate
from ._laplace import LaplaceResult, laplace
from ._locscale import LocScale, reparameterize
from ._sample import Posterior, sample
from . import blackjax  # the adapter; BlackJAX itself is imported by the user, never here
from . import numpyro  # the submodule rb.numpyro; inside the package `import numpyro` is NumPyro
from ._unwrappable import (
    NonTrainable,
    Parameterize,
    Ref,
    SkewSymmetric,
    Symmetric,
    Unwrappable,
    WeightNormalization,
    contains_unwrappables,
    non_trainable,
    unwrap,
)

from . import geometry  # rb.geometry: curvature, compare, plots

__version__ = "0.1.0"

__all__ = [
    "FitResult", "LaplaceResult", "fit", "laplace", "map_estimate",
    "LocScale", "geometry", "reparameterize",
    "Bijector", "Bounded", "Posterior", "sample", "Clamp", "Constrained", "Constraint", "CorrCholesky", "CorrMatrix",
    "CovCholesky", "NonNegative", "NonTrainable", "Ordered", "Parameterize", "Positive",
    "PositiveDefinite", "PositiveOrdered", "Real", "Ref", "Simplex", "SkewSymmetric", "Symmetric",
    "Unwrappable", "WeightNormalization", "ZeroSum", "apply", "contains_constraints",
    "contains_unwrappables", "finalize", "log_density", "log_det_jacobian", "log_prior",
    "non_trainable", "partition", "unwrap",
]
