#!/usr/bin/env python3
"""What a lower full-file compression level costs and saves on the corpus's large changed files.

For every changed file of ``benchmarks/results/policy-files.jsonl`` (the corpus's changed
files, ``benchmarks/policy_files.py``) of at least ``--min-bytes`` (1 MiB), compress the new
file at levels 19, 18, 17, 16 and 15 (zstd, content size and checksum, as ``compress_file``)
one after the other in this process; one JSON line per file to ``--out``
(benchmarks/results/compress-levels.jsonl), then a table: bytes and seconds per level against
level 19, for files below and above ``compress_large_bytes`` (4 MiB), what decided
``DeltaLimits.compress_large_level`` (docs/deltagen.md).

    python benchmarks/compress_levels.py [--min-bytes N] [--summary]   # --summary: table from --out only

Trees come from benchmarks/peers.py's work dir (/tmp/deltacas-peers).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import zstandard

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from corpus import CORPUS, release_tree  # noqa: E402

from deltagen import DEFAULT_LIMITS  # noqa: E402

LEVELS = (19, 18, 17, 16, 15)


def summary(rows: list[dict[str, object]]) -> None:
    large = DEFAULT_LIMITS.compress_large_bytes
    print("| files | n | bytes at 19 | " + " | ".join(f"level {lv}: bytes vs 19, time vs 19" for lv in LEVELS[1:]) + " |")
    print("|---|---:|---:|" + "---:|" * (len(LEVELS) - 1))
    groups = {f"< {large >> 20} MiB": [r for r in rows if int(r["size"]) < large],  # type: ignore[call-overload]
              f">= {large >> 20} MiB": [r for r in rows if int(r["size"]) >= large]}  # type: ignore[call-overload]
    for name, group in groups.items():
        if not group:
            continue
        b19 = sum(r["19"][0] for r in group)  # type: ignore[index]
        t19 = sum(r["19"][1] for r in group)  # type: ignore[index]
        cells = []
        for lv in LEVELS[1:]:
            b = sum(r[str(lv)][0] for r in group)  # type: ignore[index]
            t = sum(r[str(lv)][1] for r in group)  # type: ignore[index]
            cells.append(f"{b - b19:+,} B ({b / b19 - 1:+.2%}), {t / t19:.2f}x")
        print(f"| {name} | {len(group)} | {b19:,} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deltacas-peers"))
    parser.add_argument("--min-bytes", type=int, default=1 << 20)
    parser.add_argument("--files", type=Path, default=ROOT / "benchmarks" / "results" / "policy-files.jsonl")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compress-levels.jsonl")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    if not args.summary:
        pairs = {p.name: p for p in CORPUS}
        with open(args.out, "w") as out:
            for line in args.files.read_text().splitlines():
                r = json.loads(line)
                if r["size"] < args.min_bytes:
                    continue
                pair = pairs[r["pair"]]
                data = (release_tree(pair, pair.new, args.work) / r["path"]).read_bytes()
                row: dict[str, object] = {"pair": r["pair"], "path": r["path"], "size": len(data), "class": r["class"]}
                for lv in LEVELS:
                    cctx = zstandard.ZstdCompressor(level=lv, write_content_size=True, write_checksum=True)
                    t0 = time.perf_counter()
                    row[str(lv)] = [len(cctx.compress(data)), time.perf_counter() - t0]
                print(json.dumps(row), file=out, flush=True)
    summary([json.loads(line) for line in args.out.read_text().splitlines()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
