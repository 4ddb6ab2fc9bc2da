"""Tutorial 5 — NeuTra: NUTS preconditioned by a normalising flow, on Neal's funnel and on a
small Bayesian neural network.

NeuTra (Hoffman et al. 2019, "NeuTra-lizing bad geometry in Hamiltonian Monte Carlo using
neural transport") fits a flow ``q = T#N(0, I)`` to the posterior by variational inference and
then runs NUTS on the flow's base coordinates ``b``, where the density
``p(T(b))·|det ∂T/∂b|`` is close to a standard normal whatever the original geometry.

    pre = rb.geometry.neutra(model, log_joint, *data, key=key)   # trains a flowjax flow (ELBO, tail fine-tune)
    posterior = rb.sample(pre, log_joint, *data, key=key,         # NUTS in base coordinates
                          target_accept_prob=0.95)                # (fewer divergences; see neutra's docstring)
    posterior.draws                                               # the user's model type and names

``pre`` is the same model with one extra wrapper at the root, whose free array is ``b``; the
``log_joint`` is unchanged, and ``rb.geometry.compare`` takes it like any other
parameterisation. Needs flowjax (``pip install 'reparam_bridge[flows]'``).

Run:  python tutorials/05_neutra.py [--fast] [--out outputs]
"""

import argparse
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist

import reparam_bridge as rb

# ----------------------------------------------------------------------------------------
# Neal's funnel: v ~ N(0, 3), x_i | v ~ N(0, exp(v/2)), i = 1..9 (no data: the "posterior"
# is the prior, with known moments: E v = 0, sd v = 3, E x_i = 0).


class Funnel(eqx.Module):
    v: rb.Real
    x: rb.Real


def funnel_log_joint(m: Funnel):
    return dist.Normal(0.0, 3.0).log_prob(m.v) + dist.Normal(0.0, jnp.exp(m.v / 2)).log_prob(m.x).sum()


# ----------------------------------------------------------------------------------------
# A Bayesian neural network: one hidden layer of 8 tanh units, Normal(0, 1) weights, a
# Positive noise scale; 24 noisy points of a sine. Its posterior has strong, curved
# correlations between the layers' weights (and symmetric modes NUTS does not cross).


class BNN(eqx.Module):
    w1: rb.Real
    b1: rb.Real
    w2: rb.Real
    b2: rb.Real
    noise: rb.Positive

    def __call__(self, x):  # called on the unwrapped model: fields are arrays
        return jnp.tanh(x[:, None] * self.w1 + self.b1) @ self.w2 + self.b2


def bnn_log_joint(m: BNN, x, y):
    prior = sum(dist.Normal(0.0, 1.0).log_prob(w).sum() for w in (m.w1, m.b1, m.w2, m.b2))
    return prior + dist.HalfNormal(1.0).log_prob(m.noise) + dist.Normal(m(x), m.noise).log_prob(y).sum()


def bnn_data():
    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(-3, 3, 24)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(np.sin(x) + 0.2 * rng.standard_normal(24), jnp.float32)


def bnn_model(hidden: int = 8) -> BNN:
    k = jax.random.split(jax.random.key(3), 2)
    return BNN(
        rb.Real(0.5 * jax.random.normal(k[0], (hidden,))),
        rb.Real(jnp.zeros(hidden)),
        rb.Real(0.5 * jax.random.normal(k[1], (hidden,))),
        rb.Real(0.0),
        rb.Positive(0.5),
    )


def main(fast: bool, out: str) -> list[str]:
    os.makedirs(out, exist_ok=True)
    paths = []
    n = 150 if fast else 1000
    chains = 2 if fast else 4
    steps = 200 if fast else 3000
    tune = 0 if fast else None  # None: neutra's default, 16,000 steps of the tail fine-tune after the ELBO

    # 1. The funnel: plain NUTS in (v, x) against NUTS in the flow's base coordinates.
    funnel = Funnel(rb.Real(0.0), rb.Real(jnp.zeros(9)))
    pre, q = rb.geometry.neutra(
        funnel,
        funnel_log_joint,
        key=jax.random.key(0),
        steps=steps,
        fine_tune=tune,
        progress_bar=not fast,
        return_approximation=True,
    )
    print(f"funnel flow: ELBO {q.elbo:.3f} (log Z = 0), PSIS k-hat {q.khat:.2f}")
    table, posts = rb.geometry.compare(
        {"plain NUTS": (funnel, funnel_log_joint), "NeuTra": (pre, funnel_log_joint)},
        key=jax.random.key(1),
        num_warmup=n,
        num_samples=n,
        num_chains=chains,
        return_posteriors=True,
    )
    text = table.T.to_string() if hasattr(table, "T") else str(table)
    print(text)
    print(
        "funnel, best min ESS per gradient:",
        table["ess_per_grad"].idxmax(),
        f"({table.loc['NeuTra', 'ess_per_grad'] / table.loc['plain NUTS', 'ess_per_grad']:.1f}x)",
    )
    d = posts["NeuTra"].draws
    print(f"NeuTra draws: v mean {float(d.v.mean()):.2f} (exact 0), sd {float(d.v.std()):.2f} (exact 3)")
    with open(os.path.join(out, "05_funnel_comparison.txt"), "w") as f:
        f.write(text + "\n")
    for label, slug in (("plain NUTS", "plain"), ("NeuTra", "neutra")):
        paths.append(
            rb.geometry.plot_pair(
                posts[label], ["x[0]", "v"], os.path.join(out, f"05_funnel_{slug}.png"), title=f"funnel, {label}"
            )
        )
    paths.append(
        rb.geometry.plot_pair(
            posts["NeuTra"],
            ["unconstrained[0]", "unconstrained[1]"],
            os.path.join(out, "05_funnel_base_coordinates.png"),
            unconstrained=True,
            title="NeuTra: the base coordinates NUTS moves in",
        )
    )
    paths.append(
        rb.geometry.plot_condition_numbers(
            table, os.path.join(out, "05_funnel_condition_numbers.png"), title="Neal's funnel"
        )
    )

    # 2. The Bayesian neural network, started at a MAP fit.
    x, y = bnn_data()
    bnn = rb.map_estimate(bnn_model(), bnn_log_joint, x, y, jacobian=True, progress_bar=False).model
    pre_bnn, q_bnn = rb.geometry.neutra(
        bnn,
        bnn_log_joint,
        x,
        y,
        key=jax.random.key(2),
        steps=steps,
        fine_tune=tune,
        progress_bar=not fast,
        return_approximation=True,
    )
    print(f"BNN flow: ELBO {q_bnn.elbo:.2f}, PSIS k-hat {q_bnn.khat:.2f}")
    table_bnn, posts_bnn = rb.geometry.compare(
        {"plain NUTS": (bnn, bnn_log_joint), "NeuTra": (pre_bnn, bnn_log_joint)},
        x,
        y,
        key=jax.random.key(3),
        num_warmup=n,
        num_samples=n,
        num_chains=chains,
        return_posteriors=True,
    )
    text = table_bnn.T.to_string() if hasattr(table_bnn, "T") else str(table_bnn)
    print(text)
    print("BNN, best min ESS per gradient:", table_bnn["ess_per_grad"].idxmax())
    with open(os.path.join(out, "05_bnn_comparison.txt"), "w") as f:
        f.write(text + "\n")
    paths.append(plot_predictive(posts_bnn, x, y, os.path.join(out, "05_bnn_predictive.png")))
    for p in paths:
        print("wrote", p)
    return paths


def plot_predictive(posts, x, y, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = jnp.linspace(-3.5, 3.5, 100)
    fig, axes = plt.subplots(1, len(posts), figsize=(5.0 * len(posts), 3.6), sharey=True)
    for ax, (label, post) in zip(np.atleast_1d(axes), posts.items()):
        draws = post.draws  # a BNN whose leaves are (chain, draw, ...)
        flat = jax.tree_util.tree_map(lambda a: a.reshape(-1, *a.shape[2:]), draws)
        f = eqx.filter_vmap(lambda m: m(grid))(flat)
        lo, mid, hi = np.percentile(np.asarray(f), [5, 50, 95], axis=0)
        ax.fill_between(grid, lo, hi, alpha=0.3, label="90% band of f(x)")
        ax.plot(grid, mid, label="median f(x)")
        ax.plot(x, y, "k.", label="data")
        ax.set_title(f"BNN posterior, {label}")
        ax.set_xlabel("x")
    np.atleast_1d(axes)[0].set_ylabel("y")
    np.atleast_1d(axes)[0].legend(fontsize=8)
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
