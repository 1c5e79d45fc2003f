"""The collector's side of remote configuration (issue 15 item 6; docs/protocol.md §13.14,
docs/operations.md "Changing a clock's configuration remotely").

``timeclock-collector device configure`` (collector.cli.device) calls, in order:
:func:`make_change` (the allow-list is checked by wire.remote_config on construction, the
device must be active, the serial is one above the device's newest recorded change),
:func:`record_change` (a ``config`` entry ``{"event": "change", ...}`` — appended BEFORE the
change is published, so no clock ever receives a change the ledger does not hold),
:func:`exchange` (publish retained on the clock's ``config`` topic, wait for its answer on
``config-result``) and :func:`record_result` (the clock's signed answer verified under one of
its registered keys and appended as ``{"event": "result", ...}``, once).

Invariant: every change a clock was sent is a ledger entry, and so is every answer the
collector received; :func:`config_states` derives what ``device list`` shows from them.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from collector import CollectorError, RegistryError
from collector.ledger.base import EventFact
from collector.ledger.queries import entries_of_kind
from collector.ledger.sqlbase import SQLStore
from wire import topics
from wire.canonical import loads
from wire.errors import WireError
from wire.keys import SigningKey, VerifyKey
from wire.remote_config import (
    ConfigChange,
    ConfigEntry,
    ConfigResult,
    SignedConfigChange,
    SignedConfigResult,
    parse_config_entry,
)

_PAGE = 1000


def config_entries(store: SQLStore) -> Iterator[tuple[int, ConfigEntry]]:
    """Every ``config`` entry whose body is still held, in ledger order."""
    after = -1
    while True:
        page = entries_of_kind(store, "config", after, _PAGE)
        for e in page:
            if e.body is not None:
                yield e.idx, parse_config_entry(loads(e.body))
        if len(page) < _PAGE:
            return
        after = page[-1].idx


@dataclass(frozen=True, slots=True)
class ConfigState:
    """A clock's remote configuration as the ledger records it."""

    device: str
    sent_serial: int = 0            # newest change recorded for it
    applied_serial: int = 0         # newest change the clock answered "applied" for
    last_status: str | None = None  # its newest answer: applied | refused
    last_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent_serial, "applied": self.applied_serial,
                "last_status": self.last_status, "last_reason": self.last_reason}


def config_states(store: SQLStore) -> dict[str, ConfigState]:
    out: dict[str, ConfigState] = {}
    for _idx, e in config_entries(store):
        st = out.get(e.device, ConfigState(e.device))
        if e.change is not None:
            st = ConfigState(e.device, max(st.sent_serial, e.serial), st.applied_serial,
                             st.last_status, st.last_reason)
        elif e.result is not None:
            r = e.result.result
            applied = max(st.applied_serial, r.serial) if r.status == "applied" else \
                st.applied_serial
            st = ConfigState(e.device, st.sent_serial, applied, r.status, r.reason)
        out[e.device] = st
    return out


def make_change(store: SQLStore, device: str, settings: dict[str, int | str],
                log_key: SigningKey, *, now_us: int) -> SignedConfigChange:
    """The next signed change for ``device`` (raises for an unknown or inactive device and,
    as :class:`wire.errors.WireError`, for a setting outside the allow-list)."""
    rec = store.device(device)
    if rec is None:
        raise RegistryError(f"device {device!r} is not enrolled")
    if rec.status != "active":
        raise RegistryError(f"device {device} is {rec.status}: it takes no configuration")
    serial = config_states(store).get(device, ConfigState(device)).sent_serial + 1
    return ConfigChange(device, serial, now_us, dict(settings), log_key.key_id).sign(log_key)


def record_change(store: SQLStore, signed: SignedConfigChange, *, by: str, now_us: int) -> int:
    """Append the change, with ``by`` (who made it; recorded, not authenticated)."""
    c = signed.change
    res = store.append([EventFact("config", {"event": "change", "device": c.device,
                                             "serial": c.serial, "by": by,
                                             "change": signed.to_dict()})],
                       now_us=now_us)
    return res[0].idx


def verify_result(store: SQLStore, payload: bytes, device: str) -> SignedConfigResult:
    """The clock's answer, if it is for ``device`` and signed by one of its registered keys."""
    signed = SignedConfigResult.from_bytes(payload)
    if signed.result.device != device:
        raise CollectorError(f"the result on {device}'s topic is for {signed.result.device}")
    problems = []
    for k in store.keys(device):
        try:
            signed.verify(VerifyKey.from_b64(k.public_b64))
        except WireError as e:
            problems.append(f"{k.key_id}: {e}")
            continue
        return signed
    raise CollectorError(f"the result for {device} is signed by none of its keys "
                         f"({'; '.join(problems) or 'no keys registered'})")


def record_result(store: SQLStore, signed: SignedConfigResult, *, now_us: int) -> int | None:
    """Append the clock's answer; None when this very answer is already recorded."""
    r = signed.result
    for _idx, e in config_entries(store):
        if e.result is not None and e.result.to_dict() == signed.to_dict():
            return None
    res = store.append([EventFact("config", {"event": "result", "device": r.device,
                                             "serial": r.serial, "result": signed.to_dict()})],
                       now_us=now_us)
    return res[0].idx


def exchange(host: str, port: int, context: ssl.SSLContext, identity: str, device: str, *,
             payload: bytes | None, serial: int | None, timeout_s: float) -> list[bytes]:
    """Publish ``payload`` (a signed change's bytes) retained on ``device``'s config topic
    (None: publish nothing) and collect the payloads on its config-result topic until one
    answers ``serial`` (None: until the retained one came) or ``timeout_s`` passed."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415 -- only these commands need paho here
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    got: list[bytes] = []
    done, subscribed = threading.Event(), threading.Event()
    want = serial
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity, protocol=mqtt.MQTTv5)
    c.tls_set_context(context)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(bytes(msg.payload))
        try:
            serial = SignedConfigResult.from_bytes(bytes(msg.payload)).result.serial
        except WireError:
            serial = None
        if want is None or serial == want:
            done.set()

    refused: list[str] = []

    def on_subscribe(_c: mqtt.Client, _u: Any, _mid: int, rcs: Any, _p: Any) -> None:
        refused.extend(str(rc) for rc in rcs if getattr(rc, "is_failure", False))
        subscribed.set()

    c.on_message = on_message
    c.on_subscribe = on_subscribe
    try:
        c.connect(host, port, keepalive=10, clean_start=True)
    except (OSError, ssl.SSLError) as e:
        raise CollectorError(f"cannot reach the broker at {host}:{port}: {e}") from e
    c.loop_start()
    try:
        c.subscribe(topics.config_result(device), qos=1)
        if not subscribed.wait(timeout_s):
            raise CollectorError(f"the broker at {host}:{port} did not answer the subscription")
        if refused:
            raise CollectorError(f"the broker refused {identity} the results of {device} "
                                 f"({refused[0]}): regenerate the broker's ACL "
                                 f"(broker-config) so collectors may read config-result")
        if payload is not None:
            info = c.publish(topics.config(device), payload, qos=1, retain=True)
            info.wait_for_publish(timeout=timeout_s)
            if not info.is_published():
                raise CollectorError(f"the broker did not take the change for {device}")
            done.wait(timeout_s)
        else:
            # the retained answer, if any, comes right after the SUBACK
            done.wait(min(timeout_s, 3.0))
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def answer_of(results: list[tuple[SignedConfigResult, int | None]], serial: int
              ) -> ConfigResult | None:
    for signed, _idx in results:
        if signed.result.serial == serial:
            return signed.result
    return None
