"""Griffe extension: read the package's docstrings as its authors write them.

Two conventions of the docstrings that Google-style parsing in griffe does not take as they are:
an ``Example:`` section (griffe's examples section is ``Examples:``; otherwise the doctest
lines would render as nested block quotes) and ``a, b: description`` for parameters (or attributes) that
share one description (split into one entry each). Both are rewritten before parsing.

Sphinx roles:
The package's docstrings are Google style with Sphinx roles (``:func:`fit```,
``:class:`~reparam_bridge.Posterior```), which Markdown would print literally. Each role is
resolved the way Sphinx would, against the names the site renders: the enclosing class, the
nearest public module (``reparam_bridge.geometry`` for ``rb.geometry``'s docstrings,
``reparam_bridge`` for the private modules behind it), then ``reparam_bridge`` itself. A role
that names something the site renders becomes a link (``[`fit`][reparam_bridge.fit]``), which
autorefs checks; one that names a private helper or another library stays inline code.
Static analysis only: nothing is imported, so the docs build needs neither JAX nor NumPyro.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROOT = "reparam_bridge"
# :func:`name`, :class:`~pkg.Name`, :class:`text <target>`
ROLE = re.compile(r":(?:py:)?(func|class|meth|attr|mod|obj|data|exc|const):`(~?)([^`<]+?)(?:\s*<([^`>]+)>)?`")


def _walk(obj: Any):
    yield obj
    for member in list(obj.members.values()):
        if member.is_alias:  # re-exports: documented where they are defined
            continue
        yield from _walk(member)


EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
PARAMS_HEADER = re.compile(r"^(\s*)(Args|Arguments|Parameters|Keyword Args|Other Parameters|Attributes):\s*$")
SHARED = re.compile(r"^(\s+)([*\w]+(?:,\s*[*\w]+)+):(\s.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _code_blocks(text: str) -> str:
    """Fence what Markdown would not show as code: doctest lines outside an ``Examples:``
    section (griffe fences those itself) and RST literal blocks (``text::`` + indented block)."""
    lines = text.split("\n")
    out: list[str] = []
    examples_indent = None
    para_indent = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped and examples_indent is not None and _indent(line) <= examples_indent:
            examples_indent = None
        if stripped == "Examples:":
            examples_indent = _indent(line)
        if examples_indent is None and stripped.startswith(">>>"):
            block_indent = _indent(line)
            block = []
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) >= block_indent:
                block.append(lines[i][block_indent:])
                i += 1
            pad = " " * min(para_indent, block_indent)
            out += ["", f"{pad}```pycon", *(pad + b for b in block), f"{pad}```", ""]
            continue
        if examples_indent is None and stripped.endswith("::") and not stripped.startswith(">>>"):
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > _indent(line):
                block_indent = _indent(lines[j])
                block = []
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) >= block_indent):
                    block.append(lines[j][block_indent:])
                    j += 1
                while block and not block[-1].strip():
                    block.pop()
                head = line.rstrip()[:-2].rstrip()
                pad = " " * _indent(line)
                if head.strip():
                    out.append(head + ":")
                out += ["", f"{pad}```python", *(pad + b if b else "" for b in block), f"{pad}```", ""]
                i = j
                continue
        if stripped:
            para_indent = _indent(line)
        out.append(line)
        i += 1
    return "\n".join(out)


def _sections(text: str) -> str:
    """``Example:`` -> ``Examples:``; ``a, b: text`` in a parameters section -> one entry each;
    doctests and literal blocks outside an examples section fenced."""
    text = _code_blocks(EXAMPLE.sub(r"\1Examples:", text))
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    header_indent = None
    while i < len(lines):
        line = lines[i]
        header = PARAMS_HEADER.match(line)
        if header:
            header_indent = len(header.group(1))
            out.append(line)
            i += 1
            continue
        if header_indent is not None and line.strip() and len(line) - len(line.lstrip()) <= header_indent:
            header_indent = None  # the section ended
        shared = SHARED.match(line) if header_indent is not None else None
        if shared:
            indent = shared.group(1)
            cont = []  # continuation lines of the shared description
            while i + 1 < len(lines) and lines[i + 1].strip() and (
                    len(lines[i + 1]) - len(lines[i + 1].lstrip()) > len(indent)):
                i += 1
                cont.append(lines[i])
            for name in (n.strip() for n in shared.group(2).split(",")):
                out.append(f"{indent}{name}:{shared.group(3) or ''}")
                out.extend(cont)
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


def _public(name: str) -> bool:
    return not name.startswith("_")


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles in every docstring of the ``reparam_bridge`` package."""

    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # griffe 1.x
        self.on_package(pkg=pkg, **kwargs)

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # griffe 2.x
        if pkg.name != ROOT or getattr(self, "pkg", None) is pkg:
            return
        self.pkg = pkg
        for obj in _walk(pkg):
            if obj.docstring is None:
                continue
            text = _sections(obj.docstring.value)
            if ":`" in text:
                text = ROLE.sub(lambda m, o=obj: self._rewrite(m, o), text)
            obj.docstring.value = text

    # -- resolution ------------------------------------------------------------------------
    def _rewrite(self, match: re.Match, obj: Any) -> str:
        role, tilde, text, explicit = match.groups()
        target = (explicit or text).strip()
        path = self._resolve(role, target, obj)
        if explicit:
            shown = text.strip()
        elif tilde:
            shown = target.rsplit(".", 1)[-1]
        else:
            shown = target
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    def _resolve(self, role: str, target: str, obj: Any) -> str | None:
        if target.startswith("rb."):
            target = f"{ROOT}.{target[3:]}"
        if target.startswith(ROOT + ".") or target == ROOT:
            return target if self._rendered(target) else None
        candidates = []
        cls = obj if obj.is_class else (obj.parent if obj.parent is not None and obj.parent.is_class else None)
        if cls is not None:
            public_cls = self._public_path(cls)
            if public_cls:
                candidates.append(f"{public_cls}.{target}")
        if role not in ("meth", "attr"):
            module = obj if obj.is_module else obj.module
            public_module = self._public_module(module)
            candidates += [f"{public_module}.{target}", f"{ROOT}.{target}"]
        for candidate in candidates:
            if self._rendered(candidate):
                return candidate
        return None

    def _public_module(self, module: Any) -> str:
        parts = module.path.split(".")
        while len(parts) > 1 and not _public(parts[-1]):
            parts.pop()
        return ".".join(parts)

    def _public_path(self, obj: Any) -> str | None:
        """Where the site renders ``obj``: its own path if public, else the re-export in
        ``reparam_bridge`` or in its public parent module."""
        if all(_public(p) for p in obj.path.split(".")[1:]):
            return obj.path
        if obj.parent is not None and obj.parent.is_class:
            parent = self._public_path(obj.parent)
            return f"{parent}.{obj.name}" if parent else None
        module = self._public_module(obj.module)
        for where in dict.fromkeys((module, ROOT)):
            if self._rendered(f"{where}.{obj.name}"):
                return f"{where}.{obj.name}"
        return None

    def _rendered(self, path: str) -> bool:
        """True if ``path`` is a public, exported name (or a public member of one)."""
        parts = path.split(".")
        if parts[0] != ROOT:
            return False
        node: Any = self.pkg
        for part in parts[1:]:
            if not _public(part):
                return False
            if node.is_module:
                exports = [str(e) for e in (node.exports or [])]
                if exports and part not in exports:
                    return False
            member = node.members.get(part)
            if member is None:
                return False
            if node.is_class and member.docstring is None:
                return False  # mkdocstrings hides undocumented members: no anchor to link to
            if member.is_alias:
                try:
                    member = member.final_target
                except Exception:  # an alias to another package: not ours to render
                    return False
            node = member
        return True
