"""Issue 11 build item 9: every finding of the red-team pass (findings 1-11, the queue-damage
variants as sub-rows) is a row of ONE table, replayed against real PostgreSQL (the session's
initdb/pg_ctl cluster; the collector connects as its narrow app role) and, where the finding
involves the broker or a clock, the real Mosquitto of this module (mTLS, the generated ACL and
the ``timeclock_acl`` plugin) with a real collector (``CollectorService``, in-process) on it.

Each :class:`Finding` row names the attacker, what must be REFUSED or DETECTED (and by whom) and
what must be RECORDED. Its scenario replays the attack and returns what it saw in the same
words (:class:`Seen`), built from the real answers: SUBACK/PUBACK reason codes, store errors,
``verify --full`` (``verify_store(full=True)``) failures and findings at their entry, start-up
refusals, alert kinds, quarantine reasons, gaps and loss records. The test asserts the row's
two columns exactly, and after every row on the live collector that an honest clock still
punches with nothing lost (every seq it ever sent recorded once, no gap).

Sharing (the module stays fast): one broker and one live ledger + collector per module, for
the rows that need a broker or clock; they leave only findings (quarantine, losses), never
tampering, so they share it. The rows that tamper with the database itself (findings 5-9) each
take a fresh database of the same cluster. The scenarios (tests/e2e/findings_kit.py) are the
existing tests' own, imported from their kits and modules, moved to PostgreSQL where they ran on
SQLite only; the whole-site replays with agent processes stay in tests/e2e/test_insider_broker.py
and test_queue_damage.py, the SQLite rows in tests/collector/test_attacks.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.ingest.alerts import SEVERITY_CRITICAL, SEVERITY_WARNING
from collector.ledger.audit import SAMPLE_DEFAULT
from collector.ledger.schema_check import pg_expected_triggers
from collector.ledger.tables import migrate_postgres
from tests.agent.queue_damage_kit import VARIANTS
from tests.collector.retention_kit import F6_CASES, F6Case
from tests.collector.test_attacks import (
    ACCESS_CASES,
    AccessCase,
    Ctx,
    start,
)
from tests.e2e.broker_attack_kit import API_CN, ATTACK, REFUSED, STOLEN
from tests.e2e.findings_kit import (
    ADMIN,
    API_CERT,
    DB_ROLE,
    DB_SUPERUSER,
    SD_CARD,
    STOLEN_CERT,
    Bench,
    Finding,
    Seen,
    access_attack,
    api_refuses_mqtt_certificates,
    broker_attack,
    honest_punch,
    key_change_written,
    old_entry_edited,
    operator_rotation,
    projection_edited,
    queue_damage,
    restarted_chain,
    retention_attack,
    sod_breach_appended,
    trigger_dropped,
)
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.pki import TestPKI
from tests.fixtures.postgres import (
    PgCluster,
    create_database,
    drop_database,
    migrate_ledger,
)

# The rows run on this module's broker and the session's PostgreSQL cluster (the coverage test
# at the end starts nothing).
MQTT_AND_PG = (pytest.mark.mqtt, pytest.mark.postgres)


# -- the table's columns: what each row must see -----------------------------------------------

def _queue_refused(reason: str) -> str:
    return (f"clock: sequence refusing ({reason}), the tap refused, no seq used; the ledger "
            f"holds seqs 1..5, no conflict, no fork")


def _queue_recorded(variant: str) -> str:
    after = "the collector's signed last seq" if variant == "state-lost" else "its mark"
    return (f"resumed after {after}, linked to its hash; the ledger's gap is the undelivered "
            f"part of the loss; no conflict, no fork: no seq used twice; seq-loss x1, alert "
            f"seq-loss severity [{SEVERITY_WARNING}]; verify --full: no TAMPER, the signed loss "
            f"a finding; the resumed punches recorded")


def _access_refused(case: AccessCase) -> str:
    if case.drift:
        return f"API {case.status}; serve refuses to start; drift named"
    return f"API {case.status}; starts; no drift"


def _access_recorded(case: AccessCase) -> str:
    return f"access entry {case.recorded}"


_ACCESS = {c.id: c for c in ACCESS_CASES}


def _f6_refused(case: F6Case) -> str:
    return (f"store: retention refused ({case.refused}); verify --full and timeclock-verify: "
            f"TAMPER at the entry, check (5)")


F8_REFUSED = "store: ProjectionError; payroll export refused; verify --full: TAMPER naming the row"
ENTRIES_TRIGGER = next(t for t in pg_expected_triggers() if t.table == "entries")
F9_MISSING = f"trigger {ENTRIES_TRIGGER.name} on entries is missing"


# -- the table -------------------------------------------------------------------------------

BROKER_RECORDED = ("the attacker received 0 messages; the collector's session never "
                   "replaced; honest punches receipted and recorded {n}/{n}")


def _suback(name: str, pub: bool = False) -> str:
    a = ATTACK[name]
    cn = API_CN if a.cert == "api-client" else STOLEN
    s = (f"broker: SUBACK {REFUSED} x{len(a.filters) * a.connections}, the client id forced to "
         f"the CN {cn}")
    return s + (f"; PUBACK {REFUSED}" if pub else "")


def _broker_row(number: int, title: str, name: str, attacker: str, pub: bool = False
                ) -> Finding:
    a = ATTACK[name]
    return Finding(number, title, name, attacker, _suback(name, pub),
                   BROKER_RECORDED.format(n=a.connections), broker_attack(name), "d3")


def _queue_row(number: int, title: str, variant: str, reason: str) -> Finding:
    return Finding(number, title, variant, SD_CARD, _queue_refused(reason),
                   _queue_recorded(variant), queue_damage(variant), "d4")


def _access_row(number: int, title: str, case_id: str, attacker: str) -> Finding:
    case = _ACCESS[case_id]
    return Finding(number, title, case_id.split("-", 1)[1], attacker,
                   _access_refused(case),
                   _access_recorded(case), access_attack(case_id), "d7_d8", live=False)


F3 = "a lost queue restarted the clock at seq 1 (fork, TAMPER for ever)"
F11 = "queue damage (zero-length db, WAL truncated/garbled) reused seqs silently"

FINDINGS: list[Finding] = [
    _broker_row(1, "one stolen clock cert starves ingest via $share/collectors", "share-once",
                STOLEN_CERT),
    _broker_row(1, "one stolen clock cert starves ingest via $share/collectors", "share-many",
                STOLEN_CERT),
    _broker_row(2, "a stolen clock cert takes the collector's client id", "collector-client-id",
                STOLEN_CERT, pub=True),
    Finding(3, F3, "collector-quarantines-a-restarted-chain", STOLEN_CERT + " / " + SD_CARD,
            "collector: quarantined conflict x6, fork x1 (of 7); alert fork, severity [1]; "
            "verify --full: no TAMPER",
            "ledger seqs 1..7; receipted 1..6, never the fork; the fork a finding of verify "
            "--full",
            restarted_chain, "d5"),
    _queue_row(3, F3, "queue-deleted", "queue-behind-mark"),
    _queue_row(3, F3, "state-lost", "state-lost"),
    Finding(4, "device rotate installs an operator key; forged punch recorded",
            "operator-key-rotation", ADMIN,
            "store: RegistryError for a request not signed by the old key and for none; forged "
            "punch quarantined unknown-key", "rejection entry; no key change recorded",
            operator_rotation, "d1_d17"),
    Finding(4, "device rotate installs an operator key; forged punch recorded",
            "key-change-written-with-a-forged-request", DB_SUPERUSER,
            "verify --full exit 1, timeclock-verify exit 1; both: TAMPER at the rotation entry, "
            "check (5)", "the forged rotation and punch stay in the chain, named at their entry",
            key_change_written(request=True), "d1_d17", live=False),
    Finding(4, "device rotate installs an operator key; forged punch recorded",
            "key-change-written-without-a-request", DB_SUPERUSER,
            "verify --full exit 0, timeclock-verify exit 0; both: a finding at the rotation "
            "entry, check (5)",
            "the forged rotation and punch stay in the chain, named at their entry",
            key_change_written(request=False), "d1_d17", live=False),
    _access_row(5, "an admin mints tokens for others and approves their own grant",
                "f5-token-for-another-principal", ADMIN),
    _access_row(5, "an admin mints tokens for others and approves their own grant",
                "f5-token-for-a-new-hr-principal", ADMIN),
    _access_row(5, "an admin mints tokens for others and approves their own grant",
                "f5-grant-approved-by-its-requester", ADMIN),
    Finding(5, "an admin mints tokens for others and approves their own grant",
            "breaches-appended-by-the-app-role", DB_ROLE,
            "verify --full: exit 1, ACCESS DRIFT (the entries made no rows), segregation of "
            "duties (D8 grant, D7 token) a finding at each entry; timeclock-verify: OK, both "
            "findings, not TAMPER",
            "the admin entries stay in the chain, under the actor who wrote them",
            sod_breach_appended, "d7_d8", live=False),
    *[Finding(6, "anything that can append writes a retention entry and deletes bodies",
              c.id.split("-", 1)[1], DB_ROLE + " / " + DB_SUPERUSER, _f6_refused(c),
              "nothing appended, no body deleted", retention_attack(c), "d15", live=False)
      for c in F6_CASES],
    _access_row(7, "tokens and roles inserted into the database authenticate",
                "f7-token-row-inserted-in-the-database", DB_SUPERUSER),
    _access_row(7, "tokens and roles inserted into the database authenticate",
                "f7-role-row-inserted-in-the-database", DB_SUPERUSER),
    Finding(8, "the punches projection edited; verify --full OK, payroll shows it",
            "action-edited", DB_SUPERUSER, F8_REFUSED,
            "the edited row never reaches payroll or the API",
            projection_edited("action", "punch row clock-a#1 (entry 2) does not match the ledger: "
                              "column(s) action differ from the signed punch"),
            "d5", live=False),
    Finding(8, "the punches projection edited; verify --full OK, payroll shows it",
            "row-moved", DB_SUPERUSER, F8_REFUSED,
            "the edited row never reaches payroll or the API",
            projection_edited("row moved to another entry",
                              "punch row clock-a#1 (entry 3) does not match the ledger"), "d5",
            live=False),
    Finding(9, "dropped append-only triggers unnoticed; incremental verify never re-reads",
            "trigger-dropped", DB_SUPERUSER,
            f"schema check: {F9_MISSING}; serve refuses to start; in alert mode it starts with "
            f"alert schema-drift severity [{SEVERITY_CRITICAL}]; verify: SCHEMA DRIFT, exit 1",
            "migrate restores it: no finding after", trigger_dropped, "d5", live=False),
    Finding(9, "dropped append-only triggers unnoticed; incremental verify never re-reads",
            "old-entry-edited", DB_SUPERUSER,
            "unsampled incremental verify: OK (what finding 9 saw); sampled incremental "
            "verify: TAMPER at the edited entry, check (4) body",
            f"verification status: resumed from 500, sampled {SAMPLE_DEFAULT}",
            old_entry_edited, "d5", live=False),
    _broker_row(10, "an API integration's certificate is a valid MQTT identity", "api-client",
                API_CERT, pub=True),
    Finding(10, "an API integration's certificate is a valid MQTT identity",
            "api-refuses-mqtt-certificates", STOLEN_CERT,
            "API {'device': 401, 'collector': 401, 'api-client': 200}",
            "nothing read by an MQTT identity", api_refuses_mqtt_certificates, "d3"),
    _queue_row(11, F11, "queue-zero-length", "queue-behind-mark"),
    _queue_row(11, F11, "wal-truncated", "queue-behind-mark"),
    _queue_row(11, F11, "wal-deleted", "queue-behind-mark"),
    _queue_row(11, F11, "wal-garbled", "queue-behind-mark"),
    _queue_row(11, F11, "mark-lost", "mark-lost"),
]


# -- fixtures: one broker and one live collector on PostgreSQL per module -----------------------

@pytest.fixture(scope="module")
def module_broker(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(pki, tmp_path_factory.mktemp("findings-broker"))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="module")
def live(module_broker: MosquittoBroker, pg_cluster: PgCluster,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    db = migrate_ledger(create_database(pg_cluster))
    migrate_postgres(db.owner_dsn, db.app_role)            # the access tables too
    # The rows leave gaps and clocks that fall silent, and the API row registers three
    # certificates (grant changes the access detector alerts on its next 5 s ledger read, which
    # on a slow machine falls in a later row): no detector may add an alert entry while a row
    # counts the entries it made (test_attacks.run_case), however slow the machine.
    quiet = ("[gaps]\nreport_after_s = 86400\n[detectors]\noffline_after_s = 86400\n"
             "silent_after_s = 86400\ngrant_changes = false\n")
    ctx = start(module_broker, tmp_path_factory.mktemp("findings-collector"), db.app_dsn,
                extra=quiet)
    try:
        yield ctx
    finally:
        ctx.svc.stop()
        ctx.store.close()
        drop_database(pg_cluster, db)


@pytest.fixture
def bench(*, module_broker: MosquittoBroker, live: Ctx, pki: TestPKI, pg_cluster: PgCluster,
          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bench]:
    b = Bench(module_broker, live, pki, pg_cluster, tmp_path, monkeypatch)
    try:
        yield b
    finally:
        b.drop_fresh()


def _rows(control: str) -> list[Any]:
    return [pytest.param(f, id=f.id, marks=MQTT_AND_PG) for f in FINDINGS
            if f.control == control]


def _replay(bench: Bench, row: Finding) -> None:
    honest_before = bench.live.honest.seq
    seen = row.scenario(bench)
    assert seen == Seen(row.refused, row.recorded), row.id
    if row.live:
        # Nothing lost from an honest clock: it still punches, every seq it ever sent is
        # recorded once, and the ledger holds no gap for it.
        seq = honest_punch(bench.live)
        assert seq > honest_before
        progress = bench.live.store.progress(bench.live.honest.device)
        assert (progress.contiguous, progress.gaps) == (seq, ())


@pytest.mark.parametrize("row", _rows("d3"))
def test_d3_insider_finding_refused_at_the_broker(bench: Bench, row: Finding) -> None:
    _replay(bench, row)


@pytest.mark.parametrize("row", _rows("d4"))
def test_d4_insider_finding_queue_damage_refused_then_a_recorded_loss(
        bench: Bench, row: Finding) -> None:
    _replay(bench, row)


@pytest.mark.parametrize("row", _rows("d5"))
def test_d5_insider_finding_detected_in_the_ledger(bench: Bench, row: Finding) -> None:
    _replay(bench, row)


@pytest.mark.parametrize("row", _rows("d1_d17"))
def test_d1_d17_insider_finding_key_change_refused(bench: Bench, row: Finding) -> None:
    _replay(bench, row)


@pytest.mark.parametrize("row", _rows("d7_d8"))
def test_d7_d8_insider_finding_access_refused_and_recorded(bench: Bench, row: Finding) -> None:
    _replay(bench, row)


@pytest.mark.parametrize("row", _rows("d15"))
def test_d15_insider_finding_retention_refused_and_detected(bench: Bench, row: Finding) -> None:
    _replay(bench, row)


CONTROLS = ("d3", "d4", "d5", "d1_d17", "d7_d8", "d15")


def test_findings_table_covers_findings_1_to_11_exactly() -> None:
    numbers = {f.number for f in FINDINGS}
    assert numbers == set(range(1, 12)), sorted(numbers)
    assert len({f.id for f in FINDINGS}) == len(FINDINGS)              # one id per row
    assert {f.control for f in FINDINGS} <= set(CONTROLS)              # every row runs
    queue_rows = {f.variant for f in FINDINGS if f.scenario.__qualname__.startswith(
        "queue_damage")}
    assert queue_rows == set(VARIANTS)                # every queue-damage variant is a row
    for f in FINDINGS:
        assert f.attacker, f.id
        assert f.refused, f.id
        assert f.recorded, f.id
