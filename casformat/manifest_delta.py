"""The manifest delta: the document that takes a client from one release to another (pure).

Producer and rebuilder side by side: the server assembles it (``manifest_delta``,
``offered``, ``with_bundles``) from two manifests and the recipes built so far, offering
a recipe only when it is smaller than the next cheaper way to get the same bytes; the
client and the mirror rebuild the target manifest from it (``rebuild_target``) and check
that it hashes to the signed digest.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from deltagen.digests import is_digest


def _files(entries: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {e["path"]: e for e in entries}


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
    # A chunked file's chunk pack (every chunk its base lacks, casformat/chunks.py) from a base the client has.
    packs = [r for r in recipes if r["kind"] == "chunks" and r["base"] in base_digests and r["size"] < raw_size]
    for r in sorted(packs, key=lambda r: (r["size"], r["base"]))[:1]:
        out.append({"kind": "chunks", "base": r["base"], "algorithm": r["algorithm"], "object": r["object"],
                    "size": r["size"]})
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
                   recipes: Mapping[str, Sequence[Mapping[str, Any]]], complete: bool,
                   base_digest: str | None, chunk_bytes: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The manifest delta document from a base release (None: from nothing) to a target release.

    ``chunk_bytes``: for chunked target files (``casformat/chunks.py``), the bytes a client
    holding the base fetches: its index plus the chunks the base's files lack.  They count in
    ``bytes.recipes`` instead of the whole file, or its index plus its chunk pack from the
    base when one was built and is smaller."""
    chunk_bytes = chunk_bytes or {}
    target = target_envelope["signed"]
    base = _files(base_manifest["files"])
    tfiles = _files(target["files"])
    removed = sorted(p for p in base if p not in tfiles)
    upserted = [e for p, e in sorted(tfiles.items()) if base.get(p) != e]
    have = {e["blake3"] for e in base.values() if e["type"] == "file"}
    index_sizes = {e["blake3"]: e["chunks"]["size"] for e in tfiles.values() if "chunks" in e}
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
            if digest in chunk_bytes:   # a chunked file: its index plus new chunks, or plus its pack
                packs = [o["size"] for o in offers if o["kind"] == "chunks"]
                download += min([chunk_bytes[digest]] + [index_sizes.get(digest, 0) + p for p in packs])
            else:
                download += offers[0]["size"]
            changed_raw += size
    full = sum({e["blake3"]: e["size"] for e in tfiles.values() if e["type"] == "file"}.values())
    return {
        "product": product,
        "from": {"version": base_version, "manifest": base_digest},
        "to": {"version": target["version"], "manifest": target_digest, "created": target["created"],
               "signatures": target_envelope["signatures"],
               # the detached CMS signature (casformat/cms.py) rides along when the target has one
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


def rebuild_target(base_manifest: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    """The target's ``signed`` part from a base manifest and a delta (for checking)."""
    files = {e["path"]: e for e in base_manifest["files"]}
    for path in delta["removed"]:
        files.pop(path, None)
    for entry in delta["upserted"]:
        files[entry["path"]] = entry
    return {"schema": 1, "product": delta["product"], "version": delta["to"]["version"],
            "created": delta["to"]["created"], "files": [files[p] for p in sorted(files)]}


# --------------------------------------------------------------------------- the client's side
# The recipes of a delta are not signed (only the rebuilt manifest is): every recipe is checked
# against the signed manifest before use, and a bad one is dropped, never fatal.

MAX_RECIPES_PER_TARGET = 16
MAX_BUNDLE_MEMBERS = 100_000
MAX_BUNDLE_BASES = 10_000


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _bundle(recipe: Mapping[str, Any], signed_sizes: Mapping[str, int]) -> dict[str, Any] | str:
    members, bases = recipe.get("members"), recipe.get("bases")
    if not isinstance(members, list) or not 0 < len(members) <= MAX_BUNDLE_MEMBERS:
        return "bundle members must be a non-empty list"
    if not isinstance(bases, list) or len(bases) > MAX_BUNDLE_BASES or not all(is_digest(b) for b in bases):
        return "bundle bases must be a list of digests"
    out_members: list[dict[str, Any]] = []
    seen: set[str] = set()
    offset = total = 0
    for m in members:
        if not isinstance(m, dict):
            return "bundle member is not an object"
        digest, at, size = m.get("blake3"), _int(m.get("offset")), _int(m.get("size"))
        if digest in seen:
            return "bundle lists a member twice"
        if not isinstance(digest, str) or digest not in signed_sizes or size != signed_sizes[digest]:
            return "bundle member is not a file of the signed manifest with its signed size"
        if at != offset:
            return "bundle members do not tile the bundle"
        seen.add(digest)
        offset += size
        total += size
        out_members.append({"blake3": digest, "offset": at, "size": size})
    bundle_size = _int(recipe.get("size"))
    if bundle_size is None or not 0 < bundle_size < total:
        return "bundle size must be below its members' signed sizes (it is offered only when it saves)"
    return {"kind": "bundle", "algorithm": "zstd", "object": recipe.get("object"), "size": bundle_size,
            "bases": list(bases), "members": out_members}


def check_recipe(recipe: object, target: str, target_size: int, signed_sizes: Mapping[str, int],
                 algorithms: Iterable[str]) -> dict[str, Any] | str:
    """One recipe of an unsigned delta checked against the signed manifest: the recipe (only
    its known fields) or the reason it is dropped.

    Sizes are bounded by signed data, as the server's offer rule (``offered``) justifies: a
    raw object has exactly the signed size; a compressed form or a patch is offered only
    when smaller than the file; a bundle only when smaller than its members."""
    if not isinstance(recipe, dict):
        return "recipe is not an object"
    kind, obj, size = recipe.get("kind"), recipe.get("object"), _int(recipe.get("size"))
    if not is_digest(obj):
        return "recipe object is not a digest"
    if kind == "raw":
        if obj != target or size != target_size:
            return "raw recipe must name the file itself with its signed size"
        return {"kind": "raw", "object": obj, "size": size}
    if kind == "bundle":
        if recipe.get("algorithm") != "zstd":
            return "bundle algorithm must be zstd"
        return _bundle(recipe, signed_sizes)
    if size is None or not 0 < size < target_size:
        return f"{kind} recipe size must be a positive integer below the file's signed size"
    if kind == "compressed":
        if recipe.get("algorithm") != "zstd":
            return "compressed recipe algorithm must be zstd"
        return {"kind": "compressed", "algorithm": "zstd", "object": obj, "size": size}
    if kind == "chunks":   # a chunk pack for a chunked file (casformat/chunks.py); each chunk is verified
        if recipe.get("algorithm") != "zstd" or not is_digest(recipe.get("base")):
            return "chunks recipe needs algorithm zstd and a base digest"
        return {"kind": "chunks", "algorithm": "zstd", "base": recipe["base"], "object": obj, "size": size}
    if kind == "patch":
        algorithm, base = recipe.get("algorithm"), recipe.get("base")
        if algorithm not in set(algorithms):
            return f"unknown patch algorithm {str(algorithm)[:20]!r}"
        if not is_digest(base):
            return "patch base is not a digest"
        return {"kind": "patch", "algorithm": algorithm, "base": base, "object": obj, "size": size}
    return f"unknown recipe kind {str(kind)[:20]!r}"


def usable_recipes(recipes: object, files: Iterable[Mapping[str, Any]], algorithms: Iterable[str]
                   ) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """The recipes of an unsigned delta that may be used for the files of a verified manifest,
    and the problems found (for the log).  Targets not in the manifest are ignored; at most
    ``MAX_RECIPES_PER_TARGET`` recipes per target are looked at; a malformed document or
    entry drops only what is malformed, and the client falls back to the raw object."""
    sizes = {e["blake3"]: e["size"] for e in files if e.get("type") == "file"}
    known = tuple(algorithms)
    problems: list[str] = []
    out: dict[str, list[dict[str, Any]]] = {}
    if not isinstance(recipes, dict):
        return out, ["recipes is not an object"] if recipes is not None else []
    for target, size in sizes.items():
        offers = recipes.get(target)
        if offers is None:
            continue
        if not isinstance(offers, list):
            problems.append(f"{target[:12]}: recipes is not a list")
            continue
        kept: list[dict[str, Any]] = []
        for recipe in offers[:MAX_RECIPES_PER_TARGET]:
            checked = check_recipe(recipe, target, size, sizes, known)
            if isinstance(checked, str):
                problems.append(f"{target[:12]}: {checked}")
            else:
                kept.append(checked)
        out[target] = kept
    return out, problems
