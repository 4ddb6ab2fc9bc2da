"""The package's layout rules (ARCHITECTURE.md), checked on the source so that they cannot rot
unnoticed: small modules, no import cycle, private names kept in their module, caches that
``rb.clear_caches`` reaches, and tutorials and benchmarks on the public API only."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reparam_bridge"
MODULES = {p.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", "."): p for p in PACKAGE.rglob("*.py")}
MAX_LINES = 360


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The package-relative module an ``ImportFrom`` of ``module`` reads from ("" for the package)."""
    parts = module.split(".")
    if not MODULES[module].name == "__init__.py":
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
    base = ".".join(p for p in parts if p != "__init__")
    return ".".join(p for p in (base, node.module or "") if p)


def _module_of(name: str) -> str | None:
    """``name`` as a module of the package (``a.b`` or ``a.b.__init__``), else None."""
    for candidate in (name, f"{name}.__init__"):
        if candidate in MODULES:
            return candidate
    return None


def _imports(module: str, top_level_only: bool) -> list[tuple[ast.ImportFrom, str]]:
    tree = ast.parse(MODULES[module].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    return [(n, _resolve(module, n)) for n in nodes if isinstance(n, ast.ImportFrom) and n.level]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_long(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines; split it (ARCHITECTURE.md: at most {MAX_LINES})"


def test_private_names_stay_in_their_module():
    crossings = []
    for module in MODULES:
        modules_here = {}  # local name -> package module, for `from . import _checks` style imports
        for node, source in _imports(module, top_level_only=False):
            for alias in node.names:
                target = _module_of(f"{source}.{alias.name}" if source else alias.name)
                if target is not None:
                    modules_here[alias.asname or alias.name] = target
                elif _is_private(alias.name):
                    crossings.append(f"{module}: from {source} import {alias.name}")
        for node in ast.walk(ast.parse(MODULES[module].read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _is_private(node.attr):
                if node.value.id in modules_here:
                    crossings.append(f"{module}: {node.value.id}.{node.attr}")
    assert not crossings, "private names used outside their module (give them a plain name): " + "; ".join(crossings)


def test_no_import_cycle_at_module_level():
    graph = {}
    for module in MODULES:
        deps = set()
        for node, source in _imports(module, top_level_only=True):
            for alias in node.names:
                target = _module_of(f"{source}.{alias.name}" if source else alias.name) or _module_of(source)
                if target is not None and target != module:
                    deps.add(target)
        graph[module] = deps
    assert {"_fitloop", "_checks", "_bijectors.base"} <= graph["_fit"] | graph["_bijectors.named"]  # edges resolved
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module, path):
        if state.get(module) == 2:
            return
        assert state.get(module) != 1, "import cycle: " + " -> ".join([*path, module])
        state[module] = 1
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])


def test_caches_are_cleared_by_clear_caches():
    # a module-level dict filled at run time would be missed by rb.clear_caches: caches are Cache()s
    bare = []
    for module, path in MODULES.items():
        for node in ast.parse(path.read_text()).body:
            if (
                isinstance(node, ast.AnnAssign | ast.Assign)
                and isinstance(node.value, ast.Dict)
                and not node.value.keys
            ):
                targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
                bare += [f"{module}.{t.id}" for t in targets if isinstance(t, ast.Name)]
    assert not bare, f"empty module-level dicts (make them _caches.Cache(size)): {bare}"


@pytest.mark.parametrize(
    "path", sorted([*(ROOT / "tutorials").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]), ids=lambda p: p.name
)
def test_tutorials_and_benchmarks_use_the_public_api(path):
    private = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("reparam_bridge"):
            names = [node.module, *(a.name for a in node.names)]
            private += [n for n in names if any(_is_private(part) for part in n.split("."))]
        elif isinstance(node, ast.Import):
            private += [a.name for a in node.names if a.name.startswith("reparam_bridge.") and "._" in a.name]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "rb":
            if _is_private(node.attr):
                private.append(f"rb.{node.attr}")
    assert not private, f"{path.name} uses private names of reparam_bridge: {private}"
