"""Attack table against a RUNNING collector (real mTLS Mosquitto, real SQLite/PostgreSQL).

Each case is published over mTLS by a device with its own certificate and must end as a
quarantined message with its reason AND a ``rejection`` entry in the ledger (or, for a
replay, as no new entry and a receipt again), while the collector keeps running: every
case ends with a valid punch from an honest clock being recorded and receipted.
Plus fuzzing: 10,000 seeded random byte strings through ``judge`` + the store, and a few
hundred through the broker.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from collector import RegistryError
from collector.access.directory import Principals
from collector.ingest.alerts import Alerts
from collector.ingest.pipeline import Inbound, Ingestor
from collector.ledger import open_store, registry
from collector.ledger.base import EventFact, Outcome
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.service.config import load_config
from collector.service.runner import CollectorService
from tests.collector.api_kit import Api, access_bodies
from tests.collector.ledger_kit import Clock
from tests.collector.punch_kit import (
    T0,
    Device,
    SimClock,
    enroll,
    envelope,
    new_clock,
    raw_envelope,
    write_collector_config,
)
from tests.collector.retention_kit import (
    F6_CASES,
    F6Case,
    f6_refused_by_store,
    f6_written_fails_both_verifiers,
)
from tests.e2e.attack_kit import (
    KEY_CHANGE_VERDICTS,
    append_forged_key_change,
    both_verdicts,
    drop_triggers,
    ledger_with_a_clock,
    restore_triggers,
)
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.postgres import PgDatabase
from wire.canonical import loads
from wire.keys import SigningKey
from wire.rotation import RotationRequest, SignedRotationRequest

MAX_PAYLOAD = 8192   # the collector's own (1) size limit for this run, below the broker's


@dataclass
class Ctx:
    broker: MosquittoBroker
    svc: CollectorService
    store: SQLStore
    log_key: SigningKey
    honest: SimClock
    honest_dev: Device
    devices: dict[str, Device] = field(default_factory=dict)

    def device(self, clock: SimClock) -> Device:
        if clock.device not in self.devices:
            self.devices[clock.device] = Device(self.broker, clock)
        return self.devices[clock.device]

    def enrolled(self) -> SimClock:
        c = new_clock("atk")
        enroll(self.store, c)
        return c


def start(broker: MosquittoBroker, directory: Path, store_url: str, *, extra: str = "") -> Ctx:
    """A running collector on ``broker`` and ``store_url`` (``extra``: more config tables)."""
    cfg_file, log_key = write_collector_config(
        directory, broker, store_url=store_url,
        extra=f"[ingest]\nmax_payload_bytes = {MAX_PAYLOAD}\nbatch_wait_ms = 5\n{extra}")
    store = open_store(store_url)
    honest = new_clock("honest")
    enroll(store, honest)
    svc = CollectorService(load_config(cfg_file))
    svc.start()
    assert svc.wait_ready(10)
    return Ctx(broker, svc, store, log_key, honest, Device(broker, honest))


# -- the attacks: each publishes and returns (attacking device, seqs it must get acked) -------

Attack = Callable[[Ctx], tuple[Device, set[int]]]


def bad_signature(ctx: Ctx) -> tuple[Device, set[int]]:
    c = ctx.enrolled()
    d = c.punch().to_dict()
    d["punch"]["credential"] = "em4100:6666666666"        # changed after signing
    dev = ctx.device(c)
    dev.publish(raw_envelope(c.device, [d]))
    return dev, set()


def unknown_device(ctx: Ctx) -> tuple[Device, set[int]]:
    c = new_clock("stranger")                               # valid cert, never enrolled
    dev = ctx.device(c)
    dev.send(c.batch(1))
    return dev, set()


def revoked_device(ctx: Ctx) -> tuple[Device, set[int]]:
    c = ctx.enrolled()
    registry.revoke(ctx.store, c.device, "stolen", now_us=T0)   # ledger revoked, CRL not yet
    dev = ctx.device(c)
    dev.send(c.batch(1))
    return dev, set()


def unregistered_key(ctx: Ctx) -> tuple[Device, set[int]]:
    c = ctx.enrolled()
    dev = ctx.device(c)
    dev.send([c.punch(key=SigningKey.generate())])
    return dev, set()


def revoked_key(ctx: Ctx) -> tuple[Device, set[int]]:
    c = ctx.enrolled()
    new = SigningKey.generate()
    registry.rotate(ctx.store, rotation(c, new, 3), now_us=T0)
    registry.revoke(ctx.store, c.device, "compromised", key_id=new.key_id, now_us=T0)
    c.seq, c.prev = 2, "0" * 64
    dev = ctx.device(c)
    dev.send([c.punch(key=new)])
    return dev, set()


def rotation(c: SimClock, new: SigningKey, from_seq: int) -> SignedRotationRequest:
    """The clock's own request (wire.rotation), signed by its current key."""
    return RotationRequest(c.device, c.key.key_id, new.key_id, new.verify_key, from_seq,
                           T0).sign(c.key)


def key_not_valid_for_seq(ctx: Ctx) -> tuple[Device, set[int]]:
    c = ctx.enrolled()
    registry.rotate(ctx.store, rotation(c, SigningKey.generate(), 2), now_us=T0)
    c.seq = 5                                               # old key, beyond its validity
    dev = ctx.device(c)
    dev.send([c.punch()])
    return dev, set()


def operator_key_rotation(ctx: Ctx) -> tuple[Device, set[int]]:
    """Issue 11 finding 4: the operator installs their own key for a clock (a rotation
    request they signed themselves, or none at all), then publishes a "clocked out 3 h ago"
    punch signed with it. The store refuses both key changes; the punch is quarantined."""
    c = ctx.enrolled()
    operator = SigningKey.generate()
    size = entry_count(ctx.store)
    forged = RotationRequest(c.device, c.key.key_id, operator.key_id, operator.verify_key, 1,
                             T0)
    with pytest.raises(RegistryError, match=f"not signed by {c.device}'s current key"):
        registry.rotate(ctx.store, SignedRotationRequest(
            forged, operator.sign(forged.signed_message())), now_us=T0)
    with pytest.raises(RegistryError, match="no open re-enrolment request"):
        registry.approve_reenrolment(ctx.store, c.device, approved_by="operator", now_us=T0)
    # the same entries handed to the store directly (what `device rotate` used to write)
    body = {"event": "rotated", "device": c.device, "key": operator.key_id,
            "signing_key": operator.verify_key.b64, "from_seq": 1}
    with pytest.raises(RegistryError, match="without its old key's signed request is refused"):
        ctx.store.append([EventFact("device", body)], now_us=T0)
    body["request"] = SignedRotationRequest(forged, operator.sign(forged.signed_message())
                                            ).to_dict()
    with pytest.raises(RegistryError, match=f"not signed by {c.device}'s current key"):
        ctx.store.append([EventFact("device", body)], now_us=T0)
    assert entry_count(ctx.store) == size                       # nothing recorded
    dev = ctx.device(c)
    dev.send([c.punch(key=operator, action="out", ts=T0 - 3 * 3600 * 10**6)])
    return dev, set()


def device_mismatch(ctx: Ctx) -> tuple[Device, set[int]]:
    c = ctx.enrolled()
    victim = SimClock(ctx.honest.device, ctx.honest.key, seq=900)   # claims another device
    dev = ctx.device(c)
    dev.publish(envelope(victim.device, [victim.punch()]))
    return dev, set()


def replay(ctx: Ctx) -> tuple[Device, set[int]]:
    c = ctx.enrolled()
    dev = ctx.device(c)
    p = c.punch()
    dev.send([p])
    assert dev.acked_until(ctx.log_key, {1}) == {1}
    dev.send([p])                                            # the same punch again
    return dev, {1}


def conflict(ctx: Ctx) -> tuple[Device, set[int]]:
    c = ctx.enrolled()
    clone = SimClock(c.device, c.key)                        # same key, same seq, new content
    dev = ctx.device(c)
    dev.send([c.punch()])
    assert dev.acked_until(ctx.log_key, {1}) == {1}
    dev.send([clone.punch(action="out")])
    return dev, {1}


def oversized(ctx: Ctx) -> tuple[Device, set[int]]:
    c = ctx.enrolled()
    dev = ctx.device(c)
    dev.publish(envelope(c.device, c.batch(30)))             # ~ 15 KB > MAX_PAYLOAD
    return dev, set()


def raw_payload(payload: bytes) -> Attack:
    def attack(ctx: Ctx) -> tuple[Device, set[int]]:
        c = ctx.enrolled()
        dev = ctx.device(c)
        dev.publish(payload.replace(b"DEVICE", c.device.encode()))
        return dev, set()
    return attack


def unknown_fields(ctx: Ctx) -> tuple[Device, set[int]]:
    c = ctx.enrolled()
    d = c.punch().to_dict()
    d["punch"]["badge_photo"] = "x"
    dev = ctx.device(c)
    dev.publish(raw_envelope(c.device, [d]))
    return dev, set()


@dataclass(frozen=True)
class Case:
    id: str
    attack: Attack
    reason: str | None          # quarantine reason; None: nothing may be quarantined
    new_entries: int = 2        # entries the attack adds: enrolment, registry events, rejection
    alert: str | None = None


CASES = [
    Case("d2_bad_signature", bad_signature, "bad-signature"),
    Case("d1_unknown_device", unknown_device, "unknown-device", new_entries=1),
    Case("d1_revoked_device", revoked_device, "device-revoked", new_entries=3),
    Case("d1_unregistered_key", unregistered_key, "unknown-key"),
    Case("d1_revoked_key", revoked_key, "key-revoked", new_entries=4),
    Case("d1_key_not_valid_for_seq", key_not_valid_for_seq, "key-not-valid-for-seq",
         new_entries=3),
    Case("d17_d1_operator_key_rotation_then_forged_punch", operator_key_rotation,
         "unknown-key"),
    Case("d3_payload_device_not_topic_device", device_mismatch, "device-mismatch"),
    Case("d5_replay_of_receipted_punch", replay, None, new_entries=2),
    Case("d5_same_seq_other_content", conflict, "conflict", new_entries=3, alert="conflict"),
    Case("d2_oversized", oversized, "oversized"),
    Case("d2_malformed_json", raw_payload(b'{"v":1,"device":"DEVICE","punches":['),
         "malformed"),
    Case("d2_floats", raw_payload(b'{"v":1.0,"device":"DEVICE","punches":[{}]}'), "malformed"),
    Case("d2_duplicate_keys",
         raw_payload(b'{"v":1,"device":"DEVICE","device":"DEVICE","punches":[{}]}'),
         "malformed"),
    Case("d2_unknown_fields", unknown_fields, "malformed"),
]


@pytest.fixture
def ctx(mosquitto: MosquittoBroker, tmp_path: Path) -> Iterator[Ctx]:
    c = start(mosquitto, tmp_path / "c", f"sqlite://{tmp_path / 'ledger.db'}")
    yield c
    c.svc.stop()
    c.store.close()


def entry_count(store: SQLStore) -> int:
    return store.head()[0]


def run_case(ctx: Ctx, case: Case) -> None:
    q0 = len(ctx.store.quarantine(limit=100_000))
    before = entry_count(ctx.store)
    dev, must_ack = case.attack(ctx)
    # The collector keeps running: an honest punch published afterwards is recorded.
    ctx.honest_dev.send([ctx.honest.punch()])
    assert ctx.honest_dev.acked_until(ctx.log_key, {ctx.honest.seq}) >= {ctx.honest.seq}
    quarantined = ctx.store.quarantine(limit=100_000)[q0:]
    if case.reason is None:
        assert quarantined == []
    else:
        assert [q.reason for q in quarantined] == [case.reason]
        q = quarantined[0]
        (entry,) = ctx.store.entries(q.idx, q.idx + 1)
        assert entry.entry.kind == "rejection"
        assert entry.body is not None
        body = loads(entry.body)
        assert body["reason"] == case.reason
        assert body["raw_sha256"] == q.raw_sha256
        assert body["topic"] == dev.clock.topic
        assert len(ctx.store.quarantined_raw(q.id)) == q.size
    # what the case adds + the honest punch
    after = entry_count(ctx.store)
    assert after - before == case.new_entries + 1, \
        [e.entry.kind for e in ctx.store.entries(before, after)]
    got: set[int] = set()
    if must_ack:
        got = dev.acked_until(ctx.log_key, must_ack)
    # Nothing else was acked to the attacker (the honest receipt came after its message).
    while not dev.receipts.messages.empty():
        got |= set(dev.receipt(ctx.log_key).ack.seqs())
    assert got == must_ack
    if case.alert is not None:
        assert [a.device for a in ctx.svc.alerts.recent(case.alert)] == [dev.clock.device]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_attack_is_quarantined_and_collector_keeps_running(ctx: Ctx, case: Case) -> None:
    run_case(ctx, case)


def test_d5_postgres_smoke_attack_table_subset(mosquitto: MosquittoBroker, tmp_path: Path,
                                               pg_ledger: PgDatabase) -> None:
    c = start(mosquitto, tmp_path / "c", pg_ledger.app_dsn)
    try:
        for case in CASES:
            if case.id in ("d2_bad_signature", "d1_unknown_device", "d5_replay_of_receipted_punch",
                           "d5_same_seq_other_content", "d2_malformed_json",
                           "d17_d1_operator_key_rotation_then_forged_punch"):
                run_case(c, case)
    finally:
        c.svc.stop()
        c.store.close()


# -- the same key change written straight into the database ---------------------------------

def forge_key_change(db: Path, clock: Clock, operator: SigningKey, *, request: bool) -> int:
    """A database admin, collector stopped: triggers dropped, the forged key change of
    :func:`tests.e2e.attack_kit.append_forged_key_change` written, triggers put back. Returns
    the idx of the forged rotation."""
    conn = sqlite3.connect(db)
    try:
        saved = drop_triggers(conn)
        n = append_forged_key_change(conn, clock, operator, request=request)
        restore_triggers(conn, saved)
        conn.commit()
    finally:
        conn.close()
    return n


@pytest.mark.parametrize("request_signed_by_operator", [True, False],
                         ids=["forged-request", "no-request"])
def test_d17_d1_key_change_written_into_the_database_is_caught_by_both_verifiers(
        tmp_path: Path, request_signed_by_operator: bool) -> None:
    """A forged request FAILS both verifiers at the rotation entry (the punch under it too);
    a rotation without one (the shape of a pre-request ledger) is reported by both as an
    unauthenticated key change at that entry, never passed silently."""
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    clock = ledger_with_a_clock(store)
    store.close()
    idx = forge_key_change(db, clock, SigningKey.generate(),
                           request=request_signed_by_operator)
    rcs, live, offline = both_verdicts(str(db), tmp_path)
    want_rcs, says = KEY_CHANGE_VERDICTS[request_signed_by_operator]
    assert rcs == want_rcs
    for out in (live, offline):
        assert says.format(idx=idx) in out


# -- fuzzing ------------------------------------------------------------------------------------

def mutations(rng: random.Random, seed_payload: bytes, n: int) -> Iterator[bytes]:
    """Random bytes, and random corruptions of a valid envelope (more likely to get deep)."""
    for i in range(n):
        kind = i % 4
        if kind == 0:
            yield rng.randbytes(rng.randint(0, 300))
        elif kind == 1:
            b = bytearray(seed_payload)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            yield bytes(b)
        elif kind == 2:
            cut = rng.randrange(len(seed_payload))
            yield seed_payload[:cut] + seed_payload[cut + 1:]
        else:
            pos = rng.randrange(len(seed_payload))
            yield seed_payload[:pos] + rng.choice(
                [b"1.5", b"\"", b"{", b"]", b",", b"\\u0000", b"9" * 30, b"null"]) + \
                seed_payload[pos:]


def test_d2_10000_random_inputs_judge_and_store_never_crash(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "fuzz.db")
    clock = new_clock("fuzz")
    enroll(store, clock)
    valid = envelope(clock.device, clock.batch(2))
    ing = Ingestor(store, lambda: RegistrySnapshot.load(store), SigningKey.generate(),
                   Alerts())
    rng = random.Random(20240601)  # noqa: S311 - reproducible fuzz, not crypto
    payloads = list(mutations(rng, valid, 10_000))
    outcomes: dict[Outcome, int] = {}
    size0 = entry_count(store)
    nfacts = 0
    for i in range(0, len(payloads), 2000):
        batch = [Inbound(clock.topic, p, T0) for p in payloads[i:i + 2000]]
        res = ing.process(batch, now_us=T0)
        assert res.committed == batch          # everything recorded, nothing pending
        nfacts += len(res.results)
        for r in res.results:
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    repeats = sum(v for k, v in ing.alerts.counts().items() if k.startswith("rejected-repeat:"))
    assert nfacts + repeats >= 10_000
    # Only the unmodified envelope's two punches (and replays of them) can be accepted.
    assert outcomes.get(Outcome.APPENDED, 0) <= 2
    assert entry_count(store) - size0 == nfacts - outcomes.get(Outcome.DUPLICATE, 0)
    assert "rejected:internal-error" not in ing.alerts.counts()
    store.close()


def test_d2_random_inputs_through_the_broker(ctx: Ctx) -> None:
    c = ctx.enrolled()
    dev = ctx.device(c)
    valid = envelope(c.device, c.batch(1))
    rng = random.Random(7)  # noqa: S311 - reproducible fuzz, not crypto
    payloads = list(mutations(rng, valid, 300))
    q0 = len(ctx.store.quarantine(limit=100_000))
    for p in payloads:
        dev.client.publish(c.topic, p, qos=1)
    # One writer, in order: once seq 2 (sent last) is receipted, every fuzz input is judged.
    dev.send(c.batch(1))
    dev.acked_until(ctx.log_key, {2}, timeout_s=30)
    ctx.honest_dev.send([ctx.honest.punch()])
    ctx.honest_dev.acked_until(ctx.log_key, {ctx.honest.seq})
    q = ctx.store.quarantine(limit=100_000)[q0:]
    assert len(q) >= 250
    assert "internal-error" not in {r.reason for r in q}
    assert ctx.store.progress(c.device).highest == 2


# -- insider access attacks (issue 11, findings 5 and 7; controls D7, D8) ------------------------
# Against the real API over a real SQLite ledger (the PostgreSQL superuser variant is in
# tests/collector/test_grants_chain.py). Each row names the status the API must answer and
# the access entry the attempt must leave in the chain; honest callers keep working.

FORGED_TOKEN = "tct_" + "F" * 43


async def _post(api: Api, path: str, who: str, body: dict[str, Any]) -> int:
    return (await api.call("POST", path, who, json=body)).status


async def token_for_another(api: Api) -> int:
    return await _post(api, "/v1/tokens", "admin", {"principal": "hr-reader"})


async def token_for_new_hr_principal(api: Api) -> int:
    return await _post(api, "/v1/tokens", "admin", {"principal": "newbie",
                                                    "roles": ["hr.read"]})


async def self_approved_grant(api: Api) -> int:
    resp = await api.call("POST", "/v1/principals", "admin",
                          json={"principal": "carol", "roles": ["hr.read"]})
    gid = (await resp.json())["pending"]["id"]
    return await _post(api, f"/v1/grants/{gid}/approve", "admin", {})


def _db(api: Api, sql: str, params: tuple[Any, ...] = ()) -> None:
    with api.store._lock:                              # type: ignore[attr-defined]  # noqa: SLF001 - the insider has the file
        api.store._conn.execute(sql, params)           # type: ignore[attr-defined]  # noqa: SLF001


async def token_row_inserted(api: Api) -> int:
    idx = int(api.store.query("SELECT entry_idx FROM tc_tokens WHERE principal = "
                              "'hr-reader'")[0][0])
    _db(api, "INSERT INTO tc_tokens (id, principal, hash, created_at, created_by, expires_at, "
             "entry_idx) VALUES ('tok-forged0000', 'hr-reader', ?, 1, 'x', ?, ?)",
        (hashlib.sha256(FORGED_TOKEN.encode()).hexdigest(), 2**62, idx))
    resp = await api.client.get("/v1/punches",
                                headers={"Authorization": f"Bearer {FORGED_TOKEN}"})
    return resp.status


async def role_row_inserted(api: Api) -> int:
    _db(api, "INSERT INTO tc_roles VALUES ('hr-reader', 'payroll.export', 1, 'x')")
    return (await api.call("GET", "/v1/exports/payroll", "hr-reader")).status


@dataclass(frozen=True)
class AccessCase:
    id: str
    attack: Callable[[Api], Awaitable[int]]
    status: int                     # what the API answers
    recorded: dict[str, str]        # fields of the access entry the attempt leaves
    drift: bool = False             # access-review/verify must name a row behind the ledger


ACCESS_CASES = [
    AccessCase("f5-token-for-another-principal", token_for_another, 403,
               {"action": "token.create", "outcome": "refused", "principal": "hr-reader"}),
    AccessCase("f5-token-for-a-new-hr-principal", token_for_new_hr_principal, 403,
               {"action": "token.create", "outcome": "refused", "principal": "newbie"}),
    AccessCase("f5-grant-approved-by-its-requester", self_approved_grant, 403,
               {"action": "grant.approve", "outcome": "refused", "actor": "admin"}),
    AccessCase("f7-token-row-inserted-in-the-database", token_row_inserted, 401,
               {"type": "unauthenticated", "count": 1}, drift=True),
    AccessCase("f7-role-row-inserted-in-the-database", role_row_inserted, 403,
               {"type": "request", "path": "/v1/exports/payroll", "outcome": "denied"},
               drift=True),
]


@pytest.mark.parametrize("case", ACCESS_CASES, ids=[c.id for c in ACCESS_CASES])
async def test_d7_d8_insider_access_attack_is_refused_and_recorded(api: Api,
                                                                   case: AccessCase) -> None:
    await run_access_case(api, case)


async def run_access_case(api: Api, case: AccessCase) -> None:
    """The attack answered ``case.status``, left its access entry, and (for a row written behind
    the ledger) the drift is named; honest callers keep working."""
    assert await case.attack(api) == case.status
    api.clock.advance(60)           # the minute is over: tallies without a principal are due
    await api.flush()
    bodies = access_bodies(api.store)
    assert any(case.recorded.items() <= b.items() for b in bodies), bodies[-1]
    drift = Principals(api.store).drift()
    assert bool(drift) == case.drift, drift
    assert (await api.call("GET", "/v1/punches", "hr-reader")).status == (
        403 if case.id.startswith("f7-role") else 200)   # a tampered principal stays refused
    assert (await api.call("GET", "/v1/punches", "approver")).status == 200


# -- insider retention (issue 11, finding 6; control D15) ---------------------------------------
# Anything that can append (the PostgreSQL app role included) used to be able to write a
# retention entry and delete punch bodies, and both verifiers accepted it. Now: through the
# store it is refused; written into the database anyway (the store's judgement bypassed, the
# guarding triggers disabled by a DB admin for the write and put back), both verifiers fail at
# that entry.

@pytest.mark.parametrize("case", F6_CASES, ids=[c.id for c in F6_CASES])
def test_d15_f6_app_role_retention_is_refused_by_the_store(store: SQLStore,
                                                           case: F6Case) -> None:
    """``store``: SQLite, and PostgreSQL opened as the collector's narrow app role."""
    f6_refused_by_store(store, case)


@pytest.mark.parametrize("case", F6_CASES, ids=[c.id for c in F6_CASES])
def test_d15_f6_retention_written_into_the_database_fails_both_verifiers(
        pg_ledger: PgDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        case: F6Case) -> None:
    f6_written_fails_both_verifiers(pg_ledger, tmp_path / "bundle", monkeypatch, case)
