"""The plan of an update: for every file of the target, where its content comes from.

Pure: the planner reads no disk and no network; local content is looked up through
the function it is given (``client.local.LocalContent.find`` in the updater).  For
each regular file of the target manifest:

- content already present locally (a verified copy): placed from there, nothing fetched;
- else the recipes of the manifest delta whose inputs are present (a patch from a
  local base, compressed, raw), cheapest first; raw is always the last choice;
- bundles (one object rebuilding several files from local bases) are used where
  ``deltagen.choose_cover`` finds them cheaper than the members' own first choices,
  each bundle downloaded once; the members' per-file recipes stay as the fallback.

A recipe is the manifest delta's dict (``casformat.manifest_delta``); a patch the
planner keeps carries ``base_path``, a bundle ``base_paths``: the local inputs found.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltagen import choose_cover

Entry = dict[str, Any]        # a file entry of a signed manifest
Recipe = dict[str, Any]       # a recipe as the manifest delta offers it, plus local input paths
FindLocal = Callable[[str], Path | None]   # digest -> a verified local copy, or None


@dataclass(frozen=True)
class FilePlan:
    """Where one file's content comes from."""

    entry: Entry
    local: Path | None                  # a verified local file with this content
    recipes: tuple[Recipe, ...] = ()    # when not local: the options, cheapest first (raw last resort)
    bundle: Recipe | None = None        # a chosen bundle rebuilding this file (recipes: fallback)

    @property
    def first_choice(self) -> Recipe | None:
        """The object fetched for this file up front: its bundle, else its cheapest recipe."""
        if self.local is not None:
            return None
        return self.bundle if self.bundle is not None else self.recipes[0]


@dataclass(frozen=True)
class Plan:
    """The plan of every regular file of a target manifest, in manifest order."""

    files: tuple[FilePlan, ...]

    def downloads(self) -> dict[str, int]:
        """Objects of the first choices, {digest: size}: each chosen bundle once."""
        wanted: dict[str, int] = {}
        for plan in self.files:
            if "chunks" in plan.entry:
                continue  # rebuilt from chunks (client/chunks.py), never downloaded whole
            first = plan.first_choice
            if first is not None:
                wanted[first["object"]] = int(first["size"])
        return wanted

    @property
    def download_bytes(self) -> int:
        """Bytes of the first choices to download; a chunked file not present counts at its
        full size (at most that much is fetched; usually far less)."""
        chunked = sum(int(p.entry["size"]) for p in self.files if p.local is None and "chunks" in p.entry)
        return sum(self.downloads().values()) + chunked

    @property
    def new_bytes(self) -> int:
        """Bytes of the files not present locally (what staging writes)."""
        return sum(int(p.entry["size"]) for p in self.files if p.local is None)

    @property
    def full_bytes(self) -> int:
        """Bytes of every file of the target."""
        return sum(int(p.entry["size"]) for p in self.files)

    @property
    def files_local(self) -> int:
        """Files whose content is present locally."""
        return sum(1 for p in self.files if p.local is not None)

    def space_needed(self, free_space_factor: float) -> int:
        """Free space an update needs: ``factor`` x the download plus the new files."""
        return int(free_space_factor * self.download_bytes) + self.new_bytes


def plan_update(files: Iterable[Mapping[str, Any]], recipes: Mapping[str, Sequence[Mapping[str, Any]]],
                find_local: FindLocal) -> Plan:
    """Plan every regular file of ``files`` (a manifest's entries) given the delta's ``recipes``."""
    plans: list[FilePlan] = []
    for entry in files:
        if entry["type"] != "file":
            continue
        local = find_local(entry["blake3"])
        options = () if local is not None else file_options(entry, recipes.get(entry["blake3"], []), find_local)
        plans.append(FilePlan(dict(entry), local, options))
    return Plan(tuple(_with_bundles(plans, recipes, find_local)))


def file_options(entry: Mapping[str, Any], offered: Iterable[Mapping[str, Any]],
                 find_local: FindLocal) -> tuple[Recipe, ...]:
    """The per-file recipes usable here, cheapest first, raw always among them."""
    options: list[Recipe] = []
    for recipe in offered:
        if recipe.get("kind") == "patch":
            base = find_local(recipe.get("base", ""))
            if base is None:
                continue  # we do not have (an intact copy of) that base
            options.append({**recipe, "base_path": str(base)})
        elif recipe.get("kind") == "chunks" and "chunks" in entry:
            # A chunk pack needs chunks of its base, found (and each verified) by client/chunks.py.
            options.append(dict(recipe))
        elif recipe.get("kind") in ("compressed", "raw"):
            options.append(dict(recipe))
    if not any(o["kind"] == "raw" for o in options):
        options.append({"kind": "raw", "object": entry["blake3"], "size": entry["size"]})
    options.sort(key=lambda o: o["size"])
    return tuple(options)


def _usable_bundles(need: Mapping[str, int], recipes: Mapping[str, Sequence[Mapping[str, Any]]],
                    find_local: FindLocal) -> list[Recipe]:
    """Bundles offered for the needed files whose bases are all present, each once."""
    bundles: dict[str, Recipe] = {}
    for digest in need:
        for recipe in recipes.get(digest, []):
            if recipe.get("kind") != "bundle" or recipe.get("algorithm") != "zstd":
                continue
            if recipe.get("object") in bundles:
                continue
            try:
                members = recipe["members"]
                bases = [find_local(b) for b in recipe["bases"]]
                if not members or any(b is None for b in bases):
                    continue  # we lack (an intact copy of) a base
                bundles[recipe["object"]] = {**recipe, "base_paths": [str(b) for b in bases]}
            except (KeyError, TypeError):
                continue
    return list(bundles.values())


def _with_bundles(plans: list[FilePlan], recipes: Mapping[str, Sequence[Mapping[str, Any]]],
                  find_local: FindLocal) -> list[FilePlan]:
    """Give a bundle to the files it rebuilds when it is smaller than the cheapest per-file
    recipes of the members still needed (``deltagen.choose_cover``, each bundle counted once)."""
    need = {p.entry["blake3"]: int(p.recipes[0]["size"]) for p in plans if p.local is None}
    usable = _usable_bundles(need, recipes, find_local)
    if not usable:
        return plans
    cover = choose_cover(need, [({m["blake3"] for m in b["members"]}, int(b["size"])) for b in usable])
    chosen: dict[int, Recipe] = {}   # index in plans -> its bundle; the first chosen bundle wins
    for i in cover.bundles:
        covered = {m["blake3"] for m in usable[i]["members"]}
        for n, plan in enumerate(plans):
            if plan.local is None and n not in chosen and plan.entry["blake3"] in covered:
                chosen[n] = usable[i]
    return [FilePlan(p.entry, p.local, p.recipes, chosen.get(n)) for n, p in enumerate(plans)]
