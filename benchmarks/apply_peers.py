#!/usr/bin/env python3
"""The apply column of ``benchmarks/peers.py`` alone, repeated (a script, not a test).

``peers.py`` measures apply once per pair, after a generation that takes up to ~20 min for
the largest pairs.  This script builds each pair's deltacas objects (``peers.py``'s
``generate`` step, the same child) and OSTree's static delta once, keeps them in
``--cache`` across runs, then times only the apply of both sides ``--repeat`` times (median):

- deltacas: ``peers.py``'s ``apply`` child (rebuild every changed file, verified, link the
  rest, one ``syncfs``), its own elapsed time;
- OSTree: ``static-delta apply-offline`` into a fresh bare-user repo holding the old commit,
  then ``checkout -U`` of the new commit (as ``peers.py``).

So the apply code can be changed and re-measured against the same objects.  Objects built
by an older deltacas are rebuilt with ``--rebuild``.  Prints a table and writes
benchmarks/results/peers-apply.json.

    python benchmarks/apply_peers.py --only pyarrow --only django [--repeat 3] [--rebuild]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from corpus import CORPUS, Pair, release_tree  # noqa: E402
from peers import dir_bytes, git_commit, run_child, run_cmd, tree_entries  # noqa: E402


def prepare(pair: Pair, work: Path, cache: Path, rebuild: bool) -> dict[str, Any]:
    """deltacas objects + chosen recipes, and OSTree's repo with its delta (built once)."""
    old, new = release_tree(pair, pair.old, work), release_tree(pair, pair.new, work)
    here = cache / pair.name
    done = here / "prepared.json"
    if done.exists() and not rebuild:
        return json.loads(done.read_text())
    shutil.rmtree(here, ignore_errors=True)
    here.mkdir(parents=True)
    objects = here / "objects"
    print(f"{pair.label}: deltacas generate ...", file=sys.stderr, flush=True)
    gen = run_child("generate", {"old": str(old), "new": str(new), "objects": str(objects)})
    (objects / "new-manifest.json").write_text(json.dumps(tree_entries(new)))
    print(f"{pair.label}: ostree generate ...", file=sys.stderr, flush=True)
    repo = here / "ostree-repo"
    subprocess.run(["ostree", f"--repo={repo}", "init", "--mode=archive"], check=True)
    for branch, tree in (("old", old), ("new", new)):
        subprocess.run(["ostree", f"--repo={repo}", "commit", f"--branch={branch}", "--no-xattrs",
                        f"--tree=dir={tree}", "-s", branch], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["ostree", f"--repo={repo}", "static-delta", "generate", "--from=old", "--to=new",
                    "--min-fallback-size=0", "--inline"], check=True, stdout=subprocess.DEVNULL)
    info = {"pair": pair.label, "old": str(old), "new": str(new), "objects": str(objects), "chosen": gen["chosen"],
            "deltacas_bytes": gen["bytes"], "bytes_by_kind": gen["bytes_by_kind"],
            "ostree_bytes": dir_bytes(repo / "deltas"), "repo": str(repo), "built_commit": git_commit()}
    done.write_text(json.dumps(info))
    return info


def clean(scratch: Path) -> None:
    """Remove the last run's tree and flush the filesystem, outside the timing: this disk is
    mounted with ``discard``, so the deletion of a tree of thousands of files is otherwise
    paid by whichever run syncs next (both sides sync: deltacas's syncfs, OSTree's commit)."""
    subprocess.run(["chmod", "-R", "u+w", str(scratch)], check=False, capture_output=True)
    shutil.rmtree(scratch, ignore_errors=True)
    os.sync()


def deltacas_apply_once(info: dict[str, Any], scratch: Path, code: Path | None = None) -> dict[str, Any]:
    """``peers.py``'s apply child; with ``code``: that checkout's ``peers.py`` and deltacas."""
    clean(scratch)
    scratch.mkdir(parents=True)
    spec = {"old": info["old"], "new": info["new"], "objects": info["objects"], "chosen": info["chosen"],
            "dest": str(scratch / "deltacas-out")}
    try:
        if code is None:
            return run_child("apply", spec)
        spec_file = scratch / "spec.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, str(code / "benchmarks" / "peers.py"), "_child", "apply", str(spec_file)],
                              capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(code)})
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        clean(scratch)


def ostree_apply_once(info: dict[str, Any], scratch: Path) -> dict[str, Any]:
    clean(scratch)
    scratch.mkdir(parents=True)
    repo, client = Path(info["repo"]), scratch / "client"
    try:
        superblock = next((repo / "deltas").rglob("superblock"))
        new_commit = subprocess.run(["ostree", f"--repo={repo}", "rev-parse", "new"], check=True,
                                    capture_output=True, text=True).stdout.strip()
        subprocess.run(["ostree", f"--repo={client}", "init", "--mode=bare-user"], check=True)
        subprocess.run(["ostree", f"--repo={client}", "pull-local", str(repo), "old"], check=True,
                       stdout=subprocess.DEVNULL)
        os.sync()
        apply = run_cmd(["ostree", f"--repo={client}", "static-delta", "apply-offline", str(superblock)])
        checkout = run_cmd(["ostree", f"--repo={client}", "checkout", "-U", new_commit, str(scratch / "out")])
        return {"elapsed_s": apply["elapsed_s"] + checkout["elapsed_s"], "apply_offline_s": apply["elapsed_s"],
                "checkout_s": checkout["elapsed_s"]}
    finally:
        clean(scratch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/deltacas-peers"))
    parser.add_argument("--cache", type=Path, default=Path("/tmp/deltacas-apply-peers"))
    parser.add_argument("--only", action="append", choices=[p.name for p in CORPUS], metavar="NAME")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="build the objects again")
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--no-ostree", action="store_true", help="time deltacas's apply only")
    parser.add_argument("--before", type=Path, metavar="DIR",
                        help="also time the apply of the deltacas checked out in DIR (e.g. `git archive` of the "
                             "commit before a change), interleaved with this one's: before, after, OSTree")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peers-apply.json")
    args = parser.parse_args()
    pairs = [p for p in CORPUS if not args.only or p.name in args.only]
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "commit": git_commit(),
                              "loadavg_at_start": os.getloadavg(), "repeat": args.repeat, "pairs": {}}
    rows = []
    for pair in pairs:
        info = prepare(pair, args.work, args.cache, args.rebuild)
        if args.prepare_only:
            continue
        scratch = args.cache / pair.name / "scratch"
        b_runs: list[float] = []
        d_runs: list[float] = []
        o_runs: list[dict[str, Any]] = []
        for i in range(args.repeat):   # interleaved: the machine's load changes within a run
            # before and after take turns going first (the first after OSTree's run, the other after it)
            for code in ([args.before, None] if i % 2 == 0 else [None, args.before]):
                if code is None:
                    d_runs.append(deltacas_apply_once(info, scratch)["elapsed_s"])
                elif args.before:
                    b_runs.append(deltacas_apply_once(info, scratch, code)["elapsed_s"])
            if not args.no_ostree:
                o_runs.append(ostree_apply_once(info, scratch))
        row = {"deltacas_apply_s": statistics.median(d_runs), "deltacas_runs": d_runs,
               "deltacas_bytes": info["deltacas_bytes"], "bytes_by_kind": info["bytes_by_kind"],
               "ostree_bytes": info["ostree_bytes"], "objects_built_by": info["built_commit"]}
        if b_runs:
            row |= {"before_apply_s": statistics.median(b_runs), "before_runs": b_runs}
        if o_runs:
            row |= {"ostree_apply_s": statistics.median(r["elapsed_s"] for r in o_runs), "ostree_runs": o_runs}
        report["pairs"][pair.label] = row
        rows.append((pair.name, row))
        o_text = f"{row['ostree_apply_s']:.2f}" if o_runs else "-"
        b_text = f"{row['before_apply_s']:.2f}" if b_runs else "-"
        print(f"{pair.label}: apply deltacas {row['deltacas_apply_s']:.2f} s (before: {b_text}), OSTree {o_text} s",
              file=sys.stderr, flush=True)
    if args.prepare_only:
        return 0
    report["loadavg_at_end"] = os.getloadavg()
    print("| pair | deltacas B | OSTree B | apply s before | apply s deltacas | apply s OSTree | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        o, b = r.get("ostree_apply_s"), r.get("before_apply_s")
        d = r["deltacas_apply_s"]
        print(f"| {name} | {r['deltacas_bytes']:,} | {r['ostree_bytes']:,} | {'-' if b is None else f'{b:.2f}'} | "
              f"{d:.2f} | {'-' if o is None else f'{o:.2f}'} | {'-' if not o else f'{d / o:.2f}'} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
