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
take a fresh database of the same cluster. The scenarios are the existing tests' own (imported
from their kits and modules), moved to PostgreSQL where they ran on SQLite only; the whole-site
replays with agent processes stay in tests/e2e/test_insider_broker.py and test_queue_damage.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.ledger.audit import SAMPLE_DEFAULT
from collector.ledger.tables import migrate_postgres
from tests.agent.queue_damage_kit import VARIANTS
from tests.collector.retention_kit import (
    F6_CASES,
)
from tests.collector.test_attacks import (
    ACCESS_CASES,
    AccessCase,
    Ctx,
    start,
)
from tests.e2e.broker_attack_kit import (
    ATTACK,
    REFUSED,
)
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
    old_entry_edited,
    operator_rotation,
    projection_edited,
    queue_damage,
    restarted_chain,
    retention_attack,
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

pytestmark = [pytest.mark.mqtt, pytest.mark.postgres]


# -- the table's columns: what each row must see -----------------------------------------------

def _queue_refused(reason: str) -> str:
    return (f"clock: sequence refusing ({reason}), tap refused, no seq used; ledger before "
            f"resume: True and no conflict/fork True")


QUEUE_RECORDED = ("resumed at seq True linked True; gap = the undelivered loss True; no "
                  "conflict/fork True; seq-loss x1; verify --full tamper [], loss findings 1; "
                  "last seq True")


def _access_refused(case: AccessCase, start_up: str = "starts") -> str:
    return f"API {case.status}; {start_up}; drift named {case.drift}"


def _access_recorded(case: AccessCase) -> str:
    return f"access entry {case.recorded}"


_ACCESS = {c.id: c for c in ACCESS_CASES}


F6_REFUSED = ("store: retention refused (True); verify --full and timeclock-verify: TAMPER at "
              "the entry, check (5) (True)")


F8_REFUSED = ("store: ProjectionError (True); payroll export refused; verify --full names the "
              "row True")


# -- the table -------------------------------------------------------------------------------

BROKER_RECORDED = ("attacker received 0; collector session kept; honest punches receipted "
                   "{n}/{n}")


def _suback(name: str, pub: bool = False) -> str:
    a = ATTACK[name]
    s = f"SUBACK ['{REFUSED}'] x{len(a.filters) * a.connections}"
    return s + (f", PUBACK ['{REFUSED}']" if pub else "")


def _broker_row(number: int, title: str, name: str, attacker: str, pub: bool = False
                ) -> Finding:
    a = ATTACK[name]
    return Finding(number, title, name, attacker, _suback(name, pub),
                   BROKER_RECORDED.format(n=a.connections), broker_attack(name), "d3")


def _queue_row(number: int, title: str, variant: str, reason: str) -> Finding:
    return Finding(number, title, variant, SD_CARD, _queue_refused(reason), QUEUE_RECORDED,
                   queue_damage(variant), "d4")


def _access_row(number: int, title: str, case_id: str, attacker: str) -> Finding:
    case = _ACCESS[case_id]
    return Finding(number, title, case_id.split("-", 1)[1], attacker,
                   _access_refused(case, "serve refuses to start" if case.drift else "starts"),
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
            "quarantined ['conflict', 'fork'] x7; alert fork severity [1]; verify --full "
            "tamper []",
            "seqs 1..7; receipted [1, 2, 3, 4, 5, 6]; fork findings 1 (tamper False)",
            restarted_chain, "d5"),
    _queue_row(3, F3, "queue-deleted", "queue-behind-mark"),
    _queue_row(3, F3, "state-lost", "state-lost"),
    Finding(4, "device rotate installs an operator key; forged punch recorded",
            "operator-key-rotation", ADMIN,
            "store: RegistryError for a request not signed by the old key and for none; forged "
            "punch quarantined unknown-key", "rejection entry; no key change recorded",
            operator_rotation, "d1_d17"),
    _access_row(5, "an admin mints tokens for others and approves their own grant",
                "f5-token-for-another-principal", ADMIN),
    _access_row(5, "an admin mints tokens for others and approves their own grant",
                "f5-token-for-a-new-hr-principal", ADMIN),
    _access_row(5, "an admin mints tokens for others and approves their own grant",
                "f5-grant-approved-by-its-requester", ADMIN),
    *[Finding(6, "anything that can append writes a retention entry and deletes bodies",
              c.id.split("-", 1)[1], DB_ROLE + " / " + DB_SUPERUSER, F6_REFUSED,
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
            "check_schema True; start-up refused (True); verify exit 1, SCHEMA DRIFT True",
            "migrate restores it: findings after []", trigger_dropped, "d5", live=False),
    Finding(9, "dropped append-only triggers unnoticed; incremental verify never re-reads",
            "old-entry-edited", DB_SUPERUSER,
            "unsampled incremental OK True; sampled: TAMPER at the victim True, check (4) body",
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
    ctx = start(module_broker, tmp_path_factory.mktemp("findings-collector"), db.app_dsn)
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
    return [pytest.param(f, id=f.id) for f in FINDINGS if f.control == control]


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
