#!/usr/bin/env python3
"""Soak a real ``cas serve``: does its memory or its open files grow? (a script, not a test)

Starts ``cas serve`` (with its ``cas deltas worker``) on a fresh store on loopback and, in
a loop until ``--minutes`` have passed (default 30):

- publishes the next release (``cas publish --status released``: a small tree of which a
  few files change per version, so the worker builds patches, compressed forms and bundles),
- moves channels (``stable`` to the new release, ``beta`` back and forth),
- updates ``--clients`` installed clients (the client library, ``Updater.update``, each with
  its own id, so reports and rate limits see distinct clients),
- sends a bounded burst of reads (channel documents with and without ``If-None-Match``,
  small objects, the delta document, the dashboard overview).  No bad tokens: every
  request comes from 127.0.0.1, and the auth-failure limit would lock the soak out.

RSS (``VmRSS``) and open files (``/proc/PID/fd``) of the server and of its delta worker
are sampled at the start, every minute and at the end.  Prints a table and writes
``benchmarks/results/soak.json``.  All traffic goes to 127.0.0.1 only, and every loop
stops by itself when the time is up.

    python benchmarks/soak.py [--minutes 30] [--clients 3] [--work DIR]
                              [--malloc-stats] [--malloc-trim] [--tracemalloc FRAMES [--warmup-sample K]]

``--malloc-stats`` runs the server with ``CAS_MEMTRACE_DIR`` (cas/http/memtrace.py) and sends it
``SIGUSR2`` at every sample: each sample then also records glibc's arena figures (held from
the kernel / in use / free but kept), the malloc arena count and the bytes SQLite holds.  ``--tracemalloc FRAMES`` adds ``CAS_TRACEMALLOC=FRAMES``:
the bytes tracemalloc traces, and at the end the allocation sites that grew between sample
K (``--warmup-sample``, default 3: past the warm-up) and the last are written next to the JSON
(``soak-tracemalloc.txt``).  Tracing slows the server and adds its own memory to the RSS: the
RSS of such a run is not the figure to quote.  ``--malloc-trim`` also calls ``malloc_trim(0)`` at
each sample and records the RSS after it (what glibc gives back).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cas.http.memtrace import diff_text  # noqa: E402
from client.updater import Updater  # noqa: E402

PRODUCT = "soak"
ADMIN = "soak-admin-token"
FILES = 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_tree(dest: Path, version: int) -> None:
    """FILES files of 8-120 KB; each version changes a few of them a little and adds one."""
    for i in range(FILES):
        rng = random.Random(i)
        body = bytearray(rng.randbytes(rng.randrange(8_000, 120_000)))
        for v in range(1, version + 1):
            if (i + v) % 7 == 0:   # about one file in seven changes per version
                at = random.Random(v * 1000 + i).randrange(len(body) - 64)
                body[at:at + 32] = random.Random(v).randbytes(32)
        path = dest / "lib" / f"part-{i:02d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(body))
    (dest / "notes").mkdir(parents=True, exist_ok=True)
    (dest / "notes" / f"v{version}.txt").write_text(f"release {version}\n" * 50)
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    (dest / "bin" / "health").write_text("#!/bin/sh\nexit 0\n")
    (dest / "bin" / "health").chmod(0o755)


def proc_stats(pid: int | None) -> dict[str, Any] | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    threads = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Threads:"))
    return {"pid": pid, "rss_mb": round(rss / 1024, 1), "open_files": fds, "threads": threads}


def worker_of(server_pid: int) -> int | None:
    for entry in os.listdir("/proc"):
        if not entry.isdecimal():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{entry}/stat").read_text().split(") ")[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == server_pid and b"cas.deltas_worker" in cmdline:  # python -m cas.deltas_worker
            return int(entry)
    return None


class Soak:
    def __init__(self, work: Path, clients: int, trace_frames: int = 0, malloc_stats: bool = False,
                 malloc_trim: bool = False) -> None:
        self.work = work
        self.store = work / "store"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "CAS_ADMIN_TOKEN": ADMIN, "CAS_SERVER": self.url, "CAS_TOKEN": ADMIN,
                    "PYTHONPATH": str(ROOT)}
        self.trace_dir = work / "tracemalloc"
        self.dumps = bool(trace_frames or malloc_stats or malloc_trim)
        if self.dumps:
            self.env.update(CAS_TRACEMALLOC=str(trace_frames), CAS_MEMTRACE_DIR=str(self.trace_dir),
                            CAS_MALLOC_TRIM="1" if malloc_trim else "0")
        self.clients = clients
        self.proc: subprocess.Popen[bytes] | None = None
        self.counts = {"releases": 0, "channel_moves": 0, "client_updates": 0, "client_failures": 0,
                       "reads": 0, "read_errors": 0}
        self.phase_seconds = {"publish": 0.0, "channel moves": 0.0, "client updates": 0.0, "reads": 0.0}

    def cas(self, *args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "cas.cli", *args], capture_output=True, text=True,
                              env=self.env, cwd=ROOT, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"cas {' '.join(args)}: {proc.stderr.strip()[-400:]}")
        return proc.stdout

    def start(self) -> None:
        self.store.mkdir(parents=True)
        (self.store / "config.toml").write_text("delta_poll_seconds = 0.5\n")
        self.cas("keys", "init", "--store", str(self.store))
        log = open(self.work / "server.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "cas.cli", "serve", "--store", str(self.store),
                                      "--port", str(self.port)], env=self.env, cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180  # a loaded machine, or tracemalloc, makes the start slow
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cache_mb(self) -> float | None:
        """The fast path's small-object cache (bounded by small_object_cache_bytes), from /metrics."""
        try:
            text = httpx.get(self.url + "/metrics", timeout=10).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith("cas_small_object_cache_bytes "):
                return round(float(line.split()[1]) / (1 << 20), 1)
        return None

    def trace_dump(self) -> dict[str, Any] | None:
        """SIGUSR2 the server (CAS_TRACEMALLOC) and read the figures of the dump it writes."""
        assert self.proc is not None
        have = len(list(self.trace_dir.glob("snapshot-*.json")))
        self.proc.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = sorted(self.trace_dir.glob("snapshot-*.json"))
            if len(done) > have:
                time.sleep(0.2)  # the JSON is written last, in one call
                fig = json.loads(done[-1].read_text())
                mb = 1 << 20
                mi = fig.get("mallinfo2") or {}
                out = {"n": fig["n"], "traced_mb": round(fig.get("traced_bytes", 0) / mb, 1),
                       "malloc_arena_mb": round((mi.get("arena", 0) + mi.get("hblkhd", 0)) / mb, 1),
                       "malloc_in_use_mb": round(mi.get("uordblks", 0) / mb, 1),
                       "malloc_free_kept_mb": round(mi.get("fordblks", 0) / mb, 1),
                       "arenas": fig.get("arenas"),
                       "sqlite_mb": round(fig["sqlite_bytes"] / mb, 1) if fig.get("sqlite_bytes") is not None else None}
                if "rss_after_trim_kib" in fig:
                    out["rss_before_trim_mb"] = round(fig["rss_kib"] / 1024, 1)
                    out["rss_after_trim_mb"] = round(fig["rss_after_trim_kib"] / 1024, 1)
                return out
            time.sleep(0.2)
        return None

    def sample(self, started: float) -> dict[str, Any]:
        assert self.proc is not None
        out = {"minute": round((time.monotonic() - started) / 60, 2), **self.counts,
               "server": proc_stats(self.proc.pid), "small_object_cache_mb": self.cache_mb(),
               "worker": proc_stats(worker_of(self.proc.pid))}
        if self.dumps:
            out["trace"] = self.trace_dump()
        return out

    def publish(self, version: int) -> str:
        tree = self.work / "trees" / str(version)
        write_tree(tree, version)
        name = f"1.{version}.0"
        self.cas("publish", str(tree), "--product", PRODUCT, "--version", name, "--key",
                 str(self.store / "keys" / "release.pem"), "--status", "released")
        shutil.rmtree(tree)
        self.counts["releases"] += 1
        return name

    def move(self, http: httpx.Client, channel: str, version: str) -> None:
        """What ``cas channel set`` sends (the server signs the new channel document)."""
        r = http.put(f"/v1/products/{PRODUCT}/channels/{channel}", json={"release": version},
                     headers={"authorization": f"Bearer {ADMIN}"})
        r.raise_for_status()
        self.counts["channel_moves"] += 1

    def init_clients(self) -> list[Updater]:
        root_doc = (self.store / "root.json").read_bytes()
        updaters = []
        for i in range(self.clients):
            root = self.work / "clients" / str(i)
            Updater.init(root, [self.url], PRODUCT, "stable", root_doc)
            updaters.append(Updater(root))
        return updaters

    def reads(self, http: httpx.Client, version: str, previous: str | None) -> None:
        """A bounded burst of the requests a fleet makes between updates."""
        path = f"/v1/products/{PRODUCT}/channels/stable"
        for _ in range(40):
            r = http.get(path)
            etag = r.headers.get("etag")
            r2 = http.get(path, headers={"if-none-match": etag} if etag else {})
            self.counts["reads"] += 2
            self.counts["read_errors"] += int(r.status_code != 200) + int(r2.status_code not in (200, 304))
        manifest = http.get(f"/v1/products/{PRODUCT}/releases/{version}/manifest")
        self.counts["reads"] += 1
        if manifest.status_code == 200:
            files = [f for f in manifest.json()["signed"]["files"] if f["type"] == "file"][:10]
            for f in files:
                r = http.get(f"/v1/objects/{f['blake3']}")
                self.counts["reads"] += 1
                self.counts["read_errors"] += int(r.status_code != 200)
        if previous:
            r = http.get(f"/v1/products/{PRODUCT}/releases/{version}/delta", params={"from": previous})
            self.counts["reads"] += 1
            self.counts["read_errors"] += int(r.status_code != 200)
        r = http.get("/v1/admin/dashboard/overview", headers={"authorization": f"Bearer {ADMIN}"})
        self.counts["reads"] += 1
        self.counts["read_errors"] += int(r.status_code != 200)


def table(samples: list[dict[str, Any]]) -> str:
    head = (f"{'minute':>6} {'releases':>8} {'updates':>7} {'reads':>7} | {'server MB':>9} {'files':>5} "
            f"{'thr':>4} {'cache MB':>8} | {'worker MB':>9} {'files':>5}")
    lines = [head, "-" * len(head)]
    for s in samples:
        srv, wk = s["server"] or {}, s["worker"] or {}
        lines.append(f"{s['minute']:>6} {s['releases']:>8} {s['client_updates']:>7} {s['reads']:>7} | "
                     f"{srv.get('rss_mb', '-'):>9} {srv.get('open_files', '-'):>5} {srv.get('threads', '-'):>4} "
                     f"{s.get('small_object_cache_mb') if s.get('small_object_cache_mb') is not None else '-':>8} | "
                     f"{wk.get('rss_mb', '-'):>9} {wk.get('open_files', '-'):>5}"
                     + trace_columns(s.get("trace")))
    if any("trace" in s for s in samples):
        lines[0] += " | traced MB, malloc MB: held / in use / free kept, SQLite MB [RSS before -> after trim]"
    return "\n".join(lines)


def trace_columns(t: dict[str, Any] | None) -> str:
    if not t:
        return ""
    out = (f" | {t['traced_mb']:>6} {t['malloc_arena_mb']:>6} {t['malloc_in_use_mb']:>6} "
           f"{t['malloc_free_kept_mb']:>6} {t.get('sqlite_mb') if t.get('sqlite_mb') is not None else '-':>6}")
    if "rss_after_trim_mb" in t:
        out += f" [{t['rss_before_trim_mb']} -> {t['rss_after_trim_mb']}]"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir, removed)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    ap.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                    help="trace the server's allocations (CAS_TRACEMALLOC) and diff them at the end")
    ap.add_argument("--malloc-stats", action="store_true",
                    help="record glibc's arena figures at each sample (CAS_MEMTRACE_DIR, no tracing)")
    ap.add_argument("--malloc-trim", action="store_true",
                    help="call malloc_trim(0) in the server at each sample, recording RSS before and after")
    ap.add_argument("--warmup-sample", type=int, default=3, help="with --tracemalloc: diff from this sample")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cas-soak-"))
    soak = Soak(work, args.clients, args.tracemalloc, args.malloc_stats, args.malloc_trim)
    diff = ""
    samples: list[dict[str, Any]] = []
    try:
        soak.start()
        started = time.monotonic()
        samples.append(soak.sample(started))
        print(table(samples), flush=True)
        end = started + args.minutes * 60
        next_sample = started + 60
        updaters: list[Updater] = []
        previous: str | None = None
        version = 0
        with httpx.Client(base_url=soak.url, timeout=30) as http:
            while time.monotonic() < end:
                t0 = time.monotonic()
                name = soak.publish(version)
                t1 = time.monotonic()
                soak.move(http, "stable", name)
                soak.move(http, "beta", previous or name)
                if not updaters:
                    updaters = soak.init_clients()
                t2 = time.monotonic()
                for u in updaters:
                    try:
                        u.update(ignore_window=True)
                        soak.counts["client_updates"] += 1
                    except Exception as exc:  # counted, reported; the soak goes on
                        soak.counts["client_failures"] += 1
                        print(f"client update failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                t3 = time.monotonic()
                soak.reads(http, name, previous)
                t4 = time.monotonic()
                soak.phase_seconds["publish"] += t1 - t0
                soak.phase_seconds["channel moves"] += t2 - t1
                soak.phase_seconds["client updates"] += t3 - t2
                soak.phase_seconds["reads"] += t4 - t3
                previous, version = name, version + 1
                if time.monotonic() >= next_sample:
                    samples.append(soak.sample(started))
                    print(table(samples).splitlines()[-1], flush=True)
                    next_sample += 60
        samples.append(soak.sample(started))
        print(table(samples).splitlines()[-1], flush=True)
        if args.tracemalloc:
            snaps = sorted(soak.trace_dir.glob("snapshot-*.pickle"))
            k = min(args.warmup_sample, len(snaps) - 1)
            if k >= 0 and len(snaps) > 1:
                diff = (f"# server allocations that grew from sample {k} (minute {samples[k]['minute']}) "
                        f"to the last (minute {samples[-1]['minute']}), {args.tracemalloc} frames\n"
                        + diff_text(tracemalloc.Snapshot.load(str(snaps[k])),
                                    tracemalloc.Snapshot.load(str(snaps[-1]))))
    finally:
        soak.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    first, last = samples[0], samples[-1]
    result = {"minutes": args.minutes, "clients": args.clients, "python": platform.python_version(),
              "machine": f"{platform.machine()}, {os.cpu_count()} cpus", "counts": soak.counts,
              "phase_seconds": {k: round(v, 1) for k, v in soak.phase_seconds.items()},
              "server_rss_mb": {"start": first["server"]["rss_mb"], "end": last["server"]["rss_mb"]},
              "server_open_files": {"start": first["server"]["open_files"], "end": last["server"]["open_files"]},
              "tracemalloc_frames": args.tracemalloc, "malloc_stats": soak.dumps, "malloc_trim": args.malloc_trim,
              "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
              "samples": samples}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n" + table(samples))
    print("seconds per phase: " + ", ".join(f"{k} {v:.0f}" for k, v in soak.phase_seconds.items()))
    if diff:
        diff_out = args.out.with_name(args.out.stem + "-tracemalloc.txt")
        diff_out.write_text(diff)
        print(f"wrote {diff_out}")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
