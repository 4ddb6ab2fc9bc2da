"""Tutorial 3 — a wrapped Equinox module inside an ordinary NumPyro model.

You already write NumPyro models and have an Equinox module — here a squared-exponential
Gaussian-process kernel — whose hyperparameters are wrapped (``rb.Positive``).
``rb.numpyro.random_module("kernel", kernel, prior=...)`` registers its free (unconstrained)
arrays as latent sites, adds the log-Jacobian and the priors as factors, records the
constrained values as deterministic sites ``"kernel.variance"``, ``"kernel.lengthscale"``, and
returns the module unwrapped, ready to call. Then NumPyro does the rest: NUTS, SVI with an
autoguide, ``az.from_numpyro``.

Run:  python tutorials/03_numpyro_random_module.py [--fast] [--out outputs]
"""

import argparse
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO, autoguide, init_to_value

import reparam_bridge as rb


class SquaredExponential(eqx.Module):
    """k(x, x') = variance · exp(-(x - x')² / (2 lengthscale²))."""

    variance: rb.Positive
    lengthscale: rb.Positive

    def __call__(self, x1, x2):
        d = x1[:, None] - x2[None, :]
        return self.variance * jnp.exp(-0.5 * (d / self.lengthscale) ** 2)


KERNEL = SquaredExponential(variance=rb.Positive(1.0), lengthscale=rb.Positive(1.0))
PRIORS = {"variance": dist.LogNormal(0.0, 1.0), "lengthscale": dist.LogNormal(0.0, 1.0)}


def gp_model(x, y=None):
    """An ordinary NumPyro model; the kernel's hyperparameters come from the wrapped module."""
    kernel = rb.numpyro.random_module("kernel", KERNEL, prior=PRIORS)
    noise = numpyro.sample("noise", dist.HalfNormal(1.0))
    K = kernel(x, x) + (noise**2 + 1e-6) * jnp.eye(x.shape[0])
    numpyro.sample("y", dist.MultivariateNormal(jnp.zeros(x.shape[0]), covariance_matrix=K), obs=y)


def predict(kernel, noise, x, y, grid):
    """GP posterior mean and sd of f at ``grid`` for one set of hyperparameters."""
    K = kernel(x, x) + (noise**2 + 1e-6) * jnp.eye(x.shape[0])
    Ks = kernel(grid, x)
    L = jnp.linalg.cholesky(K)
    alpha = jax.scipy.linalg.cho_solve((L, True), y)
    v = jax.scipy.linalg.solve_triangular(L, Ks.T, lower=True)
    var = jnp.diag(kernel(grid, grid)) - jnp.sum(v**2, axis=0)
    return Ks @ alpha, jnp.sqrt(jnp.maximum(var, 1e-12))


def main(fast: bool, out: str) -> list[str]:
    az = rb.arviz  # ArviZ 0.2x/1.x adapter

    os.makedirs(out, exist_ok=True)
    kx, ky = jax.random.split(jax.random.key(0))
    x = jnp.sort(jax.random.uniform(kx, (30,), minval=-3.0, maxval=3.0))
    y = jnp.sin(2.0 * x) + 0.2 * jax.random.normal(ky, (30,))

    # NUTS, started at the module's current values (init_values names the latent sites).
    n = 150 if fast else 1000
    mcmc = MCMC(NUTS(gp_model, init_strategy=init_to_value(values=rb.numpyro.init_values("kernel", KERNEL))),
                num_warmup=n, num_samples=n, num_chains=2, chain_method="sequential", progress_bar=not fast)
    mcmc.run(jax.random.key(1), x, y)
    idata = az.from_numpyro(mcmc)
    print(az.summary(idata, var_names=["kernel.variance", "kernel.lengthscale", "noise"]).to_string())
    samples = mcmc.get_samples()

    # SVI with an autoguide on the very same model.
    guide = autoguide.AutoNormal(gp_model)
    svi = SVI(gp_model, guide, optax.adam(0.02), Trace_ELBO())
    svi_result = svi.run(jax.random.key(2), 300 if fast else 3000, x, y, progress_bar=not fast)
    svi_draws = guide.sample_posterior(jax.random.key(3), svi_result.params, sample_shape=(n,))
    # the deterministic sites are not in the guide: rebuild the module from the latent sites
    svi_kernels = jax.vmap(lambda d: rb.unwrap(rb.numpyro.from_values("kernel", KERNEL, d)))(svi_draws)
    print("SVI (AutoNormal) lengthscale mean:", float(svi_kernels.lengthscale.mean()),
          "  NUTS:", float(samples["kernel.lengthscale"].mean()))

    # Figures.
    grid = jnp.linspace(-3.5, 3.5, 120)
    keep = np.linspace(0, samples["noise"].shape[0] - 1, 100).astype(int)
    nuts_kernels = jax.vmap(lambda d: rb.unwrap(rb.numpyro.from_values("kernel", KERNEL, d)))(
        {k: v[keep] for k, v in samples.items()})
    means, sds = jax.vmap(lambda k, s: predict(k, s, x, y, grid))(nuts_kernels, samples["noise"][keep])
    rng = np.random.default_rng(0)
    f = np.asarray(means) + np.asarray(sds) * rng.standard_normal(means.shape)
    svi_mean, _ = predict(rb.unwrap(rb.numpyro.from_values(
        "kernel", KERNEL, {k: v.mean(0) for k, v in svi_draws.items()})), svi_draws["noise"].mean(), x, y, grid)
    paths = [plot_fit(x, y, grid, f, np.asarray(means).mean(0), svi_mean, os.path.join(out, "03_gp_fit.png")),
             plot_hyper(samples, svi_kernels, os.path.join(out, "03_hyperparameters.png"))]
    for p in paths:
        print("wrote", p)
    return paths


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fit(x, y, grid, f, f_mean, svi_mean, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    lo, hi = np.percentile(f, [5, 95], axis=0)
    ax.fill_between(grid, lo, hi, alpha=0.3, label="NUTS: 90% band of f")
    ax.plot(grid, f_mean, "C0", label="NUTS: mean of f")
    ax.plot(grid, svi_mean, "C3--", label="SVI (AutoNormal): mean of f")
    ax.plot(grid, np.sin(2 * grid), "k:", lw=1, label="truth sin(2x)")
    ax.scatter(x, y, s=12, color="k", zorder=3, label="data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("GP regression; kernel hyperparameters from a wrapped Equinox module", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_hyper(samples, svi_kernels, path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.scatter(samples["kernel.lengthscale"], samples["kernel.variance"], s=5, alpha=0.4, label="NUTS")
    ax.scatter(svi_kernels.lengthscale, svi_kernels.variance, s=5, alpha=0.4, color="C3", label="SVI (AutoNormal)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib import ticker

    for axis in (ax.xaxis, ax.yaxis):  # plain numbers at 1-2-5 steps: minor log labels overlap
        axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("kernel.lengthscale")
    ax.set_ylabel("kernel.variance")
    ax.set_title("posterior of the Positive hyperparameters")
    ax.legend()
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
