"""``verify --full`` re-derives the projections from the chain (issue 11 item 6, finding 8).

The tables the collector serves from — ``punches`` (payroll, the API), ``devices`` and ``keys``
(which clock may sign what, from which seq) — are projections of the ledger's entries. A
database writer who edits them without touching the chain leaves the chain, the tree and every
checkpoint intact, so only a comparison with what the entries say finds the edit. This module
derives each projection from the entries alone and names the first differing row:

- ``devices`` and ``keys``: replayed from the ``device`` entries (bodies are never deleted for
  that kind), with the rules the append applies (sqlbase ``_Append._apply_device``);
- ``punches``: every row with a body is checked against its own entry and body and its
  device's enrolment entry (collector.ledger.row_check, the check every export and API row
  passes too); every ``punch`` entry has exactly one row; a row whose fields were blanked
  (what retention's purge does once the body is gone) has no body — a blanked row with a
  body would be a punch hidden from payroll; and a row that keeps personal fields after its
  body was removed is reported (not tampering: a purge still to run).

Findings use the auditor's ``fact`` step (wire.audit: the facts of the entries), as tampering.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from collector.ledger.row_check import ProjectionError
from collector.ledger.sqlbase import PunchQuery, SQLStore
from wire.audit import Check, Finding

_DEVICE_ENTRIES = ("SELECT e.idx, b.body FROM entries e LEFT JOIN bodies b ON b.idx = e.idx "
                   "WHERE e.kind = 'device' ORDER BY e.idx")
_DEVICES = "SELECT device, site, status, enrolled_idx, changed_idx FROM devices"
_KEYS = "SELECT key_id, device, public_b64, from_seq, until_seq, status, registered_idx FROM keys"
# A punch entry without a projection row (hidden from payroll), and a row two entries share.
_MISSING_ROW = ("SELECT idx FROM entries WHERE kind = 'punch' EXCEPT SELECT idx FROM punches "
                "ORDER BY 1 LIMIT 1")
_SHARED_ROW = "SELECT idx FROM punches GROUP BY idx HAVING COUNT(*) > 1 ORDER BY 1 LIMIT 1"
# Rows that keep personal fields although retention removed their bodies (not purged yet).
_UNPURGED = ("SELECT COUNT(*), MIN(p.idx) FROM punches p WHERE p.credential <> '' AND NOT EXISTS "
             "(SELECT 1 FROM bodies b WHERE b.idx = p.idx)")
_BLANKED_WITH_BODY = ("SELECT p.device, p.seq, p.idx FROM punches p JOIN bodies b "
                      "ON b.idx = p.idx WHERE p.credential = '' ORDER BY p.idx LIMIT 1")

Row = tuple[Any, ...]


def _finding(idx: int | None, message: str) -> Finding:
    return Finding(idx, Check.FACT.value, message, True)


def derive_registry(device_bodies: Iterator[tuple[int, bytes | None]]
                    ) -> tuple[dict[str, Row], dict[str, Row]]:
    """(devices, keys) as the ``device`` entries make them: {device: (device, site, status,
    enrolled_idx, changed_idx)}, {key_id: (key_id, device, public_b64, from_seq, until_seq,
    status, registered_idx)}. Bodies are parsed loosely: the auditor's own steps report a bad
    one; a body that cannot be read here is skipped."""
    devices: dict[str, list[Any]] = {}
    keys: dict[str, list[Any]] = {}
    for idx, raw in device_bodies:
        try:
            b: dict[str, Any] = json.loads(raw) if raw is not None else {}
            event, device = b["event"], b["device"]
        except (ValueError, KeyError, TypeError):
            continue
        if event == "enrolled":
            devices[device] = [device, b["site"], "active", idx, idx]
            keys[b["key"]] = [b["key"], device, b["signing_key"], b.get("from_seq", 1), None,
                              "active", idx]
        elif event in ("rotated", "reenrolled"):
            for k in keys.values():
                if k[1] == device and k[4] is None:
                    k[4] = b["from_seq"]
            keys[b["key"]] = [b["key"], device, b["signing_key"], b["from_seq"], None,
                              "active", idx]
            if device in devices:
                devices[device][4] = idx
        elif event == "revoked":
            for k in keys.values():
                if k[1] == device and ("key" not in b or k[0] == b["key"]):
                    k[5] = "revoked"
            if device in devices:
                devices[device][4] = idx
                if "key" not in b:
                    devices[device][2] = "revoked"
        # reenrol-requested changes nothing until approved (collector.ledger.registry)
    return ({d: tuple(v) for d, v in devices.items()}, {k: tuple(v) for k, v in keys.items()})


def _compare(table: str, derived: dict[str, Row], stored: list[Row], at_col: int
             ) -> list[Finding]:
    """The first row (in ledger order: ``at_col`` holds the entry that made it) where the
    table and the derivation differ."""
    have = {str(r[0]): tuple(r) for r in stored}

    def made_at(name: str) -> int:
        v = (derived.get(name) or have[name])[at_col]
        return v if isinstance(v, int) else -1

    for name in sorted(derived.keys() | have.keys(), key=lambda n: (made_at(n), n)):
        want, got = derived.get(name), have.get(name)
        if want == got:
            continue
        if got is None:
            what = "is missing from the table"
        elif want is None:
            what = "is in the table but no device entry makes it"
        else:
            what = f"differs from the entries: table {got!r}, entries {want!r}"
        at = made_at(name)
        return [_finding(at if at >= 0 else None,
                         f"{table} projection: row {name!r} {what}. The table was changed "
                         f"outside the ledger: restore it from a verified backup and "
                         f"investigate")]
    return []


def _first(store: SQLStore, sql: str) -> Row | None:
    rows = store.query(sql)
    return tuple(rows[0]) if rows else None


def punch_findings(store: SQLStore) -> list[Finding]:
    """The punches projection against the entries (see the module docstring)."""
    try:
        for _ in store.punch_rows(PunchQuery()):
            pass
    except ProjectionError as e:
        return [_finding(None, f"punches projection: {e}")]
    out: list[Finding] = []
    row = _first(store, _MISSING_ROW)
    if row is not None:
        out.append(_finding(int(row[0]), f"punches projection: punch entry {row[0]} has no "
                                         f"row: the punch is hidden from payroll and the API"))
    row = _first(store, _SHARED_ROW)
    if row is not None:
        out.append(_finding(int(row[0]), f"punches projection: entry {row[0]} has more than "
                                         f"one row"))
    row = _first(store, _UNPURGED)
    if row is not None and int(row[0]):
        out.append(Finding(int(row[1]), Check.FACT.value,
                           f"punches projection: {row[0]} row(s) keep the personal fields of "
                           f"punches whose bodies retention removed (from entry {row[1]}): "
                           f"exports and the API skip them; run `timeclock-collector "
                           f"retention run` to purge them", False))
    row = _first(store, _BLANKED_WITH_BODY)
    if row is not None:
        out.append(_finding(int(row[2]), f"punches projection: the row of {row[0]}#{row[1]} "
                                         f"is blanked as if removed under retention, but its "
                                         f"body is still in the ledger: the punch is hidden "
                                         f"from payroll and the API"))
    return out


def projection_findings(store: SQLStore) -> list[Finding]:
    """Every projection re-derived from the chain: the first differing row of each."""
    devices, keys = derive_registry(
        (int(i), None if b is None else bytes(b)) for i, b in store.query(_DEVICE_ENTRIES))
    return [*_compare("devices", devices, store.query(_DEVICES), 3),
            *_compare("keys", keys, store.query(_KEYS), 6),
            *punch_findings(store)]
