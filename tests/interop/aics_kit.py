"""A third-party C2SP tlog-witness for the interop tests: ``aics-witness`` from PyPI (Apache
2.0; with its library ``aics-tlog``), run unmodified from the wheels that scripts/bootstrap.sh
downloads into ``.venv/interop/`` for the tests. The wheels declare Python ≥ 3.12; they are
pure Python and run on our 3.11, which the tests check by running them. It serves plain HTTP,
as its docs say to run it behind a TLS terminator: :class:`TLSProxy` is that terminator (the
test CA's server certificate), so the collector reaches it over https:// as it reaches any
witness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

from tests.fixtures.mosquitto import free_port
from tests.fixtures.pki import TestPKI

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / ".venv" / "interop"
PACKAGES = ("aics_witness-0.1.0-py3-none-any.whl", "aics_tlog-0.2.1-py3-none-any.whl")
NAME = "interop.example/aics-witness"


def unpack(into: Path) -> Path:
    """The two wheels unpacked into ``into`` (a PYTHONPATH entry); a clear error if absent."""
    missing = [w for w in PACKAGES if not (WHEELS / w).is_file()]
    if missing:
        raise AssertionError(f"{', '.join(missing)} missing from {WHEELS}: run "
                             f"scripts/bootstrap.sh --with-postgres (it downloads them for the "
                             f"tests)")
    for w in PACKAGES:
        with zipfile.ZipFile(WHEELS / w) as z:
            z.extractall(into)
    return into


class AicsWitness:
    """``aics-witness`` initialised in ``directory``, trusting one log, served on loopback."""

    def __init__(self, directory: Path, site_packages: Path) -> None:
        self.directory = directory
        self.env = {**os.environ, "PYTHONPATH": str(site_packages)}
        self.port = free_port()
        self.config = directory / "witness.json"
        directory.mkdir(parents=True, exist_ok=True)
        out = self._run("init", "--name", NAME, "--listen", f"127.0.0.1:{self.port}")
        found = re.findall(rf"^{re.escape(NAME)}\+[0-9a-f]{{8}}\+\S+$", out, re.MULTILINE)
        if len(found) != 1:
            raise AssertionError(f"aics-witness init printed no vkey:\n{out}")
        self.vkey = found[0]
        self.process: subprocess.Popen[bytes] | None = None

    def _run(self, *args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "aics_witness", args[0], "-c",
                            str(self.config), *args[1:]], env=self.env, capture_output=True,
                           text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise AssertionError(f"aics-witness {args[0]} failed ({r.returncode}):\n"
                                 f"{r.stdout}{r.stderr}")
        return r.stdout + r.stderr

    def trust(self, origin: str, vkey: str) -> None:
        self._run("add-log", "--origin", origin, "--vkey", vkey)

    def start(self, timeout_s: float = 60.0) -> None:
        self.log = open(self.directory / "serve.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(  # noqa: S603 - the test's own arguments
            [sys.executable, "-m", "aics_witness", "serve", "-c", str(self.config)],
            env=self.env, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"aics-witness serve exited:\n{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)     # poll interval while it starts, not a fixed wait
        raise AssertionError(f"aics-witness not listening within {timeout_s} s:\n"
                             f"{self.log_text()}")

    def log_text(self) -> str:
        p = self.directory / "serve.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
            self.process = None
            self.log.close()


class TLSProxy:
    """HTTPS on a loopback port, forwarded byte for byte to a plain TCP port."""

    def __init__(self, pki: TestPKI, backend_port: int) -> None:
        self.backend = backend_port
        self.port = free_port()
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(pki.server_cert_file, pki.server_key_file)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise AssertionError("TLS proxy did not start")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                w.close()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                br, bw = await asyncio.open_connection("127.0.0.1", self.backend)
            except OSError:
                w.close()
                return
            await asyncio.gather(pipe(r, bw), pipe(br, w))

        async def main() -> None:
            self.server = await asyncio.start_server(handle, "127.0.0.1", self.port,
                                                     ssl=self.ctx)
            self.ready.set()
            await self.server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(main())

    def stop(self) -> None:
        def close() -> None:
            self.server.close()
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
        self.loop.call_soon_threadsafe(close)
        self.thread.join(10)


def import_aics(site_packages: Path) -> None:
    """Make the unpacked wheels importable in this process (the log side of the tests runs
    ``aics_tlog`` and ``aics_witness.feeder`` in-process, as a log server would)."""
    if str(site_packages) not in sys.path:
        sys.path.insert(0, str(site_packages))


class AicsLog:
    """A third-party C2SP log built with ``aics_tlog`` alone: its own Ed25519 note key and
    origin, an :class:`aics_tlog.IncrementalTileWriter` over a memory tile store (the tiles a
    log publishes), checkpoints made and signed by ``aics_tlog.sign_checkpoint`` and
    consistency proofs from its tiles (``consistency_proof_from_tiles``). Nothing of ours is
    used to make its bytes. :meth:`forked` is the same key signing another history."""

    def __init__(self, origin: str, key: object | None = None) -> None:
        # aics_tlog is importable only once import_aics() ran: imported here, not at the top
        from aics_tlog import IncrementalTileWriter, MemoryTileStore, MerkleTree  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
            Ed25519PrivateKey,
        )

        self.origin = origin
        self.key = key if key is not None else Ed25519PrivateKey.generate()
        self.store = MemoryTileStore()
        self.writer = IncrementalTileWriter(self.store)
        self.tree = MerkleTree()        # aics_tlog's in-memory tree: a cross-check of the tiles
        self.entries: list[bytes] = []

    @property
    def size(self) -> int:
        return int(self.writer.size)

    def append(self, n: int, tag: bytes = b"entry") -> AicsLog:
        new = [tag + b" " + str(len(self.entries) + i).encode() for i in range(n)]
        self.writer.append(new)
        self.tree.extend(new)
        self.entries += new
        if self.writer.root() != self.tree.root():
            raise AssertionError("aics_tlog's tile writer and tree disagree on the root")
        return self

    def checkpoint(self) -> object:
        from aics_tlog import Checkpoint  # noqa: PLC0415
        return Checkpoint(self.origin, self.size, self.writer.root())

    def signed_note(self) -> bytes:
        """The checkpoint of the current size as a signed note (aics_tlog makes the text and
        the Ed25519 signature, key type 0x01)."""
        from aics_tlog import sign_checkpoint  # noqa: PLC0415
        note = sign_checkpoint(self.checkpoint(), self.key, self.origin)  # type: ignore[arg-type]
        return bytes(note.to_bytes())

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """The RFC 9162 proof from ``old`` to ``new``, computed from the log's tiles (the
        ``proof(old, new)`` a WitnessClient asks for)."""
        from aics_tlog import consistency_proof_from_tiles  # noqa: PLC0415
        proof = [bytes(h) for h in consistency_proof_from_tiles(self.store, old, new,
                                                                self.size)]
        if old and old != new and proof != self.tree.consistency_proof(old, new):
            raise AssertionError("aics_tlog's tile and tree proofs disagree")
        return proof

    def vkey(self) -> str:
        """The log's verifier key in C2SP form, as aics_tlog writes it."""
        from aics_tlog import format_vkey, vkey_from_ed25519  # noqa: PLC0415
        return str(format_vkey(vkey_from_ed25519(self.origin,
                                                 self.key.public_key())))  # type: ignore[attr-defined]

    def forked(self, keep: int, regrow: int) -> AicsLog:
        """The same key and origin signing another history: the first ``keep`` entries, then
        ``regrow`` different ones."""
        fork = AicsLog(self.origin, self.key)
        fork.writer.append(self.entries[:keep])
        fork.tree.extend(self.entries[:keep])
        fork.entries = self.entries[:keep]
        return fork.append(regrow, tag=b"forged")
