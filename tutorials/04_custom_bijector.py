"""Tutorial 4 — writing your own ``rb.Bijector``: a bound that depends on another parameter.

We want ``0 < b < a`` where ``a`` is itself a parameter. No named bijector does that, so we
write one. The implementer's checklist of ``rb.Bijector``:

1. store the unconstrained array(s) as ordinary fields (here ``raw``); anything that must not be
   sampled is static, frozen, a wrapped parameter, or an ``rb.Ref`` to a sibling (here ``upper``);
2. ``unwrap()``: the constrained value, ``b = upper · sigmoid(raw)``;
3. ``log_det_jacobian()``: ``log |∂b/∂raw| = log upper + log σ(raw) + log σ(-raw)``, summed.
   The dependence of ``b`` on ``a`` does not enter: the map (raw_a, raw) ↦ (a, b) is
   triangular, so its determinant is ``∂a/∂raw_a · ∂b/∂raw`` and ``a``'s own bijector counts the
   first factor. We check that against autodiff (``jax.jacfwd`` + ``slogdet``) below.

Then a prior-only sampling check: ``a ~ Gamma(3, 1)`` and ``b | a ~ Uniform(0, a)``, so
``E[a] = 3``, ``E[b] = 1.5`` and ``b / a ~ Uniform(0, 1)``.

Run:  python tutorials/04_custom_bijector.py [--fast] [--out outputs]
"""

import argparse
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from jax.flatten_util import ravel_pytree

import reparam_bridge as rb


class BelowUpper(rb.Bijector):
    """``0 < b < upper``: ``b = upper · sigmoid(raw)``. ``upper`` is a positive wrapped
    parameter or an ``rb.Ref`` to one (a Ref has a value only inside the whole tree, so the
    constructor then needs ``upper_value`` to turn ``value`` into ``raw``)."""

    raw: jax.Array
    upper: Any

    def __init__(self, value, upper, *, upper_value=None):
        u = upper_value if isinstance(upper, rb.Ref) else rb.unwrap(upper)
        if u is None:
            raise TypeError("BelowUpper: with upper=rb.Ref(...), give upper_value= (its current value).")
        value, u = jnp.asarray(value, dtype=float), jnp.asarray(u, dtype=float)
        if not bool(jnp.all((0 < value) & (value < u))):
            raise ValueError(f"BelowUpper: need 0 < value < upper, got value={value}, upper={u}.")
        self.raw = jnp.log(value) - jnp.log(u - value)  # logit(value / upper)
        self.upper = upper

    def unwrap(self):
        return self.upper * jax.nn.sigmoid(self.raw)

    def log_det_jacobian(self):
        return jnp.sum(jnp.log(self.upper) + jax.nn.log_sigmoid(self.raw) + jax.nn.log_sigmoid(-self.raw))


def make_model(a=2.0, b=0.5):
    return {"a": rb.Positive(a), "b": BelowUpper(b, rb.Ref("a"), upper_value=a)}


def log_joint(m):
    return dist.Gamma(3.0, 1.0).log_prob(m["a"]) + dist.Uniform(0.0, m["a"]).log_prob(m["b"])


def check_log_jacobian(num_points: int = 5) -> float:
    """Compare ``rb.log_det_jacobian`` with ``slogdet(jacfwd(free arrays -> (a, b)))`` at random
    points; returns the largest absolute difference."""
    params, static = rb.partition(make_model())
    flat, unravel = ravel_pytree(params)

    def values(z):
        m = rb.unwrap(eqx.combine(unravel(z), static))
        return jnp.stack([m["a"], m["b"]])

    worst = 0.0
    for z in jax.random.normal(jax.random.key(0), (num_points, flat.shape[0])) * 2.0:
        _, reference = jnp.linalg.slogdet(jax.jacfwd(values)(z))
        ours = rb.log_det_jacobian(eqx.combine(unravel(z), static))
        worst = max(worst, abs(float(ours - reference)))
    return worst


def main(fast: bool, out: str) -> list[str]:
    az = rb.arviz  # ArviZ 0.2x/1.x adapter

    os.makedirs(out, exist_ok=True)

    err = check_log_jacobian()
    print(f"log-Jacobian vs jacfwd + slogdet: max |difference| = {err:.2e}")
    assert err < 1e-4, "the log-Jacobian is wrong"

    n = 200 if fast else 2000
    post = rb.sample(make_model(), log_joint, key=jax.random.key(1), num_warmup=n, num_samples=n,
                     num_chains=2 if fast else 4, progress_bar=not fast)
    a, b = np.asarray(post.draws["a"]), np.asarray(post.draws["b"])
    ess = {k: float(az.ess(v)) for k, v in {"a": a, "b": b}.items()}
    for name, draws, exact in (("a", a, 3.0), ("b", b, 1.5)):
        mcse = draws.std() / np.sqrt(ess[name])
        print(f"E[{name}] = {draws.mean():.3f} ± {mcse:.3f} (MCSE), exact {exact}; "
              f"{abs(draws.mean() - exact) / mcse:.1f} MCSE away")
    print(f"divergences: {int(post.sample_stats['diverging'].sum())}")

    paths = [plot_draws(a, b, os.path.join(out, "04_b_below_a.png")),
             rb.geometry.plot_trace(post, os.path.join(out, "04_trace.png"), title="custom bijector: 0 < b < a")]
    for p in paths:
        print("wrote", p)
    return paths


def plot_draws(a, b, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
    ax1.scatter(a.ravel(), b.ravel(), s=4, alpha=0.3, label="draws")
    top = float(a.max())
    ax1.plot([0, top], [0, top], "k--", lw=1, label="b = a (the bound)")
    ax1.set_xlabel("a  (rb.Positive)")
    ax1.set_ylabel("b  (BelowUpper, upper = rb.Ref('a'))")
    ax1.set_title("every draw satisfies 0 < b < a")
    ax1.legend(fontsize=8)
    ax2.hist((b / a).ravel(), bins=20, range=(0, 1), density=True, alpha=0.7)
    ax2.axhline(1.0, color="k", ls="--", lw=1, label="Uniform(0, 1)")
    ax2.set_xlabel("b / a")
    ax2.set_ylabel("density")
    ax2.set_title("b | a ~ Uniform(0, a)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="tiny run (for the test suite)")
    parser.add_argument("--out", default="outputs", help="folder for the figures (default: outputs/)")
    args = parser.parse_args()
    main(args.fast or os.environ.get("RB_TUTORIAL_FAST") == "1", args.out)
