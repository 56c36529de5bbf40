#!/usr/bin/env python3
"""Benchmark deltagen against single tools on real release pairs (a script, not a test).

Pairs: numpy 2.2.0 -> 2.2.1 and pillow 11.0.0 -> 11.1.0 (cp311 manylinux x86_64 wheels,
fetched with ``pip download`` at run time), plus a synthetic 100 MB file.  For every
changed file, and in total: patch bytes, build time, apply time and peak memory for

- deltacas  -- ``deltagen.best_recipes`` (the recipe it would serve first),
- bsdiff4   -- ``deltagen.make_patch("bsdiff4")`` alone,
- zstd-pf   -- ``zstd -19 --long=31 --patch-from=OLD`` (CLI),
- xdelta3   -- ``xdelta3 -9 -e -s OLD NEW OUT`` (CLI),
- zstd-full -- ``zstd -19`` of the new file (CLI).

Every measurement runs in its own process; peak memory is that process's ru_maxrss
(plus its children's for deltacas, whose builds run in worker processes).  Apply is
repeated ``--repeat`` times and the median kept.  Results go to
benchmarks/results/deltas.json.

    python benchmarks/deltas.py [--work DIR] [--repeat 3] [--no-synthetic] [--max-file-bytes N]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deltagen.digests import blake3_file  # noqa: E402

PAIRS = [("numpy", "2.2.0", "2.2.1"), ("pillow", "11.0.0", "11.1.0")]
METHODS = ["deltacas", "bsdiff4", "zstd-pf", "xdelta3", "zstd-full"]


# ---------------------------------------------------------------- measuring in a child

def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside a measuring child process: one build or one apply."""
    import resource

    import deltagen
    started = time.perf_counter()
    out: dict[str, Any] = {}
    if spec["op"] == "best":
        recipes = deltagen.best_recipes(spec["old"], spec["new"], spec["workdir"])
        first = recipes[0]
        out["recipe"] = {"kind": first.kind, "algorithm": first.algorithm, "size": first.size,
                         "path": str(first.path)}
    elif spec["op"] == "make":
        deltagen.make_patch(spec["algorithm"], spec["old"], spec["new"], spec["out"])
    elif spec["op"] == "apply":
        deltagen.apply_patch(spec["algorithm"], spec["old"], spec["patch"], spec["out"],
                             spec["size"], spec["blake3"])
    elif spec["op"] == "decompress":
        deltagen.decompress_file(spec["patch"], spec["out"], spec["size"], spec["blake3"])
    out["elapsed_s"] = time.perf_counter() - started
    kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    out["peak_rss_bytes"] = kib * 1024
    return out


def run_python(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "_child", json.dumps(spec)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(argv: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {err.strip()[-300:]}")
    return {"elapsed_s": elapsed, "peak_rss_bytes": usage.ru_maxrss * 1024}


# ---------------------------------------------------------------- one file, every method

def measure_file(old: Path, new: Path, scratch: Path, repeat: int, skip: set[str]) -> dict[str, Any]:
    scratch.mkdir(parents=True, exist_ok=True)
    size, digest = new.stat().st_size, blake3_file(new)
    out = scratch / "out"
    result: dict[str, Any] = {"old_size": old.stat().st_size, "new_size": size}

    def applied(fn: Any) -> dict[str, Any]:
        runs = []
        for _ in range(repeat):
            runs.append(fn())
            if blake3_file(out) != digest:
                raise RuntimeError(f"apply produced wrong bytes for {new}")
            out.unlink()
        return {"apply_s": statistics.median(r["elapsed_s"] for r in runs),
                "apply_peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs)}

    for method in METHODS:
        if method in skip:
            continue
        patch = scratch / f"patch.{method}"
        if method == "deltacas":
            workdir = scratch / "objs"
            shutil.rmtree(workdir, ignore_errors=True)
            built = run_python({"op": "best", "old": str(old), "new": str(new), "workdir": str(workdir)})
            recipe = built["recipe"]
            entry = {"bytes": recipe["size"], "choice": f"{recipe['kind']}:{recipe['algorithm'] or ''}".rstrip(":"),
                     "build_s": built["elapsed_s"], "build_peak_rss_bytes": built["peak_rss_bytes"]}
            if recipe["kind"] == "patch":
                entry |= applied(lambda: run_python({"op": "apply", "algorithm": recipe["algorithm"],
                                                     "old": str(old), "patch": recipe["path"], "out": str(out),
                                                     "size": size, "blake3": digest}))
            elif recipe["kind"] == "compressed":
                entry |= applied(lambda: run_python({"op": "decompress", "patch": recipe["path"],
                                                     "out": str(out), "size": size, "blake3": digest}))
            else:
                entry |= {"apply_s": 0.0, "apply_peak_rss_bytes": 0}
            shutil.rmtree(workdir, ignore_errors=True)
        elif method == "bsdiff4":
            built = run_python({"op": "make", "algorithm": "bsdiff4", "old": str(old), "new": str(new),
                                "out": str(patch)})
            entry = {"bytes": patch.stat().st_size, "build_s": built["elapsed_s"],
                     "build_peak_rss_bytes": built["peak_rss_bytes"]}
            entry |= applied(lambda: run_python({"op": "apply", "algorithm": "bsdiff4", "old": str(old),
                                                 "patch": str(patch), "out": str(out), "size": size,
                                                 "blake3": digest}))
        elif method == "zstd-pf":
            built = run_cli(["zstd", "-q", "-f", "-19", "--long=31", f"--patch-from={old}", str(new),
                             "-o", str(patch)])
            entry = {"bytes": patch.stat().st_size, "build_s": built["elapsed_s"],
                     "build_peak_rss_bytes": built["peak_rss_bytes"]}
            entry |= applied(lambda: run_cli(["zstd", "-q", "-f", "-d", "--long=31", f"--patch-from={old}",
                                              str(patch), "-o", str(out)]))
        elif method == "xdelta3":
            built = run_cli(["xdelta3", "-9", "-e", "-f", "-s", str(old), str(new), str(patch)])
            entry = {"bytes": patch.stat().st_size, "build_s": built["elapsed_s"],
                     "build_peak_rss_bytes": built["peak_rss_bytes"]}
            entry |= applied(lambda: run_cli(["xdelta3", "-d", "-f", "-s", str(old), str(patch), str(out)]))
        else:  # zstd-full
            built = run_cli(["zstd", "-q", "-f", "-19", str(new), "-o", str(patch)])
            entry = {"bytes": patch.stat().st_size, "build_s": built["elapsed_s"],
                     "build_peak_rss_bytes": built["peak_rss_bytes"]}
            entry |= applied(lambda: run_cli(["zstd", "-q", "-f", "-d", str(patch), "-o", str(out)]))
        patch.unlink(missing_ok=True)
        result[method] = entry
    return result


# ---------------------------------------------------------------- inputs

def fetch_wheel(name: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    found = list(dest.glob(f"{name}-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", f"{name}=={version}", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
                        "-d", str(dest), "-q"], check=True)
        found = list(dest.glob(f"{name}-{version}-*.whl"))
    return found[0]


def unpack(wheel: Path, dest: Path) -> Path:
    if not dest.exists():
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(dest)
    return dest


def changed_files(old_root: Path, new_root: Path, max_bytes: int | None) -> list[str]:
    out = []
    for new in sorted(p for p in new_root.rglob("*") if p.is_file()):
        rel = new.relative_to(new_root)
        parts = list(rel.parts)
        # dist-info directories carry the version in their name: pair them up
        old = old_root / rel
        if not old.exists() and parts[0].endswith(".dist-info"):
            matches = [d for d in old_root.iterdir() if d.name.endswith(".dist-info")]
            old = matches[0].joinpath(*parts[1:]) if matches else old
        if not old.exists() or (max_bytes and max(old.stat().st_size, new.stat().st_size) > max_bytes):
            continue
        if old.stat().st_size != new.stat().st_size or blake3_file(old) != blake3_file(new):
            out.append(str(rel))
    return out


def synthetic(dest: Path, size: int = 100_000_000) -> tuple[Path, Path]:
    """100 MB: half random, half text-like; new = old with scattered edits + inserts."""
    old, new = dest / "synthetic-100MB.old", dest / "synthetic-100MB.new"
    if old.exists() and new.exists():
        return old, new
    rng = random.Random(2026)
    words = [rng.randbytes(rng.randrange(3, 12)).hex().encode() for _ in range(5000)]
    data = bytearray(rng.randbytes(size // 2))
    while len(data) < size:
        data += b" ".join(rng.choices(words, k=1000)) + b"\n"
    del data[size:]
    old.write_bytes(data)
    for _ in range(300):
        at = rng.randrange(len(data) - 5000)
        data[at:at + rng.randrange(0, 2000)] = rng.randbytes(rng.randrange(0, 3000))
    new.write_bytes(data)
    return old, new


# ---------------------------------------------------------------- report

def totals(files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in METHODS:
        rows = [f[method] for f in files.values() if method in f]
        if not rows:
            continue
        out[method] = {"bytes": sum(r["bytes"] for r in rows),
                       "build_s": sum(r["build_s"] for r in rows),
                       "apply_s": sum(r["apply_s"] for r in rows),
                       "build_peak_rss_bytes": max(r["build_peak_rss_bytes"] for r in rows),
                       "apply_peak_rss_bytes": max(r["apply_peak_rss_bytes"] for r in rows)}
    out["new_bytes"] = sum(f["new_size"] for f in files.values())
    return out


def print_table(title: str, files: dict[str, dict[str, Any]], total: dict[str, Any]) -> None:
    print(f"\n## {title}: {len(files)} changed files, {total['new_bytes']:,} new bytes")
    print(f"{'method':<10} {'bytes':>12} {'build s':>9} {'apply s':>8} {'build MiB':>10} {'apply MiB':>10}")
    for method in METHODS:
        if method in total:
            t = total[method]
            print(f"{method:<10} {t['bytes']:>12,} {t['build_s']:>9.2f} {t['apply_s']:>8.3f} "
                  f"{t['build_peak_rss_bytes'] / 2**20:>10.0f} {t['apply_peak_rss_bytes'] / 2**20:>10.0f}")
    big = sorted(files.items(), key=lambda kv: -kv[1]["new_size"])[:8]
    print(f"\nlargest files ({title}); bytes per method, deltacas choice")
    for name, f in big:
        cells = " ".join(f"{m}={f[m]['bytes']:,}" for m in METHODS if m in f)
        print(f"  {name} ({f['new_size']:,}): {cells} [{f.get('deltacas', {}).get('choice', '-')}]")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deltacas-bench"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--max-file-bytes", type=int, default=None)
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--only", choices=[p[0] for p in PAIRS] + ["synthetic"], action="append")
    args = parser.parse_args()
    work: Path = args.work
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "processor": platform.processor()},
        "repeat": args.repeat, "pairs": {}}
    all_files: dict[str, dict[str, Any]] = {}
    for name, v_old, v_new in PAIRS:
        if args.only and name not in args.only:
            continue
        old_root = unpack(fetch_wheel(name, v_old, work / "wheels"), work / f"{name}-{v_old}")
        new_root = unpack(fetch_wheel(name, v_new, work / "wheels"), work / f"{name}-{v_new}")
        files: dict[str, dict[str, Any]] = {}
        for rel in changed_files(old_root, new_root, args.max_file_bytes):
            old = old_root / rel
            if not old.exists():
                old = next(d for d in old_root.iterdir() if d.name.endswith(".dist-info")).joinpath(
                    *Path(rel).parts[1:])
            started = time.monotonic()
            files[rel] = measure_file(old, new_root / rel, work / "scratch", args.repeat, set())
            print(f"{name} {rel}: {files[rel]['new_size']:,} bytes, "
                  f"{time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        total = totals(files)
        report["pairs"][f"{name} {v_old}->{v_new}"] = {"files": files, "total": total}
        print_table(f"{name} {v_old} -> {v_new}", files, total)
        all_files |= {f"{name}/{k}": v for k, v in files.items()}
    if all_files:
        report["total"] = totals(all_files)
        print_table("all wheel pairs", all_files, report["total"])
    if not args.no_synthetic and (not args.only or "synthetic" in args.only):
        old, new = synthetic(work)
        # bsdiff4 alone is skipped: 100 MB is above the 64 MiB bsdiff cap (~1.7 GiB of RAM)
        f = measure_file(old, new, work / "scratch", args.repeat, {"bsdiff4"})
        report["synthetic_100MB"] = f
        print_table("synthetic 100 MB", {"synthetic": f}, totals({"synthetic": f}))
    out = ROOT / "benchmarks" / "results" / "deltas.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
