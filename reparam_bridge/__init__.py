"""reparam_bridge: one wrapped Equinox PyTree for optax optimisation, NumPyro NUTS and ArviZ.

The names of ``DESIGN.md``'s public contract, plus a few extensions (``Clamp``, ``Ref``,
``LocScale``, ``reparameterize``, ``laplace`` and the submodules ``geometry``, ``numpyro``,
``blackjax``). Example:

    >>> import reparam_bridge as rb
    >>> rb.unwrap({"sigma": rb.Positive(2.0)})
    {'sigma': Array(2., dtype=float32)}
"""

from . import blackjax  # the adapter; BlackJAX itself is imported by the user, never here
from . import geometry  # curvature, parameterisation comparison, plots
from . import numpyro  # rb.numpyro.random_module / module; inside the package `import numpyro` is NumPyro
from ._approx import Approximation
from ._checks import ReliabilityWarning
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

__version__ = "0.1.0"

__all__ = [
    # Unwrappables and constraints (paramax / klax compatible)
    "Unwrappable", "unwrap", "contains_unwrappables", "Parameterize", "NonTrainable", "non_trainable",
    "WeightNormalization", "Symmetric", "SkewSymmetric", "Ref",
    "Constraint", "apply", "finalize", "contains_constraints", "NonNegative", "Clamp",
    # bijectors
    "Bijector", "log_det_jacobian", "Real", "Positive", "Bounded", "Simplex", "Ordered", "PositiveOrdered",
    "CorrCholesky", "CorrMatrix", "CovCholesky", "PositiveDefinite", "ZeroSum", "Constrained",
    "LocScale", "reparameterize",
    # densities, optimisation, sampling
    "partition", "log_prior", "log_density", "fit", "map_estimate", "FitResult", "laplace", "LaplaceResult",
    "Approximation",
    "sample", "Posterior", "ReliabilityWarning",
    # submodules
    "geometry", "numpyro", "blackjax",
]
