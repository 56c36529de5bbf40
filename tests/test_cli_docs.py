"""docs/cli.md's command reference is generated from the parsers (scripts/gen_cli_docs.py):
it fails here when a parser changed and the docs were not regenerated, or when the docs
name a command the parsers do not have.  Every command example in a fenced block of the docs
parses with the real parser, and docs/http-api.md documents exactly the app's routes."""
from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cas.cli.main import build_parser as cas_parser
from cas.config import load_config
from cas.http.app import create_app
from cas.repo import open_repo
from client.cli import build_parser as client_parser

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


def test_cli_reference_is_generated_from_the_parsers() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gen_cli_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"docs/cli.md is stale; run python scripts/gen_cli_docs.py\n{proc.stdout}"


def leaf_commands(parser: argparse.ArgumentParser) -> set[str]:
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                nested = leaf_commands(sub)
                found |= nested or {sub.prog}
    return found


def test_every_command_is_documented_and_every_documented_command_exists() -> None:
    text = (DOCS / "cli.md").read_text()
    documented = set(re.findall(r"^### `((?:cas|cas-client) [^`]+)`$", text, re.M))
    assert documented == leaf_commands(cas_parser()) | leaf_commands(client_parser())
    assert "not built yet" not in text.lower()


def doc_examples() -> list[tuple[str, str]]:
    """Concrete command lines in fenced blocks of docs/*.md and README.md (not syntax
    summaries with [optional] or a|b parts)."""
    out = []
    for path in [*sorted(DOCS.glob("*.md")), REPO / "README.md"]:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():   # join continued lines
                line = re.sub(r"\s+#\s.*$", "", line.strip()).removeprefix("$ ").strip()
                if (not re.match(r"^(cas|cas-client) ", line) or re.search(r"[\[\]|]|\.\.\.|\$\(|<|>", line)
                        or "   " in line):   # syntax summaries, placeholders, column layouts
                    continue
                out.append((f"{path.name}: {line}", line))
    return out


EXAMPLES = doc_examples()


def test_there_are_examples_to_check() -> None:
    assert len(EXAMPLES) >= 12


@pytest.mark.parametrize("where,line", EXAMPLES, ids=[w[:90] for w, _ in EXAMPLES])
def test_documented_command_lines_parse(where: str, line: str) -> None:
    words = shlex.split(line.removesuffix(" &"))
    parser = cas_parser() if words[0] == "cas" else client_parser()
    try:
        parser.parse_args(words[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}: does not parse ({exc.code})")


def documented_routes() -> set[tuple[str, str]]:
    """(METHOD, path) of every route row in docs/http-api.md, {a,b} and a|b expanded, the
    path's parameters named as in the app."""
    routes = set()
    for methods, path in re.findall(r"^\| `((?:(?:GET|HEAD|PUT|POST|PATCH|DELETE)(?:, |\|)?)+) (/[^` ]*)`",
                                    (DOCS / "http-api.md").read_text(), re.M):
        path = re.split(r"\[?\?", path)[0].replace("\\|", "|")
        paths = [path]
        while any("{" in p and ("," in p or "|" in p) for p in paths):
            expanded = []
            for p in paths:
                m = re.search(r"\{([^}]*[,|][^}]*)\}", p)
                if m is None:
                    expanded.append(p)
                    continue
                expanded += [p[:m.start()] + alt + p[m.end():] for alt in re.split(r"[,|]", m.group(1))]
            paths = expanded
        for p in paths:
            for method in re.split(r", |\|", methods):
                routes.add((method, normalise(p)))
    return routes


def normalise(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def test_documented_http_routes_are_the_apps(tmp_path: Path) -> None:
    app = create_app(open_repo(load_config(tmp_path / "store", env={})))
    served = set()
    for route in app.routes:
        methods = getattr(route, "methods", None) or set()
        for method in methods:   # Starlette answers HEAD wherever it answers GET
            served.add((method, normalise(route.path)))
    served = {r for r in served if not r[1].startswith("/static")}
    documented = documented_routes()

    def covered(route: tuple[str, str], by: set[tuple[str, str]]) -> bool:
        """``route`` matches one of ``by`` (a ``{}`` parameter matches any one segment)."""
        return any(m == route[0] and re.fullmatch(re.escape(p).replace(r"\{\}", "[^/]+"), route[1])
                   for m, p in by)
    missing = sorted(r for r in documented if not covered(r, served))
    assert not missing, f"documented but not served: {missing}"
    undocumented = sorted(r for r in served if r[0] != "HEAD" and not covered(r, documented) and not any(
        m == r[0] and re.fullmatch(re.escape(r[1]).replace(r"\{\}", "[^/]+"), p) for m, p in documented))
    assert not undocumented, f"served but not documented: {undocumented}"
