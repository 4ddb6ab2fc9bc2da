"""Bijectors: unwrappables that store *unconstrained* arrays and know their log-Jacobian.

``base`` (the one-pass contract), ``maps`` (our own maps and a constraint -> map registry
over NumPyro's ``biject_to``), ``checks`` (value, bound and prior checks), the named
bijectors (``named``, ``vectors``, ``matrices``) and ``locscale`` (the centred /
non-centred family).
"""

from .base import Bijector
from .locscale import LocScale, reparameterize
from .maps import biject_to
from .matrices import CorrCholesky, CorrMatrix, CovCholesky, PositiveDefinite
from .named import Bounded, Constrained, NamedBijector, Positive, Real
from .vectors import Ordered, PositiveOrdered, Simplex, ZeroSum

__all__ = [
    "Bijector",
    "Bounded",
    "Constrained",
    "CorrCholesky",
    "CorrMatrix",
    "CovCholesky",
    "LocScale",
    "NamedBijector",
    "Ordered",
    "Positive",
    "PositiveDefinite",
    "PositiveOrdered",
    "Real",
    "Simplex",
    "ZeroSum",
    "biject_to",
    "reparameterize",
]
