#!/usr/bin/env python3
"""Capacity figures of the scale-out layout on real engines (a script, not a test; issue 17, item 7).

Everything runs on this machine, every engine real and really started:

- PostgreSQL: a private cluster from ``scripts/postgres-test-server.sh`` (through
  ``tests/pg_fixture.py``'s helpers; note that script's cluster runs with ``fsync=off``);
- SeaweedFS: ``weed server -s3`` (``tests/seaweed_fixture.py``'s ``SeaweedProcess``);
- ``cas serve`` replicas, ``cas deltas worker`` build hosts and nginx (configured as in
  ``tests/test_topology.py``, without its slow-download ``limit_rate`` and its access log).

It measures:

1. **Reads** (``wrk -t2 -c32 -d5s``, or serve.py's Python load generator without wrk): the
   requests a fleet makes -- channel document 304 (``If-None-Match``), channel document 200,
   a 1 KiB object, a manifest delta (``/releases/<new>/delta?from=<old>``), a manifest --
   against one layout at a time (a function per layout, ``LAYOUTS``): the embedded default
   (SQLite + filesystem), one replica on PostgreSQL + SeaweedFS, nginx balancing two such
   replicas, and the production layout where nginx serves the documents from the static tree
   (issue 17, item 5: docs/nginx-production.conf in front of the two replicas).
   Besides requests/s, the CPU seconds every component spent (replicas, nginx, PostgreSQL
   backends, SeaweedFS; from /proc), so requests per CPU-second can be given even though the
   load generator shares the machine's cores.
2. **Delta builds per worker core**: one ``cas deltas worker`` with ``delta_workers = 1`` runs
   throughout (a build host with one core's worth of builds).  For each chosen corpus pair
   (benchmarks/corpus.py, the cached trees in ``--corpus``) the old release is published
   (released) and its builds drained; the new one is published as a draft (objects stored,
   nothing queued), then moved to testing, which queues its builds, and the worker builds
   them: jobs/s, MB of changed files/s, seconds per release, and the worker's CPU seconds
   (its build children included).
3. **Storage per release**: bytes the new release adds to the bucket (its objects after dedup,
   then the compressed forms, patches and bundles its builds add), PostgreSQL database growth
   and rows added per table, against the tree's size; and the size of one client report row.
4. **Sizing** (``sizing()``): the figures above scaled to a fleet (default: 1 million devices
   polling hourly, a CI publishing 100 releases a day), every assumption in the JSON.

Prints tables, writes benchmarks/results/scale.json.

    python benchmarks/scale.py [--work DIR] [--corpus /tmp/deltacas-peers] [--pairs a,b,...]
                               [--duration 5] [--skip-reads] [--skip-builds]
    python benchmarks/scale.py --sizing-from benchmarks/results/scale.json   # sizing only

The machine's cores are shared by the load generator, the engines and anything else running:
requests/s and build seconds are what it gave; the CPU seconds per request and per release
(and ``cpu_share_*``: how much of a core a CPU-bound process got) are what the sizing uses.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

import serve  # noqa: E402  (benchmarks/serve.py: Server, wrk, pyload, status_and_etag, versions)
from corpus import CORPUS, Pair, release_tree  # noqa: E402
from pg_fixture import SCRIPT as PG_SCRIPT  # noqa: E402
from pg_fixture import PostgresServer  # noqa: E402
from s3_fixture import CREDENTIALS, S3Server  # noqa: E402
from seaweed_fixture import SeaweedProcess  # noqa: E402

from deltagen.digests import blake3_file  # noqa: E402

CAS = [sys.executable, "-m", "cas.cli"]
KiB, MiB = 1 << 10, 1 << 20
# Small to medium pairs of different kinds (not pyarrow/postgresql: minutes each).
DEFAULT_PAIRS = ["requests", "tzdata", "pyyaml", "pydantic_core", "react_dom", "pillow", "libssl3"]
SERVE_PAIR = "pyyaml"  # the release pair the read benchmark serves (24 files)
TICK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd[2:6]))} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc


def ensure_wrk() -> None:
    """wrk from apt when missing (serve.py falls back to its Python load generator otherwise)."""
    if shutil.which("wrk") is None and os.geteuid() == 0:
        log("installing wrk (apt-get) ...")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, env=env).returncode:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, env=env)
    serve.WRK = shutil.which("wrk")


def cpu_share() -> dict[str, float]:
    """How much of a core this machine gives a CPU-bound process right now: a fixed Python loop
    in a child (at this script's niceness), its wall time against its CPU time.  On a shared or
    oversubscribed machine wall > CPU, and every wall-time figure of this run is stretched alike."""
    code = ("import time; w = time.perf_counter(); c = time.process_time(); sum(i * i for i in range(4_000_000)); "
            "print(time.perf_counter() - w, time.process_time() - c)")
    wall, cpu = map(float, run([sys.executable, "-c", code]).stdout.split())
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "wall_over_cpu": round(wall / cpu, 2)}


# ---------------------------------------------------------------- engines

@dataclass
class Engines:
    pg: PostgresServer
    pg_dir: Path
    weed: SeaweedProcess
    s3: S3Server

    def postmaster_pid(self) -> int:
        return int((self.pg_dir / "data" / "postmaster.pid").read_text().split()[0])


@contextlib.contextmanager
def engines(work: Path) -> Iterator[Engines]:
    """PostgreSQL (scripts/postgres-test-server.sh, as tests/pg_fixture.py starts it) and
    SeaweedFS (tests/seaweed_fixture.py's SeaweedProcess), stopped on the way out."""
    os.environ.update(CREDENTIALS)
    pg_dir = Path(tempfile.mkdtemp(prefix="cas-pg-", dir="/tmp"))  # outside root's private dirs
    (pg_dir / "owner.pid").write_text(str(os.getpid()))  # pg_fixture's orphan sweep reads it
    weed = SeaweedProcess(work / "seaweedfs")
    (work / "seaweedfs").mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run([str(PG_SCRIPT), "start", str(pg_dir), str(serve.free_port())],
                              capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {proc.stderr.strip()}")
        weed.start()
        yield Engines(PostgresServer(proc.stdout.strip().splitlines()[-1]), pg_dir, weed, S3Server(weed.endpoint))
    finally:
        weed.stop()
        subprocess.run([str(PG_SCRIPT), "stop", str(pg_dir)], capture_output=True, timeout=60)


def scale_config(eng: Engines, url: str, bucket: str, **extra: Any) -> str:
    return eng.s3.config(bucket, **extra) + f'metadata_url = "{url}"\n'


# ---------------------------------------------------------------- CPU accounting (/proc)

def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


class CpuMeter:
    """CPU seconds spent by groups of processes (each a root pid and its descendants) over a
    stretch of time; processes that appear or end within it count with what /proc shows."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def sample(self) -> dict[str, dict[int, float]]:
        return {name: {p: cpu_seconds(p) for root in roots for p in descendants(root)}
                for name, roots in self.groups.items()}

    @staticmethod
    def diff(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
        return {name: round(sum(t - before[name].get(p, 0.0) for p, t in after[name].items()), 2)
                for name in after}


# ---------------------------------------------------------------- 1. reads, a function per layout

@dataclass
class Running:
    """A started layout: its base URL and the processes whose CPU the read benchmark counts."""
    base: str
    cpu_groups: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class ReadContext:
    work: Path
    eng: Engines
    embedded_store: Path
    replica_stores: list[Path]


def cas_replica(name: str, store: Path) -> serve.Server:
    return serve.cas_server(name, store, 1, serve.free_port())


@contextlib.contextmanager
def layout_embedded(ctx: ReadContext) -> Iterator[Running]:
    """The embedded default: one `cas serve` on SQLite + the filesystem store."""
    with cas_replica("embedded", ctx.embedded_store) as srv:
        yield Running(srv.base, {"cas serve": [srv.proc.pid]})


@contextlib.contextmanager
def layout_replica(ctx: ReadContext) -> Iterator[Running]:
    """One `cas serve` replica on PostgreSQL + SeaweedFS (S3)."""
    with cas_replica("replica", ctx.replica_stores[0]) as srv:
        yield Running(srv.base, {"cas serve": [srv.proc.pid], "postgresql": [ctx.eng.postmaster_pid()],
                                 "seaweedfs": [ctx.eng.weed.proc.pid]})


def nginx_balancer(work: Path, ports: list[int]) -> serve.Server:
    """nginx balancing the replicas as tests/test_topology.py configures it (upstream with
    keepalive, HTTP/1.1 to the upstream, retry on error/timeout/502/503), minus its
    slow-download limit_rate and access log; worker_processes auto."""
    prefix = work / "nginx-balancer"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    user = "user root root;" if os.geteuid() == 0 else ""
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in ports)
    port = serve.free_port()
    (prefix / "nginx.conf").write_text(f"""
{user}
worker_processes auto;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream deltacas {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_next_upstream error timeout http_502 http_503;
        proxy_connect_timeout 2s;
        location /v1/objects/ {{
            proxy_pass http://deltacas;
            proxy_buffering off;
        }}
        location / {{
            proxy_pass http://deltacas;
        }}
    }}
}}
""")
    return serve.Server("nginx-balancer", [serve.NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")],
                        port, "/healthz")


@contextlib.contextmanager
def layout_nginx_two_replicas(ctx: ReadContext) -> Iterator[Running]:
    """nginx balancing two replicas (separate local store dirs) on PostgreSQL + SeaweedFS."""
    with contextlib.ExitStack() as stack:
        reps = [stack.enter_context(cas_replica(f"replica-{i}", s)) for i, s in enumerate(ctx.replica_stores)]
        lb = stack.enter_context(nginx_balancer(ctx.work, [r.port for r in reps]))
        yield Running(lb.base, {"cas serve": [r.proc.pid for r in reps], "nginx": [lb.proc.pid],
                                "postgresql": [ctx.eng.postmaster_pid()], "seaweedfs": [ctx.eng.weed.proc.pid]})


@contextlib.contextmanager
def layout_production(ctx: ReadContext) -> Iterator[Running]:
    """The production layout (issue 17, item 5; docs/deploy.md): nginx running
    docs/nginx-production.conf in front of the two replicas, which keep one static document
    tree (``static_tree``).  Documents come from the tree; objects live in the S3 bucket,
    so nginx finds no file for them and hands them to the replicas (``try_files`` fallback)."""
    from cas.static import render_nginx_site
    tree = ctx.work / "static-tree"
    for store in ctx.replica_stores:
        config = store / "config.toml"
        text = config.read_text()
        if "static_tree" not in text:
            config.write_text(text + f'static_tree = "{tree}"\n')
    with contextlib.ExitStack() as stack:
        reps = [stack.enter_context(cas_replica(f"replica-{i}", s)) for i, s in enumerate(ctx.replica_stores)]
        channel = tree / "v1" / "products" / "fleet" / "channels" / "stable"
        deadline = time.monotonic() + 60
        while not channel.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the static tree has no {channel} after 60 s")
            time.sleep(0.1)
        port = serve.free_port()
        site = render_nginx_site((ROOT / "docs" / "nginx-production.conf").read_text(), listen=f"127.0.0.1:{port}",
                                 upstreams=[f"127.0.0.1:{r.port}" for r in reps], store=ctx.replica_stores[0],
                                 tree=tree)
        ngx = stack.enter_context(serve.nginx_server(ctx.work, "production", ctx.replica_stores[0], channel,
                                                     "auto", port, site=site))
        yield Running(ngx.base, {"cas serve": [r.proc.pid for r in reps], "nginx": [ngx.proc.pid],
                                 "postgresql": [ctx.eng.postmaster_pid()], "seaweedfs": [ctx.eng.weed.proc.pid]})


LAYOUTS: list[tuple[str, str, Any]] = [
    ("embedded", "embedded default: 1 `cas serve`, SQLite + filesystem", layout_embedded),
    ("replica", "1 replica, PostgreSQL + SeaweedFS", layout_replica),
    ("nginx-2", "nginx balancing 2 replicas, PostgreSQL + SeaweedFS", layout_nginx_two_replicas),
    ("production", "production layout: docs/nginx-production.conf + 2 replicas keeping one static tree, "
     "PostgreSQL + SeaweedFS", layout_production),
]
CASES = [("channel_304", "channel 304"), ("channel_200", "channel 200"), ("object_1k", "1 KiB object"),
         ("delta", "delta document"), ("manifest", "manifest")]


@dataclass
class ServedRelease:
    product: str
    old: str
    new: str
    small: str  # digest of the 1 KiB object


def publish(store: Path, tree: Path, product: str, version: str, status: str | None = None,
            channel: str | None = None) -> float:
    cmd = CAS + ["publish", tree, "--product", product, "--version", version, "--store", store]
    if status:
        cmd += ["--status", status]
    if channel:
        cmd += ["--channel", channel]
    started = time.perf_counter()
    run(cmd, timeout=1800)
    return time.perf_counter() - started


def prepare_reads(work: Path, eng: Engines, corpus: Path) -> tuple[ReadContext, ServedRelease, dict[str, Any]]:
    """The served data set: the SERVE_PAIR release pair plus a 1 KiB file, published (released,
    channel stable) into an embedded store and into a PostgreSQL + SeaweedFS store, deltas built."""
    pair = next(p for p in CORPUS if p.name == SERVE_PAIR)
    trees = []
    small = os.urandom(KiB)
    for version in (pair.old, pair.new):
        tree = work / "served" / version
        shutil.copytree(release_tree(pair, version, corpus), tree, symlinks=True)
        (tree / "bench-1k.bin").write_bytes(small)
        trees.append(tree)
    rel = ServedRelease("fleet", pair.old, pair.new, blake3_file(trees[0] / "bench-1k.bin"))
    embedded = work / "embedded-store"
    run(CAS + ["keys", "init", "--store", embedded])
    url, bucket = eng.pg.new_database(), eng.s3.new_bucket()
    stores = [work / "replica-a", work / "replica-b"]
    for store in stores:
        store.mkdir()
        (store / "config.toml").write_text(scale_config(eng, url, bucket, delta_builder=False))
    run(CAS + ["keys", "init", "--store", stores[0]])
    shutil.copytree(stores[0] / "keys", stores[1] / "keys")  # replicas share keys and nothing local
    for store in (embedded, stores[0]):
        for tree, version in zip(trees, (rel.old, rel.new)):
            publish(store, tree, rel.product, version, "released", "stable")
        run(CAS + ["deltas", "build", "--store", store], timeout=1800)
    info = {"pair": pair.label, "files": sum(1 for p in trees[1].rglob("*") if p.is_file()),
            "tree_bytes": sum(p.stat().st_size for p in trees[1].rglob("*") if p.is_file())}
    return ReadContext(work, eng, embedded, stores), rel, info


def request_paths(rel: ServedRelease) -> dict[str, str]:
    p = f"/v1/products/{rel.product}"
    return {"channel": f"{p}/channels/stable", "object_1k": f"/v1/objects/{rel.small}",
            "delta": f"{p}/releases/{rel.new}/delta?from={rel.old}", "manifest": f"{p}/releases/{rel.new}/manifest"}


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    """Status, headers (case-insensitive) and body of one GET."""
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def check_answers(base: str, rel: ServedRelease) -> tuple[dict[str, tuple[str, dict[str, str]]], dict[str, Any]]:
    """Each case's URL and headers, after checking the layout answers it as a fleet expects:
    200s with bodies, the delta complete (immutable), a 304 for the channel's own ETag."""
    paths = request_paths(rel)
    answers: dict[str, Any] = {}
    for name, path in paths.items():
        status, headers, body = fetch(base + path)
        if status != 200 or not body:
            raise RuntimeError(f"{base}{path}: HTTP {status}")
        answers[name] = {"bytes": len(body), "cache_control": headers.get("Cache-Control"),
                         "etag": headers.get("ETag")}
    if "immutable" not in (answers["delta"]["cache_control"] or ""):
        raise RuntimeError(f"the delta document is not complete yet: {answers['delta']}")
    etag = answers["channel"]["etag"]
    status, _, _ = fetch(base + paths["channel"], {"If-None-Match": etag})
    if status != 304:
        raise RuntimeError(f"channel If-None-Match {etag}: HTTP {status}, not 304")
    cases = {"channel_304": (paths["channel"], {"If-None-Match": etag}), "channel_200": (paths["channel"], {}),
             "object_1k": (paths["object_1k"], {}), "delta": (paths["delta"], {}),
             "manifest": (paths["manifest"], {})}
    return cases, answers


def measure_layout(running: Running, rel: ServedRelease, args: argparse.Namespace) -> dict[str, Any]:
    load = serve.wrk if args.loadgen == "wrk" else serve.pyload
    cases, answers = check_answers(running.base, rel)
    meter = CpuMeter(running.cpu_groups)
    out: dict[str, Any] = {"responses": answers}
    for case, (path, headers) in cases.items():
        url = running.base + path
        load(url, 1, args.threads, args.conns, headers)  # warm-up (caches, connections, pools)
        before = meter.sample()
        res = load(url, args.duration, args.threads, args.conns, headers)
        cpu = CpuMeter.diff(before, meter.sample())
        res["cpu_s"] = cpu
        total = res["requests"] or 1
        res["cpu_ms_per_request"] = {k: round(1000 * v / total, 4) for k, v in cpu.items()}
        server_cpu = cpu.get("cas serve", 0.0)
        res["rps_per_cas_cpu_s"] = round(total / server_cpu) if server_cpu else None
        log(f"    {case}: {res['rps']:,} req/s (p99 {res.get('p99_ms')} ms, non-2xx/3xx {res['non_2xx_3xx']}), "
            f"cpu {cpu}")
        out[case] = res
    return out


def bench_reads(work: Path, eng: Engines, args: argparse.Namespace) -> dict[str, Any]:
    log("reads: publishing the served release pair into both stores ...")
    ctx, rel, info = prepare_reads(work, eng, Path(args.corpus))
    results: dict[str, Any] = {"served": {**info, "product": rel.product, "old": rel.old, "new": rel.new}}
    for key, label, fn in LAYOUTS:
        if fn is None:
            results[key] = {"label": label, "not_measured": "reads served by nginx (issue 17, item 5) are built "
                            "on another branch; fill layout_production in benchmarks/scale.py after merging it"}
            continue
        log(f"reads: {label}")
        with fn(ctx) as running:
            results[key] = {"label": label, **measure_layout(running, rel, args)}
    return results


def reads_table(reads: dict[str, Any]) -> str:
    lines = ["| layout | " + " | ".join(f"{label} req/s" for _, label in CASES) + " |",
             "|---|" + "---:|" * len(CASES)]
    for key, label, _ in LAYOUTS:
        row = reads.get(key)
        if row is None:
            continue
        if "not_measured" in row:
            lines.append(f"| {label} | " + " | ".join("to be measured" for _ in CASES) + " |")
            continue
        lines.append(f"| {label} | " + " | ".join(f"{row[c]['rps']:,}" for c, _ in CASES) + " |")
    return "\n".join(lines)


def cpu_table(reads: dict[str, Any]) -> str:
    """CPU milliseconds per request, per component (the load generator excluded)."""
    lines = ["| layout | request | " + " | ".join(["cas serve", "nginx", "postgresql", "seaweedfs"])
             + " | requests per cas-serve CPU-second |", "|---|---|---:|---:|---:|---:|---:|"]
    for key, _label, _ in LAYOUTS:
        row = reads.get(key)
        if row is None or "not_measured" in row:
            continue
        for case, clabel in CASES:
            per = row[case]["cpu_ms_per_request"]
            cells = [f"{per[k]:.3f}" if k in per else "-" for k in ("cas serve", "nginx", "postgresql", "seaweedfs")]
            lines.append(f"| {key} | {clabel} | " + " | ".join(cells) + f" | {row[case]['rps_per_cas_cpu_s'] or '-':,} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- 2 + 3. builds and storage

class ScaleStore:
    """A PostgreSQL database + a SeaweedFS bucket, a publisher directory and the probes."""

    def __init__(self, work: Path, eng: Engines) -> None:
        self.eng, self.work = eng, work
        self.url, self.bucket = eng.pg.new_database(), eng.s3.new_bucket()
        self.config = scale_config(eng, self.url, self.bucket, delta_builder=False) + "delta_poll_seconds = 0.2\n"
        self.publisher = work / "publisher"
        self.publisher.mkdir()
        (self.publisher / "config.toml").write_text(self.config)
        run(CAS + ["keys", "init", "--store", self.publisher])

    @staticmethod
    def server_version(url: str) -> str:
        import psycopg
        with psycopg.connect(url) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]

    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        import psycopg
        with psycopg.connect(self.url) as conn:
            return [tuple(r) for r in conn.execute(query, params)]

    def snapshot(self) -> dict[str, Any]:
        client = self.eng.s3.client()
        count = size = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for obj in page.get("Contents", []):
                count += 1
                size += obj["Size"]
        tables = [r[0] for r in self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        rows = {t: self.sql(f'SELECT count(*) FROM "{t}"')[0][0] for t in tables}
        return {"bucket_objects": count, "bucket_bytes": size,
                "db_bytes": self.sql("SELECT pg_database_size(current_database())")[0][0],
                "rows": {t: n for t, n in rows.items() if n}}

    def bytes_per_row(self) -> dict[str, float]:
        """Mean bytes per row (table, TOAST and indexes) of each non-empty table, at the end."""
        out = {}
        for (table,) in self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"):
            rows = self.sql(f'SELECT count(*) FROM "{table}"')[0][0]
            if rows:
                out[table] = round(self.sql("SELECT pg_total_relation_size(%s)", (table,))[0][0] / rows, 1)
        return out

    def queue_counts(self) -> dict[str, int]:
        return dict(self.sql("SELECT state, count(*) FROM delta_jobs GROUP BY state"))  # type: ignore[arg-type]

    def start_worker(self, workers: int = 1) -> None:
        """One `cas deltas worker` (``delta_workers`` builds at a time) on a directory of its own,
        as on a build host; it runs for the whole benchmark, idle between releases."""
        home = self.work / "worker"
        home.mkdir()
        (home / "config.toml").write_text(self.config + f"delta_workers = {workers}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAS_")}
        self.worker_log = self.work / "worker.log"
        with open(self.worker_log, "wb") as wlog:
            self.worker = subprocess.Popen(CAS + ["deltas", "worker", "--store", str(home)], cwd=ROOT, env=env,
                                           stdout=wlog, stderr=subprocess.STDOUT)
        self.workers = workers
        time.sleep(3)  # started and polling: its start-up is not counted in any release's builds

    def stop_worker(self) -> None:
        self.worker.terminate()
        try:
            self.worker.wait(60)
        except subprocess.TimeoutExpired:
            self.worker.kill()
            self.worker.wait()

    def worker_cpu(self) -> float:
        """The worker's CPU seconds, its finished build children included (cutime + cstime)."""
        fields = Path(f"/proc/{self.worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15]) / TICK

    def delta(self, product: str, old: str, new: str) -> dict[str, Any]:
        """What a device going from ``old`` to ``new`` downloads: the manifest delta document
        (as the server makes it, ``cas.deltas.delta_document``) and the recipe bytes it offers."""
        from cas import deltas, releases
        from cas.config import load_config
        from cas.repo import open_repo
        from casformat.canonical import canonical_bytes
        if not hasattr(self, "repo"):
            self.repo = open_repo(load_config(self.publisher))
        target = releases.get_release(self.repo, product, new)
        doc = deltas.delta_document(self.repo, target, releases.get_release(self.repo, product, old))
        import gzip
        objects = {offers[0]["object"] for offers in doc["recipes"].values() if offers}
        body = canonical_bytes(doc)
        return {"complete": doc["complete"], "document_bytes": len(body), "objects": len(objects),
                "document_gzip_bytes": len(gzip.compress(body, 6)),
                "download_bytes": doc["bytes"]["recipes"], "full_bytes": doc["bytes"]["full"]}

    def cpu_sample(self) -> tuple[float, dict[str, dict[int, float]]]:
        meter = CpuMeter({"postgresql": [self.eng.postmaster_pid()], "seaweedfs": [self.eng.weed.proc.pid]})
        return self.worker_cpu(), meter.sample()

    def build(self, since: float, cpu_before: tuple[float, dict[str, dict[int, float]]],
              timeout: float = 1800) -> dict[str, Any]:
        """Wait until the worker has built everything queued since ``since``; wall time from
        ``since``, CPU seconds since ``cpu_before`` (the worker with its build children, and the
        PostgreSQL and SeaweedFS processes), the jobs and what they stored."""
        while True:
            counts = self.queue_counts()
            if not counts.get("queued") and not counts.get("running"):
                break
            if self.worker.poll() is not None:
                raise RuntimeError(f"worker exited: {self.worker_log.read_text()[-2000:]}")
            if time.time() - since > timeout:
                raise RuntimeError(f"builds not done in {timeout} s: {counts}")
            time.sleep(0.05)
        wall = time.time() - since
        worker_after, engines_after = self.cpu_sample()
        cpu = worker_after - cpu_before[0]
        engines_cpu = CpuMeter.diff(cpu_before[1], engines_after)
        jobs, first, last, busy, failed, bundles = self.sql(
            "SELECT count(*), min(started), max(finished), sum(finished - started), "
            "sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), sum(CASE WHEN kind = 'bundle' THEN 1 ELSE 0 END) "
            "FROM delta_jobs WHERE queued >= %s", (since,))[0]
        recipes = self.sql("SELECT kind, count(*), sum(size), sum(build_seconds) FROM recipes WHERE created >= %s "
                           "GROUP BY kind", (since,))
        bundle_rows = self.sql("SELECT count(*), coalesce(sum(size), 0), coalesce(sum(build_seconds), 0) FROM bundles "
                               "WHERE created >= %s", (since,))[0]
        return {"workers": self.workers, "wall_s": round(wall, 2), "worker_cpu_s": round(cpu, 2),
                "engines_cpu_s": engines_cpu, "jobs": jobs, "bundle_jobs": bundles or 0, "failed": failed or 0,
                "build_span_s": round((last or 0) - (first or 0), 2), "job_busy_s": round(busy or 0, 2),
                "recipes": {k: {"count": n, "bytes": int(b), "build_s": round(s, 2)} for k, n, b, s in recipes},
                "bundles": {"count": bundle_rows[0], "bytes": int(bundle_rows[1]),
                            "build_s": round(float(bundle_rows[2]), 2)}}


def tree_stats(old: Path, new: Path) -> dict[str, Any]:
    from cas.trees import scan_tree
    olds = {e["blake3"] for e in scan_tree(old).entries if e["type"] == "file"}
    files = [e for e in scan_tree(new).entries if e["type"] == "file"]
    changed = {e["blake3"]: e["size"] for e in files if e["blake3"] not in olds}
    return {"files": len(files), "tree_bytes": sum(e["size"] for e in files),
            "changed_files": len(changed), "changed_bytes": sum(changed.values())}


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    rows = {t: b["rows"].get(t, 0) - a["rows"].get(t, 0) for t in set(a["rows"]) | set(b["rows"])}
    return {"bucket_objects": b["bucket_objects"] - a["bucket_objects"],
            "bucket_bytes": b["bucket_bytes"] - a["bucket_bytes"], "db_bytes": b["db_bytes"] - a["db_bytes"],
            "rows": {t: n for t, n in sorted(rows.items()) if n}}


def version_name(version: str) -> str:
    """A Debian version (``1:2.39.5-0+deb12u2``, ``3.0.20-1~deb12u2``) as a release name."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", version)


def bench_pair(store: ScaleStore, pair: Pair, corpus: Path) -> dict[str, Any]:
    old, new = release_tree(pair, pair.old, corpus), release_tree(pair, pair.new, corpus)
    product = f"bench-{pair.name}"
    pair = dataclasses.replace(pair, old=version_name(pair.old), new=version_name(pair.new))
    row: dict[str, Any] = {"kind": pair.kind, "source": pair.source, **tree_stats(old, new)}
    s0 = store.snapshot()
    since, cpu = time.time(), store.cpu_sample()
    publish(store.publisher, old, product, pair.old, "released")
    row["first_release"] = store.build(since, cpu)  # compressed forms of every file
    s1 = store.snapshot()
    # The new release as a draft (its objects stored, nothing queued), then testing: builds queued.
    row["publish_s"] = round(publish(store.publisher, new, product, pair.new), 2)
    s2 = store.snapshot()
    since, cpu = time.time(), store.cpu_sample()
    run(CAS + ["release", "status", product, pair.new, "testing", "--store", store.publisher])
    row["builds"] = store.build(since, cpu)
    run(CAS + ["release", "status", product, pair.new, "released", "--store", store.publisher])
    row["delta"] = store.delta(product, pair.old, pair.new)
    s3 = store.snapshot()
    b = row["builds"]
    secs = b["build_span_s"]  # first job claimed -> last job recorded (wall_s adds up to 0.2 s of polling)
    b["jobs_per_s"] = round(b["jobs"] / secs, 2) if secs else None
    b["changed_MBps"] = round(row["changed_bytes"] / secs / 1e6, 2) if secs else None
    b["changed_MB_per_cpu_s"] = round(row["changed_bytes"] / b["worker_cpu_s"] / 1e6, 2) if b["worker_cpu_s"] else None
    row["storage"] = {"first_release": diff(s0, s1), "objects": diff(s1, s2), "derived": diff(s2, s3),
                      "release": diff(s1, s3)}
    return row


def report_row_bytes(store: ScaleStore, n: int = 5000) -> dict[str, Any]:
    """Bytes one client report takes in PostgreSQL (table + indexes), from ``n`` inserted
    through the metadata layer the server uses (``add_report``, one transaction each)."""
    import uuid

    from cas.metadata.factory import open_metadata
    meta = open_metadata(store.url, store.publisher)
    size = "SELECT pg_total_relation_size('reports')"
    before = store.sql(size)[0][0]
    started = time.perf_counter()
    try:
        for i in range(n):
            meta.add_report("bench-requests", str(uuid.uuid4()), "2.34.1", "2.34.2", "success", "",
                            reporter=f"token:fleet@10.0.{i % 256}.{i // 256 % 256}", counted=True,
                            ids_per_reporter=16, window_seconds=86400)
    finally:
        close = getattr(meta, "close", None)
        if close:
            close()
    elapsed = time.perf_counter() - started
    after = store.sql(size)[0][0]
    return {"reports": n, "bytes_per_report": round((after - before) / n, 1), "inserts_per_s": round(n / elapsed)}


def bench_builds(work: Path, eng: Engines, args: argparse.Namespace) -> dict[str, Any]:
    (work / "builds").mkdir()
    store = ScaleStore(work / "builds", eng)
    pairs = [p for name in args.pairs.split(",") for p in CORPUS if p.name == name]
    out: dict[str, Any] = {"pairs": {}}
    store.start_worker(1)
    try:
        for pair in pairs:
            log(f"builds: {pair.label} ...")
            started = time.perf_counter()
            try:
                out["pairs"][pair.label] = row = bench_pair(store, pair, Path(args.corpus))
            except Exception as exc:  # one pair failing does not end the run: it is reported
                log(f"  FAILED: {exc}")
                out.setdefault("failed", {})[pair.label] = str(exc)[-2000:]
                continue
            b = row["builds"]
            log(f"  {b['jobs']} jobs built in {b['build_span_s']} s ({b['worker_cpu_s']} CPU s), changed "
                f"{row['changed_bytes']:,} B; the release adds {row['storage']['release']['bucket_bytes']:,} B to "
                f"the bucket ({time.perf_counter() - started:.0f} s for the pair)")
    finally:
        store.stop_worker()
    log("storage: report rows ...")
    out["report_row"] = report_row_bytes(store)
    out["bytes_per_row"] = store.bytes_per_row()
    rows = list(out["pairs"].values())
    span = sum(r["builds"]["build_span_s"] for r in rows)
    cpu = sum(r["builds"]["worker_cpu_s"] for r in rows)
    out["totals"] = {"pairs": len(rows), "jobs": sum(r["builds"]["jobs"] for r in rows),
                     "changed_bytes": sum(r["changed_bytes"] for r in rows),
                     "tree_bytes": sum(r["tree_bytes"] for r in rows), "build_s": round(span, 2),
                     "build_worker_cpu_s": round(cpu, 2),
                     "release_bucket_bytes": sum(r["storage"]["release"]["bucket_bytes"] for r in rows),
                     "release_db_bytes": sum(r["storage"]["release"]["db_bytes"] for r in rows),
                     "failed_jobs": sum(r["builds"]["failed"] for r in rows)}
    t = out["totals"]
    t["jobs_per_s"] = round(t["jobs"] / span, 2) if span else None
    t["changed_MBps"] = round(t["changed_bytes"] / span / 1e6, 2) if span else None
    t["changed_MB_per_cpu_s"] = round(t["changed_bytes"] / cpu / 1e6, 2) if cpu else None
    t["seconds_per_release"] = round(span / len(rows), 1) if rows else None
    return out


def builds_table(builds: dict[str, Any]) -> str:
    lines = ["| pair | kind | tree MB | changed files / MB | jobs | build s | worker CPU s | jobs/s | "
             "changed MB/s | bucket bytes added: objects + derived = release | release / tree | "
             "PostgreSQL bytes added |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in builds["pairs"].items():
        b, s = r["builds"], r["storage"]
        lines.append(f"| {label} | {r['kind']} | {r['tree_bytes'] / 1e6:.1f} | {r['changed_files']} / "
                     f"{r['changed_bytes'] / 1e6:.1f} | {b['jobs']} | {b['build_span_s']:.1f} | {b['worker_cpu_s']:.1f} | "
                     f"{b['jobs_per_s']} | {b['changed_MBps']} | {s['objects']['bucket_bytes']:,} + "
                     f"{s['derived']['bucket_bytes']:,} = {s['release']['bucket_bytes']:,} | "
                     f"{s['release']['bucket_bytes'] / r['tree_bytes']:.2f} | {s['release']['db_bytes']:,} |")
    t = builds["totals"]
    lines.append(f"| **all {t['pairs']}** | | {t['tree_bytes'] / 1e6:.1f} | {t['changed_bytes'] / 1e6:.1f} MB | "
                 f"{t['jobs']} | {t['build_s']:.1f} | {t['build_worker_cpu_s']:.1f} | {t['jobs_per_s']} | "
                 f"{t['changed_MBps']} | {t['release_bucket_bytes']:,} | "
                 f"{t['release_bucket_bytes'] / t['tree_bytes']:.2f} | {t['release_db_bytes']:,} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- 4. sizing

ASSUMPTIONS = {
    "devices": 1_000_000,
    "poll_interval_s": 3600,
    # Polls are not spread evenly: devices that boot together (a shift start, a time zone's
    # morning), reconnect waves after a network or server outage, clients retrying together.
    "peak_factor": 4,
    "releases_per_day": 100,  # CI publishes these, each to testing (its builds queued)
    "channel_moves_per_day": 1,  # releases the fleet's channel moves to (the rest stay in testing)
    "devices_updating_per_move": 1.0,  # fraction of the fleet that downloads each move
    "delta_bases": 3,  # cas config default: patches from the last 3 shipped releases (+ the factory one)
    "reports_per_update": 1,
    "channel_max_age_s": 60,  # cas config channel_max_age_seconds
    "edge_caches": 20,  # CDN / nginx cache nodes in front of the replicas
    "postgres_pool_size": 10,  # cas config default, per process
    "core_utilisation": 0.5,  # headroom: a replica lost, bursts beyond the peak factor
    "response_304_bytes": 300,  # status line and headers of a 304 (ETag, Cache-Control, Date)
    "retain_releases": 100,  # `cas gc --retain`: releases kept per product
    "build_latency_target_s": 300,  # a release's deltas ready within 5 minutes of its publish
}


def _ceil(x: float) -> int:
    return int(-(-x // 1))


def sizing(reads: dict[str, Any] | None, builds: dict[str, Any] | None,
           a: dict[str, Any] = ASSUMPTIONS) -> dict[str, Any]:
    """The measured figures scaled to a fleet.  Keys starting ``measured_`` are this run's
    figures; everything else is derived from them and ``assumptions``."""
    out: dict[str, Any] = {"assumptions": a}
    polls = a["devices"] / a["poll_interval_s"]
    peak = polls * a["peak_factor"]
    updates = a["devices"] * a["devices_updating_per_move"]
    update_rate = updates / a["poll_interval_s"]  # a move reaches every device within one poll interval
    out["load"] = {"polls_per_s_average": round(polls, 1), "polls_per_s_peak": round(peak, 1),
                   "updates_per_move": int(updates), "updates_per_s_during_a_move": round(update_rate, 1),
                   "updates_per_s_peak": round(update_rate * a["peak_factor"], 1)}
    per_update: dict[str, float] = {}
    if builds and builds["pairs"]:
        rows = list(builds["pairs"].values())
        per_update = {k: sum(r["delta"][k] for r in rows) / len(rows)
                      for k in ("document_bytes", "document_gzip_bytes", "download_bytes", "objects")}
        out["measured_per_update_mean"] = {k: round(v, 1) for k, v in per_update.items()}
    # Edge caches: channel documents revalidated once per max-age per edge; deltas and objects
    # immutable, fetched once per edge.
    channel_origin = a["edge_caches"] / a["channel_max_age_s"]
    out["cache"] = {"channel_origin_requests_per_s": round(channel_origin, 2),
                    "channel_hit_rate_average": round(1 - channel_origin / polls, 5),
                    "channel_hit_rate_peak": round(1 - channel_origin / peak, 5),
                    "delta_and_object_hit_rate": round(1 - a["edge_caches"] / updates, 6)}
    if reads and "replica" in reads and "not_measured" not in reads["replica"]:
        rep = reads["replica"]

        def ms(case: str, part: str = "cas serve") -> float:
            return float(rep[case]["cpu_ms_per_request"].get(part, 0.0))

        def rps(case: str) -> float:
            return float(rep[case]["rps"])
        objects = per_update.get("objects", 1.0)
        # CPU bound: the replica's CPU per request (the load generator's share excluded).
        update_ms = ms("channel_200") + ms("delta") + objects * ms("object_1k")
        update_pg_ms = (ms("channel_200", "postgresql") + ms("delta", "postgresql")
                        + objects * ms("object_1k", "postgresql"))
        cpu_cores = a["peak_factor"] * (polls * ms("channel_304") + update_rate * update_ms) / 1000
        # Rate bound: one replica's measured requests/s here (where it waited on PostgreSQL or
        # SeaweedFS rather than used its CPU, this is the tighter bound).
        replica_s = a["peak_factor"] * (polls / rps("channel_304") + update_rate * (
            1 / rps("channel_200") + 1 / rps("delta") + objects / rps("object_1k")))
        out["origin_without_cache"] = {
            "measured_cas_cpu_ms": {c: ms(c) for c, _ in CASES},
            "measured_postgresql_cpu_ms": {c: ms(c, "postgresql") for c, _ in CASES},
            "measured_replica_rps": {c: rps(c) for c, _ in CASES},
            "cas_cores_peak_polls_only": round(peak * ms("channel_304") / 1000, 2),
            "replicas_peak_polls_only_by_rate": round(peak / rps("channel_304"), 2),
            "cas_cores_peak_during_a_move": round(cpu_cores, 1),
            "replicas_peak_during_a_move_by_rate": round(replica_s, 1),
            "replicas": max(2, _ceil(max(cpu_cores, replica_s) / a["core_utilisation"])),
            "postgresql_cores_peak_during_a_move": round(
                a["peak_factor"] * (polls * ms("channel_304", "postgresql") + update_rate * update_pg_ms) / 1000, 2)}
        origin_rps = channel_origin + a["edge_caches"] * (2 + objects) * a["channel_moves_per_day"] / 86400
        out["origin_with_cache"] = {"requests_per_s": round(origin_rps, 2),
                                    "cas_cores": round(origin_rps * max(ms("delta"), ms("channel_200")) / 1000, 4),
                                    "replicas": 2, "why": "two for availability; the read load is < 1 request/s"}
    if builds and builds["pairs"]:
        t = builds["totals"]
        n = t["pairs"]
        bases = a["delta_bases"] + 1  # the last delta_bases shipped releases and the factory release
        cpu_release = t["build_worker_cpu_s"] / n
        # Measured with one base per release.  With more, the compressed forms are built once and
        # the patches and bundles per base: at most bases x the one-base figure.
        cpu_release_bases = cpu_release * bases
        cpu_day = cpu_release_bases * a["releases_per_day"]
        out["builds"] = {"measured_worker_cpu_s_per_release_one_base": round(cpu_release, 2),
                         "measured_build_s_per_release_one_worker": round(t["build_s"] / n, 2),
                         "worker_cpu_s_per_release_all_bases_upper_bound": round(cpu_release_bases, 1),
                         "worker_cpu_s_per_day": round(cpu_day),
                         "worker_cores_average": round(cpu_day / 86400, 3),
                         "worker_cores_for_latency_target": max(1, _ceil(cpu_release_bases
                                                                         / a["build_latency_target_s"]))}
        rows = list(builds["pairs"].values())
        objects_b = sum(r["storage"]["objects"]["bucket_bytes"] for r in rows) / n
        compressed_b = sum(r["builds"]["recipes"].get("compressed", {}).get("bytes", 0) for r in rows) / n
        per_base_b = sum(r["builds"]["recipes"].get("patch", {}).get("bytes", 0) + r["builds"]["bundles"]["bytes"]
                         for r in rows) / n
        bucket_release = objects_b + compressed_b + bases * per_base_b
        per_row = builds["bytes_per_row"]
        rows_release: dict[str, float] = {}
        for r in rows:
            for table, count in r["storage"]["release"]["rows"].items():
                rows_release[table] = rows_release.get(table, 0) + count / n
        per_base_tables = ("recipes", "delta_jobs", "bundles", "delta_plans")
        db_release = sum(count * per_row.get(table, 0) * (bases if table in per_base_tables else 1)
                         for table, count in rows_release.items())
        report_bytes = builds["report_row"]["bytes_per_report"]
        reports_day = updates * a["channel_moves_per_day"] * a["reports_per_update"]
        out["storage"] = {
            "measured_bucket_bytes_per_release_one_base_mean": round(t["release_bucket_bytes"] / n),
            "measured_bucket_bytes_split_mean": {"objects": round(objects_b), "compressed": round(compressed_b),
                                                 "patches_and_bundles_per_base": round(per_base_b)},
            "measured_db_bytes_per_release_one_base_mean": round(t["release_db_bytes"] / n),
            "measured_db_rows_per_release_one_base_mean": {k: round(v, 1) for k, v in sorted(rows_release.items())},
            "measured_db_bytes_per_row": per_row,
            "measured_bytes_per_report": report_bytes,
            "bucket_bytes_per_release_all_bases": round(bucket_release),
            "bucket_bytes_per_day": round(bucket_release * a["releases_per_day"]),
            "bucket_bytes_per_year_no_gc": round(bucket_release * a["releases_per_day"] * 365),
            "bucket_bytes_of_retained_releases": round(bucket_release * a["retain_releases"]),  # + one full tree
            "db_bytes_per_release_all_bases": round(db_release),
            "db_release_bytes_per_year": round(db_release * a["releases_per_day"] * 365),
            "reports_per_day": int(reports_day),
            "db_report_bytes_per_day": round(reports_day * report_bytes),
            "db_report_bytes_per_year": round(reports_day * report_bytes * 365)}
    if per_update:
        def gbit(nbytes: float) -> float:
            return round(nbytes * 8 / a["poll_interval_s"] / 1e9, 3)
        move_bytes = updates * (per_update["document_bytes"] + per_update["download_bytes"])
        move_gzip = updates * (per_update["document_gzip_bytes"] + per_update["download_bytes"])
        out["bandwidth"] = {
            "edge_bytes_per_move": round(move_bytes),
            "edge_bytes_per_move_documents_gzipped": round(move_gzip),
            "edge_egress_gbit_s_during_a_move": gbit(move_bytes),
            "edge_egress_gbit_s_peak": round(gbit(move_bytes) * a["peak_factor"], 3),
            "edge_egress_gbit_s_peak_documents_gzipped": round(gbit(move_gzip) * a["peak_factor"], 3),
            "poll_egress_mbit_s_peak": round(peak * a["response_304_bytes"] * 8 / 1e6, 2),
            "origin_bytes_per_move": round(a["edge_caches"] * (per_update["document_bytes"]
                                                               + per_update["download_bytes"]))}
    workers = max(2, out.get("builds", {}).get("worker_cores_for_latency_target", 1))  # two for availability
    out["postgresql_connections"] = {
        "formula": "(replicas + build workers) x postgres_pool_size (+ tools)", "build_workers": workers,
        "with_cache": (out.get("origin_with_cache", {}).get("replicas", 2) + workers) * a["postgres_pool_size"],
        "without_cache": (out.get("origin_without_cache", {}).get("replicas", 2) + workers) * a["postgres_pool_size"]}
    return out


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (default: a temp dir, removed)")
    ap.add_argument("--corpus", default="/tmp/deltacas-peers", help="benchmarks/corpus.py work dir (trees cached)")
    ap.add_argument("--pairs", default=",".join(DEFAULT_PAIRS), help="corpus pairs for builds and storage")
    ap.add_argument("--duration", type=int, default=5, help="seconds per load run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--skip-reads", action="store_true")
    ap.add_argument("--skip-builds", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    ap.add_argument("--sizing-from", type=Path, default=None, metavar="JSON",
                    help="measure nothing: recompute the sizing of an earlier result (after changing ASSUMPTIONS)")
    args = ap.parse_args()
    if args.sizing_from:
        report = json.loads(args.sizing_from.read_text())
        report["sizing"] = sizing(report.get("reads"), report.get("builds"))
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["sizing"], indent=1))
        return 0
    ensure_wrk()
    args.loadgen = "wrk" if serve.WRK else "python"
    work = args.work or Path(tempfile.mkdtemp(prefix="cas-scale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "machine": {**serve.versions(), "loadavg_at_start": os.getloadavg(), "nice": os.nice(0),
                    "cpu_share_at_start": cpu_share()},
        "settings": {"duration_s": args.duration, "threads": args.threads, "conns": args.conns,
                     "loadgen": args.loadgen, "pairs": args.pairs,
                     "note": "the load generator, the servers, PostgreSQL and SeaweedFS share this machine's "
                             f"{os.cpu_count()} cores; PostgreSQL runs with fsync=off "
                             "(scripts/postgres-test-server.sh)"}}
    try:
        with engines(work) as eng:
            report["machine"]["postgresql"] = ScaleStore.server_version(eng.pg.url)
            report["machine"]["seaweedfs"] = subprocess.run(
                [shutil.which("weed") or "weed", "version"], capture_output=True, text=True).stdout.strip()
            if not args.skip_reads:
                (work / "reads").mkdir()
                report["reads"] = bench_reads(work / "reads", eng, args)
                report["machine"]["loadavg_after_reads"] = os.getloadavg()
                report["machine"]["cpu_share_after_reads"] = cpu_share()
            if not args.skip_builds:
                report["builds"] = bench_builds(work, eng, args)
                report["machine"]["loadavg_after_builds"] = os.getloadavg()
                report["machine"]["cpu_share_after_builds"] = cpu_share()
        report["sizing"] = sizing(report.get("reads"), report.get("builds"))
        report["elapsed_s"] = round(time.perf_counter() - started)
        report["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        m = report["machine"]
        print(f"\n{m['date']}  {m['nproc']} cores ({m['cpu']}), load average at start {m['loadavg_at_start']}, "
              f"load: {args.loadgen} -t{args.threads} -c{args.conns} -d{args.duration}s on the same cores\n")
        if "reads" in report:
            print(reads_table(report["reads"]))
            print()
            print(cpu_table(report["reads"]))
            print()
        if "builds" in report:
            print(builds_table(report["builds"]))
            print(f"\nreport row: {report['builds']['report_row']}")
        print("\nsizing:", json.dumps(report["sizing"], indent=1))
        print(f"written {args.out} ({report['elapsed_s']} s)")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
