"""Fleet view for ``device list``: registry + ledger progress + certificates + live status.

Sources, each optional except the ledger:
- the ledger (registry projection and per-device progress: highest/contiguous seq, gaps, and
  the recorded time of the last punch, i.e. "last seen" by the ledger);
- the CA index (certificate serial, expiry; a warning ``EXPIRY_WARN_DAYS`` ahead);
- the devices' RETAINED status messages (``timeclock/v1/devices/{id}/status``, parsed as
  wire.device_status.DeviceStatus: online state, queue depth, oldest unacked punch, clock
  state, storage, witness; a device whose storage is full refuses taps, and a clock that
  refuses to cosign the log's checkpoint (DESIGN.md §8.3) has caught the log shrinking or
  rewritten: both are always warnings; an unreadable status is a warning too). They are
  read by subscribing as a collector identity with a fresh, clean session and a short timeout
  (:func:`read_retained_statuses`), which works from any process that holds a collector
  certificate, whether or not ``serve`` runs on the same host; the running service's
  in-memory StatusTable is not shared across processes.

Invariants: :func:`fleet_rows` is pure (``now_us`` parameter, no I/O); statuses are telemetry,
never evidence (unsigned, not in the ledger); the list subscribes with a client id of its
own, so it never takes over the running collector's session.
"""

from __future__ import annotations

import datetime as dt
import secrets
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector import CollectorError
from collector.fleet.pki import IndexEntry
from collector.ledger.sqlbase import SQLStore
from wire.device_status import DeviceStatus, parse_status
from wire.errors import WireError
from wire.topics import ALL_STATUS, device_of

EXPIRY_WARN_DAYS = 30
QUEUE_AGE_WARN_S = 3600

StatusReading = DeviceStatus | str
"""A device's retained status: parsed, or why its message is not a valid status."""


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device: str
    site: str
    status: str                       # active | revoked (registry)
    key_id: str | None                # current signing key
    keys: int
    recorded: int                     # highest seq in the ledger
    contiguous: int
    gaps: tuple[tuple[int, int], ...]
    last_seen_us: int | None          # ledger time of the highest-seq punch
    cert_serial: str | None = None
    cert_not_after: dt.datetime | None = None
    online: str | None = None         # online | offline (retained status), None = unknown
    queue_depth: int | None = None
    oldest_unacked_us: int | None = None
    clock: str | None = None
    status_at_us: int | None = None
    storage: str | None = None        # ok | low | full (reported), None = unknown
    witness: str | None = None        # none | ok | refusing | broken (reported) | inclusion-failed
    #                                   (ok, but a check of its own punches failed), None = ?
    witness_size: int | None = None   # the largest checkpoint the clock verified
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "site": self.site, "status": self.status,
                "key": self.key_id, "keys": self.keys, "recorded": self.recorded,
                "contiguous": self.contiguous, "gaps": [list(g) for g in self.gaps],
                "last_seen_us": self.last_seen_us, "cert_serial": self.cert_serial,
                "cert_not_after": None if self.cert_not_after is None
                else self.cert_not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "online": self.online, "queue_depth": self.queue_depth,
                "oldest_unacked_us": self.oldest_unacked_us, "clock": self.clock,
                "status_at_us": self.status_at_us, "storage": self.storage,
                "witness": self.witness, "witness_size": self.witness_size,
                "warnings": list(self.warnings)}


def _last_seen(store: SQLStore, device: str, highest: int) -> int | None:
    if highest < 1:
        return None
    found = store.punch_hash(device, highest)
    if found is None:
        return None
    for e in store.entries(found[1], found[1] + 1):
        return e.entry.at
    return None


def _certs_by_cn(entries: Sequence[IndexEntry]) -> dict[str, IndexEntry]:
    """Per CN the newest unrevoked device certificate (else the newest at all)."""
    out: dict[str, IndexEntry] = {}
    for e in sorted(entries, key=lambda e: e.not_after):
        if e.kind != "device":
            continue
        cur = out.get(e.cn)
        if cur is None or e.revoked_at is None or cur.revoked_at is not None:
            out[e.cn] = e
    return out


def _storage_warning(st: DeviceStatus, now_us: int) -> str | None:
    s = st.storage
    if s is None or s.state == "ok":
        return None
    since = "" if s.since_us is None else f" for {_age(now_us, s.since_us)}"
    free = "" if s.free_bytes is None else f", {s.free_bytes} bytes free"
    detail = f": {s.detail}" if s.detail else ""
    if s.full:
        return (f"storage FULL{since}: the clock refuses taps ({s.refused_taps} refused"
                f"{free}){detail}")
    return f"storage low{since}{free}{detail}"


def _witness_warning(st: DeviceStatus, now_us: int) -> str | None:
    """The clock as a witness of the log (DESIGN.md §8.3): loud when it refuses to cosign."""
    w = st.witness
    if w is None or not w.alarm:
        return None
    inc = w.inclusion
    failed = "" if inc is None or not inc.failed else (
        f"INCLUSION CHECK FAILED x{inc.failed}: the log does not prove this clock's "
        f"punch(es); last {inc.reason} {_age(now_us, inc.since_us)} ago ({inc.detail})")
    if w.state not in ("refusing", "broken"):
        return failed
    if failed:
        failed = f"; {failed}"
    since = "" if w.since_us is None else f" for {_age(now_us, w.since_us)}"
    if w.state == "broken":
        return f"WITNESS BROKEN{since}: the clock cosigns nothing ({w.detail}){failed}"
    return (f"WITNESS REFUSES to cosign{since}: {w.reason} ({w.detail}); it holds a "
            f"checkpoint of size {w.size}{failed}")


def fleet_rows(store: SQLStore, *, now_us: int, certs: Sequence[IndexEntry] = (),
               statuses: Mapping[str, StatusReading] | None = None) -> list[DeviceRow]:
    """One row per enrolled device, with warnings an operator should act on."""
    now = dt.datetime.fromtimestamp(now_us / 1e6, dt.UTC)
    by_cn = _certs_by_cn(certs)
    statuses = statuses or {}
    rows: list[DeviceRow] = []
    for rec in sorted(store.devices(), key=lambda r: r.device):
        keys = store.keys(rec.device)
        current = [k for k in keys if k.until_seq is None]
        prog = store.progress(rec.device)
        warnings: list[str] = []
        cert = by_cn.get(rec.device)
        if cert is not None and rec.status == "active":
            if cert.revoked_at is not None:
                warnings.append("certificate revoked")
            elif cert.not_after <= now:
                warnings.append("certificate EXPIRED")
            elif cert.not_after - now <= dt.timedelta(days=EXPIRY_WARN_DAYS):
                days = (cert.not_after - now).days
                warnings.append(f"certificate expires in {days} days: renew "
                                f"(device renew)")
        if prog.gaps:
            warnings.append(f"{sum(b - a + 1 for a, b in prog.gaps)} seq missing")
        reading = statuses.get(rec.device)
        st = reading if isinstance(reading, DeviceStatus) else None
        if isinstance(reading, str):
            warnings.append(f"status message invalid: {reading}")
        depth = st.queue.depth if st is not None and st.queue is not None else None
        oldest = st.queue.oldest_unacked_us if st is not None and st.queue is not None \
            else None
        if oldest is not None and now_us - oldest > QUEUE_AGE_WARN_S * 1_000_000:
            warnings.append(f"oldest unacked punch is {(now_us - oldest) // 3_600_000_000} h "
                            f"old")
        clock = st.clock if st is not None else None
        if clock == "unsynced":
            warnings.append("clock unsynced")
        storage_warning = _storage_warning(st, now_us) if st is not None else None
        if storage_warning is not None:
            warnings.append(storage_warning)
        witness_warning = _witness_warning(st, now_us) if st is not None else None
        if witness_warning is not None:
            warnings.append(witness_warning)
        witness = st.witness if st is not None else None
        online = st.state if st is not None else None
        if rec.status == "revoked" and online == "online":
            warnings.append("revoked but reported online")
        rows.append(DeviceRow(
            device=rec.device, site=rec.site, status=rec.status,
            key_id=current[-1].key_id if current else None, keys=len(keys),
            recorded=prog.highest, contiguous=prog.contiguous, gaps=prog.gaps,
            last_seen_us=_last_seen(store, rec.device, prog.highest),
            cert_serial=None if cert is None else cert.serial,
            cert_not_after=None if cert is None else cert.not_after,
            online=online, queue_depth=depth, oldest_unacked_us=oldest, clock=clock,
            status_at_us=st.at if st is not None else None,
            storage=st.storage.state if st is not None and st.storage is not None else None,
            witness=None if witness is None else (
                "inclusion-failed" if witness.inclusion_failed and witness.state == "ok"
                else witness.state),
            witness_size=None if witness is None else witness.size,
            warnings=tuple(warnings)))
    return rows


def read_retained_statuses(host: str, port: int, context: ssl.SSLContext, identity: str, *,
                           timeout_s: float = 3.0, quiet_s: float = 0.3
                           ) -> dict[str, StatusReading]:
    """The retained status of every device, as the broker holds them now (each parsed, or
    the reason it is not a valid status).

    Connects as ``identity`` (a collector certificate) with a new client id and a clean
    session, subscribes to all statuses and returns once no message arrived for ``quiet_s``
    after the subscription was granted (retained messages come right after the SUBACK), or
    at ``timeout_s``.
    """
    import paho.mqtt.client as mqtt  # noqa: PLC0415 -- only `device list` needs it here
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    out: dict[str, StatusReading] = {}
    lock = threading.Lock()
    last = [time.monotonic()]
    subscribed = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2,
                    client_id=f"{identity}.list-{secrets.token_hex(4)}", protocol=mqtt.MQTTv5)
    c.tls_set_context(context)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            device = device_of(msg.topic, "status")
        except WireError:
            device = None       # not a status topic: ignored
        if device is not None:
            reading: StatusReading
            try:
                reading = parse_status(device, bytes(msg.payload))
            except WireError as e:
                reading = str(e)
            with lock:
                out[device] = reading
        last[0] = time.monotonic()

    def on_subscribe(*_a: Any) -> None:
        last[0] = time.monotonic()
        subscribed.set()

    c.on_message = on_message
    c.on_subscribe = on_subscribe
    try:
        c.connect(host, port, keepalive=10, clean_start=True)
    except (OSError, ssl.SSLError) as e:
        raise CollectorError(f"cannot read device statuses from {host}:{port}: {e}") from e
    c.loop_start()
    try:
        c.subscribe(ALL_STATUS, qos=1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if subscribed.is_set() and time.monotonic() - last[0] >= quiet_s:
                break
            time.sleep(0.02)
    finally:
        c.disconnect()
        c.loop_stop()
    with lock:
        return dict(out)


def _age(now_us: int, at: int | None) -> str:
    if at is None:
        return "-"
    s = max(0, (now_us - at) // 1_000_000)
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


_WITNESS_SHOWN = {"refusing": "REFUSING", "inclusion-failed": "INCL-BAD"}


def render_table(rows: Sequence[DeviceRow], *, now_us: int) -> str:
    head = (f"{'DEVICE':<20} {'SITE':<10} {'STATUS':<8} {'KEY':<17} {'SEQ':>6} {'GAPS':>4} "
            f"{'LAST SEEN':>9} {'CERT UNTIL':<10} {'LINK':<8} {'QUEUE':>5} {'OLDEST':>6} "
            f"{'CLOCK':<8} {'WITNESS':<8} {'DISK':<4}")
    lines = [head]
    for r in rows:
        until = "-" if r.cert_not_after is None else f"{r.cert_not_after:%Y-%m-%d}"
        lines.append(
            f"{r.device:<20} {r.site[:10]:<10} {r.status:<8} {r.key_id or '-':<17} "
            f"{r.recorded:>6} {len(r.gaps):>4} {_age(now_us, r.last_seen_us):>9} {until:<10} "
            f"{r.online or '?':<8} {'-' if r.queue_depth is None else r.queue_depth:>5} "
            f"{_age(now_us, r.oldest_unacked_us):>6} {r.clock or '?':<8} "
            f"{_WITNESS_SHOWN.get(r.witness or '?', r.witness or '?'):<8} "
            f"{(r.storage or '?').replace('full', 'FULL'):<4}")
        lines += [f"  ! {w}" for w in r.warnings]
    return "\n".join(lines)
