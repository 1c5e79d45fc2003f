"""Erasure for one person by key destruction (DESIGN.md §8.6; issue 12 item 4; control D15;
docs/operations.md "Encryption at rest and erasure").

:func:`erase` runs as ONE store transaction, under the chain lock:

1. the refusals: the same principal asking and approving (dual control), no keyring, an
   active legal hold that keeps the person or any of their punches (collector.records.
   retention's holds: employee, credential, device, site, time range), nothing to erase;
2. the evidence: one ``shred`` entry (wire.bodies_shred) naming the destroyed key ids and
   the idx ranges of every entry whose body they sealed;
3. those bodies deleted (the ``retained`` rows of the shred entry let the triggers allow it,
   as for a retention run), the ``punches`` rows' personal columns blanked (the retention
   purge, which the triggers allow for a removed body);
4. what the projections and indexes still held of the person: their quarantined messages
   (every quarantined message the keyring opens — those that decoded and those that never
   did, which name no badge — and, for a sealed envelope (wire.sealed), what it holds when
   one of the seal keys given opens it; see :func:`_needles` for what marks one as theirs:
   a credential or its value in any case, with a ``0x`` prefix or separators, JSON-escaped
   or not, the name in any case or Unicode normalisation; the rejection's detail is searched
   too); its ``rejection`` entry is in the shred's ranges, its body deleted, its raw bytes and
   detail blanked by the quarantine purge, as a retention run purges them, and the result
   counts them. A message the erasure cannot judge (a sealed envelope to a seal key it was
   not given, or whose box does not open; raw bytes whose data key is gone) is KEPT — its
   owner is unknown, and purging it under this person's shred entry would destroy and
   misattribute another person's evidence — and named in the result (``unjudged``), never
   skipped silently. Their badge periods' credential (the
   deterministic ciphertext of ``tc_badges``, which the index key would still open) set to
   ``(erased) <period idx>`` (the trigger allows exactly that under a shred entry), and the
   correction index rows (``tc_corrections``, any status) of their erased punches and
   corrections deleted;
5. the data keys blanked in ``tc_data_keys`` (``destroyed_idx`` = the shred entry) and
   dropped from the cache.

A plan (``plan=True``; ``timeclock-collector erase --plan``) is this same function: every
step above runs, in the same transaction, and the transaction is then rolled back instead of
committed (:class:`_Planned` raised inside it: SQLite's ``_write`` and psycopg's
``transaction()`` roll back on any exception). So the plan cannot drift from the run: its
refusals (dual control, keyring, holds, nothing to erase, a ledger needing ``migrate``) are
the run's, raised by the same lines, its figures are what the run's statements touched, and
the schema's triggers judge the plan's writes as they judge the run's. Collecting first and
writing after was the other way; it would need a second copy of what the purges select (the
retention purge counts its rows only once the bodies are gone) and would leave the triggers'
verdict out of the plan. Nothing of the rolled-back work stays in memory: the store keeps no
head or tree size (each transaction reads them, ``_Append``), no sequence is drawn (the
erasure inserts only into ``entries``, ``bodies``, ``tc_merkle`` and ``retained``, none with
an identity column), the keyring's cache only gains keys the ledger already holds (unwrapped
to open quarantined bytes and the name) and loses the person's (``destroy`` forgets them: the
next read unwraps them again from their rows, which the rollback left live), and the blind
index and deterministic-ciphertext memos are functions of the index key alone. A plan holds
the chain lock as long as a run does (appends wait meanwhile).

Invariants: all of it commits or nothing does; afterwards payroll, the API, proofs and the
bundle hold nothing of the person's erased entries, and ``verify --full`` and
``timeclock-verify`` pass (the chain commits to hashes, which stay); the erasure itself is
in the ledger, naming the employee id, never a name. What an operator must still run so the
freed pages leave the files (SQLite ``VACUUM``, PostgreSQL ``VACUUM FULL``; WAL and backups
age out): docs/operations.md.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from collector import ErasureError, KeyringError
from collector.ledger import body_crypto, corrections_table, people_tables, retention_tables
from collector.ledger.schema_check import require_current_triggers
from collector.ledger.sqlbase import SQLStore, Tx
from wire.bodies_shred import ranges
from wire.sealed import SealError, SealKey, looks_sealed

_IN_CHUNK = 500
# The shortest credential value searched alone in quarantined bytes: a shorter one could be
# any number of another message (a year, a seq), and would purge that message too.
_MIN_VALUE = 8
ERASED = body_crypto.ERASED


@dataclass(frozen=True)
class ErasureResult:
    """What an erasure did — or, for a plan (``entry_idx`` None), would do."""

    entry_idx: int | None       # the shred entry; None: a plan, nothing recorded
    keys: tuple[str, ...]
    entries: tuple[tuple[int, int], ...]
    purged_punches: int
    purged_quarantine: int = 0
    erased_badges: int = 0
    deleted_corrections: int = 0
    # Quarantined messages it could not judge and kept: (rejection entry idx, why).
    unjudged: tuple[tuple[int, str], ...] = ()
    # The rejection entry idx of each quarantined message purged (never its bytes).
    quarantine_entries: tuple[int, ...] = ()

    @property
    def plan(self) -> bool:
        return self.entry_idx is None

    @property
    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.entries)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {} if self.entry_idx is None else {"entry": self.entry_idx}
        return {**out, "plan": self.plan, "keys": list(self.keys),
                "entries": [list(r) for r in self.entries], "count": self.count,
                "purged": {"punches": self.purged_punches,
                           "quarantine": self.purged_quarantine,
                           "badge_periods": self.erased_badges,
                           "corrections": self.deleted_corrections},
                "purged_quarantine": list(self.quarantine_entries),
                "unjudged_quarantine": [{"entry": i, "kept": why}
                                        for i, why in self.unjudged]}


class _Planned(Exception):  # noqa: N818 - not an error: the plan's way out of its transaction
    """Raised inside the erasure's transaction to roll it back (a plan); carries the result."""

    def __init__(self, result: ErasureResult) -> None:
        super().__init__("erasure plan: rolled back")
        self.result = result


def _chunks(values: Sequence[Any]) -> list[Sequence[Any]]:
    return [values[i:i + _IN_CHUNK] for i in range(0, len(values), _IN_CHUNK)]


def _sealed_by(tx: Tx, key_ids: Sequence[str]) -> list[int]:
    """The idx of every stored body sealed under one of ``key_ids`` (a scan of the header)."""
    out: list[int] = []
    for chunk in _chunks(key_ids):
        marks = ", ".join("?" * len(chunk))
        out += [int(r[0]) for r in tx.rows(
            f"SELECT idx FROM bodies WHERE substr(body, 1, 4) = ? AND substr(body, 5, 35) "  # noqa: S608 - placeholders only
            f"IN ({marks}) ORDER BY idx", (body_crypto.MAGIC, *(k.encode() for k in chunk)))]
    return sorted(out)


Quarantined = tuple[int, Any, int, str]     # (rejection entry idx, device, received_at, badge)
Unjudged = tuple[int, str]      # (rejection entry idx, why the erasure could not judge it)


def _badge_periods(tx: Tx, employee: str) -> list[tuple[str, int, int]]:
    """(stored credential, valid_from, idx) of ``employee``'s periods not yet erased."""
    return [(str(c), int(vf), int(i)) for c, vf, i in tx.rows(
        "SELECT credential, valid_from, idx FROM tc_badges WHERE employee_id = ? "
        "AND substr(credential, 1, ?) <> ?",
        (employee, len(people_tables.ERASED_BADGE), people_tables.ERASED_BADGE))]


# Between two characters of a credential a reader, a log or a person may write one separator
# (``00:12:34:56:78``, ``0012-3456-78``, ``0012 345678``).
_SEP = r"[\s:.\-_/]?"
_ALNUM = r"[^\W_]"         # a letter or digit of any script (not the underscore)
_JSON_ESCAPES = re.compile(r'(?:\\u[0-9a-fA-F]{4}|\\["\\/bfnrt])+')


def _fold(text: str) -> str:
    """What is compared: NFKC (composed accents, compatibility forms such as full-width
    letters), then case-folded (``ADA``, ``ada``; ``ß`` and ``ss``)."""
    return unicodedata.normalize("NFKC", text).casefold()


def _token(pattern: str) -> re.Pattern[str]:
    """``pattern`` as a whole token of folded text: no letter or digit right before it
    (except a ``0x`` prefix) or right after it, so a longer credential
    (``em4100:00123456789``) or word that contains it is not it."""
    return re.compile(rf"(?:(?<=0x)|(?<!{_ALNUM})){pattern}(?!{_ALNUM})")


def _value(value: str) -> str:
    return _SEP.join(re.escape(ch) for ch in _fold(value))


def _needles(credentials: set[str], names: set[str]) -> list[tuple[str, re.Pattern[str]]]:
    """What marks a quarantined message as the person's, each with the credential it is
    attributed to (a hold on that credential keeps it), matched in :func:`_views` of it: every
    credential (``em4100:…``), its value alone when it has :data:`_MIN_VALUE` characters or
    more (``0012345678``: what a reader that sends only the digits put on the wire), the value
    in either case, with a ``0x`` prefix or one separator between characters; and the
    person's name in any case or Unicode normalisation, any white space between its words."""
    out: list[tuple[str, re.Pattern[str]]] = []
    for c in sorted(credentials):
        kind, _, value = c.partition(":")
        out.append((c, _token(rf"{re.escape(_fold(kind))}\s*:\s*{_value(value)}")))
        if len(value) >= _MIN_VALUE:
            out.append((c, _token(_value(value))))
    first = min(credentials, default="")
    for n in sorted(names):
        words = _fold(n).split()
        if words and n != ERASED:
            out.append((first, _token(r"\s+".join(re.escape(w) for w in words))))
    return out


def carrier(needles: Sequence[tuple[str, re.Pattern[str]]], views: Sequence[str]
            ) -> str | None:
    """The credential of the first needle found in one of ``views`` (None: not theirs)."""
    return next((c for c, needle in needles if any(needle.search(v) for v in views)), None)


def _unescaped(text: str) -> str:
    """``text`` with its JSON escapes (``\u0030``, surrogate pairs, ``\"``) read: a
    credential or name a JSON encoder escaped is the same credential or name."""
    def one(m: re.Match[str]) -> str:
        try:
            return str(json.loads(f'"{m.group()}"'))
        except ValueError:     # a lone backslash sequence json does not read: as it is
            return m.group()
    return _JSON_ESCAPES.sub(one, text)


def _views(raw: bytes, detail: str) -> list[str]:
    """The folded texts of a quarantined message searched for the needles: its bytes as
    UTF-8 (bytes that are not UTF-8 read as a boundary) and, when they are not UTF-8, as
    Latin-1 too; each with its JSON escapes read; and the rejection's detail."""
    texts = [raw.decode("utf-8", "replace")]
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        texts.append(raw.decode("latin-1"))
    texts.append(detail)
    return [_fold(v) for t in texts for v in {t, _unescaped(t)}]


def _sealed_box(raw: bytes) -> tuple[str, bytes] | None:
    """(seal key id, box) of a quarantined sealed envelope (wire.sealed) — also one the
    ingest refused as malformed (not canonical), read leniently — or None: not sealed."""
    if not looks_sealed(raw) and b'"sealed"' not in raw:
        return None
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("sealed"), str) \
            or not isinstance(obj.get("to"), str):
        return None
    try:
        return obj["to"], base64.b64decode(obj["sealed"])
    except (binascii.Error, ValueError):
        return None


def _opened(raw: bytes, seal_keys: Sequence[SealKey]) -> bytes | str:
    """What to search of a quarantined message: its bytes, plus what its sealed envelope
    holds when one of ``seal_keys`` opens it; a str: why it cannot be judged."""
    box = _sealed_box(raw)
    if box is None:
        return raw
    to, ciphertext = box
    key = next((k for k in seal_keys if k.key_id == to), None)
    if key is None:
        named = to if re.fullmatch(r"[0-9a-f]{16}", to) else "(not a key id)"
        return (f"a sealed envelope to seal key {named}, which this erasure was not given "
                f"(--seal-key FILE)")
    try:
        return raw + b"\n" + key.open(ciphertext)
    except SealError:
        return f"a sealed envelope that does not open with seal key {key.key_id} (damaged)"


def _quarantined(tx: Tx, store: SQLStore, credentials: set[str], names: set[str],
                 seal_keys: Sequence[SealKey] = ()
                 ) -> tuple[list[Quarantined], list[Unjudged]]:
    """The quarantined messages whose opened bytes (and the sealed envelope they hold, when
    ``seal_keys`` opens it) or detail carry one of :func:`_needles`; and those that cannot be
    judged — a sealed envelope no key given opens, raw bytes whose data key is gone — which
    the erasure keeps and reports (already purged ones are not looked at)."""
    needles = _needles(credentials, names)
    if not needles:
        return [], []
    out: list[Quarantined] = []
    unjudged: list[Unjudged] = []
    for idx, raw, sha, device, received_at, detail in tx.rows(
            "SELECT idx, raw, raw_sha256, device, received_at, detail FROM quarantine "
            "WHERE length(raw) > 0 ORDER BY id"):
        plain = store.plain(idx, sha, bytes(raw))
        if plain is None:
            unjudged.append((int(idx), "its raw bytes' data key was destroyed: nothing of it "
                                       "can be read"))
            continue
        opened = _opened(plain, seal_keys)
        if isinstance(opened, str):
            unjudged.append((int(idx), opened))
            opened = plain      # its clear part and detail are still searched
        hit = carrier(needles, _views(opened, str(detail)))
        if hit is not None:
            out.append((int(idx), device, int(received_at), hit))
    found = {q[0] for q in out}
    return out, [u for u in unjudged if u[0] not in found]


def _name_of(tx: Tx, store: SQLStore, employee: str) -> set[str]:
    """``employee``'s name as the directory holds it (opened on a keyed ledger), if any."""
    rows = tx.rows("SELECT name FROM tc_employees WHERE employee_id = ?", (employee,))
    if not rows or store.sealer is None:
        return {str(r[0]) for r in rows}
    return {store.sealer.column(str(rows[0][0]), column=people_tables.NAME_COLUMN,
                                row_id=employee)}


def _held(tx: Tx, store: SQLStore, employee: str, idxs: Sequence[int],
          rejected: Sequence[Quarantined] = ()) -> str | None:
    """What an active hold keeps of ``employee``'s erased entries (None: nothing)."""
    rules = retention_tables.load_rules(tx.rows)
    holds = rules.active_holds()
    if not holds:
        return None
    for idx, device, received_at, cred in rejected:
        for hidx, h in holds:
            # (no site is known of a rejected message: a site hold keeps it)
            if h.matches(None if device is None else str(device), None, received_at,
                         credential=cred, employee=employee, resolved=True) is not False:
                return (f"hold {h.name} (idx {hidx}, case {h.case}) keeps the quarantined "
                        f"message of entry {idx}")
    # The rows hold the credential's blind index: a credential hold is matched by its own.
    creds = {store.blind_credential(h.credential) or h.credential: h.credential
             for _, h in holds if h.credential is not None}
    for hidx, h in holds:
        if h.employee == employee:
            return f"hold {h.name} (idx {hidx}, case {h.case}) keeps employee {employee}"
    for chunk in _chunks(list(idxs)):
        rows = tx.rows(f"SELECT idx, device, site, ts, credential FROM punches WHERE idx IN "  # noqa: S608 - placeholders only
                       f"({', '.join('?' * len(chunk))})", chunk)
        for idx, device, site, ts, credential in rows:
            for hidx, h in holds:
                cred = str(credential) if ":" in str(credential) else creds.get(
                    str(credential), "-:-")      # no hold names it: matches no credential
                if h.matches(str(device), str(site), int(ts), credential=cred,
                             employee=employee, resolved=True) is not False:
                    return (f"hold {h.name} (idx {hidx}, case {h.case}) keeps the punch at "
                            f"entry {idx}")
    return None


def _live_quarantine(tx: Tx) -> set[int]:
    """The rejection entry idx of every quarantined message not yet purged."""
    return {int(r[0]) for r in tx.rows(
        "SELECT idx FROM quarantine WHERE length(raw) > 0 OR detail <> ''")}


def erase(store: SQLStore, *, employee: str, reason: str, case: str, by: str,
          approved_by: str, now_us: int, seal_keys: Sequence[SealKey] = (),
          plan: bool = False) -> ErasureResult:
    """Destroy ``employee``'s data keys and record it (see the module docstring);
    ``seal_keys``: the collector's seal keys, current and earlier, that open quarantined
    sealed envelopes. ``plan``: do all of it and roll it back — the result says what the
    erasure would do (``entry_idx`` None), a refusal is raised as the run raises it, and
    nothing is recorded or changed."""
    try:
        return _erase(store, employee=employee, reason=reason, case=case, by=by,
                      approved_by=approved_by, now_us=now_us, seal_keys=seal_keys, plan=plan)
    except _Planned as p:
        return p.result


def _erase(store: SQLStore, *, employee: str, reason: str, case: str, by: str,
           approved_by: str, now_us: int, seal_keys: Sequence[SealKey], plan: bool
           ) -> ErasureResult:
    if by == approved_by:
        raise ErasureError(f"dual control: {by} asked for the erasure and cannot approve it "
                           f"too (--approved-by names a second principal)")
    if store.sealer is None:
        raise KeyringError(body_crypto.NO_KEK)
    ring = store.sealer.ring
    people_tables.ensure_schema(store)      # a ledger from before the directory: its tables
    require_current_triggers(store, what=f"erasure of employee {employee}")
    with store.transaction(now_us, what=f"erasure of employee {employee}") as tx:
        keys = tuple(sorted(k.key_id for k in ring.subject_keys(employee) if not k.destroyed))
        if not keys:
            raise ErasureError(f"employee {employee} has no data keys left to destroy (never "
                               f"recorded under encryption, or already erased): nothing done")
        sealed = _sealed_by(tx, keys)
        periods = _badge_periods(tx, employee)
        rejected, unjudged = _quarantined(
            tx, store, {store.credential_of(c) for c, _, _ in periods},
            _name_of(tx, store, employee), seal_keys)
        idxs = sorted(set(sealed) | {q[0] for q in rejected})
        held = _held(tx, store, employee, sealed, rejected)
        if held is not None:
            raise ErasureError(f"erasure refused: {held}; release the hold first "
                               f"(`timeclock-collector retention hold release`)")
        spans = ranges(idxs)
        body = {"v": 1, "employee": employee, "keys": list(keys),
                "entries": [[a, b] for a, b in spans], "count": len(idxs),
                "reason": reason, "case": case, "by": by, "approved_by": approved_by}
        entry = tx.record("shred", body)
        for a, b in spans:
            tx.execute("INSERT INTO retained (retention_idx, first_idx, last_idx) "
                       "VALUES (?, ?, ?)", (entry, a, b))
            tx.execute("DELETE FROM bodies WHERE idx >= ? AND idx <= ?", (a, b))
        purged, purged_q = retention_tables.unpurged(tx.rows)
        retention_tables.purge_punches(tx.execute)
        live = _live_quarantine(tx) if purged_q else set()
        retention_tables.purge_quarantine(tx.execute)
        blanked = tuple(sorted(live - _live_quarantine(tx))) if purged_q else ()
        # The directory's row keeps the id (the manager links, the shred entry name it),
        # not the name or department (the trigger allows a later entry's change).
        tx.execute("UPDATE tc_employees SET name = ?, department = ?, changed_idx = ? "
                   "WHERE employee_id = ?", (ERASED, ERASED, entry, employee))
        # The periods keep their times and holder id, not the badge (its deterministic
        # ciphertext opens under the index key, which no erasure destroys).
        for stored, valid_from, pidx in periods:
            tx.execute("UPDATE tc_badges SET credential = ?, changed_idx = ? "
                       "WHERE credential = ? AND valid_from = ?",
                       (f"{people_tables.ERASED_BADGE}{pidx}", entry, stored, valid_from))
        corrections = corrections_table.delete_of_entries(tx, sealed) \
            if corrections_table.present(store) else 0
        ring.destroy(tx, keys, idx=entry)
        result = ErasureResult(None if plan else entry, keys, spans, purged, purged_q,
                               len(periods), corrections, tuple(unjudged), blanked)
        if plan:
            raise _Planned(result)      # the transaction rolls back: nothing recorded
    return result
