"""Writes hash-pinned lock files for the Python environments of the preparation, the tests and the benchmarks.

    python3 models/prepare/lock.py [FILE.in ...]

Each `requirements*.in` names the packages a venv needs, pinned by version. Its lock, the `.txt` beside it, lists
every package pip installs for it (dependencies included) with the sha256 of every file PyPI publishes for that
version, so `pip install --require-hashes` accepts only those files. The dependency set is resolved separately for
each platform in PLATFORMS (pip's `--dry-run --report` with `--platform`, nothing installed); a package that only
some of them need carries an environment marker naming those. The lock's `# platforms:` line lists the platforms
it covers: models/prepare/install-locked.sh installs the lock there, and elsewhere the `.in` pins alone, saying so.
Run it after changing an `.in` file, with network access to PyPI.
"""

import json
import subprocess
import sys
import tempfile
import urllib.request
from collections import defaultdict
from pathlib import Path

from pip._vendor.packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from pip._vendor.packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
INPUTS = [
    REPO / "models/prepare/requirements.in",
    REPO / "models/prepare/requirements-tf.in",
    REPO / "runtime/tests/openai/requirements.in",
    REPO / "runtime/tests/wyoming/requirements-ha.in",
    REPO / "runtime/tests/wyoming/requirements-newest.in",
    REPO / "runtime/tests/mqtt/requirements.in",
    REPO / "runtime/bench/requirements-peers.in",
]
MACHINES = ["x86_64", "aarch64"]
PYTHONS = ["3.11", "3.12", "3.13", "3.14"]
# The wheel tags a glibc-based Debian or Ubuntu of these years accepts (bookworm has glibc 2.36, noble 2.39).
GLIBC_MINORS = range(17, 40)


def platform_tags(machine):
    tags = [f"manylinux_2_{minor}_{machine}" for minor in GLIBC_MINORS]
    tags += [f"manylinux2014_{machine}", f"linux_{machine}"]
    if machine == "x86_64":
        tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    return tags


def resolve(requirements, machine, python):
    """The {name: version} pip installs for `requirements` on `machine` with CPython `python`, or None when pip
    finds no set of wheels there (the pins do not install on that platform at all)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                   "--disable-pip-version-check", "--only-binary=:all:", "--implementation", "cp",
                   "--python-version", python, "--target", str(Path(scratch) / "target"), "--report", str(report),
                   "-r", str(requirements)]
        for tag in platform_tags(machine):
            command += ["--platform", tag]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"  {machine} CPython {python}: does not resolve ({last_line(done.stderr)})", file=sys.stderr)
            return None
        installs = json.loads(report.read_text())["install"]
        return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no message"


def resolve_pins(requirements, machine, python):
    """As `resolve`, and also for files that pin a package published only as source (llama-cpp-python): that
    package is taken as pinned, and the dependencies it declares are resolved as wheels."""
    pins = read_pins(requirements)
    source_only = [name for name in pins if not has_wheels(name, pins[name])]
    if not source_only:
        return resolve(requirements, machine, python)
    with tempfile.TemporaryDirectory() as scratch:
        wheels_only = Path(scratch) / "wheels.in"
        lines = [f"{name}=={version}" for name, version in pins.items() if name not in source_only]
        for name in source_only:
            lines += declared_dependencies(name, pins[name])
        wheels_only.write_text("\n".join(lines) + "\n")
        resolved = resolve(wheels_only, machine, python)
    if resolved is not None:
        resolved.update({name: pins[name] for name in source_only})
    return resolved


def read_pins(requirements):
    pins = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


_index = {}


def files_of(name, version):
    """PyPI's files for one version of a package: [(filename, sha256)]."""
    if name not in _index:
        request = urllib.request.Request(f"https://pypi.org/simple/{name}/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            _index[name] = json.load(response)["files"]
    wanted = Version(version)
    found = []
    for entry in _index[name]:
        filename = entry["filename"]
        try:
            if filename.endswith(".whl"):
                file_version = parse_wheel_filename(filename)[1]
            elif filename.endswith((".tar.gz", ".zip")):
                file_version = parse_sdist_filename(filename)[1]
            else:
                continue
        except ValueError:
            continue
        if file_version == wanted and not entry.get("yanked") and "sha256" in entry["hashes"]:
            found.append((filename, entry["hashes"]["sha256"]))
    if not found:
        raise SystemExit(f"error: PyPI lists no files for {name}=={version}")
    return found


def has_wheels(name, version):
    return any(filename.endswith(".whl") for filename, _ in files_of(name, version))


def declared_dependencies(name, version):
    """The requirements a source-only package declares, read from its sdist's PKG-INFO through pip."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--no-deps", "--disable-pip-version-check", "--report", str(report), f"{name}=={version}"],
                       check=True, capture_output=True)
        install = json.loads(report.read_text())["install"][0]
        return [r for r in install["metadata"].get("requires_dist", []) if "extra ==" not in r]


def marker(targets, covered):
    if set(targets) == set(covered):
        return ""
    parts = [f'(platform_machine == "{m}" and python_version == "{p}")' for m, p in sorted(targets)]
    return " ; " + " or ".join(parts)


def lock(requirements):
    print(f"locking {requirements.relative_to(REPO)}", file=sys.stderr)
    used = defaultdict(list)  # (name, version) -> [(machine, python)]
    covered = []
    for machine in MACHINES:
        for python in PYTHONS:
            resolved = resolve_pins(requirements, machine, python)
            if resolved is None:
                continue
            covered.append((machine, python))
            for name, version in resolved.items():
                used[(name, version)].append((machine, python))
    if not covered:
        raise SystemExit(f"error: {requirements} resolves on none of the platforms")
    lines = [
        f"# Generated by models/prepare/lock.py from {requirements.name}: every package with the sha256 of each",
        "# file PyPI publishes for its version. Edit the .in file and run lock.py again; do not edit this one.",
        "# platforms: " + " ".join(f"{m}-cp{p}" for m, p in covered),
    ]
    for (name, version), targets in sorted(used.items()):
        lines.append(f"{name}=={version}{marker(targets, covered)} \\")
        hashes = sorted({sha for _, sha in files_of(name, version)})
        lines += [f"    --hash=sha256:{sha}" + (" \\" if i + 1 < len(hashes) else "") for i, sha in enumerate(hashes)]
    target = requirements.with_suffix(".txt")
    target.write_text("\n".join(lines) + "\n")
    print(f"  wrote {target.relative_to(REPO)}: {len(used)} packages, {len(covered)} platforms", file=sys.stderr)


def main():
    inputs = [Path(a).resolve() for a in sys.argv[1:]] or INPUTS
    for requirements in inputs:
        if requirements.suffix != ".in" or not requirements.is_file():
            raise SystemExit(f"error: {requirements} is not a requirements .in file")
        lock(requirements)


if __name__ == "__main__":
    main()
