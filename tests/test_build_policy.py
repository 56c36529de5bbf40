"""The build policy (deltagen/policy.py): which candidates get built for which file, the
memory gate that lets builds run side by side, the operator's settings, and the order in
which a release's jobs are claimed."""
from __future__ import annotations

import gzip
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import start_server, wait_for_builds

import deltagen
from cas import deltas, publisher, releases
from cas.config import load_config
from cas.keys import init_keys, key_path, load_private_key
from cas.repo import open_repo
from cas.trees import scan_tree
from casformat.canonical import parse_json
from deltagen import DeltaLimits
from deltagen.budget import MemoryGate
from deltagen.digests import blake3_file
from deltagen.policy import TEXT_HDIFF_BYTES, classify

FAST = DeltaLimits(zstd_level=3, compress_level=3)


def _elf(rng: random.Random, size: int) -> bytes:
    """Machine-code-like bytes: an ELF magic, then a mix of repeated 'instructions' and noise."""
    words = [rng.randbytes(4) for _ in range(64)]
    body = b"".join(rng.choice(words) if rng.random() < 0.8 else rng.randbytes(4) for _ in range(size // 4))
    return b"\x7fELF\x02\x01\x01" + body[7:]


def _edit(rng: random.Random, data: bytes, edits: int = 20) -> bytes:
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(out) - 64)
        out[at:at + 16] = rng.randbytes(16)
    return bytes(out)


def _text(rng: random.Random, lines: int) -> str:
    words = ["alpha", "beta", "gamma", "delta", "return", "function", "const", "let", "if", "else"]
    return "\n".join(" ".join(rng.choice(words) for _ in range(8)) for _ in range(lines)) + "\n"


def _names(attempts: list[deltagen.Attempt]) -> dict[str, str]:
    return {a.name: a.outcome for a in attempts}


# ----------------------------------------------------------------------------- classify

def test_classify_by_magic_and_samples(tmp_path: Path) -> None:
    rng = random.Random(1)
    cases = {
        "elf": (_elf(rng, 100_000), "executable"),
        "pe": (b"MZ" + rng.randbytes(1000), "executable"),
        "macho": (b"\xcf\xfa\xed\xfe" + rng.randbytes(1000), "executable"),
        "gz": (gzip.compress(_text(rng, 500).encode()), "compressed"),
        "random": (rng.randbytes(200_000), "compressed"),   # no magic, but zstd cannot shrink it
        "text": (("é ünïcode " + _text(rng, 20_000)).encode(), "text"),
        "table": (b"\0\0\0\x01" * 50_000, "binary"),         # NUL bytes, compressible
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert classify(tmp_path / name) == expected, name


def test_a_sample_cut_inside_a_utf8_character_is_still_text(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_bytes(("ü" * 200_000).encode())  # 2 bytes per character: samples cut some in half
    assert classify(path) == "text"


# ----------------------------------------------------------------------------- candidates

def test_executable_builds_hdiffpatch_only(tmp_path: Path) -> None:
    rng = random.Random(2)
    old = _elf(rng, 300_000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(_edit(rng, old))
    attempts: list[deltagen.Attempt] = []
    recipes = deltagen.best_recipes(tmp_path / "old", tmp_path / "new", tmp_path / "w", FAST, attempts)
    outcome = _names(attempts)
    assert recipes[0].kind == "patch" and recipes[0].algorithm == "hdiffpatch"
    assert outcome["zstd"].startswith("not built: the executable policy keeps hdiffpatch")
    assert outcome["bsdiff4"].startswith("not built")


def test_small_text_builds_zstd_only_and_large_text_hdiffpatch_first(tmp_path: Path) -> None:
    rng = random.Random(3)
    for name, lines, first in (("small", 2_000, "zstd"), ("large", 40_000, "hdiffpatch")):
        old = _text(rng, lines).encode()
        new = old[: len(old) // 2] + b"a changed line\n" + old[len(old) // 2:]
        (tmp_path / f"{name}.old").write_bytes(old)
        (tmp_path / f"{name}.new").write_bytes(new)
        assert (len(new) >= TEXT_HDIFF_BYTES) == (name == "large")
        attempts: list[deltagen.Attempt] = []
        recipes = deltagen.best_recipes(tmp_path / f"{name}.old", tmp_path / f"{name}.new", tmp_path / name,
                                        FAST, attempts)
        built = [a.name for a in attempts if not a.outcome.startswith(("not built", "skipped"))
                 and a.name != "compressed" and a.outcome != "kept"]
        assert built == [first], attempts
        assert recipes[0].algorithm == first


def test_a_poor_patch_makes_the_runner_up_worth_building(tmp_path: Path) -> None:
    """'binary' files (compressible, no magic) always get the runner-up; an executable
    whose patch is more than half its size gets it too."""
    rng = random.Random(4)
    (tmp_path / "old").write_bytes(b"\0\0\0\x01" * 20_000 + rng.randbytes(20_000))
    (tmp_path / "new").write_bytes(b"\0\0\0\x02" * 20_000 + rng.randbytes(20_000))
    attempts: list[deltagen.Attempt] = []
    deltagen.best_recipes(tmp_path / "old", tmp_path / "new", tmp_path / "w", FAST, attempts)
    assert not _names(attempts)["zstd"].startswith("not built")

    (tmp_path / "old2").write_bytes(_elf(rng, 100_000))
    (tmp_path / "new2").write_bytes(b"\x7fELF" + rng.randbytes(100_000))  # nothing in common
    attempts = []
    deltagen.best_recipes(tmp_path / "old2", tmp_path / "new2", tmp_path / "w2", FAST, attempts)
    assert not _names(attempts)["zstd"].startswith("not built"), attempts


def test_exhaustive_policy_builds_every_algorithm(tmp_path: Path) -> None:
    rng = random.Random(5)
    old = _elf(rng, 200_000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(_edit(rng, old))
    attempts: list[deltagen.Attempt] = []
    limits = DeltaLimits(zstd_level=3, compress_level=3, build_policy="exhaustive")
    deltagen.best_recipes(tmp_path / "old", tmp_path / "new", tmp_path / "w", limits, attempts)
    assert not any(a.outcome.startswith("not built") for a in attempts), attempts
    assert {a.name for a in attempts} >= {"hdiffpatch", "zstd", "bsdiff4"}


def test_the_policy_stays_within_the_allowed_algorithms(tmp_path: Path) -> None:
    """An operator who wants recipes stock tools read allows zstd and bsdiff4 only: an
    executable then gets zstd first (hdiffpatch is never built)."""
    rng = random.Random(6)
    old = _elf(rng, 200_000)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(_edit(rng, old))
    attempts: list[deltagen.Attempt] = []
    limits = DeltaLimits(zstd_level=3, compress_level=3, patch_algorithms=("zstd", "bsdiff4"))
    recipes = deltagen.best_recipes(tmp_path / "old", tmp_path / "new", tmp_path / "w", limits, attempts)
    assert "hdiffpatch" not in {a.name for a in attempts}
    assert recipes[0].algorithm == "zstd"


def test_compressed_false_builds_no_compressed_form(tmp_path: Path) -> None:
    rng = random.Random(7)
    old = _text(rng, 3_000).encode()
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(old + b"one more line\n")
    attempts: list[deltagen.Attempt] = []
    recipes = deltagen.best_recipes(tmp_path / "old", tmp_path / "new", tmp_path / "w", FAST, attempts,
                                    compressed=False)
    assert [r.kind for r in recipes] == ["patch", "raw"]
    assert "compressed" not in {a.name for a in attempts}


def test_bad_policy_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="build_policy"):
        DeltaLimits(build_policy="fastest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="patch_algorithms"):
        DeltaLimits(patch_algorithms=("zstd", "xdelta"))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- bundles

def test_bundle_candidates_leave_out_patched_native_libraries_and_large_offers() -> None:
    def f(path: str, best_size: int, algorithm: str | None) -> dict[str, object]:
        return {"target": path.ljust(64, "0"), "path": path, "size": 10_000, "base": None, "base_size": 0,
                "best_size": best_size, "best_algorithm": algorithm}
    files = [f("a.py", 100, "zstd"), f("b.py", 120, "zstd"), f("lib.so", 500, "hdiffpatch"),
             f("big.json", 200_000, "zstd"), f("c.txt", 90, None)]
    auto = deltagen.bundle_candidates(files, DeltaLimits())
    everything = {t for c in auto for t in c.targets}
    assert everything == {f("a.py", 0, None)["target"], f("b.py", 0, None)["target"], f("c.txt", 0, None)["target"]}
    exhaustive = deltagen.bundle_candidates(files, DeltaLimits(build_policy="exhaustive"))
    assert len({t for c in exhaustive for t in c.targets}) == 5


# ----------------------------------------------------------------------------- memory gate

def test_memory_gate_holds_builds_that_would_pass_the_budget() -> None:
    gate = MemoryGate(100)
    events: list[str] = []
    first_in = threading.Event()
    release_first = threading.Event()

    def big(name: str, hold: threading.Event | None) -> None:
        with gate.reserve(70):
            events.append(f"{name} in")
            first_in.set()
            if hold is not None:
                hold.wait(5)
            events.append(f"{name} out")

    a = threading.Thread(target=big, args=("a", release_first))
    a.start()
    assert first_in.wait(5)
    b = threading.Thread(target=big, args=("b", None))
    b.start()
    time.sleep(0.2)
    assert events == ["a in"]          # b waits: 70 + 70 > 100
    with gate.reserve(20):             # a small one fits beside a
        events.append("small")
    release_first.set()
    a.join(5)
    b.join(5)
    assert events == ["a in", "small", "a out", "b in", "b out"]
    with gate.reserve(500):            # larger than the whole budget: runs, alone
        assert gate.used == 500
    assert gate.used == 0


# ----------------------------------------------------------------------------- server settings

def test_server_settings_reach_the_builder_and_bad_ones_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "config.toml").write_text('delta_patch_algorithms = ["zstd", "bsdiff4"]\n'
                                       'delta_hdiffpatch_max_bytes = 1048576\ndelta_build_policy = "exhaustive"\n')
    limits = load_config(store).delta_limits()
    assert limits.patch_algorithms == ("zstd", "bsdiff4")
    assert limits.hdiffpatch_max_bytes == 1 << 20 and limits.build_policy == "exhaustive"
    (store / "config.toml").write_text('delta_patch_algorithms = ["zstd", "courgette"]\n')
    with pytest.raises(ValueError, match="patch_algorithms"):
        load_config(store)
    (store / "config.toml").write_text('delta_build_policy = "everything"\n')
    with pytest.raises(ValueError, match="build_policy"):
        load_config(store)


def test_builder_uses_every_cpu_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    repo = open_repo(load_config(tmp_path / "s"))
    assert deltas.worker_count(repo) == 6
    repo = open_repo(load_config(tmp_path / "t", delta_workers=1))
    assert deltas.worker_count(repo) == 1


# ----------------------------------------------------------------------------- end to end

def test_a_server_limited_to_stock_tools_serves_recipes_bspatch_and_zstd_rebuild(
        tmp_path: Path, release_trees: list[Path]) -> None:
    """`delta_patch_algorithms = ["zstd", "bsdiff4"]`: every patch served is one the stock
    `zstd -d --patch-from` or `bspatch` turns into the exact target."""
    server = start_server(tmp_path / "store",
                          config='delta_poll_seconds = 0.2\ndelta_patch_algorithms = ["zstd", "bsdiff4"]\n')
    try:
        key = str(server.store / "keys" / "release.pem")
        for version, tree in zip(("1.0.0", "1.1.0"), release_trees):
            server.cas("publish", str(tree), "--product", "app", "--version", version, "--key", key,
                       "--status", "released")
        with server.client() as http:
            assert wait_for_builds(http)["counts"]["failed"] == 0
            delta = http.get("/v1/products/app/releases/1.1.0/delta", params={"from": "1.0.0"}).json()
            base_manifest = http.get("/v1/products/app/releases/1.0.0/manifest").json()["signed"]
            patches = [r for offers in delta["recipes"].values() for r in offers if r["kind"] == "patch"]
            assert patches and {r["algorithm"] for r in patches} <= {"zstd", "bsdiff4"}
            old_by_digest = {e["blake3"]: release_trees[0] / e["path"] for e in base_manifest["files"]
                             if e["type"] == "file"}
            sizes = {e["blake3"]: e["size"] for e in delta["upserted"] if e["type"] == "file"}
            for target, offers in delta["recipes"].items():
                for r in (r for r in offers if r["kind"] == "patch"):
                    (tmp_path / "patch").write_bytes(http.get(f"/v1/objects/{r['object']}").content)
                    out = tmp_path / "out"
                    out.unlink(missing_ok=True)
                    old = str(old_by_digest[r["base"]])
                    argv = (["bspatch", old, str(out), str(tmp_path / "patch")] if r["algorithm"] == "bsdiff4"
                            else ["zstd", "-q", "-d", "--long=31", "--patch-from", old, str(tmp_path / "patch"),
                                  "-o", str(out)])
                    subprocess.run(argv, check=True)
                    assert blake3_file(out) == target and out.stat().st_size == sizes[target]
    finally:
        server.stop()


def test_a_release_builds_each_compressed_form_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A planned pair comes with a ("", target) job for the target's compressed form: the
    patch job then builds none (before the policy, both built it)."""
    import deltagen.budget as budget
    compressed: list[str] = []
    real = budget._run_job

    def counting(job, old_path, new_path, out_path, limits):  # type: ignore[no-untyped-def]
        if job == "compressed":
            compressed.append(blake3_file(new_path))
        return real(job, old_path, new_path, out_path, limits)

    monkeypatch.setattr(budget, "_run_job", counting)
    store = tmp_path / "store"
    r = open_repo(load_config(store, delta_workers=1))
    init_keys(store, r.meta)
    r.reload_keys()
    key = load_private_key(key_path(store, "release"))
    for v in range(3):
        tree = tmp_path / f"t{v}"
        (tree / "lib").mkdir(parents=True)
        for name in ("a", "b"):
            (tree / "lib" / f"{name}.txt").write_text(_text(random.Random(name), 2000) + f"version {v}\n")
        scanned = scan_tree(tree)
        publisher.publish_local(r, scanned, publisher.signed_manifest("app", f"1.{v}", scanned, key))
        for step in ("testing", "released"):
            releases.move_status(r, "app", f"1.{v}", step, "test")
    assert deltas.drain(r) > 0
    assert compressed and len(compressed) == len(set(compressed)), compressed
    release = r.meta.get_release("app", "1.2")
    assert release is not None
    for e in parse_json(release.manifest)["signed"]["files"]:
        kinds = sorted(x["kind"] for x in r.meta.recipes_for([e["blake3"]])[e["blake3"]])
        assert kinds == ["compressed", "patch", "patch"], kinds  # from 1.0 and from 1.1


def test_already_compressed_data_is_compressed_at_a_low_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Level 19 finds nothing more in compressed data, at ~100x the time of level 3."""
    import deltagen.budget as budget
    levels: list[int] = []
    real = budget._run_job

    def spy(job, old_path, new_path, out_path, limits):  # type: ignore[no-untyped-def]
        if job == "compressed":
            levels.append(limits.compress_level)
        return real(job, old_path, new_path, out_path, limits)

    monkeypatch.setattr(budget, "_run_job", spy)
    rng = random.Random(8)
    for name, data in (("archive.gz", gzip.compress(rng.randbytes(50_000))), ("notes.txt", _text(rng, 500).encode())):
        (tmp_path / name).write_bytes(data)
        deltagen.best_recipes(tmp_path / name, tmp_path / name, tmp_path / "w", DeltaLimits())
    assert levels == [3, 19]


def test_the_all_bundle_is_left_out_when_the_kind_groups_hold_nearly_every_file() -> None:
    def f(path: str) -> dict[str, object]:
        return {"target": path.ljust(64, "0"), "path": path, "size": 1000, "base": None, "base_size": 0,
                "best_size": 100, "best_algorithm": "zstd"}
    split = [f(f"m{i}.py") for i in range(10)] + [f(f"d{i}.txt") for i in range(9)] + [f("x.so")]
    names = [c.name for c in deltagen.bundle_candidates(split, DeltaLimits())]
    assert names == ["python", "other"]  # 19 of 20 files in kind groups
    assert [c.name for c in deltagen.bundle_candidates(split, DeltaLimits(build_policy="exhaustive"))] == [
        "all", "python", "other"]
    mixed = [f("a.py"), f("b.py"), f("c.txt"), f("d.so")]  # half the files in no kind group
    assert [c.name for c in deltagen.bundle_candidates(mixed, DeltaLimits())] == ["all", "python"]


# ----------------------------------------------------------------------------- issue 15: build time

def test_large_files_get_the_large_compression_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of compress_large_bytes and more are compressed at compress_large_level (17 by
    default: ~0.6x the time of 19); smaller ones at compress_level; compressed data at 3."""
    import deltagen.budget as budget
    from deltagen.recipes import compress_level_for
    levels: list[int] = []
    real = budget._run_job

    def spy(job, old_path, new_path, out_path, limits):  # type: ignore[no-untyped-def]
        if job == "compressed":
            levels.append(limits.compress_level)
        return real(job, old_path, new_path, out_path, limits)

    monkeypatch.setattr(budget, "_run_job", spy)
    rng = random.Random(15)
    limits = DeltaLimits(compress_large_bytes=200_000)  # builds in this process: old + new <= 1 MiB
    for name, data in (("small.txt", _text(rng, 2_000).encode()), ("large.txt", _text(rng, 40_000).encode()[:300_000]),
                       ("large.gz", gzip.compress(rng.randbytes(300_000)))):
        (tmp_path / name).write_bytes(data)
        recipes = deltagen.best_recipes(tmp_path / name, tmp_path / name, tmp_path / "w", limits)
        packed = next((r for r in recipes if r.kind == "compressed"), None)
        if packed is not None:  # the stock CLI reads the form, whatever its level
            out = subprocess.run(["zstd", "-d", "-q", "-c", str(packed.path)], capture_output=True, check=True).stdout
            assert out == data
    assert (tmp_path / "large.txt").stat().st_size >= 200_000 > (tmp_path / "small.txt").stat().st_size
    assert levels == [19, 17, 3]
    assert DeltaLimits().compress_large_bytes == 4 << 20 and DeltaLimits().compress_large_level == 17
    # never above compress_level: an operator's low level holds for large files too
    assert compress_level_for("text", 10 << 20, DeltaLimits(compress_level=5)) == 5
    assert compress_level_for("text", (4 << 20) - 1, DeltaLimits()) == 19
    assert compress_level_for("executable", 4 << 20, DeltaLimits()) == 17
    with pytest.raises(ValueError):
        DeltaLimits(compress_large_level=23)


def test_the_frame_floor_is_below_every_real_frame(tmp_path: Path) -> None:
    """frame_floor is a true lower bound: no bundle of the same bytes is smaller, even of
    content zstd compresses best (zeros, the same bytes as the base)."""
    from deltagen.bundles import frame_floor
    rng = random.Random(16)
    cases = {"zeros": (bytes(1_000_000), bytes(1_000_000)), "same": (rng.randbytes(700_000),) * 2,
             "text": (_text(rng, 30_000).encode(),) * 2, "tiny": (b"a" * 600, b"a" * 600)}
    for name, (old, new) in cases.items():
        (tmp_path / f"{name}.old").write_bytes(old)
        (tmp_path / f"{name}.new").write_bytes(new)
        info = deltagen.build_bundle([tmp_path / f"{name}.old"], [tmp_path / f"{name}.new"],
                                     tmp_path / f"{name}.zst", DeltaLimits(zstd_level=19))
        assert frame_floor(len(new)) <= info.size, (name, frame_floor(len(new)), info.size)
    assert frame_floor(0) == 13 and frame_floor(128 * 1024) == 13 and frame_floor(128 * 1024 + 1) == 17


def test_bundles_that_cannot_win_and_patched_executables_are_not_proposed() -> None:
    """A group whose smallest possible frame is not below its members' per-file offers is
    not built (typescript: 388 B of patches for 15 MB of JavaScript); an executable (by
    content class) whose offer is a machine-code patch joins no group, as a library."""
    def f(path: str, size: int, best_size: int, algorithm: str | None, **extra: object) -> dict[str, object]:
        return {"target": path.ljust(64, "0"), "path": path, "size": size, "base": None, "base_size": 0,
                "best_size": best_size, "best_algorithm": algorithm, **extra}
    big = [f("lib/tsc.js", 6_239_091, 73, "hdiffpatch"), f("lib/typescript.js", 9_144_216, 246, "hdiffpatch"),
           f("lib/x.js", 3_000, 69, "zstd")]
    assert deltagen.bundle_candidates(big, DeltaLimits()) == []
    # with room to win (per-file offers above the floor) the same group is proposed
    roomy = [dict(x, best_size=5_000) for x in big]
    assert [c.name for c in deltagen.bundle_candidates(roomy, DeltaLimits())] == ["all"]
    # "exhaustive" proposes everything, as before
    assert [c.name for c in deltagen.bundle_candidates(big, DeltaLimits(build_policy="exhaustive"))] == ["all"]
    programs = [f(f"usr/bin/git-{n}", 2_000_000, 700, "hdiffpatch", **{"class": "executable"}) for n in "abc"]
    notes = [f("usr/share/a.txt", 9_000, 300, "zstd"), f("usr/share/b.txt", 9_000, 300, "zstd")]
    chosen = deltagen.bundle_candidates(programs + notes, DeltaLimits())
    assert {t for c in chosen for t in c.targets} == {n["target"] for n in notes}
    # without the class (the caller did not look) the programs are not known as machine code
    unknown = [{k: v for k, v in p.items() if k != "class"} for p in programs]
    assert len({t for c in deltagen.bundle_candidates(unknown + notes, DeltaLimits()) for t in c.targets}) == 5


def test_the_server_keeps_patched_programs_out_of_bundles(tmp_path: Path) -> None:
    """cas.deltas.build_bundles classifies a changed file without a library's name whose best
    offer is an hdiffpatch patch: an ELF program joins no bundle, the text files still do."""
    store = tmp_path / "store"
    r = open_repo(load_config(store, delta_workers=1))
    init_keys(store, r.meta)
    r.reload_keys()
    key = load_private_key(key_path(store, "release"))
    rng = random.Random(17)
    program = _elf(rng, 200_000)
    for v in range(2):
        tree = tmp_path / f"t{v}"
        (tree / "bin").mkdir(parents=True)
        (tree / "share").mkdir()
        (tree / "bin" / "tool").write_bytes(program if v == 0 else _edit(random.Random(3), program, 5))
        for name in ("a", "b"):
            (tree / "share" / f"{name}.txt").write_text(_text(random.Random(name), 300) + f"version {v}\n")
        scanned = scan_tree(tree)
        publisher.publish_local(r, scanned, publisher.signed_manifest("app", f"1.{v}", scanned, key))
        for step in ("testing", "released"):
            releases.move_status(r, "app", f"1.{v}", step, "test")
    assert deltas.drain(r) > 0
    old, new = r.meta.get_release("app", "1.0"), r.meta.get_release("app", "1.1")
    assert old is not None and new is not None
    files = {e["path"]: e["blake3"] for e in parse_json(new.manifest)["signed"]["files"] if e["type"] == "file"}
    offers = r.meta.recipes_for([files["bin/tool"]])[files["bin/tool"]]
    assert any(o["kind"] == "patch" and o["algorithm"] == "hdiffpatch" for o in offers), offers
    bundles = r.meta.bundles_for(old.manifest_digest, new.manifest_digest)
    members = {m["blake3"] for b in bundles for m in b["members"]}
    assert members == {files["share/a.txt"], files["share/b.txt"]}, bundles


def test_zstd_patch_builds_free_their_buffers_without_the_cyclic_gc(tmp_path: Path) -> None:
    """zstd_prefix passes its 1 MiB buffers to libzstd by address: a ctypes.cast made each one
    part of a reference cycle, freed only when the cyclic GC ran (scikit-learn's builder held
    418 MiB of them; its peak fell from 521-604 to 251 MiB with the fix)."""
    import gc

    from deltagen import zstd_prefix
    # libzstd.so.1 is part of every Debian system (apt needs it): the path under test must be the one taken
    assert zstd_prefix.available(), "no system libzstd: zstd patches would not go through zstd_prefix"

    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    rng = random.Random(18)
    old = rng.randbytes(1 << 20)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(old[:500_000] + rng.randbytes(3_000_000) + old[500_000:])
    limits = DeltaLimits(zstd_level=1)
    gc.collect()
    gc.disable()
    try:
        deltagen.make_patch("zstd", tmp_path / "old", tmp_path / "new", tmp_path / "p0", limits)
        before = rss()
        for n in range(40):  # 40 x (1 MiB out buffer + 4 input chunks of 1 MiB) if they leaked
            deltagen.make_patch("zstd", tmp_path / "old", tmp_path / "new", tmp_path / f"p{n}", limits)
        grown = rss() - before
    finally:
        gc.enable()
    assert grown < 40 << 20, grown
    assert (tmp_path / "p39").stat().st_size < 3_300_000
