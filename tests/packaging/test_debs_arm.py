"""The agent's Debian packages for the Pi (issue 15 item 1): scripts/build-debs.sh builds
``timeclock-agent`` for arm64 and armhf on this amd64 machine (it only assembles files: the
vendored libraries are PyPI's wheels for the target platform), and amd64 beside them to compare.

Inspected with ``dpkg-deb --info`` / ``--contents`` and the extracted files: the Architecture
field; Depends naming exactly the Debian packages that stand in for what PyPI has no wheel for,
each one met by bookworm's version (Raspberry Pi OS's base; read from ``apt-cache`` here), and
none of the Debian packages that are too old (which is why their libraries are vendored); every
vendored wheel's tag fits the architecture, and every ELF file inside is for its CPU (e_machine,
class, and hard-float EABI5 on armhf: no x86_64 ``.so`` in an arm package); the same units,
paths, maintainer scripts and wrapper as the amd64 package; what VENDORED.txt says is vendored,
taken from Debian, or not shipped (gpiod on armhf). And, on amd64 since there is no ARM CPU
here, that the armhf pairings run: the pinned cryptography on Debian's _cffi_backend 1.15, and
the agent's crypto on bookworm's python3-nacl 1.5 with the armhf package's library set.

Installing or running an arm package cannot be done here (no arm CPU or emulator): that is not
tested (docs/operations.md "Installing from packages"). The first run downloads the wheels from
PyPI into build/debs/cache (ignored by git); later runs reuse them. A PyPI that cannot be
reached fails the build with a message that says so; the test is never skipped for it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHS = ("amd64", "arm64", "armhf")
LIB = "opt/timeclock/agent/lib"
# e_machine (ELF header offset 18) and class (1: 32-bit, 2: 64-bit) per Debian architecture
ELF = {"amd64": (62, 2), "arm64": (183, 2), "armhf": (40, 1)}
MACHINE = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}
EF_ARM_ABI_FLOAT_HARD = 0x400
GLIBC = (2, 36)   # bookworm's: the highest manylinux a vendored wheel may need
BASE_DEPENDS = "python3 (>= 3.11), python3 (<< 3.12), systemd"
DEPENDS = {
    "amd64": f"{BASE_DEPENDS}, python3-evdev (>= 1.6)",
    "arm64": f"{BASE_DEPENDS}, python3-evdev (>= 1.6)",
    "armhf": f"{BASE_DEPENDS}, python3-cffi-backend (>= 1.15), python3-evdev (>= 1.6), "
             "python3-nacl (>= 1.5)",
}
VENDORED = {
    "amd64": {"cffi", "cryptography", "gpiod", "paho-mqtt", "prometheus-client", "pycparser",
              "pynacl", "pyserial", "timeclock"},
    "armhf": {"cryptography", "paho-mqtt", "prometheus-client", "pyserial", "timeclock"},
}
VENDORED["arm64"] = VENDORED["amd64"]
# Debian packages of libraries the package vendors instead, and why: bookworm's are too old.
TOO_OLD = {"python3-cryptography": "42", "python3-paho-mqtt": "2.0", "python3-libgpiod": "2"}

pytestmark = [
    pytest.mark.subprocess,   # build-debs.sh, pip, dpkg-deb, apt-cache
    pytest.mark.slow,
    pytest.mark.timeout(1800),   # a first build downloads every wheel from PyPI
]


@dataclass(frozen=True)
class Deb:
    arch: str
    path: Path
    root: Path      # its files, extracted
    control: Path   # its DEBIAN folder, extracted

    def field(self, name: str) -> str:
        return run("dpkg-deb", "-f", self.path, name).stdout.strip()

    def contents(self) -> list[str]:
        """Paths as ``dpkg-deb --contents`` lists them (``./usr/bin/…``), folders with /."""
        lines = run("dpkg-deb", "--contents", self.path).stdout.splitlines()
        return sorted(line.split(None, 5)[5].split(" -> ")[0] for line in lines)


def run(*argv: str | Path, timeout: float = 120, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                       check=False, env=env)
    assert r.returncode == 0, f"{argv}: exit {r.returncode}\n{r.stdout[-4000:]}{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Deb]:
    assert shutil.which("dpkg-deb"), "dpkg-deb is missing: apt-get install dpkg"
    out = tmp_path_factory.mktemp("debs")
    env = {**os.environ, "DEB_COMPRESSION_LEVEL": "1"}
    r = subprocess.run([str(ROOT / "scripts" / "build-debs.sh"), "--package", "agent",
                        "--arch", ",".join(ARCHS), "--worktree", "--out", str(out)],
                       capture_output=True, text=True, timeout=1500, env=env, check=False)
    assert r.returncode == 0, (
        "build-debs.sh failed (a first build downloads the agent's wheels for each architecture "
        f"from PyPI into build/debs/cache):\n{r.stdout[-3000:]}{r.stderr[-5000:]}")
    found: dict[str, Deb] = {}
    for arch in ARCHS:
        [path] = out.glob(f"timeclock-agent_*_{arch}.deb")
        root, control = out / arch / "root", out / arch / "DEBIAN"
        root.mkdir(parents=True)
        run("dpkg-deb", "-x", path, root)
        run("dpkg-deb", "-e", path, control)
        found[arch] = Deb(arch, path, root, control)
    return found


def test_the_arm_packages_say_their_architecture_and_what_they_need_from_debian(
        debs: dict[str, Deb]) -> None:
    versions = {d.field("Version") for d in debs.values()}
    assert len(versions) == 1, versions
    for arch, deb in debs.items():
        info = run("dpkg-deb", "--info", deb.path).stdout
        assert re.search(rf"^ Architecture: {arch}$", info, flags=re.MULTILINE), info
        assert re.search(r"^ Package: timeclock-agent$", info, flags=re.MULTILINE), info
        assert deb.field("Depends") == DEPENDS[arch]
        for old in TOO_OLD:
            assert old not in deb.field("Depends")


def _bookworm_versions(packages: set[str]) -> dict[str, str]:
    """Candidate version of each package in this machine's (bookworm) lists: one apt-cache."""
    r = run("apt-cache", "show", "--no-all-versions", *sorted(packages))
    found = dict(re.findall(r"^Package: (\S+)\n(?:.+\n)*?Version: (\S+)$", r.stdout,
                            flags=re.MULTILINE))
    missing = packages - set(found)
    assert not missing, (f"apt-cache knows no {sorted(missing)}: run apt-get update (the test "
                         "reads bookworm's versions from the package lists)")
    return found


def _at_least(version: str, minimum: str) -> bool:
    return subprocess.run(["dpkg", "--compare-versions", version, "ge", minimum],
                          check=False, timeout=30).returncode == 0


def test_bookworm_meets_every_depends_and_is_too_old_where_the_package_vendors(
        debs: dict[str, Deb]) -> None:
    assert "bookworm" in Path("/etc/os-release").read_text(encoding="utf-8"), (
        "the Debian versions are read from this machine's package lists: Debian 12 (bookworm), "
        "the base of Raspberry Pi OS")
    minimums = {(deb.arch, m.group(1), m.group(2)) for deb in debs.values()
                for m in re.finditer(r"(python3-[\w.-]+) \(>= ([\w.]+)\)",
                                     deb.field("Depends"))}
    assert {p for _, p, _ in minimums} == {"python3-evdev", "python3-nacl",
                                           "python3-cffi-backend"}, minimums
    have = _bookworm_versions({p for _, p, _ in minimums} | set(TOO_OLD))
    for arch, package, needed in sorted(minimums):
        assert _at_least(have[package], needed), f"{arch}: {package} {have[package]} < {needed}"
    for package, needed in TOO_OLD.items():
        assert not _at_least(have[package], needed), (
            f"{package} {have[package]} is new enough now: depend on it instead of vendoring?")


def _dists(deb: Deb) -> dict[str, list[str]]:
    """Vendored distribution name -> its WHEEL tags."""
    dists: dict[str, list[str]] = {}
    for wheel in (deb.root / LIB).glob("*.dist-info/WHEEL"):
        dist = wheel.parent.name.removesuffix(".dist-info").rsplit("-", 1)[0]   # name-version
        name = re.sub(r"[-_.]+", "-", dist).lower()
        dists[name] = re.findall(r"^Tag: (\S+)$", wheel.read_text(encoding="utf-8"),
                                 flags=re.MULTILINE)
    return dists


def _platform_fits(platform: str, arch: str) -> bool:
    if platform == "any":
        return True
    machine = MACHINE[arch]
    if platform == f"manylinux2014_{machine}":
        return True
    m = re.fullmatch(rf"manylinux_(\d+)_(\d+)_{machine}", platform)
    return m is not None and (int(m.group(1)), int(m.group(2))) <= GLIBC


def _runs_on_cp311(tag: str) -> bool:
    py, abi, _ = tag.split("-")
    if abi == "none":
        return py in ("py3", "cp311")
    if abi == "abi3":   # the stable ABI of CPython 3.N runs on every later CPython 3
        return re.fullmatch(r"cp3(\d+)", py) is not None and int(py[3:]) <= 11
    return (py, abi) == ("cp311", "cp311")


def test_every_vendored_wheel_and_binary_is_for_the_packages_cpu(debs: dict[str, Deb]) -> None:
    for arch, deb in debs.items():
        dists = _dists(deb)
        assert set(dists) == VENDORED[arch], arch
        for name, tags in dists.items():
            assert tags, f"{arch}: {name} has no Tag"
            for tag in tags:   # every tag: for this CPU, or pure
                assert _platform_fits(tag.split("-")[2], arch), f"{arch}: {name} {tag}"
            assert any(_runs_on_cp311(tag) for tag in tags), f"{arch}: {name} {tags}"
        machine, elf_class = ELF[arch]
        elves: list[str] = []
        for path in sorted(p for p in deb.root.rglob("*") if p.is_file() and not p.is_symlink()):
            with path.open("rb") as f:
                head = f.read(52)
            if head[:4] != b"\x7fELF":
                continue
            rel = str(path.relative_to(deb.root))
            elves.append(rel)
            assert (head[4], head[5]) == (elf_class, 1), f"{arch}: {rel} class/endianness"
            assert int.from_bytes(head[18:20], "little") == machine, f"{arch}: {rel} e_machine"
            if arch == "armhf":
                flags = int.from_bytes(head[36:40], "little")
                assert flags >> 24 == 5, f"{rel}: not EABI5"
                assert flags & EF_ARM_ABI_FLOAT_HARD, f"{rel}: not hard-float"
        assert any("cryptography/hazmat/bindings/_rust" in e for e in elves), (arch, elves)
        assert ("gpiod/_ext" in " ".join(elves)) == (arch != "armhf"), (arch, elves)
        if arch != "amd64":
            assert not [e for e in elves if "x86_64" in e or "x86-64" in e], elves


def test_the_arm_packages_have_the_amd64_packages_units_paths_and_scripts(
        debs: dict[str, Deb]) -> None:
    def layout(deb: Deb) -> tuple[list[str], list[str]]:
        paths = deb.contents()
        outside = [p for p in paths if not p.startswith(f"./{LIB}/")]
        own = [p for p in paths if re.match(rf"\./{LIB}/(agent|wire)/", p)]   # timeclock's
        return outside, own

    amd64 = debs["amd64"]
    outside, own = layout(amd64)
    assert "./lib/systemd/system/timeclock-agent.service" in outside
    assert {"./usr/bin/timeclock-agent", "./usr/lib/sysusers.d/timeclock-agent.conf",
            "./usr/lib/tmpfiles.d/timeclock-agent.conf", "./etc/timeclock/",
            "./usr/share/doc/timeclock-agent/operations.md",
            "./opt/timeclock/agent/VENDORED.txt"} <= set(outside)
    assert f"./{LIB}/agent/cli.py" in own
    assert not [p for p in own if p.startswith(f"./{LIB}/collector")]
    for arch in ("arm64", "armhf"):
        deb = debs[arch]
        assert layout(deb) == (outside, own), arch
        for name in ("postinst", "prerm", "postrm"):
            assert (deb.control / name).read_bytes() == (amd64.control / name).read_bytes()
        for name in ("usr/bin/timeclock-agent", "lib/systemd/system/timeclock-agent.service"):
            assert (deb.root / name).read_bytes() == (amd64.root / name).read_bytes(), name


def test_vendored_txt_says_what_is_vendored_from_debian_or_not_shipped(
        debs: dict[str, Deb]) -> None:
    for arch, deb in debs.items():
        text = (deb.root / "opt/timeclock/agent/VENDORED.txt").read_text(encoding="utf-8")
        names = set(re.findall(r"^([a-z0-9-]+)==\S+$", text, flags=re.MULTILINE))
        assert names == VENDORED[arch], arch
        from_debian = re.findall(r"^# from Debian instead: (.+)$", text, flags=re.MULTILINE)
        assert ", ".join([BASE_DEPENDS, *from_debian]) == DEPENDS[arch]
        not_shipped = re.findall(r"^# not vendored: (\S+): (.+)$", text, flags=re.MULTILINE)
        if arch == "armhf":
            assert [n for n, _ in not_shipped] == ["gpiod"]
            assert "GPIO feedback needs `pip install gpiod` on the clock, or a command " \
                   "backend" in not_shipped[0][1]
        else:
            assert not_shipped == []


def test_the_armhf_cryptography_pin_runs_on_debians_cffi_backend(debs: dict[str, Deb],
                                                                 tmp_path: Path) -> None:
    """On armhf the vendored cryptography (whose metadata asks for cffi >= 2.0) loads its
    bundled cffi module with Debian's _cffi_backend 1.15. No ARM CPU here: the same version's
    x86_64 wheel (cached by the amd64 build) with this machine's python3-cffi-backend."""
    text = (debs["armhf"].root / "opt/timeclock/agent/VENDORED.txt").read_text(encoding="utf-8")
    m = re.search(r"^cryptography==(\S+)$", text, flags=re.MULTILINE)
    assert m is not None, text
    [wheel] = (ROOT / "build/debs/cache/amd64").glob(f"cryptography-{m.group(1)}-*.whl")
    backend = list(Path("/usr/lib/python3/dist-packages").glob("_cffi_backend.*.so"))
    assert backend, "needs Debian's python3-cffi-backend: apt-get install python3-cffi-backend"
    run(sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--quiet",
        "--no-deps", "--no-index", "--target", tmp_path / "lib", wheel)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import _cffi_backend, cryptography\n"
        "from cryptography import x509\n"
        "from cryptography.hazmat.bindings.openssl.binding import Binding\n"
        "from cryptography.hazmat.primitives.asymmetric import ec, ed25519\n"
        "assert 'cffi' not in sys.modules, 'cryptography imported the cffi package'\n"
        "k = ed25519.Ed25519PrivateKey.generate(); k.public_key().verify(k.sign(b'p'), b'p')\n"
        "ec.generate_private_key(ec.SECP256R1())\n"
        "print(_cffi_backend.__version__, _cffi_backend.__file__, cryptography.__version__,\n"
        "      cryptography.__file__, type(Binding().ffi).__module__)\n")
    out = run("/usr/bin/python3", "-IB", "-c", probe, tmp_path / "lib").stdout.split()
    assert out[0].startswith("1.15"), out
    assert out[1].startswith("/usr/lib/python3/dist-packages/"), out
    assert (out[2], out[3].startswith(str(tmp_path / "lib"))) == (m.group(1), True), out
    assert out[4] == "_cffi_backend", out


def test_the_agents_code_runs_on_the_armhf_lib_with_debians_nacl(debs: dict[str, Deb],
                                                                 tmp_path: Path) -> None:
    """The armhf package's library set runs the agent's crypto with bookworm's python3-nacl 1.5
    and python3-cffi-backend: the amd64 package's vendored folder less what armhf takes from
    Debian (nacl, cffi, pycparser), and Debian's python3-nacl unpacked (``apt-get download``,
    cached in build/debs/cache/debian). Sign and verify, the queue's XChaCha20-Poly1305 row, a
    sealed box, and ``timeclock-agent init``, with Debian's python3."""
    lib = tmp_path / "lib"
    shutil.copytree(debs["amd64"].root / LIB, lib, symlinks=True)
    for path in [*lib.glob("nacl"), *lib.glob("[Pp]y[Nn]a[Cc]l-*"), *lib.glob("cffi*"),
                 *lib.glob("_cffi_backend*"), *lib.glob("pycparser*")]:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert {d.name.split("-")[0].lower() for d in lib.glob("*.dist-info")} == {
        "cryptography", "gpiod", "paho_mqtt", "prometheus_client", "pyserial", "timeclock"}
    cache = ROOT / "build/debs/cache/debian"
    cache.mkdir(parents=True, exist_ok=True)
    if not list(cache.glob("python3-nacl_*.deb")):
        r = subprocess.run(["apt-get", "download", "python3-nacl"], cwd=cache, timeout=600,
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0, f"apt-get download python3-nacl (Debian's mirror):\n{r.stderr}"
    [nacl_deb] = cache.glob("python3-nacl_*.deb")
    assert nacl_deb.name.startswith("python3-nacl_1.5."), nacl_deb.name
    run("dpkg-deb", "-x", nacl_deb, tmp_path / "nacl")
    debian_nacl = tmp_path / "nacl/usr/lib/python3/dist-packages"
    probe = (
        "import sys; sys.path[:0] = sys.argv[1:3]\n"
        "import nacl, _cffi_backend\n"
        "from agent.queue import decrypt_row, encrypt_row\n"
        "from wire.keys import SigningKey\n"
        "from wire.sealed import SealKey\n"
        "k = SigningKey.generate(); k.verify_key.verify(b'punch', k.sign(b'punch'))\n"
        "nonce, ct = encrypt_row(bytes(32), 'clock-1', 7, b'row')\n"
        "assert decrypt_row(bytes(32), 'clock-1', 7, nonce, ct) == b'row'\n"
        "s = SealKey.generate(); assert s.open(s.public_key.seal(b'env')) == b'env'\n"
        "print(nacl.__version__, nacl.__file__, _cffi_backend.__file__)\n")
    out = run("/usr/bin/python3", "-IB", "-c", probe, debian_nacl, lib).stdout.split()
    assert out[0] == "1.5.0", out
    assert out[1].startswith(str(debian_nacl)), out
    assert out[2].startswith("/usr/lib/python3/dist-packages/"), out
    init = ("import sys; sys.path[:0] = sys.argv[1:3]; del sys.argv[1:3]\n"
            "from agent.cli import main; sys.exit(main())\n")
    r = run("/usr/bin/python3", "-IB", "-c", init, debian_nacl, lib, "init", "--device",
            "clock-0001", "--dir", tmp_path / "keys")
    assert "signing public key:" in r.stdout, r.stdout
