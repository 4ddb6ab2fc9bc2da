"""The bijector contract: one pass gives the constrained value and its log-Jacobian."""

from typing import Any, ClassVar

import jax.numpy as jnp
from jaxtyping import Array, Float

from .._tree import Unwrappable


class Bijector(Unwrappable[Any]):
    """Abstract bijector: an :class:`Unwrappable` whose free arrays are *unconstrained*.

    Implementer's checklist — a subclass

    1. stores its unconstrained arrays as ordinary fields (anything else that must not be
       sampled goes in ``eqx.field(static=True)``, a :class:`NonTrainable`, or is itself a
       wrapped parameter / :class:`Ref`);
    2. implements **either** ``unwrap_and_log_det()``, returning the constrained value (an
       array or any PyTree) and ``log|det ∂(independent coordinates of the value)/∂(free
       arrays)|`` as a scalar, in one pass (as flowjax's ``transform_and_log_det``), **or**
       the two methods ``unwrap()`` and ``log_det_jacobian()`` separately; in both cases
       nested wrappers are already unwrapped when they are called;
    3. optionally has a ``prior`` field: a NumPyro distribution over the constrained value.

    The densities (``rb.log_density``, ``rb.sample``, ``rb.map_estimate(jacobian=True)``) call
    ``unwrap_and_log_det()`` once per bijector per trace, so a map whose value and Jacobian
    share work (a Cholesky factor, a cumulative sum) should implement it.

    Example — a value bounded above by another parameter (``0 < b < a``):
        >>> import jax, jax.numpy as jnp
        >>> import reparam_bridge as rb
        >>> class BelowA(rb.Bijector):
        ...     raw: jax.Array
        ...     a: rb.Positive
        ...     def unwrap_and_log_det(self):  # d b / d raw; a's own Jacobian is counted at a
        ...         b = self.a * jax.nn.sigmoid(self.raw)
        ...         log_det = jnp.log(self.a) + jax.nn.log_sigmoid(self.raw) + jax.nn.log_sigmoid(-self.raw)
        ...         return {"a": self.a, "b": b}, jnp.sum(log_det)
        >>> tree = BelowA(jnp.array(0.0), rb.Positive(4.0))
        >>> float(rb.unwrap(tree)["b"]), round(float(rb.log_det_jacobian(tree)), 4)  # log 4 - 2 log 2 + log 4
        (2.0, 1.3863)
    """

    freeze_whole: ClassVar[bool] = True  # rb.non_trainable freezes a bijector whole

    def unwrap_and_log_det(self) -> tuple[Any, Float[Array, ""]]:
        """The constrained value and the scalar log-Jacobian of the map, in one pass.

        The default calls ``unwrap()`` and ``log_det_jacobian()`` (for subclasses that
        implement those two)."""
        cls = type(self)
        if cls.unwrap is Bijector.unwrap or cls.log_det_jacobian is Bijector.log_det_jacobian:
            raise NotImplementedError(
                f"{cls.__name__}: a rb.Bijector implements unwrap_and_log_det() (value and "
                "log-Jacobian in one pass) or both unwrap() and log_det_jacobian()."
            )
        return self.unwrap(), self.log_det_jacobian()

    def unwrap(self) -> Any:
        """The constrained value (``unwrap_and_log_det()[0]``)."""
        return self.unwrap_and_log_det()[0]

    def log_det_jacobian(self) -> Float[Array, ""]:
        """Scalar log-Jacobian of ``unwrap()`` with respect to this node's free arrays
        (``unwrap_and_log_det()[1]``)."""
        return jnp.sum(self.unwrap_and_log_det()[1])

    def __check_init__(self):
        # What abc would check if the two forms were abstract methods: catch a subclass that
        # implements neither when it is built, not at its first use inside a trace.
        cls = type(self)
        one_pass = cls.unwrap_and_log_det is not Bijector.unwrap_and_log_det
        two = cls.unwrap is not Bijector.unwrap and cls.log_det_jacobian is not Bijector.log_det_jacobian
        if not (one_pass or two):
            raise TypeError(
                f"Can't instantiate {cls.__name__}: a rb.Bijector implements unwrap_and_log_det() "
                "or both unwrap() and log_det_jacobian()."
            )
