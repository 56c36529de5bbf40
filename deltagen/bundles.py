"""Bundles: one zstd frame that rebuilds several target files at once.

When changed files share content (shared code across shared libraries, the same
strings in many files), one stream of all of them compresses better than each file
on its own.  A bundle is one standard zstd frame (level ``zstd_level``, long-distance
matching, window covering prefix + content, content size and checksum written) of the
targets concatenated, made with the concatenation of chosen old files ("bases") as the
raw prefix (``ZSTD_CCtx_refPrefix``, as ``zstd --patch-from``).  The stock CLI decodes
it: ``cat BASES... > prefix; zstd -d --long=31 --patch-from=prefix BUNDLE`` gives the
targets back to back; ``members`` says where each one starts and how long it is.

- :func:`build_bundle` writes the frame (atomically), decodes it once and checks every
  member's BLAKE3 before returning its :class:`BundleInfo`.
- :func:`apply_bundle` decodes it, never past the sum of the member sizes, and writes
  each member whose size and BLAKE3 match; a member that does not match (or that a
  decoding error cuts off) is left out and reported, the others are kept.
- :func:`choose_cover` is the pure planner: the cheapest way to get a set of targets
  from per-file recipes and candidate bundles.
- :func:`bundle_candidates` proposes the groups worth building (all changed files,
  and changed files of the same kind).

Caps: bases + targets <= ``DeltaLimits.bundle_max_bytes`` (256 MiB), refused with
``SizeExceeded`` on build and on apply, before anything is read or allocated.
"""
from __future__ import annotations

import contextlib
import itertools
import mmap
import os
import posixpath
import resource
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard

from . import zstd_prefix
from .budget import build_memory, memory_gate
from .digests import StreamHasher, blake3_file, is_digest
from .errors import CorruptPatch, DeltaError, DigestMismatch, SizeExceeded, SizeMismatch
from .limits import DEFAULT_LIMITS, DeltaLimits
from .output import StrPath, _fsync_dir, atomic_output
from .zstd_frames import _MAX_WINDOW, CHUNK, _check_frame, patch_window_log

#: above this many candidate bundles choose_cover is greedy instead of exhaustive
EXHAUSTIVE_MAX = 10           # all subsets of at most this many candidates (1,024)
MAX_BUNDLE_CANDIDATES = 32    # candidates considered at all (the best on their own)


@dataclass(frozen=True)
class BundleMember:
    blake3: str
    offset: int
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"blake3": self.blake3, "offset": self.offset, "size": self.size}


@dataclass(frozen=True)
class BundleInfo:
    """A built, verified bundle; ``to_dict()`` is the manifest-delta recipe form."""

    object: str                       # BLAKE3 of the bundle file
    size: int                         # bytes of the bundle file
    path: Path
    bases: tuple[str, ...]            # BLAKE3 of each base, in prefix order
    members: tuple[BundleMember, ...]
    build_s: float = 0.0
    peak_rss_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "bundle", "algorithm": "zstd", "object": self.object, "size": self.size,
                "bases": list(self.bases), "members": [m.to_dict() for m in self.members]}


# ---------------------------------------------------------------------------- helpers

class _Concat:
    """A read-only stream over several files back to back (never more than asked)."""

    def __init__(self, paths: Sequence[StrPath]) -> None:
        self._paths = list(paths)
        self._next = 0
        self._fh: BinaryIO | None = None

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        out = bytearray()
        while len(out) < n:
            if self._fh is None:
                if self._next == len(self._paths):
                    break
                self._fh = open(self._paths[self._next], "rb")
                self._next += 1
            chunk = self._fh.read(n - len(out))
            if not chunk:
                self._fh.close()
                self._fh = None
                continue
            out += chunk
        return bytes(out)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _unique(paths: Sequence[StrPath]) -> list[tuple[Path, str, int]]:
    """(path, blake3, size) for each distinct content, first occurrence order."""
    seen: set[str] = set()
    out = []
    for p in paths:
        digest = blake3_file(p)
        if digest in seen:
            continue
        seen.add(digest)
        out.append((Path(p), digest, os.path.getsize(p)))
    return out


def _check_caps(prefix: int, total: int, limits: DeltaLimits) -> None:
    if prefix + total > limits.bundle_max_bytes:
        raise SizeExceeded(f"bases + targets = {prefix + total} bytes is above bundle_max_bytes "
                           f"({limits.bundle_max_bytes})")
    if total > limits.max_output_bytes:
        raise SizeExceeded(f"targets = {total} bytes is above max_output_bytes ({limits.max_output_bytes})")


@contextlib.contextmanager
def _prefix_file(bases: Sequence[Path], scratch_dir: Path) -> Iterator[tuple[int, int]]:
    """(fd, size) of the bases back to back: the base itself when there is one."""
    if len(bases) == 1:
        with open(bases[0], "rb") as fh:
            yield fh.fileno(), os.fstat(fh.fileno()).st_size
        return
    fd, tmp = tempfile.mkstemp(prefix=".bundle-prefix-", dir=scratch_dir)
    try:
        with os.fdopen(fd, "w+b") as fh:
            src = _Concat(bases)
            while chunk := src.read(CHUNK):
                fh.write(chunk)
            fh.flush()
            yield fh.fileno(), fh.tell()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def _prefix_bytes(bases: Sequence[StrPath]) -> Iterator[bytes | bytearray | mmap.mmap]:
    """The bases back to back, in memory (one base: mapped)."""
    if len(bases) == 1:
        with open(bases[0], "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                yield b""
                return
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                yield mapped
        return
    buf = bytearray()
    src = _Concat(bases)
    while chunk := src.read(CHUNK):
        buf += chunk
    yield buf


def _members(members: Iterable[BundleMember | Mapping[str, Any]]) -> list[BundleMember]:
    """Parse and check the member list: digests, and offsets tiling [0, total) in order."""
    out: list[BundleMember] = []
    try:
        for m in members:
            member = m if isinstance(m, BundleMember) else BundleMember(m["blake3"], m["offset"], m["size"])
            if not is_digest(member.blake3):
                raise CorruptPatch(f"bundle member {member.blake3!r} is not a BLAKE3 digest")
            for name in ("offset", "size"):
                value = getattr(member, name)
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise CorruptPatch(f"bundle member {name} {value!r} is not a non-negative integer")
            out.append(member)
    except (KeyError, TypeError) as exc:
        raise CorruptPatch(f"malformed bundle member: {exc}") from None
    out.sort(key=lambda m: m.offset)
    position = 0
    for m in out:
        if m.offset != position:
            raise CorruptPatch(f"bundle members do not tile the stream (gap or overlap at {m.offset})")
        position += m.size
    return out


def _decoded(prefix: bytes | bytearray | mmap.mmap, bundle_path: StrPath, total: int) -> Iterator[bytes]:
    """The frame's content in chunks, never more than ``total`` bytes in all."""
    dict_data = (zstandard.ZstdCompressionDict(cast(bytes, prefix), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
                 if len(prefix) else None)
    dctx = zstandard.ZstdDecompressor(dict_data=dict_data, max_window_size=_MAX_WINDOW)
    produced = 0
    with open(bundle_path, "rb") as src:
        _check_frame(src, total)
        try:
            with dctx.stream_reader(src, read_size=CHUNK, read_across_frames=False, closefd=False) as reader:
                while True:
                    chunk = reader.read(min(CHUNK, total - produced + 1))
                    if not chunk:
                        break
                    produced += len(chunk)
                    if produced > total:
                        raise SizeExceeded(f"bundle decodes past {total} bytes")
                    yield chunk
        except zstandard.ZstdError as exc:
            message = str(exc)
            if "checksum" in message.lower():
                raise DigestMismatch(f"zstd content checksum failed (wrong bases?): {message}") from None
            raise CorruptPatch(f"zstd: {message}") from None
    if produced != total:
        raise SizeMismatch(f"bundle produced {produced} bytes, expected {total}")


class _Writer:
    """One member's output: hashed and counted; a temp file when ``out_dir`` is given."""

    def __init__(self, member: BundleMember, out_dir: Path | None, durable: bool = True) -> None:
        self.member = member
        self.durable = durable
        self.hasher = StreamHasher()
        self.tmp: str | None = None
        self.fh: BinaryIO | None = None
        if out_dir is not None:
            fd, self.tmp = tempfile.mkstemp(prefix=f".{member.blake3[:16]}.", suffix=".tmp", dir=out_dir)
            self.fh = os.fdopen(fd, "wb")

    def write(self, data: memoryview) -> None:
        self.hasher.update(data)
        if self.fh is not None:
            self.fh.write(data)

    def abort(self) -> None:
        if self.fh is not None:
            self.fh.close()
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)

    def finish(self, out_dir: Path | None) -> Path | None:
        """Check size and digest; publish as ``out_dir/<blake3>``.  Raises on mismatch."""
        try:
            if self.hasher.size != self.member.size:
                raise SizeMismatch(f"member produced {self.hasher.size} bytes, expected {self.member.size}")
            if self.hasher.blake3 != self.member.blake3:
                raise DigestMismatch(f"member blake3 {self.hasher.blake3} is not {self.member.blake3}")
            if self.fh is None or out_dir is None or self.tmp is None:
                return None
            self.fh.flush()
            if self.durable:
                os.fsync(self.fh.fileno())
            self.fh.close()
            final = out_dir / self.member.blake3
            os.replace(self.tmp, final)
            self.tmp = None
            return final
        except BaseException:
            self.abort()
            raise


def _split(chunks: Iterator[bytes], members: list[BundleMember], out_dir: Path | None,
           errors: dict[str, str], durable: bool = True) -> dict[str, Path | None]:
    """Cut the decoded stream into members; keep those that verify, note the others."""
    done: dict[str, Path | None] = {}
    index = 0
    current: _Writer | None = None

    def close_finished() -> None:
        nonlocal index, current
        while index < len(members):
            if current is None:
                current = _Writer(members[index], out_dir, durable)
            if current.hasher.size < current.member.size:
                return
            try:
                done[current.member.blake3] = current.finish(out_dir)
            except DeltaError as exc:
                errors[current.member.blake3] = f"{exc.code}: {exc}"
            index += 1
            current = None

    try:
        close_finished()
        for chunk in chunks:
            view = memoryview(chunk)
            position = 0
            while position < len(view):
                if current is None:  # more bytes than members: _decoded stops this first
                    raise SizeExceeded("bundle decodes past its members")
                take = min(len(view) - position, current.member.size - current.hasher.size)
                current.write(view[position:position + take])
                position += take
                close_finished()
    except DeltaError as exc:
        for member in members[index:]:
            errors.setdefault(member.blake3, f"{exc.code}: {exc}")
    finally:
        if current is not None:
            current.abort()
    if out_dir is not None and done and durable:
        _fsync_dir(out_dir)
    for digest in list(done):
        if digest in errors:  # a duplicate member digest that failed once: do not trust it
            done.pop(digest)
    return done


# ---------------------------------------------------------------------------- build / apply

#: bundles of at most this many bytes (bases + targets) are built single-threaded
#: (``zstd_prefix.SINGLE_THREADED``: half the memory, the same bytes or fewer on every bundle
#: measured, 0.3-16 MB); larger ones as the zstd CLI would (one worker thread: unmeasured there)
SINGLE_THREADED_MAX_BYTES = 32 << 20


def bundle_tuning(prefix_size: int, total: int) -> zstd_prefix.Tuning:
    """How a bundle's frame is searched (see ``SINGLE_THREADED_MAX_BYTES``)."""
    if prefix_size + total <= SINGLE_THREADED_MAX_BYTES:
        return zstd_prefix.SINGLE_THREADED
    return zstd_prefix.Tuning()


def _write_bundle(base_list: list[tuple[Path, str, int]], target_list: list[tuple[Path, str, int]],
                  prefix_size: int, total: int, out: Path, limits: DeltaLimits) -> None:
    window_log = patch_window_log(prefix_size, total)
    src = _Concat([t[0] for t in target_list])
    try:
        with atomic_output(out) as dst:
            if base_list and zstd_prefix.available():
                with _prefix_file([b[0] for b in base_list], out.parent) as (fd, size):
                    zstd_prefix.compress_with_prefix(fd, size, src, total, dst, limits.zstd_level, window_log,
                                                     bundle_tuning(size, total))
            else:
                # no prefix (only new files) or no libzstd: python-zstandard (the dictionary form
                # is weaker than refPrefix on large prefixes; see zstd_prefix)
                params = zstandard.ZstdCompressionParameters.from_level(
                    limits.zstd_level, source_size=total, window_log=window_log, enable_ldm=True,
                    write_content_size=True, write_checksum=True, write_dict_id=False)
                with _prefix_bytes([b[0] for b in base_list]) if base_list else contextlib.nullcontext(b"") as pre:
                    cctx = zstandard.ZstdCompressor(
                        dict_data=zstandard.ZstdCompressionDict(cast(bytes, pre), dict_type=zstandard.DICT_TYPE_RAWCONTENT)
                        if len(pre) else None, compression_params=params)
                    cctx.copy_stream(cast(BinaryIO, src), dst, size=total, read_size=CHUNK, write_size=CHUNK)
    finally:
        src.close()


def build_bundle(bases: Sequence[StrPath], targets: Sequence[StrPath], out: StrPath,
                 limits: DeltaLimits = DEFAULT_LIMITS) -> BundleInfo:
    """Write a bundle rebuilding ``targets`` from ``bases`` at ``out`` (atomically).

    Bases and targets with the same content as an earlier one are used once; empty
    bases are dropped.  The frame is decoded once and every member checked against its
    target's BLAKE3 before this returns.  ``SizeExceeded`` when bases + targets pass
    ``limits.bundle_max_bytes``; nothing is written then, nor on any other error.
    """
    started = time.monotonic()
    out = Path(out)
    base_list = [b for b in _unique(bases) if b[2] > 0]
    target_list = _unique(targets)
    if not target_list:
        raise SizeMismatch("a bundle needs at least one target")
    prefix_size = sum(b[2] for b in base_list)
    total = sum(t[2] for t in target_list)
    _check_caps(prefix_size, total, limits)
    members: list[BundleMember] = []
    offset = 0
    for _, digest, size in target_list:
        members.append(BundleMember(digest, offset, size))
        offset += size
    with memory_gate.reserve(build_memory("bundle", prefix_size, total)):  # building and checking
        _write_bundle(base_list, target_list, prefix_size, total, out, limits)
        try:
            errors: dict[str, str] = {}
            with _prefix_bytes([b[0] for b in base_list]) if base_list else contextlib.nullcontext(b"") as pre:
                _split(_decoded(pre, out, total), members, None, errors)
            if errors:
                raise DigestMismatch(f"bundle does not rebuild its targets: {next(iter(errors.values()))}")
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024
    return BundleInfo(blake3_file(out), out.stat().st_size, out, tuple(b[1] for b in base_list),
                      tuple(members), time.monotonic() - started, peak)


def apply_bundle(bases: Sequence[StrPath], bundle_path: StrPath,
                 members: Iterable[BundleMember | Mapping[str, Any]], out_dir: StrPath,
                 limits: DeltaLimits = DEFAULT_LIMITS,
                 errors: dict[str, str] | None = None, durable: bool = True) -> dict[str, Path]:
    """Rebuild the members of a bundle into ``out_dir/<blake3>``; returns {blake3: path}.
    ``durable=False``: no fsync of the members (see ``output.atomic_output``).

    ``bases`` are local files with the contents the recipe's ``bases`` name, in that
    order (callers verify them).  Decoding never produces more than the sum of the
    member sizes.  A member is written only when its size and BLAKE3 match; each one
    that does not, or that a decoding error cuts off, is missing from the result and
    its reason is put in ``errors`` (when given): the caller falls back for those and
    keeps the others.  Raises ``DeltaError`` before decoding when the member list is
    malformed or bases + members pass ``bundle_max_bytes`` / ``max_output_bytes``.
    """
    errors = errors if errors is not None else {}
    parsed = _members(members)
    total = sum(m.size for m in parsed)
    prefix_size = sum(os.path.getsize(b) for b in bases)
    _check_caps(prefix_size, total, limits)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nonempty = [b for b in bases if os.path.getsize(b) > 0]
    with _prefix_bytes(nonempty) if nonempty else contextlib.nullcontext(b"") as pre:
        done = _split(_decoded(pre, bundle_path, total), parsed, out, errors, durable)
    return {digest: path for digest, path in done.items() if path is not None}


# ---------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class Cover:
    """The cheapest way found to get every target."""

    bundles: tuple[int, ...]           # indices of the chosen candidates
    per_file: tuple[str, ...]          # targets served by their own cheapest recipe
    total: int                         # bytes to download
    exhaustive: bool = True
    steps: int = 0                     # target lookups spent (bounded, see choose_cover)


def choose_cover(per_file_best: Mapping[str, int],
                 bundle_candidates: Sequence[tuple[Iterable[str], int]],
                 exhaustive_max: int = EXHAUSTIVE_MAX) -> Cover:
    """Cheapest cover of ``per_file_best``'s targets by per-file recipes and bundles.

    ``per_file_best`` maps each needed target to the size of its cheapest per-file
    recipe; each candidate is (targets it rebuilds, its size).  Cost of a choice = the
    chosen bundles' sizes (each once) + the per-file sizes of targets no chosen bundle
    covers.  Targets a candidate rebuilds that are not needed add nothing.  Candidates
    that cover nothing needed, or cost at least the per-file sum of what they cover,
    can never lower the cost and are dropped; of the rest only the
    ``MAX_BUNDLE_CANDIDATES`` with the largest saving on their own are kept (the
    candidates come from an unsigned document: a forged list must not make planning
    expensive).  Those are searched exhaustively (all subsets) up to ``exhaustive_max``
    of them, else greedily (largest saving first, while it saves).  The work is bounded
    either way: at most 2**exhaustive_max subsets, or MAX_BUNDLE_CANDIDATES greedy
    rounds, each costing the candidates' sizes, never the number of needed targets.
    Ties keep per-file recipes.
    """
    need = dict(per_file_best)
    steps = 0
    useful: list[tuple[int, frozenset[str], int, int]] = []    # (index, covered, size, saving alone)
    for i, (targets, size) in enumerate(bundle_candidates):
        covered = frozenset(t for t in targets if t in need)
        steps += len(covered)
        saving = sum(need[t] for t in covered) - size
        if covered and saving > 0:
            useful.append((i, covered, size, saving))
    useful.sort(key=lambda u: (-u[3], u[0]))
    useful = useful[:MAX_BUNDLE_CANDIDATES]
    total_need = sum(need.values())

    def cost(chosen: Sequence[tuple[int, frozenset[str], int, int]]) -> int:
        nonlocal steps
        covered: set[str] = set()
        for _, c, _, _ in chosen:
            covered |= c
            steps += len(c)
        return total_need + sum(u[2] for u in chosen) - sum(need[t] for t in covered)

    best: tuple[tuple[int, frozenset[str], int, int], ...] = ()
    best_cost = total_need
    exhaustive = len(useful) <= exhaustive_max
    if exhaustive:
        for r in range(1, len(useful) + 1):
            for combo in itertools.combinations(useful, r):
                c = cost(combo)
                if c < best_cost:
                    best, best_cost = combo, c
    else:
        chosen: list[tuple[int, frozenset[str], int, int]] = []
        taken: set[str] = set()
        while True:
            pick, pick_saving = None, 0
            for u in useful:
                if u in chosen:
                    continue
                steps += len(u[1])
                saving = sum(need[t] for t in u[1] - taken) - u[2]
                if saving > pick_saving:
                    pick, pick_saving = u, saving
            if pick is None:
                break
            chosen.append(pick)
            taken |= pick[1]
            best_cost -= pick_saving
        best = tuple(chosen)
    left = set(need)
    for _, members, _, _ in best:
        left -= members
    return Cover(tuple(sorted(i for i, _, _, _ in best)), tuple(sorted(left)), best_cost, exhaustive, steps)


_NATIVE = (".so", ".pyd", ".dll", ".dylib", ".a", ".o")


def file_kind(path: str) -> str:
    """'native' (shared libraries and objects), 'python' (.py/.pyi) or 'other'."""
    name = posixpath.basename(path)
    root, ext = posixpath.splitext(name)
    if ext in _NATIVE or ".so." in name:
        return "native"
    if ext in (".py", ".pyi"):
        return "python"
    return "other"


#: per-file patches a zstd frame does not beat on machine code (see ``bundle_candidates``)
MACHINE_CODE_PATCHES = ("hdiffpatch", "bsdiff4", "lzma-from")
_ZSTD_BLOCK_MAX = 128 * 1024  # the largest block of a zstd frame (RFC 8878, Block_Maximum_Size)


def is_machine_code(f: Mapping[str, Any]) -> bool:
    """A native library by its name (:func:`file_kind`), or an executable by its content:
    ``f["class"]`` is ``deltagen.policy.classify``'s, when the caller knows it (ELF programs
    have no suffix: git's ten 2 MB programs went into a bundle that lost, 15-45 s)."""
    return file_kind(f["path"]) == "native" or bool(f.get("class") == "executable")


def frame_floor(content_bytes: int) -> int:
    """The fewest bytes any zstd frame holding ``content_bytes`` bytes (with a checksum, as a
    bundle has) can take: magic + frame header descriptor + checksum (9), and for every block
    a 3-byte header and at least one byte of content (a block holds at most 128 KiB)."""
    blocks = max(1, -(-content_bytes // _ZSTD_BLOCK_MAX))
    return 9 + 4 * blocks


def cannot_win(group: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a bundle of ``group`` is sure to lose to its members' per-file offers: even the
    smallest frame that can hold their bytes (:func:`frame_floor`) is not smaller than the sum
    of their cheapest offers (``best_size``), and ``choose_cover`` keeps per-file recipes on a
    tie.  Three 6-9 MB JavaScript files with 388 B of patches: a 69 s bundle of 1,587 B."""
    if any("best_size" not in f for f in group):
        return False
    return frame_floor(sum(int(f["size"]) for f in group)) >= sum(int(f["best_size"]) for f in group)


@dataclass(frozen=True)
class Candidate:
    """A group of targets to try as one bundle, with the bases for its prefix."""

    name: str
    targets: tuple[str, ...]
    bases: tuple[str, ...] = field(default=())


def bundle_candidates(files: Sequence[Mapping[str, Any]],
                      limits: DeltaLimits = DEFAULT_LIMITS) -> list[Candidate]:
    """Groups worth building as bundles, from the changed files of one release pair.

    ``files``: one mapping per changed target, in the order they should appear in the
    stream (sorted by path is good: neighbours are alike), with ``target`` (BLAKE3),
    ``path``, ``size`` and, when it has one, ``base`` (BLAKE3) and ``base_size`` (the
    base of its best per-file patch, else the old file at the same path).  Groups: all
    changed files, then all of each kind (:func:`file_kind`) when that kind has at least
    two files and is not already the whole set; under the "auto" build policy, "all" is
    left out when the kind groups hold 90% of its files.

    When a file carries ``best_size`` and ``best_algorithm`` (its cheapest per-file offer:
    a patch's algorithm, or "zstd" for a compressed form, None for raw) and the build
    policy is "auto", it joins no group if it is machine code (:func:`is_machine_code`: a
    native library by name, or ``class`` "executable")
    whose offer is an hdiffpatch, bsdiff4 or lzma-from patch (a zstd frame does not beat those on
    machine code: on the benchmark corpus such bundles cost up to 860 s each and won
    once, by 7%), or if its offer is a gzip-inner patch (a frame of the compressed bytes
    does not come near a patch of the uncompressed ones), or if that offer is larger than
    ``bundle_member_max_bytes`` (a bundle wins by sharing frame overhead and context
    between small recipes, which large ones do not need).  A group whose bases + targets pass
    ``bundle_max_bytes`` is cut, in order, into consecutive pieces that fit (a single
    file that alone does not fit is left out of bundles).  Under "auto", a group (or piece)
    that :func:`cannot_win` against its members' offers is not proposed at all.
    """
    seen_targets: dict[str, Mapping[str, Any]] = {}
    for f in files:
        if limits.build_policy == "auto" and "best_size" in f and (
                (f.get("best_algorithm") in MACHINE_CODE_PATCHES and is_machine_code(f))
                or f.get("best_algorithm") == "gzip-inner"
                or f["best_size"] > limits.bundle_member_max_bytes):
            continue
        seen_targets.setdefault(f["target"], f)
    entries = list(seen_targets.values())
    groups: list[tuple[str, list[Mapping[str, Any]]]] = [("all", entries)]
    kinds: dict[str, list[Mapping[str, Any]]] = {}
    for f in entries:
        kinds.setdefault(file_kind(f["path"]), []).append(f)
    for kind in ("native", "python", "other"):
        group = kinds.get(kind, [])
        if len(group) >= 2 and len(group) < len(entries):
            groups.append((kind, group))
    grouped = sum(len(g) for name, g in groups[1:])
    if limits.build_policy == "auto" and len(groups) > 1 and grouped >= 0.9 * len(entries):
        # "all" is then the kind groups side by side in one frame: on the corpus it never
        # beat them by 1%, and it cost as much as all of them together (one prefix of
        # every base at level 19: scikit-learn 27 s).
        groups = groups[1:]
    out: list[Candidate] = []
    for name, group in groups:
        pieces: list[list[Mapping[str, Any]]] = [[]]
        used = 0
        for f in group:
            cost = f["size"] + (f.get("base_size") or 0)
            if cost > limits.bundle_max_bytes:
                continue
            if used + cost > limits.bundle_max_bytes and pieces[-1]:
                pieces.append([])
                used = 0
            pieces[-1].append(f)
            used += cost
        pieces = [p for p in pieces if p and not (limits.build_policy == "auto" and cannot_win(p))]
        for n, piece in enumerate(pieces):
            bases: list[str] = []
            for f in piece:
                if f.get("base") and f["base"] not in bases:
                    bases.append(f["base"])
            label = name if len(pieces) == 1 else f"{name}.{n}"
            out.append(Candidate(label, tuple(f["target"] for f in piece), tuple(bases)))
    return out

