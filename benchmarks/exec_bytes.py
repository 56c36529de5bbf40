#!/usr/bin/env python3
"""Bytes of rebuilt machine code: HDiffPatch's streams compressed other ways (issue 15).

For the changed executable files (``deltagen.policy.classify`` = ``executable``) of the
pairs of ``benchmarks/corpus.py`` where deltacas missed 0.8x OSTree, measures against the
patch deltagen builds today (HDIFF13, LZMA level 9, 16 MiB dictionary, lc3/lp0/pb2):

- ``raw``: HDiffPatch's diff with nothing compressed (the four streams: covers, rle ctrl,
  rle code, new data), re-compressed here with Python's ``lzma``:
  ``lzma``   each stream LZMA1 -9e, lc3 lp0 pb2 (the same props as today);
  ``props``  each stream LZMA1 -9e with the best of a grid of lc/lp/pb;
  ``bcjnew`` as ``props``, the new-data stream through the x86 BCJ filter first;
  ``single`` the four streams as one LZMA1 stream (best props of the grid);
- ``bcj``: the x86 BCJ filter (``pybcj``) run over old and new first, then HDiffPatch, then
  ``props`` (on apply: patch the filtered old, unfilter the result);
- ``bsdiff``: bsdiff4's control/diff/extra blocks (``--bsdiff``), each LZMA1 -9e instead of
  bz2 (what OSTree's bsdiff parts inside xz come to).

Every size counts the container: the HDIFF13 header and, per compressed stream, its
props.  Writes one JSON line per file to ``--out`` and prints per pair the total bytes of
each method against today's.

    nice -n 15 python benchmarks/exec_bytes.py [--only NAME ...] [--bsdiff] [--jobs 2]
"""
from __future__ import annotations

import argparse
import bz2
import json
import lzma
import os
import struct
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import hdiffpatch  # noqa: E402
from corpus import CORPUS, release_tree  # noqa: E402

from deltagen import DEFAULT_LIMITS  # noqa: E402
from deltagen.digests import blake3_file  # noqa: E402
from deltagen.hdiff_format import build_config, make_hdiff_patch, parse_header, tuned_lzma_patch  # noqa: E402
from deltagen.policy import classify  # noqa: E402

PAIRS = ("libssl3", "esbuild", "git", "pyarrow", "pyyaml", "lxml", "ruff", "tokenizers", "grpcio")
GRID = [(3, 0, 2), (0, 0, 0), (1, 0, 0), (2, 0, 0), (4, 0, 0), (0, 2, 2), (1, 2, 2), (0, 0, 2),
        (3, 0, 0), (2, 2, 2), (0, 1, 0)]
DICT_MAX = 1 << 24
PROPS = 6  # props-size byte + 5 props


def lzma1(data: bytes, lc: int = 3, lp: int = 0, pb: int = 2, bcj: bool = False) -> int:
    if not data:
        return 0
    d = max(1 << 12, min(DICT_MAX, 1 << (len(data) - 1).bit_length()))
    filters: list[dict[str, Any]] = [{"id": lzma.FILTER_X86}] if bcj else []
    filters.append({"id": lzma.FILTER_LZMA1, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": d,
                    "lc": lc, "lp": lp, "pb": pb})
    return len(lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)) + PROPS


def best_grid(data: bytes, bcj: bool = False) -> tuple[int, tuple[int, int, int]]:
    if not data:
        return 0, (3, 0, 2)
    grid = GRID if len(data) <= (8 << 20) else GRID[:6]
    return min((lzma1(data, *p, bcj=bcj), p) for p in grid)


def streams_of(raw: bytes) -> tuple[int, list[bytes]]:
    header = parse_header(raw[:400], len(raw))
    pos, out = header.header_size, []
    for s in header.streams:
        out.append(raw[pos:pos + s.size])
        pos += s.size
    return header.header_size, out


def stream_methods(raw: bytes, prefix: str, row: dict[str, Any], full: bool) -> None:
    head, streams = streams_of(raw)
    row[f"{prefix}streams"] = [len(s) for s in streams]
    best = [best_grid(s) for s in streams]
    row[f"{prefix}props"] = head + sum(b[0] for b in best)
    row[f"{prefix}props_chosen"] = [b[1] for b in best]
    if not full:
        return
    row[f"{prefix}lzma"] = head + sum(lzma1(s) for s in streams)
    bcj_new = best_grid(streams[3], bcj=True)
    row[f"{prefix}bcjnew"] = head + sum(b[0] for b in best[:3]) + min(bcj_new[0], best[3][0])
    row[f"{prefix}single"] = head + best_grid(b"".join(streams))[0]


def bsdiff_lzma(old: bytes, new: bytes) -> int:
    import bsdiff4
    patch = bsdiff4.diff(old, new)
    lc, ld = struct.unpack_from("<qq", patch, 8)
    blocks = [patch[32:32 + lc], patch[32 + lc:32 + lc + ld], patch[32 + lc + ld:]]
    return 32 + sum(min(lzma1(data, *p) for p in ((3, 0, 2), (0, 0, 0), (1, 0, 0))) if data else 0
                    for data in (bz2.decompress(b) for b in blocks))


def lzma_from(old: bytes, new: bytes, lc: int, lp: int, pb: int) -> tuple[int, float, float]:
    """LZMA1 of new with old as preset dictionary: (bytes, encode s, decode s)."""
    from deltagen import lzma_prefix
    dict_size = max(1 << 12, len(old) + len(new))
    out: list[bytes] = []
    t0 = time.perf_counter()
    lzma_prefix.compress(old, new, out.append, dict_size=dict_size, lc=lc, lp=lp, pb=pb)
    enc = time.perf_counter() - t0
    data = b"".join(out)
    t0 = time.perf_counter()
    back = b"".join(lzma_prefix.decompress(old, iter([data]), dict_size=dict_size, lc=lc, lp=lp, pb=pb,
                                           max_output=len(new)))
    dec = time.perf_counter() - t0
    assert back == new
    return len(data) + 32, enc, dec


def measure(job: dict[str, Any], what: tuple[str, ...]) -> dict[str, Any]:
    import bcj
    o, n = Path(job["old"]), Path(job["new"])
    old, new = o.read_bytes(), n.read_bytes()
    row = {k: job[k] for k in ("pair", "path", "osize", "nsize")}
    with tempfile.TemporaryDirectory() as td:
        t0 = time.perf_counter()
        make_hdiff_patch(o, n, Path(td) / "p", DEFAULT_LIMITS)
        row["today_s"] = time.perf_counter() - t0
        row["today"] = (Path(td) / "p").stat().st_size
    if "tuned" in what:
        t0 = time.perf_counter()
        patch = tuned_lzma_patch(old, new)
        row["tuned_s"] = time.perf_counter() - t0
        row["tuned"] = len(patch)
        t0 = time.perf_counter()
        assert hdiffpatch.apply(old, patch) == new
        row["tuned_apply_s"] = time.perf_counter() - t0
    if "from" in what:
        row["from000"], row["from000_s"], row["from000_dec_s"] = lzma_from(old, new, 0, 0, 0)
    if "bcj" in what:
        t0 = time.perf_counter()
        fold, fnew = bcj.BCJEncoder().encode(old), bcj.BCJEncoder().encode(new)
        row["bcj_filter_s"] = time.perf_counter() - t0
        row["bcjfrom000"], row["bcjfrom000_s"], _ = lzma_from(fold, fnew, 0, 0, 0)
        t0 = time.perf_counter()
        row["bcjhdiff"] = len(hdiffpatch.diff(fold, fnew, build_config("lzma"), validate=False))
        row["bcjhdiff_s"] = time.perf_counter() - t0
    if "bsdiff" in what:
        t0 = time.perf_counter()
        row["bsdiff_lzma"] = bsdiff_lzma(old, new)
        row["bsdiff_s"] = time.perf_counter() - t0
    if "full" in what:
        for lc, lp, pb in ((3, 0, 2), (1, 0, 0), (0, 2, 2), (0, 0, 2), (2, 0, 0)):
            row[f"from{lc}{lp}{pb}"] = lzma_from(old, new, lc, lp, pb)[0]
        t0 = time.perf_counter()
        raw = hdiffpatch.diff(old, new, None, validate=False)
        row["raw_diff_s"] = time.perf_counter() - t0
        stream_methods(raw, "", row, True)
        row["bsdiff_lzma"] = bsdiff_lzma(old, new)
    return row


def changed_executables(names: list[str], work: Path) -> list[dict[str, Any]]:
    jobs = []
    for pair in CORPUS:
        if pair.name not in names:
            continue
        old, new = release_tree(pair, pair.old, work), release_tree(pair, pair.new, work)
        for dirpath, _, files in os.walk(new):
            for name in files:
                n = Path(dirpath) / name
                rel = str(n.relative_to(new))
                o = old / rel.replace(pair.new, pair.old)  # ruff: <name>-<version>.data/scripts/ruff
                if n.is_symlink() or not o.is_file() or o.is_symlink() or classify(n) != "executable":
                    continue
                if o.stat().st_size == n.stat().st_size and blake3_file(o) == blake3_file(n):
                    continue
                jobs.append({"pair": pair.name, "path": rel, "old": str(o), "new": str(n),
                             "osize": o.stat().st_size, "nsize": n.stat().st_size})
    return sorted(jobs, key=lambda j: -j["nsize"])


TABLES = {
    "tuned": (("today", "tuned"), ("today_s", "tuned_s", "tuned_apply_s")),
    "from": (("today", "from000", "bcjfrom000", "bcjhdiff"), ("today_s", "from000_s", "from000_dec_s")),
    "bsdiff": (("today", "bsdiff_lzma"), ("today_s", "bsdiff_s")),
    "full": (("today", "from000", "from302", "from100", "from022", "from002", "from200", "props", "single",
              "bsdiff_lzma"), ()),
}


def table(rows: list[dict[str, Any]], methods: tuple[str, ...], times: tuple[str, ...]) -> None:
    agg: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in rows:
        for key in (r["pair"], "*all*"):
            a = agg[key]
            a["files"] += 1
            a["new"] += r["nsize"]
            for m in (*methods, *times):
                a[m] += r[m]
            a["best"] += min(r[m] for m in methods)
    print("| pair | files | new B | " + " | ".join((*methods, "best of these")) + "".join(f" | {t}" for t in times) + " |")
    print("|---|---:|---:|" + "---:|" * (len(methods) + 1 + len(times)))
    for name, a in sorted(agg.items()):
        cells = [f"{a['today']:,.0f}"] + [f"{a[m]:,.0f} ({a[m] / a['today']:.3f})" for m in (*methods[1:], "best")]
        print(f"| {name} | {a['files']:.0f} | {a['new']:,.0f} | " + " | ".join(cells)
              + "".join(f" | {a[t]:.1f}" for t in times) + " |")


def report(lines: list[dict[str, Any]]) -> None:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for line in lines:   # one file measured in several runs: one row with every method
        merged.setdefault((line["pair"], line["path"]), {}).update(line)
    rows = list(merged.values())
    for name, (methods, times) in TABLES.items():
        have = [r for r in rows if all(m in r for m in (*methods, *times))]
        if have:
            print(f"\n{name}:")
            table(have, methods, times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deltacas-peers"))
    parser.add_argument("--only", action="append", choices=[p.name for p in CORPUS], metavar="NAME")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "exec-bytes.jsonl")
    parser.add_argument("--what", default="tuned", help="comma-separated: tuned (HDIFF13 with per-stream "
                        "props), from (LZMA with the old file as dictionary), bcj (x86 BCJ first), bsdiff (bsdiff4's blocks LZMA-coded), full (other "
                        "lc/lp/pb, HDiffPatch streams re-compressed, bsdiff4 blocks with LZMA; files <= --full-max)")
    parser.add_argument("--paths", help="only files whose path contains one of these (comma-separated)")
    parser.add_argument("--full-max", type=int, default=6 << 20)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--summary", action="store_true", help="measure nothing: the table of --out")
    args = parser.parse_args()
    if not args.summary:
        jobs = changed_executables(args.only or list(PAIRS), args.work)
        if args.paths:
            jobs = [j for j in jobs if any(p in j["path"] for p in args.paths.split(","))]
        with ProcessPoolExecutor(args.jobs) as pool:
            for row in pool.map(measure, jobs, [tuple(w for w in args.what.split(",")
                                                     if w != "full" or j["nsize"] <= args.full_max)
                                               for j in jobs]):
                print(json.dumps(row), flush=True)
                with args.out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    report([json.loads(line) for line in args.out.read_text().splitlines()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
