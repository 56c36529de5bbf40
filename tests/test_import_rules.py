"""The layout's rules, checked on the source: who may import whom, and no import circles.

``deltagen <- casformat <- {cas, client}``: the delta engine imports none of the others,
the wire format imports only the delta engine, and the thin client never imports the
server.  Every import counts (module level and inside functions) except those under
``if TYPE_CHECKING:``.  import-linter checks the same layers in ``.ci/run``
(``[tool.importlinter]`` in pyproject.toml); this test also finds circles between modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cas", "client", "casformat", "deltagen")
# package -> packages it may import (besides itself)
ALLOWED = {"deltagen": set(), "casformat": {"deltagen"}, "client": {"casformat", "deltagen"},
           "cas": {"casformat", "deltagen"}}
# (importer, imported) pairs allowed across the rule, each with its reason
EXCEPTIONS = {("cas.demo", "client.updater"): "the demo drives the real client in-process"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports (resolved to the longest known module name)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    found: set[str] = set()

    def resolve(dotted: str) -> None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            found.add(dotted)

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                resolve(full if full in modules else target)
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
    return out


def test_layers() -> None:
    broken = []
    for module, imported in _graph().items():
        own = module.split(".")[0]
        for target in imported:
            other = target.split(".")[0]
            if other != own and other not in ALLOWED[own] and (module, target) not in EXCEPTIONS:
                broken.append(f"{module} -> {target}")
    assert not broken, "imports against deltagen <- casformat <- {cas, client}: " + ", ".join(sorted(broken))


def test_no_import_circles() -> None:
    assert _cycles(_graph()) == []


def test_the_checks_can_fail() -> None:
    """The cycle finder and the graph builder find what they should (so the tests above can fail)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    graph = _graph()
    assert "casformat.canonical" in graph["casformat.signatures"]
    assert "deltagen.digests" in graph["casformat.canonical"]
    assert not any(t.startswith("cas") and not t.startswith("casformat") for t in graph["client.updater"])
