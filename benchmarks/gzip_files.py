#!/usr/bin/env python3
"""gzip files of the corpus: can zlib reproduce them, and what gzip-inner saves.

Two parts (docs/deltagen.md, "gzip-inner"; docs/performance.md, "gzip files"):

1. ``reproduce``: every regular ``*.gz`` file in the corpus trees (``WORK/trees``):
   whether Python's zlib gives its DEFLATE stream byte for byte at level 9/6 and memLevel
   9/8, with and without ``flush(Z_BLOCK)`` at the original's block ends.
2. ``pairs``: for each changed ``*.gz`` file of the chosen pairs (same path, new content),
   the cheapest recipe ``best_recipes`` keeps without gzip-inner and with it, and the
   gzip-inner build and apply seconds.

Prints both tables and writes ``--out`` (benchmarks/results/gzip-files.json).

    python benchmarks/gzip_files.py [--work /tmp/deltacas-peers] [--only libssl3 --only git ...]

Trees come from benchmarks/peers.py's work dir (run it first); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from corpus import CORPUS  # noqa: E402

from deltagen import DEFAULT_LIMITS, DeltaError, apply_patch, gzip_inner, make_patch  # noqa: E402
from deltagen.digests import blake3_file  # noqa: E402
from deltagen.recipes import best_recipes  # noqa: E402

PARAMETERS = ((9, 9), (9, 8), (6, 8), (6, 9))


def reproduce(path: Path, tmp: Path) -> dict[str, object]:
    row: dict[str, object] = {"path": str(path), "size": path.stat().st_size}
    try:
        with open(tmp / "inner", "wb") as out:
            layout = gzip_inner.inflate_with_blocks(path, out, 1 << 30)
    except DeltaError as exc:
        row["error"] = str(exc)
        return row
    row.update(inner_size=layout.inner_size, blocks=len(layout.ends) + 1)
    for level, mem in PARAMETERS:
        row[f"{level}/{mem} plain"] = gzip_inner._reproduces(tmp / "inner", path, dataclasses.replace(layout, ends=[]),
                                                             level, mem)
        row[f"{level}/{mem} ends"] = gzip_inner._reproduces(tmp / "inner", path, layout, level, mem)
    return row


def cheapest(old: Path, new: Path, work: Path, algorithms: tuple[str, ...]) -> tuple[int, str]:
    limits = dataclasses.replace(DEFAULT_LIMITS, patch_algorithms=algorithms)  # type: ignore[arg-type]
    recipe = best_recipes(old, new, work, limits)[0]
    return recipe.size, f"{recipe.kind}:{recipe.algorithm or '-'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/deltacas-peers"))
    parser.add_argument("--only", action="append", choices=[p.name for p in CORPUS], metavar="NAME")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gzip-files.json")
    args = parser.parse_args()
    trees = args.work / "trees"
    results: dict[str, object] = {"zlib": zlib.ZLIB_RUNTIME_VERSION}

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        rows = [reproduce(p, tmp) for p in sorted(trees.rglob("*.gz")) if p.is_file() and not p.is_symlink()]
    results["reproduce"] = rows
    counts: Counter[str] = Counter()
    for row in rows:
        keys = [k for k in row if k.endswith((" plain", " ends"))]
        counts["files"] += 1
        counts["any plain"] += any(row[k] for k in keys if k.endswith("plain"))
        counts["any ends"] += any(row[k] for k in keys if k.endswith("ends"))
        for k in keys:
            counts[k] += bool(row[k])
    print(f"{counts['files']} gzip files under {trees} (zlib {zlib.ZLIB_RUNTIME_VERSION})\n")
    print("| level/memLevel | reproduced without block ends | with block ends |\n|---|---:|---:|")
    for level, mem in PARAMETERS:
        print(f"| {level}/{mem} | {counts[f'{level}/{mem} plain']} | {counts[f'{level}/{mem} ends']} |")
    print(f"| any | {counts['any plain']} | {counts['any ends']} |\n")

    pairs = [p for p in CORPUS if p.name in (args.only or ("libssl3", "git", "postgresql"))]
    changed = []
    for pair in pairs:
        old_tree = trees / f"{pair.source}-{pair.name}-{pair.old}"
        new_tree = trees / f"{pair.source}-{pair.name}-{pair.new}"
        for new in sorted(new_tree.rglob("*.gz")):
            rel = new.relative_to(new_tree)
            old = old_tree / rel
            if new.is_symlink() or not new.is_file() or not old.is_file() or old.is_symlink():
                continue
            if blake3_file(old) == blake3_file(new):
                continue
            with tempfile.TemporaryDirectory() as td:
                work = Path(td)
                before = cheapest(old, new, work / "a", tuple(a for a in DEFAULT_LIMITS.patch_algorithms
                                                               if a != "gzip-inner"))
                after = cheapest(old, new, work / "b", DEFAULT_LIMITS.patch_algorithms)
                started = time.perf_counter()
                try:
                    make_patch("gzip-inner", old, new, work / "p")
                except DeltaError as exc:
                    build_s, apply_s, size, note = time.perf_counter() - started, None, None, str(exc)
                else:
                    build_s = time.perf_counter() - started
                    started = time.perf_counter()
                    apply_patch("gzip-inner", old, work / "p", work / "out", new.stat().st_size, blake3_file(new))
                    apply_s, size, note = time.perf_counter() - started, (work / "p").stat().st_size, ""
            changed.append({"pair": pair.name, "path": str(rel), "new_size": new.stat().st_size,
                            "before": before[0], "before_recipe": before[1], "after": after[0],
                            "after_recipe": after[1], "gzip_inner": size, "build_s": build_s, "apply_s": apply_s,
                            "note": note})
    results["changed"] = changed
    print("| pair | file | .gz bytes | cheapest before | after | gzip-inner build / apply s |")
    print("|---|---|---:|---:|---:|---:|")
    for row in changed:
        times = f"{row['build_s']:.2f} / {row['apply_s']:.2f}" if row["apply_s"] is not None else row["note"]
        print(f"| {row['pair']} | {row['path']} | {row['new_size']:,} | {row['before']:,} ({row['before_recipe']}) "
              f"| {row['after']:,} ({row['after_recipe']}) | {times} |")
    total_before = sum(int(r["before"]) for r in changed)  # type: ignore[call-overload]
    total_after = sum(int(r["after"]) for r in changed)  # type: ignore[call-overload]
    print(f"| **{len(changed)} files** | | {sum(int(r['new_size']) for r in changed):,} | {total_before:,} "  # type: ignore[call-overload]
          f"| {total_after:,} | |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
