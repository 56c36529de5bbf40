"""What sets the delta builder's peak memory, held to account (issue 15, docs/deltagen.md "Builds side by side, and memory").

Each test would fail if a cause measured on the benchmark corpus came back: buffers kept
alive by reference cycles until the cyclic garbage collector runs, match-finder tables
sized for a large input on a small one, the HTTP stack imported by the builder.
"""
from __future__ import annotations

import gc
import random
from pathlib import Path

import deltagen
from deltagen import DeltaLimits, lzma_prefix
from deltagen.limits import Algorithm


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def _without_gc(build: object, runs: int) -> int:
    """RSS growth over ``runs`` calls of ``build(n)`` with the cyclic GC off, after two warm-up
    calls (glibc serves the first call's large blocks by mmap and, once they are freed, raises
    its mmap threshold: the second call's come from the heap, which keeps them for reuse)."""
    assert callable(build)
    gc.collect()
    gc.disable()
    try:
        build(-1)
        build(-2)
        before = _rss()
        for n in range(runs):
            build(n)
        return _rss() - before
    finally:
        gc.enable()


def test_lzma_builds_free_their_buffers_without_the_cyclic_gc(tmp_path: Path) -> None:
    """lzma_prefix passed its 1 MiB output buffer and its options (which held the dictionary:
    the whole old file) to liblzma through ctypes.cast, which puts the source into a reference
    cycle: every HDiffPatch build (its streams coded through lzma_prefix, ~12 calls) left
    ~11 MiB and every lzma-from build its old file + 1 MiB for the collector; two build threads
    of small files took tzdata's builder from 42 to 118 MiB."""
    assert lzma_prefix.exact_size_available(), "liblzma >= 5.4 is required (.ci/run installs it)"
    rng = random.Random(15)
    old = rng.randbytes(1 << 20)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(old[:700_000] + rng.randbytes(50_000) + old[700_000:])
    limits = DeltaLimits()
    algorithms: tuple[Algorithm, ...] = ("hdiffpatch", "lzma-from")
    for algorithm in algorithms:
        def build(n: int, algorithm: Algorithm = algorithm) -> None:
            deltagen.make_patch(algorithm, tmp_path / "old", tmp_path / "new", tmp_path / f"{algorithm}{n}", limits)

        # leaking: hdiffpatch ~11 MiB a build, lzma-from old (1 MiB) + 1 MiB a build
        grown = _without_gc(build, 12)
        assert grown < 12 << 20, (algorithm, grown)
        assert (tmp_path / f"{algorithm}11").stat().st_size < 120_000


def test_lzma_prefix_round_trip_without_the_cyclic_gc() -> None:
    """The same for the raw coder on its own, both directions (a dictionary of 2 MiB)."""
    rng = random.Random(16)
    dictionary = rng.randbytes(2 << 20)
    data = dictionary[1000:200_000] + b"changed" + dictionary[300_000:400_000]
    coded: list[bytes] = []

    def code(n: int) -> None:
        out: list[bytes] = []
        lzma_prefix.compress(dictionary, data, out.append, dict_size=4 << 20, lc=0, lp=0, pb=0, preset=1)
        coded[:] = [b"".join(out)]
        decoded = b"".join(lzma_prefix.decompress(dictionary, iter(coded), dict_size=4 << 20, lc=0, lp=0,
                                                  pb=0, max_output=len(data)))
        assert decoded == data

    grown = _without_gc(code, 10)  # leaking: 2 MiB dictionary + 2 x 1 MiB buffers a round
    assert grown < 12 << 20, grown
    assert len(coded[0]) < 1000


_RETAINED = """
import ctypes, sys
from deltagen.budget import return_freed_memory
if sys.argv[1] == "fixed":
    assert return_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096
size = 16 << 20
first = libc.malloc(size)           # mmapped (above the default threshold) ...
libc.free(first)                    # ... and freed: glibc raises its threshold to 16 MiB
before = rss()
block = libc.malloc(size)           # now from the heap
ctypes.memset(block, 1, size)
libc.free(block)
print(rss() - before)
"""


def test_the_builder_gives_freed_tables_back(tmp_path: Path) -> None:
    """``return_freed_memory`` (called by the delta builder, its build workers and the benchmark):
    a freed 16 MiB table goes back to the system.  Without it glibc keeps it (its dynamic mmap
    threshold): react-dom's builder stood at 71 MiB after its per-file builds instead of 30."""
    import os
    import subprocess
    import sys

    script = tmp_path / "retained.py"
    script.write_text(_RETAINED)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    kept = {mode: int(subprocess.run([sys.executable, str(script), mode], env=env, check=True, capture_output=True,
                                     text=True).stdout) for mode in ("default", "fixed")}
    assert kept["default"] >= 15 << 20, kept   # what the test catches: glibc's default keeps the block
    assert kept["fixed"] < 1 << 20, kept


_BUNDLE_PEAK = """
import json, random, sys
from pathlib import Path
from deltagen import build_bundle
from deltagen.budget import return_freed_memory
return_freed_memory()
tmp, files, size = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
bases, targets = [], []
for n in range(files):
    text = b" ".join(rng.choice(words) for _ in range(size // 5))[:size]
    edited = bytearray(text)
    for _ in range(20):
        at = rng.randrange(len(edited))
        edited[at:at + 8] = rng.randbytes(8)
    (tmp / f"old{n}").write_bytes(text)
    (tmp / f"new{n}").write_bytes(bytes(edited))
    bases.append(tmp / f"old{n}")
    targets.append(tmp / f"new{n}")
def hwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
before = hwm()
info = build_bundle(bases, targets, tmp / "bundle.zst")
print(json.dumps({"peak": hwm() - before, "size": info.size}))
"""


def _bundle_peak(tmp_path: Path, files: int, size: int) -> dict[str, int]:
    import json
    import os
    import subprocess
    import sys

    script = tmp_path / "bundle_peak.py"
    script.write_text(_BUNDLE_PEAK)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, str(script), str(tmp_path), str(files), str(size)], env=env, check=True,
                         capture_output=True, text=True).stdout
    result: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return result


def test_a_bundle_holds_its_match_finder_tables_once(tmp_path: Path) -> None:
    """A bundle of 8 MiB over 8 MiB of bases (react-dom's size) is built single-threaded: with
    one zstd worker thread libzstd made a dictionary of the prefix with tables of its own, then
    the worker's: 189 MiB above the process for react-dom, 91 now (docs/deltagen.md, "Builds side by side, and memory")."""
    result = _bundle_peak(tmp_path, 8, 1 << 20)
    assert result["peak"] < 130 << 20, result
    assert result["size"] < 8 * 20 * 40, result   # 20 edits of 8 bytes per file: a patch, not a copy


def test_a_small_bundle_does_not_allocate_full_size_tables(tmp_path: Path) -> None:
    """Level 19's tables sized for large inputs are ~100 MiB; a bundle of 5 x 64 KiB over as much
    gets tables sized to its input (the level's parameters for the size libzstd is told)."""
    result = _bundle_peak(tmp_path, 5, 64 << 10)
    assert result["peak"] < 24 << 20, result


_COMPRESS_PEAK = """
import sys
from deltagen import compress_file
def hwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
before = hwm()
compress_file(sys.argv[1], sys.argv[1] + ".zst", 19)
print(hwm() - before)
"""


def test_a_compressed_form_has_tables_for_its_size(tmp_path: Path) -> None:
    """Level 19 of a 64 KiB file takes ~2 MiB (the parameters for its size); of 1.4 MiB ~24 MiB,
    its hash table capped at 2^20 entries (36 MiB with level 19's 2^22)."""
    import os
    import subprocess
    import sys

    rng = random.Random(3)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
    text = b" ".join(rng.choice(words) for _ in range(400_000))
    for size in (64 << 10, 1_500_000):
        (tmp_path / str(size)).write_bytes(text[:size])
    script = tmp_path / "compress_peak.py"
    script.write_text(_COMPRESS_PEAK)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    peak = {size: int(subprocess.run([sys.executable, str(script), str(tmp_path / str(size))], env=env,
                                     check=True, capture_output=True, text=True).stdout)
            for size in (64 << 10, 1_500_000)}
    assert peak[64 << 10] < 8 << 20, peak
    assert peak[1_500_000] < 30 << 20, peak
    assert 0 < (tmp_path / "1500000.zst").stat().st_size < 600_000


def test_the_delta_worker_does_not_import_the_http_stack() -> None:
    """``cas serve`` starts its delta builder as ``python -m cas.deltas_worker``: through ``cas.cli``
    it imported every command group (httpx, rich, pygments, the CMS signing stack) and stood at
    ~58 MiB before building anything, ~37 MiB without them."""
    import json
    import os
    import subprocess
    import sys

    probe = ("import json, sys, cas.deltas_worker\n"
             "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    loaded = set(json.loads(subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True,
                                           text=True).stdout))
    assert "deltagen" in loaded and "cas" in loaded
    heavy = {"httpx", "httpcore", "starlette", "uvicorn", "fastapi", "pydantic", "rich", "pygments", "click",
             "pyasn1", "pyasn1_modules", "tomlkit", "boto3", "botocore", "anyio"}
    assert not loaded & heavy, sorted(loaded & heavy)


_PATCH_PEAK = """
import sys
from deltagen import make_patch
def hwm():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM"))
before = hwm()
make_patch("zstd", sys.argv[1], sys.argv[2], sys.argv[2] + ".zst")
print(hwm() - before)
"""


def test_a_small_zstd_patch_has_a_small_hash_table(tmp_path: Path) -> None:
    """A zstd patch of old + new <= 8 MiB caps its hash table at 2^20 entries
    (``zstd_frames.PATCH_HASH_LOG_MAX``): 1 MB + 1.1 MB of text took 38 MiB, now 30."""
    import os
    import subprocess
    import sys

    rng = random.Random(5)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(4000)]
    text = b" ".join(rng.choice(words) for _ in range(400_000))
    (tmp_path / "old").write_bytes(text[:1_000_000])
    (tmp_path / "new").write_bytes(text[:500_000] + b"changed" + text[1_200_000:1_800_000])
    script = tmp_path / "patch_peak.py"
    script.write_text(_PATCH_PEAK)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    peak = int(subprocess.run([sys.executable, str(script), str(tmp_path / "old"), str(tmp_path / "new")], env=env,
                              check=True, capture_output=True, text=True).stdout)
    assert peak < 34 << 20, peak
    assert 0 < (tmp_path / "new.zst").stat().st_size < 700_000


def test_hdiffpatch_is_imported_when_a_patch_needs_it(tmp_path: Path) -> None:
    """``hdiffpatch`` (with attrs, ~4 MiB) is imported by the first HDiffPatch build or apply, not
    with deltagen: requests' builder, which builds zstd patches only, 37 -> 33 MiB."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "old").write_bytes(b"old contents " * 500)
    (tmp_path / "new").write_bytes(b"new contents " * 500)
    probe = ("import json, sys, deltagen\n"
             "before = 'hdiffpatch' in sys.modules\n"
             "deltagen.make_patch('hdiffpatch', sys.argv[1], sys.argv[2], sys.argv[3])\n"
             "print(json.dumps([before, 'hdiffpatch' in sys.modules]))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "old"), str(tmp_path / "new"),
                          str(tmp_path / "patch")], env=env, check=True, capture_output=True, text=True).stdout
    assert json.loads(out) == [False, True]
    assert deltagen.apply_patch("hdiffpatch", tmp_path / "old", tmp_path / "patch", tmp_path / "out",
                                (tmp_path / "new").stat().st_size) and \
        (tmp_path / "out").read_bytes() == (tmp_path / "new").read_bytes()


def test_the_lean_delta_worker_reports_a_bad_store_as_the_cli_does(tmp_path: Path) -> None:
    """``python -m cas.deltas_worker`` (what ``cas serve`` starts) fails on a store it cannot open
    with the command line's one error line and exit status, not a traceback."""
    import os
    import subprocess
    import sys

    (tmp_path / "a-file").write_text("not a store")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    runs = [subprocess.run([sys.executable, "-m", module, *words, "--store", str(tmp_path / "a-file")], env=env,
                           capture_output=True, text=True, timeout=30)
            for module, words in (("cas.deltas_worker", []), ("cas.cli", ["deltas", "worker"]))]
    for run in runs:
        assert run.returncode == 1, run
        assert run.stderr.startswith("cas: error: ") and "Traceback" not in run.stderr, run.stderr
    assert runs[0].stderr == runs[1].stderr
