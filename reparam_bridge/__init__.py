"""reparam_bridge: one wrapped Equinox PyTree for optax optimisation, NumPyro NUTS and ArviZ.

The names of ``DESIGN.md``'s public contract, plus a few extensions (``Clamp``, ``Ref``,
``LocScale``, ``reparameterize``, ``laplace``, ``Approximation`` and the submodules
``geometry``, ``numpyro``, ``blackjax``, ``arviz`` (the ArviZ 0.2x/1.x adapter)). How the
package is laid out: ``ARCHITECTURE.md``. Example:

    >>> import reparam_bridge as rb
    >>> rb.unwrap({"sigma": rb.Positive(2.0)})
    {'sigma': Array(2., dtype=float32)}
"""

from importlib import metadata as _metadata

from . import arviz as arviz  # rb.arviz: the ArviZ 0.2x/1.x adapter
from . import blackjax as blackjax  # the adapter; BlackJAX itself is imported by the user, never here
from . import geometry as geometry  # curvature, parameterisation comparison, plots
from . import numpyro as numpyro  # rb.numpyro.random_module / module; inside the package `import numpyro` is NumPyro
from . import testing as testing  # rb.testing.check_bijector (uses rb.* only at call time, so import order is free)
from ._approx import Approximation as Approximation
from ._bijectors import Bijector as Bijector
from ._bijectors import Bounded as Bounded
from ._bijectors import Constrained as Constrained
from ._bijectors import CorrCholesky as CorrCholesky
from ._bijectors import CorrMatrix as CorrMatrix
from ._bijectors import CovCholesky as CovCholesky
from ._bijectors import LocScale as LocScale
from ._bijectors import Ordered as Ordered
from ._bijectors import Positive as Positive
from ._bijectors import PositiveDefinite as PositiveDefinite
from ._bijectors import PositiveOrdered as PositiveOrdered
from ._bijectors import Real as Real
from ._bijectors import Simplex as Simplex
from ._bijectors import ZeroSum as ZeroSum
from ._bijectors import reparameterize as reparameterize
from ._caches import clear_caches as clear_caches
from ._checks import ReliabilityWarning as ReliabilityWarning
from ._constraint import Clamp as Clamp
from ._constraint import Constraint as Constraint
from ._constraint import NonNegative as NonNegative
from ._constraint import apply as apply
from ._constraint import contains_constraints as contains_constraints
from ._constraint import finalize as finalize
from ._density import log_density as log_density
from ._density import log_det_jacobian as log_det_jacobian
from ._density import log_prior as log_prior
from ._density import partition as partition
from ._effort import compile_effort as compile_effort
from ._fit import FitResult as FitResult
from ._fit import fit as fit
from ._laplace import LaplaceResult as LaplaceResult
from ._laplace import laplace as laplace
from ._map import map_estimate as map_estimate
from ._multistart import EnsembleResult as EnsembleResult
from ._multistart import fit_ensemble as fit_ensemble
from ._multistart import map_estimate_ensemble as map_estimate_ensemble
from ._pathfinder import PathfinderResult as PathfinderResult
from ._pathfinder import pathfinder as pathfinder
from ._posterior import Posterior as Posterior
from ._sample import sample as sample
from ._tree import NonTrainable as NonTrainable
from ._tree import Ref as Ref
from ._tree import Unwrappable as Unwrappable
from ._tree import contains_unwrappables as contains_unwrappables
from ._tree import unwrap as unwrap
from ._unwrappable import Parameterize as Parameterize
from ._unwrappable import SkewSymmetric as SkewSymmetric
from ._unwrappable import Symmetric as Symmetric
from ._unwrappable import WeightNormalization as WeightNormalization
from ._unwrappable import non_trainable as non_trainable
from ._variational import VariationalResult as VariationalResult
from ._variational import variational as variational
from ._warmstart import GoodApproximationWarning as GoodApproximationWarning

try:
    __version__ = _metadata.version("reparam_bridge")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    # Unwrappables and constraints (paramax / klax compatible)
    "Unwrappable",
    "unwrap",
    "contains_unwrappables",
    "Parameterize",
    "NonTrainable",
    "non_trainable",
    "WeightNormalization",
    "Symmetric",
    "SkewSymmetric",
    "Ref",
    "Constraint",
    "apply",
    "finalize",
    "contains_constraints",
    "NonNegative",
    "Clamp",
    # bijectors
    "Bijector",
    "log_det_jacobian",
    "Real",
    "Positive",
    "Bounded",
    "Simplex",
    "Ordered",
    "PositiveOrdered",
    "CorrCholesky",
    "CorrMatrix",
    "CovCholesky",
    "PositiveDefinite",
    "ZeroSum",
    "Constrained",
    "LocScale",
    "reparameterize",
    # densities, optimisation, sampling
    "partition",
    "log_prior",
    "log_density",
    "fit",
    "map_estimate",
    "FitResult",
    "laplace",
    "LaplaceResult",
    "sample",
    "Posterior",
    "clear_caches",
    "compile_effort",
    "variational",
    "VariationalResult",
    "Approximation",
    # warm starts: approximations and multi-start fits that seed rb.sample(init=...)
    "pathfinder",
    "PathfinderResult",
    "map_estimate_ensemble",
    "fit_ensemble",
    "EnsembleResult",
    "GoodApproximationWarning",
    "ReliabilityWarning",
    # the ArviZ 0.2x/1.x adapter (summary, ess, rhat, loo, netCDF, ... with the same numbers on both)
    "arviz",
    # submodules
    "geometry",
    "numpyro",
    "blackjax",
    "testing",
]
