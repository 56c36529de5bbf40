#!/usr/bin/env python3
"""Large files: deltacas chunked files against casync and the whole-file path (a script, not a test).

Pairs (old, new):

- ``synthetic``: an image of ``--size-mib`` (768 by default) made of 1 MiB regions, 70%
  random and 30% compressible (text-like lines), and its next version with 64 scattered
  4 KiB edits, a 1 MiB insertion (everything after it shifts) and a 2 MiB deletion
  (the scenario of issue 16);
- ``real``: with ``--real OLD NEW``, two files you give (e.g. two versions of a release
  tarball left uncompressed, ``tar -cf``).

For each pair, all on this machine over loopback:

1. deltacas: a fresh store and a real ``cas serve``; ``cas publish --store`` of each version
   (a subprocess: its wall time and peak RSS, ``ru_maxrss`` from ``wait4``; the file is
   chunked at the default ``chunk_min_file_bytes``); both released; the seconds from the new
   version's release until ``GET .../delta?from=old`` is complete; its ``bytes.recipes``.
   Then a real client (``cas-client`` subprocesses, peak RSS) installs old, then updates
   to new: bytes it downloaded (objects and ranges), seconds, peak RSS; the installed file
   is checked against the new one.
2. casync (``/usr/bin/casync``): ``casync make --store=S`` of old, then of new: seconds, the
   bytes of chunk files new in the store after the second make (casync's chunks are
   zstd-compressed) plus the new ``.caibx``: what a casync client holding old downloads;
   ``casync extract --seed=old`` of new: seconds.
3. The whole-file path (before chunking): the new file's size, the bytes a client gets when
   no patch is ready (the issue measured 804,259,258 bytes for 768 MiB, more than the file,
   and no delta after four minutes).

Results go to benchmarks/results/large.json, a table to stdout, with the issue's targets.

    nice -n 15 python benchmarks/large.py [--size-mib 768] [--real OLD NEW] [--chunk-min-file-bytes N]
                                          [--skip-synthetic] [--work DIR] [--keep] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cas.processes import stop_process  # noqa: E402
from deltagen.digests import blake3_file  # noqa: E402

MiB = 1 << 20
TOKEN = "bench-admin-token"


# ---------------------------------------------------------------- data

def _region(rng: random.Random, compressible: bool) -> bytes:
    if not compressible:
        return rng.randbytes(MiB)
    lines, size = [], 0
    while size < MiB:
        line = f"{rng.randrange(10**6):06d} INFO service-{rng.randrange(40)} request handled in {rng.randrange(999)} ms\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:MiB]


def make_pair(work: Path, size_mib: int, seed: int = 16) -> tuple[Path, Path]:
    """old.img and new.img, streamed 1 MiB at a time."""
    old, new = work / "old.img", work / "new.img"
    if old.exists() and new.exists() and old.stat().st_size == size_mib * MiB:
        return old, new
    rng = random.Random(seed)
    with open(old, "wb") as fh:
        for _ in range(size_mib):
            fh.write(_region(rng, rng.random() < 0.3))
    size = size_mib * MiB
    edits = sorted(rng.randrange(0, size - 4096) for _ in range(64))
    insert_at, delete_at = size // 3, 2 * size // 3
    inserted = rng.randbytes(MiB)
    with open(old, "rb") as src, open(new, "wb") as out:
        position = 0
        cuts = sorted([(e, "edit") for e in edits] + [(insert_at, "insert"), (delete_at, "delete")])
        for at, kind in cuts:
            if at < position:
                continue
            _copy(src, out, at - position)
            position = at
            if kind == "edit":
                out.write(rng.randbytes(4096))
                src.seek(4096, os.SEEK_CUR)
                position += 4096
            elif kind == "insert":
                out.write(inserted)
            else:
                src.seek(2 * MiB, os.SEEK_CUR)
                position += 2 * MiB
        _copy(src, out, size - position)
    return old, new


def _copy(src: Any, out: Any, n: int) -> None:
    while n > 0:
        data = src.read(min(n, 4 * MiB))
        if not data:
            return
        out.write(data)
        n -= len(data)


# ---------------------------------------------------------------- processes

def run(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """A subprocess: its exit code, output, wall seconds and peak RSS (MiB)."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, env={**os.environ, **(env or {})}, cwd=cwd or ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        err.seek(0)
        result = {"rc": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - started,
                  "max_rss_mib": usage.ru_maxrss / 1024, "stdout": out.read().decode(errors="replace"),
                  "stderr": err.read().decode(errors="replace")}
    if result["rc"] != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed: {result['stderr'][-2000:]}")
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cas(*args: str, store: Path) -> dict[str, Any]:
    return run([sys.executable, "-m", "cas.cli", *args, "--store", str(store)])


# ---------------------------------------------------------------- deltacas

def measure_deltacas(work: Path, old: Path, new: Path, chunk_min: int | None) -> dict[str, Any]:
    store = work / "store"
    shutil.rmtree(store, ignore_errors=True)
    cas("keys", "init", store=store)
    (store / "config.toml").write_text("delta_poll_seconds = 0.2\n"
                                       + (f"chunk_min_file_bytes = {chunk_min}\n" if chunk_min else ""))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(work / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cas.cli", "serve", "--store", str(store), "--port", str(port)],
                            env={**os.environ, "CAS_ADMIN_TOKEN": TOKEN}, stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)
    out: dict[str, Any] = {}
    try:
        http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=600)
        for _ in range(400):
            try:
                if http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        for version, path in (("1", old), ("2", new)):
            tree = work / f"tree-{version}"
            shutil.rmtree(tree, ignore_errors=True)
            tree.mkdir()
            os.link(path, tree / "disk.img")
            (tree / "health").write_bytes(b"#!/bin/sh\nexit 0\n")
            os.chmod(tree / "health", 0o755)
            published = cas("publish", str(tree), "--product", "big", "--version", version, "--json", store=store)
            data = json.loads(published["stdout"])
            out[f"publish_{version}"] = {"seconds": published["seconds"], "max_rss_mib": published["max_rss_mib"],
                                         "stored_objects": data["uploaded_objects"],
                                         "stored_bytes": data["uploaded_bytes"]}
            released_at = time.monotonic()
            for status in ("testing", "released"):
                cas("release", "status", "big", version, status, store=store)
        deadline = time.monotonic() + 600
        while True:
            delta = http.get("/v1/products/big/releases/2/delta", params={"from": "1"}).json()
            if delta["complete"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out["delta_ready_seconds"] = time.monotonic() - released_at
        out["delta_complete"] = delta["complete"]
        out["delta_bytes"] = delta["bytes"]
        signed = http.get("/v1/products/big/releases/2/manifest").json()["signed"]
        disk = next(e for e in signed["files"] if e["path"] == "disk.img")
        out["index_bytes"] = disk.get("chunks", {}).get("size")
        # A real client: install 1, update to 2.
        root = work / "client"
        shutil.rmtree(root, ignore_errors=True)
        client = [sys.executable, "-m", "client.cli"]
        run([*client, "init", str(root), "--server", url, "--product", "big", "--channel", "stable",
             "--root", str(store / "root.json")])
        for version in ("1", "2"):
            cas("channel", "set", "big", "stable", version, store=store)
            updated = run([*client, "update", str(root), "--json"])
            result = json.loads(updated["stdout"])
            out[f"client_{version}"] = {"seconds": updated["seconds"], "max_rss_mib": updated["max_rss_mib"],
                                        "bytes_downloaded": result["bytes_downloaded"]}
        out["client_file_ok"] = blake3_file(root / "versions" / "2" / "disk.img") == blake3_file(new)
    finally:
        stop_process(proc)
        log.close()
    return out


# ---------------------------------------------------------------- casync

def _store_files(store: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in store.rglob("*.cacnk")} if store.exists() else {}


def measure_casync(work: Path, old: Path, new: Path) -> dict[str, Any] | None:
    exe = shutil.which("casync")
    if exe is None:
        return None
    store = work / "casync.castr"
    shutil.rmtree(store, ignore_errors=True)
    out: dict[str, Any] = {}
    made = run([exe, "make", f"--store={store}", str(work / "old.caibx"), str(old)])
    out["make_old_seconds"] = made["seconds"]
    before = _store_files(store)
    made = run([exe, "make", f"--store={store}", str(work / "new.caibx"), str(new)])
    out["make_new_seconds"] = made["seconds"]
    out["make_new_max_rss_mib"] = made["max_rss_mib"]
    after = _store_files(store)
    out["new_chunks"] = len(set(after) - set(before))
    out["new_chunk_bytes"] = sum(size for path, size in after.items() if path not in before)
    out["index_bytes"] = (work / "new.caibx").stat().st_size
    out["update_bytes"] = out["new_chunk_bytes"] + out["index_bytes"]
    target = work / "casync-new.img"
    target.unlink(missing_ok=True)
    extracted = run([exe, "extract", f"--store={store}", f"--seed={old}", str(work / "new.caibx"), str(target)])
    out["extract_seconds"] = extracted["seconds"]
    out["extract_max_rss_mib"] = extracted["max_rss_mib"]
    out["extract_ok"] = blake3_file(target) == blake3_file(new)
    target.unlink()
    return out


# ---------------------------------------------------------------- report

def measure(name: str, work: Path, old: Path, new: Path, chunk_min: int | None = None) -> dict[str, Any]:
    print(f"[{name}] deltacas ...", file=sys.stderr)
    dc = measure_deltacas(work, old, new, chunk_min)
    print(f"[{name}] casync ...", file=sys.stderr)
    ca = measure_casync(work, old, new)
    return {"pair": name, "old_bytes": old.stat().st_size, "new_bytes": new.stat().st_size, "deltacas": dc,
            "casync": ca, "whole_file_bytes": new.stat().st_size}


def table(results: list[dict[str, Any]]) -> str:
    rows = [("pair", "file MiB", "deltacas update B", "casync chunks+index B", "ratio", "whole file B",
             "delta ready s", "publish new s (RSS MiB)", "client update s (RSS MiB)", "casync make s",
             "casync extract s")]
    for r in results:
        dc, ca = r["deltacas"], r["casync"] or {}
        ours = dc["client_2"]["bytes_downloaded"]
        theirs = ca.get("update_bytes")
        rows.append((r["pair"], f"{r['new_bytes'] / MiB:.0f}", f"{ours:,}", f"{theirs:,}" if theirs else "-",
                     f"{ours / theirs:.2f}" if theirs else "-", f"{r['whole_file_bytes']:,}",
                     f"{dc['delta_ready_seconds']:.1f}",
                     f"{dc['publish_2']['seconds']:.1f} ({dc['publish_2']['max_rss_mib']:.0f})",
                     f"{dc['client_2']['seconds']:.1f} ({dc['client_2']['max_rss_mib']:.0f})",
                     f"{ca.get('make_new_seconds', 0):.1f}", f"{ca.get('extract_seconds', 0):.1f}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(" | ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in rows)


def targets(results: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in results:
        dc, ca = r["deltacas"], r["casync"] or {}
        ours, theirs = dc["client_2"]["bytes_downloaded"], ca.get("update_bytes")
        if theirs:
            lines.append(f"{r['pair']}: update bytes <= 0.9x casync: {ours / theirs:.2f}x "
                         f"{'PASS' if ours <= 0.9 * theirs else 'FAIL'}")
        lines.append(f"{r['pair']}: delta ready within 120 s: {dc['delta_ready_seconds']:.1f} s "
                     f"{'PASS' if dc['delta_complete'] and dc['delta_ready_seconds'] <= 120 else 'FAIL'}")
        peak_client = max(dc["client_1"]["max_rss_mib"], dc["client_2"]["max_rss_mib"])
        lines.append(f"{r['pair']}: client peak memory <= 256 MiB: {peak_client:.0f} MiB "
                     f"{'PASS' if peak_client <= 256 else 'FAIL'}")
        peak_publish = max(dc["publish_1"]["max_rss_mib"], dc["publish_2"]["max_rss_mib"])
        lines.append(f"{r['pair']}: publish memory <= 512 MiB: {peak_publish:.0f} MiB "
                     f"{'PASS' if peak_publish <= 512 else 'FAIL'}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=768)
    parser.add_argument("--real", nargs=2, metavar=("OLD", "NEW"), default=None)
    parser.add_argument("--chunk-min-file-bytes", type=int, default=None,
                        help="the store's chunk_min_file_bytes (default: the server's, 128 MiB)")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "large.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="large-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        if not args.skip_synthetic:
            synthetic = work / "synthetic"
            synthetic.mkdir(exist_ok=True)
            old, new = make_pair(synthetic, args.size_mib)
            results.append(measure(f"synthetic {args.size_mib} MiB", synthetic, old, new, args.chunk_min_file_bytes))
        if args.real:
            real = work / "real"
            real.mkdir(exist_ok=True)
            results.append(measure(f"real {Path(args.real[1]).name}", real, Path(args.real[0]).resolve(),
                                   Path(args.real[1]).resolve(), args.chunk_min_file_bytes))
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    for line in targets(results):
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                                "load": os.getloadavg()},
                                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "results": results, "targets": targets(results)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
