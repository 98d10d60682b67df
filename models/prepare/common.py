"""Paths, command-line options and file helpers shared by the preparation and reference scripts."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / ".cache"
SOURCES_DIR = CACHE / "sources"
TESTDATA_DIR = CACHE / "testdata" / "speech"
VISION_TESTDATA_DIR = CACHE / "testdata" / "vision"
BUILD_DIR = CACHE / "build"  # converted models reused across bundles (the TF.js detector)
BUNDLE_NAME = "default"
_UMASK = os.umask(0)
os.umask(_UMASK)


def default_models_dir() -> Path:
    if os.environ.get("LOOKOUT_MODELS"):
        return Path(os.environ["LOOKOUT_MODELS"])
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "lookout" / "models"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="models directory (default: $LOOKOUT_MODELS, else $XDG_DATA_HOME/lookout/models); "
        f"the bundle goes into <dir>/{BUNDLE_NAME}/",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if the outputs are up to date")
    parser.add_argument("--no-reference", action="store_true", help="skip the test references")
    args = parser.parse_args()
    args.out = (args.out or default_models_dir()).expanduser().resolve()
    args.bundle = args.out / BUNDLE_NAME
    return args


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def scripts_digest() -> str:
    """Hash of the preparation code and pins, part of every up-to-date stamp."""
    digest = hashlib.sha256()
    for path in sorted(HERE.iterdir()):
        if path.is_file() and path.suffix in (".py", ".toml", ".txt", ".sh"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes) -> bool:
    """Writes via a temporary file and rename; leaves an identical existing file untouched.

    Returns True when the file was (re)written.
    """
    if path.is_file() and path.stat().st_size == len(data) and sha256_file(path) == sha256_bytes(data):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def report_problems(problems: list[str]) -> None:
    """Prints what a reference run found wrong, framed so it stands out in a long log (the run goes on)."""
    if problems:
        print("\n" + "!" * 72, file=sys.stderr)
        for problem in problems:
            print(f"!! {problem}", file=sys.stderr)
        print("!" * 72, file=sys.stderr)


REFERENCE_STAMP = ".reference-stamp"


def reference_setup(doc: str) -> tuple[argparse.Namespace, Path] | None:
    """A reference script's arguments and its bundle's manifest path; None with --no-reference. Exits with an
    error when the bundle has not been built."""
    args = parse_args(doc.splitlines()[0])
    if args.no_reference:
        return None
    manifest_path = args.bundle / "manifest.toml"
    if not manifest_path.is_file():
        print(f"error: no bundle at {args.bundle}; run prepare.py first", file=sys.stderr)
        raise SystemExit(1)
    return args, manifest_path


def digest_of(parts) -> str:
    """One sha256 over several strings, each kept apart from the next."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()


def references_current(out: Path, digest: str, force: bool) -> bool:
    """Whether `out` holds references written from inputs with this digest (and forgets them if not)."""
    stamp = out / REFERENCE_STAMP
    if not force and (out / "index.json").is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return True
    stamp.unlink(missing_ok=True)
    return False


def mark_references(out: Path, digest: str) -> None:
    """Records that `out` is complete for inputs with this digest."""
    write_atomic(out / REFERENCE_STAMP, (digest + "\n").encode())
