"""Wheels for an offline GPU node whose Python has torch and timm but not Ray or SQLAlchemy (`make gpu-wheels`).

Downloads, for CPython 3.12 on manylinux x86_64, Ray, SQLAlchemy, Alembic and Mako at the versions of the
Python given (``--versions-from``, the project's virtualenv: the versions the tests ran with), then every
requirement of those wheels, read from their own metadata (markers evaluated for Linux x86_64, CPython 3.12,
no extras), until nothing is missing: the set installs into a bare Python 3.12 with no index. A requirement
that the versions-from Python has installed gets its version there; any other the newest that fits.

A file over ``--max-mb`` (the Ray wheel, ~79 MB) is cut in two halves so that each of two copies stays under
a per-copy size limit:

    .whl/parts-1/   the first half of each large wheel + every other wheel + each large wheel's sha256
    .whl/parts-2/   the second half of each large wheel + its sha256

tools/install_wheels.sh puts them back together (checking the sha256) and installs what a node lacks.

``--without-java`` instead drops Ray's Java worker jar (ray/jars/, 32 of its 79 MB; Ray starts Java workers
only when that folder exists, and zoo-sweep runs none): Ray then stays under the limit, nothing is split,
and parts-1/ alone holds every wheel (~56 MB), for a node reached by one copy.

    python tools/gpu_wheels.py --versions-from .venv/bin/python [--dest .whl] [--without-java]
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

ROOTS = ["ray", "sqlalchemy", "alembic", "mako"]
# newer glibc tags first; pip takes any it is given
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def marker_env(py: str) -> dict:
    return {"python_version": py, "python_full_version": f"{py}.0", "sys_platform": "linux",
            "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}


def installed_version(python: str, name: str) -> str | None:
    out = subprocess.run([python, "-c", "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))", name],
                         check=False, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def download(spec: str, dest: Path, py: str) -> Path:
    """One wheel, no dependencies; returns its file."""
    before = set(dest.iterdir())
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", py,
           "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(dest), spec]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: pip download {spec} failed:\n{r.stderr.strip()}")
    new = set(dest.iterdir()) - before
    if new:
        return new.pop()
    name = canonicalize_name(Requirement(spec).name)  # already there from an earlier run
    return next(p for p in dest.glob("*.whl") if canonicalize_name(parse_wheel_filename(p.name)[0]) == name)


def requirements(wheel: Path, py: str) -> list[Requirement]:
    """The wheel's own Requires-Dist (not those of packages it vendors) that apply without extras."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        msg = email.parser.Parser().parsestr(z.read(meta).decode())
    reqs = [Requirement(r) for r in msg.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(marker_env(py))]


def collect(dest: Path, versions_from: str, py: str) -> dict[str, Path]:
    """Roots at the pinned versions, then the closure of their requirements."""
    got: dict[str, Path] = {}
    todo = [(n, None) for n in ROOTS]
    while todo:
        name, req = todo.pop(0)
        key = canonicalize_name(name)
        if key in got:
            if req is not None and parse_wheel_filename(got[key].name)[1] not in req.specifier:
                sys.exit(f"error: {got[key].name} does not satisfy {req}")
            continue
        have = installed_version(versions_from, name)
        if have is not None and (req is None or req.specifier.contains(have, prereleases=True)):
            spec = f"{name}=={have}"
        elif req is None:
            sys.exit(f"error: {name} is not installed in {versions_from}: its version is the one to bring")
        else:
            spec = f"{name}{req.specifier}"
        got[key] = download(spec, dest, py)
        print(f"  {got[key].name}  ({spec})")
        todo += [(r.name, r) for r in requirements(got[key], py)]
    return got


JAVA = "ray/jars/"


def without_java(wheel: Path) -> None:
    """The Ray wheel less ray/jars/ and their RECORD lines; every other member as it was (name, mode bits:
    pip keeps the executable bits of raylet and gcs_server from them)."""
    slim = wheel.with_name(wheel.name + ".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename.startswith(JAVA):
                continue
            data = src.read(info)
            if info.filename.count("/") == 1 and info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(x for x in data.splitlines(keepends=True) if not x.startswith(JAVA.encode()))
            dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    slim.replace(wheel)


def split_large(dest: Path, max_mb: float) -> None:
    """Every wheel to parts-1/, except those over ``max_mb``: halves into parts-1/ and parts-2/, sha256 beside
    each half."""
    p1, p2 = dest / "parts-1", dest / "parts-2"
    for d in (p1, p2):
        shutil.rmtree(d, ignore_errors=True)
    p1.mkdir()
    for w in sorted(dest.glob("*.whl")):
        if w.stat().st_size <= max_mb * 1e6:
            w.rename(p1 / w.name)
            continue
        p2.mkdir(exist_ok=True)
        digest = hashlib.sha256(w.read_bytes()).hexdigest()
        half = -(-w.stat().st_size // 2)
        with w.open("rb") as f:
            for d in (p1, p2):
                (d / f"{w.name}.part").write_bytes(f.read(half))
                (d / f"{w.name}.sha256").write_text(f"{digest}  {w.name}\n")
        w.unlink()


def sizes(dest: Path) -> None:
    total = 0
    for d in sorted(dest.glob("parts-*")):
        n = sum(f.stat().st_size for f in d.iterdir())
        total += n
        print(f"{d}: {len(list(d.iterdir()))} files, {n / 1e6:.1f} MB ({n / 2**20:.1f} MiB): copy it in one go")
    print(f"{dest}: {total / 1e6:.1f} MB in all")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--versions-from", required=True, help="python whose installed versions to bring")
    ap.add_argument("--dest", default=".whl")
    ap.add_argument("--python-version", default="3.12")
    ap.add_argument("--max-mb", type=float, default=60.0, help="files larger than this are split in two")
    ap.add_argument("--without-java", action="store_true", help="drop Ray's Java worker jar: nothing to split")
    a = ap.parse_args()
    dest = Path(a.dest)
    with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
        print(f"wheels for CPython {a.python_version}, manylinux x86_64, versions of {a.versions_from}:")
        got = collect(Path(tmp), a.versions_from, a.python_version)
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        if a.without_java:
            without_java(got["ray"])
            print(f"  {got['ray'].name}: without {JAVA}, {got['ray'].stat().st_size / 1e6:.1f} MB")
        for w in got.values():
            shutil.move(str(w), dest / w.name)
    split_large(dest, a.max_mb)
    sizes(dest)


if __name__ == "__main__":
    main()
