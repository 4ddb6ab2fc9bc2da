"""The tail fine-tune of :func:`rb.geometry.neutra <reparam_bridge.geometry.neutra>`
(``fine_tune=`` steps): a flow fitted by the ELBO alone can leave a *wall* a few base standard
deviations out, where the pulled-back density drops by thousands of nats (a funnel's neck that
the flow reaches without shrinking its other coordinates). Reverse KL rarely draws there, but
NUTS does, and diverges. The fine-tune flattens it.

With ``r(b) = log p(T(b)) + log|det ∂T/∂b| + |b|²/2``, which is constant exactly when ``T`` maps
``N(0, I)`` onto the posterior, Adam minimises

    mean over b ~ s·N(0, I), s ~ U[1, 2] of Huber₅(r(b) − median r)   (r's spread, well into the tails)
    − mean over b ~ N(0, I) of r(b)                                   (reverse KL, up to a constant)

Measured (flow seeds 0-4, the test's protocol: 4 chains x 1,000 warmup / 1,000 draws, NUTS
key 7): centred eight schools' divergences fell from 82-149 of 4,000 (ELBO only; seeds 0-2, an
earlier measurement) to 0-7 and its min ESS per gradient was 7.4-24x plain NUTS's; Neal's
funnel (10 coordinates), 83-237x with 0-7 divergent, where the ELBO alone met 5x on 2 of the 5
seeds. Not every seed: on seeds 5-9 the funnel failed on two (5: 2.1x with 142 divergent; 9: 23
divergent), the schools on one (8: 32 divergent). With 8,000 steps instead of 16,000, 3 of those 10 runs failed (funnel seeds 2-3: 30 and
39 divergent; schools seed 3: 4.5x), so :func:`neutra`'s default is 16,000."""

import warnings
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PRNGKeyArray

from ._guides import default_flow, import_flowjax, trainable_partition


class _SkipMLP(eqx.Module):
    """``MLP(x) + W x + b``: the conditioner's output extrapolates linearly (e.g. a log-scale
    linear in log tau), where a tanh network alone saturates."""

    mlp: eqx.Module
    linear: eqx.nn.Linear

    def __call__(self, x: Array) -> Array:
        return self.mlp(x) + self.linear(x)


def skip_flow(key: PRNGKeyArray, loc: Array, scale: float, *, flow_layers: int = 8, clamp: float = 6.0) -> Any:
    """:func:`default_flow`'s coupling flow with 8 layers, a zero-initialised linear skip in
    every conditioner and coupling scales ``exp(clamp·tanh(s/clamp))`` (bounded, so no layer
    can overflow while the fine-tune explores the tails). One coordinate: ``default_flow``."""
    n = loc.shape[-1]
    if n < 2:
        return default_flow(key, loc, scale)
    import_flowjax()
    import paramax
    from flowjax.bijections import Affine, Chain, Coupling
    from flowjax.distributions import StandardNormal, Transformed
    from flowjax.flows import coupling_flow

    k_flow, k_skip = jax.random.split(key)
    soft_exp = lambda s: jnp.exp(clamp * jnp.tanh(s / clamp))  # noqa: E731
    transformer = eqx.tree_at(lambda a: a.scale, Affine(), replace=paramax.Parameterize(soft_exp, jnp.zeros(())))
    flow = coupling_flow(
        k_flow,
        base_dist=StandardNormal((n,)),
        transformer=transformer,
        flow_layers=flow_layers,
        nn_width=32,
        nn_activation=jax.nn.tanh,
        invert=False,
    ).bijection
    keys = iter(jax.random.split(k_skip, flow_layers))

    def add_skip(c):
        linear = eqx.nn.Linear(c.conditioner.in_size, c.conditioner.out_size, key=next(keys))
        stack = c.conditioner.layers[0].weight.shape[:-2]  # flowjax scans its layers: a leading axis
        zeros = (jnp.zeros((*stack, *linear.weight.shape)), jnp.zeros((*stack, *linear.bias.shape)))
        linear = eqx.tree_at(lambda lin: (lin.weight, lin.bias), linear, zeros)
        return eqx.tree_at(lambda c: c.conditioner, c, _SkipMLP(c.conditioner, linear))

    is_coupling = lambda x: isinstance(x, Coupling)  # noqa: E731
    flow = jax.tree_util.tree_map(lambda x: add_skip(x) if is_coupling(x) else x, flow, is_leaf=is_coupling)
    return Transformed(StandardNormal((n,)), Chain([flow, Affine(loc, jnp.full((n,), scale, loc.dtype))]))


def fine_tune(flow: Any, log_p, key: PRNGKeyArray, *, steps: int, progress_bar: bool, what: str) -> Any:
    """The flowjax distribution ``flow`` after ``steps`` Adam steps on the objective above
    (learning rate 3e-4, cosine-decayed to 1.5e-5, gradients clipped to norm 10). Non-finite
    ``r`` are left out of the sums and non-finite gradient entries zeroed (a draw where ``r`` is
    infinite poisons the gradient through ``where``); a warning says when the tuned flow still
    gives non-finite ``r`` on ``N(0, I)`` draws."""
    import paramax

    params, static = trainable_partition(flow)
    n = flow.shape[-1]
    optimizer = optax.chain(
        optax.clip_by_global_norm(10.0), optax.adam(optax.cosine_decay_schedule(3e-4, steps, alpha=0.05))
    )

    def residual(p, b):
        z, log_det = paramax.unwrap(eqx.combine(p, static)).bijection.transform_and_log_det(b)
        return log_p(z) + log_det + 0.5 * jnp.sum(b**2)

    def finite_mean(x, weights):
        ok = jnp.isfinite(x)
        return jnp.sum(jnp.where(ok, weights(x), 0.0)) / jnp.maximum(ok.sum(), 1)

    def objective(p, k):
        k_scale, k_tail = jax.random.split(k, 5)[:2]  # the keys of the measured runs
        k_kl = jax.random.fold_in(k, 7)
        s = jax.random.uniform(k_scale, (256, 1), minval=1.0, maxval=2.0)
        b = jax.lax.stop_gradient(s * jax.random.normal(k_tail, (256, n)))
        r = jax.vmap(lambda x: residual(p, x))(b)
        centre = jax.lax.stop_gradient(jnp.nanmedian(jnp.where(jnp.isfinite(r), r, jnp.nan)))
        spread = finite_mean(r, lambda x: optax.huber_loss(jnp.where(jnp.isfinite(x), x - centre, 0.0), delta=5.0))
        r_kl = jax.vmap(lambda x: residual(p, x))(jax.random.normal(k_kl, (64, n)))
        return spread - finite_mean(r_kl, lambda x: x)

    @jax.jit
    def chunk(p, opt_state, keys):
        def body(carry, k):
            p, opt_state = carry
            g = jax.grad(objective)(p, k)
            g = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), g)
            updates, opt_state = optimizer.update(g, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), None

        return jax.lax.scan(body, (p, opt_state), keys)[0]

    opt_state, keys, done = optimizer.init(params), jax.random.split(key, steps), 0
    n_chunks = min(20, steps) if progress_bar else 1
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"{what} (tail fine-tune)", leave=True)
    try:
        for i in range(n_chunks):
            size = steps // n_chunks + (i < steps % n_chunks)
            params, opt_state = chunk(params, opt_state, keys[done : done + size])
            done += size
            if bar is not None:
                bar.update(size)
    finally:
        if bar is not None:
            bar.close()
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(params)):
        raise ValueError(f"{what}: the tail fine-tune made the flow non-finite; run it with fewer fine_tune steps.")
    r = jax.jit(jax.vmap(lambda b: residual(params, b)))(jax.random.normal(jax.random.fold_in(key, 1), (1000, n)))
    bad = int(jnp.sum(~jnp.isfinite(r)))
    if bad:
        from ._checks import ReliabilityWarning

        warnings.warn(
            f"{what}: after the tail fine-tune, the log density is non-finite at {bad} of 1,000 base draws "
            "N(0, I); NUTS in the base space will diverge there. Check the model's support, or try another key.",
            ReliabilityWarning,
            stacklevel=3,
        )
    return eqx.combine(params, static)
