"""Path and name validation for manifests: the one place these rules live.

Every manifest path is relative, normalised and '/'-separated, without '..',
empty or '.' segments, NUL, backslashes or a leading '/'.  Symlink targets must
resolve inside the tree.  Pure functions; nothing touches the disk.
"""
from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence

from .errors import InvalidPath

MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_name(kind: str, value: object) -> str:
    """Products, versions and channels: short, URL- and filename-safe."""
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise InvalidPath(f"bad {kind} name {value!r}: want [A-Za-z0-9][A-Za-z0-9._+-]{{0,127}}")
    return value


def check_path(path: object) -> str:
    """Return ``path`` when it is a valid manifest path, else raise InvalidPath."""
    if not isinstance(path, str):
        raise InvalidPath(f"path must be a string, not {type(path).__name__}")
    if path == "":
        raise InvalidPath("empty path")
    if "\x00" in path:
        raise InvalidPath(f"NUL byte in path {path!r}")
    if "\\" in path:
        raise InvalidPath(f"backslash in path {path!r}")
    if path.startswith("/"):
        raise InvalidPath(f"absolute path {path!r}")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidPath(f"path longer than {MAX_PATH_BYTES} bytes")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidPath(f"path {path!r} has an empty, '.' or '..' segment")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidPath(f"path segment longer than {MAX_SEGMENT_BYTES} bytes in {path!r}")
        if any(ord(c) < 0x20 for c in segment):
            raise InvalidPath(f"control character in path {path!r}")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPath(f"path {path!r} is not valid UTF-8") from exc
    return path


def resolve_symlink(link_path: str, target: object) -> str:
    """Where a symlink at ``link_path`` points, as a tree path; refuse escapes."""
    if not isinstance(target, str) or target == "":
        raise InvalidPath(f"symlink {link_path!r} has an empty or non-string target")
    if "\x00" in target or "\\" in target:
        raise InvalidPath(f"symlink {link_path!r} target has NUL or backslash")
    if target.startswith("/"):
        raise InvalidPath(f"symlink {link_path!r} points to an absolute path {target!r}")
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath(f"symlink {link_path!r} target {target!r} is not valid UTF-8") from None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(link_path), target))
    if joined == ".." or joined.startswith("../") or joined.startswith("/"):
        raise InvalidPath(f"symlink {link_path!r} -> {target!r} points outside the tree")
    return joined


MAX_SYMLINK_HOPS = 40


def _chain_problem(link_path: str, links: dict[str, str]) -> str | None:
    """Follow ``link_path`` through the tree's other symlinks as the filesystem would.

    ``resolve_symlink`` is lexical: ``t -> d/s/..`` looks like ``d`` but when ``d/s``
    is itself a symlink to ``..`` it really is the tree's parent.  Entries never lie
    below a symlink (checked separately), so only components named by a target can be
    symlinks; each is expanded in place, as the kernel does.
    """
    stack = link_path.split("/")[:-1]
    pending = links[link_path].split("/")
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return f"symlink {link_path!r} -> {links[link_path]!r} leaves the tree through other symlinks"
            stack.pop()
            continue
        stack.append(part)
        current = "/".join(stack)
        if current in links:
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None  # a loop: the kernel answers ELOOP, nothing outside is reached
            target = links[current]
            if target.startswith("/"):
                return f"symlink {link_path!r} resolves through {current!r} to an absolute path"
            stack.pop()
            pending = target.split("/") + pending
    return None


def check_tree(entries: Sequence[tuple[object, str, object]], casefold: bool = False) -> list[str]:
    """Problems with a whole tree of (path, type, symlink target) entries.

    Finds duplicates, (optionally case-folded) collisions, files used as
    directories, entries reached through a symlink and symlinks escaping the tree.
    Returns every problem found (empty list when the tree is valid).
    """
    problems: list[str] = []
    seen: dict[str, str] = {}
    folded: dict[str, str] = {}
    kinds: dict[str, str] = {}
    links: dict[str, str] = {}
    for raw_path, kind, target in entries:
        try:
            path = check_path(raw_path)
        except InvalidPath as exc:
            problems.append(exc.message)
            continue
        if path in seen:
            problems.append(f"duplicate path {path!r}")
            continue
        seen[path] = kind
        kinds[path] = kind
        if casefold:
            key = path.casefold()
            if key in folded:
                problems.append(f"path {path!r} collides with {folded[key]!r} when case is ignored")
            folded.setdefault(key, path)
        if kind == "symlink":
            try:
                resolve_symlink(path, target)
                if isinstance(target, str):  # resolve_symlink refused anything else
                    links[path] = target
            except InvalidPath as exc:
                problems.append(exc.message)
    if casefold:  # on a case-insensitive filesystem 'A' and 'a/b' clash too
        kinds = {**{p.casefold(): k for p, k in kinds.items()}, **kinds}
    for path in seen:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            parent_kind = kinds.get(parent.casefold() if casefold else parent)
            if parent_kind == "file":
                problems.append(f"{parent!r} is a file but {path!r} is below it")
                break
            if parent_kind == "symlink":
                problems.append(f"{path!r} lies below the symlink {parent!r}")
                break
    for path in links:
        problem = _chain_problem(path, links)
        if problem:
            problems.append(problem)
    return problems
