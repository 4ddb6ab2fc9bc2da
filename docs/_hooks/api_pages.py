"""MkDocs hook: the API reference, generated at build time from ``reparam_bridge.__all__``.

Every name in ``__all__`` gets an entry, so a public name added to the package appears on the
site without touching the docs:

- a name listed in ``GROUPS`` goes to that group's page (names not exported today are skipped);
- an unlisted name goes to the page of a listed name defined in the same private module
  (``PathfinderResult`` next to ``pathfinder``), otherwise to "More public names";
- a submodule (``rb.geometry``, ``rb.numpyro``, ...) gets its own page, rendering its own
  ``__all__``.

The package is read by static analysis (griffe), as mkdocstrings does: the build does not
import it, so it needs neither JAX nor NumPyro. The hook also publishes the figures of
``benchmarks/figures/`` under ``benchmarks/figures/`` of the site (no copies in docs/), and
fills the validation section of the benchmarks page from ``tests/validation/`` (the list of
reference posteriors and the criteria, read from the test files, so the page follows them).
"""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from typing import Any

import griffe
from mkdocs.structure.files import File

ROOT = "reparam_bridge"
REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger("mkdocs.hooks.api_pages")

# (page, title, introduction, names in reading order)
GROUPS: list[tuple[str, str, str, list[str]]] = [
    (
        "wrappers",
        "Wrappers and constraints",
        "Unwrappables stand in for a node of an Equinox PyTree; `unwrap` replaces each by the value the "
        "model uses (innermost first, as paramax does). Constraints are Unwrappables projected after every "
        "optimiser step (klax's `apply`). None of these has a log-Jacobian: they are for `fit`; for "
        "sampling use a [bijector](bijectors.md).",
        [
            "Unwrappable",
            "unwrap",
            "contains_unwrappables",
            "Parameterize",
            "NonTrainable",
            "non_trainable",
            "WeightNormalization",
            "Symmetric",
            "SkewSymmetric",
            "Ref",
            "Constraint",
            "apply",
            "finalize",
            "contains_constraints",
            "NonNegative",
            "Clamp",
        ],
    ),
    (
        "bijectors",
        "Bijectors",
        "Unwrappables that store an **unconstrained** array and know the log-Jacobian of their map. "
        "Constructors take the constrained value; `from_unconstrained` takes the raw one. See "
        "[the Jacobian convention](../concepts.md#the-jacobian-convention).",
        [
            "Bijector",
            "log_det_jacobian",
            "Real",
            "Positive",
            "Bounded",
            "Simplex",
            "Ordered",
            "PositiveOrdered",
            "CorrCholesky",
            "CorrMatrix",
            "CovCholesky",
            "PositiveDefinite",
            "ZeroSum",
            "Constrained",
            "LocScale",
            "reparameterize",
        ],
    ),
    (
        "densities",
        "Densities",
        "The free arrays of a wrapped tree and the log-density over them.",
        ["partition", "log_prior", "log_density"],
    ),
    (
        "optimisation",
        "Optimisation and approximations",
        "optax loops over the free arrays, and the approximations built on them.",
        ["fit", "map_estimate", "FitResult", "Approximation", "laplace", "LaplaceResult", "pathfinder", "variational"],
    ),
    (
        "sampling",
        "Sampling",
        "NumPyro's NUTS over the free arrays; draws come back as the user's model type and as ArviZ data.",
        ["sample", "Posterior", "compile_effort", "clear_caches", "ReliabilityWarning"],
    ),
]
OTHER = ("more", "More public names", "Public names not yet placed in a group of their own.", [])
_ROLE = re.compile(r":(?:py:)?[a-z]+:`~?([^`<]+?)(?:\s*<[^`>]+>)?`")


def _load() -> griffe.Module:
    return griffe.load(ROOT, search_paths=[str(REPO)], resolve_aliases=False)


def _exports(module: Any) -> list[str]:
    return [str(e) for e in (module.exports or [])]


def _target(pkg: griffe.Module, name: str) -> Any | None:
    member = pkg.members.get(name)
    if member is None:
        return None
    if member.is_alias:
        try:
            return member.final_target
        except Exception:  # noqa: BLE001 - a re-export we cannot read statically: no summary, still rendered
            return None
    return member


def _summary(obj: Any) -> str:
    """The docstring's first sentence, roles turned into inline code, safe in a table cell."""
    if obj is None or obj.docstring is None:
        return ""
    para = obj.docstring.value.strip().split("\n\n", 1)[0]
    para = _ROLE.sub(lambda m: f"`{m.group(1)}`", " ".join(para.split()))
    sentence = re.split(r"(?<=[.:])\s+(?=[A-Z(])", para, maxsplit=1)[0]
    return sentence.replace("|", "\\|")


def build_pages() -> tuple[dict[str, str], list[Any]]:
    """``({uri: markdown}, nav entries)`` for the API reference."""
    pkg = _load()
    exported = _exports(pkg)
    if not exported:
        raise RuntimeError(f"{ROOT}.__all__ could not be read statically; the API pages list it.")
    undefined = [n for n in exported if n not in pkg.members]
    for name in undefined:  # a broken __all__: say which name, rather than a collection error
        log.warning("api_pages: %s.__all__ lists %r, which the package does not define", ROOT, name)
    exported = [n for n in exported if n not in undefined]
    modules = [n for n in exported if (t := _target(pkg, n)) is not None and t.is_module]
    placed: dict[str, str] = {}
    for page, _, _, names in GROUPS:
        for name in names:
            if name in exported:
                placed[name] = page
    # unlisted names: beside a listed name defined in the same module, else "more"
    home_of_module = {}
    for name, page in placed.items():
        target = _target(pkg, name)
        if target is not None:
            home_of_module.setdefault(target.module.path, page)
    extra: dict[str, list[str]] = {}
    for name in exported:
        if name in placed or name in modules:
            continue
        target = _target(pkg, name)
        page = home_of_module.get(target.module.path, OTHER[0]) if target is not None else OTHER[0]
        placed[name] = page
        extra.setdefault(page, []).append(name)
        log.info("api_pages: %s is not in GROUPS; documented on api/%s.md", name, page)

    pages: dict[str, str] = {}
    nav: list[Any] = ["api/index.md"]
    index = [
        "# API reference",
        "",
        f"Every public name of `{ROOT}` (imported as `rb`), generated from `{ROOT}.__all__` "
        "and the submodules' `__all__`. Each entry shows the signature and the docstring; the "
        "examples in the docstrings run as doctests in the test suite.",
        "",
    ]
    for page, title, intro, names in [*GROUPS, OTHER]:
        here = [n for n in names if placed.get(n) == page] + extra.get(page, [])
        if not here:
            continue
        body = [f"# {title}", "", intro, ""]
        body += [f"::: {ROOT}.{name}\n" for name in here]
        pages[f"api/{page}.md"] = "\n".join(body)
        nav.append({title: f"api/{page}.md"})
        index += [f"## [{title}]({page}.md)", "", "| name | summary |", "|---|---|"]
        index += [f"| [`rb.{n}`][{ROOT}.{n}] | {_summary(_target(pkg, n))} |" for n in here]
        index.append("")
    if modules:
        index += ["## Submodules", "", "| module | summary |", "|---|---|"]
    for name in modules:
        sub = _target(pkg, name)
        sub_exports = _exports(sub)
        # exactly the submodule's __all__ (mkdocstrings would also show other public functions)
        members = ["      members:", *[f"        - {m}" for m in sub_exports]] if sub_exports else []
        pages[f"api/{name}.md"] = "\n".join(
            [
                f"# rb.{name}",
                "",
                f"::: {ROOT}.{name}",
                "    options:",
                "      show_root_heading: false",
                "      show_root_toc_entry: false",
                "      show_submodules: false",
                *members,
                "",
            ]
        )
        nav.append({f"rb.{name}": f"api/{name}.md"})
        members = ", ".join(f"`{m}`" for m in sub_exports)
        exports = f"Exports {members}." if members else ""
        index.append(f"| [`rb.{name}`]({name}.md) | {_summary(sub)} {exports} |")
    pages["api/index.md"] = "\n".join(index) + "\n"
    return pages, nav


_PAGES: dict[str, str] = {}


def on_config(config: Any, **kwargs: Any) -> Any:
    pages, api_nav = build_pages()
    _PAGES.clear()
    _PAGES.update(pages)
    for i, entry in enumerate(config["nav"] or []):
        if isinstance(entry, dict) and "API reference" in entry:
            config["nav"][i] = {"API reference": api_nav}
            break
    else:
        raise RuntimeError("mkdocs.yml: the nav needs an 'API reference' entry for the generated pages.")
    return config


def on_files(files: Any, config: Any, **kwargs: Any) -> Any:
    for uri, content in _PAGES.items():
        files.append(File.generated(config, uri, content=content))
    for png in sorted((REPO / "benchmarks" / "figures").glob("*.png")):
        files.append(File.generated(config, f"benchmarks/figures/{png.name}", abs_src_path=str(png)))
    return files


# -- the validation section of benchmarks.md ---------------------------------------------------
VALIDATION_MARK = "<!-- validation-cases -->"


def _validation_markdown() -> str:
    """The posteriordb cases (``Case("name", ...)`` in posteriordb_models.py) and the test's
    criteria (its module docstring), or a pointer to the folder if they are not where expected."""
    folder = REPO / "tests" / "validation"
    models, test = folder / "posteriordb_models.py", folder / "test_posteriordb.py"
    if not (models.exists() and test.exists()):
        return "The validation tests are in `tests/validation/`."
    names = []
    for node in ast.walk(ast.parse(models.read_text())):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "Case"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.append(node.args[0].value)
    doc = ast.get_docstring(ast.parse(test.read_text())) or ""
    criteria = "\n\n".join(p for p in doc.split("\n\n") if not p.startswith("Cost"))
    settings = {}
    for node in ast.parse(test.read_text()).body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Tuple)
            and isinstance(node.value, ast.Tuple)
        ):
            for target, value in zip(node.targets[0].elts, node.value.elts):
                if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
                    settings[target.id] = value.value
    run = ""
    if {"NUM_CHAINS", "NUM_WARMUP", "NUM_SAMPLES"} <= settings.keys():
        run = f" ({settings['NUM_CHAINS']} chains × {settings['NUM_WARMUP']} warm-up + {settings['NUM_SAMPLES']} draws)"
    lines = [
        f"`tests/validation/test_posteriordb.py` (marked `slow`, run in CI) samples each of the "
        f"{len(set(names))} posteriordb posteriors below with `rb.sample`{run} and compares the "
        "draws with posteriordb's reference draws:",
        "",
    ]
    lines += [f"- `{name}`" for name in sorted(set(names))]
    lines += ["", "From the test's docstring:", "", *[f"> {line}" if line else ">" for line in criteria.splitlines()]]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if VALIDATION_MARK in markdown:
        markdown = markdown.replace(VALIDATION_MARK, _validation_markdown())
    return markdown
