"""``rb.clear_caches()``: forget what the bridge keeps between calls."""

import jax


def clear_caches() -> None:
    """Forget every compiled program and every cached check: ``jax.clear_caches()`` plus the
    bridge's own caches (the fit loop's signatures and optimiser states, the compiled samplers
    of ``rb.sample``'s own loop, the checks a model has passed). The next call traces, checks
    and compiles afresh, as the first one did: to time a first call, to free what the kept
    programs hold, or after changing a global that a fitted ``log_joint`` reads (the fit loop
    is kept per signature and, as under ``jax.jit``, keeps the value it traced; ``rb.sample``'s
    kept sampler is keyed by the density's jaxpr and constants and needs no call).

    Example:
        >>> import reparam_bridge as rb
        >>> rb.clear_caches()
    """
    from . import _checks, _fit, _fitloop, _sharded

    jax.clear_caches()
    for cache in (_checks._PASSED, _fit._SPECS, _fitloop._VALUE_AND_GRAD, _fitloop._INIT, _fitloop._CONSTANTS):
        cache.clear()
    _sharded._RUNS.clear()
