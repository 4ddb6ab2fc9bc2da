"""Tutorial 2 — eight schools: centred vs non-centred vs learned centredness.

One hierarchical model, one ``log_joint``; only the wrapper of ``theta`` changes:

    theta = rb.LocScale(value, loc=rb.Ref("mu"), scale=rb.Ref("tau"), centered=c)

``c = 1`` samples theta itself (centred): with eight weakly informative schools, the posterior
of (theta, log tau) is a funnel whose neck NUTS cannot enter without diverging. ``c = 0``
samples theta_tilde = (theta - mu) / tau (non-centred), where the funnel is gone. Because
``LocScale`` adds its log-Jacobian, the prior ``Normal(mu, tau).log_prob(theta)`` in
``log_joint`` stays right for every ``c``.

Learned centredness: the variationally inferred parameterisation of Gorinova, Moore & Hoffman
(2020, "Automatic Reparameterisation of Probabilistic Programs"). ``rb.geometry.learn_centredness``
gives ``theta`` one centredness per school, ``c = sigmoid(logit)``, and maximises the ELBO of a
mean-field Gaussian jointly over the guide and the logits by gradient (NumPyro's
``LocScaleReparam(centered=None)``, here on a field of an Equinox module). Every ELBO bounds the
same log evidence ``log p(y)`` (the Jacobian makes each density integrate to it), so the largest
one is reached where the posterior is closest to a product of independent Gaussians — the
geometry NUTS with a diagonal mass matrix likes best. A school whose data pin ``theta`` down
(small ``sigma``) is pulled towards centred, a weakly informed one towards non-centred.
(The other candidate criterion, the Hessian's condition number at the mode, is not usable
here: the centred density has no mode — it grows without bound down the funnel's neck.)

Run:  python tutorials/02_eight_schools_geometry.py [--fast] [--out outputs]
"""

import argparse
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import reparam_bridge as rb

Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


class Schools(eqx.Module):
    mu: rb.Real
    tau: rb.Positive
    theta: rb.LocScale


def log_joint(m: Schools, y, sigma):
    # the same for every parameterisation: priors and likelihood over constrained values
    return (
        dist.Normal(0.0, 5.0).log_prob(m.mu)
        + dist.HalfCauchy(5.0).log_prob(m.tau)
        + dist.Normal(m.mu, m.tau).log_prob(m.theta).sum()
        + dist.Normal(m.theta, sigma).log_prob(y).sum()
    )


def eight_schools(centered: float) -> Schools:
    """The model with centredness ``centered``. ``theta`` refers to its siblings by ``rb.Ref``;
    it is built centred (x̃ = x needs no loc/scale values) and converted by
    ``rb.reparameterize``, which keeps every constrained value."""
    model = Schools(
        mu=rb.Real(0.0),
        tau=rb.Positive(2.0),
        theta=rb.LocScale(jnp.zeros(8), rb.Ref("mu"), rb.Ref("tau"), centered=1.0),
    )
    return rb.reparameterize(model, lambda m: m.theta, centered=centered)


def main(fast: bool, out: str) -> list[str]:
    os.makedirs(out, exist_ok=True)
    paths = []

    # 1. Curvature at the mode of the non-centred density (the centred one has none).
    report = rb.geometry.curvature(eight_schools(0.0), log_joint, Y, SIGMA, progress_bar=False)
    print("non-centred, at the mode of the unconstrained density:\n" + str(report))

    # 2. Learned centredness: one c per school, by gradient (VIP), jointly with the guide.
    learned, q = rb.geometry.learn_centredness(
        eight_schools(1.0),
        log_joint,
        Y,
        SIGMA,
        key=jax.random.key(42),
        steps=300 if fast else 3000,
        progress_bar=not fast,
        return_approximation=True,
    )
    c_learned = np.asarray(rb.unwrap(learned.theta.centered))
    print("learned centredness per school:", np.round(c_learned, 2), f"(ELBO {q.elbo:.3f}, k-hat {q.khat:.2f})")
    paths.append(plot_centredness(c_learned, os.path.join(out, "02_learned_centredness.png")))

    # 3. The comparison table: identical sampler settings for each parameterisation.
    labels = {1.0: "centred (c=1)", 0.0: "non-centred (c=0)", "learned": "learned (c per school)"}
    models = {
        labels[1.0]: (eight_schools(1.0), log_joint),
        labels[0.0]: (eight_schools(0.0), log_joint),
        labels["learned"]: (learned, log_joint),
    }
    n = 150 if fast else 1000
    table, posteriors = rb.geometry.compare(
        models,
        Y,
        SIGMA,
        key=jax.random.key(0),
        num_warmup=n,
        num_samples=n,
        num_chains=2 if fast else 4,
        return_posteriors=True,
    )
    text = table.T.to_string() if hasattr(table, "T") else str(table)
    print(text)
    with open(os.path.join(out, "02_comparison.txt"), "w") as f:
        f.write(text + "\n")
    centred, non_centred = table.loc[labels[1.0]], table.loc[labels[0.0]]
    print(
        f"non-centred vs centred: {int(non_centred['divergences'])} vs {int(centred['divergences'])} "
        f"divergences, {non_centred['ess_per_grad'] / centred['ess_per_grad']:.1f}x the min ESS per "
        "gradient evaluation"
    )
    print("best min ESS per gradient:", table["ess_per_grad"].idxmax())

    # 4. Figures: the funnel in constrained coordinates (the same posterior for every c: where
    #    do the divergences sit?) and in the coordinates each sampler actually moves in.
    for c, label in labels.items():
        post, slug = posteriors[label], {1.0: "centred", 0.0: "noncentred", "learned": "learned"}[c]
        paths.append(
            rb.geometry.plot_pair(
                post, ["theta[0]", "log(tau)"], os.path.join(out, f"02_funnel_{slug}.png"), title=label
            )
        )
        paths.append(
            rb.geometry.plot_pair(
                post,
                ["theta.unconstrained[0]", "tau.unconstrained"],
                os.path.join(out, f"02_sampler_coordinates_{slug}.png"),
                unconstrained=True,
                title=f"{label}: coordinates NUTS samples",
            )
        )
    paths.append(
        rb.geometry.plot_trace(
            posteriors[labels[1.0]],
            os.path.join(out, "02_trace_centred.png"),
            var_names=["mu", "tau", "theta"],
            title="centred: trace",
        )
    )
    paths.append(
        rb.geometry.plot_condition_numbers(table, os.path.join(out, "02_condition_numbers.png"), title="eight schools")
    )
    for p in paths:
        print("wrote", p)
    return paths


def plot_centredness(c, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.bar(np.arange(len(c)), c, color="C0")
    for i, s in enumerate(np.asarray(SIGMA)):
        ax.annotate(f"σ={s:g}", (i, c[i]), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("school")
    ax.set_ylabel("learned centredness c\n(0 = non-centred, 1 = centred)")
    ax.set_title("eight schools: centredness learned by maximising the ELBO (VIP)")
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
