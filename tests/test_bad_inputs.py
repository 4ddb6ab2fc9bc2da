"""Bad inputs, one parametrised case each: the exception (or warning) type, and a message
that names the parameter path or the argument. Every case here fails before any sampling or
optimisation starts (the cheap pre-flight checks), so the whole module runs in seconds.

Families (issue 11): construction, model mistakes, API misuse, persistence, interop with
paramax and equinox; plus cases the issue did not list.
"""

import json
import os
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import optax
import paramax
import pytest

import reparam_bridge as rb
from reparam_bridge import _checks

Y = jnp.array([0.8, 1.2, 1.0])
KEY = jax.random.key(0)


def good_model():
    return {"mu": rb.Real(0.0), "sigma": rb.Positive(1.0)}


def lj(m, y=Y):
    return dist.Normal(m["mu"], m["sigma"]).log_prob(y).sum()


def sample(model=None, log_joint=lj, *args, **kw):
    kw = {"key": KEY, "num_warmup": 5, "num_samples": 5, "num_chains": 1, "progress_bar": False, **kw}
    return rb.sample(good_model() if model is None else model, log_joint, *args, **kw)


def fit(model=None, loss=lambda m: jnp.sum(m["mu"] ** 2), **kw):
    return rb.fit(good_model() if model is None else model, loss, **{"steps": 5, "progress_bar": False, **kw})


def map_est(model=None, log_joint=lj, **kw):
    return rb.map_estimate(good_model() if model is None else model, log_joint, **{"progress_bar": False, **kw})


class Net(eqx.Module):
    weight: object
    bias: object
    data: object


def deep(inner):
    """``inner`` three levels down: the path must be spelled in full."""
    return {"layers": [good_model(), {"head": inner}]}


CASES = []


def case(name, exc, *needles):
    def deco(fn):
        CASES.append(pytest.param(fn, exc, needles, id=name))
        return fn

    return deco


# ----------------------------------------------------------------------------------------
# API misuse: rb.sample arguments


for bad in (0, -1, 1.5, True, "4"):
    case(f"sample-num_chains={bad!r}", ValueError, "num_chains")(lambda bad=bad: sample(num_chains=bad))
for bad in (0, -3, 2.5):
    case(f"sample-num_samples={bad!r}", ValueError, "num_samples")(lambda bad=bad: sample(num_samples=bad))
for bad in (-1, 1.5):
    case(f"sample-num_warmup={bad!r}", ValueError, "num_warmup")(lambda bad=bad: sample(num_warmup=bad))
for bad in (0, -2):
    case(f"sample-thinning={bad!r}", ValueError, "thinning")(lambda bad=bad: sample(thinning=bad))
case("sample-thinning>num_samples", ValueError, "thinning=50", "num_samples=5")(lambda: sample(thinning=50))
for bad in ("bogus", "Parallel"):
    case(f"sample-chain_method={bad}", ValueError, "chain_method")(lambda bad=bad: sample(chain_method=bad))
case("sample-kernel=mala", ValueError, "kernel")(lambda: sample(kernel="mala"))
case("sample-kernel=3", TypeError, "kernel")(lambda: sample(kernel=3))
case("sample-key=None", TypeError, "key")(lambda: sample(key=None))
case("sample-key=int", TypeError, "key")(lambda: sample(key=0))
case("sample-key=numpy", TypeError, "key")(lambda: sample(key=np.array([0, 1], np.uint32)))
case("sample-key=float-array", TypeError, "key", "float32")(lambda: sample(key=jnp.zeros(2)))
case("sample-key=3-uint32", TypeError, "key", "(3,)")(lambda: sample(key=jnp.zeros(3, jnp.uint32)))
case("sample-key=batch", ValueError, "key", "batch")(lambda: sample(key=jax.random.split(KEY, 4)))
for bad in (-1.0, float("nan"), "x"):
    case(f"sample-init_jitter={bad!r}", ValueError, "init_jitter")(lambda bad=bad: sample(init_jitter=bad))
case("sample-checkpoint_every-without-checkpoint", ValueError, "checkpoint_every")(lambda: sample(checkpoint_every=10))
case("sample-checkpoint-with-thinning", ValueError, "checkpoint", "thinning")(
    lambda: sample(checkpoint="/tmp/x", thinning=2)
)
case("sample-checkpoint=int", TypeError, "checkpoint")(lambda: sample(checkpoint=123))
case("sample-checkpoint_every=0", ValueError, "checkpoint_every")(
    lambda: sample(checkpoint="/tmp/x", checkpoint_every=0)
)
case("sample-unknown-kernel-kwarg", TypeError, "target_accept")(lambda: sample(target_accept=0.9))

# ----------------------------------------------------------------------------------------
# model mistakes under rb.sample


# names ArviZ would lose: a dimension's name, two parameters with one dotted path
case("sample-parameter-named-chain", ValueError, "'chain'", "rename")(
    lambda: sample({"chain": rb.Real(0.0)}, lambda m: -(m["chain"] ** 2))
)
case("sample-parameter-named-draw", ValueError, "'draw'", "rename")(
    lambda: sample({"draw": rb.Real(jnp.zeros(3))}, lambda m: -jnp.sum(m["draw"] ** 2))
)
case("sample-two-parameters-one-name", ValueError, "'a.b'", "rename")(
    lambda: sample({"a.b": rb.Real(0.0), "a": {"b": rb.Real(5.0)}}, lambda m: -(m["a.b"] ** 2) - m["a"]["b"] ** 2)
)
case("sample-log_likelihood-not-callable", TypeError, "log_likelihood")(lambda: sample(log_likelihood=3))
case("sample-log_likelihood-summed", ValueError, "log_likelihood", "per observation")(
    lambda: sample(log_likelihood=lambda m: dist.Normal(m["mu"], 1.0).log_prob(jnp.zeros(4)).sum())
)
case("sample-log_likelihood-string", TypeError, "log_likelihood", "float")(
    lambda: sample(log_likelihood=lambda m: {"obs": "x"})
)
case("arviz-variable-named-chain", ValueError, "'chain'", "posterior")(
    lambda: rb.arviz.to_inference_data({"chain": np.zeros((1, 5))})
)
case("sample-log_joint-not-callable", TypeError, "log_joint")(lambda: sample(log_joint="lj"))
case("sample-log_joint-None", TypeError, "log_joint")(lambda: sample(log_joint=None))
case("sample-log_joint-returns-int", TypeError, "log_joint", "int")(lambda: sample(log_joint=lambda m: 1))
case("sample-log_joint-returns-bool", TypeError, "log_joint", "bool")(lambda: sample(log_joint=lambda m: m["mu"] > 0))
case("sample-log_joint-returns-int-array", TypeError, "log_joint", "int32")(
    lambda: sample(log_joint=lambda m: jnp.sum(jnp.arange(3)))
)
case("sample-log_joint-not-scalar", ValueError, "log_joint", "shape (3,)")(
    lambda: sample(log_joint=lambda m: dist.Normal(m["mu"], 1.0).log_prob(Y))
)
case("sample-log_joint-returns-None", TypeError, "log_joint")(lambda: sample(log_joint=lambda m: None))
case("sample-complex-free-array", TypeError, "'z'", "complex")(
    lambda: sample({**good_model(), "z": jnp.array(1.0 + 2.0j)}, lambda m: lj(m))
)
case("sample-complex-deep", TypeError, "layers.1.head", "complex")(
    lambda: sample(deep(jnp.ones(2, jnp.complex64)), lambda m: 0.0)
)
case("sample-nothing-free", ValueError, "no free arrays")(
    lambda: sample({"mu": rb.NonTrainable(jnp.array(1.0))}, lambda m: -(m["mu"] ** 2))
)
for cls, build in [
    ("Parameterize", lambda: rb.Parameterize(jnp.exp, jnp.array(0.0))),
    ("WeightNormalization", lambda: rb.WeightNormalization(jnp.ones((2, 2)))),
    ("Symmetric", lambda: rb.Symmetric(jnp.eye(2))),
    ("SkewSymmetric", lambda: rb.SkewSymmetric(jnp.zeros((2, 2)))),
    ("NonNegative", lambda: rb.NonNegative(jnp.array(1.0))),
    ("Clamp", lambda: rb.Clamp(jnp.array(0.5), 0.0, 1.0)),
]:
    case(f"sample-no-jacobian-{cls}", TypeError, "layers.1.head", cls)(
        lambda build=build: sample(deep(build()), lambda m: lj(m["layers"][0]))
    )
case("sample-frozen-ref", TypeError, "rb.Ref", "'b'")(
    lambda: sample({"a": rb.Real(0.0), "b": rb.NonTrainable(rb.Ref("a"))}, lambda m: -(m["a"] ** 2))
)
case("sample-nonfinite-start", ValueError, "'sigma'")(lambda: sample({"mu": rb.Real(0.0), "sigma": rb.Real(-1.0)}, lj))
case("sample-nonfinite-data", ValueError, "non-finite")(lambda: sample(None, lj, jnp.array([jnp.nan, 1.0])))


def _x64_mixed():
    with jax.enable_x64(True):
        model = {"mu": rb.Real(jnp.array(0.0, jnp.float64)), "w": rb.Real(jnp.zeros(2, jnp.float32))}
        return sample(model, lambda m: -jnp.sum(m["w"] ** 2) - m["mu"] ** 2)


def _x64_all32():
    with jax.enable_x64(True):
        model = {"w": rb.Real(jnp.zeros(2, jnp.float32))}
        return sample(model, lambda m: -jnp.sum(m["w"] ** 2))


case("sample-float32-under-x64-mixed", TypeError, "'w.unconstrained'", "float32", "jax_enable_x64")(_x64_mixed)
case("sample-float32-under-x64", TypeError, "'w.unconstrained'", "float32")(_x64_all32)

# ----------------------------------------------------------------------------------------
# interop: paramax wrappers inside an rb model are refused with their path, never sampled


PARAMAX = [
    ("NonTrainable", lambda: paramax.NonTrainable(jnp.ones(2))),
    ("Parameterize", lambda: paramax.Parameterize(jnp.exp, jnp.zeros(2))),
    ("WeightNormalization", lambda: paramax.WeightNormalization(jnp.ones((2, 2)))),
]
for cls, build in PARAMAX:
    case(f"paramax-{cls}-sample", TypeError, "layers.1.head", f"paramax.{cls}")(
        lambda build=build: sample(deep(build()), lambda m: lj(m["layers"][0]))
    )
    case(f"paramax-{cls}-fit", TypeError, "layers.1.head", f"paramax.{cls}")(
        lambda build=build: rb.fit(deep(build()), lambda m: 0.0, steps=2, progress_bar=False)
    )
    case(f"paramax-{cls}-map_estimate", TypeError, "layers.1.head", f"paramax.{cls}")(
        lambda build=build: rb.map_estimate(deep(build()), lambda m: 0.0, progress_bar=False)
    )
case("paramax-laplace", TypeError, "'x'", "paramax.NonTrainable")(
    lambda: rb.laplace({"x": paramax.NonTrainable(jnp.ones(2)), **good_model()}, lj, optimize=False)
)
case("paramax-log_density", TypeError, "'x'", "paramax.NonTrainable")(
    lambda: rb.log_density(lj, {"x": paramax.NonTrainable(jnp.ones(2)), **good_model()})
)
case("paramax-inside-eqx-module", TypeError, "'data'", "paramax.NonTrainable")(
    lambda: sample(
        Net(rb.Real(jnp.ones(2)), rb.Real(0.0), paramax.NonTrainable(jnp.ones(3))),
        lambda m: -jnp.sum(m.weight**2) - m.bias**2,
    )
)
case("paramax-inside-rb-wrapper", TypeError, "x.", "paramax.NonTrainable")(
    lambda: sample({"x": rb.NonNegative(paramax.NonTrainable(jnp.ones(2)))}, lambda m: 0.0)
)

# ----------------------------------------------------------------------------------------
# rb.fit and rb.map_estimate arguments


for bad in (-1, 1.5, "10", True, None):
    case(f"fit-steps={bad!r}", ValueError, "steps")(lambda bad=bad: fit(steps=bad))
for bad in (-1.0, float("nan"), 0.0, "a", float("inf")):
    case(f"fit-tol={bad!r}", ValueError, "tol")(lambda bad=bad: fit(tol=bad))
for bad in (-1e-3, float("inf")):
    case(f"fit-rtol={bad!r}", ValueError, "rtol")(lambda bad=bad: fit(rtol=bad))
for bad in ("adam", 3, optax.adam):
    case(f"fit-optimizer={bad!r}", TypeError, "optimizer")(lambda bad=bad: fit(optimizer=bad))
case("fit-batch_size-without-key", ValueError, "key")(
    lambda: rb.fit(good_model(), lambda m, x: jnp.sum(x), jnp.ones(4), batch_size=2, progress_bar=False)
)
case("fit-batch_size=0", ValueError, "batch_size")(
    lambda: rb.fit(good_model(), lambda m, x: jnp.sum(x), jnp.ones(4), batch_size=0, key=KEY, progress_bar=False)
)
case("fit-batch_size>data", ValueError, "batch_size")(
    lambda: rb.fit(good_model(), lambda m, x: jnp.sum(x), jnp.ones(4), batch_size=9, key=KEY, progress_bar=False)
)
case("fit-chunk_size=0", ValueError, "chunk_size")(lambda: fit(chunk_size=0))
case("fit-key=int", TypeError, "key")(lambda: fit(key=3))
case("fit-nothing-free", ValueError, "no free arrays")(
    lambda: fit({"mu": rb.NonTrainable(jnp.array(1.0))}, lambda m: m["mu"])
)
case("map-log_joint-not-callable", TypeError, "log_joint")(lambda: map_est(log_joint=42))
case("map-log_joint-returns-int", TypeError, "log_joint", "int")(lambda: map_est(log_joint=lambda m: 3))
case("map-log_joint-not-scalar", ValueError, "log_joint", "shape")(
    lambda: map_est(log_joint=lambda m: dist.Normal(m["mu"], 1.0).log_prob(Y))
)
case("map-complex", TypeError, "'z'", "complex")(lambda: map_est({**good_model(), "z": jnp.array(1.0 + 0.5j)}))
case("map-jacobian-Parameterize", TypeError, "'p'", "Parameterize")(
    lambda: map_est({**good_model(), "p": rb.Parameterize(jnp.exp, jnp.array(0.0))}, jacobian=True)
)
case("map-steps=-1", ValueError, "steps")(lambda: map_est(steps=-1))
case("map-tol=-1", ValueError, "tol")(lambda: map_est(tol=-1.0))
case("laplace-Parameterize", TypeError, "'p'", "Parameterize")(
    lambda: rb.laplace({**good_model(), "p": rb.Parameterize(jnp.exp, jnp.array(0.0))}, lj)
)
case("log_density-Parameterize", TypeError, "'p'", "Parameterize")(
    lambda: rb.log_density(lj, {**good_model(), "p": rb.Parameterize(jnp.exp, jnp.array(0.0))})
)
case("log_density-not-scalar", ValueError, "log_joint", "shape")(
    lambda: rb.log_density(lambda m: dist.Normal(m["mu"], 1.0).log_prob(Y), good_model())
)

# ----------------------------------------------------------------------------------------
# geometry.compare: misuse is found before the first model is sampled


case("compare-baseline-misspelt", ValueError, "baseline", "'centred'")(
    lambda: rb.geometry.compare({"centered": (good_model(), lj)}, key=KEY, baseline="centred")
)
case("compare-not-a-pair", TypeError, "models['a']")(lambda: rb.geometry.compare({"a": good_model()}, key=KEY))
case("compare-num_chains=0", ValueError, "num_chains")(
    lambda: rb.geometry.compare({"a": (good_model(), lj)}, key=KEY, num_chains=0)
)


# ----------------------------------------------------------------------------------------
# resume


def _posterior():
    params, static = rb.partition(good_model())
    samples = jax.tree_util.tree_map(lambda x: jnp.zeros((2, 3, *x.shape), x.dtype), params)
    return rb.Posterior(good_model(), static, samples, {})


for bad in (0, -1, 1.5, "3"):
    case(f"resume({bad!r})", ValueError, "num_samples")(lambda bad=bad: _posterior().resume(bad))
case("resume-without-state", ValueError, "resume", "checkpoint")(lambda: _posterior().resume(3))

# ----------------------------------------------------------------------------------------
# construction


CONSTRUCT = [
    ("Positive(-1)", ValueError, ["Positive", "support"], lambda: rb.Positive(-1.0)),
    ("Positive(nan)", ValueError, ["Positive", "finite"], lambda: rb.Positive(float("nan"))),
    ("Positive(inf)", ValueError, ["Positive"], lambda: rb.Positive(float("inf"))),
    ("Positive(0)-boundary", ValueError, ["Positive", "support"], lambda: rb.Positive(0.0)),
    ("Real(nan)", ValueError, ["Real", "finite"], lambda: rb.Real(jnp.array([0.0, jnp.nan]))),
    ("Bounded-outside", ValueError, ["Bounded", "support"], lambda: rb.Bounded(2.0, lower=0.0, upper=1.0)),
    ("Bounded-lower-nan", ValueError, ["Bounded", "lower"], lambda: rb.Bounded(0.5, lower=float("nan"), upper=1.0)),
    ("Bounded-upper-inf", ValueError, ["Bounded", "upper"], lambda: rb.Bounded(0.5, lower=0.0, upper=float("inf"))),
    ("Simplex-not-summing", ValueError, ["Simplex"], lambda: rb.Simplex(jnp.array([0.5, 0.6]))),
    ("Simplex-scalar", ValueError, ["Simplex"], lambda: rb.Simplex(1.0)),
    ("Ordered-decreasing", ValueError, ["Ordered"], lambda: rb.Ordered(jnp.array([2.0, 1.0]))),
    ("PositiveOrdered-negative", ValueError, ["PositiveOrdered"], lambda: rb.PositiveOrdered(jnp.array([-1.0, 2.0]))),
    ("CorrCholesky-not-square", ValueError, ["CorrCholesky"], lambda: rb.CorrCholesky(jnp.ones((2, 3)))),
    (
        "CorrMatrix-not-symmetric",
        ValueError,
        ["CorrMatrix"],
        lambda: rb.CorrMatrix(jnp.array([[1.0, 0.5], [0.1, 1.0]])),
    ),
    ("CovCholesky-upper", ValueError, ["CovCholesky"], lambda: rb.CovCholesky(jnp.array([[1.0, 0.5], [0.0, 1.0]]))),
    (
        "PositiveDefinite-indefinite",
        ValueError,
        ["PositiveDefinite"],
        lambda: rb.PositiveDefinite(jnp.array([[1.0, 2.0], [2.0, 1.0]])),
    ),
    ("ZeroSum-not-zero", ValueError, ["ZeroSum"], lambda: rb.ZeroSum(jnp.array([1.0, 1.0]))),
    ("Positive-transform-bogus", ValueError, ["transform"], lambda: rb.Positive(1.0, transform="bogus")),
    ("Constrained-not-a-constraint", TypeError, ["Constrained"], lambda: rb.Constrained(1.0, "positive")),
    ("prior-wrong-support", ValueError, ["Positive", "prior"], lambda: rb.Positive(1.0, prior=dist.Normal(0, 1))),
    ("Real-complex", TypeError, ["Real", "complex"], lambda: rb.Real(1.0 + 2.0j)),
    ("Positive-complex", TypeError, ["Positive", "complex"], lambda: rb.Positive(jnp.array([1.0 + 0j]))),
    (
        "Bounded-bound-more-dims",
        ValueError,
        ["Bounded", "lower", "(2, 3)"],
        lambda: rb.Bounded(jnp.full(3, 0.5), lower=jnp.zeros((2, 3)), upper=1.0),
    ),
    (
        "Bounded-bound-wrong-shape",
        ValueError,
        ["Bounded", "upper"],
        lambda: rb.Bounded(jnp.full(3, 0.5), lower=0.0, upper=jnp.ones(2)),
    ),
    # float32's smallest subnormal: below the smallest stick the map can break (finfo.tiny)
    ("Simplex-not-representable", ValueError, ["Simplex"], lambda: rb.Simplex(jnp.array([0.5, 0.5, 1e-45]))),
    (
        "Simplex-sum-not-one",
        ValueError,
        ["Simplex", "sum to 1", "value.sum"],
        lambda: rb.Simplex(jnp.array([0.2, 0.3, 0.4999])),
    ),
    (
        "ZeroSum-sum-not-zero",
        ValueError,
        ["ZeroSum", "sum to 0", "mean"],
        lambda: rb.ZeroSum(jnp.array([1.0, -0.5, -0.4999])),
    ),
    ("Real-string", TypeError, ["Real"], lambda: rb.Real("1.0")),
]
for name, exc, needles, build in CONSTRUCT:
    case(f"construct-{name}", exc, *needles)(build)


@pytest.mark.parametrize("call, exc, needles", CASES)
def test_bad_input_is_refused_naming_it(call, exc, needles):
    with warnings.catch_warnings():
        warnings.simplefilter("error", _checks.ReliabilityWarning)  # a warning would hide the error
        with pytest.raises(exc) as info:
            call()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"


# ----------------------------------------------------------------------------------------
# what the library cannot know is a mistake: a warning naming the path, once


WARN = [
    ("data-array-in-dict", lambda: ({**good_model(), "data": jnp.ones(3)}, lambda m: lj(m)), "'data'"),
    (
        "data-array-in-module",
        lambda: (Net(rb.Real(jnp.ones(2)), rb.Real(0.0), jnp.ones(3)), lambda m: -jnp.sum(m.weight**2) - m.bias**2),
        "'data'",
    ),
    ("raw-parameter-deep", lambda: (deep(jnp.zeros(2)), lambda m: lj(m["layers"][0])), "'layers.1.head'"),
]


@pytest.mark.parametrize("build, needle", [pytest.param(b, n, id=i) for i, b, n in WARN])
def test_free_array_outside_any_wrapper_warns_once_with_its_path(build, needle):
    model, log_joint = build()
    _checks._WARNED.clear()
    # "error" turns the warning into an exception at the point of warning, before any sampling
    with warnings.catch_warnings():
        warnings.simplefilter("error", rb.ReliabilityWarning)
        with pytest.raises(rb.ReliabilityWarning, match=needle):
            sample(model, log_joint)
    with warnings.catch_warnings(record=True) as seen:  # once: the second check is silent
        warnings.simplefilter("always")
        _checks.warn_unwrapped_free(model, "rb.sample")
    assert not [w for w in seen if issubclass(w.category, rb.ReliabilityWarning)]


def test_wrapped_and_frozen_arrays_do_not_warn():
    model = {**good_model(), "data": rb.NonTrainable(jnp.ones(3)), "w": rb.Real(jnp.ones(2))}
    _checks._WARNED.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", rb.ReliabilityWarning)
        _checks.warn_unwrapped_free(model, "rb.sample")


# ----------------------------------------------------------------------------------------
# persistence: damaged or mismatched directories name the file or the parameter


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("saved") / "post")
    post = _posterior()
    post.save(d)
    return d


def _copy(saved, tmp_path):
    import shutil

    d = str(tmp_path / "copy")
    shutil.copytree(saved, d)
    return d


def _damage(name, content=b"\x00garbage"):
    def do(d):
        with open(os.path.join(d, name), "wb") as f:
            f.write(content)

    return do


def _remove(name):
    return lambda d: os.remove(os.path.join(d, name))


LOAD = [
    ("missing-directory", lambda d: os.rename(d, d + "-gone"), good_model, FileNotFoundError, ["meta.json"]),
    ("damaged-meta", _damage("meta.json"), good_model, ValueError, ["meta.json", "damaged"]),
    ("damaged-eqx", _damage("unconstrained.eqx"), good_model, ValueError, ["unconstrained.eqx"]),
    ("damaged-netcdf", _damage("posterior.nc"), good_model, ValueError, ["posterior.nc"]),
    (
        "truncated-netcdf",
        lambda d: open(os.path.join(d, "posterior.nc"), "r+b").truncate(100),
        good_model,
        ValueError,
        ["posterior.nc"],
    ),
    ("missing-eqx", _remove("unconstrained.eqx"), good_model, FileNotFoundError, ["unconstrained.eqx"]),
    (
        "kinds-swapped",
        lambda d: None,
        lambda: {"mu": rb.Positive(1.0), "sigma": rb.Real(1.0)},
        ValueError,
        ["'mu.unconstrained'", "Real", "Positive"],
    ),
    (
        "shape-mismatch",
        lambda d: None,
        lambda: {"mu": rb.Real(jnp.zeros(2)), "sigma": rb.Positive(1.0)},
        ValueError,
        ["'mu.unconstrained'", "shape"],
    ),
    (
        "name-mismatch",
        lambda d: None,
        lambda: {"m": rb.Real(0.0), "sigma": rb.Positive(1.0)},
        ValueError,
        ["mu.unconstrained"],
    ),
    (
        "extra-parameter",
        lambda d: None,
        lambda: {**good_model(), "tau": rb.Positive(1.0)},
        ValueError,
        ["tau.unconstrained"],
    ),
    (
        "version-noted",
        lambda d: _edit_meta(d, version="0.0.1"),
        lambda: {"mu": rb.Positive(1.0), "sigma": rb.Real(1.0)},
        ValueError,
        ["0.0.1"],
    ),
]


def _edit_meta(d, **sig):
    path = os.path.join(d, "meta.json")
    with open(path) as f:
        meta = json.load(f)
    meta["signature"].update(sig)
    with open(path, "w") as f:
        json.dump(meta, f)


@pytest.mark.parametrize("damage, model, exc, needles", [pytest.param(*c[1:], id=c[0]) for c in LOAD])
def test_load_names_the_damaged_file_or_the_mismatch(saved, tmp_path, damage, model, exc, needles):
    d = _copy(saved, tmp_path)
    damage(d)
    with pytest.raises(exc) as info:
        rb.Posterior.load(d, model())
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_save_is_atomic_and_replaces_a_previous_save(saved, tmp_path, monkeypatch):
    d = _copy(saved, tmp_path)
    post = rb.Posterior.load(d, good_model())
    post.save(d)  # over an existing save: no leftover temporary directories beside it
    assert sorted(os.listdir(tmp_path)) == ["copy"]
    assert sorted(os.listdir(d)) == ["meta.json", "posterior.nc", "unconstrained.eqx"]

    def boom(path, tree):  # a failure half-way through writing leaves the old save intact
        with open(path, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(eqx, "tree_serialise_leaves", boom)
    with pytest.raises(RuntimeError):
        post.save(d)
    assert rb.Posterior.load(d, good_model()).num_draws == 3
    assert sorted(os.listdir(tmp_path)) == ["copy"]


def test_checkpoint_into_a_used_directory_is_refused_before_sampling(tmp_path):
    (tmp_path / "checkpoint.json").write_text("{}")
    with pytest.raises(FileExistsError, match="already holds a checkpoint"):
        sample(checkpoint=str(tmp_path))


def test_a_bijector_holding_a_numpy_index_samples():
    # the names are read from the shapes of the trace that checks the density: arrays that are
    # not free (a NumPy index here) stay concrete, as in the sampler
    class Tied(rb.Bijector):
        raw: jax.Array
        idx: np.ndarray

        def unwrap_and_log_det(self):
            return self.raw[np.asarray(self.idx)], jnp.zeros(())

    post = sample({"t": Tied(jnp.zeros(2), np.array([0, 1, 1]))}, lambda m: -jnp.sum(m["t"] ** 2))
    assert post.draws["t"].shape == (1, 5, 3)


def test_at_least_100_cases():
    assert len(CASES) + len(WARN) + len(LOAD) >= 100
