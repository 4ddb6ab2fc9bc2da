"""Convergence of ``rb.fit`` / ``rb.map_estimate``: when to stop, and what to say.

The compiled loop reports, per step, the loss and the gradient norm, and at the end of every
chunk the gradient norm at the current point. This module turns them into a decision
(stop early, converged or not) and, when the run did not converge because the objective has
no minimum along some parameter (it grew without bound), into an error naming it.

Example:
    >>> c = Tolerance(tol=1e-3, rtol=None)
    >>> c.met(losses=[5.0, 4.0], final_gnorm=1e-5), c.met(losses=[5.0, 4.0], final_gnorm=1.0)
    (True, False)
"""

import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from jaxtyping import PyTree

from ._checks import ReliabilityWarning, check_positive_float
from ._paths import path_to_str

# A leaf that moved by more than this, relative to 1 + its starting size, while the
# gradient stayed large, is running away: the objective has no optimum along it.
_RUNAWAY = 1e6


class Tolerance(NamedTuple):
    """``tol``: stop when the gradient norm <= ``tol * max(1, |loss|)``; ``rtol``: stop when
    the loss changed by <= ``rtol * max(1, |loss|)`` over the last step. ``None``: not used."""

    tol: float | None
    rtol: float | None

    @classmethod
    def of(cls, tol: Any, rtol: Any, what: str) -> "Tolerance":
        return cls(check_positive_float("tol", tol, what), check_positive_float("rtol", rtol, what))

    @property
    def active(self) -> bool:
        return self.tol is not None or self.rtol is not None

    def met(self, losses, final_gnorm: float) -> bool:
        """The gradient is small, or the loss changed by less than ``rtol`` in a step, or (with
        ``tol``) it has stalled over 5 steps: no progress is possible at this precision.
        ``losses``: those of the run so far (only the last five are read)."""
        losses = _floats(losses)
        if not losses:
            return False
        if self.grad_small(losses, final_gnorm):
            return True
        scale = max(1.0, abs(losses[-1]))
        if self.rtol is not None and len(losses) >= 2:
            return abs(losses[-1] - losses[-2]) <= self.rtol * scale
        return self.tol is not None and _stalled(losses)

    def grad_small(self, losses, final_gnorm: float) -> bool:
        losses = _floats(losses)
        scale = max(1.0, abs(losses[-1])) if losses else 1.0
        return self.tol is not None and math.isfinite(final_gnorm) and final_gnorm <= self.tol * scale


def _floats(losses) -> list[float]:
    # Python floats: the convergence tests read a handful of losses, where NumPy's per-call
    # cost (~5 us an operation) made the report a tenth of a 3,000-step fit's overhead
    return losses if type(losses) is list else np.asarray(losses, dtype=np.float64).ravel().tolist()


class Movement(NamedTuple):
    """How far each free leaf went in a run: its name (dotted path), and per leaf
    ``max |start|``, ``max |end - start|`` and ``max |end|`` (the three rows of ``extents``)."""

    names: list[str]
    extents: tuple[list[float], list[float], list[float]]

    @classmethod
    def of(cls, start: PyTree, end: PyTree) -> "Movement":
        """Measured here (the compiled loop returns its own extents)."""
        a, b = jax.device_get((jax.tree_util.tree_leaves(start), jax.tree_util.tree_leaves(end)))
        a, b = [np.asarray(x, np.float64) for x in a], [np.asarray(x, np.float64) for x in b]
        rows = (a, [y - x for x, y in zip(a, b)], b)
        return cls(leaf_names(start), tuple([float(np.max(np.abs(x), initial=0.0)) for x in xs] for xs in rows))

    def moved(self, name: str) -> float:
        return self.extents[1][self.names.index(name)]


def leaf_names(tree: PyTree) -> list[str]:
    """The dotted path of each leaf of ``tree``."""
    return [path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def runaway_leaves(movement: Movement) -> list[tuple[str, float, float]]:
    """``(path, start size, end size)`` of the free arrays that moved by more than
    ``_RUNAWAY`` times ``1 + `` their starting size (largest first)."""
    hits = [
        (name, size0, size)
        for name, size0, moved, size in zip(movement.names, *movement.extents)
        if math.isfinite(moved) and moved > _RUNAWAY * (1.0 + size0)
    ]
    return sorted(hits, key=lambda t: -t[2])


def _stalled(losses: list[float]) -> bool:
    tail = losses[-5:]
    if len(tail) < 5 or not all(map(math.isfinite, tail)):
        return False
    return max(tail) - min(tail) <= 1e-6 * max(1.0, abs(tail[-1]))


def report(
    what: str,
    tolerance: Tolerance,
    losses,
    final_gnorm: float,
    movement: Movement,
    grad_norms: Callable[[], Any],
    *,
    warn: bool,
    steps: int,
) -> bool | None:
    """After the last chunk: raise if the objective ran away along a parameter, warn (when
    ``warn``) if the tolerance was not met, naming the parameter with the largest gradient
    (and calling the objective degenerate along it when the loss has stalled while that
    parameter went far); return ``converged`` (``None`` if not judged). ``losses``: the run's
    first loss and its last few (or all of them)."""
    losses = _floats(losses)
    # Checked first: on a runaway the loss is huge, so a relative tolerance looks met.
    runaway = runaway_leaves(movement)
    if runaway and len(losses) >= 2 and losses[-1] < losses[0]:
        path, size0, size = runaway[0]
        raise ValueError(
            f"{what}: the objective looks unbounded along '{path}': it moved from about {size0:.3g} "
            f"to {size:.3g} (unconstrained) while the loss kept falling ({losses[0]:.6g} -> "
            f"{losses[-1]:.6g}; gradient norm {final_gnorm:.3g}). There is no optimum to return: "
            "add a prior or a bound for that parameter, or check the sign of the objective."
        )
    converged = tolerance.met(losses, final_gnorm) if tolerance.active else None
    if not converged and not (converged is None or warn):
        return converged
    if converged is None or tolerance.grad_small(losses, final_gnorm):
        return converged
    # Not converged, or converged only because the loss stalled: which parameter is to blame?
    grads = [(name, float(g)) for name, g in zip(movement.names, grad_norms())]
    where, degenerate = "", False
    if grads:
        path, g = max(grads, key=lambda t: t[1] if math.isfinite(t[1]) else math.inf)
        moved = movement.moved(path)
        if _stalled(losses) and moved > 20.0:
            degenerate = True
            where = (
                f" The loss has stalled while '{path}' moved by {moved:.3g} (unconstrained) and "
                f"its gradient is still {g:.3g}: the objective is likely degenerate along it "
                "(e.g. a scale collapsing to 0 where the likelihood grows without bound); "
                "add a prior that keeps it away from the boundary."
            )
            # no optimum to return, as for an unbounded objective (and the same on every JAX:
            # whether the gradient has already overflowed to NaN there depends on the trajectory)
            kind = "is non-finite" if not math.isfinite(g) else "has not vanished"
            raise ValueError(f"{what}: the gradient at the returned point {kind} along '{path}'.{where}")
        else:
            where = f" The gradient is largest along '{path}' ({g:.3g})."
    if converged and not degenerate:
        return True
    if warn:
        tol = f"tol={tolerance.tol}" if tolerance.tol is not None else f"rtol={tolerance.rtol}"
        last = f"{losses[-1]:.6g}" if len(losses) else "n/a"
        warnings.warn(
            f"{what}: did not converge in {steps} steps ({tol} not met: gradient norm {final_gnorm:.3g}, "
            f"last loss {last}).{where} The result is the last iterate, not an optimum: raise steps=, "
            "change the optimiser or its learning rate, or loosen tol=.",
            ReliabilityWarning,
            stacklevel=4,
        )
    return False
