"""The scenarios of the insider findings table (tests/e2e/test_insider_findings.py; issue 11,
build item 9): one callable per finding of the red-team pass, each replaying the attack against
real PostgreSQL and, where it involves the broker or a clock, the module's real Mosquitto with
an in-process collector on it, and returning what it saw (:class:`Seen`) in the words of the
table's REFUSED/DETECTED and RECORDED columns, built from the real answers.

The scenarios are the existing tests' own, imported from their kits and modules
(tests/e2e/broker_attack_kit.py, tests/agent/queue_damage_kit.py, tests/collector/test_attacks.py,
retention_kit.py, access_kit.py, test_projection_rows.py), run on PostgreSQL where those ran on
SQLite only. Invariant: a scenario on the live collector leaves only findings (quarantine,
losses, alerts), never tampering, so the rows can share one ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import queue
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent.errors import SequenceRefusedError
from agent.queue import Outbox
from agent.seqmark import SeqMark
from collector import LedgerError
from collector.access.directory import Principals
from collector.cli.main import main as collector_main
from collector.ingest.alerts import Alerts
from collector.ingest.checkpoints import make_checkpoint
from collector.ledger import open_store
from collector.ledger.audit import SAMPLE_DEFAULT, verify_store
from collector.ledger.base import EventFact
from collector.ledger.postgres import PostgresStore, migrate
from collector.ledger.row_check import ProjectionError
from collector.ledger.schema_check import check_schema, pg_expected_triggers
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.ledger.tables import migrate_postgres
from collector.service.config import load_config
from collector.service.runner import preflight, schema_checks
from tests.agent.queue_damage_kit import LOSES_QUEUE_TRANSACTIONS, VARIANTS, copy_state
from tests.collector.access_kit import (
    FORGED,
    bearer_status,
    forged_access_rows,
    sod_breaches_are_findings,
)
from tests.collector.api_kit import issue_tokens, seed, start_api
from tests.collector.ledger_kit import T0, Clock, seeded_key
from tests.collector.punch_kit import SimClock, enroll, write_collector_config
from tests.collector.retention_kit import (
    F6Case,
    f6_refused_by_store,
    f6_written_fails_both_verifiers,
)
from tests.collector.test_attacks import (
    ACCESS_CASES,
    CASES,
    Ctx,
    run_access_case,
    run_case,
)
from tests.collector.test_projection_rows import _cases, _fill, pg_tamper
from tests.e2e.attack_kit import (
    KEY_CHANGE_VERDICTS,
    QmarkConnection,
    append_forged_key_change,
    both_verdicts,
    ledger_with_a_clock,
)
from tests.e2e.broker_attack_kit import (
    API_CN,
    ATTACK,
    STOLEN,
    api_status,
    connect,
    connections_as,
    puback,
)
from tests.fixtures.mosquitto import MosquittoBroker, suback
from tests.fixtures.pki import TestPKI
from tests.fixtures.postgres import (
    PgCluster,
    PgDatabase,
    create_database,
    drop_database,
    migrate_ledger,
)
from tests.polling import wait_for
from wire import ZERO_HASH
from wire.keys import SigningKey
from wire.resume_answer import ResumeRequest, SignedResumeAnswer, answer_topic, request_topic
from wire.seqloss import LossReport

STOLEN_CERT = "stolen clock certificate"
API_CERT = "API integration certificate"
ADMIN = "admin (API and CLI)"
DB_ROLE = "DB app role (anything that can append)"
DB_SUPERUSER = "DB superuser"
SD_CARD = "damaged SD card (clock stopped, keys kept)"

QUEUE_KEY = bytes(range(32))
DELIVERED = 5           # punches the collector records before the clock goes quiet
COMMITTED = 30          # punches the clock committed before it was killed (the WAL holds some)
BATCH = 8               # punches per envelope: under the collector's 8 KiB payload limit here
VERIFY_LOG_KEY = seeded_key("log-key")


def holds(fact: bool, text: str) -> str:
    """``text`` when the observed ``fact`` holds, else ``NOT [text]``: a column's words are
    said only of what was seen."""
    return text if fact else f"NOT [{text}]"


@dataclass(frozen=True)
class Seen:
    refused: str        # what was refused or detected, and by whom
    recorded: str       # what the ledger / the clock recorded


@dataclass
class Bench:
    """What a row runs against: the module's broker and live collector on PostgreSQL, and
    fresh databases of the same cluster for the rows that tamper with the database."""

    broker: MosquittoBroker
    live: Ctx
    pki: TestPKI
    cluster: PgCluster
    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    _fresh: list[PgDatabase] = dataclasses.field(default_factory=list)

    def fresh_ledger(self) -> PgDatabase:
        db = migrate_ledger(create_database(self.cluster))
        self._fresh.append(db)
        return db

    def drop_fresh(self) -> None:
        while self._fresh:
            drop_database(self.cluster, self._fresh.pop())


@dataclass(frozen=True)
class Finding:
    number: int
    title: str
    variant: str
    attacker: str
    refused: str            # what must be refused or detected, and by whom
    recorded: str           # what must be recorded
    scenario: Callable[[Bench], Seen]
    control: str            # the test function (and --control) the row runs under
    live: bool = True       # runs on the module's live collector (else a fresh database)

    @property
    def id(self) -> str:
        return f"f{self.number}-{self.variant}"


# -- findings 1, 2, 10: a stolen clock certificate (or an API one) at the broker ----------------

def honest_punch(live: Ctx) -> int:
    """The honest clock punches; returns the seq once it is receipted (so: recorded)."""
    live.honest_dev.send([live.honest.punch()])
    seq = live.honest.seq
    assert seq in live.honest_dev.acked_until(live.log_key, {seq})
    return seq


def broker_attack(name: str) -> Callable[[Bench], Seen]:
    def scenario(b: Bench) -> Seen:
        a = ATTACK[name]
        cert = b.pki.device(STOLEN) if a.cert == "stolen-device" else b.pki.api_client(API_CN)
        before = b.broker.log_text()
        got: queue.Queue[str] = queue.Queue()
        codes: list[str] = []
        pubacks: list[str] = []
        honest: list[int] = []
        for _ in range(a.connections):
            c, rc = connect(b.broker.port, cert.context(), a.client_id, got)
            try:
                assert not rc.is_failure, rc        # TLS and CONNECT succeed (no hook there)
                codes += suback(c, a.filters)
                if a.publish is not None:
                    pubacks.append(puback(c, a.publish))
                honest.append(honest_punch(b.live))    # while the attacker is subscribed
            finally:
                c.disconnect()
                c.loop_stop()

        def logged() -> str:
            """The broker's log since the attack, once it shows the id forced to the CN and
            the refusal."""
            t = b.broker.log_text()[len(before):]
            done = (connections_as(t, cert.name) >= a.connections
                    and f"denied SUBSCRIBE {a.filters[0]} for {cert.name}" in t)
            return t if done else ""

        log = wait_for(logged, 30, f"the broker to log {cert.name}'s connections and refusal")
        kicked = connections_as(log, "collector.main") or "already connected" in log
        refused = (f"broker: SUBACK {' | '.join(sorted(set(codes)))} x{len(codes)}, the client "
                   f"id forced to the CN {cert.name}")
        if pubacks:
            refused += f"; PUBACK {' | '.join(sorted(set(pubacks)))}"
        recorded = "; ".join([f"the attacker received {got.qsize()} messages",
                              holds(not kicked, "the collector's session never replaced"),
                              f"honest punches receipted and recorded {len(honest)}/"
                              f"{a.connections}"])
        return Seen(refused, recorded)
    return scenario


def api_refuses_mqtt_certificates(b: Bench) -> Seen:
    """The API over the live PostgreSQL ledger refuses device and collector certificates
    (registered as API principals all the same) and accepts the api-client kind."""
    certs = {"device": b.pki.device("clock-77"), "collector": b.pki.collector("main"),
             "api-client": b.pki.api_client(API_CN)}
    status = {kind: asyncio.run(api_status(b.live.store, b.pki, cert, kind=kind))
              for kind, cert in certs.items()}
    return Seen(f"API {status}", "nothing read by an MQTT identity")


# -- findings 3 and 11: a clock's chain restarted, or its queue damaged -------------------------

def restarted_chain(b: Bench) -> Seen:
    """Finding 3 at the collector: the clock's queue is lost and it starts again at seq 1 (the
    agent refuses that now; a clock that did it anyway): its new 1..6 are conflicts, its new 7
    a fork, quarantined with a severity-1 alert; verify --full reports no tampering."""
    live = b.live
    clock = live.enrolled()
    dev = live.device(clock)
    dev.send(clock.batch(6))
    assert dev.acked_until(live.log_key, set(range(1, 7))) == set(range(1, 7))
    q0 = len(live.store.quarantine(limit=100_000))
    restarted = SimClock(clock.device, key=clock.key, seq=0, prev=ZERO_HASH)
    dev.send(restarted.batch(7))
    acked = dev.acked_until(live.log_key, set(range(1, 7)))   # conflicts are receipted

    def quarantined() -> list[str]:
        return [q.reason for q in live.store.quarantine(limit=100_000)[q0:]
                if clock.device in q.topic]

    def fork_alerts() -> list[int]:
        return [a.severity for a in live.svc.alerts.recent("fork") if a.device == clock.device]

    wait_for(lambda: len(quarantined()) >= 7 and fork_alerts(), 60,
             "the restarted chain's seven punches quarantined and the fork alerted")
    reasons, forks = quarantined(), fork_alerts()
    dev.send([clock.punch()])                  # the genuine clock's seq 7 links to its 6
    assert 7 in dev.acked_until(live.log_key, {7})
    report = verify_store(live.store, {live.log_key.key_id: live.log_key.verify_key},
                          full=True).report
    fork_findings = [f for f in report.findings if "fork" in f.message
                     and clock.device in f.message]
    tamper = [str(f) for f in report.findings if f.tamper]
    return Seen(f"collector: quarantined conflict x{reasons.count('conflict')}, fork "
                f"x{reasons.count('fork')} (of {len(reasons)}); alert fork, severity {forks}; "
                + holds(not tamper, "verify --full: no TAMPER"),
                f"ledger seqs {_seqs(live.store, clock.device)}; receipted "
                f"{_seqs_text(sorted(acked))}, never the fork; "
                + holds(len(fork_findings) == 1 and not any(f.tamper for f in fork_findings),
                        "the fork a finding of verify --full"))


def _seqs(store: SQLStore, device: str) -> str:
    return _seqs_text(sorted(r.seq for r in store.punch_rows(PunchQuery(device=device))))


def _seqs_text(seqs: list[int]) -> str:
    return f"{seqs[0]}..{seqs[-1]}" if seqs == list(range(seqs[0], seqs[-1] + 1)) else str(seqs)


class QueueClock:
    """A clock's real outbox (agent.queue on real SQLite files, agent.seqmark) whose punches
    travel to the live collector through the broker as the publisher would send them."""

    def __init__(self, b: Bench, variant: str) -> None:
        self.live = b.live
        self.sim = SimClock(f"qd-{variant}")
        enroll(self.live.store, self.sim)
        self.dev = self.live.device(self.sim)
        self.root = b.tmp / "queues" / variant

    def open(self, state: Path, *, seeded: bool) -> Outbox:
        return Outbox(state / "queue.db", QUEUE_KEY, self.sim.device,
                      mark=SeqMark(state / "seqmark", QUEUE_KEY, self.sim.device),
                      seeded=seeded)

    def build(self, seq: int, prev: str) -> Any:
        return self.sim.unsigned(seq=seq, prev=prev).sign(self.sim.key)

    def deliver(self, box: Outbox) -> set[int]:
        """Send everything pending; delete what the verified receipts ack (the publisher)."""
        pending = box.pending(limit=10**6, max_bytes=10**9)
        for i in range(0, len(pending), BATCH):
            self.dev.send(pending[i:i + BATCH])
        acked = self.dev.acked_until(self.live.log_key, {p.punch.seq for p in pending})
        box.delete_acked(acked)
        return acked

    def ledger(self) -> tuple[list[int], list[str], tuple[tuple[int, int], ...]]:
        store = self.live.store
        seqs = sorted(r.seq for r in store.punch_rows(PunchQuery(device=self.sim.device)))
        reasons = [q.reason for q in store.quarantine(limit=100_000)
                   if self.sim.device in q.topic]
        return seqs, reasons, store.progress(self.sim.device).gaps

    def ask_collector(self) -> tuple[int, str]:
        """``resume --from-collector``: the collector's log-signed last (seq, hash) of this
        clock, asked over MQTT and verified with the log key (docs/protocol.md §13.13)."""
        topic = answer_topic(self.sim.device)
        assert suback(self.dev.client, [topic]) == ["Granted QoS 1"]
        req = ResumeRequest.new(self.sim.device)
        self.dev.publish(req.to_bytes(), topic=request_topic(self.sim.device))
        [*_, msg] = self.dev.receipts.get_until(lambda m: m.topic == topic)
        got = SignedResumeAnswer.from_bytes(bytes(msg.payload)).verify(self.live.log_key.verify_key,
                                                                req)
        return got.last_seq, got.last_hash


def queue_damage(variant: str) -> Callable[[Bench], Seen]:
    def scenario(b: Bench) -> Seen:
        qc = QueueClock(b, variant)
        live = qc.root / "live"
        box = qc.open(live, seeded=False)
        try:
            for _ in range(DELIVERED):
                box.record(qc.build)
            assert qc.deliver(box) == set(range(1, DELIVERED + 1))
            hashes = [box.record(qc.build).hash() for _ in range(COMMITTED - DELIVERED)]
            killed = copy_state(live, qc.root / "killed")      # as kill -9 leaves it
        finally:
            box.close()
        VARIANTS[variant](killed)
        box = qc.open(killed, seeded=True)
        try:
            st = box.sequence()
            q_seq = box.last_seq()
            with pytest.raises(SequenceRefusedError):
                box.record(qc.build)
            assert box.last_seq() == q_seq                       # the refusal used no seq
            if variant in LOSES_QUEUE_TRANSACTIONS:
                assert q_seq < COMMITTED, f"{variant}: the damage lost nothing ({q_seq})"
            before = qc.ledger()
            after_hash = ""
            if variant == "state-lost":     # nothing on the clock knows its last seq
                after_seq, after_hash = qc.ask_collector()
                loss = box.resume(reason=f"test {variant}", after_seq=after_seq,
                                  after_hash=after_hash)
            else:
                loss = box.resume(reason=f"test {variant}")
            nxt = [box.record(qc.build) for _ in range(3)]
            qc.dev.publish(LossReport(qc.sim.device, qc.sim.key.key_id, loss.first, loss.last,
                                      loss.reason, loss.at_us).sign(qc.sim.key).to_bytes())
            qc.deliver(box)
        finally:
            box.close()
        def loss_alerts() -> list[int]:
            return [a.severity for a in b.live.svc.alerts.recent("seq-loss")
                    if a.device == qc.sim.device]

        wait_for(lambda: "seq-loss" in qc.ledger()[1] and loss_alerts(), 60,
                 "the clock's loss report recorded and alerted")
        seqs, reasons, gaps = qc.ledger()
        resumed_after = DELIVERED if variant == "state-lost" else COMMITTED
        lost = (max(loss.first, DELIVERED + 1), loss.last)
        expected_gaps = ((lost,) if variant not in ("mark-lost", "state-lost")
                         and lost[0] <= lost[1] else ())
        report = verify_store(b.live.store, {b.live.log_key.key_id: b.live.log_key.verify_key},
                              full=True).report
        losses = [f for f in report.findings
                  if f"{qc.sim.device} reported a loss (signed)" in f.message]
        tamper = [str(f) for f in report.findings if f.tamper]
        # linked to the last punch committed on the clock (state lost: to the ledger's last)
        linked = nxt[0].punch.prev == (after_hash if variant == "state-lost" else hashes[-1])
        refused = (f"clock: sequence {st.state} ({st.reason}), the tap refused, no seq used; "
                   + holds(before[0] == list(range(1, DELIVERED + 1))
                           and not {"conflict", "fork"} & set(before[1]),
                           f"the ledger holds seqs 1..{DELIVERED}, no conflict, no fork"))
        after = "the collector's signed last seq" if variant == "state-lost" else "its mark"
        recorded = "; ".join([
            holds(nxt[0].punch.seq == resumed_after + 1 and linked,
                  f"resumed after {after}, linked to its hash"),
            holds(gaps == expected_gaps, "the ledger's gap is the undelivered part of the loss"),
            holds(not {"conflict", "fork"} & set(reasons),
                  "no conflict, no fork: no seq used twice"),
            f"seq-loss x{reasons.count('seq-loss')}, alert seq-loss severity {loss_alerts()}",
            holds(not tamper and len(losses) == 1,
                  "verify --full: no TAMPER, the signed loss a finding"),
            holds(seqs[-1] == resumed_after + 3, "the resumed punches recorded")])
        return Seen(refused, recorded)
    return scenario


# -- finding 4: the operator installs their own key for a clock --------------------------------

def operator_rotation(b: Bench) -> Seen:
    """tests/collector/test_attacks.py's row on the live PostgreSQL collector: both key changes
    refused by the store with nothing recorded, the forged punch quarantined (``rejection``)."""
    [case] = [c for c in CASES if c.id == "d17_d1_operator_key_rotation_then_forged_punch"]
    q0 = len(b.live.store.quarantine(limit=100_000))
    run_case(b.live, case)
    [q] = b.live.store.quarantine(limit=100_000)[q0:]
    (entry,) = b.live.store.entries(q.idx, q.idx + 1)
    return Seen("store: RegistryError for a request not signed by the old key and for none; "
                f"forged punch quarantined {q.reason}",
                f"{entry.entry.kind} entry; no key change recorded")


def key_change_written(request: bool) -> Callable[[Bench], Seen]:
    """The same key change written into the PostgreSQL ledger by the superuser (its session's
    triggers off), chained and re-treed with the projections to match
    (tests/e2e/attack_kit.py, SQLite in test_attacks): both verifiers say so at the entry."""
    def scenario(b: Bench) -> Seen:
        db = b.fresh_ledger()
        store = open_store(db.app_dsn)
        try:
            clock = ledger_with_a_clock(store)
        finally:
            store.close()
        with psycopg.connect(db.admin_dsn) as conn:
            conn.execute("SET session_replication_role = replica")
            idx = append_forged_key_change(QmarkConnection(conn), clock, SigningKey.generate(),
                                           request=request)
        rcs, live, offline = both_verdicts(db.app_dsn, b.tmp)
        says = KEY_CHANGE_VERDICTS[request][1].format(idx=idx)
        word = "TAMPER" if request else "a finding"
        return Seen(f"verify --full exit {rcs[0]}, timeclock-verify exit {rcs[1]}; "
                    + holds(says in live and says in offline,
                            f"both: {word} at the rotation entry, check (5)"),
                    "the forged rotation and punch stay in the chain, named at their entry")
    return scenario


# -- findings 5 and 7: an admin, or rows written behind the ledger -----------------------------

def _access_api(b: Bench) -> tuple[PgDatabase, PostgresStore]:
    db = b.fresh_ledger()
    migrate_postgres(db.owner_dsn, db.app_role)            # the access tables
    return db, PostgresStore(db.app_dsn)


def _superuser(db: PgDatabase, stmts: list[tuple[str, tuple[Any, ...]]]) -> None:
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        for sql, params in stmts:
            conn.execute(sql.replace("?", "%s"), params)


def access_attack(case_id: str) -> Callable[[Bench], Seen]:
    """A row of test_attacks' ACCESS_CASES against the real API on PostgreSQL: the API's answer
    and the access entry the attempt leaves (``run_access_case``). The f7 rows are inserted by
    the PostgreSQL superuser (the SQLite table uses the file); ``serve`` then refuses to start."""
    def scenario(b: Bench) -> Seen:
        [case] = [c for c in ACCESS_CASES if c.id == case_id]
        db, store = _access_api(b)

        async def token_row(api: Any) -> int:
            _superuser(db, forged_access_rows(store))
            return (await bearer_status(api, "/v1/punches", FORGED))[0]

        async def role_row(api: Any) -> int:
            _superuser(db, [("INSERT INTO tc_roles VALUES ('hr-reader', 'payroll.export', "
                             "1, 'x')", ())])
            return int((await api.call("GET", "/v1/exports/payroll", "hr-reader")).status)

        if case_id.startswith("f7-token"):
            case = dataclasses.replace(case, attack=token_row)
        elif case_id.startswith("f7-role"):
            case = dataclasses.replace(case, attack=role_row)

        async def run() -> list[str]:
            api = await start_api(store, clocks=seed(store))
            try:
                await run_access_case(api, case)
            finally:
                await api.client.close()
            return Principals(store).drift()

        try:
            drift = asyncio.run(run())
            start_up = "starts"
            if case.drift:
                cfg, _ = write_collector_config(b.tmp / case_id, b.broker,
                                                store_url=db.app_dsn)
                with pytest.raises(LedgerError, match="refusing to start: the access tables "
                                                      "differ from the ledger's access "
                                                      "entries"):
                    preflight(load_config(cfg))
                start_up = "serve refuses to start"
        finally:
            store.close()
        return Seen(f"API {case.status}; {start_up}; "
                    + holds(bool(drift) == case.drift,
                            "drift named" if case.drift else "no drift"),
                    f"access entry {case.recorded}")
    return scenario


def sod_breach_appended(b: Bench) -> Seen:
    """Finding 5's "recorded, not prevented, attributed to the wrong people", on PostgreSQL: the
    app role appends a punch-data grant with no second admin and a token for another principal
    (access_kit.sod_breaches_are_findings, SQLite in test_grants_chain); both verifiers
    re-derive who could do what and name each breach at its entry."""
    db, store = _access_api(b)
    try:
        seed(store)
        now = T0 + 10**9
        issue_tokens(store, now)                   # the principals the entries name
        grant_idx, token_idx = sod_breaches_are_findings(store, db.app_dsn, now, b.tmp)
    finally:
        store.close()
    return Seen("verify --full: exit 1, ACCESS DRIFT (the entries made no rows), segregation of "
                "duties (D8 grant, D7 token) "
                + holds(token_idx == grant_idx + 1, "a finding at each entry")
                + "; timeclock-verify: OK, both findings, not TAMPER",
                "the admin entries stay in the chain, under the actor who wrote them")


# -- finding 6: a retention entry written by anything that can append --------------------------

def retention_attack(case: F6Case) -> Callable[[Bench], Seen]:
    """test_attacks' F6 rows (tests/collector/retention_kit.py) on PostgreSQL: the app role's
    append refused by the store; the same entry written with the store's judgement bypassed and
    the guards disabled by the superuser fails both verifiers at that entry."""
    def scenario(b: Bench) -> Seen:
        db = b.fresh_ledger()
        store = open_store(db.app_dsn)
        try:
            message = f6_refused_by_store(store, case)
        finally:
            store.close()
        written = b.fresh_ledger()
        idx = f6_written_fails_both_verifiers(written, b.tmp / case.id, b.monkeypatch, case)
        return Seen(holds(case.refused in message, f"store: retention refused ({case.refused})")
                    + "; " + holds(idx > 0, "verify --full and timeclock-verify: TAMPER at the "
                                            "entry, check (5)"),
                    "nothing appended, no body deleted")
    return scenario


# -- finding 8: the punches projection edited -------------------------------------------------

def projection_edited(case: str, verify_says: str) -> Callable[[Bench], Seen]:
    """tests/collector/test_projection_rows.py on PostgreSQL (the superuser edits): the edited
    row never leaves the store (payroll export refused) and verify --full names it."""
    def scenario(b: Bench) -> Seen:
        db = b.fresh_ledger()
        tamper = pg_tamper(db)
        store = open_store(db.app_dsn)
        try:
            _fill(store)
            keys = {VERIFY_LOG_KEY.key_id: VERIFY_LOG_KEY.verify_key}
            assert verify_store(store, keys, full=True).ok
            stmts, says = _cases(store)[case]
            tamper(stmts)
            with pytest.raises(ProjectionError) as e:
                list(store.punch_rows(PunchQuery()))
            out = b.tmp / f"payroll-{case}.csv"
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = collector_main(["export", "--store", db.app_dsn, "--payroll", "--out",
                                     str(out)])
            exported = rc == 0 or out.exists()
            found = [str(f) for f in verify_store(store, keys, full=True).report.findings
                     if f.tamper]
        finally:
            store.close()
        named = any(verify_says in f for f in found)
        return Seen("; ".join([holds(says in str(e.value), "store: ProjectionError"),
                               holds(not exported, "payroll export refused"),
                               holds(named, "verify --full: TAMPER naming the row")]),
                    "the edited row never reaches payroll or the API")
    return scenario


# -- finding 9: append-only triggers dropped; history edited below the resume point ------------

def trigger_dropped(b: Bench) -> Seen:
    db = b.fresh_ledger()
    store = PostgresStore(db.app_dsn)
    try:
        c = Clock("clock-1")
        store.append([EventFact("device", c.enrolled_body())], now_us=T0)
        store.append([c.fact() for _ in range(3)], now_us=T0)
        t = next(t for t in pg_expected_triggers() if t.table == "entries")

        def missing_in(text: str) -> bool:
            return f"trigger {t.name} on {t.table} is missing" in text

        _superuser(db, [(f"DROP TRIGGER {t.name} ON {t.table}", ())])
        findings = check_schema(store).findings
        cfg, _ = write_collector_config(b.tmp / "f9", b.broker, store_url=db.app_dsn)
        with pytest.raises(LedgerError, match="refusing to start: ") as e:
            preflight(load_config(cfg))
        alerting, _ = write_collector_config(b.tmp / "f9-alert", b.broker, store_url=db.app_dsn,
                                             extra='[ledger]\non_schema_drift = "alert"\n')
        alerts = Alerts()
        schema_checks(load_config(alerting), store, alerts)      # starts: no LedgerError
        drift_alerts = [a.severity for a in alerts.recent("schema-drift") if missing_in(a.detail)]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = collector_main(["verify", "--store", db.app_dsn, "--log-key-pub",
                                 VERIFY_LOG_KEY.verify_key.b64, "--state",
                                 str(b.tmp / "f9" / "vs.json")])
        migrate(db.owner_dsn, app_role=db.app_role)
        restored = check_schema(store).findings
    finally:
        store.close()
    missing = f"trigger {t.name} on {t.table} is missing"
    return Seen("; ".join([
        holds(list(findings) == [missing], f"schema check: {missing}"),
        holds(missing in str(e.value), "serve refuses to start"),
        f"in alert mode it starts with alert schema-drift severity {drift_alerts}",
        holds(rc == 1 and "SCHEMA DRIFT: 1 finding(s)" in out.getvalue(),
              "verify: SCHEMA DRIFT, exit 1")]),
        holds(restored == (), "migrate restores it: no finding after"))


def old_entry_edited(b: Bench) -> Seen:
    """Incremental verification re-checks a random sample of old entries: a body edited by the
    superuser below the resume point is TAMPER at that entry (finding 9: it used to stay OK)."""
    db = b.fresh_ledger()
    store = PostgresStore(db.app_dsn)
    keys = {VERIFY_LOG_KEY.key_id: VERIFY_LOG_KEY.verify_key}
    try:
        c = Clock("clock-1")
        store.append([EventFact("device", c.enrolled_body())], now_us=T0)
        store.append([c.fact() for _ in range(499)], now_us=T0)
        make_checkpoint(store, VERIFY_LOG_KEY, T0 + 1)                # size 500
        first = verify_store(store, keys, now_us=T0 + 5)
        assert first.ok
        assert first.state is not None
        store.append([c.fact() for _ in range(3)], now_us=T0 + 2)
        seed_ = 1105
        victim = random.Random(seed_).sample(range(500), SAMPLE_DEFAULT)[0]  # noqa: S311 - test RNG
        with psycopg.connect(db.admin_dsn) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute("UPDATE bodies SET body = %s WHERE idx = %s", (b"{}", victim))
        unsampled = verify_store(store, keys, state=first.state, sample=0)
        found = verify_store(store, keys, state=first.state,
                             rng=random.Random(seed_))                   # noqa: S311 - test RNG
        ff = found.report.first_failure
    finally:
        store.close()
    assert ff is not None
    where = str(ff).split(":", 1)[0]                  # "TAMPER at idx N, check (k) name"
    return Seen(holds(unsampled.ok, "unsampled incremental verify: OK (what finding 9 saw)")
                + "; " + holds(ff.idx == victim and where == f"TAMPER at idx {victim}, check "
                               f"(4) body", "sampled incremental verify: TAMPER at the edited "
                               "entry, check (4) body"),
                f"verification status: resumed from {found.resumed_from}, sampled "
                f"{found.sampled}")
