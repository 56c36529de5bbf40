"""Which file pairs to build deltas for, and the manifest delta: pure functions.

``plan_pairs`` picks, for every file of a target release whose content the
base release lacks, the base files worth patching from: the file at the same
path, files with the same name elsewhere, and removed files of similar size
and kind (renames).  ``manifest_delta`` assembles the contract's document from
two manifests and the recipes built so far, offering a recipe only when it is
smaller than the next cheaper way to get the same bytes.
"""
from __future__ import annotations

import posixpath
from typing import Any, Iterable, Mapping

MAX_BASES_PER_FILE = 3
RENAME_SIZE_RATIO = 0.5  # a removed file within +-50% of the size may be a renamed one


def _files(entries: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {e["path"]: e for e in entries}


def _stem(path: str) -> tuple[str, str]:
    name = posixpath.basename(path)
    root, ext = posixpath.splitext(name)
    return name, ext


def plan_pairs(base_files: Iterable[Mapping[str, Any]], target_files: Iterable[Mapping[str, Any]],
               tiny_bytes: int = 0) -> list[tuple[str, str]]:
    """(base blake3, target blake3) pairs to build; base '' = compress the target only."""
    base = _files(base_files)
    target = _files(target_files)
    base_regular = {p: e for p, e in base.items() if e["type"] == "file"}
    have = {e["blake3"] for e in base_regular.values()}
    removed = [e for p, e in base_regular.items() if p not in target]
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for e in base_regular.values():
        by_name.setdefault(posixpath.basename(e["path"]), []).append(e)
    pairs: dict[tuple[str, str], None] = {}
    for path, entry in sorted(target.items()):
        if entry["type"] != "file" or entry["blake3"] in have:
            continue
        digest, size = entry["blake3"], entry["size"]
        pairs[("", digest)] = None
        if size < tiny_bytes:
            continue
        candidates: list[Mapping[str, Any]] = []
        same = base_regular.get(path)
        if same is not None:
            candidates.append(same)
        name, ext = _stem(path)
        candidates.extend(sorted(by_name.get(name, []), key=lambda e: abs(e["size"] - size)))
        renamed = [e for e in removed if _stem(e["path"])[1] == ext
                   and abs(e["size"] - size) <= RENAME_SIZE_RATIO * max(size, 1)]
        candidates.extend(sorted(renamed, key=lambda e: abs(e["size"] - size)))
        chosen: list[str] = []
        for c in candidates:
            if c["blake3"] not in chosen and c["size"] > 0:
                chosen.append(c["blake3"])
            if len(chosen) == MAX_BASES_PER_FILE:
                break
        for b in chosen:
            pairs[(b, digest)] = None
    return list(pairs)


def offered(recipes: Iterable[Mapping[str, Any]], target: str, raw_size: int,
            base_digests: set[str]) -> list[dict[str, Any]]:
    """The recipes worth offering for one target, cheapest first, raw last.

    A compressed form is offered when smaller than raw; a patch (from a base the
    client has) when smaller than the compressed form or raw.
    """
    compressed = [r for r in recipes if r["kind"] == "compressed" and r["size"] < raw_size]
    bar = min([raw_size] + [r["size"] for r in compressed])
    patches = [r for r in recipes if r["kind"] == "patch" and r["base"] in base_digests and r["size"] < bar]
    out: list[dict[str, Any]] = []
    for r in sorted(patches, key=lambda r: (r["size"], r["algorithm"], r["base"])):
        out.append({"kind": "patch", "base": r["base"], "algorithm": r["algorithm"],
                    "object": r["object"], "size": r["size"]})
    for r in sorted(compressed, key=lambda r: r["size"])[:1]:
        out.append({"kind": "compressed", "algorithm": r["algorithm"], "object": r["object"],
                    "size": r["size"]})
    out.append({"kind": "raw", "object": target, "size": raw_size})
    return out


def manifest_delta(product: str, base_version: str | None, base_manifest: Mapping[str, Any],
                   target_envelope: Mapping[str, Any], target_digest: str,
                   recipes: Mapping[str, list[Mapping[str, Any]]], complete: bool,
                   base_digest: str | None) -> dict[str, Any]:
    """The manifest delta document from a base release (None: from nothing) to a target release."""
    target = target_envelope["signed"]
    base = _files(base_manifest["files"])
    tfiles = _files(target["files"])
    removed = sorted(p for p in base if p not in tfiles)
    upserted = [e for p, e in sorted(tfiles.items()) if base.get(p) != e]
    have = {e["blake3"] for e in base.values() if e["type"] == "file"}
    wanted: dict[str, int] = {}
    for e in upserted:
        if e["type"] == "file":
            wanted[e["blake3"]] = e["size"]
    recipe_doc: dict[str, list[dict[str, Any]]] = {}
    download = 0
    changed_raw = 0
    for digest, size in sorted(wanted.items()):
        offers = offered(recipes.get(digest, []), digest, size, have)
        recipe_doc[digest] = offers
        if digest not in have:
            download += offers[0]["size"]
            changed_raw += size
    full = sum({e["blake3"]: e["size"] for e in tfiles.values() if e["type"] == "file"}.values())
    return {
        "product": product,
        "from": {"version": base_version, "manifest": base_digest},
        "to": {"version": target["version"], "manifest": target_digest, "created": target["created"],
               "signatures": target_envelope["signatures"],
               # the detached CMS signature (client/cms.py) rides along when the target has one
               **({"cms": target_envelope["cms"]} if "cms" in target_envelope else {})},
        "complete": complete,
        "removed": removed,
        "upserted": upserted,
        "recipes": recipe_doc,
        "bytes": {"recipes": download, "full": full, "changed_raw": changed_raw},
    }


# --------------------------------------------------------------------------- bundles
# (deltagen/bundles.py, docs/deltagen.md "Bundles"): one object rebuilding several targets.

def with_bundles(delta: Mapping[str, Any], bundles: Iterable[Mapping[str, Any]],
                 base_digests: set[str]) -> dict[str, Any]:
    """``delta`` with each usable bundle listed under every target it covers.

    ``bundles``: rows ``{"object", "size", "bases": [...], "members": [{"blake3",
    "offset", "size"}]}`` built for this release pair.  A bundle is usable when the
    client has all its bases (``base_digests``: the base release's files) and the
    delta lists every member.  ``choose_cover`` (deltagen.bundles) picks the cheapest
    cover of the targets the client lacks by per-file first choices and bundles; a
    chosen bundle goes first in each of its members' lists and is counted once in
    ``bytes.recipes``; bundles outside the cover are not offered.
    """
    from deltagen.bundles import choose_cover

    recipes = {t: list(r) for t, r in delta["recipes"].items()}
    usable: list[dict[str, Any]] = []
    for row in bundles:
        members = [{"blake3": m["blake3"], "offset": m["offset"], "size": m["size"]} for m in row["members"]]
        if not members or not set(row["bases"]) <= base_digests:
            continue
        if any(m["blake3"] not in recipes for m in members):
            continue
        usable.append({"kind": "bundle", "algorithm": "zstd", "object": row["object"], "size": row["size"],
                       "bases": list(row["bases"]), "members": members})
    if not usable:
        return dict(delta)
    need = {t: r[0]["size"] for t, r in recipes.items() if t not in base_digests and r}
    cover = choose_cover(need, [({m["blake3"] for m in b["members"]}, b["size"]) for b in usable])
    # Only the bundles of the cheapest cover are offered (first, for each member): a
    # bundle outside it costs more than the per-file recipes of its members.
    for i in cover.bundles:
        for member in {m["blake3"] for m in usable[i]["members"]}:
            recipes[member].insert(0, usable[i])
    out = dict(delta)
    out["recipes"] = recipes
    out["bytes"] = {**delta["bytes"], "recipes": cover.total}
    return out
