#!/usr/bin/env python3
"""deltacas against its peers on real release trees (a script, not a test).

For each pair of consecutive releases of a real package (the corpus in
``benchmarks/corpus.py``: cp311 manylinux x86_64 wheels from PyPI, npm tarballs and Debian
packages of many kinds, fetched at run time, cached in the work dir and unpacked), side
by side in one run:

- deltacas: the bytes a client downloads going from the old tree to the new one: the
  server's plan (``cas.deltaplan.plan_pairs``), ``deltagen.best_recipes`` for every
  planned (base, target) pair and a compressed form for every new file, the offers
  (``cas.deltaplan.offered``), bundles built for ``deltagen.bundle_candidates`` and the
  cheapest cover (``cas.deltaplan.with_bundles``); generation time and peak memory of
  all those builds; apply time (rebuild every changed file, verified, hardlink the rest
  from the old tree).
- OSTree: ``ostree commit`` both trees into an archive repo, then ``ostree static-delta
  generate --from --to --min-fallback-size=0 --inline``; size of the delta directory,
  generation time and peak memory; apply = ``static-delta apply-offline`` into a
  bare-user repo holding the old commit + ``ostree checkout -U`` of the new commit.
- casync: ``casync make`` the old tree into a store, then the new one; the new chunk
  bytes in the store (the index the client also fetches is in the JSON).
- a ``zstd -19`` tarball of the new tree.

Every measured step runs in its own process; peak memory: deltacas's is the sampled sum
of its process and its build workers (``TreeRss``, which also records what the peak was
made of: each process, each worker's job, the jobs running in the main process), the
others' is GNU time's ``%M``.  ``job_seconds`` holds every per-file job's time.  Prints a table (a row per pair, a totals
row per kind, the grand total, ratios to OSTree), writes benchmarks/results/peers.json
(rewritten after every pair, so a run cut short keeps what it measured).

    python benchmarks/peers.py [--work DIR] [--only NAME ...] [--kind KIND ...] [--list] [--out FILE]
    python benchmarks/peers.py --merge A.json B.json ... [--out FILE]   # one table from several runs

Needs the Debian packages ``ostree``, ``casync`` and ``zstd`` (and npm for the npm pairs);
installs them with apt-get when missing (``--no-install`` to refuse).  Not needed by CI.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from corpus import CORPUS, KINDS, Pair, ensure_tools, release_tree  # noqa: E402

TINY_BYTES = 512  # cas config delta_tiny_bytes default


def tree_entries(tree: Path) -> list[dict[str, Any]]:
    """Manifest entries of an unpacked tree, exactly as `cas publish` makes them."""
    from cas.trees import scan_tree
    return scan_tree(tree).entries


def peak_rss() -> int:
    """This process's own peak memory (``deltagen.budget.own_peak_rss``: not ``ru_maxrss``,
    which a process started from this script's large main process inherits; that inflated
    every memory figure of this script before 2026-12-02)."""
    from deltagen.budget import own_peak_rss
    return own_peak_rss()


class TreeRss:
    """Samples the resident memory of this process and all its descendants together (every
    20 ms): with builds running in parallel the peak is their sum, not the largest one."""

    def __init__(self) -> None:
        import threading
        self.peak = 0
        self.at_peak: dict[str, Any] = {}
        self.active: dict[int, str] = {}  # thread id -> the job it runs (set by the caller)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        out = []
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as fh:
                    out += [int(c) for c in fh.read().split()]
        except OSError:
            pass
        return out

    @staticmethod
    def _what(pid: int) -> str:
        """A build worker's job (its argv holds the job spec), else the process's name."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            return "?"
        if b"deltagen.budget" in argv and len(argv) > 3:
            try:
                spec = json.loads(argv[3])
                return f"worker {spec['job']} {os.path.getsize(spec['new']) >> 20} MiB"
            except (ValueError, KeyError, OSError):
                return "worker"
        return "main" if pid == os.getpid() else os.path.basename(argv[0].decode(errors="replace"))

    def _sample(self) -> int:
        total, todo, parts = 0, [os.getpid()], []
        while todo:
            pid = todo.pop()
            rss = self._rss(pid)
            total += rss
            parts.append((pid, rss))
            todo += self._children(pid)
        if total > self.peak:
            self.peak = total
            # what the peak was made of: each process, and the jobs the main process ran then
            self.at_peak = {"processes": [[self._what(pid), rss >> 20] for pid, rss in parts],
                            "jobs": sorted(self.active.values())}
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self._sample()

    def __enter__(self) -> TreeRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, peak_rss())  # this process's own exact peak; children: sampled


# ---------------------------------------------------------------- deltacas (run in children)

def deltacas_generate(old: Path, new: Path, objects: Path) -> dict[str, Any]:
    """Everything the server builds when the new tree is published with the old one as its
    base, the way its delta builder does (cas/deltas.py): the plan's jobs, a compress job
    for every new file and a patch job per (base, target) pair (build policy, no second
    compressed form), as many at once as the builder runs (one per CPU, under
    delta_memory_bytes), then the bundles; and the manifest delta's choice."""
    from concurrent.futures import ThreadPoolExecutor

    from cas.config import Config
    from cas.deltaplan import bundle_inputs, plan_pairs
    from casformat.manifest_delta import offered, with_bundles
    from deltagen import best_recipes, build_bundle, bundle_candidates, compress_file
    from deltagen.budget import build_memory, memory_gate, return_freed_memory
    from deltagen.bundles import MACHINE_CODE_PATCHES, is_machine_code
    from deltagen.digests import blake3_file
    from deltagen.policy import classify
    from deltagen.recipes import compress_level_for

    config = Config(store=objects)
    limits = config.delta_limits()
    memory_gate.set_total(config.delta_memory_bytes)
    return_freed_memory()  # as cas.deltas.DeltaBuilder does
    workers = config.delta_workers or (os.cpu_count() or 1)
    objects.mkdir(parents=True, exist_ok=True)
    with TreeRss() as rss:
        started = time.perf_counter()
        old_files, new_files = tree_entries(old), tree_entries(new)
        path_of = {e["blake3"]: old / e["path"] for e in old_files if e["type"] == "file"}
        path_of.update({e["blake3"]: new / e["path"] for e in new_files if e["type"] == "file"})
        size_of = {e["blake3"]: e["size"] for e in old_files + new_files if e["type"] == "file"}
        have = {e["blake3"] for e in old_files if e["type"] == "file"}
        pairs = plan_pairs(old_files, new_files, TINY_BYTES)
        # The plan's jobs: a compress job ("", target) for every new file, a patch job per
        # (base, target) pair; largest first, so that the pool's workers finish together.
        jobs = sorted(set(pairs), key=lambda job: -size_of[job[1]])

        timings: list[dict[str, Any]] = []

        def run(job: tuple[str, str]) -> list[dict[str, Any]]:
            import threading
            me = threading.get_ident()
            rss.active[me] = f"{'patch' if job[0] else 'compress'} {size_of[job[1]] >> 20} MiB"
            t0 = time.perf_counter()
            try:
                made = run_job(job)
            finally:
                del rss.active[me]
            timings.append({"job": "patch" if job[0] else "compress", "size": size_of[job[1]],
                            "base_size": size_of.get(job[0], 0), "s": time.perf_counter() - t0,
                            "made": [[r["kind"], r.get("algorithm"), r["size"]] for r in made]})
            return made

        def run_job(job: tuple[str, str]) -> list[dict[str, Any]]:
            base, target = job
            if base:
                return [{**r.to_dict(), "base": base} for r in
                        best_recipes(path_of[base], path_of[target], objects / f"job-{base[:16]}-{target[:16]}",
                                     limits, compressed=False) if r.kind == "patch"]
            out = objects / f"compressed-{target}.tmp"
            level = compress_level_for(classify(path_of[target]), size_of[target], limits)
            with memory_gate.reserve(build_memory("compressed", 0, size_of[target])):
                compress_file(path_of[target], out, level)
            if out.stat().st_size >= size_of[target]:
                out.unlink()
                return []
            d = blake3_file(out)
            os.replace(out, objects / d)
            return [{"kind": "compressed", "algorithm": "zstd", "object": d, "size": (objects / d).stat().st_size,
                     "base": ""}]

        rows: dict[str, list[dict[str, Any]]] = {}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for (base, target), made in zip(jobs, pool.map(run, jobs)):
                for r in made:
                    if r["kind"] == "patch":
                        src = objects / f"job-{base[:16]}-{target[:16]}" / r["object"]
                        os.replace(src, objects / r["object"])
                    rows.setdefault(target, []).append(r)
        for d in objects.glob("job-*"):
            shutil.rmtree(d)
        per_file_s = time.perf_counter() - started
        wanted = {e["blake3"]: e for e in new_files if e["type"] == "file" and e["blake3"] not in have}
        recipe_doc = {t: offered(rows.get(t, []), t, e["size"], have) for t, e in wanted.items()}
        per_file_bytes = sum(r[0]["size"] for r in recipe_doc.values())
        files = bundle_inputs(old_files, new_files, pairs, recipe_doc)
        for f in files:  # as cas.deltas.build_bundles does
            if f["best_algorithm"] in MACHINE_CODE_PATCHES and not is_machine_code(f):
                f["class"] = classify(path_of[f["target"]])
        bundles = []
        bundle_build = []
        for cand in bundle_candidates(files, limits):
            if len(cand.targets) < 2:
                continue
            rss.active[0] = f"bundle {cand.name}"
            t0 = time.perf_counter()
            info = build_bundle([path_of[b] for b in cand.bases], [path_of[t] for t in cand.targets],
                                objects / "bundle.tmp", limits)
            os.replace(info.path, objects / info.object)
            bundles.append(info.to_dict())
            bundle_build.append({"name": cand.name, "targets": len(cand.targets), "bases": len(cand.bases),
                                 "size": info.size, "per_file": sum(recipe_doc[t][0]["size"] for t in cand.targets),
                                 "build_s": time.perf_counter() - t0})
            del rss.active[0]
        doc = with_bundles({"recipes": recipe_doc, "bytes": {"recipes": per_file_bytes}}, bundles, have)
        elapsed = time.perf_counter() - started
    chosen = {t: offers[0] for t, offers in doc["recipes"].items()}
    kinds: dict[str, int] = {}
    for r in {r["object"]: r for r in chosen.values()}.values():
        key = r["kind"] if r["kind"] != "patch" else f"patch:{r['algorithm']}"
        kinds[key] = kinds.get(key, 0) + r["size"]
    return {"bytes": doc["bytes"]["recipes"], "per_file_bytes": per_file_bytes, "changed_files": len(wanted),
            "changed_bytes": sum(e["size"] for e in wanted.values()), "pairs_built": len(pairs),
            "jobs": len(jobs), "workers": workers, "build_policy": limits.build_policy,
            "bundles": bundle_build, "bytes_by_kind": kinds, "chosen": chosen,
            "per_file_s": per_file_s, "elapsed_s": elapsed, "peak_rss_bytes": rss.peak,
            "at_peak": rss.at_peak, "job_seconds": timings,
            "compress_s": sum(t["s"] for t in timings if t["job"] == "compress"),
            "patch_s": sum(t["s"] for t in timings if t["job"] == "patch"),
            "bundle_s": sum(b["build_s"] for b in bundle_build)}


def deltacas_apply(old: Path, new: Path, objects: Path, chosen: dict[str, Any], dest: Path) -> dict[str, Any]:
    """What the client does once the objects are downloaded (client/stage.py): make the
    tree's directories once, rebuild and verify each changed file, link the rest, make the
    tree durable (one syncfs)."""
    from client.install import fsync_tree, make_directories
    from deltagen import apply_bundle, apply_patch, decompress_file

    started = time.perf_counter()
    old_files = tree_entries(old)  # a client knows these from its cached manifest
    old_by_digest = {e["blake3"]: old / e["path"] for e in old_files if e["type"] == "file"}
    new_files = json.loads((objects / "new-manifest.json").read_text())
    new_by_digest = {e["blake3"]: e for e in new_files if e["type"] == "file"}
    started = time.perf_counter()  # manifests are cached on a client: time the rebuild only
    dest.mkdir(parents=True)
    make_directories(dest, new_files)
    built_dir = dest.parent / (dest.name + ".objects")
    built_dir.mkdir()
    built: dict[str, Path] = {}
    for r in {r["object"]: r for r in chosen.values() if r["kind"] == "bundle"}.values():
        built.update(apply_bundle([old_by_digest[b] for b in r["bases"]], objects / r["object"], r["members"],
                                  built_dir, durable=False))
    for t, r in chosen.items():
        if t in built:
            continue
        size = new_by_digest[t]["size"]
        out = built_dir / t
        if r["kind"] == "patch":
            apply_patch(r["algorithm"], old_by_digest[r["base"]], objects / r["object"], out, size, t,
                        durable=False)
        elif r["kind"] == "compressed":
            decompress_file(objects / r["object"], out, size, t, durable=False)
        else:
            shutil.copyfile(new / new_by_digest[t]["path"], out)
        built[t] = out
    root = os.fspath(dest)
    for e in new_files:
        path = f"{root}/{e['path']}"
        if e["type"] == "symlink":
            os.symlink(e["target"], path)
            continue
        src = old_by_digest.get(e["blake3"]) or built[e["blake3"]]
        try:
            os.link(src, path)
        except OSError:
            shutil.copyfile(src, path)
    fsync_tree(dest, [p for p in built.values()])  # as the client's staging does: durable before the swap
    return {"elapsed_s": time.perf_counter() - started, "peak_rss_bytes": peak_rss()}


def run_child(op: str, spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)  # too large for argv (bundle member lists)
    try:
        proc = subprocess.run([sys.executable, __file__, "_child", op, fh.name],
                              capture_output=True, text=True, check=False)
    finally:
        os.unlink(fh.name)
    if proc.returncode != 0:
        raise RuntimeError(f"{op} failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the others

def run_cmd(argv: list[str], stdout: Any = subprocess.DEVNULL) -> dict[str, Any]:
    """Run a tool; its wall time and peak memory.  The peak is GNU time's ``%M`` of the tool
    started from ``/usr/bin/time`` (a small process): measured from this script directly,
    ``ru_maxrss`` would start at this script's own peak (see ``peak_rss``)."""
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as rss:
        started = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", rss.name, *argv], stdout=stdout,
                                stderr=subprocess.PIPE)
        _, err_bytes = proc.communicate()
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} failed: {err_bytes.decode().strip()[-500:]}")
        kib = int(rss.read().strip().splitlines()[-1])
    return {"elapsed_s": elapsed, "peak_rss_bytes": kib * 1024}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def ostree(old: Path, new: Path, work: Path) -> dict[str, Any]:
    repo, client = work / "repo", work / "client"
    subprocess.run(["ostree", f"--repo={repo}", "init", "--mode=archive"], check=True)
    for branch, tree in (("old", old), ("new", new)):
        subprocess.run(["ostree", f"--repo={repo}", "commit", f"--branch={branch}", "--no-xattrs",
                        f"--tree=dir={tree}", "-s", branch], check=True, stdout=subprocess.DEVNULL)
    gen = run_cmd(["ostree", f"--repo={repo}", "static-delta", "generate", "--from=old", "--to=new",
                   "--min-fallback-size=0", "--inline"])
    deltas = repo / "deltas"
    size = dir_bytes(deltas)
    superblock = next(deltas.rglob("superblock"))
    new_commit = subprocess.run(["ostree", f"--repo={repo}", "rev-parse", "new"], check=True,
                                capture_output=True, text=True).stdout.strip()
    subprocess.run(["ostree", f"--repo={client}", "init", "--mode=bare-user"], check=True)
    subprocess.run(["ostree", f"--repo={client}", "pull-local", str(repo), "old"], check=True,
                   stdout=subprocess.DEVNULL)
    apply = run_cmd(["ostree", f"--repo={client}", "static-delta", "apply-offline", str(superblock)])
    checkout = run_cmd(["ostree", f"--repo={client}", "checkout", "-U", new_commit, str(work / "out")])
    return {"bytes": size, "generate_s": gen["elapsed_s"], "generate_peak_rss_bytes": gen["peak_rss_bytes"],
            "apply_s": apply["elapsed_s"] + checkout["elapsed_s"], "apply_offline_s": apply["elapsed_s"],
            "checkout_s": checkout["elapsed_s"],
            "apply_peak_rss_bytes": max(apply["peak_rss_bytes"], checkout["peak_rss_bytes"])}


def casync(old: Path, new: Path, work: Path) -> dict[str, Any]:
    store = work / "store"
    subprocess.run(["casync", "make", f"--store={store}", str(work / "old.caidx"), str(old)], check=True,
                   stdout=subprocess.DEVNULL)
    before = dir_bytes(store)
    made = run_cmd(["casync", "make", f"--store={store}", str(work / "new.caidx"), str(new)])
    return {"bytes": dir_bytes(store) - before, "index_bytes": (work / "new.caidx").stat().st_size,
            "make_s": made["elapsed_s"]}


def tar_zstd(new: Path, work: Path) -> int:
    out = work / "new.tar.zst"
    tar = subprocess.Popen(["tar", "-C", str(new), "--sort=name", "-cf", "-", "."], stdout=subprocess.PIPE)
    with open(out, "wb") as fh:
        subprocess.run(["zstd", "-19", "-T1", "-q", "-c"], stdin=tar.stdout, stdout=fh, check=True)
    tar.wait()
    return out.stat().st_size


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    import bsdiff4
    import zstandard
    return {"ostree": first_line(["dpkg-query", "-W", "-f=${Version}", "ostree"]),
            "casync": first_line(["dpkg-query", "-W", "-f=${Version}", "casync"]),
            "zstd": first_line(["zstd", "--version"]), "python": platform.python_version(),
            "zstandard": zstandard.__version__, "bsdiff4": getattr(bsdiff4, "__version__", "?")}


# ---------------------------------------------------------------- report

def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over pairs (peak memory: the largest)."""
    def s(get: Any) -> Any:
        return sum(get(r) for r in rows)
    return {"pairs": len(rows), "new_tree_bytes": s(lambda r: r["new_tree"]["bytes"]),
            "changed_files": s(lambda r: r["deltacas"]["changed_files"]),
            "deltacas_bytes": s(lambda r: r["deltacas"]["bytes"]), "ostree_bytes": s(lambda r: r["ostree"]["bytes"]),
            "casync_bytes": s(lambda r: r["casync"]["bytes"]), "tar_zstd_bytes": s(lambda r: r["tar_zstd_bytes"]),
            "deltacas_generate_s": s(lambda r: r["deltacas"]["elapsed_s"]),
            "ostree_generate_s": s(lambda r: r["ostree"]["generate_s"]),
            "deltacas_peak_rss_bytes": max(r["deltacas"]["peak_rss_bytes"] for r in rows),
            "ostree_peak_rss_bytes": max(r["ostree"]["generate_peak_rss_bytes"] for r in rows),
            "deltacas_apply_s": s(lambda r: r["deltacas"]["apply_s"]), "ostree_apply_s": s(lambda r: r["ostree"]["apply_s"]),
            "pairs_bytes_within_0_8": sum(1 for r in rows if r["deltacas"]["bytes"] <= 0.8 * r["ostree"]["bytes"]),
            "pairs_apply_not_slower": sum(1 for r in rows if r["deltacas"]["apply_s"] <= r["ostree"]["apply_s"])}


def table_row(name: str, kind: str, t: dict[str, Any]) -> str:
    d_b, o_b = t["deltacas_bytes"], t["ostree_bytes"]
    d_g, o_g = t["deltacas_generate_s"], t["ostree_generate_s"]
    d_m, o_m = t["deltacas_peak_rss_bytes"], t["ostree_peak_rss_bytes"]
    d_a, o_a = t["deltacas_apply_s"], t["ostree_apply_s"]
    return (f"| {name} | {kind} | {t['new_tree_bytes']:,} | {t['changed_files']} | {d_b:,} | {o_b:,} | "
            f"{ratio(d_b, o_b)} | {t['casync_bytes']:,} | {t['tar_zstd_bytes']:,} | "
            f"{d_g:.1f} / {o_g:.1f} ({ratio(d_g, o_g)}) | {d_m / 2**20:.0f} / {o_m / 2**20:.0f} ({ratio(d_m, o_m)}) | "
            f"{d_a:.2f} / {o_a:.2f} ({ratio(d_a, o_a)}) |")


def print_table(results: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """One row per pair (grouped by kind), a totals row per kind, the grand total."""
    lines = ["| pair | kind | new tree B | changed files | deltacas B | OSTree B | deltacas / OSTree | "
             "casync new chunks B | tar.zst -19 B | gen s deltacas / OSTree (ratio) | "
             "gen peak MiB deltacas / OSTree (ratio) | apply s deltacas / OSTree (ratio) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    ok = {name: r for name, r in results.items() if "error" not in r}
    by_kind: dict[str, list[str]] = {}
    for name, r in ok.items():
        by_kind.setdefault(r["kind"], []).append(name)
    summary: dict[str, Any] = {"kinds": {}}
    for kind in [k for k in KINDS if k in by_kind]:
        for name in by_kind[kind]:
            lines.append(table_row(name, kind, totals([ok[name]])))
        t = totals([ok[n] for n in by_kind[kind]])
        summary["kinds"][kind] = t
        if len(by_kind[kind]) > 1:
            lines.append(table_row(f"*{kind}: {len(by_kind[kind])} pairs*", kind, t))
    if ok:
        summary["all"] = totals(list(ok.values()))
        lines.append(table_row(f"**all {len(ok)} pairs**", "", summary["all"]))
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | {r['kind']} | failed: {r['error'][:200]} |||||||||")
    table = "\n".join(lines)
    print(table)
    return table, summary


def tree_size(path: Path) -> dict[str, int]:
    files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return {"bytes": sum(p.stat().st_size for p in files), "files": len(files)}


def git_commit() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return proc.stdout.strip() + (" (modified)" if dirty else "")


def measure(pair: Pair, work: Path) -> dict[str, Any]:
    label = pair.label
    old, new = release_tree(pair, pair.old, work), release_tree(pair, pair.new, work)
    row: dict[str, Any] = {"kind": pair.kind, "source": pair.source, "package": pair.package,
                           "old_version": pair.old, "new_version": pair.new, "note": pair.note,
                           "old_tree": tree_size(old), "new_tree": tree_size(new)}
    scratch = Path(tempfile.mkdtemp(prefix=f"peers-{pair.name}-", dir=work))
    try:
        print(f"{label}: deltacas ...", file=sys.stderr, flush=True)
        objects = scratch / "objects"
        gen = run_child("generate", {"old": str(old), "new": str(new), "objects": str(objects)})
        (objects / "new-manifest.json").write_text(json.dumps(tree_entries(new)))
        app = run_child("apply", {"old": str(old), "new": str(new), "objects": str(objects),
                                  "chosen": gen["chosen"], "dest": str(scratch / "deltacas-out")})
        gen.pop("chosen")
        gen |= {"apply_s": app["elapsed_s"], "apply_peak_rss_bytes": app["peak_rss_bytes"]}
        print(f"{label}: ostree ...", file=sys.stderr, flush=True)
        (scratch / "ostree").mkdir()
        ost = ostree(old, new, scratch / "ostree")
        print(f"{label}: casync, tar ...", file=sys.stderr, flush=True)
        (scratch / "casync").mkdir()
        cas = casync(old, new, scratch / "casync")
        tz = tar_zstd(new, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"{label}: deltacas {gen['bytes']:,} B (per-file only {gen['per_file_bytes']:,}) in {gen['elapsed_s']:.1f} s, "
          f"OSTree {ost['bytes']:,} B in {ost['generate_s']:.1f} s; deltacas job seconds: compress "
          f"{gen['compress_s']:.1f}, patch {gen['patch_s']:.1f}, bundles {gen['bundle_s']:.1f}; peak "
          f"{gen['peak_rss_bytes'] >> 20} MiB ({gen['at_peak']}) vs OSTree {ost['generate_peak_rss_bytes'] >> 20} MiB",
          file=sys.stderr, flush=True)
    return row | {"deltacas": gen, "ostree": ost, "casync": cas, "tar_zstd_bytes": tz}


def merge(inputs: list[Path], out: Path) -> int:
    """One report from several runs (e.g. the large pairs measured by a second process)."""
    runs = [json.loads(p.read_text()) for p in inputs]
    found = {label: r for run in runs for label, r in run["pairs"].items()}
    order = [p.label for p in CORPUS if p.label in found] + [x for x in found if x not in {p.label for p in CORPUS}]
    report: dict[str, Any] = {
        "merged_from": [{"file": str(p), "date": run["date"], "finished": run.get("finished"),
                         "commit": run.get("commit"), "filters": run.get("filters"), "pairs": list(run["pairs"]),
                         "loadavg_at_start": run["machine"]["loadavg_at_start"], "loadavg_end": run.get("loadavg_now")}
                        for p, run in zip(inputs, runs)],
        "date": min(run["date"] for run in runs), "commit": runs[0].get("commit"),
        "machine": runs[0]["machine"], "versions": runs[0]["versions"],
        "pairs": {label: found[label] for label in order},
        "not_measured": [p.label for p in CORPUS if p.label not in found]}
    report["table_markdown"], report["totals"] = print_table(report["pairs"])
    if report["not_measured"]:
        print("not measured: " + ", ".join(report["not_measured"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {out}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deltacas-peers"),
                        help="downloads, unpacked trees (both kept across runs) and scratch space")
    parser.add_argument("--only", action="append", choices=[p.name for p in CORPUS], metavar="NAME",
                        help="measure only this pair (repeatable): " + ", ".join(p.name for p in CORPUS))
    parser.add_argument("--kind", action="append", choices=KINDS,
                        help="measure only pairs of this kind (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the corpus and exit")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install missing tools")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="measure nothing: combine the pairs of these earlier results into one table and --out")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peers.json")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge, args.out)
    pairs = [p for p in CORPUS if (not args.only or p.name in args.only) and (not args.kind or p.kind in args.kind)]
    if args.list:
        for p in pairs:
            print(f"{p.name:14} {p.kind:14} {p.source:5} {p.package} {p.old} -> {p.new}  ({p.note})")
        return 0
    if not pairs:
        print("peers.py: no pair matches --only/--kind", file=sys.stderr)
        return 2
    if not args.no_install:
        ensure_tools(need_npm=any(p.source == "npm" for p in pairs))
    for tool in ("ostree", "casync", "zstd", "tar"):
        if shutil.which(tool) is None:
            print(f"peers.py: {tool} is not installed (apt-get install -y ostree casync zstd)", file=sys.stderr)
            return 1
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commit": git_commit(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor(),
                    "loadavg_at_start": os.getloadavg()},
        "versions": versions(), "filters": {"only": args.only, "kind": args.kind}, "pairs": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for pair in pairs:
        started = time.perf_counter()
        try:
            report["pairs"][pair.label] = measure(pair, work)
        except Exception as exc:  # one pair failing (a fetch, a tool) does not end the run
            print(f"{pair.label}: FAILED: {exc}", file=sys.stderr, flush=True)
            report["pairs"][pair.label] = {"kind": pair.kind, "source": pair.source, "error": str(exc)[-2000:]}
        report["pairs"][pair.label]["wall_s"] = time.perf_counter() - started
        report["loadavg_now"] = os.getloadavg()
        # written after every pair, so a run cut short leaves what it measured
        args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    report["table_markdown"], report["totals"] = print_table(report["pairs"])
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "_child":
        spec = json.loads(Path(sys.argv[3]).read_text())
        if sys.argv[2] == "generate":
            result = deltacas_generate(Path(spec["old"]), Path(spec["new"]), Path(spec["objects"]))
        else:
            result = deltacas_apply(Path(spec["old"]), Path(spec["new"]), Path(spec["objects"]), spec["chosen"],
                                    Path(spec["dest"]))
        print(json.dumps(result))
        sys.exit(0)
    sys.exit(main())
