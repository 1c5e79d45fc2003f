"""Builders for the encryption-at-rest and erasure tests: a file-less KEK with the ``Kek``
interface of collector.ledger.kek, and a ledger of people and punches sealed under a keyring.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from pathlib import Path

from nacl import bindings as sodium

from collector.ledger.base import EventFact
from collector.ledger.kek import Kek, create_file_kek, load_kek
from collector.ledger.keyring import Keyring
from collector.ledger.sqlbase import SQLStore
from collector.people.csv_import import import_files
from tests.collector.ledger_kit import T0, Clock, seeded_key
from wire.ledger import Checkpoint

ORIGIN = "timeclock.test/ledger"
MONTH = 31 * 86_400 * 1_000_000
NOW = T0 + 10**9
BADGE = "em4100:0012345678"         # E1001's (Ada Lovelace)
STRANGER = "em4100:0000000077"      # nobody's
NAMES = ("Ada Lovelace", "Grace Hopper")
EMPLOYEES = """employee_id,name,department,site,timezone,manager_id
E1000,Grace Hopper,Operations,hq,America/New_York,
E1001,Ada Lovelace,Operations,hq,Europe/London,E1000
"""
BADGES = f"""credential,employee_id,valid_from,valid_until,status
{BADGE},E1001,2025-01-01T00:00:00Z,,assigned
"""
LOG_KEY = seeded_key("log-key")


class MemoryKek:
    """XChaCha20-Poly1305 under 32 random bytes; counts its unwraps."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        self.kek_id = "mem-" + hashlib.sha256(self._key).hexdigest()[:16]
        self.unwraps = 0

    def wrap(self, dek: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(24)
        return nonce + sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(dek, aad, nonce,
                                                                         self._key)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        self.unwraps += 1
        out: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            wrapped[24:], aad, wrapped[:24], self._key)
        return out


def checkpoint(store: SQLStore, at: int = NOW) -> None:
    size, head = store.head()
    store.add_checkpoint(Checkpoint(log=LOG_KEY.key_id, size=size, head=head,
                                    at=at).sign(LOG_KEY))


def personal_store(store: SQLStore, tmp_path: Path, kek: Kek | None = None,
                   origin: str | None = ORIGIN) -> tuple[Keyring, Clock]:
    """``store`` sealed under a keyring: a clock (idx 0), two employees and E1001's badge
    (idx 1-3), then punches (idx 4-6) of E1001's badge in November 2025, of a badge nobody
    holds, and of E1001's badge in December; a checkpoint of it all. ``origin`` None: the
    ledger's own id, as open_store uses."""
    ring = Keyring(store, kek or MemoryKek(), origin=origin)
    store.use_keyring(ring)
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    (tmp_path / "e.csv").write_text(EMPLOYEES, encoding="utf-8")
    (tmp_path / "b.csv").write_text(BADGES, encoding="utf-8")
    import_files(store, tmp_path / "e.csv", tmp_path / "b.csv", now_us=T0)
    store.append([c.fact(credential=BADGE), c.fact(credential=STRANGER),
                  c.fact(credential=BADGE, ts=T0 + MONTH)], now_us=NOW)
    checkpoint(store)
    return ring, c


def file_kek_store(store: SQLStore, tmp_path: Path) -> str:
    """:func:`personal_store` under a new file KEK ``tmp_path/ledger.kek``; its spec (what
    ``--kek`` takes)."""
    create_file_kek(tmp_path / "ledger.kek")
    spec = f"file:{tmp_path / 'ledger.kek'}"
    personal_store(store, tmp_path, kek=load_kek(spec), origin=None)
    return spec


def forms(*values: str) -> list[bytes]:
    """Each value as raw bytes, base64 and hex: what a byte search looks for."""
    out: list[bytes] = []
    for s in values:
        out += [s.encode(), base64.b64encode(s.encode()), s.encode().hex().encode()]
    return out


def secrets_of_everyone() -> list[bytes]:
    return [*forms(BADGE, STRANGER, *NAMES), b"0012345678", b"0000000077", b"Lovelace",
            b"Hopper"]
