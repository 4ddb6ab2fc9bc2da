"""Constraint -> map: our own transforms, and a registry that falls back to NumPyro's.

:data:`biject_to` is a :class:`numpyro.distributions.transforms.ConstraintRegistry` whose
lookups fall back to NumPyro's ``biject_to``; a constraint type registered here takes
precedence. Our own maps, each for a stated reason:

* positive-ordered vectors: Stan's ``cumsum(exp(u))`` (NumPyro's exp∘ordered couples every
  coordinate and samples an iid-Exponential prior worse);
* correlation Cholesky factors and matrices: NumPyro's ``CorrCholeskyTransform`` computes
  ``sqrt(1 - cumsum(y²))``, exactly 0 in float32 at |x| ≳ 10, so ``-inf`` log-Jacobians and
  NaN gradients; ours works in log space;
* lower Cholesky factors: NumPyro's map, so that float32 inputs work under ``jax_enable_x64``;
* probability vectors: NumPyro's stick-breaking map computed without cancellation (NumPyro's
  loses small entries, and its float32 log-Jacobian is wrong from |x| ~ 20 and -inf at 80);
* zero-sum vectors: the log-Jacobian measured on the first n-1 coordinates (our convention).

:func:`forward_and_log_det` evaluates a map and its log-Jacobian in one pass, through
NumPyro's ``call_with_intermediates`` (our correlation maps hand their shared parts on).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.nn import softplus
from jaxtyping import Array
from numpyro.distributions import constraints
from numpyro.distributions import transforms as T


class _Registry(T.ConstraintRegistry):
    """NumPyro's registry, falling back to NumPyro's own ``biject_to`` for the rest. An
    ``independent`` constraint maps through this registry's map of its base (NumPyro's would
    look its base up in NumPyro's registry, bypassing ours)."""

    def __call__(self, constraint: constraints.Constraint) -> T.Transform:
        if isinstance(constraint, constraints._IndependentConstraint):
            base = self(constraint.base_constraint)
            return T.IndependentTransform(base, constraint.reinterpreted_batch_ndims)
        factory = self._registry.get(type(constraint))
        return T.biject_to(constraint) if factory is None else factory(constraint)


biject_to = _Registry()


def forward_and_log_det(t: T.Transform, x: Array) -> tuple[Array, Array]:
    """``(t(x), log|det J_t(x)|)`` with the work they share done once; an identity map
    gives the Python float ``0.0`` (no ops traced for a log-Jacobian that is zero)."""
    if type(t) is T.IdentityTransform:
        return x, 0.0
    y, intermediates = t.call_with_intermediates(x)
    return y, t.log_abs_det_jacobian(x, y, intermediates=intermediates)


class CumsumExpTransform(T.Transform):
    # Stan's positive_ordered map: y = cumsum(exp(u)). Written here because NumPyro's
    # biject_to(positive_ordered_vector) is exp∘ordered, y = exp(u₀ + Σ exp(uᵢ)), whose
    # curvature couples every coordinate and samples an iid-Exponential prior worse.
    domain = constraints.real_vector
    codomain = constraints.positive_ordered_vector
    sign = 1

    def __call__(self, x):
        return jnp.cumsum(jnp.exp(x), axis=-1)

    def _inverse(self, y):
        return jnp.log(jnp.diff(y, axis=-1, prepend=jnp.zeros_like(y[..., :1])))

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        return jnp.sum(x, axis=-1)


def _log1m_tanh_sq(x: Array) -> Array:
    """log(1 - tanh(x)²) = 2·(log 2 - |x| - softplus(-2|x|)), finite for every finite x."""
    ax = jnp.abs(x)
    return 2.0 * (jnp.log(2.0) - ax - softplus(-2.0 * ax))


def tril_dim(m: int) -> int:
    """``d`` such that ``m = d(d-1)/2``."""
    d = int(round((1 + np.sqrt(1 + 8 * m)) / 2))
    if d * (d - 1) // 2 != m:
        raise ValueError(f"{m} is not a triangular number d(d-1)/2.")
    return d


def strict_tril(v: Array, d: int) -> Array:
    """Fill the strictly lower triangle row by row (NumPyro's order), keeping ``v``'s dtype."""
    rows, cols = np.tril_indices(d, -1)
    return jnp.zeros(v.shape[:-1] + (d, d), dtype=v.dtype).at[..., rows, cols].set(v)


def corr_cholesky_parts(x: Array) -> tuple[Array, Array, Array]:
    """Cholesky factor ``L`` of a correlation matrix from ``x`` (NumPyro's order: tanh, then
    signed stick-breaking by rows), plus ``log1m z²`` and the exclusive row cumsum of it, all
    computed in log space so nothing underflows to 0."""
    d = tril_dim(x.shape[-1])
    z = strict_tril(jnp.tanh(x), d)
    log1mz2 = strict_tril(_log1m_tanh_sq(x), d)
    log_rem = jnp.cumsum(log1mz2, axis=-1) - log1mz2  # Σ_{k<j} log(1 - z_ik²)
    scale = jnp.exp(0.5 * log_rem)
    L = z * scale + jnp.eye(d, dtype=x.dtype) * scale
    return L, log1mz2, log_rem


def _corr_cholesky_log_det(log1mz2: Array, log_rem: Array) -> Array:
    # ∂L_ij/∂x_ij = (1 - z_ij²)·sqrt(Π_{k<j}(1 - z_ik²)); the Jacobian is triangular.
    d = log1mz2.shape[-1]
    strict = jnp.tril(jnp.ones((d, d), dtype=bool), -1)
    return jnp.sum(jnp.where(strict, log1mz2 + 0.5 * log_rem, 0.0), axis=(-1, -2))


def _corr_cholesky_inverse(L: Array) -> Array:
    """``x`` with ``corr_cholesky_parts(x)[0] == L``: ``z_ij = L_ij / sqrt(Σ_{k≥j} L_ik²)``.
    NumPyro writes the remaining stick as ``1 - Σ_{k<j} L_ik²``, which cancels when a row's
    tail is small (the round trip then lost up to ~300 ulps in float32); the tail sum is exact
    to a few ulps, so a value comes back as given."""
    d = L.shape[-1]
    sq = jnp.tril(L) ** 2
    rem = jnp.flip(jnp.cumsum(jnp.flip(sq, -1), axis=-1), -1)  # Σ_{k≥j} L_ik²
    rows, cols = np.tril_indices(d, -1)
    z = L[..., rows, cols] / jnp.sqrt(rem[..., rows, cols])
    return jnp.arctanh(jnp.clip(z, -1 + jnp.finfo(L.dtype).eps, 1 - jnp.finfo(L.dtype).eps))


class CorrCholeskyTransform(T.Transform):
    domain = constraints.real_vector
    codomain = constraints.corr_cholesky

    def __call__(self, x):
        return corr_cholesky_parts(x)[0]

    def call_with_intermediates(self, x):
        L, log1mz2, log_rem = corr_cholesky_parts(x)
        return L, (log1mz2, log_rem)

    def _inverse(self, y):
        return _corr_cholesky_inverse(y)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        _, log1mz2, log_rem = corr_cholesky_parts(x) if intermediates is None else (None, *intermediates)
        return _corr_cholesky_log_det(log1mz2, log_rem)


class CorrMatrixTransform(T.Transform):
    domain = constraints.real_vector
    codomain = constraints.corr_matrix

    def __call__(self, x):
        return self.call_with_intermediates(x)[0]

    def call_with_intermediates(self, x):
        L, log1mz2, log_rem = corr_cholesky_parts(x)
        return L @ jnp.swapaxes(L, -1, -2), (log1mz2, log_rem)

    def _inverse(self, y):
        return _corr_cholesky_inverse(jnp.linalg.cholesky(y))

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        # L ↦ C = L Lᵀ on the strict lower triangles has |det| = Π_i L_ii^(d-1-i).
        _, log1mz2, log_rem = corr_cholesky_parts(x) if intermediates is None else (None, *intermediates)
        d = log_rem.shape[-1]
        log_diag = 0.5 * jnp.diagonal(log_rem, axis1=-2, axis2=-1)
        power = jnp.arange(d - 1, -1, -1, dtype=x.dtype)
        return _corr_cholesky_log_det(log1mz2, log_rem) + jnp.sum(power * log_diag, axis=-1)


class LowerCholeskyTransform(T.LowerCholeskyTransform):
    # NumPyro's map (strict lower triangle, then exp of the diagonal), re-implemented only so
    # that float32 inputs work when jax_enable_x64 is on (NumPyro's vec_to_tril_matrix mixes
    # dtypes there and raises).
    def __call__(self, x):
        n = tril_dim(x.shape[-1]) - 1  # x has n(n+1)/2 = (n+1)n/2 entries
        # The diagonal is placed with `where`, not multiplied by the identity: where exp
        # overflows (float32, x > 88) that gives inf on the diagonal, not inf * 0 = NaN off it.
        diag = jnp.where(jnp.eye(n, dtype=bool), jnp.exp(x[..., -n:])[..., None], jnp.zeros((), x.dtype))
        return strict_tril(x[..., :-n], n) + diag


class StickBreakingTransform(T.StickBreakingTransform):
    """NumPyro's stick-breaking map (same ``x ↦ y``), computed without cancellation.

    NumPyro writes the remaining stick as ``1 - z`` forwards and ``1 - cumsum(y)`` backwards:
    both cancel, so ``Simplex([0.9999, 1e-4 - 1e-8, 1e-8])`` came back with a last entry 840×
    too small. Here ``1 - sigmoid(t)`` is ``sigmoid(-t)`` and the remaining stick is the tail
    sum of ``y``, so every entry, however small, round-trips to a few ulps. The log-Jacobian
    is in log space, ``Σ_i log z_i + Σ_{j≤i} log(1 - z_j)`` with ``log z = log_sigmoid(x)``,
    so it and its gradient stay finite where ``y`` underflows (NumPyro's ``log(y * z)`` gives
    a NaN gradient in float32 at x = (100, -100, 100))."""

    @staticmethod
    def _shift(n: int, dtype) -> Array:  # NumPyro's centring: x = 0 maps to the uniform simplex
        return jnp.log(n - jnp.arange(n, dtype=dtype))

    def __call__(self, x):
        x = x - self._shift(x.shape[-1], x.dtype)
        tiny = jnp.finfo(x.dtype).tiny  # no entry is ever exactly 0 (log y stays finite)
        z = jnp.maximum(jax.nn.sigmoid(x), tiny)
        rest = jnp.cumprod(jnp.maximum(jax.nn.sigmoid(-x), tiny), axis=-1)  # Π_{j≤i} (1 - z_j)
        one = jnp.ones(x.shape[:-1] + (1,), x.dtype)
        # the products can still underflow (float32, x = (60, 60)): clamp them too, so that a
        # Dirichlet log-density stays finite where NumPyro's clipped map keeps it finite
        return jnp.maximum(jnp.concatenate([z, one], -1) * jnp.concatenate([one, rest], -1), tiny)

    def _inverse(self, y):
        tail = jnp.flip(jnp.cumsum(jnp.flip(y, -1), axis=-1), -1)  # Σ_{j≥i} y_j: the stick left at i
        tiny = jnp.finfo(y.dtype).tiny
        x = jnp.log(jnp.maximum(y[..., :-1], tiny)) - jnp.log(jnp.maximum(tail[..., 1:], tiny))
        return x + self._shift(x.shape[-1], x.dtype)

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        x = x - jnp.log(x.shape[-1] - jnp.arange(x.shape[-1], dtype=x.dtype))  # NumPyro's centring shift
        return jnp.sum(jax.nn.log_sigmoid(x) + jnp.cumsum(jax.nn.log_sigmoid(-x), axis=-1), axis=-1)

    def tree_flatten(self):
        return (), ((), dict())

    def __eq__(self, other):
        return isinstance(other, StickBreakingTransform)


def _gram(L: Array) -> Array:
    """``L @ Lᵀ`` for lower-triangular ``L`` summing only the structurally non-zero products:
    an infinite diagonal entry (float32 overflow) then gives inf, never inf * 0 = NaN, in the
    value and in its gradient (the masked entries are replaced before multiplying)."""
    n = L.shape[-1]
    k = jnp.arange(n)
    mask = k[None, None, :] <= jnp.minimum(k[:, None, None], k[None, :, None])  # k <= min(i, j)
    one = jnp.ones((), L.dtype)
    a = jnp.where(mask, L[..., :, None, :], one)
    b = jnp.where(mask, L[..., None, :, :], one)
    return jnp.sum(jnp.where(mask, a * b, jnp.zeros((), L.dtype)), axis=-1)


class PositiveDefiniteTransform(LowerCholeskyTransform):
    """Σ = L Lᵀ with ``L`` from :class:`LowerCholeskyTransform`. The log-Jacobian is written
    from the unconstrained diagonal (``log L_ii = x_ii`` exactly) rather than from ``log`` of
    ``L``'s diagonal, which underflows to ``log 0`` in float32 at x ~ -100."""

    codomain = constraints.positive_definite

    def __call__(self, x):
        return _gram(super().__call__(x))

    def _inverse(self, y):
        return super()._inverse(jnp.linalg.cholesky(y))

    def log_abs_det_jacobian(self, x, y, intermediates=None):
        n = tril_dim(x.shape[-1]) - 1
        log_diag = x[..., -n:]
        # NumPyro's CholeskyTransform, inverted: n log 2 + sum_i (n - i) log L_ii (0-based i),
        # plus the exp of the diagonal in the lower-Cholesky map
        power = jnp.arange(n, 0, -1, dtype=x.dtype)
        return n * jnp.log(jnp.asarray(2.0, x.dtype)) + jnp.sum((power + 1) * log_diag, axis=-1)

    def tree_flatten(self):
        return (), ((), dict())

    def __eq__(self, other):
        return isinstance(other, PositiveDefiniteTransform)


class ZeroSumTransform(T.ZeroSumTransform):
    # NumPyro's map is an isometry onto the zero-sum hyperplane (log-det 0 w.r.t. its surface
    # measure). Our convention measures the first n-1 coordinates, which adds log(1/√n); over
    # k zero-sum axes (sizes nᵢ = mᵢ + 1) the map is a Kronecker product, so each axis adds
    # log(1/√nᵢ) once per free entry of the other axes.
    def log_abs_det_jacobian(self, x, y, intermediates=None):
        m = x.shape[x.ndim - self.transform_ndims :]
        size = int(np.prod(m))
        total = sum(-0.5 * np.log(mi + 1) * (size // mi) for mi in m)
        return jnp.full(x.shape[: x.ndim - self.transform_ndims], total, dtype=x.dtype)


def positive_definite_transform() -> T.Transform:
    """Σ = L Lᵀ with ``L`` from :class:`LowerCholeskyTransform`."""
    return PositiveDefiniteTransform()


def _own(factory: Any):
    return lambda constraint: factory()


biject_to.register(constraints.simplex, _own(StickBreakingTransform))
biject_to.register(constraints.positive_ordered_vector, _own(CumsumExpTransform))
biject_to.register(constraints.corr_cholesky, _own(CorrCholeskyTransform))
biject_to.register(constraints.corr_matrix, _own(CorrMatrixTransform))
biject_to.register(constraints.lower_cholesky, _own(LowerCholeskyTransform))
biject_to.register(constraints.positive_definite, _own(positive_definite_transform))
biject_to.register(constraints._ZeroSum, lambda c: ZeroSumTransform(c.event_dim))
