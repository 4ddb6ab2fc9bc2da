"""Pareto-smoothed importance sampling and PSIS-LOO with the same numbers on ArviZ 0.2x and 1.x."""

import math
from typing import Any

import numpy as np

from ._arviz import arviz_major, import_arviz


def psislw(log_ratios: np.ndarray, reff: float = 1.0) -> tuple[np.ndarray, float]:
    """Pareto-smoothed importance sampling of ``log_ratios = log p - log q`` (last axis: draws):
    the smoothed, normalised log-weights and the Pareto k-hat, the same numbers on both ArviZ lines.

    ArviZ 1.x's array ``psislw`` takes log-*likelihoods* (it negates them) and fits
    ``floor(3 sqrt(S / r_eff))`` tail draws where 0.2x fits ``ceil(min(S / 5, 3 sqrt(S / r_eff)))``;
    the r_eff passed to 1.x below gives it 0.2x's tail length (exactly, except for fewer than about
    225 draws that are not a multiple of 5).

    Example:
        >>> import numpy as np
        >>> lw, khat = psislw(np.random.default_rng(0).normal(size=1000) * 0.5)
        >>> round(float(np.exp(lw).sum()), 6), round(khat, 3)
        (1.0, 0.185)
    """
    az = import_arviz()
    log_ratios = np.asarray(log_ratios)
    # rounding of the model's arithmetic: float32 (JAX's default) unless the ratios say coarser;
    # callers often hand float64 copies of float32 numbers, so the dtype alone cannot tell
    eps = np.finfo(np.float32).eps
    if np.issubdtype(log_ratios.dtype, np.floating):
        eps = max(eps, np.finfo(log_ratios.dtype).eps)
    log_ratios = log_ratios.astype(np.float64)
    n = log_ratios.shape[-1]
    tail = math.ceil(min(n / 5.0, 3 * math.sqrt(n / reff)))
    top = np.sort(log_ratios, axis=-1)[..., -tail:]
    if log_ratios.ndim == 1 and np.ptp(top) <= 64 * eps * max(1.0, float(np.abs(top).max())):
        # q equals p in the tail (up to a few ulps of rounding): the weights need no smoothing and the
        # Pareto fit is undefined (0.2x returns inf for equal values, 1.x raises or gives nan).
        # A tail lighter than any Pareto's is k = -inf, the same on both lines.
        return log_ratios - np.logaddexp.reduce(log_ratios), -math.inf
    if arviz_major() < 1:
        lw, khat = az.psislw(log_ratios, reff=reff)
        return np.asarray(lw), float(np.asarray(khat))
    from arviz_stats.base import array_stats

    lw, khat = array_stats.psislw(-log_ratios, r_eff=9 * n / (tail + 0.5) ** 2)
    return np.asarray(lw), float(np.asarray(khat))


class Loo:
    """``az.loo`` read the same way on both lines: ``elpd_loo``, ``se``, ``p_loo``,
    ``pareto_k`` (one per observation), ``n_data_points``; ``native`` is ArviZ's own object."""

    def __init__(self, native: Any):
        self.native = native
        new = hasattr(native, "elpd")  # ArviZ 1.x ELPDData; 0.x's is a pandas Series
        self.elpd_loo = float(native.elpd if new else native["elpd_loo"])
        self.se = float(native.se if new else native["se"])
        self.p_loo = float(native.p if new else native["p_loo"])
        self.pareto_k = np.asarray(native.pareto_k if new else native["pareto_k"])
        self.n_data_points = int(native.n_data_points)

    def __repr__(self) -> str:
        return f"Loo(elpd_loo={self.elpd_loo:.3f}, se={self.se:.3f}, p_loo={self.p_loo:.3f}, max k={self.pareto_k.max():.2f})"


def loo(idata: Any, var_name: str | None = None) -> Loo:
    """PSIS-LOO from the ``log_likelihood`` group (``var_name`` picks one of several observed variables)."""
    return Loo(import_arviz().loo(idata, var_name=var_name))
