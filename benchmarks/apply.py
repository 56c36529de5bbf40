#!/usr/bin/env python3
"""Patch apply speed on 1-10 MB files of the corpus (a script, not a test).

For every file of 1-10 MB (new size) that changed between the two trees of a
``benchmarks/corpus.py`` pair: the patch the build policy keeps (``deltagen.best_recipes``,
no compressed form), then its apply, timed in this process as the client runs it
(``apply_patch(..., durable=False)``: output written, hashed and checked against the
target's BLAKE3; the staged tree is synced once afterwards) and with ``durable=True`` (an
fsync per file), median of ``--repeat`` runs; for HDiffPatch also with the patch's streams
decoded on one thread (``hdiff_format.DECODE_THREADS = 1``, as before 2026-12-02),
interleaved run by run with the default; beside it the stock tool for the same
algorithm where one exists (``zstd -d --patch-from``, ``bspatch``; ``hpatchz`` is not
packaged in Debian 12).  Prints a table per file and per algorithm (files, MB, MB/s) and writes
benchmarks/results/apply.json.

    python benchmarks/apply.py [--only NAME ...] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from corpus import CORPUS, release_tree  # noqa: E402

import deltagen  # noqa: E402
from deltagen import hdiff_format  # noqa: E402
from deltagen.digests import blake3_file  # noqa: E402

LOW, HIGH = 1_000_000, 10_000_000


def changed_files(old: Path, new: Path) -> list[Path]:
    out = []
    for dirpath, _, names in os.walk(new):
        for name in names:
            rel = (Path(dirpath) / name).relative_to(new)
            o, n = old / rel, new / rel
            if n.is_symlink() or not o.is_file() or o.is_symlink():
                continue
            if LOW <= n.stat().st_size <= HIGH and blake3_file(o) != blake3_file(n):
                out.append(rel)
    return sorted(out)


def timed(fn: Any, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deltacas-peers"))
    parser.add_argument("--only", action="append", choices=[p.name for p in CORPUS], metavar="NAME")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "apply.json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        tmp = Path(scratch)
        for pair in CORPUS:
            if args.only and pair.name not in args.only:
                continue
            old_tree, new_tree = release_tree(pair, pair.old, args.work), release_tree(pair, pair.new, args.work)
            for rel in changed_files(old_tree, new_tree):
                old, new = old_tree / rel, new_tree / rel
                recipes = deltagen.best_recipes(old, new, tmp / "objects", compressed=False)
                patch = recipes[0]
                if patch.kind != "patch" or patch.algorithm is None:
                    continue
                size, digest = new.stat().st_size, blake3_file(new)
                out = tmp / "out"

                def apply(durable: bool, algorithm: str = patch.algorithm, path: Path = patch.path) -> None:
                    deltagen.apply_patch(algorithm, old, path, out, size, digest, durable=durable)  # type: ignore[arg-type]

                row: dict[str, Any] = {"pair": pair.name, "path": str(rel), "size": size, "algorithm": patch.algorithm,
                       "patch_bytes": patch.size}
                if patch.algorithm == "hdiffpatch":
                    # beside it, as before 2026-12-02 06:00: the streams decoded one after the other
                    # (interleaved, run by run: the machine's load changes)
                    threads = hdiff_format.DECODE_THREADS
                    runs: dict[str, list[float]] = {"apply_s": [], "apply_one_thread_s": []}
                    for _ in range(args.repeat):
                        for key, n in (("apply_s", threads), ("apply_one_thread_s", 1)):
                            hdiff_format.DECODE_THREADS = n
                            try:
                                runs[key].append(timed(lambda: apply(False), 1))
                            finally:
                                hdiff_format.DECODE_THREADS = threads
                    row |= {key: statistics.median(v) for key, v in runs.items()}
                else:
                    row["apply_s"] = timed(lambda: apply(False), args.repeat)
                row["apply_durable_s"] = timed(lambda: apply(True), args.repeat)
                stock = {"zstd": ["zstd", "-q", "-f", "-d", "--long=31", "--patch-from", str(old), str(patch.path),
                                  "-o", str(out)],
                         "bsdiff4": ["bspatch", str(old), str(out), str(patch.path)]}.get(patch.algorithm)
                if stock:
                    row["stock_s"] = timed(lambda argv=stock: subprocess.run(argv, check=True), args.repeat)
                rows.append(row)
                print(f"{pair.name} {rel}: {patch.algorithm} {size / row['apply_s'] / 1e6:.0f} MB/s", file=sys.stderr)
                for p in (tmp / "objects").iterdir():
                    p.unlink()
    by_alg: dict[str, dict[str, float]] = {}
    for r in rows:
        a = by_alg.setdefault(r["algorithm"], {"files": 0, "bytes": 0, "s": 0.0, "durable_s": 0.0, "one_thread_s": 0.0})
        a["files"] += 1
        a["bytes"] += r["size"]
        a["s"] += r["apply_s"]
        a["durable_s"] += r["apply_durable_s"]
        a["one_thread_s"] += r.get("apply_one_thread_s", r["apply_s"])
    print("| file | size | patch | MB/s | streams on one thread: MB/s | with an fsync per file: MB/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        one = r.get("apply_one_thread_s")
        print(f"| {r['pair']} `{Path(r['path']).name}` | {r['size']:,} | {r['patch_bytes']:,} | "
              f"{r['size'] / r['apply_s'] / 1e6:.0f} | {'-' if one is None else round(r['size'] / one / 1e6)} | "
              f"{r['size'] / r['apply_durable_s'] / 1e6:.0f} |")
    print()
    print("| algorithm | files | MB | apply MB/s (client: no per-file fsync) | streams on one thread | "
          "with an fsync per file | slowest file MB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for alg, a in sorted(by_alg.items()):
        slowest = min(r["size"] / r["apply_s"] for r in rows if r["algorithm"] == alg) / 1e6
        print(f"| {alg} | {a['files']:.0f} | {a['bytes'] / 1e6:.1f} | {a['bytes'] / a['s'] / 1e6:.0f} "
              f"| {a['bytes'] / a['one_thread_s'] / 1e6:.0f} | {a['bytes'] / a['durable_s'] / 1e6:.0f} | {slowest:.0f} |")
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                "loadavg_at_end": os.getloadavg()},
                                    "by_algorithm": by_alg, "files": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
