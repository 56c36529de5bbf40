#!/usr/bin/env python3
"""Benchmark a client update end to end on a real release pair (a script, not a test).

numpy 2.2.0 -> 2.2.1 (cp311 manylinux x86_64 wheels, fetched with ``pip download`` through
benchmarks/deltas.py and cached under benchmarks/work/), all on this machine over loopback:

1. Unpack both wheels into trees.  For each of ``--build-repeat`` fresh stores: start a
   real ``cas serve`` (``delta_poll_seconds = 0.2``), publish both trees as released and
   time the ahead-of-time delta builds (queue drained, via ``GET /v1/admin/deltas``).
   The last store stays up for the rest.
2. Client (``--repeat`` times, fresh install roots): init, update to 2.2.0 (fresh install),
   point the channel at 2.2.1, update.  In the same round a second root does the 2.2.1
   update through the ``cas-client update`` CLI (interpreter start included).  Against
   that: the plain way -- the 2.2.1 .whl ingested into the store as one object, fetched
   with curl from ``GET /v1/objects/<blake3>`` and unzipped into a fresh directory.
   Bytes: the client's object bytes, plus every HTTP body byte (channel, manifest delta,
   objects; counted by a wrapping httpx transport in one extra run), against the wheel,
   a ``zstd -19`` tarball of the 2.2.1 tree and the raw tree.
3. The atomic swap (``InstallRoot.set_link("current", v)``, alternating versions) and a
   rollback to previous (``Updater.rollback("previous")``, then ``rollback(to="2.2.1")``
   before the next repeat), medians.
4. The issue's targets, pass/fail.

Results go to benchmarks/results/update.json.

    python benchmarks/update.py [--repeat 5] [--build-repeat 3] [--swaps 200] [--work DIR] [--keep]
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cas import channels, keys, publisher, releases  # noqa: E402
from cas.config import load_config  # noqa: E402
from cas.processes import stop_process  # noqa: E402
from cas.repo import Repo, open_repo  # noqa: E402
from cas.trees import scan_tree  # noqa: E402
from client.installroot import InstallRoot  # noqa: E402
from client.updater import Updater  # noqa: E402

PRODUCT, CHANNEL = "numpy", "stable"
OLD, NEW = "2.2.0", "2.2.1"


def _load_deltas_bench() -> Any:
    """benchmarks/deltas.py (the colleague's wheel download and unpack code), as a module."""
    spec = importlib.util.spec_from_file_location("bench_deltas", ROOT / "benchmarks" / "deltas.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def rmtree(path: Path) -> None:
    """Remove a tree that may hold read-only installed files and directories."""
    if not path.exists():
        return
    for dirpath, _, _ in os.walk(path):
        os.chmod(dirpath, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def tree_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    return len(files), sum(p.stat().st_size for p in files)


def zstd_tarball(tree: Path, out: Path) -> int:
    """Size of ``tar | zstd -19`` of the tree (cached: -19 on one thread takes a while)."""
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        tar = subprocess.Popen(["tar", "--sort=name", "-C", str(tree), "-cf", "-", "."], stdout=subprocess.PIPE)
        subprocess.run(["zstd", "-19", "-q", "-f", "-o", str(tmp)], stdin=tar.stdout, check=True)
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0:
            raise RuntimeError("tar failed")
        os.replace(tmp, out)
    return out.stat().st_size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- server side

class Server:
    """A fresh store with keys, and a real ``cas serve`` on a free port."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.token = secrets.token_hex(16)
        self.repo: Repo = open_repo(load_config(store))
        keys.init_keys(store, self.repo.meta)
        self.repo.reload_keys()
        (store / "config.toml").write_text("delta_poll_seconds = 0.2\n")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(store.parent / f"{store.name}-serve.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cas.cli", "serve", "--store", str(store), "--port", str(self.port)],
            env={**os.environ, "CAS_ADMIN_TOKEN": self.token}, stdout=self.log, stderr=subprocess.STDOUT,
            cwd=ROOT)
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60)
        for _ in range(400):
            try:
                if self.http.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"cas serve exited with {self.proc.returncode}; see {self.log.name}")
            time.sleep(0.05)
        else:
            raise RuntimeError("cas serve did not come up")
        self.release_key = keys.load_private_key(keys.key_path(store, "release"))

    def publish(self, version: str, tree_dir: Path) -> dict[str, Any]:
        started = time.perf_counter()
        tree = scan_tree(tree_dir)
        result = publisher.publish_local(self.repo, tree,
                                         publisher.signed_manifest(PRODUCT, version, tree, self.release_key))
        return {"files": result.files, "logical_bytes": result.logical_bytes,
                "new_objects": result.uploaded_objects, "new_object_bytes": result.uploaded_bytes,
                "seconds": time.perf_counter() - started}

    def release(self, version: str) -> None:
        releases.move_status(self.repo, PRODUCT, version, "testing", "bench", "bench")
        releases.move_status(self.repo, PRODUCT, version, "released", "bench", "bench")

    def wait_deltas(self, timeout: float = 1800.0) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            counts = self.http.get("/v1/admin/deltas").json()["counts"]
            if counts["queued"] == 0 and counts["running"] == 0:
                return counts
            if time.monotonic() > deadline:
                raise RuntimeError(f"delta builds still going after {timeout}s: {counts}")
            time.sleep(0.05)

    def job_times(self) -> dict[str, Any]:
        """Per-job build times from the store's metadata (read-only)."""
        import sqlite3
        con = sqlite3.connect(f"file:{self.store / 'meta.db'}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT state, started, finished FROM delta_jobs").fetchall()
        finally:
            con.close()
        spans = [f - s for state, s, f in rows if state == "done" and s and f]
        return {"jobs": len(rows), "done": len(spans), "sum_job_s": sum(spans),
                "max_job_s": max(spans, default=0.0)}

    def set_channel(self, version: str) -> None:
        channels.set_channel(self.repo, PRODUCT, CHANNEL, version)

    def stop(self) -> None:
        self.http.close()
        stop_process(self.proc)
        self.log.close()


def build_round(store: Path, trees: dict[str, Path]) -> tuple[Server, dict[str, Any]]:
    server = Server(store)
    out: dict[str, Any] = {"publish": {}}
    out["publish"][OLD] = server.publish(OLD, trees[OLD])
    server.release(OLD)
    out["publish"][NEW] = server.publish(NEW, trees[NEW])
    started = time.perf_counter()
    server.release(NEW)           # testing -> queues the 2.2.0 -> 2.2.1 file pairs
    counts = server.wait_deltas()
    out["build_s"] = time.perf_counter() - started
    out["counts"] = counts
    out |= server.job_times()
    return server, out


def delta_summary(server: Server) -> dict[str, Any]:
    """What the manifest delta offers: its size, and the cheapest recipe kind per changed file."""
    response = server.http.get(f"/v1/products/{PRODUCT}/releases/{NEW}/delta", params={"from": OLD})
    response.raise_for_status()
    doc = response.json()
    kinds: dict[str, int] = {}
    cheapest = 0
    for entry in doc.get("upserted", []):
        if entry.get("type") != "file":
            continue
        options = doc.get("recipes", {}).get(entry["blake3"], [])
        best = min(options, key=lambda r: r["size"]) if options else {"kind": "raw", "size": entry["size"]}
        kinds[best["kind"]] = kinds.get(best["kind"], 0) + 1
        cheapest += int(best["size"])
    return {"document_bytes": len(response.content), "complete": doc.get("complete"),
            "upserted": len(doc.get("upserted", [])), "removed": len(doc.get("removed", [])),
            "cheapest_recipe_kinds": kinds, "cheapest_recipe_bytes": cheapest, "declared": doc.get("bytes")}


# ---------------------------------------------------------------- client side

class CountingTransport(httpx.AsyncBaseTransport):
    """Counts every response body byte as received (before content decoding).

    The updater runs each update in its own event loop, and closes the transport it is
    given (``_report`` wraps it in an ``async with AsyncClient``), so the real transport is
    made per event loop and never closed by the client.
    """

    def __init__(self) -> None:
        self.body_bytes = 0
        self.requests: list[tuple[str, int]] = []
        self._inner: httpx.AsyncHTTPTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        if self._inner is None or self._loop is not loop:
            self._inner, self._loop = httpx.AsyncHTTPTransport(), loop
        response = await self._inner.handle_async_request(request)
        stream, outer, index = response.stream, self, len(self.requests)
        self.requests.append((f"{request.method} {request.url.path}", 0))

        class Counted(httpx.AsyncByteStream):
            async def __aiter__(self):  # type: ignore[override]
                async for chunk in stream:  # type: ignore[union-attr]
                    outer.body_bytes += len(chunk)
                    what, n = outer.requests[index]
                    outer.requests[index] = (what, n + len(chunk))
                    yield chunk

            async def aclose(self) -> None:
                await stream.aclose()  # type: ignore[union-attr]

        response.stream = Counted()
        return response

    async def aclose(self) -> None:  # the client closes it after each report; keep it
        pass


def client_init(server: Server, root: Path) -> None:
    Updater.init(root, [server.url], PRODUCT, CHANNEL, (server.store / "root.json").read_bytes())


def timed_update(updater: Updater) -> tuple[float, Any]:
    started = time.perf_counter()
    result = updater.update()
    return time.perf_counter() - started, result


def client_round(server: Server, base: Path) -> dict[str, Any]:
    """Fresh install of 2.2.0 in two roots; then 2.2.1 in one (library) and the other (CLI)."""
    lib_root, cli_root = base / "lib", base / "cli"
    server.set_channel(OLD)
    client_init(server, lib_root)
    client_init(server, cli_root)
    lib = Updater(lib_root)
    fresh_s, fresh = timed_update(lib)
    Updater(cli_root).update()
    assert fresh.outcome == "updated" and fresh.current == OLD, fresh
    server.set_channel(NEW)
    update_s, result = timed_update(lib)
    assert result.outcome == "updated" and result.current == NEW and result.from_version == OLD, result
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "client.cli", "update", str(cli_root), "--json"],
                          capture_output=True, text=True, cwd=ROOT)
    cli_s = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"cas-client update failed: {proc.stderr.strip()[-300:]}")
    rmtree(cli_root)
    return {"fresh_install_s": fresh_s, "fresh_install_bytes": fresh.bytes_downloaded,
            "fresh_install_bytes_full": fresh.bytes_full,
            "update_s": update_s, "update_reported_s": result.seconds, "cli_update_s": cli_s,
            "bytes_downloaded": result.bytes_downloaded, "bytes_full": result.bytes_full,
            "files": result.files, "files_local": result.files_local, "used_delta": result.used_delta}


def counted_round(server: Server, base: Path) -> dict[str, Any]:
    """One more 2.2.0 -> 2.2.1 update, counting every HTTP body byte the client receives."""
    root = base / "counted"
    server.set_channel(OLD)
    client_init(server, root)
    Updater(root).update()
    server.set_channel(NEW)
    transport = CountingTransport()
    result = Updater(root, transport=transport).update()
    rmtree(root)
    objects = sum(n for what, n in transport.requests if what.startswith("GET /v1/objects/"))
    return {"http_body_bytes": transport.body_bytes, "object_body_bytes": objects,
            "document_body_bytes": transport.body_bytes - objects, "requests": len(transport.requests),
            "object_requests": sum(1 for what, _ in transport.requests if what.startswith("GET /v1/objects/")),
            "client_bytes_downloaded": result.bytes_downloaded,
            "by_request": [{"request": w, "bytes": n} for w, n in transport.requests
                           if not w.startswith("GET /v1/objects/")]}


def full_download_round(url: str, scratch: Path) -> dict[str, Any]:
    """The plain way: fetch the .whl over loopback with curl, then unzip it into a fresh dir."""
    rmtree(scratch)
    scratch.mkdir(parents=True)
    whl, dest = scratch / "numpy.whl", scratch / "tree"
    started = time.perf_counter()
    subprocess.run(["curl", "-sS", "--fail", "-o", str(whl), url], check=True)
    download_s = time.perf_counter() - started
    started = time.perf_counter()
    if shutil.which("unzip"):
        subprocess.run(["unzip", "-q", str(whl), "-d", str(dest)], check=True)
    else:
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(dest)
    unpack_s = time.perf_counter() - started
    # Reference only (not in the target): the client fsyncs every file and directory it
    # installs; unzip does not.  This is what that durability costs on the plain tree.
    started = time.perf_counter()
    for dirpath, _, filenames in os.walk(dest):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_s = time.perf_counter() - started
    size = whl.stat().st_size
    rmtree(scratch)
    return {"download_s": download_s, "unpack_s": unpack_s, "total_s": download_s + unpack_s,
            "fsync_s": fsync_s, "total_durable_s": download_s + unpack_s + fsync_s, "bytes": size}


def swap_times(root: Path, count: int) -> list[float]:
    layout = InstallRoot(root)
    times = []
    for i in range(count):
        version = OLD if i % 2 == 0 else NEW
        started = time.perf_counter()
        layout.set_link("current", version)
        times.append(time.perf_counter() - started)
        if layout.link("current") != version:
            raise RuntimeError(f"swap to {version} did not take")
    layout.set_link("current", NEW)
    return times


def rollback_times(root: Path, count: int) -> tuple[list[float], list[float], list[dict[str, Any]]]:
    back, forward, results = [], [], []
    for _ in range(count):
        started = time.perf_counter()
        out = Updater(root).rollback("previous")
        back.append(time.perf_counter() - started)
        if InstallRoot(root).link("current") != OLD:
            raise RuntimeError(f"rollback to previous left current at {InstallRoot(root).link('current')}")
        results.append({"rollback": out, "links_after": {n: InstallRoot(root).link(n)
                                                          for n in ("current", "previous", "factory")}})
        started = time.perf_counter()
        Updater(root).rollback(to=NEW)
        forward.append(time.perf_counter() - started)
        if InstallRoot(root).link("current") != NEW:
            raise RuntimeError("roll forward did not take")
    return back, forward, results


# ---------------------------------------------------------------- report

def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": cpu,
                            "python": platform.python_version(), "loadavg_start": os.getloadavg()}
    try:
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    for tool, argv in (("curl", ["curl", "--version"]), ("unzip", ["unzip", "-v"]), ("zstd", ["zstd", "-V"])):
        try:
            info[tool] = subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()[0].strip()
        except (OSError, IndexError):
            info[tool] = None
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=ROOT).stdout.strip()
        info["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                                capture_output=True, text=True, cwd=ROOT).stdout.strip())
    except OSError:
        pass
    return info


def mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def print_table(r: dict[str, Any]) -> None:
    s, b, t = r["sizes"], r["bytes"], r["timings"]
    m = r["machine"]
    print(f"\n## Client update {PRODUCT} {OLD} -> {NEW} (medians of {r['repeat']}, builds of "
          f"{r['build_repeat']}; {m['cpus']} CPUs, load {m['loadavg_start'][0]:.1f} -> "
          f"{m['loadavg_end'][0]:.1f}, {r['date']})")
    print(f"{'quantity':<52} {'value':>16}")
    rows = [
        ("delta build, ahead of time (queue drained)", f"{t['build_s']:.2f} s"),
        ("  sum of per-job build times", f"{t['build_job_sum_s']:.2f} s"),
        ("bytes downloaded by the update (objects)", f"{b['update_objects']:,}"),
        ("bytes received, all HTTP bodies (+ documents)", f"{b['update_http_bodies']:,}"),
        ("full: 2.2.1 wheel", f"{s['wheel']:,}"),
        ("full: zstd -19 tarball of the 2.2.1 tree", f"{s['tar_zst']:,}"),
        ("full: raw 2.2.1 tree", f"{s['raw_tree']:,}"),
        ("saved vs wheel", f"{100 * (1 - b['update_http_bodies'] / s['wheel']):.2f} %"),
        ("saved vs tar.zst", f"{100 * (1 - b['update_http_bodies'] / s['tar_zst']):.2f} %"),
        ("saved vs raw tree", f"{100 * (1 - b['update_http_bodies'] / s['raw_tree']):.2f} %"),
        ("fresh install of 2.2.0: bytes downloaded", f"{b['fresh_install']:,}"),
        ("fresh install of 2.2.0: wall time", f"{t['fresh_install_s']:.3f} s"),
        ("update 2.2.0 -> 2.2.1, library call", f"{t['update_s']:.3f} s"),
        ("update 2.2.0 -> 2.2.1, cas-client CLI", f"{t['cli_update_s']:.3f} s"),
        ("plain: curl the wheel (loopback)", f"{t['full_download_s']:.3f} s"),
        ("plain: unzip into a fresh dir", f"{t['full_unpack_s']:.3f} s"),
        ("plain: download + unzip", f"{t['full_total_s']:.3f} s"),
        ("update / plain, paired per round (median)", f"{t['update_over_plain_ratio']:.2f}x"),
        ("reference: fsync every unzipped file + dir", f"{t['full_fsync_s']:.3f} s"),
        ("reference: download + unzip + fsync", f"{t['full_total_durable_s']:.3f} s"),
        ("atomic swap, set_link (median)", f"{1000 * t['swap_s']:.2f} ms"),
        ("atomic swap, set_link (p95)", f"{1000 * t['swap_p95_s']:.2f} ms"),
        ("rollback to previous", f"{1000 * t['rollback_s']:.1f} ms"),
        ("roll forward to 2.2.1", f"{1000 * t['roll_forward_s']:.1f} ms"),
    ]
    for name, value in rows:
        print(f"{name:<52} {value:>16}")
    print("\ntargets")
    for target in r["targets"]:
        print(f"  [{'PASS' if target['pass'] else 'FAIL'}] {target['target']}: {target['measured']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--build-repeat", type=int, default=3)
    parser.add_argument("--swaps", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the temp store and client roots")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "update.json")
    args = parser.parse_args()
    work: Path = args.work.absolute()
    bench = _load_deltas_bench()

    wheels = {v: bench.fetch_wheel(PRODUCT, v, work / "wheels") for v in (OLD, NEW)}
    trees = {v: bench.unpack(wheels[v], work / "update" / f"{PRODUCT}-{v}") for v in (OLD, NEW)}
    raw_files, raw_bytes = tree_bytes(trees[NEW])
    say(f"trees ready; zstd -19 tarball of {NEW} (cached after the first run)")
    tar_zst = zstd_tarball(trees[NEW], work / "update" / f"{PRODUCT}-{NEW}.tar.zst")

    run = Path(tempfile.mkdtemp(prefix="run-", dir=work / "update"))
    server: Server | None = None
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "machine": machine(),
        "pair": f"{PRODUCT} {OLD} -> {NEW}", "wheels": {v: p.name for v, p in wheels.items()},
        "repeat": args.repeat, "build_repeat": args.build_repeat}
    try:
        # 1. ahead-of-time builds, on fresh stores
        builds = []
        for i in range(args.build_repeat):
            if server is not None:
                server.stop()
                rmtree(server.store)
            server, built = build_round(run / f"store{i}", trees)
            builds.append(built)
            say(f"build {i + 1}/{args.build_repeat}: {built['build_s']:.2f} s, {built['counts']}")
        assert server is not None
        delta = delta_summary(server)
        say(f"manifest delta: {delta['document_bytes']:,} bytes, recipes {delta['cheapest_recipe_kinds']}")

        # the wheel as one object on the same server
        wheel_obj = server.repo.objects.ingest_file(wheels[NEW])
        wheel_url = f"{server.url}/v1/objects/{wheel_obj.digest}"

        # 2. client updates and the plain full download, interleaved round by round
        rounds, plain = [], []
        for i in range(args.repeat):
            base = run / f"client{i}"
            rounds.append(client_round(server, base))
            plain.append(full_download_round(wheel_url, run / "plain"))
            say(f"round {i + 1}/{args.repeat}: update {rounds[-1]['update_s']:.3f} s "
                f"({rounds[-1]['bytes_downloaded']:,} bytes), cli {rounds[-1]['cli_update_s']:.3f} s, "
                f"plain {plain[-1]['total_s']:.3f} s")
            if i < args.repeat - 1:
                rmtree(base)
        counted = counted_round(server, run / "counted")
        say(f"counted: {counted['http_body_bytes']:,} HTTP body bytes in {counted['requests']} requests")

        # 3. swap and rollback on the last client root (current 2.2.1, previous 2.2.0)
        last = run / f"client{args.repeat - 1}" / "lib"
        swaps = swap_times(last, args.swaps)
        back, forward, rollback_log = rollback_times(last, args.repeat)

        def med(key: str, rows: list[dict[str, Any]]) -> float:
            return median([row[key] for row in rows])

        update_bytes = med("bytes_downloaded", rounds)
        report |= {
            "sizes": {"wheel": wheels[NEW].stat().st_size, "wheel_old": wheels[OLD].stat().st_size,
                      "tar_zst": tar_zst, "raw_tree": raw_bytes, "raw_tree_files": raw_files,
                      "manifest_bytes_full": rounds[0]["bytes_full"]},
            "bytes": {"update_objects": int(update_bytes), "update_http_bodies": counted["http_body_bytes"],
                      "fresh_install": int(med("fresh_install_bytes", rounds))},
            "timings": {"build_s": median([b["build_s"] for b in builds]),
                        "build_job_sum_s": median([b["sum_job_s"] for b in builds]),
                        "fresh_install_s": med("fresh_install_s", rounds),
                        "update_s": med("update_s", rounds), "cli_update_s": med("cli_update_s", rounds),
                        "full_download_s": med("download_s", plain), "full_unpack_s": med("unpack_s", plain),
                        "full_total_s": med("total_s", plain),
                        "full_fsync_s": med("fsync_s", plain), "full_total_durable_s": med("total_durable_s", plain),
                        "update_over_plain_ratio": median([r["update_s"] / p["total_s"]
                                                           for r, p in zip(rounds, plain)]),
                        "swap_s": median(swaps), "swap_p95_s": sorted(swaps)[int(0.95 * (len(swaps) - 1))],
                        "rollback_s": median(back), "roll_forward_s": median(forward)},
            "builds": builds, "delta": delta, "rounds": rounds, "plain": plain, "counted": counted,
            "swap_all_s": {"count": len(swaps), "min": min(swaps), "max": max(swaps)},
            "rollback_all_s": back, "roll_forward_all_s": forward, "rollback_last": rollback_log[-1]}
        s, b, t = report["sizes"], report["bytes"], report["timings"]
        saved = 1 - b["update_http_bodies"] / s["wheel"]
        report["targets"] = [
            {"target": ">= 90% fewer bytes than a full download (the wheel)", "pass": saved >= 0.90,
             "measured": f"{100 * saved:.2f}% fewer ({b['update_http_bodies']:,} vs {s['wheel']:,} bytes)"},
            {"target": "update no slower than full download + unpack", "pass": t["update_s"] <= t["full_total_s"],
             "measured": f"{t['update_s']:.3f} s vs {t['full_total_s']:.3f} s "
                         f"(paired ratio {t['update_over_plain_ratio']:.2f}x; CLI incl. interpreter "
                         f"start: {t['cli_update_s']:.3f} s; plain + fsync: {t['full_total_durable_s']:.3f} s)"},
            {"target": "atomic swap < 50 ms", "pass": t["swap_s"] < 0.050,
             "measured": f"{1000 * t['swap_s']:.2f} ms median, {1000 * t['swap_p95_s']:.2f} ms p95"},
            {"target": "rollback to previous < 1 s", "pass": t["rollback_s"] < 1.0,
             "measured": f"{1000 * t['rollback_s']:.1f} ms median"},
        ]
    finally:
        report["machine"]["loadavg_end"] = os.getloadavg()
        if server is not None:
            server.stop()
        if args.keep:
            say(f"kept {run}")
        else:
            rmtree(run)

    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
