"""Tutorial 1 — MAP, then NUTS from the MAP, on one wrapped model.

The power-law model ``y ~ Normal(amplitude · x^power, noise)``: the parameters are wrapped once
(``rb.Positive`` for the amplitude and the noise, ``rb.Real`` for the power), fitted with optax
(``rb.map_estimate``), and the *same object* is handed to NumPyro's NUTS (``rb.sample``), which
samples its free, unconstrained arrays. The draws come back as ``PowerLaw`` modules batched over
(chain, draw) and as ArviZ data named by attribute path.

Run:  python tutorials/01_power_law_map_then_nuts.py [--fast] [--out outputs]
      (or RB_TUTORIAL_FAST=1; figures go to the output folder)
"""

import argparse
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import reparam_bridge as rb


# 1. The model: an ordinary Equinox module whose fields are wrapped parameters. ----------
class PowerLaw(eqx.Module):
    amplitude: rb.Positive
    power: rb.Real
    noise: rb.Positive

    def __call__(self, x):
        # called on the *unwrapped* module: the fields are plain arrays here
        return self.amplitude * x**self.power


# 2. The log-joint, written over constrained values (what you think in). -----------------
def log_joint(m: PowerLaw, x, y):
    prior = (dist.LogNormal(0.0, 1.0).log_prob(m.amplitude)
             + dist.Normal(0.0, 2.0).log_prob(m.power)
             + dist.HalfNormal(1.0).log_prob(m.noise))
    return prior + dist.Normal(m(x), m.noise).log_prob(y).sum()


def main(fast: bool, out: str) -> list[str]:
    az = rb.arviz  # ArviZ 0.2x/1.x adapter: same summary on both

    os.makedirs(out, exist_ok=True)
    num_warmup, num_samples, num_chains = (150, 150, 2) if fast else (1000, 1000, 4)

    # Synthetic data from known values.
    kx, ky = jax.random.split(jax.random.key(0))
    truth = dict(amplitude=2.0, power=0.7, noise=0.3)
    x = jax.random.uniform(kx, (60,), minval=1.0, maxval=10.0)
    y = truth["amplitude"] * x ** truth["power"] + truth["noise"] * jax.random.normal(ky, (60,))

    # 3. MAP with optax (L-BFGS by default). The result is still wrapped.
    start = PowerLaw(rb.Positive(1.0), rb.Real(0.0), rb.Positive(1.0))
    fit = rb.map_estimate(start, log_joint, x, y, progress_bar=False)
    mapped = rb.unwrap(fit.model)
    print("MAP:", {k: round(float(getattr(mapped, k)), 3) for k in truth}, " truth:", truth)

    # 4. NUTS from the MAP, on the same object.
    posterior = rb.sample(fit.model, log_joint, x, y, key=jax.random.key(1), num_warmup=num_warmup,
                          num_samples=num_samples, num_chains=num_chains, progress_bar=not fast)
    print(posterior)
    print("posterior.draws is a", type(posterior.draws).__name__, "with amplitude of shape",
          posterior.draws.amplitude.shape)

    # 5. ArviZ: summary (r-hat, ESS) straight from InferenceData named by attribute path.
    idata = posterior.to_inference_data()
    print(az.summary(idata).to_string())

    # 6. Figures: trace plot, and the posterior predictive band.
    paths = [rb.geometry.plot_trace(posterior, os.path.join(out, "01_trace.png"),
                                    title="power law: NUTS from the MAP")]
    paths.append(plot_predictive(posterior, fit.model, x, y, truth, os.path.join(out, "01_predictive.png")))
    for p in paths:
        print("wrote", p)
    return paths


def plot_predictive(posterior, map_model, x, y, truth, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = jnp.linspace(float(x.min()), float(x.max()), 100)
    d = posterior.draws  # a PowerLaw whose leaves are (chain, draw)
    amp, power, noise = (np.asarray(a).reshape(-1) for a in (d.amplitude, d.power, d.noise))
    mean_curves = amp[:, None] * np.asarray(grid)[None, :] ** power[:, None]
    rng = np.random.default_rng(0)
    predictive = mean_curves + noise[:, None] * rng.standard_normal(mean_curves.shape)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    lo, hi = np.percentile(predictive, [5, 95], axis=0)
    ax.fill_between(grid, lo, hi, color="C0", alpha=0.2, label="90% posterior predictive")
    lo, hi = np.percentile(mean_curves, [5, 95], axis=0)
    ax.fill_between(grid, lo, hi, color="C0", alpha=0.5, label="90% band of amplitude·x^power")
    ax.plot(grid, rb.unwrap(map_model)(grid), "C3", lw=1.5, label="MAP fit")
    ax.plot(grid, truth["amplitude"] * grid ** truth["power"], "k--", lw=1, label="truth")
    ax.scatter(x, y, s=12, color="k", zorder=3, label="data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("power law y ~ Normal(amplitude·x^power, noise)")
    ax.legend(fontsize=8)
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
