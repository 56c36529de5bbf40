"""Path and name validation for manifests: the one place these rules live.

Every manifest path is relative, normalised and '/'-separated, without '..',
empty or '.' segments, NUL, backslashes or a leading '/'.  Symlink targets must
resolve inside the tree.  Pure functions; nothing touches the disk.
"""
from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Callable, Sequence

from .errors import InvalidPath

# A client installs under ROOT/versions/<version>/; Linux refuses a whole path of 4096 bytes or
# more (ENAMETOOLONG), so a manifest path keeps at most half of that for itself and the client
# checks at init that its root leaves room (``client`` refuses roots longer than ``MAX_ROOT_BYTES``).
MAX_PATH_BYTES = 2048
MAX_SEGMENT_BYTES = 255
MAX_TARGET_BYTES = 1024          # a symlink target; real release trees stay far below
MAX_ROOT_BYTES = 4095 - MAX_PATH_BYTES - 160   # install root + "/versions/<128-byte version>/"
MAX_CHAIN_STEPS = 1_000_000      # symlink resolution work for one whole tree (see check_tree)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
# Refused anywhere in a path or target: every Unicode control (C0, DEL, C1 such as U+0085) and
# the line and paragraph separators, which split log lines and terminal output.
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


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
    if len(path) > MAX_PATH_BYTES or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidPath(f"path longer than {MAX_PATH_BYTES} bytes")
    if _FORBIDDEN.search(path):
        raise InvalidPath(f"control character in path {path[:200]!r}")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidPath(f"path {path!r} has an empty, '.' or '..' segment")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidPath(f"path segment longer than {MAX_SEGMENT_BYTES} bytes in {path!r}")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPath(f"path {path!r} is not valid UTF-8") from exc
    return path


def resolve_symlink(link_path: str, target: object) -> str:
    """Where a symlink at ``link_path`` points, as a tree path; refuse escapes."""
    if not isinstance(target, str) or target == "":
        raise InvalidPath(f"symlink {link_path!r} has an empty or non-string target")
    if len(target) > MAX_TARGET_BYTES or len(target.encode("utf-8", "surrogatepass")) > MAX_TARGET_BYTES:
        raise InvalidPath(f"symlink {link_path!r} target longer than {MAX_TARGET_BYTES} bytes")
    if "\x00" in target or "\\" in target:
        raise InvalidPath(f"symlink {link_path!r} target has NUL or backslash")
    if _FORBIDDEN.search(target):
        raise InvalidPath(f"symlink {link_path!r} target has a control character")
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


def caseless(path: str) -> str:
    """The key under which a case-insensitive, normalising file system sees ``path``.

    Unicode's canonical caseless match, NFD(casefold(NFD(x))): NFC and NFD spellings of one
    name, and names differing only in case, get the same key."""
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", path).casefold())


class _Node:
    """One name in the tree: an implicit directory (``kind`` None), a file or a symlink."""

    __slots__ = ("children", "kind", "path", "target")

    def __init__(self, kind: str | None, path: str, target: str = "") -> None:
        self.children: dict[str, _Node] = {}
        self.kind = kind
        self.path = path        # the entry's path, or for a directory the first path below it
        self.target = target


def _chain_problem(link: _Node, parents: list[_Node], key: Callable[[str], str],
                   budget: list[int]) -> str | None:
    """Follow the symlink ``link`` through the tree's other symlinks as the file system would.

    ``resolve_symlink`` is lexical: ``t -> d/s/..`` looks like ``d`` but when ``d/s``
    is itself a symlink to ``..`` it really is the tree's parent.  Entries never lie
    below a symlink (checked separately), so only components named by a target can be
    symlinks; each is expanded in place, as the kernel does.  Names are looked up one
    component at a time in the tree (``key``: identity, or ``caseless`` on a
    case-insensitive file system), so the work is linear in the components visited;
    ``budget`` (one cell, shared by the whole tree) bounds it.
    """
    stack = list(parents)       # root .. the link's directory
    outside = 0                 # components below a name the tree does not have
    pending = link.target.split("/")[::-1]
    hops = 0
    while pending:
        budget[0] -= 1
        if budget[0] < 0:
            return f"symlink {link.path!r}: the symlink chains of this tree are too long to check"
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if outside:
                outside -= 1
            elif len(stack) > 1:
                stack.pop()
            else:
                return f"symlink {link.path!r} -> {link.target!r} leaves the tree through other symlinks"
            continue
        node = None if outside else stack[-1].children.get(key(part))
        if node is None or node.kind == "file":
            outside += 1
        elif node.kind == "symlink":
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None  # a loop: the kernel answers ELOOP, nothing outside is reached
            if node.target.startswith("/"):
                return f"symlink {link.path!r} resolves through {node.path!r} to an absolute path"
            pending.extend(node.target.split("/")[::-1])
        else:
            stack.append(node)
    return None


def check_tree(entries: Sequence[tuple[object, str, object]], casefold: bool = False) -> list[str]:
    """Problems with a whole tree of (path, type, symlink target) entries.

    Finds duplicates, collisions on a case-insensitive, normalising file system (with
    ``casefold``: NFC/NFD spellings and case variants, see ``caseless``), files used as
    directories, entries reached through a symlink and symlinks escaping the tree (also
    through chains of other symlinks, resolved as that file system would).  Returns every
    problem found (empty list when the tree is valid).  Linear in the size of the tree (a
    tree of names, one component at a time), the symlink work bounded by ``MAX_CHAIN_STEPS``.
    """
    key: Callable[[str], str] = caseless if casefold else _same
    problems: list[str] = []
    seen: set[str] = set()
    folded: dict[str, str] = {}
    root = _Node(None, "")
    links: list[tuple[_Node, list[_Node]]] = []
    for raw_path, kind, target in entries:
        try:
            path = check_path(raw_path)
            if kind == "symlink":
                resolve_symlink(path, target)
        except InvalidPath as exc:
            problems.append(exc.message)
            continue
        if path in seen:
            problems.append(f"duplicate path {path!r}")
            continue
        seen.add(path)
        if casefold:
            k = key(path)
            if k in folded:
                problems.append(f"path {path!r} collides with {folded[k]!r} when case and "
                                "Unicode normalisation are ignored")
                continue
            folded[k] = path
        *dirs, name = path.split("/")
        node, parents, ok = root, [root], True
        for part in dirs:
            child = node.children.get(key(part))
            if child is None:
                child = node.children[key(part)] = _Node(None, path)
            elif child.kind == "file":
                problems.append(f"{child.path!r} is a file but {path!r} is below it")
                ok = False
                break
            elif child.kind == "symlink":
                problems.append(f"{path!r} lies below the symlink {child.path!r}")
                ok = False
                break
            node = child
            parents.append(node)
        if not ok:
            continue
        existing = node.children.get(key(name))
        if existing is not None:  # a directory already holds other entries
            if kind == "symlink":
                problems.append(f"{existing.path!r} lies below the symlink {path!r}")
            else:
                problems.append(f"{path!r} is a file but {existing.path!r} is below it")
            continue
        leaf = node.children[key(name)] = _Node(kind, path, target if isinstance(target, str) else "")
        if kind == "symlink":
            links.append((leaf, parents))
    budget = [MAX_CHAIN_STEPS]
    for leaf, parents in links:
        problem = _chain_problem(leaf, parents, key, budget)
        if problem:
            problems.append(problem)
    return problems


def _same(path: str) -> str:
    return path
