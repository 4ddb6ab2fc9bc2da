"""Whether the draws of ``rb.sample`` can be trusted, said out loud.

After every run the unconstrained draws and the sampler statistics are checked for the
failures that otherwise pass silently: non-finite draws (an improper posterior: a parameter
with no prior under a flat or unbounded likelihood), mostly divergent transitions (a funnel or
a bad parameterisation), and split r-hat / bulk ESS far from what mixing chains give. One
``rb.ReliabilityWarning`` lists the numbers and the likely cause.

Example:
    >>> import numpy as np
    >>> draws = {"mu": np.full((2, 50), np.inf)}
    >>> problems(draws, {"diverging": np.zeros((2, 50), bool)})[0]
    "100% of the draws of 'mu' are not finite"
    >>> z = np.random.default_rng(0).normal(size=(3, 25))  # antithetic draws: more than n effective
    >>> problems({"mu": np.stack([z, -0.9 * z], -1).reshape(3, 50)}, {})
    []
"""

import warnings
from typing import Any

import numpy as np
from numpyro.diagnostics import effective_sample_size, split_gelman_rubin

from ._checks import ReliabilityWarning
from ._paths import leaves_with_paths

RHAT_MAX = 1.1  # Vehtari et al. (2021) recommend 1.01; 1.1 is "far off", not "not yet polished"
ESS_MIN = 10  # fewer than 10 effective draws in all chains: the summary is noise
DIVERGENT_MAX = 0.25  # a quarter of the transitions diverged: the sampler is not exploring
_MAX_COORDS = 2000  # r-hat/ESS on at most this many coordinates (cost stays small)


def problems(samples: Any, stats: dict[str, Any]) -> list[str]:
    """What is wrong with the draws, one sentence each (``[]`` when nothing is)."""
    out = []
    finite = True
    coords = []
    for path, x in leaves_with_paths(samples):
        x = np.asarray(x)
        if x.ndim < 2 or not np.issubdtype(x.dtype, np.floating):
            continue
        bad = ~np.isfinite(x)
        if bad.any():
            finite = False
            out.append(f"{bad.mean():.0%} of the draws of '{path}' are not finite")
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        coords.extend((f"{path}[{i}]" if flat.shape[2] > 1 else path, flat[:, :, i]) for i in range(flat.shape[2]))
    div = stats.get("diverging")
    if div is not None and np.size(div):
        frac = float(np.mean(np.asarray(div)))
        if frac > DIVERGENT_MAX:
            out.append(f"{frac:.0%} of the transitions diverged")
    coords = coords[:_MAX_COORDS]
    if finite and coords and coords[0][1].shape[1] >= 4:
        block = np.stack([c for _, c in coords], axis=-1).astype(np.float64)  # (chain, draw, k)
        varying = np.std(block, axis=(0, 1)) > 0
        if varying.any():
            block, names = block[..., varying], [n for (n, _), v in zip(coords, varying) if v]
            if block.shape[0] >= 2:
                rhat = np.asarray(split_gelman_rubin(block))
                worst = int(np.nanargmax(rhat)) if np.isfinite(rhat).any() else None
                if worst is not None and rhat[worst] > RHAT_MAX:
                    out.append(f"split r-hat is {rhat[worst]:.3g} for '{names[worst]}' (want < {RHAT_MAX})")
            ess = np.asarray(effective_sample_size(block))
            # antithetic chains (HMC with a few steps on a near-Gaussian) make NumPyro's estimate
            # negative; ArviZ caps the ESS at n log10(n) there, and so do we (not a failure)
            n = block.shape[0] * block.shape[1]
            ess = np.where(ess < 0, n * np.log10(n), ess)
            worst = int(np.nanargmin(ess)) if np.isfinite(ess).any() else None
            if worst is not None and ess[worst] < ESS_MIN:
                out.append(f"the effective sample size is {ess[worst]:.3g} for '{names[worst]}' (want >= {ESS_MIN})")
    return out


def _cause(found: list[str]) -> str:
    if any("not finite" in p for p in found):
        return (
            "the posterior is probably improper (a parameter with no prior in a flat or unbounded "
            "likelihood) or log_joint is infinite somewhere; give every parameter a proper prior"
        )
    if any("diverged" in p for p in found):
        return (
            "the geometry is hard for HMC (a funnel or a scale near 0): reparameterise (e.g. "
            "rb.LocScale(..., centered=0.0)), or raise target_accept_prob"
        )
    return (
        "the chains have not mixed: run longer (num_warmup, num_samples), or reparameterise "
        "the parameters named; a multimodal or improper posterior also does this"
    )


def check_draws(samples: Any, stats: dict[str, Any], what: str = "rb.sample") -> list[str]:
    """Warn once, with the numbers and the likely cause, if the draws cannot be trusted."""
    found = problems(samples, stats)
    if found:
        warnings.warn(
            f"{what}: these draws cannot be trusted: {'; '.join(found)}. Likely cause: {_cause(found)}.",
            ReliabilityWarning,
            stacklevel=3,
        )
    return found
