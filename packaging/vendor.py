"""Vendor a package's Python dependencies for one Debian architecture (scripts/build-debs.sh).

``python packaging/vendor.py --package agent --arch armhf --source SRC --wheel W --cache DIR
--target LIB`` installs the timeclock wheel ``W`` and the wheels of its dependencies for that
architecture into ``LIB`` (a plain directory the /usr/bin wrappers put first on ``sys.path``),
and prints the Debian packages that stand in for dependencies PyPI has no wheel for.

Invariants:
- Only wheels are used (``--only-binary=:all:``): nothing is compiled, so a package for arm64 or
  armhf is built on amd64 from the same files a Pi would download.
- The dependency set is resolved once per package (for manylinux x86_64, from the extras in
  ``SRC/pyproject.toml``), pinned in ``DIR/<package>.pins`` and reused while the requirements are
  unchanged; every architecture installs exactly those pins, so the packages of one build carry
  the same versions. A cached pin set whose wheels are all in ``DIR/<arch>`` needs no network.
- Where PyPI has no wheel for an architecture the dependency is not vendored and the Debian
  package of the same library is a ``Depends`` instead (``FALLBACKS``), only where that Debian
  package (bookworm, the base of Raspberry Pi OS) meets the minimum version pyproject.toml asks
  for; nothing is silently dropped.
- An optional library (``OPTIONAL``: not in the extras, a feature that needs it says what to do
  without it) is vendored where PyPI has a wheel of the pinned version for the architecture;
  where it has none and Debian's package is not fit, the manifest says so (``NOT_VENDORED``).
- The wrappers put the vendored folder first on ``sys.path``: what is vendored wins over a
  Debian package of the same library (python3-cryptography 38 and python3-paho-mqtt 1.6, too
  old for cryptography>=42 and the paho v2 API, are never used); what is not vendored comes
  from Debian's python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

PYTHON = "3.11"          # Debian 12 and Raspberry Pi OS Bookworm: python3 3.11
GLIBC_MINOR = 36         # both ship glibc 2.36: manylinux_2_17 .. manylinux_2_36 wheels run there
MACHINE = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}
RESOLVE_ARCH = "amd64"

# Extras of pyproject.toml each package installs (the base dependencies always).
EXTRAS = {"agent": ("agent",), "collector": ("collector",)}

# Top-level packages of the timeclock wheel each package keeps (the import contracts make the
# others dead weight: the agent never imports the collector, nor the collector the agent).
KEEP = {"agent": ("agent", "wire"), "collector": ("collector", "wire")}

# Dependency (normalised name) -> Debian package that provides it instead, per architecture
# ("*" = every one). None: not needed at run time, nothing replaces it.
FALLBACKS: dict[str, dict[str, str | None]] = {
    "*": {
        # evdev is an sdist only on PyPI (a C extension built against the kernel headers).
        "evdev": "python3-evdev (>= 1.6)",
        # sqlite-utils requires pip for its `install` plugin command, which timeclock never runs.
        "pip": None,
    },
    "armhf": {
        # PyPI has no armv7l wheels of PyNaCl or cffi. Debian's python3-nacl (1.5) meets
        # pynacl>=1.5; cryptography's armv7l wheel loads _cffi_backend, which Debian's
        # python3-cffi-backend provides (pycparser is needed only to compile cffi modules).
        "pynacl": "python3-nacl (>= 1.5)",
        "cffi": "python3-cffi-backend (>= 1.15)",
        "pycparser": None,
    },
}


# Libraries a package vendors beyond pyproject's extras, optional at run time: the agent's GPIO
# feedback (agent/feedback_gpio.py) needs libgpiod's v2 Python binding only when a
# [feedback.gpio] line is configured. PyPI's gpiod wheels bundle libgpiod (no libgpiod.so.3 is
# needed, which bookworm lacks: its libgpiod2 is the 1.6 library).
OPTIONAL: dict[str, tuple[str, ...]] = {"agent": ("gpiod>=2.1",)}

# Optional library -> architecture -> why it is not vendored there (written to VENDORED.txt;
# docs/operations.md "Feedback at the clock" and `check-config` say the same).
NOT_VENDORED: dict[str, dict[str, str]] = {
    "gpiod": {
        "armhf": "no armv7l wheel of gpiod>=2.1 on PyPI and Debian's python3-libgpiod is the "
                 "v1 API (1.6): GPIO feedback needs `pip install gpiod` on the clock, or a "
                 "command backend",
    },
}


class VendorError(Exception):
    pass


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if m is None:
        raise VendorError(f"cannot read the requirement {req!r} in pyproject.toml")
    return normalise(m.group(1))


def fallbacks(arch: str) -> dict[str, str | None]:
    return {**FALLBACKS["*"], **FALLBACKS.get(arch, {})}


def declared(source: Path, package: str) -> list[str]:
    """The base dependencies and those of the package's extras, as pyproject.toml lists them."""
    project = tomllib.loads((source / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS[package]:
        reqs += project["optional-dependencies"][extra]
    return reqs


def requirements(source: Path, package: str) -> list[str]:
    # Never resolved from PyPI: those that have no wheel anywhere (see FALLBACKS["*"]).
    reqs = [*declared(source, package), *OPTIONAL.get(package, ())]
    return [r for r in reqs if requirement_name(r) not in FALLBACKS["*"]]


def not_vendored(arch: str) -> dict[str, str]:
    """Optional library -> why it is not vendored for ``arch``."""
    return {n: why[arch] for n, why in NOT_VENDORED.items() if arch in why}


def platform_args(arch: str) -> list[str]:
    machine = MACHINE[arch]
    args = [f"--platform=manylinux_2_{m}_{machine}" for m in range(17, GLIBC_MINOR + 1)]
    args += [f"--platform=manylinux2014_{machine}", f"--platform=linux_{machine}"]
    return [*args, f"--python-version={PYTHON}", "--implementation=cp",
            f"--abi=cp{PYTHON.replace('.', '')}", "--abi=abi3", "--abi=none",
            "--only-binary=:all:"]


def pip(python: str, *args: str) -> None:
    # S603: our own interpreter running pip with arguments this module builds.
    r = subprocess.run([python, "-m", "pip", "--disable-pip-version-check", *args],  # noqa: S603
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        out = r.stdout + r.stderr
        hint = ""
        if re.search(r"NewConnectionError|NameResolutionError|Temporary failure in name "
                     r"resolution|Network is unreachable|timed out", out):
            hint = (" (PyPI is unreachable from here: the wheels are downloaded once, then the "
                    "cache serves every build)")
        elif "(from versions: none)" in out:
            hint = " (pip found no version at all: is PyPI reachable from here?)"
        raise VendorError(f"pip {args[0]} failed{hint}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")


def resolve(python: str, reqs: list[str], cache: Path, package: str) -> list[tuple[str, str]]:
    """The pinned (name, version) set of ``reqs``, from the cache while reqs are unchanged."""
    key = hashlib.sha256(json.dumps([PYTHON, GLIBC_MINOR, sorted(reqs)]).encode()).hexdigest()
    pins_file = cache / f"{package}.pins"
    if pins_file.is_file():
        cached = json.loads(pins_file.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            return [(n, v) for n, v in cached["pins"]]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        pip(python, "install", "--quiet", "--dry-run", "--ignore-installed",
            f"--report={report}", f"--target={tmp}/t", *platform_args(RESOLVE_ARCH), *reqs)
        installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    pins = sorted((normalise(i["metadata"]["name"]), i["metadata"]["version"]) for i in installs)
    cache.mkdir(parents=True, exist_ok=True)
    partial = pins_file.with_suffix(".pins.tmp")   # a reader never sees half a file
    partial.write_text(json.dumps({"key": key, "reqs": sorted(reqs), "pins": pins}, indent=1),
                       encoding="utf-8")
    partial.replace(pins_file)
    return pins


def cached_wheel(folder: Path, name: str, version: str) -> Path | None:
    if not folder.is_dir():
        return None
    for wheel in sorted(folder.glob("*.whl")):
        parts = wheel.name.split("-")
        if normalise(parts[0]) == name and parts[1] == version:
            return wheel
    return None


def fetch(python: str, pins: list[tuple[str, str]], arch: str, cache: Path) -> list[Path]:
    folder = cache / arch
    missing = [(n, v) for n, v in pins if cached_wheel(folder, n, v) is None]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
        pip(python, "download", "--quiet", "--no-deps", f"--dest={folder}",
            *platform_args(arch), *[f"{n}=={v}" for n, v in missing])
    wheels = []
    for n, v in pins:
        wheel = cached_wheel(folder, n, v)
        if wheel is None:
            raise VendorError(f"no {arch} wheel of {n}=={v} after pip download")
        wheels.append(wheel)
    return wheels


def install(python: str, wheels: list[Path], arch: str, target: Path, package: str) -> None:
    pip(python, "install", "--quiet", "--no-deps", "--no-index", "--no-compile",
        f"--target={target}", *platform_args(arch), *[str(w) for w in wheels])
    shutil.rmtree(target / "bin", ignore_errors=True)   # console scripts with the build's python
    for top in ("agent", "collector", "wire", "witness", "lab"):
        if top not in KEEP[package]:
            shutil.rmtree(target / top, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--package", choices=sorted(EXTRAS), required=True)
    p.add_argument("--arch", choices=sorted(MACHINE), required=True)
    p.add_argument("--source", type=Path, required=True, help="the tree the wheel is built from")
    p.add_argument("--wheel", type=Path, required=True, help="the timeclock wheel")
    p.add_argument("--cache", type=Path, required=True, help="wheel cache (build/, ignored)")
    p.add_argument("--target", type=Path, required=True, help="the vendored library folder")
    p.add_argument("--manifest", type=Path, required=True, help="write what was vendored here")
    args = p.parse_args(argv)
    python = sys.executable
    try:
        reqs = requirements(args.source, args.package)
        resolved = resolve(python, reqs, args.cache, args.package)
        subs = fallbacks(args.arch)
        absent = not_vendored(args.arch)
        pins = [(n, v) for n, v in resolved if n not in subs and n not in absent]
        wheels = fetch(python, pins, args.arch, args.cache)
        install(python, [*wheels, args.wheel], args.arch, args.target, args.package)
    except VendorError as e:
        print(f"vendor: {e}", file=sys.stderr)
        return 1
    # What the package needs from Debian: the substitutes of everything it depends on.
    wanted = {n for n, _ in resolved} | {requirement_name(r)
                                         for r in declared(args.source, args.package)}
    depends = sorted({d for n, d in subs.items() if d is not None and n in wanted})
    own = args.wheel.name.split("-")[1]   # timeclock-<version>-py3-none-any.whl
    args.manifest.write_text(
        f"# Python libraries vendored here (name==version), {args.arch}, Python {PYTHON}\n"
        f"timeclock=={own}\n" + "".join(f"{n}=={v}\n" for n, v in pins)
        + "".join(f"# from Debian instead: {d}\n" for d in depends)
        + "".join(f"# not vendored: {n}: {why}\n" for n, why in sorted(absent.items())),
        encoding="utf-8")
    print(", ".join(depends))
    return 0


if __name__ == "__main__":
    sys.exit(main())
