"""Alert review and scheduled reviews (issue 14 item 3; CONTROLS.md D13) on both stores (real
SQLite file, real PostgreSQL as the app role), through collector.records.reviews, the CLI and
the API: acknowledge then resolve by a named reviewer, every refusal recording nothing, due
and overdue periods from an injected clock, one overdue alert per period, and an access
sample an auditor re-performs from its entry. The entries verify (`ledger verify --full`,
`timeclock-verify` on a bundle)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collector import ConfigError, ReviewError, SoDError
from collector.cli.main import main
from collector.ingest.alerts import Alerts
from collector.ledger import checkpoint_tables
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from collector.records import reviews
from collector.records.exports import export_bundle
from collector.service.config import load_config
from collector.service.runner import CollectorService
from tests.collector.api_kit import Api, issue_tokens, requests_of, start_api
from tests.collector.ledger_kit import T0, seeded_key
from wire import verify_cli
from wire.bodies_review import DAY_US, period_bounds
from wire.ledger import Checkpoint

# T0 is Wednesday 2025-11-26T07:00Z; the ledger starts then.
DAY0 = period_bounds("daily-alerts", "2025-11-26")[0]
HOUR = 3_600_000_000
SETTINGS = reviews.ReviewSettings(daily_grace_s=86_400, access_grace_s=3 * 86_400,
                                  sample_size=5)


def _alert(store: SQLStore, at: int, kind: str = "clock-offline", **extra: Any) -> int:
    body = {"alert": kind, "severity": 2, "device": "clock-1", "detail": "test", "at": at,
            **extra}
    return store.append([EventFact("alert", body)], now_us=at)[0].idx


def _access(store: SQLStore, at: int, n: int) -> list[int]:
    res = store.append([EventFact("access", {"type": "request", "principal": "hr",
                                             "route": "listPunches", "n": i})
                        for i in range(n)], now_us=at)
    return [r.idx for r in res]


def _size(store: SQLStore) -> int:
    return store.head()[0]


def test_d13_an_alert_is_acknowledged_then_resolved_by_named_reviewers(
        store: SQLStore) -> None:
    idx = _alert(store, T0)
    before = _size(store)
    with pytest.raises(ReviewError, match=f"alert {idx} is not acknowledged"):
        reviews.review_alert(store, "resolve", idx, by="alice", note="fixed", now_us=T0 + 1)
    assert _size(store) == before                        # a refusal records nothing
    [a] = reviews.alerts(store, status="open")
    assert (a.idx, a.status) == (idx, "open")

    ack_idx, st = reviews.review_alert(store, "ack", idx, by="alice",
                                       note="looking at clock-1", now_us=T0 + 2)
    assert (st.status, st.acked_idx, _size(store)) == ("acknowledged", ack_idx, before + 1)
    with pytest.raises(ReviewError, match=f"acknowledged by alice \\(idx {ack_idx}\\)"):
        reviews.review_alert(store, "ack", idx, by="bob", note="me too", now_us=T0 + 3)
    res_idx, st = reviews.review_alert(store, "resolve", idx, by="bob",
                                       note="power cut, ticket 17", now_us=T0 + 4)
    assert (st.status, st.resolved_idx) == ("resolved", res_idx)
    with pytest.raises(ReviewError, match=f"resolved by bob \\(idx {res_idx}\\)"):
        reviews.review_alert(store, "resolve", idx, by="carol", note="again", now_us=T0 + 5)
    assert _size(store) == before + 2
    assert reviews.alerts(store, status="open") == []
    [done] = reviews.alerts(store, status="resolved")
    d = done.to_dict()
    assert (d["acknowledged"], d["resolved"]) == (
        {"idx": ack_idx, "by": "alice", "note": "looking at clock-1"},
        {"idx": res_idx, "by": "bob", "note": "power cut, ticket 17"})
    bodies = [json.loads(se.body) for se in store.entries() if se.entry.kind == "review"
              and se.body is not None]
    assert bodies == [
        {"event": "ack", "alert_idx": idx, "by": "alice", "note": "looking at clock-1"},
        {"event": "resolve", "alert_idx": idx, "by": "bob", "note": "power cut, ticket 17"}]


@pytest.mark.parametrize(("target", "by", "note", "match"), [
    ("access", "alice", "n", "is a access entry, not an alert"),
    ("missing", "alice", "n", "is no entry, not an alert"),
    ("alert", "Alice Smith", "n", "by: "),
    ("alert", "alice", "   ", "note: must not be empty"),
    ("alert", "alice", "x" * 1001, "note: at most 1000"),
    ("alert", "alice", "bell\x07", "control characters"),
])
def test_d13_bad_alert_reviews_are_refused_and_record_nothing(
        store: SQLStore, target: str, by: str, note: str, match: str) -> None:
    alert = _alert(store, T0)
    [access] = _access(store, T0, 1)
    idx = {"alert": alert, "access": access, "missing": 10_000}[target]
    before = _size(store)
    with pytest.raises(ReviewError, match=match):
        reviews.review_alert(store, "ack", idx, by=by, note=note, now_us=T0 + 1)
    assert _size(store) == before


def test_d13_the_principal_an_alert_names_cannot_resolve_it(store: SQLStore) -> None:
    idx = _alert(store, T0, kind="grant-change", principal="mallory")
    reviews.review_alert(store, "ack", idx, by="mallory", note="that was me", now_us=T0 + 1)
    before = _size(store)
    with pytest.raises(SoDError, match="mallory's own action"):
        reviews.review_alert(store, "resolve", idx, by="mallory", note="fine", now_us=T0 + 2)
    assert _size(store) == before
    _, st = reviews.review_alert(store, "resolve", idx, by="alice", note="approved change",
                                 now_us=T0 + 3)
    assert st.status == "resolved"


def test_d13_due_and_overdue_come_from_the_injected_clock(store: SQLStore) -> None:
    _alert(store, T0)                           # the ledger's first entry: 2025-11-26 07:00
    # During the first day nothing is due: the day is not over.
    assert reviews.due(store, SETTINGS, now_us=T0 + HOUR) == []
    # The next morning: 11-26 is due, not yet overdue (grace: one day).
    [d] = reviews.due(store, SETTINGS, now_us=DAY0 + DAY_US + HOUR)
    assert (d.review, d.period, d.overdue) == ("daily-alerts", "2025-11-26", False)
    # Two days later: 11-26 overdue, 11-27 due.
    found = reviews.due(store, SETTINGS, now_us=DAY0 + 2 * DAY_US + HOUR)
    assert [(x.period, x.overdue) for x in found] == [("2025-11-26", True),
                                                      ("2025-11-27", False)]
    # The ISO week of 11-26 (2025-W48) ends Monday 12-01 00:00; overdue 3 days later.
    week = reviews.due(store, SETTINGS, now_us=period_bounds("access-sample", "2025-W49")[0]
                       + 3 * DAY_US + HOUR)
    assert [(x.period, x.overdue) for x in week if x.review == "access-sample"] == [
        ("2025-W48", True)]
    done = reviews.sign_off(store, "daily-alerts", by="alice", note="1 alert, open",
                            now_us=DAY0 + 2 * DAY_US + HOUR, settings=SETTINGS)
    assert done.body["period"] == "2025-11-26"           # the oldest due period first
    assert (done.body["alerts"], done.body["unresolved"]) == (1, [0])
    found = reviews.due(store, SETTINGS, now_us=DAY0 + 2 * DAY_US + HOUR)
    assert [(x.period, x.overdue) for x in found] == [("2025-11-27", False)]


def test_d13_sign_off_refusals_record_nothing(store: SQLStore) -> None:
    _alert(store, T0)
    now = DAY0 + 2 * DAY_US
    before = _size(store)
    with pytest.raises(ReviewError, match="2025-11-28 is not over yet"):
        reviews.sign_off(store, "daily-alerts", by="alice", note="n", now_us=now,
                         settings=SETTINGS, period="2025-11-28")
    with pytest.raises(ReviewError, match="is not a YYYY-MM-DD"):
        reviews.sign_off(store, "daily-alerts", by="alice", note="n", now_us=now,
                         settings=SETTINGS, period="2025-11-31")
    with pytest.raises(ReviewError, match="no access-sample period is due"):
        reviews.sign_off(store, "access-sample", by="alice", note="n", now_us=now,
                         settings=SETTINGS)
    assert _size(store) == before
    first = reviews.sign_off(store, "daily-alerts", by="alice", note="n", now_us=now,
                             settings=SETTINGS, period="2025-11-26")
    with pytest.raises(ReviewError, match=f"signed off at idx {first.idx}"):
        reviews.sign_off(store, "daily-alerts", by="bob", note="n", now_us=now,
                         settings=SETTINGS, period="2025-11-26")
    assert _size(store) == before + 1


def test_d13_the_access_sample_is_drawn_and_reperformed_from_its_entry(
        store: SQLStore) -> None:
    week = period_bounds("access-sample", "2025-W48")
    _access(store, week[0] - HOUR, 3)                    # the week before: not in it
    inside = _access(store, T0, 12) + _access(store, T0 + DAY_US, 8)
    _access(store, week[1], 2)                           # the next week: not in it
    now = week[1] + HOUR
    done = reviews.sign_off(store, "access-sample", by="alice", note="checked 5",
                            now_us=now, settings=SETTINGS, period="2025-W48")
    sampled = done.body["sampled"]
    assert (done.body["population"], len(sampled)) == (20, 5)
    assert sampled == sorted(set(sampled))
    assert set(sampled) <= set(inside)
    assert reviews.check_sample(store, done.idx).ok
    # An entry that names an idx outside the week (recorded behind the tool) is found.
    week_entry = inside[-1] + 1                          # the next week's first entry
    bad = dict(done.body, sampled=[sampled[0], week_entry])
    bad_idx = store.append([EventFact("review", bad)], now_us=now)[0].idx
    check = reviews.check_sample(store, bad_idx)
    assert check.problems == (f"sampled idx {week_entry} is not an access entry of 2025-W48",)


def test_d13_the_sample_uses_every_entry_when_the_week_has_fewer(store: SQLStore) -> None:
    inside = _access(store, T0, 3)
    done = reviews.sign_off(store, "access-sample", by="alice", note="all 3", now_us=T0 + 7
                            * DAY_US, settings=SETTINGS, period="2025-W48")
    assert (done.body["sampled"], done.body["population"]) == (inside, 3)


def test_d13_an_overdue_review_alerts_exactly_once_per_period(store: SQLStore) -> None:
    _alert(store, T0)
    settings = reviews.ReviewSettings(access_sample=False, check_every_s=60)
    now = [DAY0 + 2 * DAY_US + HOUR]                     # 11-26 overdue, 11-27 only due
    sink = Alerts(record=True, clock=lambda: now[0])
    watch = reviews.ReviewWatch(settings, sink.alert)

    def run(ticks: int) -> None:
        for _ in range(ticks):
            watch.tick(store, now[0])
            now[0] += 30_000_000                         # every other tick reads the ledger
            sink.flush(lambda facts: store.append(facts, now_us=now[0]))

    def overdue() -> list[str]:
        return [json.loads(se.body)["period"] for se in store.entries()
                if se.entry.kind == "alert" and se.body is not None
                and json.loads(se.body)["alert"] == reviews.OVERDUE_KIND]

    run(20)
    assert overdue() == ["2025-11-26"]
    # A restarted service finds the alert it raised before in the ledger.
    watch = reviews.ReviewWatch(settings, sink.alert)
    run(20)
    assert overdue() == ["2025-11-26"]
    now[0] = DAY0 + 3 * DAY_US + HOUR                    # 11-27 overdue now
    run(20)
    assert overdue() == ["2025-11-26", "2025-11-27"]
    [a] = [x for x in reviews.alerts(store) if x.body.get("period") == "2025-11-27"]
    assert (a.body["severity"], a.body["review"]) == (2, "daily-alerts")
    # A signed-off period never alerts; disabled, nothing is read or raised.
    reviews.sign_off(store, "daily-alerts", by="alice", note="n", now_us=now[0],
                     settings=settings, period="2025-11-28")
    assert reviews.ReviewWatch(reviews.ReviewSettings(enabled=False), sink.alert).tick(
        store, now[0] + 10 * DAY_US) == 0


def test_d13_cli_reviews_and_the_entries_verify(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = str(sqlite_path)
    idx = _alert(sqlite_store, T0)
    _access(sqlite_store, T0, 4)
    assert main(["alerts", "list", "--store", db, "--open"]) == 0
    assert capsys.readouterr().out.startswith(f"{idx}\tclock-offline\tsev=2\tclock-1\topen")
    assert main(["alerts", "resolve", str(idx), "--store", db, "--by", "alice",
                 "--note", "n"]) == 2
    assert f"alert {idx} is not acknowledged" in capsys.readouterr().err
    assert main(["alerts", "ack", str(idx), "--store", db, "--by", "alice",
                 "--note", "on it"]) == 0
    assert main(["alerts", "resolve", str(idx), "--store", db, "--by", "bob",
                 "--note", "done"]) == 0
    assert f"alert {idx} resolved by bob" in capsys.readouterr().out
    assert main(["alerts", "list", "--store", db, "--open"]) == 0
    assert capsys.readouterr().out == ""
    # The ledger is from 2025-11, so its first week is long over (wall time): overdue.
    assert main(["reviews", "due", "--store", db, "--json"]) == 0
    due = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"review": "access-sample", "period": "2025-W48", "status": "overdue",
            "from": period_bounds("access-sample", "2025-W48")[0],
            "until": period_bounds("access-sample", "2025-W49")[0],
            "overdue_at": period_bounds("access-sample", "2025-W49")[0]
            + 3 * DAY_US} in due
    assert main(["reviews", "sign-off", "access-sample", "--store", db, "--by", "alice",
                 "--note", "4 checked", "--period", "2025-W48"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 access entries sampled" in out
    so_idx = int(out.split("(idx ")[1].split(")")[0])
    assert main(["reviews", "show", str(so_idx), "--store", db]) == 0
    assert "re-performed" in capsys.readouterr().out
    assert main(["reviews", "sign-off", "daily-alerts", "--store", db, "--by", "alice",
                 "--note", "1 alert, resolved", "--period", "2025-11-26"]) == 0
    assert "2025-11-26 signed off by alice" in capsys.readouterr().out

    log_key = seeded_key("log-key")
    size, head = sqlite_store.head()
    sqlite_store.add_checkpoint(Checkpoint(log=log_key.key_id, size=size, head=head,
                                           at=T0 + DAY_US).sign(log_key))
    assert main(["verify", "--store", db, "--log-key-pub", log_key.verify_key.b64,
                 "--full", "--state", str(tmp_path / "vs")]) == 0
    assert capsys.readouterr().out.startswith(f"OK: idx 0..{size - 1} verified")
    export_bundle(sqlite_store, tmp_path / "bundle", [log_key.verify_key])
    assert verify_cli.main([str(tmp_path / "bundle"), "--collector-key",
                            log_key.verify_key.b64]) == 0
    assert "RESULT: OK" in capsys.readouterr().out


def test_d13_a_review_body_edited_in_the_store_fails_verify(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3  # noqa: PLC0415 - only this test pokes at the file

    idx = _alert(sqlite_store, T0)
    r_idx, _ = reviews.review_alert(sqlite_store, "ack", idx, by="alice", note="n",
                                    now_us=T0 + 1)
    log_key = seeded_key("log-key")
    size, head = sqlite_store.head()
    sqlite_store.add_checkpoint(Checkpoint(log=log_key.key_id, size=size, head=head,
                                           at=T0 + 2).sign(log_key))
    sqlite_store.close()
    con = sqlite3.connect(sqlite_path)
    with con:
        con.execute("DROP TRIGGER IF EXISTS bodies_no_update")
        con.execute("UPDATE bodies SET body = ? WHERE idx = ?",
                    (b'{"alert_idx":0,"by":"mallory","event":"ack","note":"n"}', r_idx))
    con.close()
    assert main(["verify", "--store", str(sqlite_path), "--log-key-pub",
                 log_key.verify_key.b64, "--full", "--state", str(tmp_path / "vs")]) == 1
    assert f"idx {r_idx}" in capsys.readouterr().out


@pytest.fixture
async def review_api(sqlite_store: SQLiteStore) -> AsyncIterator[Api]:
    ensure_schema(sqlite_store)
    # before start_api's admin exists (then only an admin creates principals)
    mine = issue_tokens(sqlite_store, T0 + 10**9, {"reviewer": ("audit.review",),
                                                   "reviewer2": ("audit.review",
                                                                 "audit.read")})
    a = await start_api(sqlite_store)
    a.tokens.update(mine)
    try:
        yield a
    finally:
        await a.client.close()


async def test_d13_api_reviewers_acknowledge_and_resolve_auditors_only_read(
        review_api: Api) -> None:
    api = review_api
    idx = _alert(api.store, api.clock.now)
    resp = await api.call("GET", "/v1/alerts?status=open", "auditor")
    assert resp.status == 200
    assert [(a["idx"], a["status"]) for a in (await resp.json())["items"]] == [(idx, "open")]
    for who in ("auditor", "hr-reader", "admin"):         # reading is not reviewing
        resp = await api.call("POST", f"/v1/alerts/{idx}/ack", who, json={"note": "n"})
        assert resp.status == 403
    resp = await api.call("POST", f"/v1/alerts/{idx}/resolve", "reviewer",
                          json={"note": "n"})
    assert resp.status == 409
    assert "is not acknowledged" in (await resp.json())["detail"]
    for body, status in (({}, 400), ({"note": ""}, 400), ({"note": "n", "by": "x"}, 400),
                         ({"note": 7}, 400)):
        resp = await api.call("POST", f"/v1/alerts/{idx}/ack", "reviewer", json=body)
        assert resp.status == status, body
    resp = await api.call("POST", "/v1/alerts/99999/ack", "reviewer", json={"note": "n"})
    assert resp.status == 409
    before = api.store.head()[0]
    resp = await api.call("POST", f"/v1/alerts/{idx}/ack", "reviewer",
                          json={"note": "on it"})
    assert resp.status == 200
    got = await resp.json()
    assert (got["status"], got["acknowledged"]["by"]) == ("acknowledged", "reviewer")
    resp = await api.call("POST", f"/v1/alerts/{idx}/resolve", "reviewer2",
                          json={"note": "done"})
    assert (resp.status, (await resp.json())["resolved"]["by"]) == (200, "reviewer2")
    assert [json.loads(se.body)["by"] for se in api.store.entries(before)
            if se.entry.kind == "review" and se.body is not None] == ["reviewer", "reviewer2"]
    resp = await api.call("GET", "/v1/alerts?status=open", "reviewer2")
    assert (await resp.json())["items"] == []
    resp = await api.call("GET", "/v1/alerts?status=closed", "reviewer2")
    assert resp.status == 400
    await api.flush()
    ack = [b for b in requests_of(api.store) if b.get("extra", {}).get("alert_idx") == idx
           and b.get("status") == 200]
    assert len(ack) == 2


CONFIG = """
[collector]
name = "a"
store = "sqlite:///var/lib/timeclock/ledger.db"
log_key = "keys/log.key"

[mqtt]
host = "127.0.0.1"
port = 8883
ca_cert = "tls/ca.pem"
cert = "tls/collector.pem"
key = "tls/collector.key"
"""


def test_d13_reviews_config_and_the_service_tick_raise_the_overdue_alert(
        sqlite_store: SQLStore, tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(CONFIG)
    assert load_config(path).reviews is None               # no [reviews]: no overdue alerts
    path.write_text(CONFIG + "\n[reviews]\ndaily_grace_s = 3600\naccess_sample = false\n"
                    "sample_size = 0\nbogus = 1\n")
    with pytest.raises(ConfigError, match="reviews.sample_size") as e:
        load_config(path)
    assert "reviews.bogus" in str(e.value)
    path.write_text(CONFIG + "\n[reviews]\ndaily_grace_s = 3600\naccess_sample = false\n")
    cfg = load_config(path)
    assert cfg.reviews == reviews.ReviewSettings(daily_grace_s=3600, access_sample=False)
    ensure_schema(sqlite_store)                              # the side tables serve makes
    checkpoint_tables.ensure_schema(sqlite_store)
    _alert(sqlite_store, T0)
    now = [DAY0 + DAY_US + 2 * HOUR]                         # 11-26 overdue by an hour
    svc = CollectorService(cfg, store=sqlite_store, clock=lambda: now[0])
    for _ in range(5):
        svc._tick(now[0], 0)                                 # the writer's tick
        now[0] += 61_000_000
    overdue = [a.body for a in reviews.alerts(sqlite_store)
               if a.body.get("alert") == reviews.OVERDUE_KIND]
    assert [(b["review"], b["period"], b["severity"]) for b in overdue] == [
        ("daily-alerts", "2025-11-26", 2)]
