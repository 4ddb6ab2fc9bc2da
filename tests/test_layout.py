"""The package's layout rules (ARCHITECTURE.md), checked on the source so that they cannot rot
unnoticed: small modules, no import cycle, module-level private names kept in their module,
caches that ``rb.clear_caches`` reaches, and tutorials and benchmarks on the public API only."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reparam_bridge"
NAME = PACKAGE.name
MAX_LINES = 360


def _modules(package: pathlib.Path) -> dict[str, pathlib.Path]:
    """``{"_fit": path, "_bijectors.__init__": path, "__init__": path, ...}``"""
    return {p.relative_to(package).with_suffix("").as_posix().replace("/", "."): p for p in package.rglob("*.py")}


MODULES = _modules(PACKAGE)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _module_of(name: str, modules: dict) -> str | None:
    """``name`` (dotted, package-relative) as a module of the package, else None."""
    for candidate in (name, f"{name}.__init__" if name else "__init__"):
        if candidate in modules:
            return candidate
    return None


def _source(module: str, node: ast.ImportFrom, package: str = NAME) -> str | None:
    """The package-relative name an ``ImportFrom`` in ``module`` reads from ("": the package
    itself), or None for an import from outside the package."""
    if not node.level:
        if node.module == package:
            return ""
        return node.module[len(package) + 1 :] if node.module and node.module.startswith(package + ".") else None
    parts = module.split(".")[:-1]  # the package holding the module ("a.b" and "a.__init__": "a")
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, *([node.module] if node.module else [])])


def _executed_at_import(tree: ast.Module) -> list[ast.stmt]:
    """The statements run when the module is imported: the body, through ``if``/``try``/``with``
    and class bodies, not into functions."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        out.append(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            todo += getattr(node, field, [])
    return out


def _from_imports(module: str, node: ast.AST, package: str = NAME) -> list[tuple[ast.alias, str, str]]:
    """``(alias, source, full name)`` of each name that ``node``, a ``from ... import`` of the
    package in ``module``, imports (none for any other statement)."""
    source = _source(module, node, package) if isinstance(node, ast.ImportFrom) else None
    if source is None:
        return []
    return [(alias, source, f"{source}.{alias.name}" if source else alias.name) for alias in node.names]


def _imported_modules(module: str, nodes, modules: dict, package: str = NAME) -> dict[str, str]:
    """``{local name: package module}`` bound by the imports among ``nodes``."""
    bound = {}
    for node in nodes:
        for alias, _, full in _from_imports(module, node, package):
            if (target := _module_of(full, modules)) is not None:
                bound[alias.asname or alias.name] = target
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(package + ".") and alias.asname:
                    target = _module_of(alias.name[len(package) + 1 :], modules)
                    if target is not None:
                        bound[alias.asname] = target
    return bound


def private_crossings(modules: dict, package: str = NAME) -> list[str]:
    """Module-level private names of one module used in another (imported, or read as an
    attribute of the imported module, also through ``getattr`` or a chain ``a.b._c``)."""
    found = []
    for module, path in modules.items():
        nodes = list(ast.walk(ast.parse(path.read_text())))
        local = _imported_modules(module, nodes, modules, package)
        for node in nodes:
            for alias, source, full in _from_imports(module, node, package):
                if _is_private(alias.name) and _module_of(full, modules) is None:
                    found.append(f"{module}: from {source or package} import {alias.name}")
            if isinstance(node, ast.Attribute) and _is_private(node.attr):
                owner = _dotted(node.value)
                if owner is not None and _attribute_module(owner, local, modules) is not None:
                    found.append(f"{module}: {owner}.{node.attr}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
                if len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
                    owner, attr = _dotted(node.args[0]), node.args[1].value
                    if isinstance(attr, str) and _is_private(attr) and owner is not None:
                        if _attribute_module(owner, local, modules) is not None:
                            found.append(f"{module}: getattr({owner}, {attr!r})")
    return found


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _attribute_module(dotted: str, local: dict, modules: dict) -> str | None:
    """The package module that ``dotted`` (``m`` or ``m.sub``) names, given the local bindings."""
    head, *rest = dotted.split(".")
    if head not in local:
        return None
    base = local[head].removesuffix(".__init__").removesuffix("__init__")
    return _module_of(".".join(p for p in (base, *rest) if p), modules)


def import_graph(modules: dict, package: str = NAME) -> dict[str, set[str]]:
    """What each module imports while it is being imported, as package modules: the imported
    module and the packages above it that do not hold the importer (Python runs their
    ``__init__`` first)."""
    graph = {}
    for module, path in modules.items():
        deps = set()
        nodes = _executed_at_import(ast.parse(path.read_text()))
        for node in nodes:
            sources = [
                full if _module_of(full, modules) else source
                for _, source, full in _from_imports(module, node, package)
            ]
            if isinstance(node, ast.Import):
                sources += [a.name[len(package) + 1 :] for a in node.names if a.name.startswith(package + ".")]
            for source in sources:
                parts = source.split(".") if source else []
                for k in range(len(parts) + 1):
                    target = _module_of(".".join(parts[:k]), modules)
                    inside = module.startswith(".".join(parts[:k]) + ".") if k else True
                    if target is not None and target != module and (k == len(parts) or not inside):
                        deps.add(target)
        graph[module] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        if state.get(module) == 2:
            return None
        if state.get(module) == 1:
            return [*path, module]
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if cycle := visit(dep, [*path, module]):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if cycle := visit(module, []):
            return cycle
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_long(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines; split it (ARCHITECTURE.md: at most {MAX_LINES})"


def test_private_names_stay_in_their_module():
    crossings = private_crossings(MODULES)
    assert not crossings, "module-level private names used in another module (give them a plain name): " + "; ".join(
        crossings
    )


def test_no_import_cycle():
    graph = import_graph(MODULES)
    # the edges are resolved (level 1 and 2, `from . import x`, the package's __init__)
    assert {"_fitloop", "_checks", "_bijectors.base", "_tree"} <= graph["_fit"] | graph["_bijectors.named"]
    assert "_bijectors.__init__" in graph["_density"] and "_sample" in graph["__init__"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _fake_package(tmp_path, files: dict[str, str]) -> dict:
    for name, text in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return _modules(tmp_path / "pkg")


def test_the_checks_catch_what_they_are_for(tmp_path):
    # the helpers above, on a small package with one of each problem (they must not pass vacuously)
    modules = _fake_package(
        tmp_path,
        {
            "__init__.py": "from ._a import A\n",
            "_a.py": "from ._b import B\nA = 1\n_hidden = 2\n",
            "_b.py": "try:\n    from ._sub.leaf import L\nexcept ImportError:\n    pass\nB = 1\n",
            "_sub/__init__.py": "from .._a import A\n",  # level 2 in a subpackage's __init__: a cycle
            "_sub/leaf.py": (
                "import pkg._a as m\nfrom .. import _a\nfrom pkg._a import _hidden\n"
                "L = m._hidden + _a._hidden + getattr(_a, '_hidden')\n"
            ),
        },
    )
    assert find_cycle(import_graph(modules, "pkg")) is not None
    found = private_crossings(modules, "pkg")
    assert len(found) == 4 and all("_hidden" in f for f in found), found


def test_caches_are_cleared_by_clear_caches():
    # a module-level dict filled at run time would be missed by rb.clear_caches: caches are Cache()s
    bare = []
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.AnnAssign | ast.Assign):
                continue
            value = node.value
            empty_literal = isinstance(value, ast.Dict) and not value.keys
            empty_call = isinstance(value, ast.Call) and not value.args and not value.keywords
            if empty_literal or (
                empty_call and _dotted(value.func) in ("dict", "OrderedDict", "collections.OrderedDict")
            ):
                targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
                bare += [f"{module}.{t.id}" for t in targets if isinstance(t, ast.Name)]
    assert not bare, (
        f"empty module-level dicts {bare}: make a cache a _caches.Cache(size); write a table filled at "
        "import time as a literal"
    )


SCRIPTS = sorted(p for d in ("tutorials", "benchmarks") for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_tutorials_and_benchmarks_use_the_public_api(path):
    tree = ast.parse(path.read_text())
    aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    aliases = {a for a in aliases if a == NAME} | {
        a.asname for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name == NAME and a.asname
    }
    private = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == NAME:
            names = [node.module, *(a.name for a in node.names)]
            private += [n for n in names if any(_is_private(part) for part in n.split("."))]
        elif isinstance(node, ast.Import):
            private += [a.name for a in node.names if a.name.startswith(NAME + ".") and "._" in a.name]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = _dotted(node.value)
            if owner is not None and owner.split(".")[0] in aliases:
                private.append(f"{owner}.{node.attr}")
    assert not private, f"{path.name} uses private names of {NAME}: {private}"
