"""The seams this package draws: device side and server apart, the wire module pure, no cycles in server/."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import handoffd

ROOT = Path(handoffd.__file__).parent
SERVER = "handoffd.server"
# What the server may import besides itself: the pure modules both sides share.
SHARED: tuple[str, ...] = (
    "handoffd.errors",
    "handoffd.identity",
    "handoffd.envelope",
    "handoffd.text",
    "handoffd.logfmt",
    "handoffd.ownership",
    "handoffd.netguard",
    "handoffd.wire",
    "handoffd.proto",
    "handoffd.selfsigned",
)
IO_LIBRARIES = ("aiohttp", "asyncio", "socket", "zeroconf", "aiortc", "ssl", "sqlite3")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _imports(path: Path, *, runtime_only: bool = False) -> Iterator[str]:
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if _type_checking_block(node):
                skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from package import module`` imports that module (as grimp counts it).
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield sub if sub in MODULES else node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _is(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_device_side_never_imports_the_server_and_back() -> None:
    modules = MODULES
    wrong = []
    for name, path in modules.items():
        for target in _imports(path):
            if not target.startswith("handoffd") or target not in modules:
                continue
            if not _is(name, SERVER) and _is(target, SERVER):
                wrong.append(f"{name} -> {target}")
            shared = target == "handoffd" or any(_is(target, s) for s in SHARED)
            if _is(name, SERVER) and not _is(target, SERVER) and not shared:
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_wire_module_is_pure() -> None:
    modules = MODULES
    wrong = []
    for name, path in modules.items():
        if not _is(name, "handoffd.wire"):
            continue
        for target in _imports(path):
            top = target.split(".")[0]
            if top in IO_LIBRARIES or (
                target in modules and not any(_is(target, s) for s in SHARED)
            ):
                wrong.append(f"{name} -> {target}")
    assert wrong == []


def test_no_import_cycles_in_the_server_wire_and_serverlink() -> None:
    modules = MODULES
    scope = [
        n
        for n in modules
        if any(_is(n, p) for p in (SERVER, "handoffd.wire", "handoffd.serverlink"))
    ]
    graph = {
        n: {t for t in _imports(modules[n], runtime_only=True) if t in modules and t != n}
        for n in scope
    }

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    cycles = [n for n in scope if reaches(n, n, set())]
    assert cycles == []
