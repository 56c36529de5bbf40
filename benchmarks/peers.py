#!/usr/bin/env python3
"""deltacas against its peers on real release trees (a script, not a test).

For each pair of consecutive releases (cp311 manylinux x86_64 wheels fetched from PyPI
with ``pip download`` at run time and unpacked, via ``benchmarks/deltas.py``), side by
side in one run:

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

Every measured step runs in its own process; peak memory is its ru_maxrss (the
largest of deltacas's build workers included).  Prints a table, writes
benchmarks/results/peers.json.

    python benchmarks/peers.py [--work DIR] [--only numpy ...]

Needs the Debian packages ``ostree``, ``casync`` and ``zstd`` (not needed by CI).
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

from deltas import fetch_wheel, unpack  # noqa: E402

PAIRS = [("numpy", "2.2.0", "2.2.1"), ("pillow", "11.0.0", "11.1.0"), ("pandas", "2.2.2", "2.2.3"),
         ("pydantic_core", "2.27.1", "2.27.2"), ("lxml", "5.3.0", "5.3.1")]
TINY_BYTES = 512  # cas config delta_tiny_bytes default


def tree_entries(tree: Path) -> list[dict[str, Any]]:
    """Manifest entries of an unpacked tree, exactly as `cas publish` makes them."""
    from cas.trees import scan_tree
    return scan_tree(tree).entries


def peak_rss() -> int:
    import resource
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024


# ---------------------------------------------------------------- deltacas (run in children)

def deltacas_generate(old: Path, new: Path, objects: Path) -> dict[str, Any]:
    """Everything the server builds for this pair, then the manifest delta's choice."""
    from cas.deltaplan import plan_pairs
    from casformat.manifest_delta import offered, with_bundles
    from deltagen import DEFAULT_LIMITS, best_recipes, build_bundle, bundle_candidates, compress_file
    from deltagen.digests import blake3_file

    started = time.perf_counter()
    limits = DEFAULT_LIMITS
    objects.mkdir(parents=True, exist_ok=True)
    old_files, new_files = tree_entries(old), tree_entries(new)
    path_of = {e["blake3"]: old / e["path"] for e in old_files if e["type"] == "file"}
    path_of.update({e["blake3"]: new / e["path"] for e in new_files if e["type"] == "file"})
    size_of = {e["blake3"]: e["size"] for e in old_files + new_files if e["type"] == "file"}
    have = {e["blake3"] for e in old_files if e["type"] == "file"}
    rows: dict[str, list[dict[str, Any]]] = {}
    pairs = plan_pairs(old_files, new_files, TINY_BYTES)
    for base, target in pairs:
        if base:
            for r in best_recipes(path_of[base], path_of[target], objects, limits):
                if r.kind != "raw":
                    rows.setdefault(target, []).append({**r.to_dict(), "base": base if r.kind == "patch" else ""})
        elif not any(b for b, t in pairs if t == target and b):
            # the server's ("", target) job: compress only (skipped here when a pair with a
            # base builds the same compressed form anyway)
            out = objects / "compressed.tmp"
            compress_file(path_of[target], out, limits.compress_level)
            if out.stat().st_size < size_of[target]:
                d = blake3_file(out)
                os.replace(out, objects / d)
                rows.setdefault(target, []).append({"kind": "compressed", "algorithm": "zstd", "object": d,
                                                    "size": (objects / d).stat().st_size})
            else:
                out.unlink()
    per_file_s = time.perf_counter() - started
    wanted = {e["blake3"]: e for e in new_files if e["type"] == "file" and e["blake3"] not in have}
    recipe_doc = {t: offered(rows.get(t, []), t, e["size"], have) for t, e in wanted.items()}
    per_file_bytes = sum(r[0]["size"] for r in recipe_doc.values())
    # bundle candidates: each changed file with the base of its best patch, else the old
    # file at the same path (plan_pairs' first base)
    first_base = {}
    for b, t in pairs:
        if b and t not in first_base:
            first_base[t] = b
    files = []
    for t, e in sorted(wanted.items(), key=lambda kv: kv[1]["path"]):
        patch = next((r for r in recipe_doc[t] if r["kind"] == "patch"), None)
        base = patch["base"] if patch else first_base.get(t)
        files.append({"target": t, "path": e["path"], "size": e["size"], "base": base,
                      "base_size": size_of.get(base, 0) if base else 0})
    bundles = []
    bundle_build = []
    for cand in bundle_candidates(files, limits):
        if len(cand.targets) < 2:
            continue
        t0 = time.perf_counter()
        info = build_bundle([path_of[b] for b in cand.bases], [path_of[t] for t in cand.targets],
                            objects / "bundle.tmp", limits)
        os.replace(info.path, objects / info.object)
        row = info.to_dict()
        bundles.append(row)
        bundle_build.append({"name": cand.name, "targets": len(cand.targets), "bases": len(cand.bases),
                             "size": info.size, "per_file": sum(recipe_doc[t][0]["size"] for t in cand.targets),
                             "build_s": time.perf_counter() - t0})
    doc = with_bundles({"recipes": recipe_doc, "bytes": {"recipes": per_file_bytes}}, bundles, have)
    chosen = {}
    for t, offers in doc["recipes"].items():
        chosen[t] = offers[0]
    kinds: dict[str, int] = {}
    for r in {r["object"]: r for r in chosen.values()}.values():
        key = r["kind"] if r["kind"] != "patch" else f"patch:{r['algorithm']}"
        kinds[key] = kinds.get(key, 0) + r["size"]
    return {"bytes": doc["bytes"]["recipes"], "per_file_bytes": per_file_bytes, "changed_files": len(wanted),
            "changed_bytes": sum(e["size"] for e in wanted.values()), "pairs_built": len(pairs),
            "bundles": bundle_build, "bytes_by_kind": kinds, "chosen": chosen,
            "per_file_s": per_file_s, "elapsed_s": time.perf_counter() - started, "peak_rss_bytes": peak_rss()}


def deltacas_apply(old: Path, new: Path, objects: Path, chosen: dict[str, Any], dest: Path) -> dict[str, Any]:
    """What the client does once the objects are downloaded: rebuild, verify, link the rest."""
    from deltagen import apply_bundle, apply_patch, decompress_file

    started = time.perf_counter()
    old_files = tree_entries(old)  # a client knows these from its cached manifest
    old_by_digest = {e["blake3"]: old / e["path"] for e in old_files if e["type"] == "file"}
    new_files = json.loads((objects / "new-manifest.json").read_text())
    started = time.perf_counter()  # manifests are cached on a client: time the rebuild only
    dest.mkdir(parents=True)
    built_dir = dest.parent / (dest.name + ".objects")
    built_dir.mkdir()
    built: dict[str, Path] = {}
    for r in {r["object"]: r for r in chosen.values() if r["kind"] == "bundle"}.values():
        built.update(apply_bundle([old_by_digest[b] for b in r["bases"]], objects / r["object"], r["members"],
                                  built_dir))
    for t, r in chosen.items():
        if t in built:
            continue
        size = next(e["size"] for e in new_files if e.get("blake3") == t)
        out = built_dir / t
        if r["kind"] == "patch":
            apply_patch(r["algorithm"], old_by_digest[r["base"]], objects / r["object"], out, size, t)
        elif r["kind"] == "compressed":
            decompress_file(objects / r["object"], out, size, t)
        else:
            shutil.copyfile(new / next(e["path"] for e in new_files if e.get("blake3") == t), out)
        built[t] = out
    for e in new_files:
        path = dest / e["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if e["type"] == "symlink":
            os.symlink(e["target"], path)
            continue
        src = old_by_digest.get(e["blake3"]) or built[e["blake3"]]
        try:
            os.link(src, path)
        except OSError:
            shutil.copyfile(src, path)
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
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    err = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed: {err.strip()[-500:]}")
    return {"elapsed_s": elapsed, "peak_rss_bytes": usage.ru_maxrss * 1024}


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


def print_table(results: dict[str, Any]) -> str:
    lines = ["| pair | changed files | deltacas B | OSTree B | deltacas / OSTree | casync new chunks B | "
             "tar.zst -19 B | gen s deltacas / OSTree | gen peak MiB deltacas / OSTree | "
             "apply s deltacas / OSTree |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        d, o = r["deltacas"], r["ostree"]
        lines.append(
            f"| {name} | {d['changed_files']} | {d['bytes']:,} | {o['bytes']:,} | {ratio(d['bytes'], o['bytes'])} | "
            f"{r['casync']['bytes']:,} | {r['tar_zstd_bytes']:,} | "
            f"{d['elapsed_s']:.1f} / {o['generate_s']:.1f} | "
            f"{d['peak_rss_bytes'] / 2**20:.0f} / {o['generate_peak_rss_bytes'] / 2**20:.0f} | "
            f"{d['apply_s']:.2f} / {o['apply_s']:.2f} |")
    tot = {k: sum(r["deltacas"][k] for r in results.values()) for k in ("bytes", "changed_files", "elapsed_s")}
    ost = sum(r["ostree"]["bytes"] for r in results.values())
    lines.append(f"| **all pairs** | {tot['changed_files']} | {tot['bytes']:,} | {ost:,} | "
                 f"{ratio(tot['bytes'], ost)} | {sum(r['casync']['bytes'] for r in results.values()):,} | "
                 f"{sum(r['tar_zstd_bytes'] for r in results.values()):,} | "
                 f"{tot['elapsed_s']:.1f} / {sum(r['ostree']['generate_s'] for r in results.values()):.1f} | "
                 f"{max(r['deltacas']['peak_rss_bytes'] for r in results.values()) / 2**20:.0f} / "
                 f"{max(r['ostree']['generate_peak_rss_bytes'] for r in results.values()) / 2**20:.0f} | "
                 f"{sum(r['deltacas']['apply_s'] for r in results.values()):.2f} / "
                 f"{sum(r['ostree']['apply_s'] for r in results.values()):.2f} |")
    table = "\n".join(lines)
    print(table)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deltacas-peers"))
    parser.add_argument("--only", action="append", choices=[p[0] for p in PAIRS])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peers.json")
    args = parser.parse_args()
    for tool in ("ostree", "casync", "zstd", "tar"):
        if shutil.which(tool) is None:
            print(f"peers.py: {tool} is not installed (apt-get install -y ostree casync zstd)", file=sys.stderr)
            return 1
    work: Path = args.work
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor(),
                    "loadavg_at_start": os.getloadavg()},
        "versions": versions(), "pairs": {}}
    for name, v_old, v_new in PAIRS:
        if args.only and name not in args.only:
            continue
        label = f"{name} {v_old}->{v_new}"
        old = unpack(fetch_wheel(name, v_old, work / "wheels"), work / "trees" / f"{name}-{v_old}")
        new = unpack(fetch_wheel(name, v_new, work / "wheels"), work / "trees" / f"{name}-{v_new}")
        scratch = Path(tempfile.mkdtemp(prefix=f"peers-{name}-", dir=work))
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
        report["pairs"][label] = {"deltacas": gen, "ostree": ost, "casync": cas, "tar_zstd_bytes": tz}
        print(f"{label}: deltacas {gen['bytes']:,} B (per-file only {gen['per_file_bytes']:,}), "
              f"OSTree {ost['bytes']:,} B", file=sys.stderr, flush=True)
    report["table_markdown"] = print_table(report["pairs"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
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
