"""A real ``timeclock-witness serve`` on loopback (HTTPS with the test CA), and a log to feed it:
a Merkle tree (wire.merkle.MemoryTree) whose checkpoints a log key signs."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.mosquitto import free_port
from tests.fixtures.pki import TestPKI
from wire.keys import SigningKey, save_signing_key
from wire.merkle import MemoryTree, consistency_proof, leaf_hash, root
from wire.note import COSIGNATURE_V1, Checkpoint, Note, NoteVerifier
from wire.witness import AddCheckpoint

REPO = Path(__file__).resolve().parents[2]
ORIGIN = "acme.example/timeclock"
WITNESS_NAME = "auditor.example/witness"


class Log:
    """A log: a Merkle tree and the key that signs its checkpoints under ``origin``."""

    def __init__(self, key: SigningKey, origin: str = ORIGIN) -> None:
        self.key = key
        self.origin = origin
        self.tree = MemoryTree()
        self.leaves: list[bytes] = []

    def grow(self, n: int, tag: bytes = b"e") -> Log:
        new = [leaf_hash(tag + str(len(self.leaves) + i).encode()) for i in range(n)]
        self.leaves += new
        self.tree.append(new)
        return self

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        size = self.tree.size if size is None else size
        return Checkpoint(self.origin, size, root(self.tree, size))

    def request(self, old: int, size: int | None = None, *,
                key: SigningKey | None = None) -> bytes:
        cp = self.checkpoint(size)
        return AddCheckpoint(old, tuple(consistency_proof(self.tree, old, cp.size)),
                             cp.sign(key or self.key)).to_bytes()

    def truncated(self, keep: int, regrow: int) -> Log:
        """The attack: cut back to ``keep`` leaves, then ``regrow`` other ones appended."""
        fake = Log(self.key, self.origin)
        fake.leaves = self.leaves[:keep]
        fake.tree.append(fake.leaves)
        return fake.grow(regrow, tag=b"forged")

    def vkey(self) -> str:
        return NoteVerifier(self.origin, self.key.verify_key).vkey()


@dataclass(frozen=True)
class ServerTLS:
    """The files a witness serves HTTPS with (a TestPKI has the same attributes)."""

    ca_file: Path
    server_cert_file: Path
    server_key_file: Path


@dataclass
class Answer:
    status: int
    body: str
    content_type: str


@dataclass
class WitnessServer:
    """``python -m witness serve`` as a process; :meth:`post` is an HTTPS client of it."""

    root: Path
    pki: TestPKI | ServerTLS
    logs: list[Log]
    key: SigningKey = field(default_factory=SigningKey.generate)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        save_signing_key(self.root / "witness.key", self.key, force=True)
        logs = "".join(f'\n[[logs]]\norigin = "{lg.origin}"\nkey = "{lg.vkey()}"\n'
                       for lg in self.logs)
        self.config = self.root / "witness.toml"
        self.config.write_text(
            f'[witness]\nname = "{WITNESS_NAME}"\nkey = "witness.key"\nstate_dir = "state"\n'
            f'listen = "127.0.0.1"\nport = {self.port}\n'
            f'tls_cert = "{self.pki.server_cert_file}"\ntls_key = "{self.pki.server_key_file}"\n'
            + logs)
        self.ctx = ssl.create_default_context(cafile=str(self.pki.ca_file))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier(WITNESS_NAME, self.key.verify_key, COSIGNATURE_V1)

    def start(self, timeout_s: float = 60.0) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("NOTIFY_SOCKET", None)
        self.log = open(self.root / "serve.log", "ab")  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "witness", "serve", "--config", str(self.config)],
            stdout=self.log, stderr=self.log, cwd=REPO, env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"timeclock-witness exited {self.process.returncode}:\n"
                                     + (self.root / "serve.log").read_text()[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s, \
                        self.ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("timeclock-witness did not listen within "
                                         f"{timeout_s} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None
        if hasattr(self, "log"):
            self.log.close()

    def size_held(self, origin: str) -> int:
        """The size of the checkpoint in the witness's state file for ``origin`` (0: none)."""
        path = self.root / "state" / f"{hashlib.sha256(origin.encode()).hexdigest()}.note"
        if not path.exists():
            return 0
        return Checkpoint.from_body(Note.from_text(path.read_text()).body).size

    def post(self, body: bytes, path: str = "/add-checkpoint") -> Answer:
        req = urllib.request.Request(self.url + path, data=body, method="POST",  # noqa: S310 -- https only
                                     headers={"Content-Type": "text/plain"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=30) as r:  # noqa: S310 -- https only
                return Answer(r.status, r.read().decode(), r.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as e:
            return Answer(e.code, e.read().decode(), e.headers.get("Content-Type", ""))


def b64(h: bytes) -> str:
    return base64.b64encode(h).decode()
