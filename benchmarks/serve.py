#!/usr/bin/env python3
"""Benchmark ``cas serve`` against nginx serving the same files (a script, not a test).

One run, side by side on this machine:

1. Publish throughput: a temp store (``cas keys init``), then ``cas publish`` of a directory
   holding a 256 MiB random file and a 1 KiB file (``--status released --channel stable``),
   median of ``--publish-runs`` runs into fresh stores, against ``sha256sum`` of the big file.
   The publish time is the whole command (interpreter start, key load, BLAKE3 hash, copy +
   fsync into the store, signing, channel document).
2. Servers: ``cas serve`` (1 worker), ``cas serve --workers 2``, and nginx with a generated
   config (own prefix, pid, logs, ``daemon off``) serving the store's ``objects/ab/cdef...``
   directory through a location regex for ``/v1/objects/<digest>`` (sendfile, etag on) and
   the channel document as a static JSON file.  nginx runs as ``worker_processes 1`` and
   ``auto`` (= nproc); the ``auto`` row is the reference for the ratios.  And the production
   layout (docs/deploy.md, issue 17 item 5): nginx ``auto`` running docs/nginx-production.conf
   (objects by ``try_files`` from the store, documents from the static tree) in front of a
   ``cas serve`` with ``static_tree`` set, which keeps that tree; its target is >= 0.9x nginx.
3. Per server: MB/s for the full 256 MiB download and for the last 64 MiB by Range (curl
   ``%{speed_download}``, median of ``--repeat``); requests/s for the 1 KiB object and for a
   304 on the channel document (``If-None-Match`` with the server's own etag), with
   ``wrk -t2 -c32 -d5s`` (or a Python asyncio load generator when wrk is absent).
4. A table of medians with the ratio to nginx, and JSON in benchmarks/results/serve.json.

Load generator and server share the machine's cores, so the request rates are what a
2-core box can do with both on it, not what the server alone could do.

``--profile`` additionally samples the 1-worker server with py-spy (if installed) under the
1 KiB and 304 loads and writes collapsed stacks + a per-function summary next to the JSON.

    python benchmarks/serve.py [--work DIR] [--size-mib 256] [--repeat 5] [--duration 5]
                               [--publish-runs 3] [--loadgen wrk|python] [--profile]
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deltagen.digests import blake3_file  # noqa: E402

MiB = 1 << 20
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk")
CAS = [sys.executable, "-m", "cas.cli"]
TARGETS = {"download_ratio": 0.5, "not_modified_rps": 20_000, "small_rps": 10_000}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, **kw)


# ---------------------------------------------------------------- step 1: store and publish

def make_tree(tree: Path, size_mib: int) -> None:
    tree.mkdir(parents=True)
    with open(tree / "big.bin", "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(MiB))
    (tree / "small.bin").write_bytes(os.urandom(1024))


def publish(store: Path, tree: Path) -> float:
    run(CAS + ["keys", "init", "--store", str(store)])
    started = time.perf_counter()
    run(CAS + ["publish", str(tree), "--product", "bench", "--version", "1", "--store", str(store),
               "--status", "released", "--channel", "stable",
               # stored whole, as before chunking existed (files over 128 MiB are chunked by default;
               # a chunked file's object is assembled by cas serve, never a plain file)
               "--chunk-min-file-bytes", str(512 * MiB)])
    return time.perf_counter() - started


def bench_publish(work: Path, tree: Path, runs: int) -> tuple[dict[str, Any], Path]:
    total = sum(p.stat().st_size for p in tree.iterdir())
    times, store = [], None
    for i in range(runs):
        store = work / f"store{i}"
        times.append(publish(store, tree))
        if i < runs - 1:
            shutil.rmtree(store)
    cli = []
    for _ in range(3):
        started = time.perf_counter()
        run(CAS + ["--help"])
        cli.append(time.perf_counter() - started)
    sha = []
    for _ in range(runs):
        started = time.perf_counter()
        run(["sha256sum", str(tree / "big.bin")])
        sha.append(time.perf_counter() - started)
    b3 = []
    for _ in range(runs):
        started = time.perf_counter()
        blake3_file(tree / "big.bin")
        b3.append(time.perf_counter() - started)
    med, sha_med, b3_med = statistics.median(times), statistics.median(sha), statistics.median(b3)
    result = {
        "bytes": total, "runs_s": [round(t, 3) for t in times], "median_s": round(med, 3),
        "publish_MBps": round(total / med / 1e6, 1),
        "cli_start_s": round(statistics.median(cli), 3),
        "sha256sum_s": round(sha_med, 3), "sha256sum_MBps": round((tree / "big.bin").stat().st_size / sha_med / 1e6, 1),
        "blake3_inprocess_MBps": round((tree / "big.bin").stat().st_size / b3_med / 1e6, 1),
    }
    return result, store


# ---------------------------------------------------------------- servers

class Server:
    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str, env: dict | None = None):
        self.name, self.cmd, self.port, self.ready_path = name, cmd, port, ready_path
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{port}"

    def __enter__(self) -> Server:
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self.log, stderr=self.log,
                                     start_new_session=True, env=self.env)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.name} exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(self.base + self.ready_path, timeout=1) as r:
                    r.read()
                    time.sleep(0.5 if "--workers" in self.cmd else 0.1)  # let every worker bind
                    return self
            except OSError:
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"{self.name} did not come up on port {self.port}")

    def pids(self) -> list[int]:
        """The server process and its children (uvicorn workers / nginx workers)."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.proc.pid)], capture_output=True, text=True)
        return [self.proc.pid] + [int(p) for p in out.stdout.split()]

    def __exit__(self, *exc: Any) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: this server only
                self.proc.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()


def nginx_server(work: Path, name: str, store: Path, channel_doc: Path, workers: str, port: int,
                 site: str | None = None) -> Server:
    """Bare nginx over the store's files, or (``site``) nginx running that site (the production
    layout, docs/nginx-production.conf) with the same process and connection settings."""
    prefix = work / f"{name}-prefix"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    user = "user root root;" if os.geteuid() == 0 else ""  # temp dirs are 0700: workers must read them
    conf = f"""
{user}
worker_processes {workers};
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    etag on;
    keepalive_timeout 30;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    types {{ application/json json; }}
    default_type application/octet-stream;
    {site or ""}
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200 "ok"; }}
        location ~ "^/v1/objects/([0-9a-f]{{2}})([0-9a-f]{{62}})$" {{
            alias {store}/objects/$1/$2;
            add_header Cache-Control "public, max-age=31536000, immutable";
        }}
        location = /v1/products/bench/channels/stable {{
            alias {channel_doc};
            default_type application/json;
        }}
    }}
}}
"""
    if site is not None:   # only the site: the bare server block is dropped
        conf = conf[:conf.index("    server {\n        listen")] + "}\n"
    (prefix / "nginx.conf").write_text(conf)
    (prefix / "tmp").mkdir(exist_ok=True)
    return Server(name, [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], port, "/healthz")


@contextlib.contextmanager
def production_layout(work: Path, store: Path, port: int) -> Iterator[Server]:
    """nginx (worker_processes auto) running docs/nginx-production.conf in front of a `cas serve`
    that keeps the static document tree (static_tree) of the same store: what docs/deploy.md
    describes.  Yields the nginx server, once the tree holds the channel document."""
    from cas.static import render_nginx_site
    tree = work / "static-tree"
    config = work / "production.toml"
    config.write_text(f'static_tree = "{tree}"\ndelta_builder = false\n')   # serving only, as bare nginx
    cas_port = free_port()
    cas = Server("production-cas", CAS + ["serve", "--store", str(store), "--config", str(config), "--port",
                                          str(cas_port), "--host", "127.0.0.1"], cas_port, "/healthz")
    with cas:
        channel = tree / "v1" / "products" / "bench" / "channels" / "stable"
        deadline = time.time() + 30
        while not channel.exists():
            if time.time() > deadline:
                raise RuntimeError(f"the static tree has no {channel} after 30 s")
            time.sleep(0.1)
        site = render_nginx_site((ROOT / "docs" / "nginx-production.conf").read_text(), listen=f"127.0.0.1:{port}",
                                 upstreams=[f"127.0.0.1:{cas_port}"], store=store, tree=tree)
        with nginx_server(work, "production", store, channel, "auto", port, site=site) as server:
            yield server


def cas_server(name: str, store: Path, workers: int, port: int) -> Server:
    cmd = CAS + ["serve", "--store", str(store), "--port", str(port), "--host", "127.0.0.1"]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    return Server(name, cmd, port, "/healthz")


# ---------------------------------------------------------------- measuring

def curl_speed(url: str, range_: str | None = None) -> tuple[float, int, str]:
    cmd = ["curl", "-s", "-f", "-o", "/dev/null", "-w", "%{speed_download} %{size_download} %{http_code}"]
    if range_:
        cmd += ["-r", range_]
    speed, size, code = run(cmd + [url]).stdout.split()
    return float(speed), int(size), code


def download(url: str, repeat: int, expect: int, range_: str | None = None) -> dict[str, Any]:
    curl_speed(url, range_)  # warm-up
    speeds = []
    for _ in range(repeat):
        speed, size, code = curl_speed(url, range_)
        if size != expect:
            raise RuntimeError(f"{url} range={range_}: got {size} bytes (HTTP {code}), expected {expect}")
        speeds.append(speed / 1e6)
    return {"MBps": round(statistics.median(speeds), 1), "runs": [round(s, 1) for s in speeds]}


def status_and_etag(url: str, headers: dict[str, str] | None = None) -> tuple[int, str | None]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as r:
            r.read()
            return r.status, r.headers.get("ETag")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("ETag")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, duration: int, threads: int, conns: int, headers: dict[str, str]) -> dict[str, Any]:
    cmd = [WRK, f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = run(cmd + [url], timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])
    total = int(re.search(r"(\d+) requests in", out)[1])
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            lat[f"p{pct}_ms"] = round(float(m[1]) * _UNITS[m[2]], 3)
    return {"rps": round(rps), "requests": total, "non_2xx_3xx": int(bad[1]) if bad else 0,
            "socket_errors": errors[1].strip() if errors else None, **lat}


async def _pyload(host: str, port: int, path: str, duration: float, conns: int,
                  headers: dict[str, str]) -> tuple[int, int, list[float]]:
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    end = time.perf_counter() + duration
    counts = {"ok": 0, "bad": 0}
    lats: list[float] = []

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < end:
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if m and status != 304:
                await reader.readexactly(int(m[1]))
            lats.append(time.perf_counter() - t)
            counts["ok" if status < 400 else "bad"] += 1
        writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return counts["ok"], counts["bad"], lats


def pyload(url: str, duration: int, threads: int, conns: int, headers: dict[str, str]) -> dict[str, Any]:
    """Fallback when wrk is absent: asyncio keep-alive clients (far weaker than wrk)."""
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    started = time.perf_counter()
    ok, bad, lats = asyncio.run(_pyload(m[1], int(m[2]), m[3], duration, conns, headers))
    elapsed = time.perf_counter() - started
    lats.sort()
    return {"rps": round((ok + bad) / elapsed), "requests": ok + bad, "non_2xx_3xx": bad,
            "socket_errors": None, "p50_ms": round(lats[len(lats) // 2] * 1e3, 3),
            "p99_ms": round(lats[int(len(lats) * 0.99)] * 1e3, 3)}


def measure(server: Server, args: argparse.Namespace, big: str, small: str, big_size: int) -> dict[str, Any]:
    load = wrk if args.loadgen == "wrk" else pyload
    base = server.base
    channel = base + "/v1/products/bench/channels/stable"
    tail = 64 * MiB if big_size > 64 * MiB else big_size // 4
    status, etag = status_and_etag(channel)
    if status != 200 or not etag:
        raise RuntimeError(f"{server.name}: channel document answered {status}, etag {etag}")
    status304, _ = status_and_etag(channel, {"If-None-Match": etag})
    if status304 != 304:
        raise RuntimeError(f"{server.name}: If-None-Match {etag} answered {status304}, not 304")
    log(f"  {server.name}: downloads")
    out: dict[str, Any] = {
        "full": download(f"{base}/v1/objects/{big}", args.repeat, big_size),
        "range_tail": download(f"{base}/v1/objects/{big}", args.repeat, tail, f"{big_size - tail}-"),
    }
    log(f"  {server.name}: 1 KiB object")
    load(f"{base}/v1/objects/{small}", 1, args.threads, args.conns, {})  # warm-up
    out["small"] = load(f"{base}/v1/objects/{small}", args.duration, args.threads, args.conns, {})
    log(f"  {server.name}: 304 channel (etag {etag})")
    out["not_modified"] = load(channel, args.duration, args.threads, args.conns, {"If-None-Match": etag})
    out["not_modified"]["etag"] = etag
    return out


# ---------------------------------------------------------------- profiling (optional)

def profile(server: Server, args: argparse.Namespace, small: str, outdir: Path) -> dict[str, Any]:
    pyspy = shutil.which("py-spy")
    if not pyspy:
        return {"skipped": "py-spy not installed (pip install py-spy)"}
    channel = server.base + "/v1/products/bench/channels/stable"
    _, etag = status_and_etag(channel)
    cases = {"small": (f"{server.base}/v1/objects/{small}", {}),
             "not_modified": (channel, {"If-None-Match": etag})}
    load = wrk if args.loadgen == "wrk" else pyload
    summary: dict[str, Any] = {}
    for case, (url, headers) in cases.items():
        raw = outdir / f"serve-profile-{case}.txt"
        seconds = max(args.duration, 10)
        spy = subprocess.Popen([pyspy, "record", "--pid", str(server.proc.pid), "--rate", "200",
                                "--duration", str(seconds + 1), "--format", "raw", "--threads",
                                "--output", str(raw), "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        rps = load(url, seconds, args.threads, args.conns, headers)["rps"]
        _, err = spy.communicate(timeout=seconds + 60)
        if not raw.exists():
            summary[case] = {"error": err[-500:]}
            continue
        summary[case] = {"rps_under_profiler": rps, **summarize_stacks(raw)}
    return summary


# (category, path fragments) -- a sample goes to the category of its deepest matching frame
CATEGORIES = [
    ("threadpool handoff (anyio to_thread, CapacityLimiter, queue wake-ups)", ["anyio/_backends/", "anyio/to_thread",
                                                                             "starlette/concurrency"]),
    ("file open/read/close (anyio file I/O)", ["anyio/_core/_fileio"]),
    ("sqlite channel lookup", ["cas/metadata/", "cas/channels.py", "sqlite3/"]),
    ("prometheus metrics", ["prometheus_client/", "cas/http/metrics.py"]),
    ("auth (require)", ["cas/http/auth.py"]),
    ("handler (get_object / get_channel / etag)", ["cas/http/objects.py", "cas/http/releases.py",
                                                   "cas/http/conditional.py", "deltagen/digests", "cas/objectstore/"]),
    ("Starlette FileResponse/Response/Request/headers", ["starlette/responses.py", "starlette/requests.py",
                                                         "starlette/datastructures.py", "email/utils.py"]),
    ("Starlette routing", ["starlette/routing.py", "starlette/convertors.py"]),
    ("Starlette middleware stack + exception wrappers", ["starlette/middleware/", "starlette/_exception_handler.py",
                                                         "starlette/applications.py"]),
    ("uvicorn protocol (httptools_impl, proxy headers)", ["uvicorn/protocols/", "uvicorn/middleware/"]),
    ("event loop C code (uvloop: epoll, socket I/O, httptools parse)", ["asyncio/runners.py"]),
]
_IDLE_LEAVES = ("Condition.wait", "Queue.get", "select", "poll", "Event.wait")


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, fragments in CATEGORIES:
            if any(f in frame for f in fragments):
                return name
    return "other"


def summarize_stacks(raw: Path, top: int = 15) -> dict[str, Any]:
    """Where samples go, per thread kind, from py-spy's raw (collapsed) stacks.

    Main thread = the event loop (the serial bottleneck of one worker); worker threads are
    anyio's thread pool, counted only when not parked waiting for work.
    """
    buckets = {"main": collections.Counter(), "pool": collections.Counter()}
    leaves = {"main": collections.Counter(), "pool": collections.Counter()}
    idle_pool = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        kind = "main" if "MainThread" in thread else "pool"
        if not frames:
            continue
        if kind == "pool" and frames[-1].startswith(_IDLE_LEAVES):
            idle_pool += n
            continue
        if kind == "pool" and frames[-1].startswith("WorkerThread.run"):
            category = "blocking call run in the pool (C: open/read/close/stat, sqlite)"
        else:
            category = _category(frames)
        buckets[kind][category] += n
        leaves[kind][frames[-1]] += n
    out: dict[str, Any] = {"idle_pool_samples": idle_pool}
    for kind in ("main", "pool"):
        total = sum(buckets[kind].values()) or 1
        out[f"{kind}_samples"] = sum(buckets[kind].values())
        out[f"{kind}_by_category_pct"] = [(c, round(100 * n / total, 1)) for c, n in buckets[kind].most_common()]
        out[f"{kind}_top_leaves_pct"] = [(f, round(100 * n / total, 1)) for f, n in leaves[kind].most_common(top)]
    return out


# ---------------------------------------------------------------- main

def versions() -> dict[str, Any]:
    def v(pkg: str) -> str | None:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    nginx_v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = (subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout.splitlines() or [""])[0] if WRK else None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "uvicorn": v("uvicorn"), "starlette": v("starlette"),
            "uvloop": v("uvloop"), "httptools": v("httptools"), "nginx": nginx_v, "wrk": wrk_v,
            "git_commit": commit}


ROWS = [("cas-1w", "deltacas, 1 worker"), ("cas-2w", "deltacas, --workers 2"),
        ("production", "production layout: nginx auto + static tree, cas serve behind"),
        ("nginx-1w", "nginx, worker_processes 1"), ("nginx", "nginx, worker_processes auto")]


def table(results: dict[str, Any], size_mib: int, ref: str = "nginx") -> str:
    tail = 64 if size_mib > 64 else size_mib / 4
    cols = [("full", "MBps", f"{size_mib} MiB GET MB/s"), ("range_tail", "MBps", f"last {tail:g} MiB Range MB/s"),
            ("small", "rps", "1 KiB GET req/s"), ("not_modified", "rps", "channel 304 req/s")]
    head = "| server | " + " | ".join(c[2] for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for key, label in ROWS:
        if key not in results:
            continue
        cells = []
        for case, field, _ in cols:
            value = results[key][case][field]
            refv = results[ref][case][field]
            cells.append(f"{value:,.0f} ({value / refv:.2f}x)" if key != ref else f"{value:,.0f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir, removed)")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5, help="downloads per case (median kept)")
    ap.add_argument("--publish-runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds per load run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--loadgen", choices=["wrk", "python"], default="wrk" if WRK else "python")
    ap.add_argument("--profile", action="store_true", help="py-spy the 1-worker server under load")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve.json")
    args = ap.parse_args()
    if args.loadgen == "wrk" and not WRK:
        args.loadgen = "python"

    args.out.parent.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="cas-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        log(f"work dir {work}; writing {args.size_mib} MiB + 1 KiB tree")
        tree = work / "tree"
        if tree.exists():
            shutil.rmtree(tree)
        make_tree(tree, args.size_mib)
        log(f"publishing {args.publish_runs}x")
        pub, store = bench_publish(work, tree, args.publish_runs)
        log(f"  publish {pub['publish_MBps']} MB/s (median {pub['median_s']} s); "
            f"sha256sum {pub['sha256sum_MBps']} MB/s")
        big, small = blake3_file(tree / "big.bin"), blake3_file(tree / "small.bin")
        big_size = (tree / "big.bin").stat().st_size
        for d in (big, small):
            if not (store / "objects" / d[:2] / d[2:]).is_file():
                raise RuntimeError(f"object {d} is not at objects/{d[:2]}/{d[2:]} in {store}")

        results: dict[str, Any] = {}
        profiles: dict[str, Any] = {}
        channel_doc = work / "stable.json"
        for key, _label in ROWS:
            port = free_port()
            server: Any
            if key.startswith("cas"):
                server = cas_server(key, store, 2 if key == "cas-2w" else 1, port)
                log(f"{key}: {' '.join(server.cmd)}")
            elif key == "production":
                server = production_layout(work, store, port)
                log(f"{key}: nginx with docs/nginx-production.conf on port {port}, cas serve behind it")
            else:
                server = nginx_server(work, key, store, channel_doc, "1" if key == "nginx-1w" else "auto", port)
                log(f"{key}: {' '.join(server.cmd)}")
            with server as server:
                if key == "cas-1w":  # nginx serves the very bytes cas serves, as a static file
                    with urllib.request.urlopen(f"{server.base}/v1/products/bench/channels/stable") as r:
                        channel_doc.write_bytes(r.read())
                results[key] = measure(server, args, big, small, big_size)
                if key == "cas-1w" and args.profile:
                    log("  profiling cas-1w with py-spy")
                    profiles = profile(server, args, small, args.out.parent)

        ref = results["nginx"]
        report = {
            "machine": versions(),
            "settings": {"size_mib": args.size_mib, "repeat": args.repeat, "duration_s": args.duration,
                         "threads": args.threads, "conns": args.conns, "loadgen": args.loadgen,
                         "reference": "nginx (worker_processes auto)"},
            "publish": pub,
            "serve": results,
            "ratios_to_nginx": {k: {c: round(results[k][c][f] / ref[c][f], 3)
                                    for c, f in (("full", "MBps"), ("range_tail", "MBps"),
                                                 ("small", "rps"), ("not_modified", "rps"))}
                                for k in results},
            "targets": {
                "download_ge_0.5x_nginx": {k: results[k]["full"]["MBps"] / ref["full"]["MBps"] >= 0.5
                                           for k in ("cas-1w", "cas-2w")},
                "not_modified_ge_20k_rps": {k: results[k]["not_modified"]["rps"] >= 20_000
                                            for k in ("cas-1w", "cas-2w")},
                "small_ge_10k_rps": {k: results[k]["small"]["rps"] >= 10_000 for k in ("cas-1w", "cas-2w")},
                # issue 17 item 5: the production layout at >= 0.9x bare nginx, side by side
                "production_ge_0.9x_nginx": {c: results["production"][c][f] / ref[c][f] >= 0.9
                                             for c, f in (("full", "MBps"), ("range_tail", "MBps"),
                                                          ("small", "rps"), ("not_modified", "rps"))},
            },
        }
        if profiles:
            report["profile"] = profiles
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")

        m = report["machine"]
        print(f"\n{m['date']}  {m['nproc']} cores ({m['cpu']}), Python {m['python']}, uvicorn {m['uvicorn']}, "
              f"starlette {m['starlette']}, {m['nginx']}, load: {args.loadgen} -t{args.threads} "
              f"-c{args.conns} -d{args.duration}s\n")
        print(table(results, args.size_mib))
        print(f"\npublish {args.size_mib} MiB + 1 KiB: {pub['publish_MBps']} MB/s (median {pub['median_s']} s "
              f"incl. ~{pub['cli_start_s']} s CLI start) vs sha256sum {pub['sha256sum_MBps']} MB/s "
              f"(in-process BLAKE3 {pub['blake3_inprocess_MBps']} MB/s)")
        print("targets:", json.dumps(report["targets"]))
        print(f"written {args.out}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
