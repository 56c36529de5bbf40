#!/usr/bin/env python3
"""Every changed file of the corpus, every candidate: the data behind deltagen/policy.py.

For each pair of ``benchmarks/corpus.py`` (by default all but pyarrow and scipy, kept as
holdouts) and each file present in both trees at the same path with new content (>= 512 B):
the content class (``deltagen.policy.classify``), then zstd -19 and -3 of the new file and
an hdiffpatch, zstd -19 patch-from and bsdiff4 (<= 40 MiB) patch, each with its size and
build seconds, built one after the other in this process.  Appends one JSON line per file
to ``--out`` (benchmarks/results/policy-files.jsonl) and prints, per class, the bytes of the
best patch per file, the bytes under the policy and the build seconds of both.

    python benchmarks/policy_files.py [--only NAME ...] [--summary]   # --summary: no builds, table only

Trees come from benchmarks/peers.py's work dir (run it, or corpus.release_tree, first).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from corpus import CORPUS, release_tree  # noqa: E402

from deltagen import DEFAULT_LIMITS, compress_file, make_patch  # noqa: E402
from deltagen.digests import blake3_file  # noqa: E402
from deltagen.policy import classify, patch_order, worth_another  # noqa: E402

ALGORITHMS = ("hdiffpatch", "zstd", "bsdiff4")


def measure(old: Path, new: Path, rel: Path) -> dict[str, object]:
    o, n = old / rel, new / rel
    row: dict[str, object] = {"path": str(rel), "size": n.stat().st_size, "old": o.stat().st_size,
                              "class": classify(n)}
    with tempfile.TemporaryDirectory() as td:
        for name, level in (("c19", 19), ("c3", 3)):
            t0 = time.perf_counter()
            compress_file(n, Path(td) / name, level)
            row[name] = [(Path(td) / name).stat().st_size, time.perf_counter() - t0]
        for alg in ALGORITHMS:
            if alg == "bsdiff4" and max(o.stat().st_size, n.stat().st_size) > 40 << 20:
                continue
            t0 = time.perf_counter()
            make_patch(alg, o, n, Path(td) / alg, DEFAULT_LIMITS)  # type: ignore[arg-type]
            row[alg] = [(Path(td) / alg).stat().st_size, time.perf_counter() - t0]
    return row


def policy_choice(row: dict[str, object]) -> list[str]:
    """The algorithms the build policy builds for this row, replayed on its recorded sizes."""
    cls = "executable" if row["class"] == "exe" else str(row["class"])  # "exe" in early rows
    size = int(row["size"])  # type: ignore[call-overload]
    built: list[str] = []
    kept: int | None = None
    for alg in patch_order(cls, size, DEFAULT_LIMITS):  # type: ignore[arg-type]
        if alg not in row or (built and not worth_another(cls, kept, size, DEFAULT_LIMITS)):  # type: ignore[arg-type]
            continue
        built.append(alg)
        made = int(row[alg][0])  # type: ignore[index]
        kept = made if kept is None else min(kept, made)
    return built


def summary(rows: list[dict[str, object]]) -> None:
    agg: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        a = agg[str(r["class"])]
        cands = {alg: r[alg][0] for alg in ALGORITHMS if alg in r}  # type: ignore[index]
        built = policy_choice(r)
        a["files"] += 1
        a["best"] += min([*cands.values(), r["c19"][0]])  # type: ignore[index]
        a["policy"] += min([cands[x] for x in built] + [r["c19"][0]])  # type: ignore[index]
        a["all_s"] += sum(r[x][1] for x in cands)  # type: ignore[index]
        a["policy_s"] += sum(r[x][1] for x in built)  # type: ignore[index]
        a["c19_s"] += r["c19"][1]  # type: ignore[index]
    print("| class | files | best patch per file B | policy B | patch build s, all | patch build s, policy | zstd -19 full s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for cls, a in sorted(agg.items()):
        print(f"| {cls} | {a['files']:.0f} | {a['best']:,.0f} | {a['policy']:,.0f} ({a['policy'] / a['best'] - 1:+.1%}) "
              f"| {a['all_s']:.1f} | {a['policy_s']:.1f} | {a['c19_s']:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deltacas-peers"))
    parser.add_argument("--only", action="append", choices=[p.name for p in CORPUS], metavar="NAME")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "policy-files.jsonl")
    parser.add_argument("--summary", action="store_true", help="build nothing: the table of --out")
    args = parser.parse_args()
    if not args.summary:
        for pair in CORPUS:
            if (args.only and pair.name not in args.only) or (not args.only and pair.name in ("pyarrow", "scipy")):
                continue
            old, new = release_tree(pair, pair.old, args.work), release_tree(pair, pair.new, args.work)
            for dirpath, _, files in os.walk(new):
                for name in files:
                    rel = (Path(dirpath) / name).relative_to(new)
                    o, n = old / rel, new / rel
                    if n.is_symlink() or not o.is_file() or o.is_symlink() or n.stat().st_size < 512:
                        continue
                    if o.stat().st_size == n.stat().st_size and blake3_file(o) == blake3_file(n):
                        continue
                    row = {"pair": pair.name, **measure(old, new, rel)}
                    with args.out.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
    summary([json.loads(line) for line in args.out.read_text().splitlines()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
