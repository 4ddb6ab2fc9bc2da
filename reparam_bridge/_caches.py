"""What the bridge keeps between calls (compiled loops and samplers, optimiser states, passed
checks), in bounded dicts that ``rb.clear_caches()`` empties all at once."""

from typing import Any

import jax

_ALL: list["Cache"] = []


class Cache(dict):
    """A dict kept between calls that holds at most ``size`` entries (a bound: keys and values
    hold user functions, their closures and compiled programs), registered with
    :func:`clear_caches`. :meth:`put` drops the oldest entry when full; to keep the most
    recently used instead, ``pop`` an entry and ``put`` it back.

    Example:
        >>> seen = Cache(2)
        >>> for k in "abc":
        ...     _ = seen.put(k, k.upper())
        >>> list(seen), any(c is seen for c in _ALL)
        (['b', 'c'], True)
        >>> _ALL.remove(seen)  # (a doctest's: module-level caches stay registered)
    """

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        _ALL.append(self)  # module-level caches only: registered for good

    def put(self, key: Any, value: Any) -> Any:
        """``self[key] = value``, first dropping the oldest entry if full; returns ``value``."""
        if key not in self and len(self) >= self.size:
            del self[next(iter(self))]
        self[key] = value
        return value


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
    jax.clear_caches()
    for cache in _ALL:
        cache.clear()
