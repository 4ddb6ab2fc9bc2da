"""rb.fit and rb.map_estimate with real optax (about 20 s on 2 cores, most of it compiling)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import pytest

import reparam_bridge as rb
from reparam_bridge import _fitloop, fit, map_estimate


class PowerLaw(eqx.Module):
    amplitude: object
    power: object
    noise: object


def power_law_log_joint(m, x, y):
    return dist.Normal(m.amplitude * x**m.power, m.noise).log_prob(y).sum()


def test_map_power_law_recovers_generating_parameters():
    truth = {"amplitude": 2.5, "power": 1.7, "noise": 0.3}
    x = jnp.linspace(0.5, 5.0, 200)
    y = truth["amplitude"] * x ** truth["power"] + truth["noise"] * jax.random.normal(jax.random.key(0), x.shape)
    start = PowerLaw(rb.Positive(1.0), rb.Real(1.0), rb.Positive(1.0))
    res = map_estimate(start, power_law_log_joint, x, y, progress_bar=False)
    est = rb.unwrap(res.model)
    assert isinstance(res.model.amplitude, rb.Positive)  # still wrapped
    # Standard errors from the curvature of the negative log-likelihood at the estimate.
    theta = jnp.array([est.amplitude, est.power, est.noise])
    nll = lambda t: -power_law_log_joint(PowerLaw(*t), x, y)  # noqa: E731
    se = np.sqrt(np.diag(np.linalg.inv(np.asarray(jax.hessian(nll)(theta)))))
    for i, name in enumerate(truth):
        assert abs(float(theta[i]) - truth[name]) < 4 * se[i], (name, float(theta[i]), se[i])
    # converged: the gradient of the objective vanishes
    g = jax.grad(nll)(theta)
    assert np.all(np.abs(np.asarray(g)) * se < 1e-2)
    assert res.losses.shape == (100,) and res.losses[-1] < res.losses[0]


def test_nonnegative_slope_ends_exactly_zero():
    x = jnp.linspace(0.0, 1.0, 50)
    y = 1.0 - 2.0 * x + 0.05 * jax.random.normal(jax.random.key(1), x.shape)
    model = {"slope": rb.NonNegative(jnp.array(0.5)), "offset": jnp.array(0.0)}
    loss = lambda m, x, y: jnp.mean((m["slope"] * x + m["offset"] - y) ** 2)  # noqa: E731
    res = fit(model, loss, x, y, optimizer=optax.adam(0.05), steps=400, progress_bar=False)
    assert float(res.model["slope"].parameter) == 0.0  # projected after every step, not just unwrapped
    final = rb.finalize(res.model)
    assert float(final["slope"]) == 0.0
    np.testing.assert_allclose(final["offset"], jnp.mean(y), atol=1e-3)  # best fit with slope 0
    assert float(model["slope"].parameter) == 0.5  # the input is untouched


def test_nontrainable_and_bounds_never_move():
    model = {
        "frozen": rb.NonTrainable(jnp.array([1.0, 2.0])),
        "b": rb.Bounded(jnp.array([0.5, 0.5]), lower=jnp.array([0.0, 0.1]), upper=1.0),
        "w": jnp.array(0.0),
    }
    loss = lambda m: jnp.sum((m["b"] - 0.9) ** 2) + (m["w"] - m["frozen"].sum()) ** 2  # noqa: E731
    res = fit(model, loss, optimizer=optax.adam(0.1), steps=300, progress_bar=False)
    np.testing.assert_array_equal(res.model["frozen"].tree, model["frozen"].tree)
    np.testing.assert_array_equal(res.model["b"].lower.tree, model["b"].lower.tree)
    np.testing.assert_array_equal(res.model["b"].upper.tree, model["b"].upper.tree)
    np.testing.assert_allclose(rb.unwrap(res.model)["b"], [0.9, 0.9], atol=1e-3)
    np.testing.assert_allclose(res.model["w"], 3.0, atol=1e-3)


def test_jacobian_modes_match_theory():
    # LogNormal(mu, sigma) on a Positive scale: exp(mu - sigma^2) vs exp(mu).
    mu, sigma = 0.3, 0.6
    model = {"s": rb.Positive(2.0, prior=dist.LogNormal(mu, sigma))}
    nothing = lambda m: 0.0  # noqa: E731
    con = rb.unwrap(map_estimate(model, nothing, progress_bar=False).model)["s"]
    unc = rb.unwrap(map_estimate(model, nothing, jacobian=True, progress_bar=False).model)["s"]
    np.testing.assert_allclose(con, np.exp(mu - sigma**2), rtol=1e-4)
    np.testing.assert_allclose(unc, np.exp(mu), rtol=1e-4)
    # Beta(a, b) on a Bounded(0, 1) (logit): (a-1)/(a+b-2) vs a/(a+b).
    a, b = 3.0, 5.0
    model = {"p": rb.Bounded(0.5, lower=0.0, upper=1.0, prior=dist.Beta(a, b))}
    con = rb.unwrap(map_estimate(model, nothing, progress_bar=False).model)["p"]
    unc = rb.unwrap(map_estimate(model, nothing, jacobian=True, progress_bar=False).model)["p"]
    np.testing.assert_allclose(con, (a - 1) / (a + b - 2), atol=1e-4)
    np.testing.assert_allclose(unc, a / (a + b), atol=1e-4)


def test_jacobian_true_refuses_constraints():
    model = {"s": rb.NonNegative(jnp.array(1.0))}
    with pytest.raises(TypeError, match="'s'.*NonNegative"):
        map_estimate(model, lambda m: -(m["s"] ** 2), jacobian=True, progress_bar=False)


def test_nan_loss_names_the_step():
    # w_k = k under sgd(1) on -w; log(5.5 - w) turns NaN at step 6.
    loss = lambda m: -m["w"] + jax.lax.stop_gradient(jnp.log(5.5 - m["w"]))  # noqa: E731
    model = {"w": jnp.array(0.0)}
    with pytest.raises(ValueError, match="non-finite.*at step 6 "):
        fit(model, loss, optimizer=optax.sgd(1.0), steps=20, chunk_size=4, progress_bar=False)
    res = fit(model, loss, optimizer=optax.sgd(1.0), steps=5, progress_bar=False)  # steps 0..4 fine
    assert float(res.model["w"]) == 5.0


@pytest.mark.parametrize("chunk_size", [None, 1000])
def test_nan_loss_names_a_step_past_4096(chunk_size):
    # The host reads the failed step as two floats (high * 4096 + low): a step with both parts
    # non-zero, in one chunk and in a later chunk. w_k = k under sgd(1) on -w; NaN at step 5002.
    loss = lambda m: -m["w"] + jax.lax.stop_gradient(jnp.log(5001.5 - m["w"]))  # noqa: E731
    model = {"w": jnp.array(0.0)}
    with pytest.raises(ValueError, match="non-finite.*at step 5002 "):
        fit(model, loss, optimizer=optax.sgd(1.0), steps=5100, chunk_size=chunk_size, progress_bar=False)


def test_nan_gradient_names_the_parameter():
    loss = lambda m: (m["a"] - 1.0) ** 2 + jnp.sqrt(m["b"] ** 2)  # noqa: E731  d/db at 0: NaN
    with pytest.raises(ValueError, match=r"gradient.*step 0 .*\['b'\]"):
        fit({"a": jnp.array(0.0), "b": jnp.array(0.0)}, loss, steps=10, progress_bar=False)


def test_nan_gradient_under_a_finite_loss_names_its_first_step():
    # sqrt behind a where: once x <= 0 the loss stays finite (0) but its gradient is NaN (0 * inf);
    # plain SGD from x = 1 first gets there at step 15 (the loop below finds it by hand)
    f = lambda x: jnp.where(x > 0, jnp.sqrt(x), 0.0)  # noqa: E731
    x, first = jnp.array(1.0), None
    for i in range(50):
        g = jax.grad(f)(x)
        if not jnp.isfinite(g):
            first = i
            break
        x = x - 0.1 * g
    assert first is not None
    loss = lambda m: f(m["x"]) + (m["y"] - 1.0) ** 2  # noqa: E731
    model = {"x": rb.Real(jnp.array(1.0)), "y": rb.Real(jnp.array(0.0))}
    with pytest.raises(ValueError, match=rf"gradient became non-finite at step {first} .*\['x.unconstrained'\]"):
        fit(model, loss, optimizer=optax.sgd(0.1), steps=50, progress_bar=False)


def test_a_state_from_zero_steps_is_the_users_own():
    # the initial state of a small model is made once and reused by later fits: the one a
    # 0-step fit returns is a copy, so donating it to the user's own step breaks nothing
    model = {"x": rb.Real(jnp.zeros(3))}
    loss = lambda m: jnp.sum((m["x"] - 1.0) ** 2)  # noqa: E731
    opt = optax.adam(0.1)
    first = fit(model, loss, optimizer=opt, steps=0, progress_bar=False)
    jax.jit(lambda s: jax.tree_util.tree_map(lambda a: a + 0, s), donate_argnums=0)(first.opt_state)
    again = fit(model, loss, optimizer=opt, steps=10, progress_bar=False)
    assert np.isfinite(float(again.losses[-1]))


def test_progress_bar_switch(capfd):
    model = {"w": jnp.array(0.0)}
    loss = lambda m: (m["w"] - 2.0) ** 2  # noqa: E731
    fit(model, loss, steps=120, progress_bar=False)
    assert capfd.readouterr().err == ""
    fit(model, loss, steps=120, progress_bar=True)
    assert "loss=" in capfd.readouterr().err


def test_a_fit_known_to_be_quick_draws_no_bar(capfd):
    # a run of <= 100 steps is one chunk: its timing is trusted once the loop has compiled
    # (the second call), so from the third call on a bar that would only flash is not drawn
    model = {"w": jnp.array(0.0)}
    loss = lambda m: (m["w"] - 2.0) ** 2  # noqa: E731
    for _ in range(2):
        fit(model, loss, steps=50, progress_bar=True)
    assert "loss=" in capfd.readouterr().err
    fit(model, loss, steps=50, progress_bar=True)
    assert capfd.readouterr().err == ""


def test_a_repeated_fit_stops_early_every_time():
    # a run that met its tolerance early leaves a chunk end there for the next run of the same
    # loop, whose chunks are otherwise sized by time (one chunk for a quick run: no early stop)
    x = jnp.linspace(0.0, 1.0, 50)
    model = {"a": rb.Real(0.0), "b": rb.Real(0.0)}
    log_joint = lambda m, x: dist.Normal(m["a"] + m["b"] * x, 1.0).log_prob(2.0 + 3.0 * x).sum()  # noqa: E731
    for _ in range(4):
        res = map_estimate(model, log_joint, x, steps=300, progress_bar=False)
        assert res.converged and res.losses.shape[0] < 300


def test_a_signature_seen_again_after_many_others_does_not_compile_again():
    traces = []

    def loss(m):
        traces.append(1)
        return jnp.sum((m["a"] - 1.0) ** 2)

    opt = optax.adam(0.1)
    fit({"a": jnp.zeros(100)}, loss, optimizer=opt, steps=3, progress_bar=False)
    for n in range(1, 41):  # more signatures than the fit keeps (32)
        fit({"a": jnp.zeros(n)}, loss, optimizer=opt, steps=3, progress_bar=False)
    before = len(traces)
    fit({"a": jnp.zeros(100)}, loss, optimizer=opt, steps=3, progress_bar=False)
    fit({"a": jnp.zeros(1)}, loss, optimizer=opt, steps=3, progress_bar=False)
    assert len(traces) == before  # both found their compiled loops


def test_an_unhashable_value_in_the_data_is_refused_by_name():
    class Table:  # e.g. a data frame: not an array, and unhashable
        __hash__ = None

    with pytest.raises(TypeError, match=r"fit: the data holds a Table at \[0\].*jnp.asarray"):
        fit({"a": jnp.array(0.0)}, lambda m, t: (m["a"] - 1.0) ** 2, Table(), steps=3, progress_bar=False)


def test_non_finite_initial_values_are_named_as_such():
    with pytest.raises(ValueError, match=r"loss became non-finite \(nan\) at step 0 .*initial values"):
        fit({"a": jnp.array(jnp.nan)}, lambda m: m["a"] ** 2, steps=5, progress_bar=False)


def test_resume_from_opt_state_continues():
    model = {"w": jnp.array([3.0, -1.0])}
    loss = lambda m: jnp.sum((m["w"] - jnp.array([1.0, 2.0])) ** 2) + 0.1 * jnp.sum(m["w"] ** 4)  # noqa: E731
    opt = optax.adam(0.05)
    full = fit(model, loss, optimizer=opt, steps=200, progress_bar=False)
    first = fit(model, loss, optimizer=opt, steps=100, progress_bar=False)
    second = fit(first.model, loss, optimizer=opt, steps=100, opt_state=first.opt_state, progress_bar=False)
    np.testing.assert_allclose(second.model["w"], full.model["w"], rtol=1e-5)
    np.testing.assert_allclose(jnp.concatenate([first.losses, second.losses]), full.losses, rtol=1e-5)
    restart = fit(first.model, loss, optimizer=opt, steps=100, progress_bar=False)  # fresh Adam state
    assert not np.allclose(restart.model["w"], full.model["w"], rtol=1e-5)


@pytest.mark.parametrize("name", ["adam", "lbfgs"])
def test_padded_chunks_compile_once_and_match(name):
    traces = []

    def loss(m):
        traces.append(1)
        return jnp.sum((m["w"] - 1.0) ** 2 + 0.1 * m["w"] ** 4)

    model = {"w": jnp.zeros(3)}
    # L-BFGS's initial state holds weakly typed scalars, the loop's output state strong ones:
    # unless made strong up front, the second chunk was a new signature (the loop compiled twice)
    opt = optax.adam(0.1) if name == "adam" else optax.lbfgs()
    compiled = _fitloop.run._cache_size()
    # chunked first: every chunk length (3, 3, 1) and the unchunked run share one compiled loop
    chunked = fit(model, loss, optimizer=opt, steps=7, chunk_size=3, progress_bar=False)
    assert _fitloop.run._cache_size() == compiled + 1  # three chunks (the last shorter), one program
    # Adam: one trace for the step and the gradient at the point returned (L-BFGS's line search
    # traces the loss again for its own evaluations)
    traced = len(traces)
    assert name != "adam" or traced == 1
    whole = fit(model, loss, optimizer=opt, steps=7, progress_bar=False)
    assert len(traces) == traced and _fitloop.run._cache_size() == compiled + 1  # none new for one chunk of 7
    assert chunked.losses.shape == (7,)
    np.testing.assert_allclose(chunked.losses, whole.losses, rtol=1e-6)
    np.testing.assert_allclose(chunked.model["w"], whole.model["w"], rtol=1e-6)
    # a state the user passes, weakly typed (optax's own init, eagerly): still that one program
    again = fit(model, loss, optimizer=opt, steps=7, chunk_size=3, progress_bar=False, opt_state=opt.init(model))
    assert _fitloop.run._cache_size() == compiled + 1
    np.testing.assert_allclose(again.model["w"], whole.model["w"], rtol=1e-6)


def test_every_step_is_run_and_recorded_whatever_the_chunking():
    # chunks of any length (traced bounds, one compiled loop): every step's loss lands at its
    # own index, and every chunking gives the same run as the eager loop
    loss = lambda m: jnp.sum((m["w"] - jnp.arange(3.0)) ** 2)  # noqa: E731
    model = {"w": jnp.zeros(3)}
    opt = optax.adam(0.1)
    w, state, expected = model["w"], opt.init(model["w"]), []
    for _ in range(37):  # the same steps, eagerly
        value, grad = jax.value_and_grad(lambda w: loss({"w": w}))(w)
        updates, state = opt.update(grad, state, w)
        w, expected = optax.apply_updates(w, updates), expected + [float(value)]
    for chunk_size in (None, 1, 5, 8, 9, 17):
        res = fit(model, loss, optimizer=opt, steps=37, chunk_size=chunk_size, progress_bar=False)
        np.testing.assert_allclose(res.losses, expected, rtol=1e-5, err_msg=f"chunk_size={chunk_size}")
        np.testing.assert_allclose(res.model["w"], w, rtol=1e-5, err_msg=f"chunk_size={chunk_size}")


def test_minibatch_regression():
    n = 2000
    kx, kn = jax.random.split(jax.random.key(2))
    X = jax.random.normal(kx, (n, 3))
    beta = jnp.array([1.0, -2.0, 0.5])
    y = X @ beta + 0.1 * jax.random.normal(kn, (n,))
    loss = lambda m, X, y: jnp.mean((X @ m["beta"] - y) ** 2)  # noqa: E731
    model = {"beta": jnp.zeros(3)}
    res = fit(
        model,
        loss,
        X,
        y,
        optimizer=optax.adam(0.05),
        steps=600,
        batch_size=32,
        key=jax.random.key(3),
        progress_bar=False,
    )
    np.testing.assert_allclose(res.model["beta"], beta, atol=0.05)
    other = fit(
        model,
        loss,
        X,
        y,
        optimizer=optax.adam(0.05),
        steps=20,
        batch_size=32,
        key=jax.random.key(4),
        progress_bar=False,
    )
    assert not np.allclose(other.losses, res.losses[:20])  # batches depend on the key
    with pytest.raises(ValueError, match="needs key"):
        fit(model, loss, X, y, steps=5, batch_size=32, progress_bar=False)
    with pytest.raises(ValueError, match=r"leading.*2000.*1999"):
        fit(model, loss, X, y[:-1], steps=5, batch_size=32, key=jax.random.key(0), progress_bar=False)
    with pytest.raises(ValueError, match="batch_size must be"):
        fit(model, loss, X, y, steps=5, batch_size=n + 1, key=jax.random.key(0), progress_bar=False)


def test_lbfgs_extra_args_and_equinox_module():
    lin = eqx.nn.Linear(2, 1, key=jax.random.key(0))
    lin = eqx.tree_at(lambda m: m.bias, lin, rb.Positive(jnp.array([0.5])))
    X = jax.random.normal(jax.random.key(5), (40, 2))
    y = X @ jnp.array([0.7, -0.3]) + 2.0
    loss = lambda m, X, y: jnp.mean((jax.vmap(m)(X)[:, 0] - y) ** 2)  # noqa: E731
    res = fit(lin, loss, X, y, optimizer=optax.lbfgs(), steps=50, progress_bar=False)
    out = rb.unwrap(res.model)
    np.testing.assert_allclose(out.weight[0], [0.7, -0.3], atol=1e-4)
    np.testing.assert_allclose(out.bias, [2.0], atol=1e-4)
    assert isinstance(res.model.bias, rb.Positive)


def test_errors():
    with pytest.raises(ValueError, match="no free arrays"):
        fit({"a": rb.NonTrainable(jnp.ones(2))}, lambda m: 0.0, steps=3, progress_bar=False)
    with pytest.raises(ValueError, match="steps"):
        fit({"a": jnp.ones(2)}, lambda m: 0.0, steps=-1, progress_bar=False)
    for bad in (0.0, -1e-3, float("nan"), float("inf"), "a", 10**400):  # 10**400: past float's range
        with pytest.raises(ValueError, match="tol must be a finite float > 0"):
            fit({"a": jnp.ones(2)}, lambda m: jnp.sum(m["a"]), steps=3, tol=bad, progress_bar=False)
    res = fit({"a": jnp.ones(2)}, lambda m: jnp.sum(m["a"]), steps=0, progress_bar=False)
    assert res.losses.shape == (0,)


def test_nonfinite_gradient_in_last_step_of_padded_chunk():
    # the gradient turns NaN at step 4, the last one: only the final parameters show it
    loss = lambda m: -m["w"] + jnp.sqrt(jnp.maximum(4.0 - m["w"], 0.0))  # noqa: E731
    with pytest.raises(ValueError, match=r"gradient.*step 4 .*\['w'\]"):
        fit({"w": jnp.array(0.0)}, loss, optimizer=optax.sgd(1.0), steps=5, chunk_size=3, progress_bar=False)


def test_fit_refuses_a_non_scalar_loss_with_a_clear_error():
    import jax.numpy as jnp
    import pytest

    import reparam_bridge as rb

    model = {"a": jnp.ones(3)}
    with pytest.raises(ValueError, match="loss must be a scalar"):
        rb.fit(model, lambda m: m["a"] ** 2, steps=5, progress_bar=False)


def test_complex_parameters_report_the_gradient_norm():
    # |g|² of a complex gradient (g² has a negative real part here and made the norm NaN)
    def loss(m):
        return jnp.abs(m["z"] - 3j) ** 2

    res = rb.fit({"z": jnp.array(1 + 0j)}, loss, steps=5, optimizer=optax.sgd(0.01), progress_bar=False)
    want = float(optax.global_norm(jax.grad(loss)(res.model)))
    assert np.isfinite(res.grad_norm) and res.grad_norm == pytest.approx(want, rel=1e-5)


def test_density_check_takes_prng_keys_and_tells_one_from_true():
    y = jnp.array([0.1, -0.2, 0.3])

    def log_joint(m, key, y):  # a typed PRNG key among the data
        return dist.Normal(m["mu"] + 0.0 * jax.random.normal(key), 1.0).log_prob(y).sum()

    for _ in range(2):  # the second call hits the signature cache
        res = rb.map_estimate({"mu": rb.Real(0.0)}, log_joint, jax.random.key(0), y, progress_bar=False)
        assert abs(float(rb.unwrap(res.model)["mu"]) - float(y.mean())) < 1e-3

    def flagged(m, flag):  # a vector out for flag=True only: refused even after a call with 1
        return jnp.ones(2) * m["mu"] if flag is True else -(m["mu"] ** 2)

    rb.map_estimate({"mu": rb.Real(0.5)}, flagged, 1, progress_bar=False)
    with pytest.raises(ValueError, match="scalar"):
        rb.map_estimate({"mu": rb.Real(0.5)}, flagged, True, progress_bar=False)
