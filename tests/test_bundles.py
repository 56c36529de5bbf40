"""Bundles: one zstd frame rebuilding several targets (deltagen/bundles.py), the manifest
delta's bundle recipes (cas/deltaplan.with_bundles) and the client's use of them."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cas.trees import scan_tree
from casformat.manifest_delta import with_bundles
from client.install import tree_problems
from client.installroot import InstallRoot
from client.local import LocalContent
from client.plan import Plan, plan_update
from client.stage import StagedTree, stage_tree
from deltagen import (
    DeltaLimits,
    SizeExceeded,
    apply_bundle,
    build_bundle,
    bundle_candidates,
    choose_cover,
    compress_file,
)
from deltagen.bundles import file_kind
from deltagen.digests import blake3_file
from fixtures import write_release

# ---------------------------------------------------------------------------- helpers

def entries(tree: Path) -> list[dict[str, Any]]:
    """Manifest entries of a tree, exactly as `cas publish` makes them."""
    return scan_tree(tree).entries


def changed(old: Path, new: Path) -> list[tuple[Path | None, Path]]:
    """(old file at the same path or None, new file) for every new content."""
    have = {e["blake3"] for e in entries(old) if e["type"] == "file"}
    out = []
    for e in entries(new):
        if e["type"] == "file" and e["blake3"] not in have:
            o = old / e["path"]
            out.append((o if o.is_file() and not o.is_symlink() else None, new / e["path"]))
    return out


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bundle-trees")
    write_release(base / "old", 0)
    write_release(base / "new", 1)
    return base / "old", base / "new"


# ---------------------------------------------------------------------------- build / apply

def test_build_and_apply_round_trip(trees: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = trees
    pairs = changed(old, new)
    assert len(pairs) >= 3
    bases = [o for o, _ in pairs if o is not None]
    targets = [n for _, n in pairs]
    info = build_bundle(bases, targets, tmp_path / "bundle.zst")
    assert info.path.is_file() and info.size == info.path.stat().st_size
    assert info.object == blake3_file(info.path)
    assert [m.blake3 for m in info.members] == list(dict.fromkeys(blake3_file(t) for t in targets))
    assert info.members[0].offset == 0
    assert all(a.offset + a.size == b.offset for a, b in zip(info.members, info.members[1:]))
    recipe = info.to_dict()
    assert recipe["kind"] == "bundle" and recipe["algorithm"] == "zstd" and recipe["bases"] == list(info.bases)
    # smaller than the targets compressed one by one
    singles = 0
    for t in targets:
        compress_file(t, tmp_path / "single.zst")
        singles += (tmp_path / "single.zst").stat().st_size
    assert info.size < singles

    out = tmp_path / "out"
    errors: dict[str, str] = {}
    base_paths = {blake3_file(b): b for b in bases}
    built = apply_bundle([base_paths[d] for d in info.bases], info.path, recipe["members"], out, errors=errors)
    assert errors == {}
    assert set(built) == {m.blake3 for m in info.members}
    for digest, path in built.items():
        assert path == out / digest and blake3_file(path) == digest
    assert sorted(p.name for p in out.iterdir()) == sorted(built)  # no temp files left


def test_stock_zstd_cli_decodes_a_bundle(trees: tuple[Path, Path], tmp_path: Path) -> None:
    assert shutil.which("zstd"), "zstd CLI not installed (.ci/run installs it)"
    old, new = trees
    pairs = [(o, n) for o, n in changed(old, new) if o is not None]
    info = build_bundle([o for o, _ in pairs], [n for _, n in pairs], tmp_path / "b.zst")
    prefix = tmp_path / "prefix"
    prefix.write_bytes(b"".join(o.read_bytes() for o, _ in pairs))
    subprocess.run(["zstd", "-q", "-d", "--long=31", f"--patch-from={prefix}", str(info.path), "-o",
                    str(tmp_path / "stream")], check=True)
    assert (tmp_path / "stream").read_bytes() == b"".join(n.read_bytes() for _, n in pairs)


def test_bundle_without_bases_and_with_duplicates(trees: tuple[Path, Path], tmp_path: Path) -> None:
    _, new = trees
    targets = [n for _, n in changed(trees[0], new)]
    info = build_bundle([], targets + targets[:1], tmp_path / "b.zst")
    assert info.bases == () and len(info.members) == len(set(blake3_file(t) for t in targets))
    built = apply_bundle([], info.path, info.to_dict()["members"], tmp_path / "out")
    assert len(built) == len(info.members)


def test_corrupted_member_is_left_out_others_kept(trees: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = trees
    pairs = [(o, n) for o, n in changed(old, new) if o is not None]
    bad = tmp_path / "bad"
    data = bytearray(pairs[1][1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(data)
    targets = [pairs[0][1], bad] + [n for _, n in pairs[2:]]
    info = build_bundle([o for o, _ in pairs], targets, tmp_path / "b.zst")
    members = info.to_dict()["members"]
    wrong = members[1]["blake3"]
    members[1]["blake3"] = blake3_file(pairs[1][1])  # what the signed manifest says
    errors: dict[str, str] = {}
    base_paths = {blake3_file(o): o for o, _ in pairs}
    built = apply_bundle([base_paths[d] for d in info.bases], info.path, members, tmp_path / "out",
                         errors=errors)
    assert wrong != members[1]["blake3"]
    assert set(errors) == {members[1]["blake3"]} and errors[members[1]["blake3"]].startswith("digest_mismatch")
    assert set(built) == {m["blake3"] for i, m in enumerate(members) if i != 1}
    assert not (tmp_path / "out" / members[1]["blake3"]).exists()


def test_truncated_bundle_fails_every_member_and_leaves_nothing(trees: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = trees
    pairs = [(o, n) for o, n in changed(old, new) if o is not None]
    info = build_bundle([o for o, _ in pairs], [n for _, n in pairs], tmp_path / "b.zst")
    cut = tmp_path / "cut.zst"
    cut.write_bytes(info.path.read_bytes()[:-10])
    errors: dict[str, str] = {}
    base_paths = {blake3_file(o): o for o, _ in pairs}
    built = apply_bundle([base_paths[d] for d in info.bases], cut, info.to_dict()["members"],
                         tmp_path / "out", errors=errors)
    assert built == {} and len(errors) == len(info.members)
    assert list((tmp_path / "out").iterdir()) == []


def test_wrong_base_order_is_caught(trees: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = trees
    pairs = [(o, n) for o, n in changed(old, new) if o is not None]
    info = build_bundle([o for o, _ in pairs], [n for _, n in pairs], tmp_path / "b.zst")
    base_paths = {blake3_file(o): o for o, _ in pairs}
    errors: dict[str, str] = {}
    built = apply_bundle([base_paths[d] for d in reversed(info.bases)], info.path, info.to_dict()["members"],
                         tmp_path / "out", errors=errors)
    assert len(built) < len(info.members) and errors  # whatever decodes, nothing wrong is kept
    for digest, path in built.items():
        assert blake3_file(path) == digest


# ---------------------------------------------------------------------------- caps

def test_build_refuses_oversize_input_and_writes_nothing(trees: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = trees
    pairs = [(o, n) for o, n in changed(old, new) if o is not None]
    total = sum(o.stat().st_size + n.stat().st_size for o, n in pairs)
    with pytest.raises(SizeExceeded):
        build_bundle([o for o, _ in pairs], [n for _, n in pairs], tmp_path / "b.zst",
                     DeltaLimits(bundle_max_bytes=total - 1))
    assert list(tmp_path.iterdir()) == []


def test_apply_refuses_oversize_members_before_decoding(trees: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = trees
    pairs = [(o, n) for o, n in changed(old, new) if o is not None]
    info = build_bundle([o for o, _ in pairs], [n for _, n in pairs], tmp_path / "b.zst")
    base_paths = {blake3_file(o): o for o, _ in pairs}
    bases = [base_paths[d] for d in info.bases]
    huge = [{"blake3": "ab" * 32, "offset": 0, "size": 1 << 40}]
    with pytest.raises(SizeExceeded):
        apply_bundle(bases, info.path, huge, tmp_path / "out")
    with pytest.raises(SizeExceeded):
        apply_bundle(bases, info.path, info.to_dict()["members"], tmp_path / "out",
                     DeltaLimits(bundle_max_bytes=sum(m.size for m in info.members)))
    # members claiming less than the frame holds: refused from the frame header (a bomb)
    errors: dict[str, str] = {}
    short = info.to_dict()["members"][:-1]
    assert apply_bundle(bases, info.path, short, tmp_path / "out", errors=errors) == {}
    assert errors and all(e.startswith("size_exceeded") for e in errors.values())
    gap = [dict(m) for m in info.to_dict()["members"]]
    gap[1]["offset"] += 1
    with pytest.raises(Exception, match="tile"):
        apply_bundle(bases, info.path, gap, tmp_path / "out")


# ---------------------------------------------------------------------------- planner

def test_cover_bundle_must_win() -> None:
    per_file = {"a": 1000, "b": 1000, "c": 1000}
    cover = choose_cover(per_file, [({"a", "b", "c"}, 1500)])
    assert cover.bundles == (0,) and cover.per_file == () and cover.total == 1500


def test_cover_bundle_must_not_win() -> None:
    per_file = {"a": 100, "b": 100, "c": 100}
    cover = choose_cover(per_file, [({"a", "b", "c"}, 300), ({"a", "b"}, 250)])
    assert cover.bundles == () and cover.total == 300 and set(cover.per_file) == {"a", "b", "c"}


def test_cover_partial_and_overlapping_bundles() -> None:
    per_file = {"so1": 5000, "so2": 5000, "py1": 300, "py2": 300, "py3": 300, "tiny": 10}
    candidates = [({"so1", "so2", "py1", "py2", "py3", "tiny"}, 9500),   # all: saves 1410
                  ({"so1", "so2"}, 8000),                                # natives: saves 2000
                  ({"py1", "py2", "py3"}, 500),                          # pythons: saves 400
                  ({"tiny", "zzz"}, 5)]                                  # with a file not needed
    cover = choose_cover(per_file, candidates)
    assert cover.bundles == (1, 2, 3) and cover.per_file == ()
    assert cover.total == 8000 + 500 + 5
    # greedy above the exhaustive limit finds the same here
    assert choose_cover(per_file, candidates, exhaustive_max=0).total == cover.total


def test_cover_counts_a_bundle_once_and_ignores_unneeded_members() -> None:
    per_file = {"a": 400, "b": 400}
    cover = choose_cover(per_file, [({"a", "b", "x", "y"}, 700)])
    assert cover.bundles == (0,) and cover.total == 700
    assert choose_cover({}, [({"a"}, 1)]).total == 0


def test_candidates_group_by_kind_and_respect_the_cap() -> None:
    files = [{"target": f"t{i}", "path": p, "size": 100, "base": f"b{i}", "base_size": 100}
             for i, p in enumerate(["lib/a.so", "lib/b.cpython-311-x86_64-linux-gnu.so", "pkg/x.py",
                                    "pkg/y.py", "pkg/data.json"])]
    names = {c.name: c for c in bundle_candidates(files)}
    assert set(names) == {"all", "native", "python"}
    assert names["native"].targets == ("t0", "t1") and names["native"].bases == ("b0", "b1")
    assert file_kind("lib/libfoo.so.1") == "native" and file_kind("x.pyi") == "python"
    pieces = bundle_candidates(files, DeltaLimits(bundle_max_bytes=450))
    assert all(len(c.targets) <= 2 for c in pieces)
    assert {t for c in pieces if c.name.startswith("all") for t in c.targets} == {f"t{i}" for i in range(5)}


def test_manifest_delta_lists_the_bundle_and_counts_it_once() -> None:
    a, b, c, base1, base2 = ("a" * 64, "b" * 64, "c" * 64, "1" * 64, "2" * 64)
    delta = {"recipes": {a: [{"kind": "compressed", "algorithm": "zstd", "object": "e" * 64, "size": 900},
                             {"kind": "raw", "object": a, "size": 5000}],
                         b: [{"kind": "raw", "object": b, "size": 800}],
                         c: [{"kind": "raw", "object": c, "size": 50}]},
             "bytes": {"recipes": 1750, "full": 99999, "changed_raw": 5850}}
    row = {"object": "f" * 64, "size": 1000, "bases": [base1],
           "members": [{"blake3": a, "offset": 0, "size": 5000}, {"blake3": b, "offset": 5000, "size": 800}]}
    doc = with_bundles(delta, [row], {base1, base2})
    assert doc["bytes"]["recipes"] == 1000 + 50
    for t in (a, b):
        first = doc["recipes"][t][0]
        assert first == {"kind": "bundle", "algorithm": "zstd", "object": "f" * 64, "size": 1000,
                         "bases": [base1], "members": row["members"]}
        assert doc["recipes"][t][-1]["kind"] == "raw"
    assert doc["recipes"][c] == delta["recipes"][c]
    assert delta["recipes"][a][0]["kind"] == "compressed"  # input untouched
    # too big to win: not offered (it would cost more than its members' own recipes)
    doc = with_bundles(delta, [{**row, "size": 1800}], {base1})
    assert doc["bytes"]["recipes"] == 1750 and doc["recipes"] == delta["recipes"]
    # a base the client lacks: not offered at all
    assert with_bundles(delta, [row], {base2}) == delta


# ---------------------------------------------------------------------------- client

class FakeFetcher:
    """The part of client.fetcher.Fetcher the staging code uses (``client.stage.ObjectSource``),
    serving from a directory."""

    def __init__(self, objects: Path, downloads: Path) -> None:
        self.objects, self.downloads = objects, downloads
        self.fetched: list[str] = []
        self.bytes_downloaded = 0

    def final_path(self, digest: str) -> Path:
        return self.downloads / digest

    async def object(self, digest: str, size: int) -> Path:
        final = self.final_path(digest)
        if not final.exists():
            shutil.copyfile(self.objects / digest, final)
            self.fetched.append(digest)
            self.bytes_downloaded += size
        assert blake3_file(final) == digest
        return final


def client_setup(tmp_path: Path, old: Path, new: Path, corrupt: bool,
                 per_file_raw_only: bool = False) -> tuple[InstallRoot, FakeFetcher, dict[str, Any], dict[str, Any], list]:
    root = tmp_path / "root"
    layout = InstallRoot(root)
    layout.create()
    shutil.copytree(old, layout.version_dir("1.0.0"), symlinks=True)
    old_files = entries(old)
    layout.manifest_path("1.0.0").write_text(
        __import__("json").dumps({"signed": {"version": "1.0.0", "files": old_files}}))
    objects = tmp_path / "objects"
    objects.mkdir()
    new_files = entries(new)
    have = {e["blake3"] for e in old_files if e["type"] == "file"}
    recipes: dict[str, list[dict[str, Any]]] = {}
    for e in new_files:
        if e["type"] != "file" or e["blake3"] in have:
            continue
        shutil.copyfile(new / e["path"], objects / e["blake3"])
        offers: list[dict[str, Any]] = []
        if not per_file_raw_only:
            compress_file(new / e["path"], tmp_path / "c.zst")
            d = blake3_file(tmp_path / "c.zst")
            os.replace(tmp_path / "c.zst", objects / d)
            offers.append({"kind": "compressed", "algorithm": "zstd", "object": d,
                           "size": (objects / d).stat().st_size})
        offers.append({"kind": "raw", "object": e["blake3"], "size": e["size"]})
        recipes[e["blake3"]] = offers
    pairs = [(o, n) for o, n in changed(old, new) if o is not None]
    targets = [n for _, n in pairs]
    bad_member = None
    if corrupt:
        bad = tmp_path / "bad"
        data = bytearray(targets[1].read_bytes())
        data[0] ^= 0xFF
        bad.write_bytes(data)
        bad_member = blake3_file(targets[1])
        targets = [targets[0], bad] + targets[2:]
    info = build_bundle([o for o, _ in pairs], targets, tmp_path / "bundle.zst")
    bundle = info.to_dict()
    if corrupt:
        bundle["members"][1]["blake3"] = bad_member
    os.replace(info.path, objects / info.object)
    for m in bundle["members"]:
        recipes[m["blake3"]].insert(0, bundle)
    fetcher = FakeFetcher(objects, layout.downloads)
    envelope = {"signed": {"version": "2.0.0", "files": new_files}}
    return layout, fetcher, envelope, recipes, [bundle, bad_member]


def plan_for(layout: InstallRoot, envelope: dict[str, Any], recipes: dict[str, Any]) -> Plan:
    return plan_update(envelope["signed"]["files"], recipes, LocalContent.scan(layout).find)


def stage(layout: InstallRoot, fetcher: FakeFetcher, envelope: dict[str, Any], plan: Plan,
          log: Any = lambda message: None) -> Path:
    staged = asyncio.run(stage_tree(layout, fetcher, envelope["signed"], plan, log))
    assert isinstance(staged, StagedTree) and staged.version == "2.0.0"
    return staged.path


def test_client_uses_the_bundle_once_and_rebuilds_every_member(trees: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = trees
    layout, fetcher, envelope, recipes, (bundle, _) = client_setup(tmp_path, old, new, corrupt=False)
    plan = plan_for(layout, envelope, recipes)
    members = {m["blake3"] for m in bundle["members"]}
    assert all(p.bundle is not None for p in plan.files if p.entry["blake3"] in members)
    wanted = plan.downloads()
    assert wanted[bundle["object"]] == bundle["size"]
    staging = stage(layout, fetcher, envelope, plan)
    assert tree_problems(staging, envelope["signed"]["files"]) == []
    assert fetcher.fetched.count(bundle["object"]) == 1
    assert not members & set(fetcher.fetched)  # no per-file recipe was needed for a member
    assert not any(any(r["object"] == f and r["kind"] != "bundle" for m in members for r in recipes[m])
                   for f in fetcher.fetched)


def test_client_corrupted_member_falls_back_others_kept(trees: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = trees
    layout, fetcher, envelope, recipes, (bundle, bad) = client_setup(tmp_path, old, new, corrupt=True)
    logs: list[str] = []
    plan = plan_for(layout, envelope, recipes)
    staging = stage(layout, fetcher, envelope, plan, logs.append)
    assert tree_problems(staging, envelope["signed"]["files"]) == []
    assert fetcher.fetched.count(bundle["object"]) == 1
    fallback = min((r for r in recipes[bad] if r["kind"] != "bundle"), key=lambda r: r["size"])
    assert fallback["object"] in fetcher.fetched  # the bad member's own cheapest per-file recipe
    others = {m["blake3"] for m in bundle["members"]} - {bad}
    per_file_objects = {r["object"] for m in others for r in recipes[m] if r["kind"] != "bundle"}
    assert not per_file_objects & set(fetcher.fetched)  # the good members came from the bundle
    assert any("failed (digest_mismatch" in line for line in logs)


def test_client_skips_a_bundle_that_does_not_pay(trees: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = trees
    layout, fetcher, envelope, recipes, (bundle, _) = client_setup(tmp_path, old, new, corrupt=False)
    members = {m["blake3"] for m in bundle["members"]}
    for m in members:  # per-file recipes that together cost less than the bundle
        for r in recipes[m]:
            if r["kind"] == "compressed":
                r["size"] = 1
    plan = plan_for(layout, envelope, recipes)
    assert all(p.bundle is None for p in plan.files)
    assert bundle["object"] not in plan.downloads()


def test_client_skips_a_bundle_whose_base_it_lacks(trees: tuple[Path, Path], tmp_path: Path) -> None:
    old, new = trees
    layout, fetcher, envelope, recipes, (bundle, _) = client_setup(tmp_path, old, new, corrupt=False)
    bundle["bases"][0] = "0" * 64
    plan = plan_for(layout, envelope, recipes)
    assert all(p.bundle is None for p in plan.files)
    staging = stage(layout, fetcher, envelope, plan)
    assert tree_problems(staging, envelope["signed"]["files"]) == []
    assert bundle["object"] not in fetcher.fetched


def test_cover_planner_work_is_bounded_for_forged_bundle_lists() -> None:
    """Issue 13, D6: sixteen (or ten thousand) forged bundles in an unsigned delta cannot make
    the planner exponential: candidates are capped, the exhaustive search is small, the
    greedy search costs the candidates' sizes; the answer still never costs more than
    per-file recipes."""
    from deltagen.bundles import EXHAUSTIVE_MAX, MAX_BUNDLE_CANDIDATES
    per_file = {f"t{i}": 1000 for i in range(2000)}
    forged = [({f"t{j}" for j in range(i, 2000, 16)}, 100 * 1000 - i) for i in range(16)]
    cover = choose_cover(per_file, forged)
    assert not cover.exhaustive and cover.total <= 2000 * 1000
    assert cover.steps <= (MAX_BUNDLE_CANDIDATES + 2) * 2000
    many = [({f"t{i}", f"t{(i + 1) % 2000}"}, 1500 + i % 7) for i in range(10_000)]
    cover = choose_cover(per_file, many)
    assert cover.total < 2000 * 1000 and len(cover.bundles) <= MAX_BUNDLE_CANDIDATES
    assert cover.steps <= 2 * 10_000 + MAX_BUNDLE_CANDIDATES ** 2 * 2
    assert 2 ** EXHAUSTIVE_MAX <= 1024
