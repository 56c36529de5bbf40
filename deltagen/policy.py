"""Which patch algorithms to build for a file, from what is cheap to know about it.

Building every algorithm for every file costs 3-4x the time of the one that wins, and on
the benchmark corpus (``benchmarks/peers.py``, 23 real release pairs) the winner is
predictable from the file's content class:

- ``executable`` (ELF, PE, Mach-O): HDiffPatch won 56 of 63 changed files and all but
  0.07% of their bytes; zstd patch-from and bsdiff4 took 5.6x its build time together.
  Where HDiffPatch's patch is poor (over ``LZMA_FROM_FRACTION`` of the file: code rebuilt
  with other code generation), lzma-from is built too: it was 10-18% smaller on every such
  file measured; below 12% it was larger on every file (up to 2x), between 12% and 15%
  it was a toss-up.
- ``text`` (no NUL byte, valid UTF-8 in the samples): zstd patch-from won 245 of 246
  files, by ~26% over HDiffPatch; but on large files (``TEXT_HDIFF_BYTES`` and up) zstd
  at level 19 is slow (a 6 MB JavaScript bundle: 6.1 s, against 1.4 s for HDiffPatch,
  whose patch was also smaller), so those get HDiffPatch first.
- ``compressed`` (a known compressed or image format by its magic, or data zstd cannot
  shrink by 5%): a patch only finds what is byte-identical; HDiffPatch does that fastest.
  Where old and new are both gzip files, gzip-inner (a patch of the uncompressed contents,
  recompressed to the same bytes: ``deltagen/gzip_inner.py``) is built after it, whatever
  HDiffPatch kept: on a changed gzip file HDiffPatch finds little (libssl3's changelog.gz:
  a 245 KB patch of a 255 KB file), and its patch stays for clients that predate
  gzip-inner (``recipes.OLDER_CLIENT_ALGORITHMS``).
- ``binary`` (anything else; on the corpus mostly locale catalogues and small data files):
  no clear winner: HDiffPatch, then zstd patch-from where HDiffPatch's patch is over 5%
  of the file (+0.3% bytes against building both everywhere, 19% less build time).

The first algorithm of a class's order (among ``limits.patch_algorithms`` and within its
size cap) is always built; the next ones only when nothing was kept yet (a failure, a
cap, the budget) or when what was kept is poor: larger than ``runner_up_fraction`` of the
target, where another codec might still win.  ``limits.build_policy == "exhaustive"``
builds every algorithm for every file, as before the policy existed.

:func:`classify` reads at most three samples of the file (4 KiB + 2 x 64 KiB).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import zstandard

from .limits import Algorithm, DeltaLimits
from .output import StrPath

FileClass = Literal["executable", "text", "compressed", "binary"]
FILE_CLASSES: tuple[FileClass, ...] = ("executable", "text", "compressed", "binary")

_SAMPLE = 64 * 1024
#: text files from this size on are patched with HDiffPatch first
TEXT_HDIFF_BYTES = 1 << 20
_HEAD = 4096

#: leading bytes of executables (ELF, PE/COFF, Mach-O 32/64 both byte orders, fat Mach-O)
_EXECUTABLE_MAGIC = (b"\x7fELF", b"MZ", b"\xfe\xed\xfa\xce", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf",
                     b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe")
#: leading bytes of compressed containers and compressed media
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"PK\x03\x04", b"\x28\xb5\x2f\xfd", b"\xfd7zXZ\x00", b"BZh",
                     b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"wOF2", b"wOFF", b"7z\xbc\xaf\x27\x1c",
                     b"\x04\x22\x4d\x18", b"OggS", b"fLaC", b"ID3", b"RIFF")


@dataclass(frozen=True)
class ClassPolicy:
    order: tuple[Algorithm, ...]
    runner_up_fraction: float | None  # build the next algorithm if the kept patch is larger
                                      # than this fraction of the target (None: only if none kept)


POLICIES: dict[FileClass, ClassPolicy] = {
    "executable": ClassPolicy(("hdiffpatch", "lzma-from", "zstd", "bsdiff4"), 0.5),
    "text": ClassPolicy(("zstd", "hdiffpatch", "bsdiff4"), 0.25),
    "compressed": ClassPolicy(("hdiffpatch", "gzip-inner", "zstd", "bsdiff4"), None),
    "binary": ClassPolicy(("hdiffpatch", "zstd", "bsdiff4"), 0.05),
}


def _looks_like_text(data: bytes) -> bool:
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3  # a sample may cut a multi-byte character
    return True


def classify(path: StrPath) -> FileClass:
    """The content class of a file, from its magic and three small samples."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(_HEAD)
        if head.startswith(_EXECUTABLE_MAGIC):
            return "executable"
        if head.startswith(_COMPRESSED_MAGIC):
            return "compressed"
        samples = [head]
        for at in (size // 2, max(size - _SAMPLE, 0)):
            if at > len(head):
                fh.seek(at)
                samples.append(fh.read(_SAMPLE))
    if all(_looks_like_text(s) for s in samples):
        return "text"
    data = b"".join(samples)
    if len(data) >= 1024 and len(zstandard.ZstdCompressor(level=1).compress(data)) > 0.95 * len(data):
        return "compressed"
    return "binary"


def patch_order(file_class: FileClass, new_size: int, limits: DeltaLimits) -> tuple[Algorithm, ...]:
    """The algorithms to consider for a file, best first, limited to ``limits.patch_algorithms``."""
    if limits.build_policy == "exhaustive":
        return limits.patch_algorithms
    order = POLICIES[file_class].order
    if file_class == "text" and new_size >= TEXT_HDIFF_BYTES:
        order = ("hdiffpatch", "zstd", "bsdiff4")
    return tuple(a for a in order if a in limits.patch_algorithms)


#: lzma-from is built for an executable only when the kept patch is over this fraction of
#: the target: below it HDiffPatch won on every file measured (benchmarks/exec_bytes.py)
LZMA_FROM_FRACTION = 0.15


def worth_another(file_class: FileClass, kept_size: int | None, target_size: int,
                  limits: DeltaLimits, algorithm: Algorithm | None = None) -> bool:
    """Whether to build ``algorithm`` (the next one) after one was tried (see the module docstring)."""
    if kept_size is None or limits.build_policy == "exhaustive":
        return True
    if algorithm == "lzma-from":
        return kept_size > LZMA_FROM_FRACTION * target_size
    if algorithm == "gzip-inner":  # offered only for gzip pairs (recipes._gzip_inner_skip)
        return True
    fraction = POLICIES[file_class].runner_up_fraction
    return fraction is not None and kept_size > fraction * target_size
