"""D20 output control (issue 12 item 6): exports carry the employee id, not the badge, and only
the fields of their purpose (collector.records.export_fields), over a real SQLite ledger with a
people directory, through the real CLI (collector.cli.main) and API (tests/collector/api_kit).

The byte search: every default export (CLI CSV and NDJSON, the API payroll export, GET
/v1/punches in each representation) holds no credential and no employee name; the
investigation set, for a role that may see badges, does show the credential."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collector import ForbiddenError
from collector.api.keys import ApiSettings
from collector.cli.main import main
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from collector.people.csv_import import import_files
from collector.records.export_fields import (
    AUDIT,
    PAYROLL,
    PSEUDONYM_KEY_HEADER,
    FieldsError,
    FieldSet,
    Pseudonyms,
)
from collector.service.config import load_config
from tests.collector.api_kit import Api, access_bodies, issue_tokens, seed, start_api
from tests.collector.init_kit import service_user
from tests.collector.ledger_kit import T0
from wire.keys import write_key_file

HELD = "em4100:8675309123"          # E1's badge
STRANGER = "em4100:5550001234"      # no employee: unknown
CREDENTIALS = (HELD, STRANGER)
NAMES = ("Ada Lovelace", "Grace Hopper")
EMPLOYEES = """employee_id,name,department,site,timezone,manager_id
E1,Ada Lovelace,Operations,hq,Europe/London,
E2,Grace Hopper,Engineering,hq,Europe/London,E1
"""
BADGES = f"""credential,employee_id,valid_from,valid_until,status
{HELD},E1,2025-01-01T00:00:00Z,,assigned
"""
SECRETS = [c.encode() for c in CREDENTIALS] + [c.split(":")[1].encode() for c in CREDENTIALS] \
    + [b"em4100"] + [n.encode() for n in NAMES] + [n.split()[1].encode() for n in NAMES]


def _leaks(data: bytes) -> list[bytes]:
    return [s for s in SECRETS if s in data]


def _fill(store: SQLiteStore, tmp: Path) -> None:
    clocks = seed(store, devices=2, punches=3)      # em4100:000000000n badges, all unknown
    store.append([clocks[0].fact(credential=c, action="in") for c in CREDENTIALS],
                 now_us=T0 + 1500)
    (tmp / "e.csv").write_text(EMPLOYEES, encoding="utf-8")
    (tmp / "b.csv").write_text(BADGES, encoding="utf-8")
    import_files(store, tmp / "e.csv", tmp / "b.csv", now_us=T0 + 2000)


@pytest.fixture
async def field_api(sqlite_store: SQLiteStore, tmp_path: Path) -> AsyncIterator[Api]:
    _fill(sqlite_store, tmp_path)
    ensure_schema(sqlite_store)
    mine = issue_tokens(sqlite_store, T0 + 10**9, {
        "investigator": ("hr.read", "hr.people"), "payroll-badges": ("payroll.export",
                                                                     "hr.people")})
    a = await start_api(sqlite_store)
    a.tokens.update(mine)
    try:
        yield a
    finally:
        await a.client.close()


def test_d20_field_sets_are_named_and_refuse_what_they_do_not_hold() -> None:
    assert FieldSet.choose().set_name == "payroll"
    assert "credential" not in PAYROLL
    assert "credential" not in AUDIT
    assert set(FieldSet.choose("audit").fields) == set(PAYROLL) | {"key", "reader"}
    assert FieldSet.choose("payroll", ["seq", "employee_id"]).fields == ("seq", "employee_id")
    with pytest.raises(FieldsError, match=r"field 'credential' is not in the payroll set; it "
                       r"is in the investigation set .*needs role hr.people"):
        FieldSet.choose("payroll", ["credential"])
    with pytest.raises(FieldsError, match=r"field 'name' does not exist"):
        FieldSet.choose("investigation", ["name"])
    with pytest.raises(FieldsError, match=r"field set 'everything'"):
        FieldSet.choose("everything")
    with pytest.raises(ForbiddenError, match=r"field 'credential' \(investigation set\) needs "
                       r"role hr.people; the caller holds hr.read"):
        FieldSet.choose("investigation", roles=["hr.read"])
    assert FieldSet.choose("investigation", roles=["hr.people"]).credential


@pytest.mark.parametrize("fmt", ["csv", "ndjson"])
def test_d20_default_cli_export_holds_no_credential_and_no_name(
        sqlite_store: SQLiteStore, sqlite_path: Path, tmp_path: Path, fmt: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    _fill(sqlite_store, tmp_path)
    out = tmp_path / f"payroll.{fmt}"
    base = ["export", "--store", f"sqlite://{sqlite_path}", "--payroll", "--format", fmt]
    assert main([*base, "--out", str(out), "--purpose", "Nov payroll"]) == 0
    data = out.read_bytes()
    assert b"E1" in data                           # the employee id is there instead
    assert _leaks(data) == []
    # the investigation set shows the badge: the search above can fail
    inv = tmp_path / f"investigation.{fmt}"
    assert main([*base, "--out", str(inv), "--field-set", "investigation"]) == 0
    assert _leaks(inv.read_bytes()) == [HELD.encode(), STRANGER.encode(),
                                        HELD.split(":")[1].encode(),
                                        STRANGER.split(":")[1].encode(), b"em4100"]
    # narrowed: only those columns; a field outside the set is refused, nothing written
    narrow = tmp_path / f"narrow.{fmt}"
    assert main([*base, "--out", str(narrow), "--fields", "employee_id,action"]) == 0
    header = json.loads(narrow.read_text().splitlines()[0].removeprefix("# "))["header"]
    assert header["columns"] == ["action", "employee_id"]
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert main([*base, "--out", str(refused), "--fields", "seq,credential"]) == 2
    assert "field 'credential' is not in the payroll set" in capsys.readouterr().err
    assert not refused.exists()
    exports = [b for b in access_bodies(sqlite_store) if b.get("type") == "export"]
    assert [(e["field_set"], e["fields"]) for e in exports] == [
        ("payroll", list(FieldSet.choose().fields)),
        ("investigation", list(FieldSet.choose("investigation").fields)),
        ("payroll", ["action", "employee_id"])]


async def _get(api: Api, path: str, principal: str) -> bytes:
    resp = await api.call("GET", path, principal)
    assert resp.status == 200, await resp.text()
    return bytes(await resp.read())


@pytest.mark.parametrize("path", [
    "/v1/exports/payroll", "/v1/exports/payroll?format=csv", "/v1/punches",
    "/v1/punches?format=ndjson", "/v1/punches?format=csv"])
async def test_d20_default_api_exports_hold_no_credential_and_no_name(
        field_api: Api, path: str) -> None:
    principal = "payroll" if "exports" in path else "hr-reader"
    data = await _get(field_api, path, principal)
    assert b"E1" in data
    assert _leaks(data) == []
    # the investigation set for a principal that holds hr.people: the credential is shown
    sep = "&" if "?" in path else "?"
    badges = "payroll-badges" if "exports" in path else "investigator"
    shown = await _get(field_api, f"{path}{sep}field_set=investigation", badges)
    assert HELD.encode() in shown
    assert STRANGER.encode() in shown
    assert not any(n.encode() in shown for n in NAMES)   # names are in no field set
    await field_api.flush()
    recorded = [b for b in access_bodies(field_api.store) if b.get("type") == "request"
                and b.get("route", "").startswith(path.split("?", maxsplit=1)[0])]
    assert [r["extra"]["fields"] for r in recorded] == [
        list(FieldSet.choose().fields), list(FieldSet.choose("investigation").fields)]


async def test_d20_a_field_the_role_may_not_see_is_403_naming_field_and_role(
        field_api: Api) -> None:
    for path, principal in (("/v1/punches?field_set=investigation", "hr-reader"),
                            ("/v1/exports/payroll?field_set=investigation&fields=credential",
                             "payroll")):
        resp = await field_api.call("GET", path, principal)
        assert resp.status == 403
        doc: dict[str, Any] = await resp.json()
        assert "field 'credential' (investigation set) needs role hr.people" in doc["detail"]
    resp = await field_api.call("GET", "/v1/punches?fields=credential", "hr-reader")
    assert resp.status == 400
    assert "not in the payroll set" in (await resp.json())["detail"]
    page = await (await field_api.call("GET", "/v1/punches?field_set=audit&fields=seq,reader",
                                       "hr-reader")).json()
    assert {tuple(sorted(i)) for i in page["items"]} == {("reader", "seq")}


# -- badge pseudonyms (unknown badges grouped without the badge) --------------------------------

PSEUDO_KEY = bytes(range(32))


def test_d20_init_makes_the_pseudonym_key_and_names_it_in_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["init", "--etc", str(tmp_path / "etc"), "--state", str(tmp_path / "state"),
            "--origin", "acme.example/timeclock", "--dns", "localhost", "--mqtt-port", "18883",
            "--api-port", "18443", "--user", service_user()]
    assert main(argv) == 0
    key = tmp_path / "etc" / "pseudonym.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    cfg = load_config(tmp_path / "etc" / "collector.toml")
    assert cfg.api is not None
    assert cfg.api.pseudonym_key == key
    settings = cfg.api.settings({})
    assert settings.pseudonyms is not None
    before = key.read_bytes()
    capsys.readouterr()
    assert main(argv) == 0                                 # a second run keeps the key
    assert key.read_bytes() == before
    os.chmod(key, 0o644)
    assert main([*argv, "--check"]) == 1
    assert re.search(r"^\s+wrong\s+pseudonym key\s.*chmod 600", capsys.readouterr().out, re.M)


def _rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in text.splitlines()[1:-1]]


def test_d20_unknown_badges_get_a_keyed_pseudonym_not_the_badge(
        sqlite_store: SQLiteStore, sqlite_path: Path, tmp_path: Path) -> None:
    _fill(sqlite_store, tmp_path)
    key_file = tmp_path / "pseudonym.key"
    write_key_file(key_file, PSEUDONYM_KEY_HEADER, PSEUDO_KEY)
    out = tmp_path / "p.ndjson"
    assert main(["export", "--store", f"sqlite://{sqlite_path}", "--payroll", "--format",
                 "ndjson", "--out", str(out), "--pseudonym-key", str(key_file)]) == 0
    data = out.read_bytes()
    assert _leaks(data) == []
    rows = _rows(out.read_text())
    assert json.loads(data.splitlines()[0])["header"]["pseudonyms"].startswith(
        "badge_pseudonym: for a row with no employee")
    by_seq = {(r["device"], r["seq"]): r for r in rows}
    held, stranger = by_seq[("clock-00", 4)], by_seq[("clock-00", 5)]
    assert (held["employee_id"], held["badge_pseudonym"]) == ("E1", None)
    expected = "bp1:" + hmac.new(PSEUDO_KEY, b"timeclock badge pseudonym v1\n"
                                 + STRANGER.encode(), hashlib.sha256).hexdigest()[:16]
    assert (stranger["employee_id"], stranger["badge_pseudonym"]) == (None, expected)
    # one badge, one pseudonym: clock-00 and clock-01 seq 1 both read em4100:0000000000
    assert by_seq[("clock-00", 1)]["badge_pseudonym"] == by_seq[("clock-01", 1)][
        "badge_pseudonym"] != by_seq[("clock-00", 2)]["badge_pseudonym"]
    # without the key: null, and the header says why
    plain = tmp_path / "plain.ndjson"
    assert main(["export", "--store", f"sqlite://{sqlite_path}", "--payroll", "--format",
                 "ndjson", "--out", str(plain)]) == 0
    assert {r["badge_pseudonym"] for r in _rows(plain.read_text())} == {None}


async def test_d20_the_api_serves_the_same_pseudonyms(sqlite_store: SQLiteStore,
                                                    tmp_path: Path) -> None:
    _fill(sqlite_store, tmp_path)
    api = await start_api(sqlite_store, settings=ApiSettings(pseudonyms=Pseudonyms(PSEUDO_KEY)))
    try:
        page = await (await api.call("GET", "/v1/punches?device=clock-00", "hr-reader")).json()
        export = await _get(api, "/v1/exports/payroll?format=ndjson&device=clock-00", "payroll")
    finally:
        await api.client.close()
    assert _leaks(export) == []
    want = {i["seq"]: i["badge_pseudonym"] for i in page["items"]}
    assert {r["seq"]: r["badge_pseudonym"] for r in _rows(export.decode())} == want
    assert want[4] is None
    assert want[5] == Pseudonyms(PSEUDO_KEY).of(STRANGER)
