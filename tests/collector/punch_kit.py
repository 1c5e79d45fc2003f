"""Test helpers for the ingest tests: a simulated clock that signs chained punches, and
enrolment of clocks in a real ledger store. Shared by test_ingest, test_attacks, test_serve."""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.ledger import registry
from collector.ledger.sqlbase import SQLStore
from tests.fixtures.mosquitto import MosquittoBroker
from wire import ZERO_HASH
from wire.ack import SignedAck
from wire.canonical import canonical
from wire.keys import SigningKey, save_signing_key
from wire.punch import Envelope, Punch, SignedPunch
from wire.topics import acks, punches

T0 = 1_764_140_400_000_000
_counter = itertools.count(1)


@dataclass
class SimClock:
    """A time clock: its id, signing key, next seq and chain head."""

    device: str
    key: SigningKey = field(default_factory=SigningKey.generate)
    seq: int = 0
    prev: str = ZERO_HASH
    boot: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def topic(self) -> str:
        return punches(self.device)

    def unsigned(self, **over: Any) -> Punch:
        """The next punch (not yet committed to the chain)."""
        d: dict[str, Any] = {
            "v": 1, "device": self.device, "seq": self.seq + 1, "prev": self.prev,
            "ts": T0 + (self.seq + 1) * 1_000_000, "clock": "synced", "boot": self.boot,
            "mono": 1_000 + self.seq, "reader": "front",
            "credential": f"em4100:{next(_counter):010d}", "action": "in",
            "key": self.key.key_id}
        d.update(over)
        return Punch.from_dict(d)

    def punch(self, *, key: SigningKey | None = None, **over: Any) -> SignedPunch:
        """Sign the next punch and advance seq/prev (as a real clock does)."""
        k = key or self.key
        p = self.unsigned(**({"key": k.key_id} | over))
        signed = p.sign(k)
        self.seq, self.prev = p.seq, p.hash()
        return signed

    def batch(self, n: int) -> list[SignedPunch]:
        return [self.punch() for _ in range(n)]


def envelope(device: str, items: list[SignedPunch]) -> bytes:
    return Envelope(device, tuple(items)).to_bytes()


def raw_envelope(device: str, items: list[Any]) -> bytes:
    """An envelope from arbitrary JSON values (for malformed cases)."""
    return canonical({"v": 1, "device": device, "punches": items})


def new_clock(prefix: str = "clock") -> SimClock:
    return SimClock(f"{prefix}-{next(_counter):05d}")


def enroll(store: SQLStore, clock: SimClock, *, site: str = "hq", now_us: int = T0) -> None:
    registry.enroll(store, clock.device, site, clock.key.verify_key.b64, now_us=now_us)


# -- a running collector against a real broker ------------------------------------------------

def write_collector_config(directory: Path, broker: MosquittoBroker, *, store_url: str,
                           name: str = "main", log_key: SigningKey | None = None,
                           extra: str = "") -> tuple[Path, SigningKey]:
    """A TOML config for ``collector.<name>`` on ``broker`` and a 0600 log key file."""
    directory.mkdir(parents=True, exist_ok=True)
    key = log_key or SigningKey.generate()
    key_file = directory / "log.key"
    if not key_file.exists():
        save_signing_key(key_file, key)
    cert = broker.pki.collector(name)
    cfg = directory / "collector.toml"
    cfg.write_text(f"""
[collector]
name = "{name}"
store = "{store_url}"
log_key = "{key_file}"

[mqtt]
host = "{broker.host}"
port = {broker.port}
ca_cert = "{cert.ca_file}"
cert = "{cert.cert_file}"
key = "{cert.key_file}"
keepalive_s = 10
{extra}
""")
    return cfg, key


class Device:
    """A device connected over mTLS with its own certificate, subscribed to its receipts."""

    def __init__(self, broker: MosquittoBroker, clock: SimClock) -> None:
        self.clock = clock
        self.receipts = broker.subscribe(clock.device, acks(clock.device))
        self.client = self.receipts.client

    def publish(self, payload: bytes, *, topic: str | None = None) -> None:
        info = self.client.publish(topic or self.clock.topic, payload, qos=1)
        info.wait_for_publish(30)
        assert info.is_published()

    def send(self, items: list[SignedPunch]) -> None:
        self.publish(envelope(self.clock.device, items))

    def receipt(self, log_key: SigningKey, timeout_s: float = 30.0) -> SignedAck:
        r = SignedAck.from_bytes(self.receipts.get(timeout_s).payload)
        r.verify(log_key.verify_key)
        return r

    def acked_until(self, log_key: SigningKey, seqs: set[int],
                    timeout_s: float = 60.0) -> set[int]:
        """Collect verified receipts until every seq in ``seqs`` is acked; return all acked."""
        got: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while not seqs <= got:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"receipts for {sorted(seqs - got)} missing; got "
                                     f"{sorted(got)}")
            got |= set(self.receipt(log_key, left).ack.seqs())
        return got

